"""The host side of BitNet b1.58 inference: everything but the ternary projections, in numpy.

A `HostModel` runs a Hugging Face BitNet checkpoint token by token with a KV cache. Every
ternary projection is a BitLinear (REFERENCE.md section 1): the host quantizes its input to int8
per token with `sim.golden.quantize_activations`, the integer product ``acc = x_q . W_t^T`` is
done by a `Projector` (the accelerator's artifact run on the simulator or the RTL under
Verilator, or `sim.golden.ternary_matmul` as the reference path), and the host scales it back
with `sim.golden.dequantize`. The rest runs on the host:

- embedding lookup, widened to float32;
- RMSNorm in float32 (``x / sqrt(mean(x^2) + eps) * w``, as transformers computes it);
- RoPE (default rope type, theta from config.json) on q and k in float32;
- grouped-query attention in float16: q, k and v are rounded to float16, the KV cache stores
  float16, both matrix products take float16 inputs and accumulate in float32 (each product of
  two float16 values is exact in float32), scores and outputs are rounded back to float16;
  the softmax runs in float32 (as transformers' eager attention does) and its probabilities
  are rounded to float16 before the PV product. ``precision="float32"`` keeps all of it in
  float32 instead;
- BitNet's sub-norms (attn_sub_norm before o_proj, ffn_sub_norm before down_proj), the
  relu2-gated FFN (``relu(gate(u))**2 * up(u)``; ``silu(gate(u)) * up(u)`` when hidden_act is
  silu), the residual stream in float32, the final norm;
- the LM head (tied or separate) in float32.

Block: ``h = x + o_proj(attn_sub_norm(attention(q, k, v of input_layernorm(x))))``,
``out = h + down_proj(ffn_sub_norm(act(gate(u)) * up(u)))``, ``u = post_attention_layernorm(h)``.

Every `HostModel.forward` appends a `Step` to `HostModel.ledger`: for the ternary projections,
attention, the LM head and the rest, the measured host time (``time.perf_counter``), the
operations and the bytes moved; for the projections also the accelerator's simulated cycles.
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.artifact import Artifact, ArtifactError, params_to_json
from compiler.checkpoint import Checkpoint, ModelConfig, Projection, projection_list, read_config
from compiler.lower import LowerError, lower
from rtl.isa import TRITS_PER_BYTE, WeightEncoding
from rtl.params import scale_point
from sim.golden import dequantize, quantize_activations, ternary_matmul
from sim.run import RunError, make_backend, run_layer

__all__ = ["BACKENDS", "PARTS", "GoldenProjector", "AcceleratorProjector", "HostModel",
           "HostError", "Step", "prepare_artifact", "artifact_dir"]

#: Where a projection's integer product is computed.
BACKENDS = ("sim", "verilator", "golden")
#: The ledger's parts: (a) ternary projections, (b) attention, (c) LM head, (d) the rest.
PARTS = ("projections", "attention", "lm_head", "other")
PRECISIONS = ("float16", "float32")
ACTIVATIONS = ("relu2", "silu")
#: Bits per weight of the reference path's weight stream, for the byte count (base-3 limit).
GOLDEN_BITS_PER_WEIGHT = 8 / TRITS_PER_BYTE[WeightEncoding.BASE3]
_F32 = np.float32


class HostError(Exception):
    """A model the host cannot run, or bad input (one line)."""


# -- projections ----------------------------------------------------------------------------------

@dataclass
class ProjectionResult:
    """One integer product: the accumulators and what it cost."""

    acc: np.ndarray            # (T, n) int32
    cycles: int | None         # simulated accelerator cycles (None on the golden path)
    weight_bytes: int          # weight bytes streamed


class GoldenProjector:
    """The reference path: ``acc = ternary_matmul(x_q, W_t)`` from the checkpoint's weights."""

    name = "golden"

    def __init__(self, ckpt: Checkpoint):
        self._w = {p.name: ckpt.ternary(p) for p in ckpt.projections()}

    def gamma(self, proj: Projection) -> np.float32:
        return self._w[proj.name][1]

    def weights(self, proj: Projection) -> np.ndarray:
        return self._w[proj.name][0]

    def __call__(self, proj: Projection, x_q: np.ndarray) -> ProjectionResult:
        w_t = self._w[proj.name][0]
        nbytes = math.ceil(proj.n * proj.k * GOLDEN_BITS_PER_WEIGHT / 8)
        return ProjectionResult(ternary_matmul(x_q, w_t), None, nbytes)


