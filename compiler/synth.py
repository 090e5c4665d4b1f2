"""Write synthetic BitNet b1.58 checkpoints in the Hugging Face layout, for tests and benchmarks.

A checkpoint is ``config.json`` plus ``model.safetensors`` (or shards and
``model.safetensors.index.json``) holding every tensor a real BitNet checkpoint holds: the
embedding, four RMSNorm weights and seven projections per layer (with a ``weight_scale`` each
when packed), the final norm, and ``lm_head.weight`` when the embeddings are not tied.

Files are written streaming: the header first, with offsets computed from the shapes, then each
tensor generated and written in turn (large ones in row chunks), so the 2B4T shape (2.4 G
parameters) is written in bounded memory.

Values are deterministic in (seed, tensor name), independent of sharding and of file order:

- latent projection weights ~ N(0, 1/K) (o_proj and down_proj scaled by 1/sqrt(2 * layers), as
  GPT-2 scales residual branches), so a unit-RMS input gives outputs of RMS below 1. A float
  checkpoint stores them in the model dtype; a packed one stores `absmean_ternarize` of those
  stored values, `hf_pack`-ed, and ``weight_scale`` = gamma ("autobitlinear") or 1 / gamma
  ("bitlinear") in the model dtype. So a packed and a float checkpoint of one seed hold the same
  model;
- when packed and larger than `LATENT_LIMIT` projection weights (the 2B4T shape), the ternary
  codes are drawn directly (P(-1) = P(+1) = 1/4, P(0) = 1/2) with a fixed per-kind gamma of
  similar size, an order of magnitude faster than drawing and ternarizing float weights;
- embeddings (and an untied LM head) ~ N(0, 1/hidden); norm weights uniform in [0.75, 1.25].
"""

import json
import math
import re
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from compiler.artifact import check_replaceable, write_directory
from compiler.checkpoint import (
    CONFIG_FILE,
    DTYPES,
    INDEX_FILE,
    PROJECTION_KINDS,
    SINGLE_FILE,
    read_config,
)
from rtl.cli import ArgumentParser
from sim.golden import absmean_ternarize, hf_pack

__all__ = ["SHAPES", "LATENT_LIMIT", "TensorSpec", "make_checkpoint", "projection_shapes",
           "write_safetensors",
           "write_streaming"]

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                 num_kv_heads=2, vocab_size=256),
    "demo": dict(hidden_size=256, intermediate_size=704, num_layers=2, num_heads=4,
                 num_kv_heads=2, vocab_size=512),
    "2b4t": dict(hidden_size=2560, intermediate_size=6912, num_layers=30, num_heads=20,
                 num_kv_heads=5, vocab_size=128256),
}
#: Model dtype names -> (safetensors dtype, numpy dtype).
MODEL_DTYPES = {"bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
                "float16": ("F16", np.dtype(np.float16)),
                "float32": ("F32", np.dtype(np.float32))}
CONFIG_SPELLINGS = ("hf", "transformers5")
LINEAR_CLASSES = ("autobitlinear", "bitlinear")
#: Packed checkpoints with more projection weights than this draw ternary codes directly.
LATENT_LIMIT = 1 << 26
#: Elements generated at a time for large tensors.
CHUNK_ELEMENTS = 1 << 22

#: The files of a checkpoint written here; a directory holding anything else is not replaced.
_OWN_FILE = re.compile(rf"{re.escape(CONFIG_FILE)}|{re.escape(SINGLE_FILE)}|"
                       rf"{re.escape(INDEX_FILE)}|model-\d{{5}}-of-\d{{5}}\.safetensors")

_SAFETENSORS_DTYPE = {v: k for k, v in DTYPES.items()}
_MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
           "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# Byte -> the same byte with every invalid 2-bit code 0b11 replaced by 0b01 (weight 0).
