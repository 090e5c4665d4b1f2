"""Tests of compiler.checkpoint: formats, scale semantics, config spellings, and every refusal.

Checkpoints are built in tmp_path with compiler.synth, then damaged: each refusal is checked to
be a one-line CheckpointError naming the file, the tensor and the problem.
"""

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from compiler.checkpoint import (
    PROJECTION_KINDS,
    Checkpoint,
    CheckpointError,
    Projection,
    read_config,
)
from compiler.synth import make_checkpoint, write_safetensors
from sim.golden import absmean_ternarize, hf_pack

BF16 = ml_dtypes.bfloat16
MODEL = "model.safetensors"
Q0 = "model.layers.0.self_attn.q_proj.weight"


# -- helpers --------------------------------------------------------------------------------------

def build(tmp_path: Path, name: str = "m", **kw) -> Path:
    """A tiny synthetic checkpoint directory."""
    return make_checkpoint(tmp_path / name, "tiny", **kw)


def expect_error(action, *fragments: str) -> str:
    """Run `action` (a callable, or a path to open) and check the CheckpointError it raises."""
    with pytest.raises(CheckpointError) as info:
        action() if callable(action) else Checkpoint(action)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def split_file(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def rewrite_header(file: Path, edit) -> None:
    """Apply `edit` to the parsed header of `file`, keeping its data section."""
    header, data = split_file(file)
    edit(header)
    blob = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def rewrite_tensors(file: Path, edit) -> None:
    """Apply `edit` to a dict of all tensors of `file` (read with safetensors), rewrite it."""
    with safe_open(file, "numpy") as f:
        names = f.keys()   # a safe_open handle is not iterable
        tensors = {name: f.get_tensor(name) for name in names}
    edit(tensors)
    write_safetensors(file, tensors, {"format": "pt"})


def poke(file: Path, name: str, index: tuple, value) -> None:
    """Overwrite one element of tensor `name` in place, in its stored dtype."""
    header, _ = split_file(file)
    entry = header[name]
    dtype = {"U8": np.uint8, "BF16": BF16, "F16": np.float16, "F32": np.float32}[entry["dtype"]]
    flat = int(np.ravel_multi_index(index, entry["shape"]))
    (n,) = struct.unpack("<Q", file.read_bytes()[:8])
    at = 8 + n + entry["data_offsets"][0] + flat * np.dtype(dtype).itemsize
    with file.open("r+b") as f:
        f.seek(at)
        f.write(np.array([value], dtype=dtype).tobytes())


def edit_config(model_dir: Path, edit) -> None:
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def projection(ckpt: Checkpoint, layer: int, kind: str) -> Projection:
    return next(p for p in ckpt.projections() if p.layer == layer and p.kind == kind)


# -- reading --------------------------------------------------------------------------------------

def test_projections_in_model_order_with_logical_shapes(tmp_path):
    ckpt = Checkpoint(build(tmp_path))
    projs = ckpt.projections()
    assert [(p.layer, p.kind) for p in projs] == [(i, k) for i in range(2)
                                                 for k in PROJECTION_KINDS]
    shapes = {p.kind: (p.n, p.k) for p in projs}
    assert shapes == {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64),
                      "o_proj": (64, 64), "gate_proj": (160, 64), "up_proj": (160, 64),
                      "down_proj": (64, 160)}
    assert projs[7].name == "model.layers.1.self_attn.q_proj.weight"
    assert projs[-1].name == "model.layers.1.mlp.down_proj.weight"
    assert ckpt.packed()
    assert ckpt.info(Q0) == ("U8", (16, 64), tmp_path / "m" / MODEL)


def test_read_is_a_read_only_memmap_view(tmp_path):
    ckpt = Checkpoint(build(tmp_path))
    a = ckpt.read("model.embed_tokens.weight")
    assert a.dtype == BF16 and a.shape == (256, 64)
    assert not a.flags.writeable
    base = a
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    with pytest.raises(ValueError):
        a[0, 0] = 1


