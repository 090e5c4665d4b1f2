"""Random latency and back-pressure on the memory port: results unchanged, nothing lost.

The testbench memory drops ready on the read and write channels at random and delays each read
response by a random extra amount (in order). Timing changes; outputs must still equal the
golden numerics, every request must get exactly one response, and every result word must be
written exactly once.
"""

from collections import Counter as Count

import numpy as np
import pytest

from rtl.isa import Counter, Status

from .programs import projection_cases, special_cases


@pytest.mark.parametrize("seed", [11, 12])
def test_backpressure_keeps_results(config, rtl, sim, seed):
    cases = projection_cases(config, seed, 8) + special_cases(config)[:3]
    for i, c in enumerate(cases):
        c.job.mode, c.job.seed = "random", seed * 1000 + i
    results = rtl.run([c.job for c in cases])
    for c, r in zip(cases, results):
        where = f"{c.name} (memory seed {c.job.seed})"
        assert r.status == Status.DONE, f"{where}: {r.status.name} {r.error.name}"
        assert r.reads == r.responses, f"{where}: {r.reads} requests, {r.responses} responses"
        assert r.counters[Counter.BYTES_READ.name] == r.reads * config.port_bytes, where
        per_addr = Count(a for a, _ in r.writes)
        dup = [a for a, n in per_addr.items() if n > 1]
        assert not dup, f"{where}: words written twice at {dup[:4]}"
        assert r.counters[Counter.BYTES_WRITTEN.name] == len(r.writes) * config.port_bytes
        y = c.outputs(r)
        assert np.array_equal(y, c.expected), f"{where}: results differ from golden"
    # Back-pressure must actually have happened, and cost cycles against the lockstep timing.
    stalls = sum(r.counters[Counter.STALL_READ_PORT.name] +
                 r.counters[Counter.STALL_WRITE_PORT.name] for r in results)
    assert stalls > 0
    for c in cases:
        c.job.mode = "lockstep"
    fixed = sim.run([c.job for c in cases])
    assert sum(r.counters["CYCLES"] for r in results) > sum(r.counters["CYCLES"] for r in fixed)
