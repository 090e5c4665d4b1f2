"""Tests of compiler.synth: valid safetensors files, every tensor of a real model, determinism."""

import errno
import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from compiler.checkpoint import PROJECTION_KINDS, Checkpoint, read_config
from compiler.synth import SHAPES, make_checkpoint, write_safetensors
from compiler.synth import main as synth_main

ITEMSIZE = {"U8": 1, "BF16": 2, "F16": 2, "F32": 4, "I32": 4}


def check_layout(file: Path) -> dict:
    """Check the safetensors layout of `file` independently of compiler.checkpoint."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0, "data section not 8-byte aligned"
    header = json.loads(raw[8:8 + n])
    assert header.pop("__metadata__") == {"format": "pt"}
    pos = 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        begin, end = e["data_offsets"]
        assert begin == pos, f"{name}: not contiguous"
        assert end - begin == ITEMSIZE[e["dtype"]] * math.prod(e["shape"]), name
        pos = end
    assert 8 + n + pos == len(raw), "data section size differs from the header's"
    return header


def expected_names(layers: int, packed: bool, tied: bool) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                  p + "self_attn.attn_sub_norm.weight", p + "mlp.ffn_sub_norm.weight"}
        for kind in PROJECTION_KINDS:
            w = p + ("self_attn." if kind[0] in "qkvo" else "mlp.") + kind + ".weight"
            names |= {w, w + "_scale"} if packed else {w}
    return names if tied else names | {"lm_head.weight"}


@pytest.mark.parametrize("kw", [
    dict(), dict(packed=False), dict(shards=3), dict(dtype="float16", packed=False),
    dict(dtype="float32", linear_class="bitlinear", tie_word_embeddings=False),
    dict(latent=False),
], ids=["packed", "float", "sharded", "fp16", "fp32-untied", "direct"])
def test_files_read_back_identically_with_safetensors(tmp_path, kw):
    d = make_checkpoint(tmp_path / "m", "tiny", **kw)
    ckpt = Checkpoint(d)
    files = sorted(d.glob("*.safetensors"))
    assert len(files) == kw.get("shards", 1)
    seen = set()
    for file in files:
        header = check_layout(file)
        with safe_open(file, "numpy") as f:
            names = f.keys()   # a safe_open handle is not iterable
            assert set(names) == set(header)
            for name in names:
                theirs, ours = f.get_tensor(name), ckpt.read(name)
                assert theirs.dtype == ours.dtype and theirs.shape == ours.shape, name
                assert theirs.tobytes() == ours.tobytes(), name
                assert ckpt.info(name) == (header[name]["dtype"], ours.shape, file)
                seen.add(name)
    assert seen == set(ckpt.names()) == expected_names(
        2, kw.get("packed", True), kw.get("tie_word_embeddings", True))


def test_index_lists_every_tensor_once(tmp_path):
    d = make_checkpoint(tmp_path / "m", "tiny", shards=4)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(d.glob("model-*-of-00004.safetensors"))
    assert [f.name for f in files] == [f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)]
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert index["metadata"]["total_size"] == sum(
        f.stat().st_size - 8 - struct.unpack("<Q", f.read_bytes()[:8])[0] for f in files)
    assert set(index["weight_map"]) == expected_names(2, True, True)


@pytest.mark.parametrize("packed", [True, False])
def test_deterministic_in_seed(tmp_path, packed):
    a = make_checkpoint(tmp_path / "a", "tiny", packed=packed, seed=5)
    b = make_checkpoint(tmp_path / "b", "tiny", packed=packed, seed=5)
    c = make_checkpoint(tmp_path / "c", "tiny", packed=packed, seed=6)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_values_do_not_depend_on_sharding(tmp_path):
    one = Checkpoint(make_checkpoint(tmp_path / "one", "tiny", seed=2))
    two = Checkpoint(make_checkpoint(tmp_path / "two", "tiny", seed=2, shards=2))
    for name in one.names():
        assert one.read(name).tobytes() == two.read(name).tobytes(), name


@pytest.mark.parametrize("shape, latent", [("tiny", None), ("demo", None), ("tiny", False)])
def test_model_is_numerically_sane(tmp_path, shape, latent):
    """Ternary weights use all three values, and a unit-RMS input gives outputs of RMS < 1.5."""
    ckpt = Checkpoint(make_checkpoint(tmp_path / "m", shape, latent=latent))
    for p in ckpt.projections():
        w_t, gamma = ckpt.ternary(p)
        share = np.bincount(w_t.ravel() + 1, minlength=3) / w_t.size
        assert (share > 0.15).all(), (p.name, share)
        out_rms = gamma * math.sqrt(p.k * (share[0] + share[2]))
        assert 0.02 < out_rms < 1.5, (p.name, gamma, out_rms)
    emb = ckpt.embedding().astype(np.float32)
    assert 0.5 < emb.std() * math.sqrt(ckpt.config.hidden_size) < 2
    norms = ckpt.norm("model.norm.weight")
    assert ((norms >= 0.75) & (norms <= 1.25)).all()


def test_direct_codes_use_the_fixed_gamma(tmp_path):
    ckpt = Checkpoint(make_checkpoint(tmp_path / "m", "tiny", latent=False))
    _, gamma = ckpt.ternary(ckpt.projections()[0])   # q_proj: std 1/sqrt(64)
    assert gamma == np.float32(ml_dtypes.bfloat16(math.sqrt(2 / math.pi) / 8))


@pytest.mark.parametrize("spelling", ["hf", "transformers5"])
def test_config_of_2b4t(tmp_path, spelling, monkeypatch):
    # only the config: writing the 1.2 GB of weights is measured by hand, not in the suite
    import compiler.synth as synth
    monkeypatch.setattr(synth, "write_streaming", lambda path, specs, meta: 0)
    cfg = read_config(make_checkpoint(tmp_path / "m", "2b4t", config_spelling=spelling))
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers) == (2560, 6912, 30)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (20, 5, 128, 128256)
    assert (cfg.bos_token_id, cfg.eos_token_id) == (128000, 128001)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings) == (5e5, 1e-5, 4096)
    assert cfg.hidden_act == "relu2" and cfg.tie_word_embeddings and cfg.dtype == "bfloat16"
    assert cfg.raw["quantization_config"] == {
        "quant_method": "bitnet", "linear_class": "autobitlinear",
        "quantization_mode": "offline"}
    assert SHAPES["2b4t"]["num_layers"] == 30


def test_rewriting_replaces_stale_files(tmp_path):
    d = make_checkpoint(tmp_path / "m", "tiny", shards=3)
    make_checkpoint(d, "tiny")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]


def test_write_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    tensors = {"a": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
               "b": rng.integers(0, 255, (4,), dtype=np.uint8),
               "c": np.arange(6, dtype=">i4").reshape(2, 3),
               "empty": np.zeros((0, 7), np.float32)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    with safe_open(tmp_path / "t.safetensors", "numpy") as f:
        for name, a in tensors.items():
            np.testing.assert_array_equal(f.get_tensor(name), a, err_msg=name)


@pytest.mark.parametrize("kw, fragment", [
    (dict(shape="huge"), "shape must be one of"),
    (dict(shape=dict(SHAPES["tiny"], num_kv_heads=3)), "multiple of num_kv_heads"),
    (dict(shape=dict(hidden_size=64)), "needs exactly the keys"),
    (dict(shape=dict(SHAPES["tiny"], hidden_size=36, num_heads=6, num_kv_heads=3)),
     "multiples of 4"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(linear_class="linear"), "linear_class must be one of"),
    (dict(config_spelling="v5"), "config_spelling must be one of"),
    (dict(shards=0), "shards must be an integer"),
])
def test_bad_arguments(tmp_path, kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        make_checkpoint(tmp_path / "m", **kw)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("seed", [-1, True, 1.5])
def test_bad_seed_writes_nothing(tmp_path, seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        make_checkpoint(tmp_path / "m", "tiny", seed=seed)
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_seed_writes_nothing(tmp_path, capsys):
    assert synth_main([str(tmp_path / "m"), "--seed", "-1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: seed must be an integer >= 0, got -1"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shards", [1, 3])
def test_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch, shards):
    import compiler.synth as synth
    real = synth.write_streaming
    old = make_checkpoint(tmp_path / "old", "tiny", seed=1)
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def full(path, specs, meta):
        real(path, specs[:1], meta)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(synth, "write_streaming", full)
    assert synth_main([str(tmp_path / "m"), "--shards", str(shards)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'm'}: cannot be written (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert synth_main([str(old), "--seed", "2"]) == 1           # the old one stays whole
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_refuses_to_replace_a_directory_with_other_files(tmp_path):
    d = make_checkpoint(tmp_path / "m", "tiny")
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a checkpoint \\(it holds notes.txt\\)"):
        make_checkpoint(d, "tiny", seed=1)
    assert (d / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
