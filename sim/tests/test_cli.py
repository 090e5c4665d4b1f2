"""Bad input to the command lines of sim/: one line on stderr, a nonzero exit, nothing left.

Every CLI runs in-process (`main(argv)`); usage errors leave through `ap.error` (SystemExit 2).
"""

import errno
import json
import os
import sys
import warnings

import numpy as np
import pytest

from compiler.artifact import Artifact
from compiler.lower import lower
from compiler.synth import make_checkpoint
from compiler.tests.full_disk import fill_disk
from sim import host
from sim.board import main as board_main
from sim.demo import main as demo_main
from sim.generate import main as generate_main
from sim.run import check_tokens, program_bound
from sim.run import main as run_main

TARGET = "tiny"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cli") / "model", "tiny", packed=True, seed=0)


@pytest.fixture(scope="module")
def art(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "art"
    lower(model, out, TARGET)
    return out


@pytest.fixture
def fresh_model(tmp_path):
    """A model directory of its own (no artifact cache yet)."""
    return make_checkpoint(tmp_path / "model", "tiny", packed=True, seed=0)


def run_cli(main, argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:          # ap.error
        return e.code


def assert_one_line_error(capsys, rc, message):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity (not JSON)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


class ClosedPipe:
    """A stdout whose reader has gone (``... | head -1``)."""

    def write(self, text):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


# -- sim.run --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--layers", "0"], "--layers must be >= 1"),
    (["--layers", "-1"], "--layers must be >= 1"),
    (["--clock-mhz", "nan"], "--clock-mhz must be a finite number > 0"),
    (["--clock-mhz", "inf"], "--clock-mhz must be a finite number > 0"),
    (["--clock-mhz", "0"], "--clock-mhz must be a finite number > 0"),
    (["--tokens", "0"], "--tokens must be >= 1"),
])
def test_run_bad_arguments(art, capsys, args, message):
    assert_one_line_error(capsys, run_cli(run_main, [art, *args]), message)


def test_run_too_many_tokens_fails_before_planning(art, capsys, monkeypatch):
    def planned_in_full(*a):
        raise AssertionError("a whole program was planned")
    monkeypatch.setattr(Artifact, "program", planned_in_full)
    rc = run_cli(run_main, [art, "--tokens", "1000000"])
    assert_one_line_error(capsys, rc, "program memory of target tiny holds 256")


def test_program_bound_below_real_programs(art):
    a = Artifact.load(art)
    for layer in a.layers:
        for tokens in range(1, 3 * a.token_batch + 4):
            need, exact = program_bound(a.params, layer.n, layer.k, tokens, a.token_batch,
                                        a.encoding, layer.nm)
            real = len(a.program(layer, tokens)[1])
            assert need == real if exact else need <= real, (layer.name, tokens)
    check_tokens(a, 1)


def test_run_json_valid(art, capsys):
    assert run_cli(run_main, [art, "--json", "--layers", "2"]) == 0
    doc = strict_json(capsys.readouterr().out)
    assert len(doc["layers"]) == 2 and doc["clock_mhz"] == 1000.0


def test_run_closed_stdout_quiet(art, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    rc = run_cli(run_main, [art, "--layers", "1"])
    assert rc == 1 and capsys.readouterr().err == ""


# -- sim.generate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ids, message", [
    ("99999999999999999999", "token id 99999999999999999999 is outside the vocabulary"),
    ("-99999999999999999999", "is outside the vocabulary"),
    ("1,,2", "empty id at position 2"),
    ("1,2,", "empty id at position 3"),
])
def test_generate_bad_ids(model, capsys, ids, message):
    rc = run_cli(generate_main, [model, "--prompt-ids", ids, "--target", TARGET])
    assert_one_line_error(capsys, rc, message)


