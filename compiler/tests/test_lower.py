"""compiler.lower end to end: artifacts that run bit-exact, reproducibly, and refuse damage."""

import json

import numpy as np
import pytest

from compiler import lower as lower_mod
from compiler.artifact import Artifact, ArtifactError
from compiler.lower import lower
from compiler.synth import make_checkpoint
from rtl.isa import WeightEncoding
from rtl.params import scale_point
from sim.run import main as run_main
from sim.run import run_artifact


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"packed": make_checkpoint(root / "packed", "tiny", packed=True, seed=3),
            "float": make_checkpoint(root / "float", "tiny", packed=False, seed=3)}


@pytest.mark.parametrize("fmt", ["packed", "float"])
@pytest.mark.parametrize("encoding", scale_point("tiny").encodings, ids=lambda e: e.name)
def test_lowered_model_runs_bit_exact_on_simulator(models, tmp_path, fmt, encoding):
    out = tmp_path / "art"
    summary = lower(models[fmt], out, "tiny", encoding)
    assert summary["layers"] == 14
    art = Artifact.load(out)
    for tokens in (1, 3, art.token_batch + 1):
        reports = run_artifact(art, tokens=tokens, check=True, seed=tokens)
        assert all(r.exact for r in reports), f"{fmt} {encoding.name} tokens={tokens}"


def test_packed_and_float_checkpoints_lower_identically(models, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    lower(models["packed"], a, "tiny")
    lower(models["float"], b, "tiny")
    assert (a / "weights.bin").read_bytes() == (b / "weights.bin").read_bytes()
    assert (a / "programs.bin").read_bytes() == (b / "programs.bin").read_bytes()
    ga = [e["gamma"] for e in json.loads((a / "manifest.json").read_text())["layers"]]
    gb = [e["gamma"] for e in json.loads((b / "manifest.json").read_text())["layers"]]
    assert np.allclose(ga, gb, rtol=1e-2)


def test_relowering_is_byte_identical(models, tmp_path):
    lower(models["packed"], tmp_path / "a", "tiny")
    first = {f: (tmp_path / "a" / f).read_bytes()
             for f in ("manifest.json", "weights.bin", "programs.bin")}
    lower(models["packed"], tmp_path / "a", "tiny")     # replaces the artifact in place
    for f, data in first.items():
        assert (tmp_path / "a" / f).read_bytes() == data, f


def test_bits_per_weight_is_base3_density(models, tmp_path):
    s = lower(models["packed"], tmp_path / "a", "tiny")
    assert s["bits_per_weight"] >= 1.6
    s2 = lower(models["packed"], tmp_path / "b", "tiny", WeightEncoding.CODE2)
    assert s2["bits_per_weight"] >= 2.0 and s2["weight_bytes"] > s["weight_bytes"]


def test_bad_checkpoint_leaves_no_artifact_and_one_line_error(models, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in models["packed"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = bytearray((bad / "model.safetensors").read_bytes())
    (bad / "model.safetensors").write_bytes(bytes(data[:len(data) // 2]))
    out = tmp_path / "out"
    assert lower_mod.main([str(bad), "-o", str(out), "--target", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "model.safetensors" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_refuses_to_replace_a_directory_that_is_not_an_artifact(models, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert lower_mod.main([str(models["packed"]), "-o", str(out), "--target", "tiny"]) == 2
    assert "is not an artifact" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_lower_json_summary(models, tmp_path, capsys):
    assert lower_mod.main([str(models["packed"]), "-o", str(tmp_path / "a"), "--target",
                           "tiny", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["layers"] == 14 and s["encoding"] == "BASE3" and s["instructions"] > 0


@pytest.fixture()
def artifact(models, tmp_path):
    out = tmp_path / "art"
    lower(models["packed"], out, "tiny")
    return out


def test_damaged_artifacts_are_refused(artifact):
    Artifact.load(artifact)
    w = artifact / "weights.bin"
    data = bytearray(w.read_bytes())
    data[5] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Artifact.load(artifact)
    w.write_bytes(bytes(data[:-4]))
    with pytest.raises(ArtifactError, match="truncated"):
        Artifact.load(artifact)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(version=99), "unknown artifact version 99"),
    (lambda m: m.update(format="zip"), "not a ternary-accel-artifact manifest"),
    (lambda m: m.pop("target"), "has no 'target'"),
    (lambda m: m["layers"][0].update(w_offset=10**9), "run past the end of weights.bin"),
])
def test_bad_manifests_are_refused(artifact, edit, match):
    mpath = artifact / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=match):
        Artifact.load(artifact)


def test_sim_run_cli(artifact, capsys, tmp_path):
    assert run_main([str(artifact), "--tokens", "2", "--check", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert len(s["layers"]) == 14 and s["total"]["exact"] is True
    for key in ("cycles", "time_us", "lane_utilization", "read_bandwidth", "bits_per_weight",
                "zero_skip"):
        assert key in s["total"]
    assert run_main([str(artifact)]) == 0
    assert "total" in capsys.readouterr().out
    (artifact / "manifest.json").write_text("{")
    assert run_main([str(artifact)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not valid JSON" in err and "\n" not in err
    assert run_main([str(tmp_path / "missing")]) == 2