def test_packed_reader_agrees_with_reference_vector(tmp_path):
    # REFERENCE.md 3A: the 8x1 column (-1, 0, 1, 1, 0, -1, 1, 0) packs to bytes [152, 73].
    column = np.array([-1, 0, 1, 1, 0, -1, 1, 0], dtype=np.int8)
    shape = dict(hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                 vocab_size=16)
    d = make_checkpoint(tmp_path / "m", shape)
    packed = np.full((2, 8), 0b01010101, dtype=np.uint8)   # every weight 0
    packed[:, 3] = [152, 73]

    def put(t):
        t[Q0] = packed
    rewrite_tensors(d / MODEL, put)
    ckpt = Checkpoint(d)
    w_t, _ = ckpt.ternary(projection(ckpt, 0, "q_proj"))
    expected = np.zeros((8, 8), dtype=np.int8)
    expected[:, 3] = column
    np.testing.assert_array_equal(w_t, expected)
    np.testing.assert_array_equal(ckpt.read(Q0)[:, 3], [152, 73])
    np.testing.assert_array_equal(hf_pack(expected), packed)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_packed_and_float_checkpoints_agree(tmp_path, seed, dtype):
    packed = Checkpoint(build(tmp_path, "p", seed=seed, dtype=dtype))
    latent = Checkpoint(build(tmp_path, "f", seed=seed, dtype=dtype, packed=False))
    assert packed.packed() and not latent.packed()
    np_dtype = {"bfloat16": BF16, "float16": np.float16, "float32": np.float32}[dtype]
    for p in packed.projections():
        w_p, g_p = packed.ternary(p)
        w_f, g_f = latent.ternary(p)
        assert w_p.dtype == np.int8 and w_p.shape == (p.n, p.k), (seed, p.name)
        assert isinstance(g_p, np.float32) and isinstance(g_f, np.float32), (seed, p.name)
        np.testing.assert_array_equal(w_p, w_f, err_msg=f"seed {seed}, {p.name}")
        # float: gamma from absmean of the stored latents; packed: weight_scale = gamma, stored
        # in the model dtype
        ref_w, ref_g = absmean_ternarize(latent.read(p.name))
        assert g_f == ref_g, (seed, p.name)
        np.testing.assert_array_equal(w_f, ref_w)
        assert g_p == np.float32(np_dtype(g_f)), (seed, p.name, g_p, g_f)


def test_bitlinear_divides_and_autobitlinear_multiplies(tmp_path):
    for linear_class, gamma in (("autobitlinear", 4.0), ("bitlinear", 0.25)):
        d = build(tmp_path, linear_class, linear_class=linear_class)
        poke(d / MODEL, Q0 + "_scale", (0,), 4.0)
        ckpt = Checkpoint(d)
        assert ckpt.config.linear_class == linear_class
        _, g = ckpt.ternary(projection(ckpt, 0, "q_proj"))
        assert g == np.float32(gamma), (linear_class, g)


@pytest.mark.parametrize("seed", [0, 3])
def test_bitlinear_checkpoint_recovers_gamma(tmp_path, seed):
    auto = Checkpoint(build(tmp_path, "a", seed=seed))
    div = Checkpoint(build(tmp_path, "b", seed=seed, linear_class="bitlinear"))
    for p in auto.projections():
        w_a, g_a = auto.ternary(p)
        w_b, g_b = div.ternary(p)
        np.testing.assert_array_equal(w_a, w_b, err_msg=f"seed {seed}, {p.name}")
        stored = np.float32(div.read(p.name + "_scale")[0])
        assert g_b == np.float32(1) / stored, (seed, p.name)
        assert abs(g_b / g_a - 1) < 2 ** -7, (seed, p.name, g_a, g_b)   # two bf16 roundings


@pytest.mark.parametrize("packed", [True, False])
def test_sharded_reading_equals_single_file(tmp_path, packed):
    one = Checkpoint(build(tmp_path, "one", packed=packed))
    three = Checkpoint(build(tmp_path, "three", packed=packed, shards=3))
    assert len(one.files) == 1 and len(three.files) == 3
    assert three.path.name == "model.safetensors.index.json"
    assert sorted(one.names()) == sorted(three.names())
    for name in one.names():
        assert one.info(name)[:2] == three.info(name)[:2], name
        np.testing.assert_array_equal(one.read(name), three.read(name), err_msg=name)
    for p in one.projections():
        w1, g1 = one.ternary(p)
        w3, g3 = three.ternary(p)
        np.testing.assert_array_equal(w1, w3)
        assert g1 == g3
    np.testing.assert_array_equal(one.embedding(), three.embedding())