_CODES = (np.arange(256)[:, None] >> (2 * np.arange(4))) & 3
_VALID_BYTE = (np.where(_CODES == 3, 1, _CODES) << (2 * np.arange(4))).sum(axis=1).astype(np.uint8)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its name, safetensors dtype, shape and a generator of its data."""

    name: str
    dtype: str
    shape: tuple
    chunks: Callable[[], Iterator[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return DTYPES[self.dtype].itemsize * math.prod(self.shape)


def write_streaming(path: Path, specs: list[TensorSpec], metadata: Mapping[str, str] | None) -> int:
    """Write one safetensors file streaming; returns the size of its data section."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)   # data section 8-byte aligned, as safetensors writes it
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for s in specs:
            want = DTYPES[s.dtype]
            written = 0
            for chunk in s.chunks():
                chunk = np.ascontiguousarray(chunk)
                if chunk.dtype != want:
                    raise AssertionError(f"{s.name}: generated {chunk.dtype}, declared {want}")
                f.write(chunk.reshape(-1).view(np.uint8))
                written += chunk.nbytes
            if written != s.nbytes:
                raise AssertionError(f"{s.name}: wrote {written} bytes, declared {s.nbytes}")
    return offset


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (numpy arrays, bfloat16 as ml_dtypes.bfloat16) as a safetensors file."""
    specs = []
    for name, a in tensors.items():
        a = np.asarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        dtype = _SAFETENSORS_DTYPE.get(a.dtype)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} has no safetensors spelling")
        specs.append(TensorSpec(name, dtype, a.shape, lambda a=a: iter((a,))))
    write_streaming(Path(path), specs, metadata)


# -- the model's tensors --------------------------------------------------------------------------

def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _rows_per_chunk(shape: tuple) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))


def _normal(seed: int, name: str, shape: tuple, std: float, dtype: np.dtype) -> Iterator:
    """N(0, std^2) in `dtype`, generated in row chunks (the same values whatever the use)."""
    rng = _rng(seed, name)
    step = _rows_per_chunk(shape)
    for r in range(0, shape[0], step):
        rows = min(step, shape[0] - r)
        x = rng.standard_normal((rows, *shape[1:]), dtype=np.float32)
        x *= np.float32(std)
        yield x.astype(dtype)


class _Model:
    """The tensors of one synthetic model, in checkpoint order, with their generators."""

    def __init__(self, dims: dict, seed: int, dtype: str, packed: bool, latent: bool,
                 linear_class: str, tie: bool):
        self.d = dims
        self.seed = seed
        self.st_dtype, self.np_dtype = MODEL_DTYPES[dtype]
        self.packed, self.latent, self.linear_class, self.tie = packed, latent, linear_class, tie
        self._gamma: dict[str, np.float32] = {}

    def shape(self, kind: str) -> tuple[int, int]:
        return projection_shapes(self.d)[kind]

    def std(self, kind: str) -> float:
        n, k = self.shape(kind)
        residual = 1 / math.sqrt(2 * self.d["num_layers"]) if kind in ("o_proj", "down_proj") \
            else 1.0
        return residual / math.sqrt(k)

    def specs(self) -> list[TensorSpec]:
        d, ff, vocab = self.d["hidden_size"], self.d["intermediate_size"], self.d["vocab_size"]
        specs = [self._float("model.embed_tokens.weight", (vocab, d), 1 / math.sqrt(d))]
        for i in range(self.d["num_layers"]):
            p = f"model.layers.{i}."
            specs.append(self._norm(p + "input_layernorm.weight", d))
            for kind in PROJECTION_KINDS[:4]:
                specs += self._projection(p + f"self_attn.{kind}.weight", kind)
            specs.append(self._norm(p + "self_attn.attn_sub_norm.weight", d))
            specs.append(self._norm(p + "post_attention_layernorm.weight", d))
            for kind in PROJECTION_KINDS[4:]:
                specs += self._projection(p + f"mlp.{kind}.weight", kind)
            specs.append(self._norm(p + "mlp.ffn_sub_norm.weight", ff))
        specs.append(self._norm("model.norm.weight", d))
        if not self.tie:
            specs.append(self._float("lm_head.weight", (vocab, d), 1 / math.sqrt(d)))
        return specs

    def _float(self, name: str, shape: tuple, std: float) -> TensorSpec:
        return TensorSpec(name, self.st_dtype, shape,
                     lambda: _normal(self.seed, name, shape, std, self.np_dtype))

    def _norm(self, name: str, size: int) -> TensorSpec:
        def gen():
            yield _rng(self.seed, name).uniform(0.75, 1.25, size).astype(self.np_dtype)
        return TensorSpec(name, self.st_dtype, (size,), gen)

    def _projection(self, name: str, kind: str) -> list[TensorSpec]:
        shape, std = self.shape(kind), self.std(kind)
        if not self.packed:
            return [self._float(name, shape, std)]
        n, k = shape

        def weight():
            if self.latent:
                w = np.concatenate(list(_normal(self.seed, name, shape, std, self.np_dtype)))
                w_t, self._gamma[name] = absmean_ternarize(w)
                yield hf_pack(w_t)
            else:
                rng = _rng(self.seed, name)
                step = _rows_per_chunk((n // 4, k))
                for r in range(0, n // 4, step):
                    rows = min(step, n // 4 - r)
                    yield _VALID_BYTE[rng.integers(0, 256, (rows, k), dtype=np.uint8)]
                self._gamma[name] = self.direct_gamma(kind)

        def scale():
            if name not in self._gamma:   # the weight was not generated first: do it now
                for _ in weight():
                    pass
            gamma = self._gamma.pop(name)
            stored = gamma if self.linear_class == "autobitlinear" else np.float32(1) / gamma
            yield np.array([stored], dtype=np.float32).astype(self.np_dtype)

        return [TensorSpec(name, "U8", (n // 4, k), weight),
                TensorSpec(name + "_scale", self.st_dtype, (1,), scale)]

    def direct_gamma(self, kind: str) -> np.float32:
        """The fixed gamma of directly drawn codes: absmean of N(0, std^2), rounded to bf16."""
        g = self.std(kind) * math.sqrt(2 / math.pi)
        return np.float32(ml_dtypes.bfloat16(g))


def _config(dims: dict, dtype: str, packed: bool, linear_class: str, tie: bool,
            spelling: str, big: bool) -> dict:
    cfg = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_heads"],
        "num_key_value_heads": dims["num_kv_heads"],
        "vocab_size": dims["vocab_size"],
        "hidden_act": "relu2",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "initializer_range": 0.02,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": 128000 if big else 1,
        "eos_token_id": 128001 if big else 2,
        "tie_word_embeddings": tie,
    }
    if spelling == "hf":
        cfg["rope_theta"] = 500000.0
        cfg["torch_dtype"] = dtype
    else:
        cfg["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "default"}
        cfg["dtype"] = dtype
    if packed:
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                      "quantization_mode": "offline"}
    return cfg


def projection_shapes(dims: dict) -> dict[str, tuple[int, int]]:
    """{kind: (n, k)} of every projection of a model with `dims` (a `SHAPES` entry)."""
    d, ff = dims["hidden_size"], dims["intermediate_size"]
    hd = d // dims["num_heads"]
    q, kv = dims["num_heads"] * hd, dims["num_kv_heads"] * hd
    return {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q),
            "gate_proj": (ff, d), "up_proj": (ff, d), "down_proj": (d, ff)}


def _dims(shape: str | dict) -> tuple[dict, bool]:
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)} or a dict, got {shape!r}")
        return dict(SHAPES[shape]), shape == "2b4t"
    keys = set(SHAPES["tiny"])
    if set(shape) != keys:
        raise ValueError(f"a shape dict needs exactly the keys {sorted(keys)}, got "
                         f"{sorted(shape)}")
    for key, v in shape.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"shape[{key!r}] must be a positive integer, got {v!r}")
    for big, small in (("hidden_size", "num_heads"), ("num_heads", "num_kv_heads")):
        if shape[big] % shape[small]:
            raise ValueError(f"{big} {shape[big]} is not a multiple of {small} {shape[small]}")
    return dict(shape), shape == SHAPES["2b4t"]


def _split(specs: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """Cut `specs` in order into `shards` non-empty groups of roughly equal bytes."""
    target = sum(s.nbytes for s in specs) / shards
    groups: list[list[TensorSpec]] = [[]]
    done = 0
    for j, s in enumerate(specs):
        free_shards = shards - len(groups)
        if groups[-1] and free_shards and (done >= target * len(groups)
                                           or len(specs) - j <= free_shards):
            groups.append([])
        groups[-1].append(s)
        done += s.nbytes
    return groups


def make_checkpoint(out_dir: Path, shape: str | dict = "tiny", *, packed: bool = True,
                    seed: int = 0, dtype: str = "bfloat16", shards: int = 1,
                    linear_class: str = "autobitlinear", tie_word_embeddings: bool = True,
                    config_spelling: str = "hf", latent: bool | None = None) -> Path:
    """Write a synthetic BitNet checkpoint into `out_dir` (created if needed); returns `out_dir`.

    Parameters
    ----------
    shape : a name in `SHAPES` or a dict with the same keys
    packed : HF packed uint8 projections with weight_scale (else float latent weights)
    seed : every value is a function of (seed, tensor name)
    dtype : model dtype of the float tensors: "bfloat16", "float16" or "float32"
    shards : number of safetensors files (> 1 writes model.safetensors.index.json)
    linear_class : "autobitlinear" (weight_scale = gamma) or "bitlinear" (weight_scale = 1/gamma)
    tie_word_embeddings : no lm_head.weight when true
    config_spelling : "hf" (top-level rope_theta and torch_dtype, as the 2B4T file) or
        "transformers5" (rope_parameters and dtype)
    latent : packed weights from ternarized float latents (True) or drawn directly (False);
        None chooses latents up to `LATENT_LIMIT` projection weights
    """
    dims, big = _dims(shape)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class must be one of {', '.join(LINEAR_CLASSES)}, "
                         f"got {linear_class!r}")
    if config_spelling not in CONFIG_SPELLINGS:
        raise ValueError(f"config_spelling must be one of {', '.join(CONFIG_SPELLINGS)}, "
                         f"got {config_spelling!r}")
    model = _Model(dims, seed, dtype, packed, True, linear_class, tie_word_embeddings)
    if packed:
        rows = [model.shape(kind)[0] for kind in PROJECTION_KINDS]
        if any(n % 4 for n in rows):
            raise ValueError(f"packed needs projection row counts that are multiples of 4, "
                             f"got {dict(zip(PROJECTION_KINDS, rows))}")
    weights = dims["num_layers"] * sum(math.prod(model.shape(k)) for k in PROJECTION_KINDS)
    model.latent = weights <= LATENT_LIMIT if latent is None else bool(latent)
    specs = model.specs()
    if not isinstance(shards, int) or not 1 <= shards <= len(specs):
        raise ValueError(f"shards must be an integer in [1, {len(specs)}], got {shards!r}")

    # Written to a temporary sibling and renamed into place: a failure leaves nothing behind,
    # and an existing directory is replaced only when it holds nothing but checkpoint files.
    out_dir = Path(out_dir)

    def replaceable() -> None:
        check_replaceable(out_dir, _OWN_FILE.fullmatch, "a checkpoint", None, ValueError)

    replaceable()
    cfg = _config(dims, dtype, packed, linear_class, tie_word_embeddings, config_spelling, big)
    return write_directory(out_dir, lambda tmp: _write_files(tmp, cfg, specs, shards),
                           replaceable, OSError)


def _write_files(out_dir: Path, cfg: dict, specs: list[TensorSpec], shards: int) -> None:
    (out_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, allow_nan=False) + "\n")
    meta = {"format": "pt"}
    if shards == 1:
        write_streaming(out_dir / SINGLE_FILE, specs, meta)
        return
    weight_map, total = {}, 0
    for i, group in enumerate(_split(specs, shards)):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        total += write_streaming(out_dir / file, group, meta)
        weight_map.update((s.name, file) for s in group)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m compiler.synth",
                        description="Write a synthetic BitNet b1.58 checkpoint.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--float", dest="packed", action="store_false",
                    help="float latent projections instead of HF packed uint8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(MODEL_DTYPES))
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--linear-class", default="autobitlinear", choices=LINEAR_CLASSES)
    ap.add_argument("--untied", dest="tie", action="store_false",
                    help="write a separate lm_head.weight")
    ap.add_argument("--config-spelling", default="hf", choices=CONFIG_SPELLINGS)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = make_checkpoint(args.out_dir, args.shape, packed=args.packed, seed=args.seed,
                              dtype=args.dtype, shards=args.shards,
                              linear_class=args.linear_class, tie_word_embeddings=args.tie,
                              config_spelling=args.config_spelling)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        return 130
    files = sorted(str(p) for p in out.glob("model*.safetensors"))
    size = sum(Path(f).stat().st_size for f in files)
    cfg = read_config(out)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"out_dir": str(out), "files": files, "bytes": size,
                          "layers": cfg.num_layers, "packed": args.packed,
                          "seconds": round(seconds, 3)}))
    else:
        print(f"wrote {out} ({len(files)} file(s), {size / 1e6:.1f} MB) in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
