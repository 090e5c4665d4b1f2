"""Read BitNet b1.58 checkpoints (Hugging Face safetensors) without torch or transformers.

Formats (REFERENCE.md section 3):

- packed: each projection ``...{q,k,v,o,gate,up,down}_proj.weight`` is uint8 of shape
  (out / 4, in) in the row-blocked 2-bit layout of `sim.golden.hf_unpack`, beside a
  ``...weight_scale`` of shape [1]; ``config.json`` has ``quantization_config`` with
  ``quant_method: "bitnet"``. With ``linear_class: "autobitlinear"`` the stored scale is gamma and
  multiplies; with ``"bitlinear"`` it is 1/gamma and divides. A packed checkpoint whose config
  does not say which is refused rather than guessed;
- float: bf16 / fp16 / fp32 latent weights, ternarized on reading with
  `sim.golden.absmean_ternarize`;
- sharded: ``model.safetensors.index.json`` with a ``weight_map`` over several files.

``config.json`` is accepted in both spellings: the 2B4T file's top-level ``rope_theta`` and
``torch_dtype``, and transformers 5's ``rope_parameters: {"rope_theta": ...}`` and ``dtype``.

The safetensors header (8-byte little-endian length, JSON, data offsets relative to the start
of the data section) is parsed here, so that every defect gets a precise one-line message
naming the file, the tensor and the problem; tensor data is read through `numpy.memmap` and
never copied unless a conversion asks for it. Structure (tensors present, dtypes, shapes against
the config, the header's byte layout) is checked when a `Checkpoint` is opened; values (invalid
2-bit codes, scales, NaN and Inf) when a tensor is read.
"""

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from sim.golden import absmean_ternarize, hf_unpack

__all__ = [
    "PROJECTION_KINDS", "Checkpoint", "CheckpointError", "ModelConfig", "Projection",
    "read_config",
]

PROJECTION_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
           "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

#: safetensors dtype strings -> numpy dtypes (safetensors data is little-endian).
DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
#: Float dtypes a latent weight, norm, embedding or scale may have.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
#: Float dtypes of latent projection weights (REFERENCE.md 3B).
LATENT_DTYPES = ("F16", "BF16", "F32")
#: The header size limit of the safetensors library; a longer "header" means a foreign file.
MAX_HEADER_BYTES = 100_000_000
#: config.json "dtype" / "torch_dtype" values understood.
MODEL_DTYPES = ("bfloat16", "float16", "float32")
LINEAR_CLASSES = ("autobitlinear", "bitlinear")
#: transformers' BitNetQuantConfig defaults, applied when the keys are absent.
DEFAULT_QUANTIZATION_MODE = "offline"
#: Elements per chunk of the NaN / Inf scan, so that a 656 MB table is not widened at once.
_SCAN_CHUNK = 1 << 22
#: The largest |int8 activation|: a projection's output is at most gamma * 128 * k in size.
_ACT_MAX = 128
_F32_MAX = float(np.finfo(np.float32).max)


class CheckpointError(Exception):
    """One line: names the file, the tensor (if any) and the problem."""


def _fail(file, problem: str, tensor: str | None = None) -> CheckpointError:
    where = f"{file}: tensor {tensor!r}: " if tensor is not None else f"{file}: "
    return CheckpointError(where + problem)


# -- config.json ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """The fields of a BitNet ``config.json`` the compiler needs, checked; `raw` keeps the rest."""

    architecture: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    dtype: str
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_id: int | list | None
    linear_class: str | None   # quantization_config.linear_class when quant_method == "bitnet"
    raw: dict                  # the parsed config.json

    @property
    def quant_method(self) -> str | None:
        q = self.raw.get("quantization_config")
        return q.get("quant_method") if isinstance(q, dict) else None

    @property
    def quantization_mode(self) -> str | None:
        """``quantization_config.quantization_mode`` (default "offline") for bitnet, else None."""
        if self.quant_method != "bitnet":
            return None
        return self.raw["quantization_config"].get("quantization_mode",
                                                   DEFAULT_QUANTIZATION_MODE)


