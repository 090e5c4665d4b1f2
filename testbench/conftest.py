"""Shared fixtures: the accelerator built under Verilator once per configuration and session."""

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


@pytest.fixture(scope="session")
def rtl(config):
    """The Verilator backend for `config`, built once per session."""
    from testbench.backend import VerilatorBackend
    if config.name not in _built:
        _built[config.name] = VerilatorBackend(config)
    return _built[config.name]


@pytest.fixture(scope="session")
def sim(config):
    from sim.machine import Simulator
    return Simulator(config)
