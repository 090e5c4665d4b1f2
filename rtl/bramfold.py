"""Fold the register behind an ECP5 block RAM's read port into the block RAM's output register.

An ECP5 DP16KD presents a read's data 5.8 ns after the clock edge without its output register
(REGMODE NOREG) and 0.95 ns with it (OUTREG), at speed grade 6. Yosys infers only NOREG
(yosys#5814): a register the RTL places behind a read port stays a flip-flop in the fabric, and
the path into it starts with the block RAM's 5.8 ns. The maintainers' answer there is the one
this pass implements: absorb a second register into the primitive where one is in the netlist
and matches the primitive's semantics exactly.

`fold(netlist)` works on the JSON netlist Yosys writes after `synth_ecp5`, before nextpnr. A
read side of a DP16KD (port A, port B, or both together in the 36-bit mode) is folded when
every output bit of it that anything uses drives exactly one flip-flop and nothing else, and
those flip-flops all

- take the block RAM's clock, neither inverted, and the side's clock net is the same for
  both ports in the 36-bit mode (the register there may belong to either port);
- have no reset (LSR is the constant 0, not inverted) and power up as zero (REGSET RESET), as
  the output register does;
- share one clock enable, or have none: it becomes the output clock enable (OCE);

and the side's own reset (RST) is the constant 0 (it would clear the output register). The
flip-flops are removed, their outputs are driven by the block RAM, and the side's REGMODE
becomes OUTREG with its OCE. So every bit that left a flip-flop leaves the same register, one
cycle after the read as before. Anything else is left as Yosys built it, and counted.

The fold rests on the primitive's documented semantics (Lattice TN1264, the ECP5 memory usage
guide: OUTREG adds a pipeline register, clocked by the port's clock and enabled by OCE, cleared
by its RST) and on the conditions above, which `rtl/tests/test_bramfold.py` exercises on
netlists Yosys synthesizes. Yosys's `cells_sim_ecp5.v` has no behavioural DP16KD; ours
(`testbench/cells/ecp5_sim.v`) lets `testbench/test_gatelevel.py` run the ULX3S chip's folded
netlist under Verilator over its UART: projections bit-exact, and cycles as the simulator
predicts.
"""

import collections
import json
from pathlib import Path

__all__ = ["fold", "fold_file", "top_module"]


def _param(cell: dict, name: str, default: str) -> str:
    # Yosys writes a string parameter that looks like a binary number with a trailing space.
    return str(cell["parameters"].get(name, default)).strip()


def _width(cell: dict, port: str) -> int:
    v = _param(cell, f"DATA_WIDTH_{port}", "18")
    return int(v, 2) if set(v) <= {"0", "1"} and len(v) > 8 else int(v)


def _sides(cell: dict) -> list:
    """The read sides of a DP16KD: ("A",), ("B",), or ("A", "B") in the 36-bit mode, where a
    read's 36 bits leave on DOA and DOB together."""
    if 36 in (_width(cell, "A"), _width(cell, "B")):
        return [("A", "B")]
    return [("A",), ("B",)]


def _memory(cell_name: str) -> str:
    parts = cell_name.split(".")
    return ".".join(parts[:-2]) if len(parts) > 2 and all(
        p.isdigit() for p in parts[-2:]) else cell_name


def top_module(netlist: dict) -> dict:
    """The top module of a Yosys JSON netlist (its `top` attribute is a 32-bit binary 1)."""
    return next(m for m in netlist["modules"].values()
                if "1" in str(m.get("attributes", {}).get("top", "0")))


