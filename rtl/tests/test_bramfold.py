"""The ECP5 block RAM output register fold (rtl.bramfold) on netlists Yosys synthesizes.

Each design is a memory read through `rtl.memport.read_port` into a second register, the
shape the accelerator's buffers and program memory have on the ULX3S; variants break one
condition of the fold each. Yosys runs the flow's own memory attribute and `synth_ecp5`.
"""

import copy
import json
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from rtl import bramfold, fpga
from rtl.memport import read_port


class _ReadRegister(wiring.Component):
    """`q` is the word read from `raddr` two cycles earlier (one with `re`, one with `oe`).

    enable : the second register takes the word only with `oe`.
    reset : the second register is reset by the domain's reset.
    tap : the read word also drives logic (`t`, its parity) beside the second register.
    """

    def __init__(self, width: int, depth: int, *, enable=False, reset=False, tap=False):
        self.width, self.depth = width, depth
        self.enable, self.reset, self.tap = enable, reset, tap
        members = {"waddr": In(range(depth)), "wdata": In(width), "we": In(1),
                   "raddr": In(range(depth)), "re": In(1), "oe": In(1), "q": Out(width)}
        if tap:
            members["t"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=[])
        wp = mem.write_port()
        rp, data = read_port(m, mem, en=self.re)
        q = Signal(self.width, reset_less=not self.reset)
        with m.If(self.oe if self.enable else 1):
            m.d.sync += q.eq(data)
        m.d.comb += [wp.addr.eq(self.waddr), wp.data.eq(self.wdata), wp.en.eq(self.we),
                     rp.addr.eq(self.raddr), self.q.eq(q)]
        if self.tap:
            m.d.comb += self.t.eq(data.xor())
        return m


def synthesize(tmp_path, design) -> tuple:
    """(netlist, stat path, netlist path) of `design` through Yosys's `synth_ecp5`."""
    (tmp_path / "top.il").write_text(rtlil.convert(design))
    cmd = (f"read_rtlil top.il; {fpga.NO_RW_CHECK}; synth_ecp5 -noabc9 -top top; "
           "write_json top.json; tee -q -o stat.json stat -json")
    subprocess.run([fpga._tool_command("yosys"), "-q", "-p", cmd], cwd=tmp_path, check=True,
                   env=fpga._tool_env())
    path = tmp_path / "top.json"
    return json.loads(path.read_text()), tmp_path / "stat.json", path


def top_cells(netlist) -> dict:
    return bramfold.top_module(netlist)["cells"]


def brams(netlist) -> list:
    return [c for c in top_cells(netlist).values() if c["type"] == "DP16KD"]


def read_flip_flops(netlist) -> dict:
    """{DO net bit: the flip-flop it feeds} over every block RAM output."""
    cells = top_cells(netlist)
    outs = {b for c in brams(netlist) for p, bits in c["connections"].items()
            if p.startswith("DO") for b in bits if not isinstance(b, str)}
    return {c["connections"]["DI"][0]: c for c in cells.values()
            if c["type"] == "TRELLIS_FF" and c["connections"]["DI"][0] in outs}


def port_bits(netlist, name) -> list:
    return bramfold.top_module(netlist)["ports"][name]["bits"]


@pytest.mark.parametrize("width, depth, sides", [(36, 512, "AB"), (18, 1024, "B")],
                         ids=["36-bit", "18-bit"])
def test_fold_takes_the_read_register_into_the_block_ram(tmp_path, width, depth, sides):
    netlist, stat, path = synthesize(tmp_path, _ReadRegister(width, depth))
    (bram,) = brams(netlist)
    before = read_flip_flops(netlist)
    assert len(before) == width
    q_bits = {c["connections"]["Q"][0] for c in before.values()}
    ff_count = json.loads(stat.read_text())["design"]["num_cells_by_type"]["TRELLIS_FF"]

    folded = bramfold.fold_file(path, stat)
    assert (folded["block_rams"], folded["folded"], folded["flip_flops"]) == (1, 1, width)
    (memory,) = folded["by_memory"].values()
    assert memory == {"block_rams": 1, "folded": 1, "why_not": None}
    netlist = json.loads(path.read_text())
    (bram,) = brams(netlist)
    assert not read_flip_flops(netlist)
    outs = {bits[0] for p, bits in bram["connections"].items() if p.startswith("DO")}
    # The registers' outputs (and so the design's q) now leave the block RAM itself.
    assert q_bits <= outs and set(port_bits(netlist, "q")) <= outs
    for p in "AB":
        want = "OUTREG" if p in sides else "NOREG"
        assert bram["parameters"][f"REGMODE_{p}"] == want
        if p in sides:
            assert bram["connections"][f"OCE{p}"] == ["1"]
    assert json.loads(stat.read_text())["design"]["num_cells_by_type"]["TRELLIS_FF"] == \
        ff_count - width


