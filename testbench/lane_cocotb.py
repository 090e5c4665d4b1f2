"""cocotb: drive one TernaryLane cycle by cycle and record what it shows.

Input ($TB_JOB, JSON): {"acc_bits": int, "jobs": [{"steps": [[step, first, init, nz, neg, x,
clear], ...]}, ...]}, `init` and `x` as signed integers. Output ($TB_RESULT): one result per job,
{"reset_acc": int, "acc": [...], "total": [...]}, all re-signed. Each job starts with a reset
and a clear.
Step i is driven on a falling edge; `acc[i]` and `total[i]` are sampled once its inputs have
settled, before the rising edge that applies it, so `acc` has one more entry than `steps`: the
accumulator after the last step.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from rtl.params import ACT_BITS
from rtl.tests.test_units_amaranth import LANE_PORTS as PORTS


def _signed(value: int, bits: int) -> int:
    """Amaranth's signed ports come out of Verilog unsigned: re-sign a raw value."""
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def _unsigned(value: int, bits: int) -> int:
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"{value} does not fit in a signed {bits}-bit port")
    return value & ((1 << bits) - 1)


async def _reset(dut):
    """Reset and clear: the accumulator has no reset of its own, `clear` starts each job."""
    await FallingEdge(dut.clk)
    dut.rst.value = 1
    for name in PORTS:
        getattr(dut, name).value = 0
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    dut.clear.value = 0


async def run_job(dut, steps, acc_bits):
    widths = {"init": acc_bits, "x": ACT_BITS}
    await _reset(dut)
    await ReadOnly()
    reset_acc = _signed(int(dut.acc.value), acc_bits)
    accs, totals = [], []
    for fields in steps:
        await FallingEdge(dut.clk)
        for name, value in zip(PORTS, fields):
            bits = widths.get(name)
            getattr(dut, name).value = _unsigned(value, bits) if bits else value
        await ReadOnly()
        accs.append(_signed(int(dut.acc.value), acc_bits))
        totals.append(_signed(int(dut.total.value), acc_bits))
    await FallingEdge(dut.clk)
    dut.step.value = 0
    await ReadOnly()
    accs.append(_signed(int(dut.acc.value), acc_bits))
    return {"reset_acc": reset_acc, "acc": accs, "total": totals}


@cocotb.test()
async def run_steps(dut):
    """Run every job of $TB_JOB, each after a reset."""
    with open(os.environ["TB_JOB"]) as f:
        spec = json.load(f)
    acc_bits = int(spec["acc_bits"])
    assert len(dut.acc) == acc_bits, f"acc is {len(dut.acc)} bits, expected {acc_bits}"
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    results = [await run_job(dut, job["steps"], acc_bits) for job in spec["jobs"]]
    with open(os.environ["TB_RESULT"], "w") as f:
        json.dump({"results": results}, f)
