"""The simulator alone: golden results, the documented instruction timing, schedule quality.

Lockstep against the RTL is in testbench/test_lockstep.py; these run without Verilator.
"""

import numpy as np
import pytest

from compiler.tiling import (
    unpack_results,
)
from rtl.isa import (
    NM_EMPTY,
    NM_M,
    Buffer,
    ErrorCode,
    Halt,
    Load,
    MatMul,
    Opcode,
    Status,
    Store,
    Unit,
    WeightEncoding,
)
from rtl.params import ArrayParams, MemTiming, scale_point
from sim.backend import Job, MemoryImage, random_projection_job
from sim.golden import ternary_matmul
from sim.machine import Simulator
from testbench.programs import error_cases, nm_case

SMALL = ArrayParams(name="small", port_bytes=4, token_lanes=2, wbuf_rows=64, abuf_rows=64,
                    acc_groups=8, imem_depth=2048, mem=MemTiming(read_latency=5))


def projection(params, n, k, t, seed=0, **kw):
    plan, job, (x, w) = random_projection_job(params, n, k, t, seed, **kw)
    return plan, job, w, ternary_matmul(x, w)


@pytest.mark.parametrize("seed", range(4))
def test_results_equal_golden(seed):
    rng = np.random.default_rng(seed)
    n, k, t = (int(v) for v in rng.integers(1, 90, 3))
    plan, job, w, want = projection(SMALL, n, k, t, seed)
    r = Simulator(SMALL).run_one(job)
    assert r.status == Status.DONE, f"seed {seed}"
    got = unpack_results(plan, r.region(plan.y_base, plan.y_words))
    assert np.array_equal(got, want), f"seed {seed}: n={n} k={k} t={t}"
    # Every weight is used once per token: busy work and skipped zeros follow from W alone.
    assert r.counters["BUSY_LANE_CYCLES"] == t * n * k, f"seed {seed}"
    assert r.counters["SKIPPED_ZERO"] == t * int((w == 0).sum()), f"seed {seed}"


@pytest.mark.parametrize("acc_groups", [1, 3])
def test_batches_start_on_a_token_group(acc_groups):
    """Two token lanes and one (the `ecp5` point) or three accumulator groups: a batch of
    tokens must be whole groups, since a group's tokens share activation words. Batches of
    max_tokens // 2 (1 or 3) made tokens 1 and 3 run on their neighbours' activations."""
    p = ArrayParams(name=f"acc{acc_groups}", port_bytes=4, token_lanes=2, wbuf_rows=64,
                    abuf_rows=64, acc_groups=acc_groups, imem_depth=2048)
    assert p.batch_tokens == 2
    for t in (3, 5):
        plan, job, w, want = projection(p, 7, 9, t, seed=t)
        assert plan.token_batch == 2
        r = Simulator(p).run_one(job)
        assert r.status == Status.DONE
        assert np.array_equal(unpack_results(plan, r.region(plan.y_base, plan.y_words)), want)
    with pytest.raises(ValueError, match="multiple of the 2 token lanes"):
        projection(p, 7, 9, 3, token_batch=1)


def retire_cycles(result):
    return {(rec.unit, rec.pc): rec.cycle for rec in result.trace}


def test_instruction_timing_contract():
    """The cycle rules of docs/architecture.md, on a hand-written program."""
    p, lat = SMALL, SMALL.mem.read_latency
    mem = MemoryImage(p.port_bytes)
    mem.add(0, np.full((16, p.port_bytes), 121, np.uint8))    # 121 = five zero trits
    prog = [Load(buffer=Buffer.WEIGHT, rows=2, length=3, dram=0, stride=4),   # pc 0: N=6
            Load(buffer=Buffer.ACT, rows=1, length=2, dram=8, push_next=1),   # pc 1: N=2
            MatMul(k_len=4, tokens=3, n_rows=5, pop_prev=1, push_next=1),     # pc 2: G=2
            Store(tokens=3, words=2, dram=100, stride=2, pop_prev=1),         # pc 3
            Halt()]
    r = Simulator(p).run_one(Job(prog, mem))
    assert r.status == Status.DONE
    cyc = retire_cycles(r)
    # Dispatch at 0, 1, 2, ...; visible a cycle later. LOAD pc0 issues at 1: requests 2..7,
    # retires at 7 + L. LOAD pc1 issues at 7 (the last request cycle), requests 8..9.
    assert cyc[(Unit.LOAD, 0)] == 1 + 6 + lat
    assert cyc[(Unit.LOAD, 1)] == 7 + 2 + lat
    # MATMUL waits for pc1's token (visible one cycle after it retired): issue at s, G*k=8
    # reads, then the operand stage and the adds.
    s = cyc[(Unit.LOAD, 1)] + 1
    assert cyc[(Unit.COMPUTE, 2)] == s + 8 + 2
    # STORE issues the cycle after, writes tokens*words = 6 words.
    assert cyc[(Unit.STORE, 3)] == cyc[(Unit.COMPUTE, 2)] + 1 + 6
    assert cyc[(Unit.DISPATCH, 4)] == cyc[(Unit.STORE, 3)] + 1
    assert r.counters["CYCLES"] == cyc[(Unit.DISPATCH, 4)] + 1
    assert r.counters["BYTES_READ"] == 8 * p.port_bytes
    assert r.counters["BYTES_WRITTEN"] == 6 * p.port_bytes
    assert r.counters["BUSY_LANE_CYCLES"] == 4 * 5 * 3
    assert r.counters["SKIPPED_ZERO"] == 4 * 5 * 3
    assert [rec.opcode for rec in r.trace] == [Opcode.LOAD, Opcode.LOAD, Opcode.MATMUL,
                                               Opcode.STORE, Opcode.HALT]