def test_opens_a_file_an_index_or_a_directory(tmp_path):
    d1, d3 = build(tmp_path, "one"), build(tmp_path, "three", shards=2)
    for path in (d1, d1 / MODEL):
        assert Checkpoint(path).files == [d1 / MODEL]
    for path in (d3, d3 / "model.safetensors.index.json"):
        assert [f.name for f in Checkpoint(path).files] == [
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_both_config_spellings(tmp_path):
    hf = read_config(build(tmp_path, "hf", config_spelling="hf"))
    t5 = read_config(build(tmp_path, "t5", config_spelling="transformers5"))
    assert "rope_theta" in hf.raw and "torch_dtype" in hf.raw
    assert "rope_parameters" in t5.raw and "dtype" in t5.raw
    fields = [f for f in hf.__dataclass_fields__ if f != "raw"]
    assert {f: getattr(hf, f) for f in fields} == {f: getattr(t5, f) for f in fields}
    assert hf.rope_theta == 500000.0 and hf.dtype == "bfloat16"
    assert (hf.num_kv_heads, hf.head_dim, hf.hidden_act) == (2, 16, "relu2")
    assert hf.linear_class == "autobitlinear" and (hf.bos_token_id, hf.eos_token_id) == (1, 2)


def test_config_defaults(tmp_path):
    d = build(tmp_path)

    def drop(cfg):
        del cfg["num_key_value_heads"]
        del cfg["tie_word_embeddings"]
        del cfg["quantization_config"]["linear_class"]
        cfg["head_dim"] = 16
    edit_config(d, drop)
    cfg = read_config(d)
    assert cfg.num_kv_heads == cfg.num_heads == 4
    assert cfg.head_dim == 16
    assert cfg.tie_word_embeddings is False          # BitNetConfig's default
    assert cfg.linear_class is None                  # not guessed ...


def test_packed_without_linear_class_is_refused(tmp_path):
    d = build(tmp_path)
    edit_config(d, lambda cfg: cfg["quantization_config"].pop("linear_class"))
    ckpt = Checkpoint(d)
    with pytest.raises(CheckpointError, match="no linear_class.*multiplies.*divides"):
        ckpt.ternary(ckpt.projections()[0])           # ... and refused when it matters


def test_lm_head_tied_and_untied(tmp_path):
    tied = Checkpoint(build(tmp_path, "t"))
    assert "lm_head.weight" not in tied.names()
    np.testing.assert_array_equal(tied.lm_head(), tied.embedding())
    untied = Checkpoint(build(tmp_path, "u", tie_word_embeddings=False))
    head = untied.lm_head()
    np.testing.assert_array_equal(head, untied.read("lm_head.weight"))
    assert head.shape == (256, 64) and not np.array_equal(head, untied.embedding())


def test_norm_returns_float32(tmp_path):
    ckpt = Checkpoint(build(tmp_path))
    w = ckpt.norm("model.layers.1.mlp.ffn_sub_norm.weight")
    assert w.dtype == np.float32 and w.shape == (160,)
    np.testing.assert_array_equal(
        w, ckpt.read("model.layers.1.mlp.ffn_sub_norm.weight").astype(np.float32))


# -- file-level refusals --------------------------------------------------------------------------

def test_missing_file(tmp_path):
    expect_error(tmp_path / "absent.safetensors", "absent.safetensors", "no such file")


def test_directory_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", "empty", "holds neither model.safetensors")


def test_truncated_file(tmp_path):
    file = build(tmp_path) / MODEL
    file.write_bytes(file.read_bytes()[:-100])
    expect_error(file, str(file), "truncated", "100 bytes missing",
                 "'model.norm.weight'")


def test_header_length_past_end_of_file(tmp_path):
    file = build(tmp_path) / MODEL
    raw = file.read_bytes()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    expect_error(file, str(file), f"header length {len(raw)}", "points past the end")


@pytest.mark.parametrize("content, fragment", [
    (np.random.default_rng(7).bytes(4096), "over the 100000000-byte limit"),
    (b'{"architectures": ["BitNetForCausalLM"], "model_type": "bitnet"}', "a JSON file"),
    (b"\x08\x00\x00", "3 bytes, shorter than the 8-byte header length"),
    (b"", "0 bytes"),
], ids=["random", "json", "short", "empty"])
def test_not_a_safetensors_file(tmp_path, content, fragment):
    d = build(tmp_path)
    (d / MODEL).write_bytes(content)
    expect_error(d, str(d / MODEL), "not a safetensors file", fragment)


def test_bad_json_header(tmp_path):
    file = build(tmp_path) / MODEL
    raw = bytearray(file.read_bytes())
    raw[8] = ord("x")   # the opening brace
    file.write_bytes(bytes(raw))
    expect_error(file, str(file), "header", "is not valid JSON")


def test_header_not_an_object(tmp_path):
    file = tmp_path / MODEL
    file.write_bytes(struct.pack("<Q", 8) + b"[1, 2]  ")
    expect_error(file, str(file), "header is a JSON list")


def test_data_offsets_outside_the_data_section(tmp_path):
    file = build(tmp_path) / MODEL

    def move(h):
        size = file.stat().st_size
        b, e = h["model.layers.0.input_layernorm.weight"]["data_offsets"]
        h["model.layers.0.input_layernorm.weight"]["data_offsets"] = [size, size + e - b]
    rewrite_header(file, move)
    expect_error(file, str(file), "'model.layers.0.input_layernorm.weight'",
                 "lie outside the data section")


def test_data_offsets_inconsistent_with_dtype_and_shape(tmp_path):
    file = build(tmp_path) / MODEL

    def reshape(h):
        h["model.norm.weight"]["shape"] = [32]
    rewrite_header(file, reshape)
    expect_error(file, str(file), "'model.norm.weight'", "span 128 bytes",
                 "dtype BF16 and shape [32] need 64")


@pytest.mark.parametrize("edit, fragment", [
    (lambda h: h.pop("model.layers.0.input_layernorm.weight"), "leave a gap of 128 bytes"),
    (lambda h: h["model.layers.0.input_layernorm.weight"].update(
        data_offsets=h["model.layers.0.self_attn.attn_sub_norm.weight"]["data_offsets"]),
     "overlap tensor"),
    (lambda h: h.pop("model.norm.weight"), "128 bytes after the last tensor's data"),
    (lambda h: h["model.norm.weight"].update(dtype="Q4"), "unknown dtype 'Q4'"),
], ids=["gap", "overlap", "trailing", "dtype"])
def test_bad_header_layout(tmp_path, edit, fragment):
    file = build(tmp_path) / MODEL
    rewrite_header(file, edit)
    expect_error(file, str(file), fragment)


# -- config refusals ------------------------------------------------------------------------------

def test_missing_config(tmp_path):
    d = build(tmp_path)
    (d / "config.json").unlink()
    expect_error(d / MODEL, str(d / "config.json"), "no such file")


def test_config_not_json(tmp_path):
    d = build(tmp_path)
    (d / "config.json").write_text("{'hidden_size': 64,")
    expect_error(d, str(d / "config.json"), "not valid JSON")


@pytest.mark.parametrize("key", [
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "vocab_size", "rms_norm_eps", "hidden_act",
    "max_position_embeddings", "rope_theta", "torch_dtype",
])
def test_config_missing_required_key(tmp_path, key):
    d = build(tmp_path)
    edit_config(d, lambda cfg: cfg.pop(key))
    expect_error(d, str(d / "config.json"), f"missing required key {key!r}")


@pytest.mark.parametrize("edit, fragment", [
    (lambda c: c.update(architectures=["LlamaForCausalLM"]), "unknown architecture"),
    (lambda c: c.update(model_type="llama"), "unknown model_type 'llama'"),
    (lambda c: c.update(hidden_size="64"), "hidden_size must be a positive integer"),
    (lambda c: c.update(num_key_value_heads=3), "not a multiple of num_key_value_heads 3"),
    (lambda c: c.update(head_dim=8), "differs from hidden_size 64"),
    (lambda c: c.update(rms_norm_eps=-1e-5), "rms_norm_eps must be a finite number > 0"),
    (lambda c: c.update(torch_dtype="int8"), "dtype 'int8' is not one of"),
    (lambda c: c.update(dtype="float16"), "contradictory spellings"),
    (lambda c: c.update(rope_parameters={"rope_theta": 10000.0}), "contradictory spellings"),
    (lambda c: c.update(rope_scaling={"rope_type": "llama3"}), "rope_type 'llama3'"),
    (lambda c: c.update(tie_word_embeddings="yes"), "tie_word_embeddings must be true or false"),
    (lambda c: c["quantization_config"].update(linear_class="linear"),
     "linear_class 'linear' is not one of"),
], ids=["arch", "model_type", "int", "gqa", "head_dim", "eps", "dtype", "dtype2", "rope2",
        "rope_scaling", "tie", "linear_class"])
def test_config_bad_value(tmp_path, edit, fragment):
    d = build(tmp_path)
    edit_config(d, edit)
    expect_error(d, str(d / "config.json"), fragment)


# -- tensor structure refusals --------------------------------------------------------------------

@pytest.mark.parametrize("packed, actual, expected", [
    (True, "[40, 64]", "[48, 64]"), (False, "[160, 64]", "[192, 64]")])
def test_projection_shape_contradicts_config(tmp_path, packed, actual, expected):
    d = build(tmp_path, packed=packed)
    edit_config(d, lambda cfg: cfg.update(intermediate_size=192))
    expect_error(d, "'model.layers.0.mlp.gate_proj.weight'", "contradicts the config",
                 f"shape {actual}", f"expected {expected}")


def test_other_tensor_shape_contradicts_config(tmp_path):
    d = build(tmp_path)

    def shrink(t):
        t["model.layers.1.post_attention_layernorm.weight"] = np.ones(32, dtype=BF16)
    rewrite_tensors(d / MODEL, shrink)
    expect_error(d, str(d / MODEL), "'model.layers.1.post_attention_layernorm.weight'",
                 "shape [32]", "expected [64]")


def test_missing_projection_tensor(tmp_path):
    d = build(tmp_path)
    name = "model.layers.1.self_attn.v_proj.weight"

    def drop(t):
        del t[name], t[name + "_scale"]
    rewrite_tensors(d / MODEL, drop)
    expect_error(d, str(d / MODEL), repr(name), "missing projection tensor")


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.norm.weight",
                                  "model.layers.0.mlp.ffn_sub_norm.weight"])
