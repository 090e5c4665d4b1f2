"""Every command line: `--help` works, and a usage error is one line on stderr (exit 2)."""

import subprocess
import sys

import pytest

#: Every `python -m` entry point of the project.
ENTRY_POINTS = ["compiler.lower", "compiler.nm", "compiler.synth", "sim.run", "sim.generate",
                "sim.board", "sim.amdahl", "sim.bench", "sim.nm_bench", "sim.demo", "rtl.top",
                "rtl.chip", "rtl.fpga", "rtl.isa"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_and_one_line_usage_error(module):
    r = _run(module, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout, (module, r.stderr)
    r = _run(module, "--no-such-option")
    assert r.returncode == 2, (module, r.returncode)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, (module, r.stderr)
    assert lines[0].startswith(f"python -m {module}: error: "), lines
