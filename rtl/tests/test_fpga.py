"""The FPGA flow (rtl.fpga): PLL search, report parsing and checks, and the iCEBreaker bitstream.

The bitstream build is cached in build/fpga/icebreaker keyed on a hash of the generated design
and flow script (shared with `make bitstream`): a rerun in the same checkout re-reads the
reports, a fresh clone builds once.
"""

import json
import re
import subprocess
from fractions import Fraction

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from rtl import fpga
from rtl.memport import copies
from rtl.params import CHIPS

MHZ = 10**6


# -- PLL search ----------------------------------------------------------------------------------

def ice40_reachable(f_in: int) -> set:
    """Every output an SB_PLL40 in SIMPLE feedback can make from f_in, by brute force."""
    lim = fpga.ICE40_PLL_MHZ
    out = set()
    for divr in range(16):
        pfd = Fraction(f_in, divr + 1)
        if not lim["pfd"][0] * MHZ <= pfd <= lim["pfd"][1] * MHZ:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not lim["vco"][0] * MHZ <= vco <= lim["vco"][1] * MHZ:
                continue
            for divq in range(1, 7):
                f = vco / 2**divq
                if lim["out"][0] * MHZ <= f <= lim["out"][1] * MHZ:
                    out.add(f)
    return out


def ecp5_reachable(f_in: int) -> set:
    """Every output an EHXPLLL (CLKOP feedback) can make from f_in, by brute force."""
    lim = fpga.ECP5_PLL_MHZ
    out = set()
    for clki in range(1, 129):
        pfd = Fraction(f_in, clki)
        if not lim["pfd"][0] * MHZ <= pfd <= lim["pfd"][1] * MHZ:
            continue
        for fb in range(1, 81):
            f = pfd * fb
            if not lim["out"][0] * MHZ <= f <= lim["out"][1] * MHZ:
                continue
            if any(lim["vco"][0] * MHZ <= f * k <= lim["vco"][1] * MHZ for k in range(1, 129)):
                out.add(f)
    return out


def check_pll(kind: str, f_in: int, f_out: int):
    """Search, then hold the result to the PLL's equation and limits; return the config."""
    cfg = fpga.PLL_SEARCH[kind](f_in, f_out)
    lim = fpga.ICE40_PLL_MHZ if kind == "ice40" else fpga.ECP5_PLL_MHZ
    assert fpga.pll_output(kind, cfg.params, f_in) == f_out, (kind, f_in, f_out, cfg)
    assert lim["vco"][0] * MHZ <= cfg.f_vco <= lim["vco"][1] * MHZ, cfg
    assert lim["pfd"][0] * MHZ <= cfg.f_pfd <= lim["pfd"][1] * MHZ, cfg
    p = cfg.params
    if kind == "ice40":
        assert 0 <= p["DIVR"] <= 15 and 0 <= p["DIVF"] <= 127 and 1 <= p["DIVQ"] <= 6, p
        assert cfg.f_vco == Fraction(f_in, p["DIVR"] + 1) * (p["DIVF"] + 1)
        assert cfg.f_vco / 2 ** p["DIVQ"] == f_out
    else:
        assert 1 <= p["CLKI_DIV"] <= 128 and 1 <= p["CLKFB_DIV"] <= 80, p
        assert 1 <= p["CLKOP_DIV"] <= 128, p
        assert cfg.f_vco == f_out * p["CLKOP_DIV"]
    return cfg


def test_ice40_pll_icebreaker_48mhz():
    cfg = check_pll("ice40", 12 * MHZ, 48 * MHZ)
    assert cfg.params == {"FEEDBACK_PATH": "SIMPLE", "DIVR": 0, "DIVF": 63, "DIVQ": 4,
                          "FILTER_RANGE": 1}
    assert cfg.f_vco == 768 * MHZ