def test_missing_other_tensor(tmp_path, name):
    d = build(tmp_path)
    rewrite_tensors(d / MODEL, lambda t: t.pop(name))
    expect_error(d, repr(name), "missing tensor")


def test_missing_untied_lm_head(tmp_path):
    d = build(tmp_path, tie_word_embeddings=False)
    rewrite_tensors(d / MODEL, lambda t: t.pop("lm_head.weight"))
    expect_error(d, "'lm_head.weight'", "missing tensor (tie_word_embeddings is false)")


def test_int32_projection(tmp_path):
    d = build(tmp_path)
    rewrite_tensors(d / MODEL, lambda t: t.update({Q0: np.zeros((16, 64), dtype=np.int32)}))
    expect_error(d, str(d / MODEL), repr(Q0), "dtype I32")


def test_packed_weights_without_quantization_config(tmp_path):
    d = build(tmp_path)
    edit_config(d, lambda cfg: cfg.pop("quantization_config"))
    expect_error(d, repr(Q0), "packed U8", "no quantization_config with quant_method 'bitnet'")


def test_packed_weights_with_online_quantization(tmp_path):
    d = build(tmp_path)
    edit_config(d, lambda cfg: cfg["quantization_config"].update(quantization_mode="online"))
    expect_error(d, repr(Q0), "quantization_mode 'online'")


