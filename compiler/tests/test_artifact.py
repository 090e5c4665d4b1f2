"""compiler.artifact: the manifest schema, per-layer checksums, and safe replacement on disk.

Each damaged manifest must give a one-line ArtifactError naming manifest.json and the key; an
existing directory is replaced only when it is an artifact this tool wrote, and a failure part
way (a full disk, SIGTERM) leaves neither a partial artifact nor a temporary directory.
"""

import json
import math
import os
import shutil
import signal

import pytest

from compiler import artifact as artifact_mod
from compiler import lower as lower_mod
from compiler.artifact import FILES, Artifact, ArtifactError
from compiler.lower import lower
from compiler.synth import make_checkpoint
from compiler.tests.full_disk import fill_disk


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("models") / "packed", "tiny", seed=3)


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "art"
    lower(model, out, "tiny")
    return out


@pytest.fixture()
def art(built, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(built, out)
    return out


def refused(path, *fragments) -> str:
    with pytest.raises(ArtifactError) as info:
        Artifact.load(path)
    msg = str(info.value)
    assert "\n" not in msg and "Error:" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def lowered(model, out, capsys) -> tuple[int, str]:
    rc = lower_mod.main([str(model), "-o", str(out), "--target", "tiny"])
    return rc, capsys.readouterr().err.strip()


def leftovers(parent) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# -- the manifest schema --------------------------------------------------------------------------

def _set(*path_value):
    *path, value = path_value

    def edit(m):
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value
    return edit


def _del(*path):
    def edit(m):
        for key in path[:-1]:
            m = m[key]
        del m[path[-1]]
    return edit


@pytest.mark.parametrize("edit, fragment", [
    (_set("files", "weights.bin", 5), "files.weights.bin must be an object"),
    (_set("files", []), "files must be an object"),
    (_set("files", "weights.bin", "bytes", "19456"),
     "files.weights.bin.bytes must be an integer >= 0, got '19456'"),
    (_set("files", "weights.bin", "bytes", 19456.0), "files.weights.bin.bytes must be an integer"),
    (_set("files", "weights.bin", "sha256", 7), "files.weights.bin.sha256 must be"),
    (_del("token_batch"), "has no 'token_batch'"),
    (_set("token_batch", "1"), "token_batch must be an integer >= 1"),
    (_set("token_batch", 0), "token_batch must be an integer >= 1"),
    (_set("token_batch", -3), "token_batch must be an integer >= 1"),
    (_set("token_batch", True), "token_batch must be an integer >= 1"),
    (_del("memory"), "has no 'memory'"),
    (_set("memory", [1]), "memory must be an object"),
    (_del("memory", "x_base"), "memory has no 'x_base'"),
    (_set("memory", "x_base", "a"), "memory.x_base must be an integer"),
    (_set("memory", "x_base", 0), "must lie past the weights"),
    (_set("layers", []), "layers must be a list of at least 1"),
    (_set("layers", {}), "layers must be a list of at least 1"),
    (_set("layers", None), "layers must be a list of at least 1"),
    (_set("layers", 0, [1]), "layers[0] must be an object"),
    (_set("layers", 0, "w_offset", "0"), "layers[0].w_offset must be an integer >= 0"),
    (_set("layers", 0, "w_offset", 0.5), "layers[0].w_offset must be an integer >= 0"),
    (_set("layers", 0, "w_offset", -10), "layers[0].w_offset must be an integer >= 0"),
    (_set("layers", 0, "k", "64"), "layers[0].k must be an integer >= 1"),
    (_set("layers", 0, "k", 64.0), "layers[0].k must be an integer >= 1"),
    (_set("layers", 0, "n", -64), "layers[0].n must be an integer >= 1"),
    (_set("layers", 0, "w_words", 0), "layers[0].w_words must be an integer >= 1"),
    (_set("layers", 0, "n", 1000), "projection takes"),      # w_words no longer fits n
    (_set("layers", 0, "k", 1000), "projection takes"),
    (_set("layers", 0, "zeros", "x"), "layers[0].zeros must be an integer >= 0"),
    (_set("layers", 0, "zeros", 10**9), "zeros 1000000000 is more than its n * k"),
    (_set("layers", 0, "layer", False), "layers[0].layer must be an integer"),
    (_set("layers", 0, "name", 5), "layers[0].name must be a non-empty string"),
    (_del("layers", 0, "name"), "layers[0] has no 'name'"),
    (_set("layers", 0, "foo", 1), "layers[0] has unknown key(s) 'foo'"),
    (_set("layers", 0, "kind", "nope"), "layers[0].kind must be one of q_proj"),
    (_set("layers", 0, "gamma", math.nan), "layers[0].gamma must be a finite number > 0"),
    (_set("layers", 0, "gamma", math.inf), "layers[0].gamma must be a finite number > 0"),
    (_set("layers", 0, "gamma", 0.0), "layers[0].gamma must be a finite number > 0"),
    (_set("layers", 0, "gamma", "x"), "layers[0].gamma must be a finite number > 0"),
    (_set("layers", 0, "programs", []), "layers[0].programs must be a non-empty object"),
    (_set("layers", 0, "programs", {}), "layers[0].programs must be a non-empty object"),
    (_set("layers", 0, "programs", {"x": [0, 14]}), "has key 'x': expected a token count"),
    (_set("layers", 0, "programs", {"0": [0, 14]}), "has key '0': expected a token count"),
    (_set("layers", 0, "programs", {"1": "ab"}), "programs.1 must be [first instruction, count]"),
    (_set("layers", 0, "programs", {"1": [0, 14, 3]}), "programs.1 must be [first"),
    (_set("layers", 0, "programs", {"1": [-5, 14]}), "programs.1[0] must be an integer >= 0"),
    (_set("layers", 0, "programs", {"1": [0, "14"]}), "programs.1[1] must be an integer >= 1"),
    (_set("layers", 0, "programs", {"2": [0, 14]}), "no program for 1 token(s)"),
    (_set("token_batch", 2), "no program for 2 token(s)"),
    (_set("encoding", 1), "encoding must be one of BASE3, CODE2, NM"),
    (_set("target", "port_bytes", 4.0), "target.port_bytes must be an integer, got 4.0"),
    (_set("target", "tiny"), "target must be an object"),
    (_set("model", "x"), "model must be an object"),
    (_set("version", True), "unknown artifact version True"),
])
def test_malformed_manifest_is_refused_in_one_line(art, edit, fragment):
    mpath = art / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    mpath.write_text(json.dumps(manifest))
    refused(art, str(mpath), fragment)


def test_duplicate_layer_name_is_refused(art):
    mpath = art / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["layers"][1]["name"] = manifest["layers"][0]["name"]
    mpath.write_text(json.dumps(manifest))
    refused(art, "layers[1] (model.layers.0.self_attn.q_proj.weight): name appears twice")


def test_manifest_or_data_file_that_is_a_directory(art):
    (art / "weights.bin").unlink()
    (art / "weights.bin").mkdir()
    refused(art, "weights.bin: not a regular file")
    (art / "manifest.json").unlink()
    (art / "manifest.json").mkdir()
    refused(art, "manifest.json: is a directory")


def test_layer_checksum_catches_a_layer_pointing_at_other_weights(art):
    mpath = art / "manifest.json"
    manifest = json.loads(mpath.read_text())
    first, second = manifest["layers"][:2]
    first["w_offset"] = second["w_offset"]          # a consistent, in-range, wrong slice
    mpath.write_text(json.dumps(manifest))
    refused(art, str(mpath), first["name"], "do not match its sha256")
    assert Artifact.load(art, verify=False).layers[0].w_offset == second["w_offset"]


# -- replacing an existing directory --------------------------------------------------------------

def test_lower_onto_its_own_model_directory_destroys_nothing(model, tmp_path, capsys):
    victim = tmp_path / "X"
    shutil.copytree(model, victim)
    (victim / "manifest.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    rc, err = lowered(victim, victim, capsys)
    assert rc == 2 and "\n" not in err and "model's own directory" in err
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
    rc, err = lowered(victim / "model.safetensors", tmp_path, capsys)
    assert rc == 2 and "a file of the model" in err
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


@pytest.mark.parametrize("make", [
    lambda d: (d / "manifest.json").write_text("{}"),
    lambda d: (d / "manifest.json").write_text('{"format": "something-else"}'),
    lambda d: (d / "manifest.json").write_text("not json"),
    lambda d: (d / "notes.txt").write_text("keep me"),
    lambda d: ((d / "weights.bin").unlink(), (d / "weights.bin").mkdir(),
               (d / "weights.bin" / "mine.txt").write_text("keep me")),
], ids=["empty-manifest", "foreign-format", "not-json", "extra-file", "dir-named-like-ours"])
def test_only_an_artifact_is_replaced(model, built, tmp_path, capsys, make):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    make(out)
    before = sorted(p.name for p in out.iterdir())
    rc, err = lowered(model, out, capsys)
    assert rc == 2 and "\n" not in err and "is not an artifact" in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert leftovers(tmp_path) == []


def test_artifact_and_empty_directory_are_replaced(model, built, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    (out / "programs.bin").unlink()                # damaged, but still ours
    assert lowered(model, out, capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert lowered(model, empty, capsys)[0] == 0
    Artifact.load(empty)


def test_replacing_leaves_a_sibling_named_old_alone(model, tmp_path, capsys):
    sibling = tmp_path / "out.old"
    sibling.mkdir()
    (sibling / "precious.txt").write_text("mine")
    for _ in range(2):
        assert lowered(model, tmp_path / "out", capsys)[0] == 0
    assert (sibling / "precious.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []
    assert oct((tmp_path / "out").stat().st_mode & 0o777) != oct(0o700)


# -- failures on the way --------------------------------------------------------------------------

def test_output_below_a_regular_file(model, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = lowered(model, tmp_path / "file" / "art", capsys)
    assert rc == 2 and "\n" not in err
    assert f"{tmp_path / 'file'} is not a directory" in err
    assert leftovers(tmp_path) == []


def test_full_disk_leaves_no_temporary_directory(model, tmp_path, capsys, monkeypatch):
    fill_disk(monkeypatch)
    rc, err = lowered(model, tmp_path / "art", capsys)
    assert rc == 2 and "\n" not in err
    assert f"{tmp_path / 'art'}: cannot be written (No space left on device)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_is_an_interrupt_that_leaves_nothing(model, tmp_path, capsys, monkeypatch):
    real = artifact_mod.ArtifactWriter.add_weights
    calls = []

    def add_weights(self, image):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, image)

    monkeypatch.setattr(artifact_mod.ArtifactWriter, "add_weights", add_weights)
    before = signal.getsignal(signal.SIGTERM)
    rc, err = lowered(model, tmp_path / "art", capsys)
    assert rc == 128 + signal.SIGTERM and err == "error: interrupted; no artifact written"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_manifest_never_holds_infinity(model, tmp_path, monkeypatch):
    real = lower_mod.Checkpoint.ternary

    def ternary(self, proj):
        w_t, gamma = real(self, proj)
        return w_t, gamma * float("inf")

    monkeypatch.setattr(lower_mod.Checkpoint, "ternary", ternary)
    with pytest.raises(ArtifactError, match="manifest would hold a non-finite number"):
        lower(model, tmp_path / "art", "tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