def test_error_stops_at_the_documented_cycle():
    p = SMALL
    prog = [Load(buffer=Buffer.ACT, sram=p.abuf_rows - 3, rows=3, length=2), Halt()]
    r = Simulator(p).run_one(Job(prog, MemoryImage(p.port_bytes)))
    # Rows 0 (2 words) fits, row 1 would end past the buffer: refused at its first request.
    assert (r.status, r.error, r.error_pc) == (Status.ERROR, ErrorCode.BAD_ADDRESS, 0)
    assert r.counters["CYCLES"] == 1 + 1 + 2 + 1


SHAPES_2B4T = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]


@pytest.mark.parametrize("n, k", SHAPES_2B4T)
def test_prefill_keeps_lanes_busy_on_2b4t_shapes(n, k):
    p = scale_point("default")
    plan, job, _, want = projection(p, n, k, 64)
    r = Simulator(p).run_one(job)
    util = r.counters["BUSY_LANE_CYCLES"] / (r.counters["CYCLES"] * p.lanes)
    assert util >= 0.95, f"{n}x{k}: lane utilization {util:.3f}"
    assert np.array_equal(unpack_results(plan, r.region(plan.y_base, plan.y_words)), want)


@pytest.mark.parametrize("n, k", [s for s in SHAPES_2B4T if s != (640, 2560)])
def test_decode_is_port_bound_on_2b4t_shapes(n, k):
    p = scale_point("default")
    plan, job, _, _ = projection(p, n, k, 1)
    r = Simulator(p).run_one(job)
    bw = plan.weight_bytes / (r.counters["CYCLES"] * p.port_bytes)
    assert bw >= 0.95, f"{n}x{k}: weight bandwidth {bw:.3f} of the port's peak"



NM_PARAMS = ArrayParams(name="nm", port_bytes=16, token_lanes=2, wbuf_rows=64, abuf_rows=32,
                        acc_groups=4, encodings=tuple(WeightEncoding),
                        mem=MemTiming(read_latency=4))


@pytest.mark.parametrize("n_slots", [2, 3, 4, 7])
def test_nm_matmul_adds_each_slot_at_its_column(n_slots):
    p = NM_PARAMS
    k, tokens, n_rows = 24, 3, 61
    case = nm_case(p, f"nm{n_slots}", n_slots, n_slots, k, tokens, n_rows)
    r = Simulator(p).run_one(case.job)
    assert r.status == Status.DONE, r.error
    assert np.array_equal(case.outputs(r), case.expected)
    # N cycles per group of 8 columns: the MATMUL retires G * (k / 8) * N + 2 after it issues.
    cyc = retire_cycles(r)
    steps = k // NM_M * n_slots
    issue = cyc[(Unit.LOAD, 1)] + 1
    assert cyc[(Unit.COMPUTE, 2)] == issue + 2 * steps + 2
    assert r.counters["BUSY_LANE_CYCLES"] == tokens * n_rows * steps
    empty = int((case.slots[:, :n_rows] == NM_EMPTY).sum())
    assert r.counters["SKIPPED_ZERO"] == tokens * empty


def test_nm_errors():
    p = NM_PARAMS
    errors = [c for c in error_cases(p) if "nm" in c.name]
    assert len(errors) == 6
    for case in errors:
        r = Simulator(p).run_one(case.job)
        assert (r.status, r.error, r.error_pc) == (Status.ERROR, case.error, case.error_pc), \
            case.name
    for case in (c for c in error_cases(SMALL) if "nm" in c.name):
        r = Simulator(SMALL).run_one(case.job)
        assert (r.status, r.error) == (Status.ERROR, case.error), case.name