def test_fold_makes_the_registers_enable_the_output_clock_enable(tmp_path):
    netlist, _, _ = synthesize(tmp_path, _ReadRegister(36, 512, enable=True))
    enables = {json.dumps(c["connections"]["CE"]) for c in read_flip_flops(netlist).values()}
    assert len(enables) == 1 and enables != {json.dumps(["1"])}
    assert bramfold.fold(netlist)["folded"] == 1
    (bram,) = brams(netlist)
    (enable,) = enables
    assert json.dumps(bram["connections"]["OCEA"]) == json.dumps(bram["connections"]["OCEB"]) \
        == enable


@pytest.mark.parametrize("variant, why", [
    (dict(reset=True), "flip-flop with a reset"),
    (dict(tap=True), "output drives logic or several flip-flops"),
])
def test_fold_leaves_what_does_not_match_the_output_register(tmp_path, variant, why):
    netlist, _, _ = synthesize(tmp_path, _ReadRegister(36, 512, **variant))
    original = copy.deepcopy(netlist)
    folded = bramfold.fold(netlist)
    assert (folded["folded"], folded["flip_flops"]) == (0, 0)
    (memory,) = folded["by_memory"].values()
    assert memory == {"block_rams": 1, "folded": 0, "why_not": why}
    assert netlist == original


def test_fold_refuses_a_read_reset_and_an_inverted_clock():
    # Hand-made cells: conditions Amaranth designs here do not produce.
    def design(bram_conn=(), bram_params=(), ff_params=()):
        bram = {"type": "DP16KD", "parameters": {
            "DATA_WIDTH_A": "00000000000000000000000000010010",
            "DATA_WIDTH_B": "00000000000000000000000000010010", "REGMODE_A": "NOREG",
            "REGMODE_B": "NOREG", "CLKAMUX": "CLKA", "CLKBMUX": "CLKB", **dict(bram_params)},
            "port_directions": {"DOB0": "output", "CLKB": "input", "RSTB": "input"},
            "connections": {"DOB0": [10], "CLKB": [2], "RSTB": ["0"], "OCEB": ["1"],
                            **dict(bram_conn)}}
        ff = {"type": "TRELLIS_FF", "parameters": {"CEMUX": "1 ", "CLKMUX": "CLK",
                                                     "LSRMUX": "LSR", "REGSET": "RESET",
                                                     **dict(ff_params)},
              "port_directions": {"DI": "input", "CLK": "input", "LSR": "input",
                                  "Q": "output"},
              "connections": {"DI": [10], "CLK": [2], "LSR": ["0"], "Q": [11]}}
        return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                    "ports": {"q": {"direction": "output", "bits": [11]}},
                                    "cells": {"mem.0.0": bram, "q_ff": ff}}}}

    def why(**kw):
        return bramfold.fold(design(**kw))["by_memory"]["mem"]["why_not"]

    assert bramfold.fold(design())["folded"] == 1
    assert why(bram_conn={"RSTB": [5]}) == "block RAM read reset"
    assert why(bram_params={"CLKBMUX": "INV"}) == "port clocks differ or are inverted"
    assert why(ff_params={"CLKMUX": "INV"}) == "flip-flop on another clock"
    assert why(ff_params={"REGSET": "SET"}) == "flip-flop powers up as one"
    assert why(ff_params={"CEMUX": "INV"}) == \
        "flip-flop with an inverted or constant-off enable"
    assert why(bram_params={"REGMODE_B": "OUTREG"}) == "output register already used"
