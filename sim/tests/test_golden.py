"""Tests of sim.golden: the REFERENCE.md worked example, format vectors, round trips, refusals,
and the N:M slot codes."""

import re

import ml_dtypes
import numpy as np
import pytest

from rtl.isa import (
    NM_EMPTY,
    NM_INVALID,
    NM_M,
    NM_MAX_N,
    NM_MIN_N,
    TRITS_PER_BYTE,
    WeightEncoding,
    nm_slot_table,
)
from sim.golden import (
    absmean_ternarize,
    bitlinear,
    dequantize,
    hf_pack,
    hf_unpack,
    nm_decode,
    nm_encode,
    nm_group_nonzeros,
    pack_trits,
    quantize_activations,
    ternary_matmul,
    unpack_trits,
)

BASE3, CODE2 = WeightEncoding.BASE3, WeightEncoding.CODE2
FLOAT_DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]

# REFERENCE.md section 1, worked example.
W = np.array([[0.2961, -0.0495, -0.0924, -0.4765],
              [0.0413, 0.3397, 0.2812, 0.2403],
              [-0.1808, 0.1304, 0.4322, -0.1771],
              [-0.4809, 0.3244, -0.1741, -0.3853]])
W_T = np.array([[1, 0, 0, -1], [0, 1, 1, 1], [-1, 1, 1, -1], [-1, 1, -1, -1]], dtype=np.int8)
X = np.array([[0.5, -1.27, 0.02, 1.0]])
X_Q = np.array([[50, -127, 2, 100]], dtype=np.int8)
ACC = np.array([[-50, -25, -275, -279]], dtype=np.int32)
Y_4DP = np.array([[-0.1282, -0.0641, -0.7051, -0.7153]])


def random_trits(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)


def check_equal(actual: np.ndarray, expected, dtype, what: str = ""):
    """Exact comparison of values, shape and dtype; `expected` is converted to `dtype` first
    (rounded for floats, refused for integers that do not fit)."""
    expected = np.asarray(expected)
    converted = expected.astype(dtype)
    if np.issubdtype(np.dtype(dtype), np.integer):
        assert np.array_equal(converted, expected), f"{what}: expected value outside {dtype}"
    np.testing.assert_array_equal(actual, converted, err_msg=what, strict=True)


# -- worked example ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_worked_example(dtype):
    w_t, gamma = absmean_ternarize(W.astype(dtype))
    assert isinstance(gamma, np.float32)
    assert gamma == np.float32(0.2563875)
    check_equal(w_t, W_T, np.int8, "W_t")

    x_q, amax = quantize_activations(X.astype(dtype))
    check_equal(x_q, X_Q, np.int8, "x_q")
    check_equal(amax, np.array([1.27], dtype=np.float32), np.float32, "amax")

    acc = ternary_matmul(x_q, w_t)
    check_equal(acc, ACC, np.int32, "acc")

    y = dequantize(acc, gamma, amax)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(np.round(y.astype(np.float64), 4), Y_4DP)
    # The documented order: float32(acc) * ((gamma * amax) / 127).
    scale = (np.float32(0.2563875) * np.float32(1.27)) / np.float32(127)
    check_equal(y, ACC.astype(np.float32) * scale, np.float32, "y")
    check_equal(bitlinear(X.astype(dtype), w_t, gamma), y, np.float32, "bitlinear")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_input_float_dtypes(dtype):
    """Every accepted float type gives the worked example's W_t and x_q (gamma moves a little)."""
    w_t, gamma = absmean_ternarize(W.astype(dtype))
    check_equal(w_t, W_T, np.int8, "W_t")
    assert isinstance(gamma, np.float32) and abs(gamma - np.float32(0.2563875)) < 1e-3
    x_q, amax = quantize_activations(X.astype(dtype))
    check_equal(x_q, X_Q, np.int8, "x_q")
    check_equal(amax, np.abs(X.astype(dtype)[:, 1]).astype(np.float32), np.float32, "amax")


