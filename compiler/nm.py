"""N:M structured sparsity for the ternary projections of a float BitNet checkpoint (STBLLM).

    python -m compiler.nm MODEL_DIR --nm N:8|auto --calib IDS_OR_FILE --out OUT_DIR
        [--base N:8] [--binary] [--json]
    python -m compiler.nm eval DENSE_DIR SPARSE_DIR --ids IDS_OR_FILE [--json]

The pass (REFERENCE.md section 7, STBLLM arXiv 2408.01803) keeps N of every M = 8 consecutive
input channels of each output row of every projection (q, k, v, o, gate, up, down of every
layer) and zeros the rest. It reads an UNPACKED float checkpoint (format 3B: float latent
weights), because choosing what to keep needs the latent magnitudes; a packed one is refused.

1. Calibration. The calibration token ids run through `sim.host.HostModel` on the golden
   (reference) projector. For every projection the float input it receives, before the
   per-token int8 quantization, is recorded, and ``||X_j||_2`` is the L2 norm of input channel
   j over all calibration tokens. The float input is used rather than the dequantized int8
   values because it is what the quantizer approximates (they differ by at most amax / 254 per
   element) and what STBLLM and Wanda record (the input of the linear layer); for the ranking
   the difference is immaterial.
2. Standardized Importance (`standardized_importance`). For a weight of shape (out, in), row i
   is output i and column j is input channel j::

       S_ij = (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * ||X_j||_2 ** 0.5

   The first sum runs down column j (over outputs), the second along row i (over inputs); this
   is STBLLM's code (``sum(dim=0)`` and ``sum(dim=1)`` of the (out, in) weight), RIA's
   "relative importance" times the activation term with exponent a = 0.5. STBLLM then
   standardizes S per row (minus the mean, over the row's standard deviation); that is an
   increasing affine map within each row, so it changes no N:M choice, and it is left out.
3. Selection (`nm_mask`). In each group of M consecutive input channels of each row the N
   weights of largest S are kept; ties go to the lower channel index (stable sort). In ternary
   mode the latent weights are first ternarized exactly as the repository reads a float
   checkpoint (`sim.golden.absmean_ternarize`: gamma = mean |W| over the WHOLE dense tensor)
   and a weight that ternarizes to 0 ranks below every non-zero one (ranking among the zeros
   still follows S). This is the one departure from the paper, which binarizes (no zeros): a
   kept zero would spend one of the N slots on a weight that contributes nothing. Kept
   weights keep their dense ternary value and the scale stays the dense gamma, so the sparse
   model is the dense BitNet model with the pruned weights removed (the scale the model was
   trained with; pruned and kept terms are uncorrelated, so rescaling would not reduce the
   error). A group therefore holds at most N non-zero weights, exactly N kept positions.
4. ``--binary`` (STBLLM's basic binarization): kept weights become sign(W) (+1 for 0), pruned
   ones 0, with the scale alpha = mean |W| over the kept weights. STBLLM uses one alpha per
   row (and three magnitude regions, and two planes for salient columns); the repository's
   checkpoint format and the accelerator have one scale per tensor, so alpha is per tensor
   here.
5. ``--nm auto`` (`allocate`): per-layer N from the outlier ratio, the fraction of a layer's S
   values (all seven projections together, as STBLLM's code does) above 6 x their mean. Layers
   are ranked by that ratio (ties: the lower layer ranks higher); around a base N (``--base``,
   default 4:8) the bottom ceil(L / 4) layers get N - 1, the top floor(ceil(L / 4) / 2) get
   N + 2 and, when ceil(L / 4) is odd, the next one gets N + 1. The changes sum to zero and
   every BitNet layer has the same weight count, so the mean N is exactly the base. For 32
   layers on 4:8 this gives 4 layers at 6:8, 20 at 4:8 and 8 at 3:8, the shape STBLLM reports.
   The base must lie in 2..5, so that no layer needs clamping into 1..7 (clamping would move
   the mean away from the base).

Output: OUT_DIR holds config.json (copied byte for byte), tokenizer files if present, one
``model.safetensors`` with every non-projection tensor copied unchanged (same dtype and bytes),
and each projection as float32 values chosen so that the repository's own reading of a float
checkpoint (`absmean_ternarize`, per tensor) gives back exactly the sparse ternary values and
exactly the intended scale (`encode_float`; verified for every tensor before writing); and
``nm.json``, which describes every projection (N, M, kept and non-zero fractions, outlier
ratio, scale, and bit counts: nominal N / M bits per weight as STBLLM counts them, the value
bits of a ternary kept weight N log2(3) / M, and the minimal positional metadata
log2(C(M, N)) / M). Everything is written to a temporary directory and renamed into place.

Evaluation (`evaluate`): the dense and the sparse model run over the same token sequences with
`HostModel` (golden projector); the report gives the mean and max absolute logit error divided
by the dense logits' scale (their root mean square over all positions and vocabulary entries),
the top-1 agreement (fraction of positions whose argmax agrees) and the mean KL divergence
KL(dense || sparse) of the next-token distributions.
"""

