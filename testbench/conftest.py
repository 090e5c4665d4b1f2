"""Shared fixtures: the accelerator built under Verilator once per configuration and session.

Set TB_WAVES=1 (or use `make wave TEST=...`) to build with tracing: every run then leaves a VCD
under build/verilator/<build>/waves/. Without it, a failing lockstep test reruns the failing job
on a traced build and names the waveform in its message.
"""

import os

import pytest

from rtl.isa import WeightEncoding
from rtl.params import ArrayParams, MemTiming, scale_point

#: Whole-accelerator configurations under test: the `tiny` scale point (one token lane, one
#: accumulator group held in the lanes, no instruction queues, base-3 decoded from block RAM),
#: and a second shape with two token lanes, an accumulator buffer of several groups, queues, a
#: combinational decoder, every weight encoding including N:M slots (so a port of 8 x 2 bytes),
#: a short latency and small queues to stress back-pressure inside.
CONFIGS = {
    "tiny": scale_point("tiny"),
    "lanes2": ArrayParams(name="lanes2", port_bytes=16, token_lanes=2, wbuf_rows=96,
                          abuf_rows=64, acc_groups=6, queue_depth=2, token_depth=4,
                          loads_in_flight=3, imem_depth=512, max_k=4096, counter_bits=40,
                          encodings=tuple(WeightEncoding), mem=MemTiming(read_latency=3)),
}


#: The `ecp5` scale point's shape, small: two token lanes and one accumulator group held in the
#: lanes (neither configuration above combines them), the program read ahead (`prefetch`),
#: both buffers written from registers (`registered_weight_write`, `registered_act_write`), the
#: words read registered before the operands are picked (`registered_operands`) and the lanes'
#: clear in copies of 3 rows (7 copies for 20 rows, the last one short).
#: Only projections and special values run on it (`test_lockstep.py`).
HELD2 = ArrayParams(name="held2", port_bytes=4, token_lanes=2, wbuf_rows=64, abuf_rows=64,
                    acc_groups=1, queue_depth=2, loads_in_flight=2, imem_depth=2048,
                    registered_decode=True, registered_weight_write=True,
                    registered_act_write=True, prefetch=True, registered_operands=True,
                    fanout_rows=3, mem=MemTiming(read_latency=3))


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


@pytest.hookimpl(trylast=True)      # after -k, -m and --deselect have dropped what they drop
def pytest_collection_modifyitems(session, config, items):
    """Start the gate-level build (testbench/test_gatelevel.py: about 8 minutes, most of it on
    one core) in a child process as soon as its tests are collected, and run them last."""
    gate = [it for it in items if it.module.__name__.endswith("test_gatelevel")]
    if not gate or config.option.collectonly:
        return
    for it in gate:
        items.remove(it)
        items.append(it)
    from testbench import gatelevel
    gatelevel.start_background()


def pytest_sessionfinish(session, exitstatus):
    from testbench import gatelevel
    gatelevel.stop_background()
