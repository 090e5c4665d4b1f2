"""Golden numerics of BitNet b1.58: the bit-exact reference every other model is checked against.

Plain integer numpy. Every public function checks the dtypes, shapes and value sets of its
inputs and raises ValueError with a message naming the argument and the problem.

Numerics (REFERENCE.md section 1), all floating point in float32:

- weights, per tensor: ``gamma = max(mean(|W|), 1e-5)``, ``W_t = clip(rint(W / gamma), -1, 1)``;
- activations, per token (row): ``amax = max(max|x|, 1e-5)``,
  ``s = (1 / amax) * 127`` with two float32 roundings, as Hugging Face transformers evaluates
  ``127 / amax``; ``x_q = clip(rint(x * s), -128, 127)``;
- ``acc = x_q @ W_t.T`` exactly (int32), ``y = acc * ((gamma * amax) / 127)``.

``rint`` rounds half to even, as ``torch.round`` does.

Weight formats (REFERENCE.md section 3A, `rtl.isa.WeightEncoding`): the Hugging Face row-blocked
2-bit packing (`hf_pack`, `hf_unpack`) and the accelerator's flat trit streams (`pack_trits`,
`unpack_trits`), base-3 (5 trits per byte) and 2-bit codes (4 per byte), and N:M slot codes
(`nm_encode`, `nm_decode`; `rtl.isa` NM): N 4-bit codes per row and group of 8 columns.
"""

import ml_dtypes
import numpy as np

from rtl.isa import (
    BASE3_VALID_BYTES,
    CODE2_INVALID,
    NM_EMPTY,
    NM_INVALID,
    NM_M,
    NM_MAX_N,
    NM_MIN_N,
    NM_SLOT_BITS,
    TRIT_CODE_OFFSET,
    TRITS_PER_BYTE,
    WeightEncoding,
    base3_decode_table,
    nm_slot_table,
)

__all__ = [
    "EPS", "QMAX", "absmean_ternarize", "bitlinear", "dequantize", "hf_pack", "hf_unpack",
    "nm_decode", "nm_encode", "nm_group_nonzeros", "nm_slot_fields", "pack_trits",
    "quantize_activations", "ternary_matmul", "unpack_trits",
]

#: Lower clamp of gamma and of amax (as float32, like torch's ``clamp(min=1e-5)`` on float32).
EPS = np.float32(1e-5)
#: Largest int8 activation magnitude produced by absmax quantization.
QMAX = np.float32(127)
#: HF packing: 2-bit codes per byte (the same codes as `WeightEncoding.CODE2`).
HF_VALUES_PER_BYTE = TRITS_PER_BYTE[WeightEncoding.CODE2]

_INT8_MIN, _INT8_MAX = -128, 127
_INT32 = np.iinfo(np.int32)
_FLOAT_DTYPES = tuple(np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))
_CODE_BITS = 2
_CODE_MASK = (1 << _CODE_BITS) - 1


def _word_table(trits: np.ndarray) -> np.ndarray:
    """Byte -> its trits as one little-endian word, so a decode is one gather of whole words."""
    width = 1 << (trits.shape[1] - 1).bit_length()  # 4 -> 4 bytes, 5 -> 8 bytes
    words = np.zeros((trits.shape[0], width), dtype=np.int8)
    words[:, :trits.shape[1]] = trits
    return words.view(f"<u{width}").ravel()


# Base-3: byte -> 5 trits (t_0 first), the hardware decoder's table, padded to 8-byte words.
_BASE3_WORDS = _word_table(np.array(base3_decode_table(), dtype=np.int8))
# CODE2: every byte -> 4 trits (bytes holding 0b11 decode to garbage; they are refused first).
_CODE2_TRITS = TRITS_PER_BYTE[WeightEncoding.CODE2]
_CODE2_CODES = (np.arange(256)[:, None] >> (_CODE_BITS * np.arange(_CODE2_TRITS))) & _CODE_MASK
_CODE2_WORDS = _word_table(_CODE2_CODES.astype(np.int8) - TRIT_CODE_OFFSET)
_CODE2_BAD_BYTE = (_CODE2_CODES == CODE2_INVALID).any(axis=1)
# N:M: slot code -> trit (0 for empty and invalid) and offset d; the one invalid code.
_NM_TABLE = nm_slot_table()
_NM_TRIT = np.array([e[0] if e else 0 for e in _NM_TABLE], dtype=np.int8)
_NM_OFFSET = np.array([e[1] if e else 0 for e in _NM_TABLE], dtype=np.int8)
_NM_INVALID = np.array([e is None for e in _NM_TABLE])
_NM_SIGN_BIT = NM_SLOT_BITS - 1
_NM_OFFSET_MASK = (1 << _NM_SIGN_BIT) - 1
# Streams are coded in chunks of this many bytes, so temporaries stay in cache.
_CHUNK_BYTES = 1 << 20