import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtl.cli import ArgumentParser
from rtl.isa import NM_M
from sim.golden import absmean_ternarize
from sim.host import HostError, HostModel

from .artifact import check_replaceable, has_format, write_directory
from .checkpoint import CONFIG_FILE, SINGLE_FILE, Checkpoint, CheckpointError, Projection
from .lower import Progress
from .synth import TensorSpec, write_streaming

__all__ = [
    "M", "OUTLIER_FACTOR", "NMError", "Encoded", "Sparse", "allocate", "calibrate",
    "encode_float", "evaluate", "main", "metadata_bits", "nm_mask", "outlier_ratio", "parse_ids",
    "parse_nm",
    "prune", "sparsify", "standardized_importance",
]

#: Group size: N of every M consecutive input channels are kept (the accelerator's N:M group).
M = NM_M
#: An importance value above this many times the layer's mean is an outlier (STBLLM).
OUTLIER_FACTOR = 6.0
#: The base ratio of ``--nm auto``.
DEFAULT_BASE = 4
#: `encode_float` spreads its correction over one trim weight per this many non-zero weights.
TRIM_SPAN = 1 << 16
#: Files copied from the model directory besides config.json, when present.
EXTRA_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "generation_config.json")
NM_FILE = "nm.json"
#: Everything the pass writes into its output directory (tokenizer files only when present).
OUT_FILES = (CONFIG_FILE, SINGLE_FILE, NM_FILE, *EXTRA_FILES)
FORMAT = "ternary-accel-nm"
VERSION = 1


class NMError(Exception):
    """Bad input to the N:M pass or its evaluation (one line)."""


# -- parsing --------------------------------------------------------------------------------------

def parse_nm(text: str) -> int | None:
    """"N:8" -> N (1 <= N <= 7); "auto" -> None. One-line `NMError` otherwise."""
    text = text.strip()
    if text == "auto":
        return None
    parts = text.split(":")
    try:
        n, m = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        n = m = None
    if n is None:
        raise NMError(f"--nm must be N:{M} (N in 1..{M - 1}) or auto, got {text!r}")
    if m != M:
        raise NMError(f"--nm {text}: only M = {M} is supported (groups of {M} input channels)")
    if not 1 <= n <= M - 1:
        raise NMError(f"--nm {text}: N must be in 1..{M - 1} (N = {M} would be dense, "
                      f"N = 0 empty)")
    return n


