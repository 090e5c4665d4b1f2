"""cocotb: run programs on the whole accelerator against a modelled external memory.

Input ($TB_JOB, JSON): {"port_bytes", "imem_depth", "counter_bits", "jobs": [job, ...]}; each
job has "program" (hex words), "memory" ({word address: hex word}), "mode" ("lockstep" or "random"),
"latency", "seed", "max_cycles". Output ($TB_RESULT): one result per job with status, error,
error_pc, counters, trace records, the write log and read statistics.

Memory model. lockstep: requests always accepted, each response exactly `latency` cycles after
its request, never back-pressured: the timing the simulator assumes. random (seeded): the
request and write channels drop ready at random and each response comes back after a random
extra delay, still in order; results must not change, only cycles.
"""

import json
import os
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from rtl.isa import OPCODE_OF_UNIT, Counter, Status, TraceRecord, Unit
from rtl.top import COUNTERS_FINAL


def _bits(handle) -> int:
    return int(handle.value)


async def _reset(dut):
    dut.rst.value = 1
    dut.start.value = 0
    dut.imem_we.value = 0
    dut.rd_req__ready.value = 0
    dut.rd_resp__valid.value = 0
    dut.rd_resp__payload.value = 0
    dut.wr_req__ready.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def run_job(dut, job, port_bytes, counter_bits):
    mem = {int(a): int(v, 16) for a, v in job["memory"].items()}
    rng = random.Random(job.get("seed", 0))
    mode = job.get("mode", "lockstep")
    latency = int(job["latency"])
    max_cycles = int(job.get("max_cycles", 200_000))
    addr_bits = 32

    await FallingEdge(dut.clk)
    for pc, word in enumerate(job["program"]):
        dut.imem_we.value = 1
        dut.imem_addr.value = pc
        dut.imem_data.value = int(word, 16)
        await FallingEdge(dut.clk)
    dut.imem_we.value = 0
    dut.start.value = 1
    await FallingEdge(dut.clk)
    dut.start.value = 0

    pending = deque()      # (due cycle, data) of accepted read requests, in order
    reads = 0
    responses = 0
    writes = []
    trace = []
    cycle = 0              # running cycles seen so far
    tick = 0               # all cycles since start, for the memory's timing
    last_due = -1
    status = Status.RUNNING
    while True:
        # Drive this cycle's inputs.
        if mode == "random":
            rd_ready = rng.random() < 0.7
            wr_ready = rng.random() < 0.7
        else:
            rd_ready = wr_ready = True
        dut.rd_req__ready.value = int(rd_ready)
        dut.wr_req__ready.value = int(wr_ready)
        resp = pending and pending[0][0] <= tick
        dut.rd_resp__valid.value = int(bool(resp))
        if resp:
            dut.rd_resp__payload.value = pending[0][1]
        await ReadOnly()
        status = Status(_bits(dut.status))
        running = status == Status.RUNNING
        if resp:
            pending.popleft()
            responses += 1
        if _bits(dut.rd_req__valid) and rd_ready:
            addr = _bits(dut.rd_req__payload)
            due = tick + latency + (rng.randrange(0, 6) if mode == "random" else 0)
            due = max(due, last_due + 1)
            last_due = due
            pending.append((due, mem.get(addr, 0)))
            reads += 1
        if _bits(dut.wr_req__valid) and wr_ready:
            payload = _bits(dut.wr_req__payload)
            addr = payload & ((1 << addr_bits) - 1)
            data = payload >> addr_bits
            writes.append((addr, data))
            mem[addr] = data
        if running:
            rv = _bits(dut.retire_valid)
            if rv:
                pcs = _bits(dut.retire_pc)
                for u in Unit:
                    if rv >> u & 1:
                        trace.append(TraceRecord(cycle, int(u), (pcs >> (16 * u)) & 0xFFFF,
                                                 int(OPCODE_OF_UNIT[u])).encode())
            cycle += 1
        tick += 1
        if not running and status in (Status.DONE, Status.ERROR):
            break
        if tick > max_cycles:
            break
        await FallingEdge(dut.clk)

    # Let an aborted run's reads drain so the next job starts clean.
    await FallingEdge(dut.clk)
    dut.rd_req__ready.value = 0
    dut.wr_req__ready.value = 0
    while pending:
        await FallingEdge(dut.clk)
        tick += 1
        resp = pending[0][0] <= tick
        dut.rd_resp__valid.value = int(resp)
        if resp:
            dut.rd_resp__payload.value = pending.popleft()[1]
            responses += 1
    await FallingEdge(dut.clk)
    dut.rd_resp__valid.value = 0
    # The loop stopped in the first cycle that is not RUNNING, and this is the third (later if
    # reads drained): counters are final from the COUNTERS_FINAL-th, and are read in it.
    for _ in range(COUNTERS_FINAL - 3):
        await FallingEdge(dut.clk)

    counters_raw = _bits(dut.counters)
    mask = (1 << counter_bits) - 1
    return {
        "status": int(status), "error": _bits(dut.error), "error_pc": _bits(dut.error_pc),
        "timeout": tick > max_cycles,
        "counters": {c.name: (counters_raw >> (counter_bits * c)) & mask for c in Counter},
        "trace": trace, "writes": [(a, f"{d:x}") for a, d in writes],
        "reads": reads, "responses": responses, "draining": _bits(dut.draining),
    }


@cocotb.test()
async def run_programs(dut):
    """Run every job of $TB_JOB on one reset accelerator, back to back."""
    with open(os.environ["TB_JOB"]) as f:
        spec = json.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await _reset(dut)
    results = []
    for job in spec["jobs"]:
        results.append(await run_job(dut, job, spec["port_bytes"], spec["counter_bits"]))
    with open(os.environ["TB_RESULT"], "w") as f:
        json.dump({"results": results}, f)