def test_rounding_is_half_to_even():
    # gamma = mean(0.5, 0.5, 1, 2) = 1: 0.5 -> 0, not 1 (half away from zero would give 1).
    w_t, gamma = absmean_ternarize(np.array([[0.5, -0.5, 1.0, 2.0]], dtype=np.float32))
    assert gamma == np.float32(1.0)
    check_equal(w_t, np.array([[0, 0, 1, 1]]), np.int8)
    # amax = 127 gives s = (1 / 127) * 127 = 1 exactly in float32.
    x_q, _ = quantize_activations(np.array([[127, 0.5, 1.5, 2.5, -0.5, -1.5]], np.float32))
    check_equal(x_q, np.array([[127, 0, 2, 2, 0, -2]]), np.int8)


def test_scales_clamped_at_1e_5():
    w_t, gamma = absmean_ternarize(np.zeros((2, 3), dtype=np.float32))
    assert gamma == np.float32(1e-5)
    check_equal(w_t, np.zeros((2, 3)), np.int8)
    x_q, amax = quantize_activations(np.array([[0.0, 0.0], [1e-7, -1e-7]]))
    check_equal(amax, np.full(2, 1e-5), np.float32)
    # 1e-7 * (127 / 1e-5) = 1.27 -> 1
    check_equal(x_q, np.array([[0, 0], [1, -1]]), np.int8)


# -- activation scale: transformers' two roundings ---------------------------------------------

def hf_scale(amax: np.float32) -> np.float32:
    return (np.float32(1) / amax) * np.float32(127)


def exact_scale(amax: np.float32) -> np.float32:
    """127 / amax correctly rounded to float32 (float64 quotient: innocuous double rounding)."""
    return np.float32(np.float64(127) / np.float64(amax))


def find_scale_split(seed: int) -> tuple[np.float32, np.float32]:
    """Search (amax, v) where rint(v * s) differs between the two ways of computing s."""
    rng = np.random.default_rng(seed)
    for _ in range(100_000):
        amax = np.float32(rng.uniform(0.01, 100))
        s_hf, s_cr = hf_scale(amax), exact_scale(amax)
        if s_hf == s_cr:
            continue
        k = int(rng.integers(1, 126))
        near = np.float32((k + 0.5) / np.float64(s_cr))   # v * s close to a .5 boundary
        for steps in range(-4, 5):
            v = near.view(np.int32) + np.int32(steps)
            v = np.int32(v).view(np.float32)
            if v <= amax and np.rint(v * s_hf) != np.rint(v * s_cr):
                return amax, v
    raise AssertionError(f"seed {seed}: no input found where the two scales differ")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4], ids=lambda s: f"seed={s}")
def test_activation_scale_follows_transformers(seed):
    amax, v = find_scale_split(seed)
    x = np.array([[amax, v, -v]], dtype=np.float32)
    x_q, got_amax = quantize_activations(x)
    hf = np.rint(x * hf_scale(amax)).astype(np.int8)
    exact = np.rint(x * exact_scale(amax)).astype(np.int8)
    assert not np.array_equal(hf, exact), f"seed {seed}: the search returned no split"
    check_equal(got_amax, np.array([amax]), np.float32, f"seed {seed}")
    check_equal(x_q, hf, np.int8, f"seed {seed}: amax={amax!r} v={v!r}")


def test_activation_scale_known_case():
    # Found by find_scale_split(0); the values are pinned so this test does not trust the search.
    amax = np.uint32(1115606168).view(np.float32)   # 63.6998
    v = np.uint32(1107388393).view(np.float32)      # 32.351475
    assert hf_scale(amax) != exact_scale(amax)
    x_q, _ = quantize_activations(np.array([[amax, v]], dtype=np.float32))
    check_equal(x_q, np.array([[127, 64]]), np.int8)   # the correctly rounded scale gives 65


def test_two_roundings_differ_in_about_a_quarter_of_tokens():
    amax = np.random.default_rng(7).uniform(1e-3, 100, 20_000).astype(np.float32)
    differ = np.mean([hf_scale(a) != exact_scale(a) for a in amax])
    assert 0.15 < differ < 0.35, differ


# -- integer matmul ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("t,n,k", [(1, 1, 1), (3, 5, 7), (4, 16, 257), (2, 8, 4096)],
                         ids=lambda v: str(v))
