"""TernaryLane under cocotb + Verilator: long random and corner sequences against the model.

The model and the stimulus come from `rtl/tests/test_units_amaranth.py`, which runs shorter
versions of the same checks under Amaranth's simulator.
"""

import time

import pytest

from rtl.lane import TernaryLane
from rtl.tests.test_units_amaranth import (
    ACC_BITS,
    LANE_CASES,
    check_lane_trace,
    corner_lane_steps,
    lane_model,
    random_lane_steps,
)

from .verilator import build, run_cocotb

TOPLEVEL = "ternary_lane"
SEEDS = range(1, 5)
STEPS_PER_SEED = 5000


@pytest.fixture(scope="module")
def lane():
    """Build TernaryLane(ACC_BITS) with Verilator once for this module."""
    t = time.monotonic()
    runner, bdir = build(TernaryLane(ACC_BITS), f"lane-{ACC_BITS}", toplevel=TOPLEVEL)
    print(f"\nTernaryLane({ACC_BITS}) Verilator build: {time.monotonic() - t:.1f} s")
    return runner, bdir


def run_lane(lane, jobs: dict) -> dict:
    """Run named step lists on the lane, each after a reset; return {name: result}."""
    runner, bdir = lane
    out = run_cocotb(runner, bdir, "testbench.lane_cocotb", TOPLEVEL,
                     {"acc_bits": ACC_BITS, "jobs": [{"steps": s} for s in jobs.values()]})
    return dict(zip(jobs, out["results"]))


def check_lane(result: dict, steps, label: str, want_accs=None) -> None:
    """The lane resets to 0 and follows the model (and `want_accs`, if given) every cycle."""
    assert result["reset_acc"] == 0, f"{label}: acc={result['reset_acc']} after reset"
    model_accs, model_totals = lane_model(steps, ACC_BITS)
    if want_accs is not None:
        assert model_accs == want_accs, f"{label}: the model disagrees with the expectation"
    check_lane_trace(steps, result["acc"], result["total"], model_accs, model_totals, label)


def test_lane_directed(lane):
    t = time.monotonic()
    results = run_lane(lane, {name: steps for name, (steps, _) in LANE_CASES.items()})
    for name, (steps, want) in LANE_CASES.items():
        check_lane(results[name], steps, name, want)
    print(f"lane directed: {time.monotonic() - t:.2f} s")


def test_lane_corners(lane):
    t = time.monotonic()
    steps = corner_lane_steps(ACC_BITS)
    check_lane(run_lane(lane, {"corners": steps})["corners"], steps, "corners")
    print(f"lane corners: {len(steps)} cycles in {time.monotonic() - t:.2f} s")


@pytest.mark.parametrize("seed", SEEDS)
def test_lane_random(lane, seed):
    t = time.monotonic()
    steps = random_lane_steps(seed, STEPS_PER_SEED, ACC_BITS)
    check_lane(run_lane(lane, {seed: steps})[seed], steps, f"seed={seed}")
    print(f"lane seed={seed}: {len(steps)} cycles in {time.monotonic() - t:.2f} s")