def test_float_weights_with_offline_quantization_config(tmp_path):
    d = build(tmp_path, packed=False)
    edit_config(d, lambda cfg: cfg.update(quantization_config={
        "quant_method": "bitnet", "linear_class": "autobitlinear",
        "quantization_mode": "offline"}))
    expect_error(d, repr(Q0), "float BF16", "quant_method 'bitnet'")


def test_float_weights_with_online_quantization_config_are_read(tmp_path):
    d = build(tmp_path, packed=False)
    edit_config(d, lambda cfg: cfg.update(quantization_config={
        "quant_method": "bitnet", "linear_class": "autobitlinear",
        "quantization_mode": "online"}))
    assert not Checkpoint(d).packed()


def test_mixed_packed_and_float_projections(tmp_path):
    d = build(tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    rewrite_tensors(d / MODEL, lambda t: t.update({name: np.zeros((160, 64), dtype=BF16)}))
    expect_error(d, repr(name), "dtype BF16", "either packed or float")


def test_integer_norm_weight(tmp_path):
    d = build(tmp_path)
    rewrite_tensors(d / MODEL, lambda t: t.update({"model.norm.weight": np.ones(64, np.int32)}))
    expect_error(d, "'model.norm.weight'", "dtype I32 is not a float type")


# -- value refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("row, col", [(3, 5), (0, 0), (7, 63)])
def test_invalid_packed_code(tmp_path, row, col):
    d = build(tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    poke(d / MODEL, name, (row, col), 0b01110101)   # code 0b11 in slot 2
    ckpt = Checkpoint(d)
    expect_error(lambda: ckpt.ternary(projection(ckpt, 1, "k_proj")), str(d / MODEL),
                 repr(name), "invalid code 0b11", f"row {row}, column {col}")
    ckpt.ternary(projection(ckpt, 0, "k_proj"))   # the other layer is intact


def test_weight_scale_missing(tmp_path):
    d = build(tmp_path)
    name = "model.layers.0.mlp.down_proj.weight_scale"
    rewrite_tensors(d / MODEL, lambda t: t.pop(name))
    expect_error(d, repr(name), "weight_scale missing")


def test_weight_scale_wrong_shape(tmp_path):
    d = build(tmp_path)
    name = "model.layers.0.mlp.down_proj.weight_scale"
    rewrite_tensors(d / MODEL, lambda t: t.update({name: np.ones(2, dtype=BF16)}))
    expect_error(d, repr(name), "weight_scale must be a float of shape [1], got BF16 [2]")


@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
@pytest.mark.parametrize("value, fragment", [
    (0.0, "is zero"), (-0.5, "is negative (-0.5)"), (np.nan, "is NaN"), (np.inf, "is Inf"),
    (-np.inf, "is -Inf")])
def test_weight_scale_bad_value(tmp_path, linear_class, value, fragment):
    d = build(tmp_path, linear_class=linear_class)
    name = "model.layers.1.mlp.gate_proj.weight"
    poke(d / MODEL, name + "_scale", (0,), value)
    ckpt = Checkpoint(d)
    expect_error(lambda: ckpt.ternary(projection(ckpt, 1, "gate_proj")), str(d / MODEL),
                 repr(name + "_scale"), fragment, "must be finite and > 0")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "-Inf")])