_MISSING = object()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _ConfigReader:
    """Typed, checked access to the keys of one parsed config.json."""

    def __init__(self, path: Path, raw: dict):
        self.path, self.raw = path, raw

    def fail(self, problem: str) -> CheckpointError:
        return _fail(self.path, problem)

    def get(self, key: str, default=_MISSING):
        if key in self.raw:
            return self.raw[key]
        if default is _MISSING:
            raise self.fail(f"missing required key {key!r}")
        return default

    def positive_int(self, key: str, default=_MISSING) -> int:
        v = self.get(key, default)
        if not _is_int(v) or v <= 0:
            raise self.fail(f"{key} must be a positive integer, got {v!r}")
        return v

    def positive_float(self, key: str, v) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0):
            raise self.fail(f"{key} must be a finite number > 0, got {v!r}")
        return float(v)

    def token_id(self, key: str, allow_list: bool):
        v = self.get(key, None)
        ok = v is None or (_is_int(v) and v >= 0) or (
            allow_list and isinstance(v, list) and v and all(_is_int(i) and i >= 0 for i in v))
        if not ok:
            kind = "an integer >= 0, a list of them or null" if allow_list else \
                "an integer >= 0 or null"
            raise self.fail(f"{key} must be {kind}, got {v!r}")
        return v

    def one_of_spellings(self, key: str, nested: str | None, new_key: str | None):
        """The value of `key`, also looked up as raw[nested][key] or raw[new_key]; equal if both."""
        found = {}
        if key in self.raw:
            found[key] = self.raw[key]
        if nested is not None and nested in self.raw:
            block = self.raw[nested]
            if not isinstance(block, dict):
                raise self.fail(f"{nested} must be an object, got {block!r}")
            if key in block:
                found[f"{nested}.{key}"] = block[key]
        if new_key is not None and new_key in self.raw:
            found[new_key] = self.raw[new_key]
        if not found:
            other = f"{nested}.{key}" if nested is not None else new_key
            raise self.fail(f"missing required key {key!r} (or {other!r})")
        values = list(found.values())
        if any(v != values[0] for v in values[1:]):
            spelled = ", ".join(f"{k} = {v!r}" for k, v in found.items())
            raise self.fail(f"contradictory spellings: {spelled}")
        return values[0]