# -- input checks ---------------------------------------------------------------------------------

def _index(a: np.ndarray, mask: np.ndarray) -> tuple:
    """The index (as a tuple of ints) of the first True of `mask` in C order."""
    flat = int(np.argmax(mask.ravel()))
    return tuple(int(i) for i in np.unravel_index(flat, a.shape))


def _check_int(name: str, a, dtype, ndim: int | None = None) -> np.ndarray:
    """Return `a` as an array after checking its dtype (exactly) and its number of dimensions."""
    a = np.asarray(a)
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must be {np.dtype(dtype)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _check_trits(name: str, a, ndim: int | None = None) -> np.ndarray:
    """Return `a` after checking that it is int8 and holds only -1, 0 and 1."""
    a = _check_int(name, a, np.int8, ndim)
    if a.size and (a.min() < -1 or a.max() > 1):  # two fast reductions; the mask only on error
        bad = (a < -1) | (a > 1)
        at = _index(a, bad)
        raise ValueError(f"{name} holds values outside {{-1, 0, 1}}: {int(a[at])} at index {at}")
    return a


def _check_float(name: str, a, ndim: int) -> np.ndarray:
    """Return `a` as float32 after checking its dtype, its shape and that it is finite."""
    a = np.asarray(a)
    if a.dtype not in _FLOAT_DTYPES:
        names = ", ".join(str(d) for d in _FLOAT_DTYPES)
        raise ValueError(f"{name} must be a float array ({names}), got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    with np.errstate(over="ignore"):   # float64 beyond float32's range: refused just below
        a32 = a.astype(np.float32)
    bad = ~np.isfinite(a32)
    if bad.any():
        at = _index(a, bad)
        v = float(a[at])
        if np.isnan(v):
            what = "NaN"
        elif np.isinf(v):
            what = "Inf" if v > 0 else "-Inf"
        else:
            what = f"{v!r}, which overflows float32"
        raise ValueError(f"{name} holds {what} at index {at}")
    return a32


def _check_encoding(encoding) -> WeightEncoding:
    """A dense trit-stream encoding (N:M slots are not a trit stream: `nm_encode`)."""
    dense = [e for e in WeightEncoding if e in TRITS_PER_BYTE]
    try:
        enc = WeightEncoding(encoding)
    except ValueError:
        enc = None
    if enc not in dense:
        names = ", ".join(f"{e.name}={int(e)}" for e in dense)
        raise ValueError(f"encoding must be a dense WeightEncoding ({names}), got "
                         f"{encoding!r}") from None
    return enc


# -- numerics -------------------------------------------------------------------------------------

def absmean_ternarize(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Ternarize a weight matrix per tensor with the absmean scale.

    ``gamma`` is the float32 sum of ``|W|`` (numpy's pairwise order) divided in float32 by the
    element count (itself a float32), clamped below at 1e-5;
    ``W_t = clip(rint(W / gamma), -1, 1)``, the quotient rounded once in float32.

    Parameters
    ----------
    w : (N, K) float16, bfloat16, float32 or float64 array, finite. Cast to float32 first.

    Returns
    -------
    w_t : (N, K) int8 in {-1, 0, 1}
    gamma : float32
    """
    w32 = _check_float("w", w, 2)
    total = np.sum(np.abs(w32), dtype=np.float32)
    gamma = np.maximum(np.float32(total / np.float32(w32.size)), EPS)
    w_t = np.clip(np.rint(w32 / gamma), -1, 1).astype(np.int8)
    return w_t, np.float32(gamma)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize activations to int8 per token (row) with the absmax scale, as transformers does.

    ``s = (float32(1) / amax) * float32(127)``, two float32 roundings (torch evaluates
    ``127 / amax`` as ``reciprocal(amax) * 127``); ``x_q = clip(rint(x * s), -128, 127)``.

    Parameters
    ----------
    x : (T, K) float16, bfloat16, float32 or float64 array, finite, not empty. Cast to float32.

    Returns
    -------
    x_q : (T, K) int8, in practice within [-127, 127]
    amax : (T,) float32, the per-token max |x| clamped below at 1e-5
    """
    x32 = _check_float("x", x, 2)
    amax = np.maximum(np.max(np.abs(x32), axis=1), EPS)
    s = (np.float32(1) / amax) * QMAX
    x_q = np.clip(np.rint(x32 * s[:, None]), _INT8_MIN, _INT8_MAX).astype(np.int8)
    return x_q, amax


def ternary_matmul(x_q: np.ndarray, w_t: np.ndarray) -> np.ndarray:
    """Exact integer product ``x_q @ w_t.T`` (int64 arithmetic, checked to fit int32).

    Parameters
    ----------
    x_q : (T, K) int8
    w_t : (N, K) int8 in {-1, 0, 1}

    Returns
    -------
    acc : (T, N) int32
    """
    x_q = _check_int("x_q", x_q, np.int8, 2)
    w_t = _check_trits("w_t", w_t, 2)
    if x_q.shape[1] != w_t.shape[1]:
        raise ValueError(f"x_q has K = {x_q.shape[1]} columns but w_t has K = {w_t.shape[1]} "
                         f"(x_q {x_q.shape}, w_t {w_t.shape})")
    acc = x_q.astype(np.int64) @ w_t.astype(np.int64).T
    if acc.size and (acc.min() < _INT32.min or acc.max() > _INT32.max):
        raise ValueError(f"accumulator does not fit int32 (range [{acc.min()}, {acc.max()}])")
    return acc.astype(np.int32)


def dequantize(acc: np.ndarray, gamma, amax: np.ndarray) -> np.ndarray:
    """Scale integer accumulators back to real values: ``y = acc * gamma * amax / 127``.

    Order of operations, every step rounded to float32: ``scale_t = (gamma * amax_t) / 127``
    once per token, then ``y[t, n] = float32(acc[t, n]) * scale_t``. ``float32(acc)`` is exact
    while ``|acc| <= 2**24`` (always so for K <= 131072).

    Parameters
    ----------
    acc : (T, N) int32
    gamma : float32 scalar, finite and > 0; any real scalar or shape-(1,) array (a checkpoint's
        ``weight_scale``) is converted to float32
    amax : (T,) float32, finite and > 0

    Returns
    -------
    y : (T, N) float32
    """
    acc = _check_int("acc", acc, np.int32, 2)
    g = np.asarray(gamma)
    if g.shape not in ((), (1,)):
        raise ValueError(f"gamma must be a scalar (shape () or (1,)), got shape {g.shape}")
    if g.dtype.kind not in "fiu" and g.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"gamma must be a real number, got {g.dtype}")
    g = np.float32(g.reshape(()))
    if not (np.isfinite(g) and g > 0):
        raise ValueError(f"gamma must be finite and > 0, got {g!r}")
    amax = np.asarray(amax)
    if amax.dtype != np.float32:
        raise ValueError(f"amax must be float32, got {amax.dtype}")
    if amax.shape != (acc.shape[0],):
        raise ValueError(f"amax must have shape ({acc.shape[0]},) to match acc {acc.shape}, "
                         f"got {amax.shape}")
    if not (np.isfinite(amax) & (amax > 0)).all():
        raise ValueError("amax must be finite and > 0 everywhere")
    scale = (g * amax) / QMAX
    return acc.astype(np.float32) * scale[:, None]


def bitlinear(x: np.ndarray, w_t: np.ndarray, gamma) -> np.ndarray:
    """One BitLinear projection: `quantize_activations`, `ternary_matmul`, `dequantize`.

    Parameters
    ----------
    x : (T, K) float array
    w_t : (N, K) int8 in {-1, 0, 1}
    gamma : the weight scale (float32 scalar)

    Returns
    -------
    y : (T, N) float32
    """
    x_q, amax = quantize_activations(x)
    return dequantize(ternary_matmul(x_q, w_t), gamma, amax)


# -- Hugging Face packed checkpoints --------------------------------------------------------------

def hf_pack(w_t: np.ndarray) -> np.ndarray:
    """Pack ternary weights as Hugging Face BitNet checkpoints store them (row-blocked).

    With ``Q = N / 4``, bits ``[2i+1:2i]`` of ``packed[r, c]`` hold ``W[i*Q + r, c] + 1``.

    Parameters
    ----------
    w_t : (N, K) int8 in {-1, 0, 1}, N a multiple of 4

    Returns
    -------
    packed : (N / 4, K) uint8
    """
    w_t = _check_trits("w_t", w_t, 2)
    n, k = w_t.shape
    if n % HF_VALUES_PER_BYTE:
        raise ValueError(f"w_t has N = {n} rows, not a multiple of {HF_VALUES_PER_BYTE}")
    codes = (w_t + TRIT_CODE_OFFSET).astype(np.uint8).reshape(HF_VALUES_PER_BYTE, -1, k)
    packed = np.zeros((n // HF_VALUES_PER_BYTE, k), dtype=np.uint8)
    for i in range(HF_VALUES_PER_BYTE):
        packed |= codes[i] << np.uint8(_CODE_BITS * i)
    return packed


def hf_unpack(packed: np.ndarray) -> np.ndarray:
    """Unpack a Hugging Face BitNet packed weight (the inverse of `hf_pack`).

    Parameters
    ----------
    packed : (Q, K) uint8, no 2-bit code equal to 0b11

    Returns
    -------
    w_t : (4 * Q, K) int8 in {-1, 0, 1}
    """
    packed = _check_int("packed", packed, np.uint8, 2)
    shifts = (_CODE_BITS * np.arange(HF_VALUES_PER_BYTE, dtype=np.uint8))[:, None, None]
    codes = (packed[None] >> shifts) & np.uint8(_CODE_MASK)  # (4, Q, K): code i of each byte
    bad = codes == CODE2_INVALID
    if bad.any():
        r, c = _first_bad_cell(bad)
        raise ValueError(f"packed holds the invalid code 0b11 at row {r}, column {c} "
                         f"(byte {int(packed[r, c])})")
    q, k = packed.shape
    return (codes.astype(np.int8) - TRIT_CODE_OFFSET).reshape(HF_VALUES_PER_BYTE * q, k)


def _first_bad_cell(bad: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first byte, in C order, with any invalid code; `bad` is (4, Q, K)."""
    cell = bad.any(axis=0)
    return _index(cell, cell)


# -- accelerator weight streams -------------------------------------------------------------------

def pack_trits(trits: np.ndarray, encoding: WeightEncoding) -> np.ndarray:
    """Pack a flat trit sequence into bytes in one of the accelerator's weight encodings.

    Trit ``i`` of byte ``j`` is element ``n*j + i`` (n = 5 for BASE3, 4 for CODE2), stored as the
    code ``c = t + 1``: BASE3 byte ``= sum(c_i * 3**i)``, CODE2 bits ``[2i+1:2i] = c_i``. A short
    last byte is padded with zero trits (code 1).

    Parameters
    ----------
    trits : (M,) int8 in {-1, 0, 1}
    encoding : WeightEncoding

    Returns
    -------
    packed : (ceil(M / n),) uint8
    """
    encoding = _check_encoding(encoding)
    trits = _check_trits("trits", trits, 1)
    n = TRITS_PER_BYTE[encoding]
    full, rest = divmod(trits.size, n)
    packed = np.empty(full + (rest > 0), dtype=np.uint8)
    for start in range(0, full, _CHUNK_BYTES):
        stop = min(start + _CHUNK_BYTES, full)
        codes = trits[start * n:stop * n].reshape(-1, n) + np.int8(TRIT_CODE_OFFSET)
        packed[start:stop] = _pack_codes(codes.view(np.uint8), encoding)
    if rest:
        codes = np.full((1, n), TRIT_CODE_OFFSET, dtype=np.uint8)
        codes[0, :rest] = trits[full * n:] + TRIT_CODE_OFFSET
        packed[full:] = _pack_codes(codes, encoding)
    return packed


def _pack_codes(codes: np.ndarray, encoding: WeightEncoding) -> np.ndarray:
    """(bytes, n) uint8 codes, code i of each byte in column i -> (bytes,) uint8."""
    # Horner from the last code; every intermediate is <= 242 (BASE3) or 255 (CODE2): exact.
    packed = codes[:, -1].copy()
    for i in range(codes.shape[1] - 2, -1, -1):
        if encoding == WeightEncoding.BASE3:
            packed *= np.uint8(3)
        else:
            packed <<= np.uint8(_CODE_BITS)
        packed += codes[:, i]
    return packed


def unpack_trits(packed: np.ndarray, encoding: WeightEncoding, count: int) -> np.ndarray:
    """Unpack the first `count` trits of a byte stream made by `pack_trits`.

    Every byte given is checked, also those past `count` (the hardware decodes whole words);
    the padding trits of the last byte used are not checked.

    Parameters
    ----------
    packed : (B,) uint8, no base-3 byte >= 243 / no 2-bit code 0b11
    encoding : WeightEncoding
    count : number of trits wanted, 0 <= count <= n * B

    Returns
    -------
    trits : (count,) int8 in {-1, 0, 1}
    """
    encoding = _check_encoding(encoding)
    packed = _check_int("packed", packed, np.uint8, 1)
    n = TRITS_PER_BYTE[encoding]
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise ValueError(f"count must be an integer, got {count!r}")
    count = int(count)
    if not 0 <= count <= n * packed.size:
        raise ValueError(f"count = {count} is outside [0, {n * packed.size}] for "
                         f"{packed.size} bytes of {encoding.name}")
    used = packed[:-(-count // n)]
    if encoding == WeightEncoding.BASE3:
        if packed.size and packed.max() >= BASE3_VALID_BYTES:
            j = int(np.argmax(packed >= BASE3_VALID_BYTES))
            raise ValueError(f"packed byte {j} is {int(packed[j])}, not a base-3 byte "
                             f"(valid: 0..{BASE3_VALID_BYTES - 1})")
        out = np.empty((used.size, n), dtype=np.int8)
        for start in range(0, used.size, _CHUNK_BYTES):
            words = _BASE3_WORDS[used[start:start + _CHUNK_BYTES]]
            out[start:start + words.size] = words.view(np.int8).reshape(words.size, -1)[:, :n]
    else:
        bad = _CODE2_BAD_BYTE[packed]
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(f"packed byte {j} is {int(packed[j]):#010b}, which holds the "
                             f"invalid 2-bit code 0b11")
        out = _CODE2_WORDS[used].view(np.int8)
    return out.reshape(-1)[:count]


# -- N:M structured sparse weights ----------------------------------------------------------------

def _check_nm(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) \
            or not NM_MIN_N <= int(n) <= NM_MAX_N:
        raise ValueError(f"n must be an integer in {NM_MIN_N}..{NM_MAX_N}, got {n!r}")
    return int(n)


def nm_group_nonzeros(w_t: np.ndarray) -> np.ndarray:
    """Non-zero weights in every group of NM_M consecutive columns of every row.

    Parameters
    ----------
    w_t : (R, K) int8 in {-1, 0, 1}; K past a multiple of NM_M counts as zero padding

    Returns
    -------
    counts : (R, ceil(K / NM_M)) int8
    """
    w_t = _check_trits("w_t", w_t, 2)
    return np.count_nonzero(_nm_groups(w_t), axis=2).astype(np.int8)


def _nm_groups(w_t: np.ndarray) -> np.ndarray:
    """(R, K) -> (R, G, NM_M), zero columns appended up to a multiple of NM_M."""
    r, k = w_t.shape
    pad = -k % NM_M
    if pad:
        w_t = np.concatenate([w_t, np.zeros((r, pad), w_t.dtype)], axis=1)
    return w_t.reshape(r, -1, NM_M)


def nm_encode(w_t: np.ndarray, n: int) -> np.ndarray:
    """Encode ternary weights as N:M slot codes, canonically (`rtl.isa` NM).

    Row r, group q (columns 8q .. 8q+7): the non-zero positions p_0 < p_1 < ... of the group
    go in slots 0, 1, ... with offset d = p_c - c (0..6) and bit 3 set for -1; unused slots are
    NM_EMPTY. The one exception: a group whose only non-zero weight is at column 7 has it in
    slot 1 with d = 6 and slot 0 empty (d = 7 would be the empty or the invalid code).

    Parameters
    ----------
    w_t : (R, K) int8 in {-1, 0, 1}, at most `n` non-zero weights per row and group; K past a
        multiple of NM_M is padded with zero columns
    n : slots per group, NM_MIN_N .. NM_MAX_N

    Returns
    -------
    codes : (R, ceil(K / NM_M), n) uint8, slot c of row r and group q at [r, q, c]
    """
    w_t = _check_trits("w_t", w_t, 2)
    n = _check_nm(n)
    g = _nm_groups(w_t)
    nz = g != 0
    if g.size and (counts := np.count_nonzero(nz, axis=2)).max() > n:
        r, q = _index(counts, counts > n)
        raise ValueError(f"w_t row {r}, group {q} (columns {NM_M * q}..{NM_M * q + NM_M - 1}) "
                         f"holds {int(counts[r, q])} non-zero weights, more than n = {n}")
    # Positions of the non-zero weights in ascending order, NM_M for none: the first n of
    # each group are slots 0 .. n-1 (a stable sort of "is zero" keeps the column order).
    pos = np.argsort(~nz, axis=2, kind="stable")[:, :, :n].astype(np.int8)
    used = np.take_along_axis(nz, pos, axis=2)
    neg = np.take_along_axis(g, pos, axis=2) < 0
    offset = pos - np.arange(n, dtype=np.int8)
    codes = np.where(used, offset.astype(np.uint8) | (neg.astype(np.uint8) << _NM_SIGN_BIT),
                     np.uint8(NM_EMPTY)).astype(np.uint8)
    # A lone weight at column 7 sits in slot 1 with d = 6; slot 0 stays empty.
    lone7 = used[:, :, 0] & (pos[:, :, 0] == NM_M - 1)
    if lone7.any():
        codes[lone7, 1] = (codes[lone7, 0] & ~np.uint8(_NM_OFFSET_MASK)) | np.uint8(NM_M - 2)
        codes[lone7, 0] = NM_EMPTY
    return codes


def nm_slot_fields(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slot codes (uint8 < 16, any shape) -> (trit, offset d, invalid), each of that shape: the
    lookup of `rtl.isa.nm_slot_table`. Empty and invalid codes have trit 0."""
    return _NM_TRIT[codes], _NM_OFFSET[codes], _NM_INVALID[codes]


def nm_decode(codes: np.ndarray) -> np.ndarray:
    """Decode N:M slot codes as the hardware does (the inverse of `nm_encode`).

    Slot c of group q adds its trit (+1, or -1 with bit 3 set) at column 8q + (c + d) mod 8;
    slots that land on the same column add up, so a non-canonical code array can give values
    outside {-1, 0, 1}. NM_EMPTY adds nothing.

    Parameters
    ----------
    codes : (R, G, N) uint8 slot codes < 16, none equal to NM_INVALID

    Returns
    -------
    w : (R, G * NM_M) int8
    """
    codes = _check_int("codes", codes, np.uint8, 3)
    if codes.size and codes.max() >= 1 << NM_SLOT_BITS:
        at = _index(codes, codes >= 1 << NM_SLOT_BITS)
        raise ValueError(f"codes holds {int(codes[at])} at index {at}, not a "
                         f"{NM_SLOT_BITS}-bit slot code")
    bad = codes == NM_INVALID
    if bad.any():
        at = _index(codes, bad)
        raise ValueError(f"codes holds the invalid slot code {NM_INVALID:#06b} at index {at}")
    r, groups, n = codes.shape
    w = np.zeros((r, groups, NM_M), dtype=np.int8)
    cols = np.arange(NM_M, dtype=np.int8)
    for c in range(n):
        code = codes[:, :, c]
        col = (c + _NM_OFFSET[code]) % NM_M
        w += np.where(col[:, :, None] == cols, _NM_TRIT[code][:, :, None], np.int8(0))
    return w.reshape(r, groups * NM_M)
