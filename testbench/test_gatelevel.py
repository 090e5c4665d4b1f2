"""The ULX3S chip's synthesized netlist, block RAM output registers folded, over its UART.

`rtl.bramfold` rewrites the netlist after synthesis (a register behind a block RAM read becomes
the DP16KD's output register), so no RTL simulation covers what nextpnr places. This test
builds that netlist (`testbench.gatelevel`: the board's flow up to synthesis, the UART at 4
cycles per bit) under Verilator with cell models, and runs the board tests' steps on it with
the real host driver: projections bit-exact, every bad frame, a busy program whose cycles the
simulator predicts, a device error at the pc the simulator says. About 9 minutes alone:
synthesis (1), Verilator (4) and its C++ (4), cached under build/verilator/ while the netlist
is unchanged, and the run (1); `make test` builds it beside the other tests.
"""

import pytest

from rtl.fpga import folded_memories

from .gatelevel import CHIP, OUT, build_gatelevel, pins, wait_background
from .test_board import (
    board_spec,
    check_bad_frames,
    check_busy,
    check_device_error,
    check_projections,
)
from .verilator import run_cocotb

#: Memories whose every block RAM the fold must take, or the test would not cover it.
FOLDED = folded_memories(CHIP)


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gatelevel")
    wait_background()   # a build started beside the other tests; then both builds are reused
    runner, bdir, report = build_gatelevel(CHIP, OUT)
    spec = board_spec(CHIP, tmp, CHIP.array.name) | {"pins": pins(CHIP)}
    out = run_cocotb(runner, bdir, "testbench.board_cocotb", "chip", spec)
    if "crash" in out:
        pytest.fail(f"the gate-level run crashed:\n{out['crash']}")
    out["names"] = spec["projections"]
    out["fold"] = report["bram_fold"]
    return out


def test_netlist_has_the_folded_block_rams(gate_run):
    fold = gate_run["fold"]["by_memory"]
    for memory in FOLDED:
        assert fold[memory]["folded"] == fold[memory]["block_rams"] > 0, (memory, fold[memory])


def test_gatelevel_projections_bit_exact(gate_run):
    check_projections(gate_run)


def test_gatelevel_bad_frames(gate_run):
    check_bad_frames(gate_run, CHIP)


def test_gatelevel_busy_cycles_as_simulated(gate_run):
    check_busy(gate_run, CHIP)


def test_gatelevel_device_error(gate_run):
    check_device_error(gate_run, CHIP)
