"""The benchmark's fixed programs stay runnable as the scale points change."""

import pytest

from rtl.params import scale_point
from sim.backend import random_projection_job
from sim.bench import VS_VERILATOR


@pytest.mark.parametrize("name", list(VS_VERILATOR))
def test_vs_verilator_programs_fit_program_memory(name):
    point, n, k, tokens = VS_VERILATOR[name]
    p = scale_point(point)
    _, job, _ = random_projection_job(p, n, k, tokens)
    assert len(job.program) <= p.imem_depth, \
        f"{name}: {len(job.program)} instructions, program memory {p.imem_depth}"