def test_ternary_matmul_against_float64(seed, t, n, k):
    rng = np.random.default_rng(seed)
    x_q = rng.integers(-128, 128, size=(t, k)).astype(np.int8)
    x_q[0, :] = -128   # the extremes, against every weight value
    x_q[-1, ::2] = 127
    w_t = random_trits(seed + 1000, (n, k))
    w_t[0, :] = -1
    expected = x_q.astype(np.float64) @ w_t.astype(np.float64).T  # exact: |acc| < 2**53
    check_equal(ternary_matmul(x_q, w_t), expected.astype(np.int32), np.int32, f"seed {seed}")


@pytest.mark.parametrize("xv,wv", [(-128, -1), (-128, 1), (127, 1), (127, -1)])
def test_ternary_matmul_extremes(xv, wv):
    k = 4096
    acc = ternary_matmul(np.full((2, k), xv, np.int8), np.full((3, k), wv, np.int8))
    check_equal(acc, np.full((2, 3), xv * wv * k), np.int32)


def test_ternary_matmul_refuses_int32_overflow():
    k = (1 << 24) + 1   # 128 * k > 2**31 - 1
    with pytest.raises(ValueError, match="does not fit int32"):
        ternary_matmul(np.full((1, k), -128, np.int8), np.full((1, k), -1, np.int8))


# -- Hugging Face packed format ----------------------------------------------------------------

HF_COLUMN = np.array([-1, 0, 1, 1, 0, -1, 1, 0], dtype=np.int8)[:, None]
HF_BYTES = np.array([[152], [73]], dtype=np.uint8)


def test_hf_pack_vector():
    check_equal(hf_pack(HF_COLUMN), HF_BYTES, np.uint8)


def test_hf_unpack_vector():
    check_equal(hf_unpack(HF_BYTES), HF_COLUMN, np.int8)


def test_hf_pack_is_row_blocked():
    # Byte r holds rows r, r+Q, r+2Q, r+3Q: a +1 in row 2Q + 1 is code 2 at bits [5:4] of row 1.
    w_t = np.zeros((8, 2), dtype=np.int8)
    w_t[5, 1] = 1
    check_equal(hf_pack(w_t), np.array([[0x55, 0x55], [0x55, 0x65]]), np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("shape", [(4, 1), (4, 13), (8, 7), (12, 1), (28, 3), (64, 96)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_hf_round_trip(seed, shape):
    w_t = random_trits(seed, shape)
    packed = hf_pack(w_t)
    assert packed.shape == (shape[0] // 4, shape[1]), f"seed {seed}"
    check_equal(hf_unpack(packed), w_t, np.int8, f"seed {seed}")


@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed={s}")
def test_hf_unpack_round_trip_of_every_valid_byte(seed):
    valid = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))],
                     dtype=np.uint8)
    assert valid.size == 81
    packed = np.random.default_rng(seed).permutation(valid).reshape(9, 9)
    check_equal(hf_pack(hf_unpack(packed)), packed, np.uint8, f"seed {seed}")


def test_hf_one_row_matches_code2_stream():
    """With N = 4 a packed byte is the CODE2 byte of its column: the two formats share codes."""
    w_t = random_trits(5, (4, 11))
    check_equal(hf_pack(w_t)[0], np.concatenate([pack_trits(c, CODE2) for c in w_t.T]), np.uint8)


# -- accelerator trit streams ------------------------------------------------------------------

def reference_bytes(trits, encoding) -> list:
    """Per-element Python definition of the encodings (slow, obviously right)."""
    n = TRITS_PER_BYTE[encoding]
    codes = [int(t) + 1 for t in trits]
    codes += [1] * (-len(codes) % n)
    out = []
    for j in range(0, len(codes), n):
        if encoding == BASE3:
            out.append(sum(c * 3 ** i for i, c in enumerate(codes[j:j + n])))
        else:
            out.append(sum(c << (2 * i) for i, c in enumerate(codes[j:j + n])))
    return out


