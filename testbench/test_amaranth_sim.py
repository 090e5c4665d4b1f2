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