def read_config(model_dir: Path) -> ModelConfig:
    """Read and check ``config.json`` of a BitNet model (`model_dir` or a config file path)."""
    model_dir = Path(model_dir)
    path = model_dir if model_dir.is_file() else model_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(path, "no such file (config.json must lie beside the weights)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot be read: {e}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise _fail(path, f"not a JSON object (a {type(raw).__name__})")
    c = _ConfigReader(path, raw)

    architectures = c.get("architectures")
    model_type = c.get("model_type")
    if not isinstance(architectures, list) or "BitNetForCausalLM" not in architectures:
        raise c.fail(f"unknown architecture {architectures!r}: expected ['BitNetForCausalLM']")
    if model_type != "bitnet":
        raise c.fail(f"unknown model_type {model_type!r}: expected 'bitnet'")

    hidden = c.positive_int("hidden_size")
    intermediate = c.positive_int("intermediate_size")
    layers = c.positive_int("num_hidden_layers")
    heads = c.positive_int("num_attention_heads")
    kv_heads = heads if raw.get("num_key_value_heads") is None else \
        c.positive_int("num_key_value_heads")
    vocab = c.positive_int("vocab_size")
    max_pos = c.positive_int("max_position_embeddings")
    if raw.get("head_dim") is None:
        if hidden % heads:
            raise c.fail(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
                         f"and there is no head_dim")
        head_dim = hidden // heads
    else:
        head_dim = c.positive_int("head_dim")
    if heads * head_dim != hidden:
        raise c.fail(f"num_attention_heads * head_dim = {heads} * {head_dim} = {heads * head_dim} "
                     f"differs from hidden_size {hidden} (attn_sub_norm has hidden_size weights)")
    if heads % kv_heads:
        raise c.fail(f"num_attention_heads {heads} is not a multiple of "
                     f"num_key_value_heads {kv_heads}")

    rope_theta = c.positive_float("rope_theta", c.one_of_spellings(
        "rope_theta", "rope_parameters", None))
    for key in ("rope_parameters", "rope_scaling"):
        block = raw.get(key)
        if block is not None:
            if not isinstance(block, dict):
                raise c.fail(f"{key} must be an object or null, got {block!r}")
            kind = block.get("rope_type", block.get("type", "default"))
            if kind != "default":
                raise c.fail(f"{key} has rope_type {kind!r}; only plain RoPE ('default') "
                             f"is supported")
    eps = c.positive_float("rms_norm_eps", c.get("rms_norm_eps"))
    act = c.get("hidden_act")
    if not isinstance(act, str):
        raise c.fail(f"hidden_act must be a string, got {act!r}")
    tie = c.get("tie_word_embeddings", False)   # BitNetConfig's default
    if not isinstance(tie, bool):
        raise c.fail(f"tie_word_embeddings must be true or false, got {tie!r}")
    dtype = c.one_of_spellings("torch_dtype", None, "dtype")
    if dtype not in MODEL_DTYPES:
        raise c.fail(f"dtype {dtype!r} is not one of {', '.join(MODEL_DTYPES)}")

    linear_class = None
    quant = raw.get("quantization_config")
    if quant is not None:
        if not isinstance(quant, dict) or "quant_method" not in quant:
            raise c.fail(f"quantization_config must be an object with quant_method, got {quant!r}")
        if quant["quant_method"] == "bitnet":
            # No default: whether the stored scale multiplies or divides must be stated
            # (REFERENCE.md 3A); a packed checkpoint without it is refused when read.
            linear_class = quant.get("linear_class")
            if linear_class is not None and linear_class not in LINEAR_CLASSES:
                raise c.fail(f"quantization_config.linear_class {linear_class!r} is not one of "
                             f"{', '.join(LINEAR_CLASSES)}")
            mode = quant.get("quantization_mode", DEFAULT_QUANTIZATION_MODE)
            if mode not in ("offline", "online"):
                raise c.fail(f"quantization_config.quantization_mode {mode!r} is not "
                             f"'offline' or 'online'")

    return ModelConfig(
        architecture="BitNetForCausalLM", model_type=model_type, hidden_size=hidden,
        intermediate_size=intermediate, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=vocab, rope_theta=rope_theta, rms_norm_eps=eps,
        hidden_act=act, tie_word_embeddings=tie, dtype=dtype, max_position_embeddings=max_pos,
        bos_token_id=c.token_id("bos_token_id", allow_list=False),
        eos_token_id=c.token_id("eos_token_id", allow_list=True),
        linear_class=linear_class, raw=raw)


# -- safetensors files ----------------------------------------------------------------------------

class _Tensor(NamedTuple):
    name: str
    dtype: str          # safetensors spelling
    shape: tuple
    begin: int          # byte offsets into the data section
    end: int
    file: "_SafetensorsFile"


class _SafetensorsFile:
    """The parsed, checked header of one safetensors file and a lazy read-only map of it."""

    def __init__(self, path: Path):
        self.path = path
        self._map: np.memmap | None = None
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(8)
                if size < 8:
                    raise self.fail(f"not a safetensors file: {size} bytes, shorter than the "
                                    f"8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if 8 + n > size and head[:1] in (b"{", b"["):
                    raise self.fail("not a safetensors file: it starts with "
                                    f"{head[:1].decode()!r} (a JSON file?)")
                if n > MAX_HEADER_BYTES:
                    raise self.fail(f"not a safetensors file: header length {n} (bytes 0-7) is "
                                    f"over the {MAX_HEADER_BYTES}-byte limit")
                if 8 + n > size:
                    raise self.fail(f"header length {n} (bytes 0-7) points past the end of the "
                                    f"file ({size} bytes): truncated or not a safetensors file")
                blob = f.read(n)
        except FileNotFoundError:
            raise self.fail("no such file") from None
        except IsADirectoryError:
            raise self.fail("is a directory, not a safetensors file") from None
        self.size = size
        self.data_start = 8 + n
        self.data_len = size - self.data_start
        self.metadata, self.tensors = self._parse(blob)

    def fail(self, problem: str, tensor: str | None = None) -> CheckpointError:
        return _fail(self.path, problem, tensor)

    def _parse(self, blob: bytes) -> tuple[dict, dict[str, _Tensor]]:
        try:
            header = json.loads(blob.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.fail(f"header ({len(blob)} bytes) is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise self.fail(f"header is a JSON {type(header).__name__}, not an object")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(
                isinstance(v, str) for v in metadata.values()):
            raise self.fail(f"__metadata__ must map strings to strings, got {metadata!r}")
        tensors = {name: self._entry(name, e) for name, e in header.items()}
        self._check_layout(tensors)
        return metadata, tensors

    def _entry(self, name: str, e) -> _Tensor:
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise self.fail(f"header entry {e!r} lacks dtype, shape or data_offsets", name)
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPES:
            raise self.fail(f"unknown dtype {dtype!r}", name)
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise self.fail(f"shape {shape!r} is not a list of integers >= 0", name)
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
            raise self.fail(f"data_offsets {offsets!r} is not [begin, end] with "
                            f"0 <= begin <= end", name)
        need = DTYPES[dtype].itemsize * math.prod(shape)
        if offsets[1] - offsets[0] != need:
            raise self.fail(f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but "
                            f"dtype {dtype} and shape {shape} need {need}", name)
        return _Tensor(name, dtype, tuple(shape), offsets[0], offsets[1], self)

    def _check_layout(self, tensors: dict[str, _Tensor]) -> None:
        """The data must tile [0, data_len) exactly, as the safetensors library demands."""
        ordered = sorted(tensors.values(), key=lambda t: (t.begin, t.end))
        overlap = gap = None   # the first of each, as (tensor, previous tensor, where expected)
        pos, prev = 0, None
        for t in ordered:
            if t.begin < pos and overlap is None:
                overlap = (t, prev)
            elif t.begin > pos and gap is None:
                gap = (t, prev, pos)
            if t.end >= pos:
                pos, prev = t.end, t
        end = pos
        if end > self.data_len:
            if overlap is None and gap is None:
                cut = next(t for t in ordered if t.end > self.data_len)
                raise self.fail(f"truncated: the header describes {end} bytes of tensor data but "
                                f"the file holds {self.data_len} ({end - self.data_len} bytes "
                                f"missing, from tensor {cut.name!r} on)")
            out = next(t for t in tensors.values() if t.end > self.data_len)
            raise self.fail(f"data_offsets [{out.begin}, {out.end}] lie outside the data section "
                            f"({self.data_len} bytes)", out.name)
        if overlap is not None:
            t, prev = overlap
            raise self.fail(f"data_offsets [{t.begin}, {t.end}] overlap tensor {prev.name!r} "
                            f"[{prev.begin}, {prev.end}]", t.name)
        if gap is not None:
            t, prev, at = gap
            after = f"after tensor {prev.name!r}" if prev else "at the start"
            raise self.fail(f"data_offsets [{t.begin}, {t.end}] leave a gap of "
                            f"{t.begin - at} bytes {after}", t.name)
        if end < self.data_len:
            raise self.fail(f"{self.data_len - end} bytes after the last tensor's data "
                            f"(the header describes {end} bytes, the data section holds "
                            f"{self.data_len})")

    def read(self, t: _Tensor) -> np.ndarray:
        dtype = DTYPES[t.dtype]
        if t.end == t.begin:
            a = np.zeros(t.shape, dtype)
            a.flags.writeable = False
            return a
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            if self._map.size != self.size:
                raise self.fail(f"changed size while open ({self.size} -> {self._map.size} "
                                f"bytes)")
        raw = self._map[self.data_start + t.begin:self.data_start + t.end]
        return raw.view(dtype).reshape(t.shape).view(np.ndarray)


# -- checkpoints ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Projection:
    """One ternary projection of the model, by its tensor name and logical (unpacked) shape."""

    name: str      # full tensor name, e.g. "model.layers.3.self_attn.q_proj.weight"
    layer: int
    kind: str      # one of PROJECTION_KINDS
    n: int         # output rows
    k: int         # input columns


def _projection_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    d, ff = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q),
            "gate_proj": (ff, d), "up_proj": (ff, d), "down_proj": (d, ff)}


def projection_list(cfg: ModelConfig) -> list[Projection]:
    """Every projection of a model with config `cfg`, layer-major, in `PROJECTION_KINDS` order."""
    shapes = _projection_shapes(cfg)
    return [Projection(f"model.layers.{i}.{_MODULE[kind]}.{kind}.weight", i, kind, *shapes[kind])
            for i in range(cfg.num_layers) for kind in PROJECTION_KINDS]


def other_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every float tensor other than the projections (and their scales), with its shape."""
    d, ff = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attn.attn_sub_norm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes[p + "mlp.ffn_sub_norm.weight"] = (ff,)
    shapes["model.norm.weight"] = (d,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def scale_name(weight_name: str) -> str:
    """``...q_proj.weight`` -> ``...q_proj.weight_scale``."""
    return weight_name + "_scale"


class Checkpoint:
    """A BitNet b1.58 checkpoint: config, tensors by name, and each projection as ternary.

    `path` is a ``model.safetensors``, a ``model.safetensors.index.json`` or a directory holding
    one of them (the single file is preferred when both exist, as transformers does);
    ``config.json`` is looked up beside the file.
    """

    config: ModelConfig
    files: list[Path]

    def __init__(self, path: Path):
        path = Path(path)
        if path.is_dir():
            if (path / SINGLE_FILE).is_file():
                path = path / SINGLE_FILE
            elif (path / INDEX_FILE).is_file():
                path = path / INDEX_FILE
            else:
                raise _fail(path, f"directory holds neither {SINGLE_FILE} nor {INDEX_FILE}")
        elif not path.exists():
            raise _fail(path, "no such file")
        self.path = path
        if path.name.endswith(".index.json"):
            shards = self._open_index(path)
        else:
            shards = [_SafetensorsFile(path)]
            self._tensors = dict(shards[0].tensors)
        self.files = [s.path for s in shards]
        self.config = read_config(path.parent)
        self._projections = projection_list(self.config)
        self._packed = self._check_projections()
        self._check_others()
        self._finite: set[str] = set()

    def _open_index(self, index: Path) -> list[_SafetensorsFile]:
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _fail(index, f"not valid JSON: {e}") from None
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not wmap or not all(
                isinstance(v, str) for v in wmap.values()):
            raise _fail(index, "has no weight_map mapping tensor names to shard files")
        shards: dict[str, _SafetensorsFile] = {}
        for name, shard in wmap.items():
            # Hugging Face shards sit beside their index: a bare file name, never a path.
            if Path(shard).name != shard or shard in ("", ".", ".."):
                raise _fail(index, f"shard {shard!r} is not a file name beside the index", name)
            if shard not in shards:
                file = index.parent / shard
                if not file.is_file():
                    count = sum(v == shard for v in wmap.values())
                    raise _fail(index, f"shard {shard!r}, listed for {count} tensor(s) from "
                                       f"this one on, does not exist", name)
                shards[shard] = _SafetensorsFile(file)
        self._tensors = {}
        for name, shard in wmap.items():
            t = shards[shard].tensors.get(name)
            if t is None:
                raise _fail(index, f"mapped to shard {shard!r}, which does not contain it", name)
            self._tensors[name] = t
        for shard, f in shards.items():
            for name in f.tensors:
                if wmap.get(name) != shard:
                    raise f.fail(f"not listed for this shard in {index.name}", name)
        return list(shards.values())

    # -- structure checks, at open time --

    def _tensor(self, name: str) -> _Tensor:
        t = self._tensors.get(name)
        if t is None:
            raise _fail(self.path, "no such tensor", name)
        return t

    def _check_projections(self) -> bool:
        cfg = self.config
        kinds: dict[str, _Tensor] = {}   # "packed" / "float" -> first tensor seen
        for p in self._projections:
            t = self._tensors.get(p.name)
            if t is None:
                raise _fail(self.path, f"missing projection tensor ({p.kind} of layer "
                                       f"{p.layer})", p.name)
            if t.dtype == "U8":
                kinds.setdefault("packed", t)
            elif t.dtype in LATENT_DTYPES:
                kinds.setdefault("float", t)
            else:
                raise t.file.fail(f"projection has dtype {t.dtype}: expected U8 (packed) or "
                                  f"one of {', '.join(LATENT_DTYPES)} (latent)", p.name)
        if len(kinds) > 1:
            a, b = kinds["packed"], kinds["float"]
            raise b.file.fail(f"projection has dtype {b.dtype} but {a.name!r} is packed U8: "
                              f"a checkpoint is either packed or float", b.name)
        packed = "packed" in kinds
        first = kinds["packed" if packed else "float"]
        cfg_file = self.path.parent / CONFIG_FILE
        if packed and cfg.quant_method != "bitnet":
            raise first.file.fail(f"projection is packed U8 but {cfg_file} has no "
                                  f"quantization_config with quant_method 'bitnet' "
                                  f"(found {cfg.raw.get('quantization_config')!r})", first.name)
        if packed and cfg.quantization_mode != "offline":
            raise first.file.fail(f"projection is packed U8 but {cfg_file} says "
                                  f"quantization_mode {cfg.quantization_mode!r}, not "
                                  f"'offline'", first.name)
        if not packed and cfg.quant_method is not None and cfg.quantization_mode != "online":
            mode = f" (quantization_mode {cfg.quantization_mode!r})" if cfg.quantization_mode \
                else ""
            raise first.file.fail(f"projection is float {first.dtype} but {cfg_file} declares "
                                  f"quant_method {cfg.quant_method!r}{mode}, which stores "
                                  f"packed weights", first.name)
        for p in self._projections:
            t = self._tensors[p.name]
            if packed:
                if p.n % 4:
                    raise t.file.fail(f"{p.kind} has {p.n} output rows, not a multiple of 4, so "
                                      f"it cannot be packed", p.name)
                want = (p.n // 4, p.k)
            else:
                want = (p.n, p.k)
            if t.shape != want:
                packing = "packed, (n/4, k)" if packed else "(n, k)"
                raise t.file.fail(f"shape {list(t.shape)} contradicts the config: expected "
                                  f"{list(want)} ({packing} for {p.kind} with n={p.n}, "
                                  f"k={p.k})", p.name)
            if packed:
                self._check_scale_structure(p)
        return packed

    def _check_scale_structure(self, p: Projection) -> None:
        name = scale_name(p.name)
        s = self._tensors.get(name)
        if s is None:
            raise _fail(self.path, f"weight_scale missing for packed projection {p.name!r}", name)
        if s.dtype not in FLOAT_DTYPES or s.shape not in ((1,), ()):
            raise s.file.fail(f"weight_scale must be a float of shape [1], got {s.dtype} "
                              f"{list(s.shape)}", name)

    def _check_others(self) -> None:
        for name, want in other_tensor_shapes(self.config).items():
            t = self._tensors.get(name)
            if t is None:
                why = " (tie_word_embeddings is false)" if name == "lm_head.weight" else ""
                raise _fail(self.path, f"missing tensor{why}", name)
            if t.dtype not in FLOAT_DTYPES:
                raise t.file.fail(f"dtype {t.dtype} is not a float type", name)
            if t.shape != want:
                raise t.file.fail(f"shape {list(t.shape)} contradicts the config: expected "
                                  f"{list(want)}", name)

    # -- access --

    def names(self) -> list[str]:
        """Every tensor name, in file order, then data order within each file."""
        order = {f: i for i, f in enumerate(self.files)}
        ts = sorted(self._tensors.values(), key=lambda t: (order[t.file.path], t.begin, t.end))
        return [t.name for t in ts]

    def info(self, name: str) -> tuple[str, tuple, Path]:
        """(safetensors dtype string, shape, file) of tensor `name`."""
        t = self._tensor(name)
        return t.dtype, t.shape, t.file.path

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as stored (BF16 as ml_dtypes.bfloat16): a read-only view of a memmap."""
        t = self._tensor(name)
        return t.file.read(t)

    def projections(self) -> list[Projection]:
        """All 7 * num_layers projections, layer-major, in `PROJECTION_KINDS` order."""
        return list(self._projections)

    def packed(self) -> bool:
        """True when projections are stored as Hugging Face packed uint8 (with weight_scale)."""
        return self._packed

    def ternary(self, proj: Projection) -> tuple[np.ndarray, np.float32]:
        """(w_t, gamma) of a projection: w_t (n, k) int8 in {-1, 0, 1}, W ~ w_t * gamma.

        Packed: `hf_unpack`, and gamma = weight_scale ("autobitlinear", the scale multiplies)
        or 1 / weight_scale in float32 ("bitlinear", the stored scale divides).
        Float: `absmean_ternarize` of the latent weights.
        """
        t = self._tensor(proj.name)
        if not self._packed:
            w = self._checked_float(t)
            with np.errstate(over="ignore", invalid="ignore"):   # huge weights: checked below
                w_t, gamma = absmean_ternarize(w)
            if not np.isfinite(gamma):
                big = float(np.max(np.abs(w.astype(np.float32))))
                raise t.file.fail(f"the absmean scale of its weights (mean |W|) overflows "
                                  f"float32 (|W| up to {big:.3g})", t.name)
            self._check_scale(t, gamma, proj.k, "its absmean scale")
            return w_t, gamma
        try:
            w_t = hf_unpack(t.file.read(t))
        except ValueError as e:
            raise t.file.fail(str(e), t.name) from None
        s = self._tensor(scale_name(proj.name))
        stored = np.float32(s.file.read(s).reshape(()))
        if not np.isfinite(stored) or stored <= 0:
            v = float(stored)
            what = ("NaN" if math.isnan(v) else "Inf" if v == math.inf else "-Inf"
                    if v == -math.inf else "zero" if v == 0 else f"negative ({v})")
            raise s.file.fail(f"weight_scale is {what}; it must be finite and > 0", s.name)
        if self.config.linear_class is None:
            raise s.file.fail("quantization_config has no linear_class, so it is unknown whether "
                              "weight_scale multiplies (autobitlinear) or divides (bitlinear)",
                              s.name)
        if self.config.linear_class == "autobitlinear":
            gamma = stored
        else:
            gamma = np.float32(np.float32(1) / stored)
            if not np.isfinite(gamma):
                raise s.file.fail(f"weight_scale {stored!r} is too small to divide by "
                                  f"(linear_class bitlinear)", s.name)
        self._check_scale(s, gamma, proj.k, f"weight_scale {float(stored):.3g} (gamma)")
        return w_t, gamma

    @staticmethod
    def _check_scale(t: _Tensor, gamma: np.float32, k: int, what: str) -> None:
        """The largest output a scale allows, gamma * 128 * k, must be finite in float32."""
        top = float(gamma) * _ACT_MAX * k
        if top > _F32_MAX:
            raise t.file.fail(f"{what} is too large: an output can reach gamma * {_ACT_MAX} * "
                              f"k = {float(gamma):.3g} * {_ACT_MAX} * {k} = {top:.3g}, beyond "
                              f"float32 ({_F32_MAX:.3g})", t.name)

    def embedding(self) -> np.ndarray:
        """The token embedding (vocab, hidden) in its stored dtype, read-only, checked finite."""
        return self._checked_float(self._tensor("model.embed_tokens.weight"))

    def lm_head(self) -> np.ndarray:
        """The LM head (vocab, hidden): the embedding when tie_word_embeddings."""
        if self.config.tie_word_embeddings:
            return self.embedding()
        return self._checked_float(self._tensor("lm_head.weight"))

    def norm(self, name: str) -> np.ndarray:
        """Any other float tensor by name (norm weights and the like) as float32, checked finite."""
        t = self._tensor(name)
        if t.dtype not in FLOAT_DTYPES:
            raise t.file.fail(f"dtype {t.dtype} is not a float type", name)
        return self._checked_float(t).astype(np.float32)

    def _checked_float(self, t: _Tensor) -> np.ndarray:
        """Tensor `t` as stored, after a chunked scan for NaN and Inf (once per tensor)."""
        a = t.file.read(t)
        if t.name in self._finite:
            return a
        flat = a.reshape(-1)
        for start in range(0, flat.size, _SCAN_CHUNK):
            chunk = flat[start:start + _SCAN_CHUNK].astype(np.float32)
            bad = ~np.isfinite(chunk)
            if bad.any():
                i = start + int(np.argmax(bad))
                v = float(flat[i])
                what = "NaN" if math.isnan(v) else "Inf" if v > 0 else "-Inf"
                at = tuple(int(j) for j in np.unravel_index(i, a.shape))
                raise t.file.fail(f"holds {what} at index {at}", t.name)
        self._finite.add(t.name)
        return a
