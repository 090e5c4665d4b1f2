"""The simulator against the RTL under Verilator: every cycle, counter and bit.

Planned projections must also equal the golden numerics; malformed programs must stop with the
expected error at the expected pc, identically on both.
"""

import dataclasses

import numpy as np
import pytest

from rtl.isa import Counter, ErrorCode, Status
from rtl.params import CHIPS
from sim.machine import Simulator

from .backend import record_waves
from .conftest import HELD2, verilator_backend
from .programs import (
    colliding_error_cases,
    error_cases,
    fuzz_job,
    projection_cases,
    special_cases,
)


def bounded(jobs, want):
    """`jobs` for the RTL, each given twice the simulator's cycles for it (`want`) and 1,000
    more: a design that stops making progress fails in seconds, and its waveform stays small,
    rather than running to the backend's own bound of millions of cycles."""
    return [j if j.max_cycles is not None or s.timeout else
            dataclasses.replace(j, max_cycles=2 * s.counters[Counter.CYCLES.name] + 1000)
            for j, s in zip(jobs, want)]


def check_lockstep(cases, rtl, sim):
    """Run `cases` on both backends; assert identical results and the expected outcome.

    On a failure the failing job is rerun with tracing and the waveform's path is reported.
    """
    want = sim.run([c.job for c in cases])
    jobs = bounded([c.job for c in cases], want)
    got = rtl.run(jobs)
    for case, job, r, s in zip(cases, jobs, got, want):
        try:
            check_case(case, r, s)
        except AssertionError as e:
            raise AssertionError(f"{e}\nwaveform: {record_waves(rtl.params, job)}") from None
    return got


def check_case(case, r, s):
        diff = r.mismatch(s, words=not case.stale_accumulators)
        assert diff is None, f"{case.name}: RTL vs simulator: {diff}"
        assert not r.timeout, f"{case.name}: timed out"
        if case.error == ErrorCode.NONE:
            assert r.status == Status.DONE, f"{case.name}: {r.status.name} {r.error.name}"
            y = case.outputs(r)
            bad = np.argwhere(y != case.expected)
            assert not len(bad), (f"{case.name}: y{tuple(bad[0])} = {y[tuple(bad[0])]}, "
                                  f"golden {case.expected[tuple(bad[0])]}")
        else:
            assert (r.status, r.error, r.error_pc) == (Status.ERROR, case.error, case.error_pc), \
                f"{case.name}: got {r.status.name} {r.error.name} at pc {r.error_pc}"


@pytest.mark.parametrize("seed", [1, 2])
def test_projections_lockstep(config, rtl, sim, seed):
    results = check_lockstep(projection_cases(config, seed, 10), rtl, sim)
    assert all(r.counters[Counter.BUSY_LANE_CYCLES.name] > 0 for r in results)


def test_held_lanes_two_tokens_lockstep():
    """Two token lanes on one accumulator group held in the lanes, as on `ecp5`: every
    projection split into batches of whole token groups (the compiler once split them by one
    token), and the special values."""
    p = HELD2
    cases = projection_cases(p, 3, 10) + special_cases(p)
    assert any(c.plan is not None and c.plan.tokens > p.batch_tokens for c in cases)
    check_lockstep(cases, verilator_backend(p), Simulator(p))


def test_special_values_lockstep(config, rtl, sim):
    cases = special_cases(config)
    results = check_lockstep(cases, rtl, sim)
    zero = results[[c.name for c in cases].index("zero-weights")]
    # Every busy lane-cycle of an all-zero matrix is a skipped add.
    assert zero.counters["SKIPPED_ZERO"] == zero.counters["BUSY_LANE_CYCLES"] > 0


def test_errors_lockstep(config, rtl, sim):
    check_lockstep(error_cases(config), rtl, sim)


def test_colliding_errors_lockstep(config, rtl, sim):
    # Two errors in one cycle: the RTL reports the one first in priority, as the simulator.
    cases = colliding_error_cases(config)
    check_lockstep(cases, rtl, sim)
    assert {c.error for c in cases} == {ErrorCode.BAD_WEIGHT, ErrorCode.TOKEN_OVERFLOW}


def check_fuzzed(params, rtl, sim, seeds):
    """Random instruction streams: identical status, trace and timing counters."""
    jobs = [fuzz_job(params, seed) for seed in seeds]
    want = sim.run(jobs)
    for seed, r, s in zip(seeds, rtl.run(bounded(jobs, want)), want):
        where = f"seed {seed}"
        assert not r.timeout, f"{where}: the RTL hung"
        for name in ("status", "error", "error_pc"):
            assert getattr(r, name) == getattr(s, name), f"{where}: {name}"
        assert r.trace == s.trace, f"{where}: traces differ"
        for c in Counter:
            if c != Counter.SKIPPED_ZERO:   # depends on racy buffer contents
                assert r.counters[c.name] == s.counters[c.name], f"{where}: {c.name}"


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_programs_lockstep(config, rtl, sim, seed):
    check_fuzzed(config, rtl, sim, [100 * seed + i for i in range(6)])


def test_held_lanes_two_tokens_errors_lockstep():
    """The `ecp5` shape's errors and random instruction streams: it reads its program ahead
    (`prefetch`), so its first decode, and every error and count after it, is a cycle later."""
    p = HELD2
    rtl, sim = verilator_backend(p), Simulator(p)
    check_lockstep(error_cases(p), rtl, sim)
    check_fuzzed(p, rtl, sim, range(12))


@pytest.mark.slow
def test_ulx3s_scale_point_lockstep():
    """The scale point the ULX3S bitstream is built from (`ecp5`: 320 lanes, every register
    its FPGA timing asked for), not a small shape like it: projections, special values,
    errors and random instruction streams agree with the simulator (a minute to build)."""
    p = CHIPS["ulx3s"].array
    rtl, sim = verilator_backend(p), Simulator(p)
    cases = projection_cases(p, 5, 8) + special_cases(p) + error_cases(p)
    check_lockstep(cases, rtl, sim)
    check_fuzzed(p, rtl, sim, range(12))