@pytest.mark.parametrize("name, message", [
    (".", "is a directory"),
    ("lg", "must name a .npy file"),
])
def test_generate_logits_path_refused(model, tmp_path, capsys, name, message):
    d = tmp_path / "d.npy"
    d.mkdir()
    path = d if name == "." else tmp_path / name
    rc = run_cli(generate_main, [model, "--prompt-ids", "1,2", "--backend", "golden",
                                 "--logits", path])
    assert_one_line_error(capsys, rc, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy"]


def test_generate_logits_written_where_reported(model, tmp_path, capsys):
    path = tmp_path / "sub" / "lg.npy"
    rc = run_cli(generate_main, [model, "--prompt-ids", "1,2", "--max-new-tokens", "2",
                                 "--backend", "golden", "--logits", path, "--json"])
    assert rc == 0
    doc = strict_json(capsys.readouterr().out)
    assert doc["logits"] == str(path) and os.listdir(path.parent) == ["lg.npy"]
    assert np.load(path).shape == (3, 256)


def test_generate_logits_full_disk(model, tmp_path, capsys, monkeypatch):
    def save_part(f, a):
        f.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "save", save_part)
    path = tmp_path / "lg.npy"
    rc = run_cli(generate_main, [model, "--prompt-ids", "1,2", "--backend", "golden",
                                 "--logits", path])
    assert_one_line_error(capsys, rc, f"{path}: cannot write the logits: No space left")
    assert list(tmp_path.iterdir()) == []


def test_generate_artifact_cache_full_disk(fresh_model, capsys, monkeypatch):
    # The disk fills while the compiler writes the cache's weight image: one line naming the
    # cache, and nothing left in the model directory (`ArtifactWriter` removes its staging).
    fill_disk(monkeypatch)
    before = sorted(p.name for p in fresh_model.iterdir())
    rc = run_cli(generate_main, [fresh_model, "--prompt-ids", "1,2", "--target", TARGET])
    cache = host.artifact_dir(fresh_model, TARGET)
    assert_one_line_error(capsys, rc, f"{cache}: cannot be written (No space left on device)")
    assert sorted(p.name for p in fresh_model.iterdir()) == before


@pytest.mark.filterwarnings("error")
def test_generate_overflowing_scale_one_line(model, capsys, monkeypatch):
    monkeypatch.setattr(host.GoldenProjector, "gamma", lambda self, proj: np.float32(3e38))
    rc = run_cli(generate_main, [model, "--prompt-ids", "1,2,3", "--backend", "golden"])
    assert_one_line_error(capsys, rc, "layer 0 q_proj: the output is not finite")


def test_host_overflow_names_projection(model):
    m = host.HostModel(model, "golden")
    name = m._projs[(1, "down_proj")].name
    m._gamma[name] = np.float32(3e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(host.HostError, match="layer 1 down_proj: the output"):
            m.forward([1, 2, 3])


def test_generate_closed_stdout_quiet(model, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    rc = run_cli(generate_main, [model, "--prompt-ids", "1,2", "--backend", "golden"])
    assert rc == 1 and capsys.readouterr().err == ""


# -- sim.board ------------------------------------------------------------------------------------

@pytest.fixture
def silent_port():
    """A serial port (pty) that never answers."""
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.mark.parametrize("args, message", [
    (["--timeout", "inf"], "--timeout must be a finite number of seconds > 0"),
    (["--timeout", "nan"], "--timeout must be a finite number of seconds > 0"),
    (["--timeout", "-1"], "--timeout must be a finite number of seconds > 0"),
    (["--timeout", "0"], "--timeout must be a finite number of seconds > 0"),
    (["--layers", "0"], "--layers must be >= 1"),
    (["--baud", "0"], "--baud must be >= 1"),
    (["--tokens", "100000"], "program memory of target tiny holds 256"),
])
def test_board_bad_arguments(art, silent_port, capsys, args, message):
    rc = run_cli(board_main, [silent_port, art, "--layers", "1", *args])
    assert_one_line_error(capsys, rc, message)


# -- sim.demo -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--prompt-tokens", "0"], "--prompt-tokens must be >= 1"),
    (["--decode-steps", "-1"], "--decode-steps must be >= 0"),
    (["--target", "nosuch"], "invalid choice: 'nosuch'"),
    (["--clock-mhz", "nan"], "--clock-mhz must be a finite number > 0"),
    (["--prompt-tokens", "100000"], "program memory of target default holds"),
])
def test_demo_bad_arguments_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "demo"
    assert_one_line_error(capsys, run_cli(demo_main, ["--out", out, *args]), message)
    assert not out.exists()