def test_ecp5_pll_ulx3s_150mhz():
    cfg = check_pll("ecp5", 25 * MHZ, 150 * MHZ)
    assert (cfg.params["CLKI_DIV"], cfg.params["CLKFB_DIV"], cfg.params["CLKOP_DIV"]) == (1, 6, 4)
    assert cfg.f_vco == 600 * MHZ


@pytest.mark.parametrize("kind, f_in, reachable", [
    ("ice40", 12 * MHZ, ice40_reachable), ("ecp5", 25 * MHZ, ecp5_reachable)])
def test_pll_search_is_exact_and_complete(kind, f_in, reachable):
    """Over a sweep of targets: found exactly when brute force says it exists, else refused."""
    can = reachable(f_in)
    targets = sorted({f for f in can if f.denominator == 1 and f % (MHZ // 4) == 0}
                     | {k * MHZ for k in range(1, 420, 7)} | {47_123_456, 150 * MHZ + 1})
    found = refused = 0
    for f_out in targets:
        if f_out in can:
            check_pll(kind, f_in, int(f_out))
            found += 1
        else:
            with pytest.raises(ValueError, match="PLL"):
                fpga.PLL_SEARCH[kind](f_in, int(f_out))
            refused += 1
    assert found > 20 and refused > 20, (found, refused)


@pytest.mark.parametrize("kind, f_in, f_out, why", [
    ("ice40", 12 * MHZ, 47_123_456, "exactly"),
    ("ice40", 12 * MHZ, 300 * MHZ, "outside"),
    ("ice40", 5 * MHZ, 48 * MHZ, "outside"),
    ("ecp5", 25 * MHZ, 5 * MHZ, "outside"),
    ("ecp5", 25 * MHZ, 150 * MHZ + 1, "exactly"),
])
def test_pll_refuses_impossible_targets(kind, f_in, f_out, why):
    with pytest.raises(ValueError, match=why):
        fpga.PLL_SEARCH[kind](f_in, f_out)


@pytest.mark.parametrize("board", list(fpga.BOARDS))
def test_every_chip_clock_is_reachable(board):
    b = fpga.BOARDS[board]
    if CHIPS[board].clk_hz != fpga.BoardTop._osc_hz(b):      # else no PLL
        check_pll(b.pll, fpga.BoardTop._osc_hz(b), CHIPS[board].clk_hz)


# -- the wrapper refuses what it cannot connect ---------------------------------------------------

class Odd(wiring.Component):
    uart_tx: Out(1)
    start: In(1)

    def elaborate(self, platform):
        return Module()


class Silent(wiring.Component):
    uart_rx: In(1)

    def elaborate(self, platform):
        return Module()


@pytest.mark.parametrize("cls, why", [(Odd, "'start'"), (Silent, "drives no board pin")])
def test_wrapper_refuses_unconnectable_design(cls, why):
    with pytest.raises(ValueError, match=why):
        fpga.BoardTop(fpga.BOARDS["icebreaker"], cls(), 48 * MHZ)


# -- the reset held after lock ------------------------------------------------------------------

@pytest.mark.parametrize("cycles", [1, 2, 5])
def test_reset_hold_releases_after_cycles_from_a_register(cycles):
    """`rst` is high in exactly the first `cycles` cycles after reset, then low for good; and it
    is a flip-flop: nothing the timer does within a cycle shows on it before the clock edge."""
    dut = fpga.ResetHold(cycles)
    seen = []

    async def bench(ctx):
        for _ in range(cycles + 6):
            seen.append(ctx.get(dut.rst))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [1] * cycles + [0] * 6
    # Registered: the output port is the Q of a flip-flop (the same sequence could come from
    # the timer's comparison, which is what this guards against).
    cells = rtlil.convert(fpga.ResetHold(cycles)).split("\n  cell ")[1:]
    drivers = [c.split()[0] for c in cells if re.search(r"connect \\Q \\rst$", c, re.M)]
    assert drivers == ["$dff"]


# -- register copies ------------------------------------------------------------------------------

class _TwoCopies(wiring.Component):
    """One bit registered twice (`rtl.memport.copies`), each copy gating half of a byte."""

    d: In(1)
    a: In(8)
    y: Out(8)

    def elaborate(self, platform):
        m = Module()
        c = copies(m, "d_q", self.d, 2)
        m.d.comb += self.y.eq(Cat(self.a[:4] & c[0].replicate(4), self.a[4:] & c[1].replicate(4)))
        return m


@pytest.mark.parametrize("family", ["ecp5", "ice40"])
def test_flow_keeps_register_copies_apart(tmp_path, family):
    """The flow's Yosys script keeps both copies as flip-flops; without its line for them,
    Yosys merges them into one (so the count below tells the two apart)."""
    (tmp_path / "top.il").write_text(rtlil.convert(_TwoCopies()))
    after_read = fpga._overrides(family, "top")["script_after_read"]
    ff = fpga.SYNTH_CELLS[family]["ff"]
    counts = []
    for script in (after_read, after_read.replace(fpga.KEEP_COPIES, "")):
        cmd = f"read_rtlil top.il; {script.replace(chr(10), '; ')}; " \
              f"synth_{family} -noabc9 -top top; tee -q -o stat.json stat -json"
        subprocess.run([fpga._tool_command("yosys"), "-q", "-p", cmd], cwd=tmp_path,
                       check=True, env=fpga._tool_env())
        cells = json.loads((tmp_path / "stat.json").read_text())["design"]["num_cells_by_type"]
        counts.append(sum(n for t, n in cells.items() if re.fullmatch(ff, t)))
    assert counts == [2, 1]


# -- report parsing and checks -------------------------------------------------------------------

STAT = {"design": {"num_cells_by_type": {
    "$scopeinfo": 12, "SB_LUT4": 4000, "SB_DFF": 100, "SB_DFFESR": 900, "SB_CARRY": 300,
    "SB_RAM40_4K": 10, "SB_SPRAM256KA": 4, "SB_IO": 5, "SB_PLL40_PAD": 1}}}
PNR = {
    "utilization": {"ICESTORM_LC": {"used": 4321, "available": 5280},
                    "ICESTORM_RAM": {"used": 10, "available": 30},
                    "ICESTORM_SPRAM": {"used": 4, "available": 4},
                    "ICESTORM_DSP": {"used": 0, "available": 8},
                    "SB_IO": {"used": 5, "available": 39}},
    # nextpnr names the clock after its net; the name differs between versions and designs.
    "fmax": {"$glbnet$cd_sync.clk": {"achieved": 52.5, "constraint": 48.0008}},
}


def good_report() -> dict:
    report = {"clk_hz": 48 * MHZ, "steps_s": {"synth": 1.0, "pnr": 1.0}}
    report.update(fpga.parse_reports("ice40", STAT, PNR))
    return report


def test_parse_reports_fixture():
    r = good_report()
    res = r["resources"]
    assert {k: v["used"] for k, v in res.items()} == {
        "logic_cells": 4321, "lut4": 4000, "ff": 1000, "carry": 300, "bram": 10, "spram": 4,
        "dsp": 0}
    assert res["lut4"]["available"] == fpga.DEVICES["iCE40UP5K"].lut4
    assert res["logic_cells"]["available"] == 5280
    assert r["fmax_mhz"] == {"$glbnet$cd_sync.clk": {"achieved": 52.5, "target": 48.0008}}
    assert "$scopeinfo" not in r["synth_cells"]
    assert fpga.target_fmax(r) == 52.5
    assert fpga.check_report(r) == []


def test_parse_reports_ecp5_fixture():
    stat = {"design": {"num_cells_by_type": {"LUT4": 50, "TRELLIS_FF": 40, "CCU2C": 7,
                                              "DP16KD": 3, "MULT18X18D": 1}}}
    pnr = {"utilization": {"TRELLIS_COMB": {"used": 70, "available": 83640},
                           "DP16KD": {"used": 3, "available": 208},
                           "MULT18X18D": {"used": 1, "available": 156},
                           "ALU54B": {"used": 0, "available": 78}},
           "fmax": {"cd_sync.clk": {"achieved": 151.0, "constraint": 150.0}}}
    r = {"clk_hz": 150 * MHZ, "steps_s": {"pnr": 1.0}}
    r.update(fpga.parse_reports("ecp5", stat, pnr))
    assert {k: v["used"] for k, v in r["resources"].items()} == {
        "logic_cells": 70, "lut4": 50, "ff": 40, "carry": 7, "bram": 3, "spram": 0, "dsp": 1}
    assert fpga.check_report(r) == ["uses 1 DSP block(s); the datapath must have no multiplier"]


CLOCK = "$glbnet$cd_sync.clk"


def doctor(path: tuple, value) -> dict:
    """A good report with the entry at `path` (a tuple of keys) replaced by `value`."""
    r = good_report()
    node = r
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return r


@pytest.mark.parametrize("path, value, problem", [
    (("fmax_mhz", CLOCK, "achieved"), 47.9, "timing not met: clock $glbnet$cd_sync.clk"),
    (("resources", "dsp", "used"), 1, "uses 1 DSP block(s)"),
    (("resources", "lut4", "used"), 5281, "does not fit: 5,281 LUT4 needed"),
    (("resources", "logic_cells", "used"), 5281, "does not fit: 5,281 logic cells"),
    (("resources", "spram", "used"), 5, "does not fit: 5 SPRAMs"),
    (("fmax_mhz", CLOCK, "target"), 12.0, "no clock constrained at 48 MHz"),
    (("fmax_mhz",), {}, "no clock constrained at 48 MHz"),
])
def test_check_report_catches(path, value, problem):
    problems = fpga.check_report(doctor(path, value))
    assert any(problem in p for p in problems), problems


def test_check_report_before_place_and_route():
    """Synthesis alone (no fmax yet) is judged on resources only."""
    r = {"clk_hz": 48 * MHZ, "steps_s": {"synth": 1.0}}
    r.update(fpga.parse_reports("ice40", STAT, None))
    assert fpga.check_report(r) == []
    r["resources"]["lut4"]["used"] = 12_600
    assert fpga.check_report(r) == ["does not fit: 12,600 LUT4 needed, 5,280 available"]


def test_check_report_lut4_per_lane():
    """The ULX3S allows 50 LUT4 per lane (issue #7); the iCEBreaker sets no bound."""
    stat = {"design": {"num_cells_by_type": {"LUT4": 50 * 320, "TRELLIS_FF": 40}}}
    r = {"board": "ulx3s", "lanes": 320, "clk_hz": 25 * MHZ, "steps_s": {"synth": 1.0}}
    r.update(fpga.parse_reports("ecp5", stat, None))
    assert fpga.check_report(r) == []
    r["resources"]["lut4"]["used"] += 1
    assert fpga.check_report(r) == [
        "50.0 LUT4 per lane (16,001 for 320 lanes), more than the 50 allowed"]
    r["board"] = "icebreaker"
    assert fpga.check_report(r) == []


def test_commit_names_the_checkout():
    # 7 hex digits, and "+" when rtl/ differs from HEAD; git is there in every checkout.
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=fpga.ROOT,
                          capture_output=True, text=True).stdout.strip()
    commit = fpga._commit()
    assert re.fullmatch(r"[0-9a-f]{7}\+?", commit) and commit.rstrip("+") == head, commit


def board_report(board="icebreaker", **changes) -> dict:
    r = good_report()
    r.update(board=board, device=fpga.BOARDS[board].device, design="chip",
             scale_point="tiny", lanes=20, rows=20, token_lanes=1, ok=True, problems=[],
             total_s=2.0, date="2026-01-01", machine=fpga.machine(),
             versions=fpga._versions(), commit="abc1234")
    r.update(changes)
    return r


def test_results_section_replaces_only_its_own(tmp_path):
    path = tmp_path / "results.md"
    path.write_text(f"# Results\n\nintro\n\n{fpga.BEGIN}\nstale section\n{fpga.END}\n\n"
                    "## Later\n\nkept\n")
    r = board_report()
    fpga.write_results(path, fpga.render([r], "python -m rtl.fpga"))
    text = path.read_text()
    assert text.startswith("# Results\n\nintro\n\n" + fpga.BEGIN)
    assert text.endswith(fpga.END + "\n\n## Later\n\nkept\n")
    assert "stale section" not in text and "| icebreaker (iCE40UP5K) |" in text
    assert "52.5 MHz" in text
    assert "| 200.0 |" in text and "| abc1234 |" in text     # LUT4 per lane, commit


def test_results_row_counts_the_block_rams_with_their_output_register():
    fold = {"block_rams": 125, "folded": 91, "flip_flops": 1196, "by_memory": {}}
    row = fpga._row(board_report("ulx3s", lanes=320, bram_fold=fold))
    bram = row.split("|")[fpga.HEADER.split("|").index(" block RAM ")]
    assert bram.strip().endswith(", 91 with OUTREG"), bram
    assert "OUTREG" not in fpga._row(board_report())


def test_results_keep_other_boards_rows():
    """Building one board replaces its row and keeps the others' (with their commits); rows
    of an older table layout are dropped rather than mixed in."""
    ice, ulx = board_report(), board_report("ulx3s", commit="0ld0ld0", lanes=320)
    both = fpga.render([ice, ulx], "python -m rtl.fpga")
    ice2 = board_report(commit="new1234")
    kept = fpga.kept_rows(both, [ice2])
    assert len(kept) == 1 and "| ulx3s (" in kept[0] and "0ld0ld0" in kept[0]
    assert "(at most 50)" in kept[0]
    again = fpga.render([ice2], "python -m rtl.fpga --board icebreaker", kept)
    rows = [line for line in again.splitlines() if line.startswith("| ") and "(" in line[:20]]
    assert [r.split("|")[1].strip() for r in rows] == ["ulx3s (LFE5U-85F)",
                                                        "icebreaker (iCE40UP5K)"]
    assert "new1234" in rows[1] and "abc1234" not in again
    assert "1 row(s) of earlier builds kept" in again
    old_layout = both.replace(fpga.HEADER, "| board | design | lanes | clock |")
    assert fpga.kept_rows(old_layout, [ice2]) == []
    assert fpga.kept_rows("no section here", [ice2]) == []


def test_results_row_names_its_seed_and_keeps_the_default_one():
    """A build with another nextpnr seed gets a row of its own beside the default placement's,
    naming the seed; building that seed again replaces only it."""
    ice, seeded = board_report(), board_report(seed=2, commit="5eed000")
    both = fpga.render([ice, seeded], "python -m rtl.fpga")
    assert "| chip, tiny |" in both and "| chip, tiny, nextpnr seed 2 |" in both
    kept = fpga.kept_rows(both, [board_report(seed=2)])
    assert len(kept) == 1 and "nextpnr seed" not in kept[0]
    kept = fpga.kept_rows(both, [board_report()])
    assert len(kept) == 1 and "nextpnr seed 2" in kept[0] and "5eed000" in kept[0]


def test_seed_reaches_nextpnr_and_the_report(tmp_path):
    """`seed` is on nextpnr's command line in the flow script, in the report, and in the
    design hash, so that a build with another seed is never served from the cache."""
    board, top = "icebreaker", "rtl.compare:ternary_array"
    design = fpga.design_for(board, top=top)
    plain = fpga.build(board, design, tmp_path / "plain", until="synth")
    seeded = fpga.build(board, design, tmp_path / "seeded", until="synth", seed=7)
    script = (tmp_path / "seeded" / "build_ternary_array.sh").read_text()
    assert re.search(r"^\"\$NEXTPNR_ICE40\" .* --seed 7 ", script, re.M)
    assert "--seed" not in (tmp_path / "plain" / "build_ternary_array.sh").read_text()
    assert (plain["seed"], seeded["seed"]) == (None, 7)
    assert plain["design_hash"] != seeded["design_hash"]
    on_disk = json.loads((tmp_path / "seeded" / "report.json").read_text())
    assert on_disk["seed"] == 7


@pytest.mark.parametrize("fmax, tried, kept", [
    ({None: 29.9, 2: 29.5, 3: 33.1, 4: 40.0}, [2, 3], 3),
    ({None: 31.0}, [], None),
    ({None: 29.9, 2: 29.5, 3: 28.0, 4: 29.0}, [2, 3, 4], 4),
], ids=["third", "default", "none"])
def test_missed_placement_retried_with_the_boards_seeds(tmp_path, monkeypatch, fmax, tried,
                                                         kept):
    """A placement that misses the clock is placed again with the board's `retry_seeds`, in
    turn, until one meets it (or none is left: the build keeps the last and fails); the
    report lists every placement, and the results row names the seed of the one kept."""
    assert fpga.BOARDS["icebreaker"].retry_seeds == (2, 3, 4)
    (tmp_path / "chip.stat.json").write_text(json.dumps(STAT))

    def place(seed):
        pnr = {**PNR, "fmax": {"clk": {"achieved": fmax[seed], "constraint": 30.0}}}
        (tmp_path / "chip.pnr.json").write_text(json.dumps(pnr))

    calls = []

    def run(cmd, build_dir, log):
        seed = int(cmd[cmd.index("--seed") + 1])
        assert cmd[:2] == ["nextpnr", "--json"] and log.name == f"pnr-seed{seed}.log"
        calls.append(seed)
        place(seed)
        return 1.0

    monkeypatch.setattr(fpga, "_run", run)
    place(None)
    report = {"board": "icebreaker", "steps_s": {"pnr": 1.0}, "seed": None}
    fpga._retry_placement(["nextpnr", "--json"], "chip", "ice40", tmp_path, report,
                          lambda msg: None)
    assert calls == tried and report["retry_seed"] == kept
    seeds = [None, *tried]
    reports = [f"chip.pnr.{'default' if s is None else f'seed{s}'}.json" for s in seeds]
    reports[-1] = "chip.pnr.json"
    assert report["placements"] == [
        {"seed": s, "missed_mhz": fmax[s] if fmax[s] < 30 else None, "pnr_report": r}
        for s, r in zip(seeds, reports)]
    # Each placement placed again kept its own report, as it was.
    for s, r in zip(seeds, reports):
        kept = json.loads((tmp_path / r).read_text())
        assert kept["fmax"]["clk"]["achieved"] == fmax[s]
    assert report["steps_s"]["pnr"] == 1.0 + len(tried)
    row = fpga._row(board_report(retry_seed=kept))
    assert ("(nextpnr seed" in row) == (kept is not None)
    assert fpga._row_key(row) == fpga._row_key(fpga._row(board_report()))


def test_late_inputs_counts_arrivals_past_the_period_by_block():
    """Inputs whose latest arrival is past the period count, grouped by their cell's
    hierarchy; the earliest arrival and inputs on time do not."""
    def net(*endpoints):
        return {"net": "n", "driver": "d", "port": "O", "event": "posedge clk",
                "endpoints": [{"cell": c, "port": pt, "delay": [lo, hi], "event": "posedge clk"}
                              for c, pt, lo, hi in endpoints]}
    pnr = {"detailed_net_timings": [
        net(("design.accel.load.busy_LC", "I0", 3.0, 11.0),
            ("design.accel.load.pc_LC", "CEN", 12.0, 12.5),
            ("design.accel.load.decoder.t_LC", "I1", 1.0, 10.5)),
        net(("design.link.crc_LC", "I2", 10.1, 9.9),        # only the earliest is late
            ("design.link.crc_LC", "I3", 2.0, 10.0),        # exactly the period: on time
            ("design.mem.bank_RAM", "WADDR_0", 2.0, 13.0)),
        net(("top_LC", "I0", 1.0, 10.2)),
    ]}
    li = fpga.late_inputs(pnr, 10.0)
    assert (li["inputs"], li["late"], li["period_ns"]) == (7, 5, 10.0)
    assert li["groups"] == [
        {"group": "design.accel.load", "late": 3, "worst_ns": 12.5},
        {"group": "design.mem", "late": 1, "worst_ns": 13.0},
        {"group": "top_LC", "late": 1, "worst_ns": 10.2}]
    assert [w["arrival_ns"] for w in li["worst"]] == [13.0, 12.5, 11.0, 10.5, 10.2]
    assert fpga.late_inputs(pnr, 10.0, depth=4)["groups"][0]["group"] == "design.accel.load"
    assert {g["group"] for g in fpga.late_inputs(pnr, 10.0, depth=4)["groups"]} >= {
        "design.accel.load.decoder"}
    text = fpga.census_text({"board": "ulx3s", "clk_hz": 100_000_000, "late_inputs": li})
    assert text.splitlines()[0] == ("ulx3s: 5 of 7 cell inputs arrive later than 10.00 ns "
                                    "(100 MHz)")
    with pytest.raises(ValueError, match="--detailed-timing-report"):
        fpga.late_inputs({"fmax": {}}, 10.0)


def test_timing_detail_and_clock_reach_the_flow(tmp_path):
    """`--clock-mhz` builds the chip for another clock (its PLL and timing constraint), and
    `timing_detail` puts nextpnr's detailed report on its command line and in the design
    hash."""
    board, top = "icebreaker", "rtl.compare:ternary_array"
    design = fpga.design_for(board, top=top, clk_hz=48_000_000)
    assert design.chip.clk_hz == 48_000_000
    assert fpga.design_for(board, top=top).chip.clk_hz == CHIPS[board].clk_hz
    plain = fpga.build(board, design, tmp_path / "plain", until="synth")
    detail = fpga.build(board, design, tmp_path / "detail", until="synth", timing_detail=True)
    script = (tmp_path / "detail" / "build_ternary_array.sh").read_text()
    assert re.search(r"^\"\$NEXTPNR_ICE40\" .* --detailed-timing-report", script, re.M)
    pcf = (tmp_path / "detail" / "ternary_array.pcf").read_text()
    assert re.search(r"^set_frequency \S+ 48\.0$", pcf, re.M)
    assert "--detailed-timing-report" not in (tmp_path / "plain" / "build_ternary_array.sh"
                                              ).read_text()
    assert plain["design_hash"] != detail["design_hash"]
    assert detail["clk_hz"] == 48_000_000 and detail["pll"]["f_out_hz"] == 48_000_000


def test_cli_refuses_a_clock_the_pll_cannot_make(capsys, tmp_path):
    code = fpga.main(["--board", "icebreaker", "--until", "synth", "--out", str(tmp_path),
                      "--clock-mhz", "47"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == ("error: icebreaker: --clock-mhz 47: iCE40 PLL: no setting "
                                 "gives exactly 47 MHz from 12 MHz")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, why", [
    (["--clock-mhz", "48", "--results", "x.md"], "--clock-mhz with --results"),
    (["--clock-mhz", "0"], "--clock-mhz 0: must be in"),
], ids=["results", "zero"])
def test_cli_refuses_another_clock_in_the_results_or_none(capsys, argv, why):
    with pytest.raises(SystemExit) as e:
        fpga.main(["--board", "icebreaker", *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and why in err and len(err.splitlines()) == 1


def test_cli_refuses_a_seed_out_of_range(capsys):
    with pytest.raises(SystemExit) as e:
        fpga.main(["--board", "icebreaker", "--seed", "-1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "--seed -1" in err and len(err.splitlines()) == 1


# -- the iCEBreaker bitstream --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("top", [None, "rtl.compare:ternary_array"], ids=["chip", "array"])
def test_icebreaker_bitstream(top):
    # The whole chip (accelerator, SPRAM memory, UART host link), and the tiny scale point's
    # lane array alone (rtl.compare's ternary build, the same 20 lanes) through the same board
    # wrapper, PLL, flow and checks: real bitstreams that must fit and meet the chip's clock.
    board = "icebreaker"
    name = top.split(":")[1] if top else "chip"
    out = fpga.ROOT / "build" / "fpga" / (f"{board}-{name}" if top else board)
    report = fpga.build(board, fpga.design_for(board, top=top), out, say=print)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["design_hash"] == report["design_hash"]
    assert report["ok"], f"{board}: {'; '.join(report['problems'])}"
    bitstream = fpga.ROOT / report["bitstream"]
    assert bitstream.stat().st_size > 0
    res = report["resources"]
    assert all(type(v) is int for r in res.values() for v in r.values()), res
    assert res["dsp"]["used"] == 0
    assert res["logic_cells"]["used"] <= fpga.DEVICES["iCE40UP5K"].lut4
    if top is None:
        assert (res["spram"]["used"], report["lanes"]) == (4, CHIPS[board].array.lanes)
    fmax = fpga.target_fmax(report)
    assert fmax is not None and fmax >= report["clk_hz"] / MHZ, report["fmax_mhz"]
    assert report["clk_hz"] == CHIPS[board].clk_hz
    assert report["pll"] is None or report["pll"]["f_out_hz"] == report["clk_hz"]
    # The capacity table agrees with what nextpnr says the device has.
    util = json.loads((out / f"{name}.pnr.json").read_text())["utilization"]
    dev = fpga.DEVICES["iCE40UP5K"]
    assert (util["ICESTORM_LC"]["available"], util["ICESTORM_RAM"]["available"],
            util["ICESTORM_SPRAM"]["available"], util["ICESTORM_DSP"]["available"]) == \
        (dev.lut4, dev.bram, dev.spram, dev.dsp)
    print(f"\n{board}: {res['logic_cells']['used']} logic cells, {fmax:.1f} MHz, "
          f"steps {report['steps_s']}{' (cached)' if report['cached'] else ''}")


@pytest.mark.slow
def test_ulx3s_synthesis_lut4_per_lane(capsys):
    # The ULX3S chip through synthesis only, from the command line (about a minute; place and
    # route is in `make bitstream`): it must fit in LUT4 per lane (issue #7: at most 50) and
    # use no DSP block, and the build must stop with no place-and-route output.
    board = "ulx3s"
    out = fpga.ROOT / "build" / "fpga-synth" / board
    rc = fpga.main(["--board", board, "--until", "synth", "--out", str(out.parent), "--json"])
    (report,) = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"], f"{board}: {'; '.join(report['problems'])}"
    assert report["bitstream"] is None and set(report["steps_s"]) == {"elaborate", "synth"}
    assert not (out / "chip.pnr.json").exists()
    res = report["resources"]
    assert res["dsp"]["used"] == 0 and report["lanes"] == CHIPS[board].array.lanes >= 256
    per_lane = fpga.lut4_per_lane(report)
    assert per_lane <= fpga.BOARDS[board].lut4_per_lane == 50, per_lane
    # The block RAMs whose read the RTL registers right behind them take that register as
    # their output register (rtl.bramfold): both buffers, the program memory, both banks of
    # the chip memory and the 32 base-3 tables, every block RAM of each.
    fold = report["bram_fold"]
    memories = fpga.folded_memories(CHIPS[board])
    assert len(memories) == 5 + CHIPS[board].array.port_bytes
    for memory in memories:
        got = fold["by_memory"][memory]
        assert got["folded"] == got["block_rams"] > 0 and got["why_not"] is None, (memory, got)
    print(f"\n{board}: {res['lut4']['used']} LUT4, {per_lane:.1f} per lane, "
          f"steps {report['steps_s']}{' (cached)' if report['cached'] else ''}")