class AcceleratorProjector:
    """The accelerator path: each projection's program of `art` on a backend (`sim.run`).

    Token counts above the artifact's stored batch run as several batches, as a runtime would
    issue them. With `check`, every result is compared with the golden integer product of the
    artifact's own weight image and a mismatch raises `HostError`.
    """

    def __init__(self, art: Artifact, backend: str = "sim", check: bool = False):
        self.art, self.name, self.check = art, backend, check
        self.backend = make_backend(backend, art.params)
        self._layers = {e.name: e for e in art.layers}

    def gamma(self, proj: Projection) -> np.float32:
        return _F32(self._layers[proj.name].gamma)

    def __call__(self, proj: Projection, x_q: np.ndarray) -> ProjectionResult:
        entry = self._layers[proj.name]
        batch = self.art.token_batch
        accs, cycles, wbytes = [], 0, 0
        for t0 in range(0, x_q.shape[0], batch):
            try:
                acc, rep = run_layer(self.art, entry, x_q[t0:t0 + batch], self.backend,
                                     self.check)
            except RunError as e:
                raise HostError(str(e)) from None
            if self.check and not rep.exact:
                raise HostError(f"{proj.name}: accelerator result differs from the golden "
                                f"integer product")
            accs.append(acc)
            cycles += rep.cycles
            wbytes += rep.weight_bytes
        return ProjectionResult(np.concatenate(accs), cycles, wbytes)


# -- lowering on the fly --------------------------------------------------------------------------

def artifact_dir(model_dir: Path, target: str) -> Path:
    """The artifact a model is lowered to: ``MODEL_DIR/accel-<target>-base3``."""
    return Path(model_dir) / f"accel-{target}-base3"


def _artifact_matches(path: Path, model_dir: Path, cfg: ModelConfig, target: str) -> bool:
    """An existing artifact is reused when it was lowered from these files for this target.

    It must name this model directory as its source, have this target's parameters and base-3
    weights, hold every projection of the config with its shape, and be newer than config.json
    and every safetensors file of the model.
    """
    man = path / "manifest.json"
    if not man.is_file():
        return False
    try:
        doc = json.loads(man.read_text())
        src = Path(doc["model"]["source"])
        if src != model_dir.resolve() and src.parent != model_dir.resolve():
            return False
        if doc["encoding"] != "BASE3" or doc["target"] != params_to_json(scale_point(target)):
            return False
        want = [(p.name, p.n, p.k) for p in projection_list(cfg)]
        have = [(e["name"], e["n"], e["k"]) for e in doc["layers"]]
        if want != have:
            return False
    except (KeyError, TypeError, ValueError):
        return False
    built = man.stat().st_mtime
    sources = [model_dir / "config.json", *model_dir.glob("*.safetensors"),
               *model_dir.glob("*.safetensors.index.json")]
    return all(s.stat().st_mtime <= built for s in sources if s.is_file())


def prepare_artifact(model_dir: Path, target: str = "default",
                     progress: bool = False) -> tuple[Artifact, bool]:
    """Lower `model_dir` for `target` unless a matching artifact exists; (artifact, reused)."""
    model_dir = Path(model_dir)
    path = artifact_dir(model_dir, target)
    cfg = read_config(model_dir)
    reused = _artifact_matches(path, model_dir, cfg, target)
    if not reused:
        # The compiler writes into a temporary directory beside `path`, renames it into place
        # and removes it on any failure (`compiler.artifact.ArtifactWriter`).
        try:
            lower(model_dir, path, target, WeightEncoding.BASE3, progress=progress)
        except LowerError as e:
            raise HostError(str(e)) from None
        except OSError as e:
            raise HostError(f"{path}: cannot write the artifact cache: {e.strerror or e}") \
                from None
    try:
        return Artifact.load(path), reused
    except ArtifactError as e:
        raise HostError(str(e)) from None


def _check_artifact(art: Artifact, ckpt: Checkpoint) -> None:
    """An artifact given to a `HostModel` must hold the checkpoint's projections, in order."""
    want = [(p.name, p.n, p.k) for p in ckpt.projections()]
    have = [(e.name, e.n, e.k) for e in art.layers]
    if want != have:
        raise HostError(f"{art.path}: its projections are not those of {ckpt.path} "
                        f"(lowered from another model?)")


# -- the ledger -----------------------------------------------------------------------------------

