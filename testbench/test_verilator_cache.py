"""The Verilator build cache: superseded builds are pruned, and a failed build says why."""

import os

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from testbench import verilator


def _fake_build(root, name, digest, used=None):
    d = root / f"{name}-{digest}"
    d.mkdir()
    (d / "blob").write_bytes(b"x")
    if used is not None:
        (d / ".built").touch()
        os.utime(d / ".built", (used, used))
    return d


def test_prune_keeps_the_most_recently_used(tmp_path):
    used = [_fake_build(tmp_path, "accel-tiny", f"{i:012x}", used=1000 + i) for i in range(5)]
    failed = _fake_build(tmp_path, "accel-tiny", "f" * 12)  # never finished
    other = _fake_build(tmp_path, "accel-tiny2", "0" * 12, used=1)  # another name: untouched
    verilator._prune("accel-tiny", root=tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [d.name for d in used[2:]] + [other.name])
    assert not failed.exists()


class _Toggle(wiring.Component):
    q: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.q.eq(~self.q)
        return m


def test_failed_build_names_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(verilator, "BUILD", tmp_path)
    # A flag Verilator does not know makes the build fail before any compiler runs.
    monkeypatch.setattr(verilator, "VERILATOR_ARGS", ["--no-such-flag"])
    with pytest.raises(RuntimeError, match=r"Verilator build of broken failed .*full log: "):
        verilator.build(_Toggle(), "broken")
