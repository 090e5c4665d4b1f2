"""The Amaranth-simulator backend: run `sim.backend.Job`s on the RTL in Amaranth's simulator.

Slow (thousands of cycles per second) but needs no Verilator: for small programs, and as a
second, independent simulation of the same design. Lockstep memory model only.
"""

from collections import deque

from amaranth.sim import Simulator as AmaranthSimulator

from rtl.isa import OPCODE_OF_UNIT, Counter, ErrorCode, Status, TraceRecord, Unit
from rtl.params import ArrayParams
from rtl.top import COUNTERS_FINAL, Accelerator
from sim.backend import Job, RunResult

__all__ = ["AmaranthBackend"]

ADDR_BITS = 32


class AmaranthBackend:
    """Run jobs on a fresh `Accelerator(params)` in Amaranth's simulator, one after another."""

    name = "amaranth"

    def __init__(self, params: ArrayParams):
        self.params = params

    def run(self, jobs: list) -> list:
        dut = Accelerator(self.params)
        sim = AmaranthSimulator(dut)
        sim.add_clock(1e-6)
        results = []

        async def bench(ctx):
            for job in jobs:
                results.append(await self._run_job(ctx, dut, job))

        sim.add_testbench(bench)
        sim.run()
        return results

    async def _run_job(self, ctx, dut, job: Job) -> RunResult:
        p = self.params
        if len(job.program) > p.imem_depth:
            raise ValueError(f"program of {len(job.program)} instructions exceeds program "
                             f"memory ({p.imem_depth})")
        mem = job.memory.word_dict()
        for pc, word in enumerate(job.words()):
            ctx.set(dut.imem_we, 1)
            ctx.set(dut.imem_addr, pc)
            ctx.set(dut.imem_data, word)
            await ctx.tick()
        ctx.set(dut.imem_we, 0)
        ctx.set(dut.rd_req.ready, 1)
        ctx.set(dut.wr_req.ready, 1)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pending = deque()
        trace, writes = [], []
        cycle = tick = 0
        limit = job.max_cycles or 200_000
        status = Status.RUNNING
        while True:
            resp = bool(pending) and pending[0][0] <= tick
            ctx.set(dut.rd_resp.valid, int(resp))
            if resp:
                ctx.set(dut.rd_resp.payload, pending.popleft()[1])
            # Sample this cycle's outputs (after the inputs above settled), then clock.
            status = Status(ctx.get(dut.status))
            running = status == Status.RUNNING
            if ctx.get(dut.rd_req.valid):
                pending.append((tick + p.mem.read_latency,
                                mem.get(ctx.get(dut.rd_req.payload), 0)))
            if ctx.get(dut.wr_req.valid):
                payload = ctx.get(dut.wr_req.payload)
                addr, data = int(payload.addr), int(payload.data)
                writes.append((addr, data))
                mem[addr] = data
            if running:
                valid = ctx.get(dut.retire_valid)
                for u in Unit:
                    if valid >> u & 1:
                        trace.append(TraceRecord(cycle, int(u), int(ctx.get(dut.retire_pc[u])),
                                                 int(OPCODE_OF_UNIT[u])))
                cycle += 1
            elif status in (Status.DONE, Status.ERROR):
                break
            tick += 1
            if tick > limit:
                break
            await ctx.tick()
        ctx.set(dut.rd_req.ready, 0)
        while pending:                       # drain an aborted run's reads
            await ctx.tick()
            tick += 1
            resp = pending[0][0] <= tick
            ctx.set(dut.rd_resp.valid, int(resp))
            if resp:
                ctx.set(dut.rd_resp.payload, pending.popleft()[1])
        await ctx.tick()
        ctx.set(dut.rd_resp.valid, 0)
        for _ in range(COUNTERS_FINAL - 2):   # counters are final from the COUNTERS_FINAL-th
            await ctx.tick()                  # cycle that is not RUNNING; the loop saw the 1st
        counters = {c.name: int(ctx.get(dut.counters[c])) & ((1 << p.counter_bits) - 1)
                    for c in Counter}
        return RunResult(status=status, error=ErrorCode(ctx.get(dut.error)),
                         error_pc=int(ctx.get(dut.error_pc)), counters=counters, trace=trace,
                         writes=writes, port_bytes=p.port_bytes, timeout=tick > limit)