@pytest.mark.parametrize("encoding", [BASE3, CODE2], ids=lambda e: e.name)
def test_pack_trits_vector(encoding):
    trits = np.array([-1, 0, 1, 1, 0, -1, 1], dtype=np.int8)
    expected = {BASE3: [156, 123], CODE2: [164, 97]}[encoding]   # worked by hand
    assert reference_bytes(trits, encoding) == expected
    check_equal(pack_trits(trits, encoding), np.array(expected), np.uint8)
    check_equal(unpack_trits(np.array(expected, np.uint8), encoding, 7), trits, np.int8)


def test_unpack_base3_every_byte():
    got = unpack_trits(np.arange(243, dtype=np.uint8), BASE3, 5 * 243).reshape(243, 5)
    expected = [[(b // 3 ** i) % 3 - 1 for i in range(5)] for b in range(243)]
    check_equal(got, np.array(expected), np.int8)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 7, 13, 20, 1001])
@pytest.mark.parametrize("encoding", [BASE3, CODE2], ids=lambda e: e.name)
def test_trit_stream_round_trip(encoding, size, seed):
    trits = random_trits(seed, size)
    packed = pack_trits(trits, encoding)
    check_equal(packed, np.array(reference_bytes(trits, encoding)), np.uint8, f"seed {seed}")
    check_equal(unpack_trits(packed, encoding, size), trits, np.int8, f"seed {seed}")


@pytest.mark.parametrize("encoding", [BASE3, CODE2], ids=lambda e: e.name)
def test_unpack_trits_count_shorter_than_stream(encoding):
    trits = random_trits(9, 40)
    packed = pack_trits(trits, encoding)
    check_equal(unpack_trits(packed, encoding, 11), trits[:11], np.int8)


@pytest.mark.parametrize("encoding", [BASE3, CODE2], ids=lambda e: e.name)
def test_trit_stream_large(encoding):
    """Big enough to cross the internal chunking (2**20 bytes)."""
    trits = random_trits(11, 5 * (1 << 20) + 17)
    check_equal(unpack_trits(pack_trits(trits, encoding), encoding, trits.size), trits, np.int8)


# -- refusals ----------------------------------------------------------------------------------

def test_ternary_matmul_refusals():
    x_q, w_t = np.zeros((2, 3), np.int8), np.zeros((4, 3), np.int8)
    with pytest.raises(ValueError, match=r"^x_q must be int8, got float32$"):
        ternary_matmul(x_q.astype(np.float32), w_t)
    with pytest.raises(ValueError, match=r"^w_t must be int8, got int16$"):
        ternary_matmul(x_q, w_t.astype(np.int16))
    with pytest.raises(ValueError, match=r"^x_q must be 2-D, got shape \(3,\)$"):
        ternary_matmul(x_q[0], w_t)
    with pytest.raises(ValueError, match="x_q has K = 2 columns but w_t has K = 3"):
        ternary_matmul(x_q[:, :2], w_t)
    bad = w_t.copy()
    bad[1, 2] = 2
    with pytest.raises(ValueError, match=r"^w_t holds values outside \{-1, 0, 1\}: 2 at index "
                                         r"\(1, 2\)$"):
        ternary_matmul(x_q, bad)
    bad[1, 2] = -128
    with pytest.raises(ValueError, match=r"outside \{-1, 0, 1\}: -128"):
        ternary_matmul(x_q, bad)


def test_hf_refusals():
    with pytest.raises(ValueError, match=r"^w_t has N = 6 rows, not a multiple of 4$"):
        hf_pack(np.zeros((6, 2), np.int8))
    with pytest.raises(ValueError, match=r"w_t holds values outside \{-1, 0, 1\}: 3"):
        hf_pack(np.full((4, 2), 3, np.int8))
    with pytest.raises(ValueError, match=r"^packed must be uint8, got int8$"):
        hf_unpack(np.zeros((1, 2), np.int8))
    packed = np.full((3, 4), 0x55, np.uint8)
    packed[1, 2] = 0b01110101   # code 0b11 in bits [5:4]
    packed[2, 0] = 0xFF
    with pytest.raises(ValueError, match="invalid code 0b11 at row 1, column 2"):
        hf_unpack(packed)


@pytest.mark.parametrize("byte", [243, 255])
def test_unpack_base3_refuses_invalid_byte(byte):
    packed = np.array([0, 121, 242, byte, 7], np.uint8)
    with pytest.raises(ValueError, match=f"^packed byte 3 is {byte}, not a base-3 byte"):
        unpack_trits(packed, BASE3, 5)   # a bad byte past `count` is refused too


@pytest.mark.parametrize("byte", [0b00000011, 0b00001100, 0b00110000, 0b11000000, 0xFF])
def test_unpack_code2_refuses_code_11(byte):
    packed = np.array([0x55, byte, 0x55], np.uint8)
    with pytest.raises(ValueError, match=r"^packed byte 1 is .* invalid 2-bit code 0b11$"):
        unpack_trits(packed, CODE2, 12)


def test_trit_stream_refusals():
    with pytest.raises(ValueError, match=r"^trits holds values outside \{-1, 0, 1\}: 5 at index "
                                         r"\(2,\)$"):
        pack_trits(np.array([0, 1, 5], np.int8), BASE3)
    with pytest.raises(ValueError, match=r"^trits must be int8, got int64$"):
        pack_trits(np.array([0, 1, -1]), CODE2)
    with pytest.raises(ValueError, match=r"^trits must be 1-D"):
        pack_trits(np.zeros((2, 2), np.int8), CODE2)
    with pytest.raises(ValueError, match=r"^encoding must be a dense WeightEncoding"):
        pack_trits(np.zeros(3, np.int8), 3)
    with pytest.raises(ValueError, match=r"^encoding must be a dense WeightEncoding"):
        unpack_trits(np.zeros(3, np.uint8), WeightEncoding.NM, 3)
    with pytest.raises(ValueError, match=r"^count = 11 is outside \[0, 10\]"):
        unpack_trits(np.zeros(2, np.uint8), BASE3, 11)
    with pytest.raises(ValueError, match=r"^count must be an integer"):
        unpack_trits(np.zeros(2, np.uint8), BASE3, 2.0)


@pytest.mark.parametrize("bad,what", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "-Inf"),
                                      (-1e39, "-1e+39, which overflows float32")])