@dataclass
class Part:
    """What one part of one step cost: measured host seconds, operations and bytes moved."""

    seconds: float = 0.0       # measured on this machine (for projections: the host's share)
    ops: int = 0               # FLOPs (host parts) or MACs (projections)
    bytes: int = 0             # bytes read and written
    cycles: int | None = None  # projections on the accelerator: simulated cycles

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "ops": self.ops, "bytes": self.bytes,
                "cycles": self.cycles}


@dataclass
class Step:
    """One forward call: `tokens` new tokens after `past` cached ones."""

    phase: str
    tokens: int
    past: int
    parts: dict = field(default_factory=lambda: {p: Part() for p in PARTS})

    def as_dict(self) -> dict:
        return {"phase": self.phase, "tokens": self.tokens, "past": self.past,
                "parts": {k: v.as_dict() for k, v in self.parts.items()}}


class _Timer:
    """``with timer(step, part):`` adds the elapsed perf_counter time to that part."""

    def __init__(self):
        self.step: Step | None = None

    def __call__(self, part: str):
        return _Span(self.step.parts[part])


class _Span:
    def __init__(self, part: Part):
        self.part = part

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.part.seconds += time.perf_counter() - self.t0


# -- the model ------------------------------------------------------------------------------------

def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(_F32)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(var + _F32(eps))).astype(_F32) * w


def _check_finite(a: np.ndarray, what: str, why: str) -> None:
    """Raise HostError if `a` holds NaN or Inf: `what` is not finite ... (`why`)."""
    if not np.isfinite(a).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise HostError(f"{what} is not finite ({a[idx]} at index {idx}): {why}")


def _rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


