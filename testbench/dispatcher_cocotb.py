"""cocotb: load a program into a Dispatcher, start it and record what it hands out each cycle.

Input ($TB_JOB, JSON): {"jobs": [job, ...]}; each job has "program" (hex words written at
addresses 0, 1, ... through the imem write port), "seed", "full_p" (chance each `full` bit is
set in a cycle), "drained_p" (chance `drained` is high), "drained_low" (cycles after start during
which `drained` is held low), "run_p" (chance `run` is high in a cycle; 1 holds it high) and
"max_cycles". Each job starts with a reset, writes its program, pulses `start` for one cycle
with `run` low, then runs.

Output ($TB_RESULT): per job, "cycles": one [run, full, drained, dispatch, hex instr, pc,
halted, stall, error] per cycle after start, up to and including the first cycle with `halted`
or a nonzero `error` while `run` is high; "timeout".
"""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

INPUTS = ("imem_we", "imem_addr", "imem_data", "start", "run", "full", "drained")


def _v(handle) -> int:
    return int(handle.value)


async def _reset(dut):
    await FallingEdge(dut.clk)
    dut.rst.value = 1
    for name in INPUTS:
        getattr(dut, name).value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def run_job(dut, job):
    rng = random.Random(job["seed"])
    full_p = float(job["full_p"])
    drained_p = float(job["drained_p"])
    drained_low = int(job.get("drained_low", 0))
    run_p = float(job.get("run_p", 1.0))
    max_cycles = int(job.get("max_cycles", 5000))

    await _reset(dut)
    for addr, word in enumerate(job["program"]):
        dut.imem_we.value = 1
        dut.imem_addr.value = addr
        dut.imem_data.value = int(word, 16)
        await FallingEdge(dut.clk)
    dut.imem_we.value = 0
    dut.start.value = 1
    await FallingEdge(dut.clk)
    dut.start.value = 0

    cycles = []
    for cycle in range(max_cycles):
        run = run_p >= 1 or rng.random() < run_p
        full = sum((rng.random() < full_p) << b for b in range(3))
        drained = cycle >= drained_low and rng.random() < drained_p
        dut.run.value = int(run)
        dut.full.value = full
        dut.drained.value = int(drained)
        await ReadOnly()
        rec = [int(run), full, int(drained), _v(dut.dispatch), f"{_v(dut.instr):x}",
               _v(dut.pc), _v(dut.halted), _v(dut.stall), _v(dut.error)]
        cycles.append(rec)
        if run and (rec[6] or rec[8]):
            break
        await FallingEdge(dut.clk)
    last = cycles[-1] if cycles else None
    ended = last is not None and last[0] and (last[6] or last[8])
    return {"cycles": cycles, "timeout": not ended}


@cocotb.test()
async def run_dispatch(dut):
    """Run every job of $TB_JOB, each after a reset."""
    with open(os.environ["TB_JOB"]) as f:
        spec = json.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    results = [await run_job(dut, job) for job in spec["jobs"]]
    with open(os.environ["TB_RESULT"], "w") as f:
        json.dump({"results": results}, f)