def test_non_finite_float_weights(tmp_path, dtype, value, what):
    d = build(tmp_path, packed=False, dtype=dtype)
    name = "model.layers.0.self_attn.o_proj.weight"
    poke(d / MODEL, name, (2, 3), value)
    ckpt = Checkpoint(d)
    expect_error(lambda: ckpt.ternary(projection(ckpt, 0, "o_proj")), str(d / MODEL),
                 repr(name), f"holds {what} at index (2, 3)")


@pytest.mark.filterwarnings("error")          # no numpy RuntimeWarning may reach the user
@pytest.mark.parametrize("fill, fragment", [
    (slice(None), "the absmean scale of its weights (mean |W|) overflows float32"),
    ((0, 0), "is too large: an output can reach gamma * 128 * k"),
])
def test_huge_float_weights_are_refused(tmp_path, fill, fragment):
    d = build(tmp_path, packed=False, dtype="float32")

    def edit(t):
        w = t[Q0].copy()
        w[fill] = 3e38
        t[Q0] = w
    rewrite_tensors(d / MODEL, edit)
    ckpt = Checkpoint(d)
    expect_error(lambda: ckpt.ternary(projection(ckpt, 0, "q_proj")), str(d / MODEL), repr(Q0),
                 fragment)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("linear_class, value", [("autobitlinear", 3e38),
                                                 ("autobitlinear", 1e35),
                                                 ("bitlinear", 1e-35)])
