"""Shared fixtures: the accelerator built under Verilator once per configuration and session.

Set TB_WAVES=1 (or use `make wave TEST=...`) to build with tracing: every run then leaves a VCD
under build/verilator/<build>/waves/. Without it, a failing lockstep test reruns the failing job
on a traced build and names the waveform in its message.
"""

import os

import pytest

from rtl.params import ArrayParams, MemTiming, scale_point

#: Whole-accelerator configurations under test: the `tiny` scale point, and a second shape
#: with one token lane, a wider port and minimal queues to stress back-pressure inside.
CONFIGS = {
    "tiny": scale_point("tiny"),
    "narrow": ArrayParams(name="narrow", port_bytes=8, token_lanes=1, wbuf_rows=96,
                          abuf_rows=64, acc_groups=6, queue_depth=2, token_depth=4,
                          loads_in_flight=2, imem_depth=512, max_k=4096,
                          mem=MemTiming(read_latency=3)),
}


@pytest.fixture(scope="session", params=list(CONFIGS))
def config(request):
    return CONFIGS[request.param]


_built = {}


def verilator_backend(params):
    """The Verilator backend for `params`, built once per session."""
    from testbench.backend import VerilatorBackend
    if params.name not in _built:
        _built[params.name] = VerilatorBackend(params, waves=bool(os.environ.get("TB_WAVES")))
    return _built[params.name]


@pytest.fixture(scope="session")
def rtl(config):
    return verilator_backend(config)


@pytest.fixture(scope="session")
def sim(config):
    from sim.machine import Simulator
    return Simulator(config)