class HostModel:
    """A BitNet b1.58 model on the host, its projections on a `Projector`, with a KV cache.

    Parameters
    ----------
    model_dir : directory with config.json and the checkpoint (packed or float)
    backend : "sim" or "verilator" (lower `model_dir` on the fly for `target`, or reuse the
        artifact) or "golden" (sim.golden.ternary_matmul on the checkpoint's weights)
    target : scale point to lower for (accelerator backends)
    precision : "float16" (attention in fp16, the default) or "float32"
    check : accelerator backends: compare every product with the golden one (slower)
    artifact : an already loaded artifact to use instead of lowering
    """

    def __init__(self, model_dir: Path, backend: str = "golden", target: str = "default",
                 precision: str = "float16", check: bool = False,
                 artifact: Artifact | None = None, progress: bool = False):
        if backend not in BACKENDS:
            raise HostError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if precision not in PRECISIONS:
            raise HostError(f"precision must be one of {', '.join(PRECISIONS)}, "
                            f"got {precision!r}")
        self.model_dir = Path(model_dir)
        self.ckpt = Checkpoint(self.model_dir)
        cfg = self.cfg = self.ckpt.config
        if cfg.hidden_act not in ACTIVATIONS:
            raise HostError(f"hidden_act {cfg.hidden_act!r} is not one of "
                            f"{', '.join(ACTIVATIONS)}")
        self.precision = precision
        self.adt = np.float16 if precision == "float16" else _F32
        self.artifact, self.reused = artifact, None
        if backend == "golden":
            self.projector: Callable = GoldenProjector(self.ckpt)
        else:
            if artifact is None:
                self.artifact, self.reused = prepare_artifact(self.model_dir, target, progress)
            else:
                _check_artifact(artifact, self.ckpt)
            self.projector = AcceleratorProjector(self.artifact, backend, check)
        self.backend = backend
        self._projs = {(p.layer, p.kind): p for p in self.ckpt.projections()}
        self._gamma = {p.name: self.projector.gamma(p) for p in self._projs.values()}
        self.embed = self.ckpt.embedding()
        self._head32: np.ndarray | None = None
        self._norms: dict[str, np.ndarray] = {}
        hd = cfg.head_dim
        self.inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.int64)
                                                   .astype(_F32) / _F32(hd)))).astype(_F32)
        self.on_projection: Callable | None = None   # hook(proj, x_q, acc) for tests
        # hook(proj, x): each projection's float input, before int8 quantization (calibration)
        self.on_projection_input: Callable | None = None
        self.ledger: list[Step] = []
        self._timer = _Timer()
        self.reset()

    # -- state --

    def reset(self) -> None:
        """Forget the KV cache and the ledger."""
        c = self.cfg
        self.k_cache = [np.zeros((c.num_kv_heads, 0, c.head_dim), self.adt)
                        for _ in range(c.num_layers)]
        self.v_cache = [np.zeros((c.num_kv_heads, 0, c.head_dim), self.adt)
                        for _ in range(c.num_layers)]
        self.ledger = []

    @property
    def position(self) -> int:
        """Tokens consumed so far (the KV cache length)."""
        return self.k_cache[0].shape[1]

    def _norm(self, name: str) -> np.ndarray:
        if name not in self._norms:
            self._norms[name] = self.ckpt.norm(name)
        return self._norms[name]

    def head(self) -> np.ndarray:
        """The LM head as float32 (converted once and kept)."""
        if self._head32 is None:
            self._head32 = np.asarray(self.ckpt.lm_head(), dtype=_F32)
        return self._head32

    # -- the parts --

    def _rms(self, x: np.ndarray, name: str) -> np.ndarray:
        t = self._timer
        with t("other"):
            y = _rms_norm(x, self._norm(name), self.cfg.rms_norm_eps)
        p = t.step.parts["other"]
        p.ops += 4 * x.size
        p.bytes += 8 * x.size + 4 * x.shape[-1]
        return y

    def _linear(self, x: np.ndarray, layer: int, kind: str) -> np.ndarray:
        """BitLinear: quantize per token (host), integer product (projector), dequantize (host)."""
        proj = self._projs[(layer, kind)]
        if self.on_projection_input is not None:
            self.on_projection_input(proj, x)
        _check_finite(x, f"layer {layer} {kind}: the input", "the host's arithmetic overflowed "
                      "before this projection (are the checkpoint's weights or scales too "
                      "large?)")
        t = self._timer
        with t("other"):
            x_q, amax = quantize_activations(x)
        t0 = time.perf_counter()
        r = self.projector(proj, x_q)
        seconds = time.perf_counter() - t0
        if self.on_projection is not None:
            self.on_projection(proj, x_q, r.acc)
        with t("other"):
            y = dequantize(r.acc, self._gamma[proj.name], amax)
        _check_finite(y, f"layer {layer} {kind}: the output", f"scaling by the weight scale "
                      f"{float(self._gamma[proj.name]):g} overflowed float32")
        parts = t.step.parts
        parts["other"].ops += 3 * x.size + 2 * y.size
        parts["other"].bytes += 4 * x.size + x_q.size + 4 * y.size + 4 * r.acc.size
        p = parts["projections"]
        p.seconds += seconds
        p.ops += x.shape[0] * proj.n * proj.k
        p.bytes += r.weight_bytes + x_q.size + 4 * r.acc.size
        if r.cycles is not None:
            p.cycles = (p.cycles or 0) + r.cycles
        return y

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        freqs = pos.astype(_F32)[:, None] * self.inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb).astype(_F32), np.sin(emb).astype(_F32)
        return x * cos + _rotate_half(x) * sin

    def _matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a @ b with inputs in the attention dtype, float32 accumulation, rounded back."""
        return np.matmul(a.astype(_F32), b.astype(_F32)).astype(self.adt)

    def _attention(self, x: np.ndarray, layer: int) -> np.ndarray:
        c, t = self.cfg, self._timer
        T, hd, H, KV = x.shape[0], c.head_dim, c.num_heads, c.num_kv_heads
        past = self.k_cache[layer].shape[1]
        q = self._linear(x, layer, "q_proj")
        k = self._linear(x, layer, "k_proj")
        v = self._linear(x, layer, "v_proj")
        with t("other"):
            pos = np.arange(past, past + T)
            q = self._rope(q.reshape(T, H, hd).transpose(1, 0, 2), pos)
            k = self._rope(k.reshape(T, KV, hd).transpose(1, 0, 2), pos)
        other = t.step.parts["other"]
        other.ops += 3 * (q.size + k.size)
        other.bytes += 8 * (q.size + k.size)
        with t("attention"):
            kc = np.concatenate([self.k_cache[layer], k.astype(self.adt)], axis=1)
            vc = np.concatenate([self.v_cache[layer],
                                 v.reshape(T, KV, hd).transpose(1, 0, 2).astype(self.adt)],
                                axis=1)
            self.k_cache[layer], self.v_cache[layer] = kc, vc
            S = kc.shape[1]
            g = H // KV
            qh = q.astype(self.adt).reshape(KV, g * T, hd)       # head h uses KV head h // g
            scores = self._matmul(qh, kc.transpose(0, 2, 1)).reshape(H, T, S).astype(_F32)
            scores *= _F32(1 / math.sqrt(hd))
            mask = np.arange(S)[None, :] > (past + np.arange(T))[:, None]
            scores[:, mask] = -np.inf
            scores -= scores.max(axis=-1, keepdims=True)
            e = np.exp(scores)
            probs = (e / e.sum(axis=-1, keepdims=True)).astype(self.adt)
            out = self._matmul(probs.reshape(KV, g * T, S), vc).reshape(H, T, hd)
            out = out.transpose(1, 0, 2).reshape(T, H * hd).astype(_F32)
        # Causal work: query i attends to past + i + 1 keys; 2 products, 2 FLOPs per MAC.
        attended = T * past + T * (T + 1) // 2
        a = t.step.parts["attention"]
        a.ops += 2 * 2 * H * hd * attended + 5 * H * attended
        a.bytes += self.adt(0).itemsize * (2 * KV * hd * S + 2 * H * hd * T)
        return self._linear(self._rms(out, f"model.layers.{layer}.self_attn.attn_sub_norm.weight"),
                            layer, "o_proj")

    def _mlp(self, u: np.ndarray, layer: int) -> np.ndarray:
        t = self._timer
        gate = self._linear(u, layer, "gate_proj")
        up = self._linear(u, layer, "up_proj")
        with t("other"):
            if self.cfg.hidden_act == "relu2":
                act = np.square(np.maximum(gate, _F32(0)))
            else:
                act = gate / (_F32(1) + np.exp(-gate))
            hmid = (act * up).astype(_F32)
        other = t.step.parts["other"]
        other.ops += 3 * gate.size
        other.bytes += 12 * gate.size
        hmid = self._rms(hmid, f"model.layers.{layer}.mlp.ffn_sub_norm.weight")
        return self._linear(hmid, layer, "down_proj")

    def forward(self, ids, phase: str | None = None) -> np.ndarray:
        """Consume token ids (after the cached ones); return float32 logits (len(ids), vocab).

        A NaN or Inf on the way (weight scales that overflow float32) raises HostError naming
        the layer and projection; numpy's floating-point warnings are silenced.
        """
        with np.errstate(all="ignore"):
            return self._forward(ids, phase)

    def _forward(self, ids, phase: str | None) -> np.ndarray:
        c = self.cfg
        try:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        except OverflowError:
            bad = next(int(i) for i in np.ravel(np.asarray(ids, dtype=object))
                       if not -2 ** 63 <= int(i) < 2 ** 63)
            raise HostError(f"token id {bad} is outside the vocabulary [0, {c.vocab_size})") \
                from None
        if ids.size == 0:
            raise HostError("no tokens to process")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            bad = int(ids[(ids < 0) | (ids >= c.vocab_size)][0])
            raise HostError(f"token id {bad} is outside the vocabulary [0, {c.vocab_size})")
        step = Step(phase or ("prefill" if not self.ledger else f"decode {len(self.ledger)}"),
                    int(ids.size), self.position)
        self._timer.step = step
        t = self._timer
        with t("other"):
            x = np.asarray(self.embed[ids], dtype=_F32)
        step.parts["other"].bytes += self.embed.dtype.itemsize * x.size
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            h = x + self._attention(self._rms(x, p + "input_layernorm.weight"), i)
            x = h + self._mlp(self._rms(h, p + "post_attention_layernorm.weight"), i)
            step.parts["other"].ops += 2 * x.size
        x = self._rms(x, "model.norm.weight")
        head = self.head()
        with t("lm_head"):
            logits = x @ head.T
        _check_finite(logits, "the logits", "the final norm or the LM head overflowed float32")
        lm = step.parts["lm_head"]
        lm.ops += 2 * x.shape[0] * head.shape[0] * head.shape[1]
        lm.bytes += self.ckpt.lm_head().dtype.itemsize * head.size + 4 * logits.size
        self.ledger.append(step)
        return logits.astype(_F32)

    def generate(self, prompt_ids, max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        """Greedy decoding: (new token ids, float32 logits of every processed position).

        The logits have shape (len(prompt) + max_new_tokens - 1, vocab): row i is the output
        after consuming token i (the last generated token is not fed back).
        """
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise HostError("the prompt is empty")
        if max_new_tokens < 1:
            raise HostError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        limit = self.cfg.max_position_embeddings
        if len(prompt) + max_new_tokens - 1 > limit:
            raise HostError(f"prompt ({len(prompt)}) + new tokens ({max_new_tokens}) exceed "
                            f"max_position_embeddings {limit}")
        self.reset()
        rows = [self.forward(prompt, "prefill")]
        new = [int(np.argmax(rows[-1][-1]))]
        while len(new) < max_new_tokens:
            rows.append(self.forward([new[-1]], f"decode {len(new)}"))
            new.append(int(np.argmax(rows[-1][-1])))
        return new, np.concatenate(rows)