def test_weight_scale_that_can_overflow_an_output_is_refused(tmp_path, linear_class, value):
    d = build(tmp_path, linear_class=linear_class, dtype="float32")
    poke(d / MODEL, Q0 + "_scale", (0,), value)
    ckpt = Checkpoint(d)
    expect_error(lambda: ckpt.ternary(projection(ckpt, 0, "q_proj")), str(d / MODEL),
                 repr(Q0 + "_scale"), "too large", "* 128 * 64", "beyond float32")


def test_largest_safe_weight_scale_is_read(tmp_path):
    d = build(tmp_path, dtype="float32")
    safe = np.float32(np.finfo(np.float32).max / (128 * 64) * 0.999)
    poke(d / MODEL, Q0 + "_scale", (0,), safe)
    ckpt = Checkpoint(d)
    assert ckpt.ternary(projection(ckpt, 0, "q_proj"))[1] == safe


@pytest.mark.parametrize("name, read", [
    ("model.embed_tokens.weight", lambda c: c.embedding()),
    ("model.embed_tokens.weight", lambda c: c.lm_head()),
    ("model.layers.1.input_layernorm.weight", lambda c: c.norm(
        "model.layers.1.input_layernorm.weight")),
], ids=["embedding", "lm_head", "norm"])
def test_non_finite_other_tensors(tmp_path, name, read):
    d = build(tmp_path)
    index = (5, 7) if "embed" in name else (9,)
    poke(d / MODEL, name, index, np.nan)
    ckpt = Checkpoint(d)
    expect_error(lambda: read(ckpt), repr(name), f"holds NaN at index {index}")


def test_unknown_tensor_name(tmp_path):
    ckpt = Checkpoint(build(tmp_path))
    expect_error(lambda: ckpt.read("model.layers.9.mlp.up_proj.weight"),
                 "'model.layers.9.mlp.up_proj.weight'", "no such tensor")


# -- sharded refusals -----------------------------------------------------------------------------

def edit_index(d: Path, edit) -> Path:
    path = d / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))
    return path


def test_index_points_at_missing_shard(tmp_path):
    d = build(tmp_path, shards=3)
    index = edit_index(d, lambda m: m.update({Q0: "model-00009-of-00003.safetensors"}))
    expect_error(d, str(index), repr(Q0), "shard 'model-00009-of-00003.safetensors'",
                 "does not exist")


@pytest.mark.parametrize("where", ["../{}", "sub/{}", "/tmp/{}"])
def test_index_shard_outside_the_directory_is_refused(tmp_path, where):
    # A shard elsewhere, holding the right tensors: the index may only name files beside it.
    d = build(tmp_path / "model", shards=3)
    shard = "model-00001-of-00003.safetensors"
    target = Path(where.format(shard))
    outside = (d / target) if not target.is_absolute() else tmp_path / "abs" / shard
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes((d / shard).read_bytes())
    name = str(outside) if target.is_absolute() else str(target)
    index = edit_index(d, lambda m: m.update({k: name for k, v in m.items() if v == shard}))
    expect_error(d, str(index), f"shard {name!r} is not a file name beside the index")


def test_index_maps_tensor_to_shard_without_it(tmp_path):
    d = build(tmp_path, shards=3)
    name = "model.norm.weight"
    index = edit_index(d, lambda m: m.update({name: "model-00001-of-00003.safetensors"}))
    expect_error(d, str(index), repr(name),
                 "mapped to shard 'model-00001-of-00003.safetensors', which does not contain it")


def test_shard_holds_tensor_the_index_does_not_list(tmp_path):
    d = build(tmp_path, shards=3)
    edit_index(d, lambda m: m.pop("model.norm.weight"))
    expect_error(d, "model-00003-of-00003.safetensors", "'model.norm.weight'",
                 "not listed for this shard in model.safetensors.index.json")


def test_index_not_json(tmp_path):
    d = build(tmp_path, shards=2)
    (d / "model.safetensors.index.json").write_text("weight_map: {}")
    expect_error(d, "model.safetensors.index.json", "not valid JSON")


def test_damaged_shard_is_named(tmp_path):
    d = build(tmp_path, shards=3)
    shard = d / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    expect_error(d, str(shard), "truncated", "10 bytes missing")