def test_float_refusals_name_the_problem(bad, what):
    w = W.copy()
    w[2, 1] = bad
    with pytest.raises(ValueError, match=rf"^w holds {re.escape(what)} at index \(2, 1\)$"):
        absmean_ternarize(w)
    x = X.copy()
    x[0, 3] = bad
    with pytest.raises(ValueError, match=rf"^x holds {re.escape(what)} at index \(0, 3\)$"):
        quantize_activations(x)


def test_nan_in_bfloat16_weights():
    w = W.astype(ml_dtypes.bfloat16)
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^w holds NaN at index \(0, 0\)$"):
        absmean_ternarize(w)


def test_quantizer_refusals():
    with pytest.raises(ValueError, match=r"^w must be a float array .*, got int8$"):
        absmean_ternarize(W_T)
    with pytest.raises(ValueError, match=r"^x must be a float array .*, got int64$"):
        quantize_activations(np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"^x must be 2-D, got shape \(4,\)$"):
        quantize_activations(X[0])
    with pytest.raises(ValueError, match=r"^w must be 2-D, got shape \(1, 4, 4\)$"):
        absmean_ternarize(W[None])
    with pytest.raises(ValueError, match=r"^x is empty"):
        quantize_activations(np.zeros((1, 0)))


def test_dequantize_refusals():
    acc, amax = ACC, np.array([1.27], np.float32)
    with pytest.raises(ValueError, match=r"^acc must be int32, got int64$"):
        dequantize(acc.astype(np.int64), 0.25, amax)
    with pytest.raises(ValueError, match=r"^gamma must be finite and > 0"):
        dequantize(acc, 0.0, amax)
    with pytest.raises(ValueError, match=r"^gamma must be finite and > 0"):
        dequantize(acc, np.nan, amax)
    with pytest.raises(ValueError, match=r"^gamma must be a scalar"):
        dequantize(acc, np.ones(2, np.float32), amax)
    with pytest.raises(ValueError, match=r"^amax must be float32, got float64$"):
        dequantize(acc, 0.25, amax.astype(np.float64))
    with pytest.raises(ValueError, match=r"^amax must have shape \(1,\)"):
        dequantize(acc, 0.25, np.ones(2, np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
def test_dequantize_order_of_operations(seed):
    """float32(acc) * ((gamma * amax) / 127), not any other association of the same product."""
    rng = np.random.default_rng(seed)
    t, n = 64, 32
    acc = rng.integers(-100_000, 100_000, size=(t, n)).astype(np.int32)
    gamma = np.float32(rng.uniform(0.01, 1.0))
    amax = rng.uniform(0.1, 50.0, size=t).astype(np.float32)
    y = dequantize(acc, gamma, amax)
    a, g, a_col, q = acc.astype(np.float32), gamma, amax[:, None], np.float32(127)
    documented = a * ((g * a_col) / q)
    others = [a * (g * (a_col / q)), ((a * g) * a_col) / q, a * ((g / q) * a_col)]
    for other in others:   # so that this test would notice a change of order
        assert not np.array_equal(other, documented), f"seed {seed}: orders agree everywhere"
    check_equal(y, documented, np.float32, f"seed {seed}")


def test_dequantize_accepts_checkpoint_weight_scale():
    """A bf16 `weight_scale` of shape [1] is widened exactly to float32."""
    scale = np.array([0.2563875], dtype=ml_dtypes.bfloat16)
    y = dequantize(ACC, scale, np.array([1.27], np.float32))
    g = np.float32(scale[0])
    check_equal(y, ACC.astype(np.float32) * ((g * np.float32(1.27)) / np.float32(127)),
                np.float32)


# -- N:M slot codes ------------------------------------------------------------------------------

def random_nm(seed: int, rows: int, k: int, n: int) -> np.ndarray:
    """Ternary (rows, k) weights with 0..n non-zero weights in every group of 8 columns, and
    some groups whose one weight sits at column 7."""
    rng = np.random.default_rng(seed)
    groups = -(-k // NM_M)
    w = rng.choice(np.array([-1, 1], np.int8), (rows, groups, NM_M))
    keep = rng.integers(0, n + 1, (rows, groups, 1))
    rank = np.argsort(rng.random((rows, groups, NM_M)), axis=2).argsort(axis=2)
    w = np.where(rank < keep, w, 0).astype(np.int8)
    lone = rng.random((rows, groups)) < 0.1
    w[lone] = 0
    w[lone, NM_M - 1] = rng.choice(np.array([-1, 1], np.int8), int(lone.sum()))
    return np.ascontiguousarray(w.reshape(rows, -1)[:, :k])


def reference_nm_codes(w: np.ndarray, n: int) -> np.ndarray:
    """The canonical encoding, one group at a time, straight from rtl.isa's description."""
    rows, k = w.shape
    groups = -(-k // NM_M)
    out = np.full((rows, groups, n), NM_EMPTY, np.uint8)
    for r in range(rows):
        for q in range(groups):
            cols = [j for j in range(NM_M) if NM_M * q + j < k and w[r, NM_M * q + j]]
            slots = [1] if cols == [NM_M - 1] else range(len(cols))
            for c, p in zip(slots, cols):
                out[r, q, c] = (p - c) | (8 if w[r, NM_M * q + p] < 0 else 0)
    return out


def reference_nm_weights(codes: np.ndarray) -> np.ndarray:
    """What the hardware adds: slot c's trit at column 8q + (c + d) mod 8, via nm_slot_table."""
    table = nm_slot_table()
    rows, groups, n = codes.shape
    w = np.zeros((rows, groups * NM_M), np.int64)
    for r, q, c in np.ndindex(codes.shape):
        trit, d = table[codes[r, q, c]]
        w[r, NM_M * q + (c + d) % NM_M] += trit
    return w


@pytest.mark.parametrize("group, n, codes", [
    ([0, 1, 0, 0, -1, 0, 0, 0], 2, [0b0001, 0b1011]),      # d = p_c - c, bit 3 negative
    ([0, 0, 0, 0, 0, 0, 0, 0], 3, [NM_EMPTY] * 3),          # unused slots are empty
    ([0, 0, 0, 0, 0, 0, 0, 1], 2, [NM_EMPTY, 0b0110]),      # lone weight at column 7: slot 1
    ([0, 0, 0, 0, 0, 0, 0, -1], 4, [NM_EMPTY, 0b1110, NM_EMPTY, NM_EMPTY]),
    ([-1, 0, 0, 0, 0, 0, 0, 0], 2, [0b1000, NM_EMPTY]),
    ([0, 0, 0, 0, 0, 0, 1, 1], 2, [0b0110, 0b0110]),        # two at the top: d = 6 twice
    ([0, 1, 1, 1, 1, 1, 1, -1], 7, [1, 1, 1, 1, 1, 1, 0b1001]),
    ([1, -1, 1, -1, 1, -1, 1, 0], 7, [0, 8, 0, 8, 0, 8, 0]),
])
def test_nm_encode_canonical_vectors(group, n, codes):
    w = np.array([group], np.int8)
    check_equal(nm_encode(w, n), np.array(codes).reshape(1, 1, n), np.uint8, f"{group} n={n}")
    check_equal(nm_decode(nm_encode(w, n)), w, np.int8)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("n", range(NM_MIN_N, NM_MAX_N + 1))
@pytest.mark.parametrize("k", [8, 21, 64])
def test_nm_encode_matches_reference_and_round_trips(seed, n, k):
    w = random_nm(seed, 37, k, n)
    codes = nm_encode(w, n)
    check_equal(codes, reference_nm_codes(w, n), np.uint8, f"seed {seed}")
    padded = np.zeros((37, codes.shape[1] * NM_M), np.int8)
    padded[:, :k] = w
    check_equal(nm_decode(codes), padded, np.int8, f"seed {seed}")
    check_equal(nm_group_nonzeros(w), np.count_nonzero(padded.reshape(37, -1, NM_M), axis=2),
                np.int8, f"seed {seed}")


@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed={s}")
def test_nm_decode_follows_the_hardware_rule_for_any_codes(seed):
    """Non-canonical codes too: offsets wrap mod 8 and slots on one column add up."""
    codes = np.random.default_rng(seed).integers(0, 16, (20, 3, 5)).astype(np.uint8)
    codes[codes == NM_INVALID] = NM_EMPTY
    want = reference_nm_weights(codes)
    assert np.abs(want).max() > 1, "the sample must hold a duplicate column"
    check_equal(nm_decode(codes), want, np.int8, f"seed {seed}")
    # Slot 3 with d = 5 lands on column 0; slots 0 (d = 1) and 1 (d = 0) both on column 1.
    check_equal(nm_decode(np.array([[[0b0001, 0b0000, NM_EMPTY, 0b1101]]], np.uint8)),
                np.array([[-1, 2, 0, 0, 0, 0, 0, 0]]), np.int8)


def test_nm_large_projection_round_trip():
    w = random_nm(4, 6912, 2560, 4)
    check_equal(nm_decode(nm_encode(w, 4)), w, np.int8)


def test_nm_refusals():
    w = np.zeros((3, 16), np.int8)
    w[2, 8:13] = 1
    with pytest.raises(ValueError, match=r"^w_t row 2, group 1 \(columns 8\.\.15\) holds 5 "
                                         r"non-zero weights, more than n = 4$"):
        nm_encode(w, 4)
    nm_encode(w, 5)
    for n in (NM_MIN_N - 1, NM_MAX_N + 1, 4.0, True):
        with pytest.raises(ValueError, match=r"^n must be an integer in 2\.\.7"):
            nm_encode(w, n)
    with pytest.raises(ValueError, match=r"^w_t holds values outside"):
        nm_encode(np.full((1, 8), 2, np.int8), 2)
    codes = np.full((2, 2, 3), NM_EMPTY, np.uint8)
    codes[1, 0, 2] = NM_INVALID
    with pytest.raises(ValueError, match=r"^codes holds the invalid slot code 0b1111 at index "
                                         r"\(1, 0, 2\)$"):
        nm_decode(codes)
    codes[1, 0, 2] = 16
    with pytest.raises(ValueError, match=r"^codes holds 16 at index \(1, 0, 2\), not a 4-bit"):
        nm_decode(codes)
    with pytest.raises(ValueError, match=r"^codes must be uint8, got int8$"):
        nm_decode(codes.astype(np.int8))
    with pytest.raises(ValueError, match=r"^codes must be 3-D"):
        nm_decode(codes[0])