def fold(netlist: dict) -> dict:
    """Fold, in place, every DP16KD read side of the top module that qualifies (see the module
    docstring). Returns {"block_rams", "folded", "flip_flops": counts, "by_memory": {memory:
    {"block_rams", "folded", "why_not": the first reason one of its block RAMs was not
    folded, or None}}}. A memory is named by its block RAMs' common name (Yosys names them
    `<memory>.<row>.<column>`)."""
    top = top_module(netlist)
    cells = top["cells"]
    sinks = collections.defaultdict(list)
    for name, c in cells.items():
        dirs = c.get("port_directions", {})
        for port, bits in c["connections"].items():
            if dirs.get(port, "input") != "output":
                for b in bits:
                    if not isinstance(b, str):
                        sinks[b].append((name, port))
    for pname, p in top.get("ports", {}).items():
        if p["direction"] != "input":
            for b in p["bits"]:
                if not isinstance(b, str):
                    sinks[b].append(("$port", pname))

    stats = {"block_rams": 0, "folded": 0, "flip_flops": 0, "by_memory": {}}
    remove = []
    for name, c in cells.items():
        if c["type"] != "DP16KD":
            continue
        stats["block_rams"] += 1
        memory = stats["by_memory"].setdefault(_memory(name),
                                               {"block_rams": 0, "folded": 0, "why_not": None})
        memory["block_rams"] += 1
        conn = c["connections"]
        plans = []
        why = None
        for side in _sides(c):
            outs = [(f"DO{p}{i}", conn.get(f"DO{p}{i}", ["x"])[0]) for p in side
                    for i in range(18)]
            used = [(port, b) for port, b in outs if not isinstance(b, str) and sinks.get(b)]
            if not used:
                continue
            clocks = {tuple(conn.get(f"CLK{p}", ())) for p in side}
            if len(clocks) != 1 or any(_param(c, f"CLK{p}MUX", f"CLK{p}") != f"CLK{p}"
                                       for p in side):
                why = "port clocks differ or are inverted"
                break
            if any(conn.get(f"RST{p}", ["0"]) != ["0"] for p in side):
                why = "block RAM read reset"
                break
            if any(_param(c, f"REGMODE_{p}", "NOREG") != "NOREG" for p in side):
                why = "output register already used"
                break
            clock = clocks.pop()
            ffs, enables = [], set()
            for port, b in used:
                loads = sinks[b]
                if len(loads) != 1 or loads[0][1] != "DI" or \
                        cells.get(loads[0][0], {}).get("type") != "TRELLIS_FF":
                    why = "output drives logic or several flip-flops"
                    break
                ff = cells[loads[0][0]]
                fc = ff["connections"]
                if tuple(fc.get("CLK", ())) != clock or _param(ff, "CLKMUX", "CLK") != "CLK":
                    why = "flip-flop on another clock"
                    break
                if fc.get("LSR", ["0"]) != ["0"] or _param(ff, "LSRMUX", "LSR") != "LSR":
                    why = "flip-flop with a reset"
                    break
                if _param(ff, "REGSET", "RESET") != "RESET":
                    why = "flip-flop powers up as one"
                    break
                cemux = _param(ff, "CEMUX", "CE")
                if cemux == "1":
                    enables.add(("1",))
                elif cemux == "CE":
                    enables.add(tuple(fc.get("CE", ["1"])))
                else:
                    why = "flip-flop with an inverted or constant-off enable"
                    break
                ffs.append((port, loads[0][0]))
            if why is None and len(enables) != 1:
                why = "flip-flops with different enables"
            if why is not None:
                break
            plans.append((side, ffs, list(enables.pop())))
        if not plans and why is None:
            why = "no output used"
        if why is not None:
            memory["why_not"] = memory["why_not"] or why
            continue
        for side, ffs, enable in plans:
            for port, ff in ffs:
                conn[port] = cells[ff]["connections"]["Q"]
                remove.append(ff)
            for p in side:
                c["parameters"][f"REGMODE_{p}"] = "OUTREG"
                conn[f"OCE{p}"] = enable
            stats["flip_flops"] += len(ffs)
        stats["folded"] += 1
        memory["folded"] += 1
    for ff in remove:
        del cells[ff]
    stats["by_memory"] = dict(sorted(stats["by_memory"].items()))
    return stats


def fold_file(netlist: Path, stat: Path) -> dict:
    """Fold the Yosys JSON netlist `netlist` in place, and take the folded flip-flops out of
    the Yosys `stat -json` counts in `stat`, so that both describe what nextpnr places."""
    design = json.loads(netlist.read_text())
    stats = fold(design)
    tmp = netlist.with_suffix(".fold.tmp")
    tmp.write_text(json.dumps(design))
    tmp.replace(netlist)
    counts = json.loads(stat.read_text())
    by_type = counts["design"]["num_cells_by_type"]
    by_type["TRELLIS_FF"] = int(by_type.get("TRELLIS_FF", 0)) - stats["flip_flops"]
    if "num_cells" in counts["design"]:
        counts["design"]["num_cells"] = int(counts["design"]["num_cells"]) - stats["flip_flops"]
    stat.write_text(json.dumps(counts, indent=1))
    return stats