def _ids_of(text: str, where: str) -> list[int]:
    """Ids separated by commas or white space; an empty field between commas is refused."""
    fields = text.split(",")
    if len(fields) > 1 and not all(f.strip() for f in fields):
        raise NMError(f"{where}: an empty token id between commas in {text.strip()!r:.60}")
    tokens = text.replace(",", " ").split()
    try:
        ids = [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise NMError(f"{where}: {bad!r:.40} is not an integer token id") from None
    if any(i < 0 for i in ids):
        raise NMError(f"{where}: token ids must be >= 0, got {min(ids)}")
    return ids


#: An inline id list: digits, separators and minus signs only (never looked up as a file).
_INLINE_IDS = re.compile(r"[\d,; \t-]+")


def parse_ids(spec: str, vocab_size: int | None = None) -> list[list[int]]:
    """Token id sequences from ``--calib`` / ``--ids``.

    `spec` is either ids ("1,2,3", several sequences separated by ";") or a file: ``.npy`` (a
    1-D integer array, or 2-D with one sequence per row) or text with one sequence per line
    (ids separated by commas or spaces; blank lines and lines starting with # are skipped).
    """
    spec = spec.strip()
    if not spec:
        raise NMError("no token ids given")
    path = Path(spec)
    if _INLINE_IDS.fullmatch(spec):
        parts = spec.split(";")
        if not all(part.strip() for part in parts):
            raise NMError(f"token ids: an empty sequence between semicolons in {spec!r:.60}")
        seqs = [_ids_of(part, "token ids") for part in parts]
    elif _is_file(path):
        if path.suffix == ".npy":
            try:
                a = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise NMError(f"{path}: cannot be read as a .npy array ({e})") from None
            if a.dtype.kind not in "iu" or a.ndim not in (1, 2) or a.size == 0:
                raise NMError(f"{path}: expected a non-empty 1-D or 2-D integer array, got "
                              f"{a.dtype} of shape {list(a.shape)}")
            if a.size and a.min() < 0:
                raise NMError(f"{path}: token ids must be >= 0, got {int(a.min())}")
            seqs = [[int(i) for i in row] for row in a.reshape(-1, a.shape[-1])]
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise NMError(f"{path}: cannot be read ({e})") from None
            seqs = [_ids_of(line, f"{path} line {n + 1}")
                    for n, line in enumerate(text.splitlines())
                    if line.strip() and not line.lstrip().startswith("#")]
    else:
        raise NMError(f"{spec:.200}: no such file (give token ids like 1,2,3 or a file of them)")
    seqs = [s for s in seqs if s]
    if not seqs:
        raise NMError(f"{spec}: holds no token ids")
    if vocab_size is not None:
        top = max(max(s) for s in seqs)
        if top >= vocab_size:
            raise NMError(f"{spec}: token id {top} is outside the vocabulary [0, {vocab_size})")
    return seqs


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:                          # a name too long for a file name is no file
        return False


# -- the metric and the mask ----------------------------------------------------------------------

def standardized_importance(w: np.ndarray, x_norm: np.ndarray) -> np.ndarray:
    """STBLLM's Standardized Importance of every weight, float64 of w's shape (out, in).

    ``S_ij = (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * sqrt(x_norm_j)``: i indexes
    outputs (rows), j input channels (columns); `x_norm` (in,) holds ``||X_j||_2``. A column or
    row of zeros contributes 0 (not 0 / 0).
    """
    w = np.asarray(w)
    x_norm = np.asarray(x_norm, dtype=np.float64)
    if w.ndim != 2 or x_norm.shape != (w.shape[1],):
        raise ValueError(f"w must be 2-D (out, in) and x_norm (in,), got {w.shape} and "
                         f"{x_norm.shape}")
    if not (np.isfinite(x_norm).all() and (x_norm >= 0).all()):
        raise ValueError("x_norm must be finite and >= 0")
    a = np.abs(w.astype(np.float64))
    col = a.sum(axis=0, keepdims=True)      # sum_i |W_ij|: down each input channel's column
    row = a.sum(axis=1, keepdims=True)      # sum_j |W_ij|: along each output's row
    s = np.divide(a, col, out=np.zeros_like(a), where=col > 0)
    s += np.divide(a, row, out=np.zeros_like(a), where=row > 0)
    s *= np.sqrt(x_norm)[None, :]
    return s


def nm_mask(score: np.ndarray, n: int, m: int = M,
            first: np.ndarray | None = None) -> np.ndarray:
    """Keep the `n` largest scores of each group of `m` consecutive columns of each row.

    Ties go to the lower column (stable). With `first` (a boolean array of score's shape), the
    True entries rank above all False ones whatever their score. Returns a boolean mask with
    exactly `n` True per group.
    """
    score = np.asarray(score)
    rows, k = score.shape
    if k % m:
        raise ValueError(f"{k} columns are not a multiple of M = {m}")
    if not 1 <= n <= m:
        raise ValueError(f"n must be in 1..{m}, got {n}")
    keys = [-score.reshape(rows, k // m, m)]             # lexsort: the last key is primary
    if first is not None:
        keys.append(~np.asarray(first, dtype=bool).reshape(rows, k // m, m))
    order = np.lexsort(keys, axis=-1)
    mask = np.zeros((rows, k // m, m), dtype=bool)
    np.put_along_axis(mask, order[..., :n], True, axis=-1)
    return mask.reshape(rows, k)


def outlier_ratio(scores: Sequence[np.ndarray], factor: float = OUTLIER_FACTOR) -> float:
    """Fraction of all values of `scores` (taken together) above `factor` x their mean."""
    total = sum(float(s.sum()) for s in scores)
    count = sum(s.size for s in scores)
    if count == 0:
        raise ValueError("no scores")
    threshold = factor * total / count
    return sum(int(np.count_nonzero(s > threshold)) for s in scores) / count


def _check_base(base: int, m: int = M) -> None:
    if base not in range(2, m - 2):
        raise NMError(f"--base {base}:{m}: --nm auto needs a base N in 2..{m - 3}, so that "
                      f"N - 1 and N + 2 stay within 1..{m - 1}")


def allocate(ratios: Sequence[float], base: int = DEFAULT_BASE, m: int = M) -> list[int]:
    """Per-layer N from the layers' outlier ratios around `base` (rule in the module doc)."""
    _check_base(base, m)
    layers = len(ratios)
    order = sorted(range(layers), key=lambda i: (-ratios[i], i))
    down = math.ceil(layers / 4) if layers >= 2 else 0
    up2, up1 = down // 2, down % 2
    n = [base] * layers
    for i in order[:up2]:
        n[i] = base + 2
    for i in order[up2:up2 + up1]:
        n[i] = base + 1
    for i in order[layers - down:]:
        n[i] = base - 1
    return n


# -- sparse weights -------------------------------------------------------------------------------

@dataclass
class Sparse:
    """One projection after the pass: its int8 values (kept weights), scale and statistics."""

    values: np.ndarray        # (out, in) int8 in {-1, 0, 1}
    scale: np.float32         # gamma (ternary) or alpha (binary): W ~ values * scale
    mask: np.ndarray          # (out, in) bool: kept positions, exactly n per group
    dense_gamma: np.float32   # absmean gamma of the dense tensor
    dense_nonzero: int        # non-zero weights of the dense ternary tensor


def sparsify(w: np.ndarray, x_norm: np.ndarray, n: int, binary: bool = False) -> Sparse:
    """N:M-sparse ternary (or binary) values of latent weights `w` (out, in); see module doc."""
    s = standardized_importance(w, x_norm)
    w_t, gamma = absmean_ternarize(w)
    dense_nz = int(np.count_nonzero(w_t))
    if binary:
        mask = nm_mask(s, n)
        values = np.where(np.asarray(w) >= 0, 1, -1).astype(np.int8) * mask
        kept = np.abs(np.asarray(w, dtype=np.float64))[mask]
        scale = np.float32(kept.mean())
    else:
        mask = nm_mask(s, n, first=w_t != 0)
        values = w_t * mask
        scale = gamma
    return Sparse(values.astype(np.int8), np.float32(scale), mask, gamma, dense_nz)


@dataclass
class Encoded:
    """Float32 weights that `absmean_ternarize` reads back as (values, gamma), as a recipe.

    Every non-zero value v is stored as ``v * base``, except the `trim` positions (flat
    indices), stored as ``v * trim_value``; zeros are stored as 0.
    """

    values: np.ndarray
    base: np.float32
    trim: np.ndarray
    trim_value: np.float32
    gamma: np.float32

    def materialize(self) -> np.ndarray:
        return _build(self.values, self.base, self.trim, self.trim_value)


def _build(values: np.ndarray, base: np.float32, trim: np.ndarray,
           trim_value: np.float32) -> np.ndarray:
    v = values.astype(np.float32) * base
    flat = v.reshape(-1)
    flat[trim] = values.reshape(-1)[trim].astype(np.float32) * trim_value
    return v


def _f32_bits(x) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def _bits_f32(b: int) -> np.float32:
    return np.array([b], dtype=np.uint32).view(np.float32)[0]


def encode_float(values: np.ndarray, gamma, exact: bool = True) -> Encoded:
    """Float32 weights whose `absmean_ternarize` is exactly (`values`, `gamma`).

    A float checkpoint is ternarized on reading with gamma = mean |W| over the whole tensor, so
    a sparse tensor stored naively (kept latent weights, zeros elsewhere) would come back with a
    gamma shrunk by the density. Here every non-zero value v is stored as ``v * c`` with
    ``c = gamma * size / nnz`` (so that |V| / gamma >= 1 and the ternary values survive), and
    the few "trim" weights (the last ceil(nnz / TRIM_SPAN) non-zero ones) get a magnitude t
    found by bisection on its float32 bit pattern so that the float32 sum the reader computes,
    divided by the size, is exactly `gamma`. The reader's gamma is monotone in t, and with one
    trim weight one ulp of t moves the computed sum by at most one ulp of the sum, so every
    reachable gamma is hit (with several, a step could in principle skip one: then the search
    is repeated with more trim weights). t stays above 0.75 gamma, so the trim weights still
    read as +-1. A 6912 x 2560 tensor (the 2B4T FFN shape) takes about 25 reads.

    `exact=False` accepts the smallest reachable gamma >= `gamma` (the binary alpha need not be
    reachable; a dense absmean gamma always is). The result is checked with the reader's own
    function before it is returned; `NMError` if no such weights exist.
    """
    values = np.asarray(values)
    gamma = np.float32(gamma)
    nz = np.flatnonzero(values)
    if nz.size == 0:
        raise NMError("it has no non-zero weight (after pruning), so a float checkpoint has no "
                      "scale to store for it")
    size = values.size
    base = np.float32(float(gamma) * size / nz.size)
    if not (np.isfinite(gamma) and np.isfinite(base) and np.isfinite(np.float32(4) * base)):
        raise NMError(f"scale {float(gamma):.3g} times {size / nz.size:.3g} (size over non-zero "
                      f"weights) is not finite in float32")

    def read(trim: np.ndarray, b: int) -> tuple[np.ndarray, np.float32]:
        return absmean_ternarize(_build(values, base, trim, _bits_f32(b)))

    for span in (TRIM_SPAN, TRIM_SPAN // 16, TRIM_SPAN // 256):
        trim = nz[-max(1, math.ceil(nz.size / span)):]
        lo, hi = _f32_bits(0.75 * float(gamma)), _f32_bits(4 * float(base))
        if read(trim, lo)[1] > gamma or read(trim, hi)[1] < gamma:
            continue
        while lo < hi:                     # the smallest t whose gamma is >= the target
            mid = (lo + hi) // 2
            if read(trim, mid)[1] >= gamma:
                hi = mid
            else:
                lo = mid + 1
        w_t, got = read(trim, lo)
        if (got == gamma or not exact) and np.array_equal(w_t, values):
            return Encoded(values, base, trim, _bits_f32(lo), got)
    raise NMError(f"cannot store {values.shape} ternary values with scale {float(gamma)!r} as "
                  f"float32 weights that read back exactly")


# -- calibration ----------------------------------------------------------------------------------

def calibrate(model: HostModel, sequences: Sequence[Sequence[int]],
              progress: Callable[[int, str], None] | None = None) -> dict[str, np.ndarray]:
    """``||X_j||_2`` of every projection's float input over all calibration tokens, by name.

    Each sequence runs from an empty KV cache through `model` (use the golden projector for
    the reference path); the model is reset afterwards.
    """
    sumsq = {p.name: np.zeros(p.k, dtype=np.float64) for p in model.ckpt.projections()}
    limit = model.cfg.max_position_embeddings

    def record(proj: Projection, x: np.ndarray) -> None:
        x64 = x.astype(np.float64)
        sumsq[proj.name] += np.einsum("tk,tk->k", x64, x64)

    model.on_projection_input = record
    try:
        for i, seq in enumerate(sequences):
            if progress is not None:
                progress(i, f"calibration sequence {i + 1}")
            if len(seq) > limit:
                raise NMError(f"calibration sequence {i + 1} has {len(seq)} tokens, more than "
                              f"max_position_embeddings {limit}")
            model.reset()
            model.forward(seq, "calibration")
    finally:
        model.on_projection_input = None
        model.reset()
    return {name: np.sqrt(v) for name, v in sumsq.items()}


# -- the pass -------------------------------------------------------------------------------------

def metadata_bits(n: int, m: int = M) -> float:
    """Minimal position metadata per weight: which N of M positions are kept, log2(C(M, N)) / M."""
    return math.log2(math.comb(m, n)) / m


def _bits(n: int, m: int, binary: bool) -> dict:
    return {"nominal_bits": n / m,
            "value_bits": n / m if binary else n * math.log2(3) / m,
            "metadata_bits": metadata_bits(n, m)}


def _check_out(out: Path, model_dir: Path) -> None:
    """Refuse an output directory that is or holds the model, or holds anything but an earlier
    output of this pass (only its files, with an nm.json of this format)."""
    if out.resolve() == model_dir.resolve():
        raise NMError(f"{out}: the output directory is the model directory")
    if model_dir.resolve().is_relative_to(out.resolve()):
        raise NMError(f"{out}: holds the model directory {model_dir}; refusing to replace it")
    check_replaceable(out, OUT_FILES.__contains__, "an earlier output of compiler.nm",
                      lambda d: has_format(d, NM_FILE, FORMAT), NMError)


def prune(model_dir: Path, out: Path, nm: int | None, sequences: Sequence[Sequence[int]],
          base: int = DEFAULT_BASE, binary: bool = False, progress: bool = False) -> dict:
    """Run the N:M pass on the float checkpoint in `model_dir`; write `out`; return nm.json.

    `nm` is N (of M = 8) for every layer, or None for the per-layer allocation around `base`.
    """
    model_dir, out = Path(model_dir), Path(out)
    t0 = time.monotonic()
    if nm is not None and not 1 <= nm <= M - 1:
        raise NMError(f"N must be in 1..{M - 1}, got {nm}")
    if nm is None:
        _check_base(base)
    ckpt = Checkpoint(model_dir)
    if ckpt.packed():
        raise NMError(f"{ckpt.path}: packed checkpoint (uint8 projections with weight_scale); "
                      f"N:M pruning needs the float latent weights (a bf16 / fp16 / fp32 "
                      f"checkpoint)")
    cfg = ckpt.config
    projs = ckpt.projections()
    for p in projs:
        if p.k % M:
            raise NMError(f"{p.name}: {p.k} input channels are not a multiple of M = {M}")
    if not sequences or not all(len(s) for s in sequences):
        raise NMError("no calibration token ids")
    top = max(max(s) for s in sequences)
    if top >= cfg.vocab_size or min(min(s) for s in sequences) < 0:
        raise NMError(f"calibration token id {top} is outside the vocabulary "
                      f"[0, {cfg.vocab_size})")
    _check_out(out, model_dir)

    host = HostModel(model_dir, "golden")
    bar = Progress(len(sequences), progress)
    x_norm = calibrate(host, sequences, bar.update)
    bar.done()
    del host

    def latent(p: Projection) -> np.ndarray:
        return np.asarray(ckpt.read(p.name), dtype=np.float32)

    by_layer: dict[int, list[Projection]] = {}
    for p in projs:
        by_layer.setdefault(p.layer, []).append(p)
    layer_ratio, proj_ratio = [], {}
    bar = Progress(len(projs), progress)
    for group in by_layer.values():
        scores = []
        for p in group:
            bar.update(len(proj_ratio), f"importance {p.name}")
            s = standardized_importance(latent(p), x_norm[p.name])
            proj_ratio[p.name] = outlier_ratio([s])
            scores.append(s)
        layer_ratio.append(outlier_ratio(scores))
        del scores
    bar.done()
    layer_n = allocate(layer_ratio, base) if nm is None else [nm] * cfg.num_layers

    encoded: dict[str, Encoded] = {}
    entries = []
    bar = Progress(len(projs), progress)
    for i, p in enumerate(projs):
        bar.update(i, f"prune {p.name}")
        n = layer_n[p.layer]
        sp = sparsify(latent(p), x_norm[p.name], n, binary)
        try:
            enc = encode_float(sp.values, sp.scale, exact=not binary)
        except NMError as e:
            raise NMError(f"{ckpt.info(p.name)[2]}: tensor {p.name!r}: {e}") from None
        encoded[p.name] = enc
        size = p.n * p.k
        nonzero = int(np.count_nonzero(sp.values))
        bits = _bits(n, M, binary)
        entries.append({
            "name": p.name, "layer": p.layer, "kind": p.kind, "shape": [p.n, p.k],
            "n": n, "m": M, "kept_fraction": int(sp.mask.sum()) / size,
            "nonzero_fraction": nonzero / size, "dense_nonzero_fraction": sp.dense_nonzero / size,
            "outlier_ratio": proj_ratio[p.name], "scale": float(enc.gamma),
            "dense_gamma": float(sp.dense_gamma), **bits,
            "nominal_bits_total": size * bits["nominal_bits"],
            "metadata_bits_total": size * bits["metadata_bits"],
        })
    bar.done()

    weights = sum(e["shape"][0] * e["shape"][1] for e in entries)
    summary = {
        "format": FORMAT, "version": VERSION, "source": str(model_dir.resolve()),
        "nm": "auto" if nm is None else f"{nm}:{M}",
        "base": f"{base}:{M}" if nm is None else None, "m": M,
        "mode": "binary" if binary else "ternary",
        "scale_rule": ("alpha = mean |W| of the kept weights, per tensor" if binary else
                       "dense absmean gamma (mean |W| over the whole dense tensor)"),
        "importance": "S_ij = (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * "
                      "||X_j||_2 ** 0.5, W of shape (out, in)",
        "calibration": {"sequences": len(sequences), "tokens": sum(len(s) for s in sequences),
                        "activations": "float input of each projection, before int8 "
                                       "quantization"},
        "outlier_factor": OUTLIER_FACTOR,
        "layers": [{"layer": i, "n": n, "m": M, "outlier_ratio": r}
                   for i, (n, r) in enumerate(zip(layer_n, layer_ratio))],
        "projections": entries,
        "totals": {
            "weights": weights,
            **{k: sum(e[k] * e["shape"][0] * e["shape"][1] for e in entries) / weights
               for k in ("nominal_bits", "value_bits", "metadata_bits", "kept_fraction",
                         "nonzero_fraction", "dense_nonzero_fraction")},
        },
    }
    summary["totals"]["stored_bits"] = (summary["totals"]["value_bits"]
                                        + summary["totals"]["metadata_bits"])
    _write(ckpt, model_dir, out, encoded, summary, progress)
    summary["out"] = str(out)
    summary["seconds"] = round(time.monotonic() - t0, 3)
    return summary


def _write(ckpt: Checkpoint, model_dir: Path, out: Path, encoded: dict[str, Encoded],
           summary: dict, progress: bool) -> None:
    try:
        text = json.dumps(summary, indent=1, allow_nan=False) + "\n"
    except ValueError as e:                  # NaN or Infinity: not JSON, never written
        raise NMError(f"{out}: {NM_FILE} would hold a non-finite number ({e})") from None

    def fill(tmp: Path) -> None:
        _fill(ckpt, model_dir, out, tmp, encoded, summary, text, progress)
        Checkpoint(tmp)                      # the structure checks of every reader

    write_directory(out, fill, lambda: _check_out(out, model_dir), NMError)


def _fill(ckpt: Checkpoint, model_dir: Path, out: Path, tmp: Path,
          encoded: dict[str, Encoded], summary: dict, text: str, progress: bool) -> None:
    """Write the pass's files into the temporary directory `tmp` (renamed to `out` later)."""
    shutil.copyfile(model_dir / CONFIG_FILE, tmp / CONFIG_FILE)
    for name in EXTRA_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, tmp / name)
    specs = []
    for name in ckpt.names():
        if name in encoded:
            enc = encoded[name]
            specs.append(TensorSpec(name, "F32", enc.values.shape,
                                    lambda enc=enc: iter((enc.materialize(),))))
        else:
            dtype, shape, _ = ckpt.info(name)
            specs.append(TensorSpec(name, dtype, shape,
                                    lambda name=name: iter((ckpt.read(name),))))
    if progress:
        sys.stderr.write(f"writing {out / SINGLE_FILE}\r")
    write_streaming(tmp / SINGLE_FILE, specs, {"format": "pt", "nm": summary["nm"]})
    (tmp / NM_FILE).write_text(text)


# -- evaluation -----------------------------------------------------------------------------------

def evaluate(dense_dir: Path, sparse_dir: Path, sequences: Sequence[Sequence[int]],
             precision: str = "float16") -> dict:
    """Logits of the sparse model against the dense one over the same token sequences.

    Both run through `HostModel` with the golden projector, each sequence from an empty cache.
    ``logit_scale`` is the root mean square of the dense logits over every position and
    vocabulary entry; the errors are |sparse - dense| over the same entries, and the relative
    figures divide them by that scale.
    """
    dense = HostModel(Path(dense_dir), "golden", precision=precision)
    sparse = HostModel(Path(sparse_dir), "golden", precision=precision)
    for key in ("vocab_size", "hidden_size", "num_layers"):
        a, b = getattr(dense.cfg, key), getattr(sparse.cfg, key)
        if a != b:
            raise NMError(f"{sparse_dir}: {key} {b} differs from the dense model's {a}")
    if not sequences:
        raise NMError("no evaluation token ids")
    top = max(max(s) for s in sequences)
    if top >= dense.cfg.vocab_size:
        raise NMError(f"token id {top} is outside the vocabulary [0, {dense.cfg.vocab_size})")
    ld, ls = [], []
    for seq in sequences:
        dense.reset()
        sparse.reset()
        ld.append(dense.forward(seq, "eval"))
        ls.append(sparse.forward(seq, "eval"))
    d = np.concatenate(ld).astype(np.float64)
    s = np.concatenate(ls).astype(np.float64)
    err = np.abs(s - d)
    if not (np.isfinite(d).all() and np.isfinite(s).all()):
        raise NMError(f"{sparse_dir}: the logits of the dense or the sparse model are not "
                      f"finite; nothing to compare")
    scale = float(np.sqrt(np.mean(d * d)))
    if scale == 0:
        raise NMError(f"{dense_dir}: the dense model's logits are all zero; no scale to "
                      f"compare against")
    log_p = d - d.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    log_q = s - s.max(axis=1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    return {
        "dense": str(dense_dir), "sparse": str(sparse_dir), "sequences": len(sequences),
        "positions": int(d.shape[0]), "precision": precision, "logit_scale": scale,
        "mean_abs_error": float(err.mean()), "max_abs_error": float(err.max()),
        "mean_rel_error": float(err.mean()) / scale, "max_rel_error": float(err.max()) / scale,
        "top1_agreement": float(np.mean(d.argmax(axis=1) == s.argmax(axis=1))),
        "mean_kl": float(kl.mean()),
    }


# -- command line ---------------------------------------------------------------------------------

def _prune_table(s: dict) -> str:
    lines = [f"{'layer':>5}  {'N:M':>4}  {'outlier ratio':>13}"]
    lines += [f"{e['layer']:>5}  {e['n']}:{e['m']}  {100 * e['outlier_ratio']:12.3f}%"
              for e in s["layers"]]
    t = s["totals"]
    lines += [
        f"wrote {s['out']} ({s['nm']}, {s['mode']}) in {s['seconds']:.1f} s",
        f"weights {t['weights']:,}: kept {100 * t['kept_fraction']:.1f}%, non-zero "
        f"{100 * t['nonzero_fraction']:.1f}% (dense {100 * t['dense_nonzero_fraction']:.1f}%)",
        f"bits per weight: nominal {t['nominal_bits']:.3f}, values {t['value_bits']:.3f}, "
        f"metadata >= {t['metadata_bits']:.3f}, stored >= {t['stored_bits']:.3f}",
    ]
    return "\n".join(lines)


def _eval_table(r: dict) -> str:
    return "\n".join([
        f"positions        {r['positions']} ({r['sequences']} sequence(s))",
        f"logit scale      {r['logit_scale']:.4f} (RMS of the dense logits)",
        f"mean |error|     {r['mean_abs_error']:.4g} ({100 * r['mean_rel_error']:.2f}% of scale)",
        f"max |error|      {r['max_abs_error']:.4g} ({100 * r['max_rel_error']:.2f}% of scale)",
        f"top-1 agreement  {100 * r['top1_agreement']:.1f}%",
        f"mean KL          {r['mean_kl']:.4g} nats",
    ])


def _main_eval(argv: list[str]) -> int:
    ap = ArgumentParser(
        prog="python -m compiler.nm eval",
        description="Compare a sparse model's logits with the dense model's over the same "
                    "token ids (HostModel, golden projector).")
    ap.add_argument("dense", type=Path, help="the dense model directory")
    ap.add_argument("sparse", type=Path, help="the N:M model directory (or any other model)")
    ap.add_argument("--ids", help="token ids (1,2,3; sequences separated by ;) or a file: "
                                  ".npy, or text with one sequence per line")
    ap.add_argument("--precision", choices=("float16", "float32"), default="float16",
                    help="host attention precision (default float16)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        if args.ids is None:
            raise NMError("--ids is required: token ids like 1,2,3 or a file of them")
        result = evaluate(args.dense, args.sparse, parse_ids(args.ids), args.precision)
    except (NMError, CheckpointError, HostError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, allow_nan=False) if args.json else _eval_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:
        return _main_eval(argv[1:])
    ap = ArgumentParser(
        prog="python -m compiler.nm",
        description="N:M structured sparsity (STBLLM) for the projections of a float BitNet "
                    "checkpoint: calibrate, rank by Standardized Importance, keep N of every "
                    f"{M} input channels, write a float checkpoint and nm.json.",
        epilog="Accuracy: python -m compiler.nm eval DENSE_DIR SPARSE_DIR --ids IDS [--json]")
    ap.add_argument("model_dir", type=Path,
                    help="float (unpacked) checkpoint directory with config.json")
    ap.add_argument("--nm", help=f"N:{M} for every layer (N in 1..{M - 1}), or auto: per-layer "
                                 "N from outlier ratios around --base")
    ap.add_argument("--base", default=f"{DEFAULT_BASE}:{M}",
                    help=f"base ratio of --nm auto (default {DEFAULT_BASE}:{M}; N in 2..{M - 3})")
    ap.add_argument("--calib", help="calibration token ids (1,2,3; sequences separated by ;) "
                                    "or a file: .npy, or text with one sequence per line")
    ap.add_argument("--out", type=Path, help="output directory (replaced if it is an earlier "
                                             "output of this pass)")
    ap.add_argument("--binary", action="store_true",
                    help="kept weights +-1 with alpha = mean |W| of the kept weights "
                         "(default: dense ternary values and gamma)")
    ap.add_argument("--json", action="store_true", help="print nm.json's content as one line")
    args = ap.parse_args(argv)
    try:
        if args.nm is None:
            raise NMError(f"--nm is required: N:{M} (N in 1..{M - 1}) or auto")
        nm = parse_nm(args.nm)
        base = parse_nm(args.base) if nm is None else DEFAULT_BASE
        if base is None:
            raise NMError("--base must be N:8, not auto")
        if args.calib is None:
            raise NMError("--calib is required: calibration token ids like 1,2,3 or a file "
                          "of them")
        if args.out is None:
            raise NMError("--out is required: the output directory")
        summary = prune(args.model_dir, args.out, nm, parse_ids(args.calib), base,
                        args.binary, progress=sys.stderr.isatty() and not args.json)
    except (NMError, CheckpointError, HostError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        return 130
    print(json.dumps(summary, allow_nan=False) if args.json else _prune_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
