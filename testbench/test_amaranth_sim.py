"""Small programs on the RTL in Amaranth's own simulator, in lockstep with the simulator."""

import numpy as np
import pytest

from rtl.params import scale_point
from sim.machine import Simulator

from .amaranth_backend import AmaranthBackend
from .programs import error_cases, projection_case


@pytest.fixture(scope="module")
def tiny():
    return scale_point("tiny")


def test_small_programs_match_simulator(tiny):
    rng = np.random.default_rng(21)
    cases = []
    for i, (n, k, t) in enumerate([(7, 9, 1), (21, 16, 3), (3, 5, 2)]):
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
        x = rng.integers(-128, 128, (t, k)).astype(np.int8)
        cases.append(projection_case(tiny, f"amaranth-{i}", w, x))
    errors = {c.name: c for c in error_cases(tiny)}
    cases += [errors[n] for n in ("illegal-opcode", "deadlock-pop-nothing", "base3-byte-243")]
    got = AmaranthBackend(tiny).run([c.job for c in cases])
    want = Simulator(tiny).run([c.job for c in cases])
    for case, r, s in zip(cases, got, want):
        assert r.mismatch(s) is None, f"{case.name}: Amaranth sim vs simulator: {r.mismatch(s)}"
        if case.expected is not None:
            assert np.array_equal(case.outputs(r), case.expected), case.name
        else:
            assert (r.error, r.error_pc) == (case.error, case.error_pc), case.name


def test_start_right_after_an_error_counts_only_the_new_run(tiny):
    """Counters add their increments late (`SKIPPED_ZERO` three cycles late). A start in the very
    first cycle after a run stopped must still begin from zero: here the run stops on an error
    in a cycle whose lanes skip zero weights (the first MATMUL's last stage-1 cycle, the cycle
    the illegal word after the second is decoded), and the next run starts at once."""
    from amaranth.sim import Simulator as AmaranthSimulator

    from rtl.isa import Counter, MatMul, Status
    from rtl.top import COUNTERS_FINAL, Accelerator
    from sim.backend import Job, MemoryImage

    matmul = MatMul(k_len=3, tokens=1, n_rows=tiny.row_lanes)    # fresh weights: all zero
    job = Job([matmul, matmul, 0], MemoryImage(tiny.port_bytes))
    dut = Accelerator(tiny)
    runs = []

    async def bench(ctx):
        for pc, word in enumerate(job.words()):
            ctx.set(dut.imem_we, 1)
            ctx.set(dut.imem_addr, pc)
            ctx.set(dut.imem_data, word)
            await ctx.tick()
        ctx.set(dut.imem_we, 0)
        for run in range(2):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            while Status(ctx.get(dut.status)) == Status.RUNNING:
                await ctx.tick()
            if run == 0:
                continue                # start again in this, the first cycle after the run
            for _ in range(COUNTERS_FINAL - 1):    # final from the COUNTERS_FINAL-th cycle
                await ctx.tick()
            runs.append({c.name: int(ctx.get(dut.counters[c])) for c in Counter})

    sim = AmaranthSimulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = Simulator(tiny).run([job])[0].counters
    assert want["SKIPPED_ZERO"] > 0
    assert runs[0] == want
