"""The comparison lane arrays (rtl/compare.py) compute the same sums, and only int8 multiplies."""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from rtl.compare import KINDS, LaneArray, SerialHarness, mac_acc_bits
from rtl.params import ACT_BITS, ArrayParams

#: A small array: 4-byte port -> 20 rows, 2 token lanes.
PARAMS = ArrayParams(name="cmp", port_bytes=4, token_lanes=2, wbuf_rows=16, abuf_rows=16,
                     acc_groups=1, imem_depth=16, max_k=64)


def _encode_weights(kind: str, w: np.ndarray) -> int:
    bits = 0
    for r, v in enumerate(w.tolist()):
        if kind == "ternary":
            code = (v != 0) | ((v < 0) << 1)
            bits |= code << (2 * r)
        else:
            bits |= (v & 0xFF) << (ACT_BITS * r)
    return bits


def _run(kind: str, w: np.ndarray, x: np.ndarray, firsts: list) -> list:
    """Step the array through columns w[:, k], x[:, k]; return every lane's accumulator after
    each step, as an int array (steps, tokens, rows)."""
    dut = LaneArray(PARAMS, kind)
    out = []

    async def bench(ctx):
        for k in range(w.shape[1]):
            ctx.set(dut.step, 1)
            ctx.set(dut.first, firsts[k])
            ctx.set(dut.w, _encode_weights(kind, w[:, k]))
            ctx.set(dut.x, sum((int(v) & 0xFF) << (8 * j) for j, v in enumerate(x[:, k])))
            await ctx.tick()
            raw = ctx.get(dut.acc)
            vals = []
            for i in range(PARAMS.lanes):
                v = (raw >> (i * dut.acc_bits)) & ((1 << dut.acc_bits) - 1)
                vals.append(v - (1 << dut.acc_bits) if v >> (dut.acc_bits - 1) else v)
            out.append(np.array(vals).reshape(PARAMS.token_lanes, PARAMS.row_lanes))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.stack(out)


@pytest.mark.parametrize("kind", KINDS)
def test_lane_array_sums(kind):
    rng = np.random.default_rng(7)
    steps = 24
    if kind == "ternary":
        w = rng.integers(-1, 2, (PARAMS.row_lanes, steps))
    else:
        w = rng.integers(-128, 128, (PARAMS.row_lanes, steps))
        w[:, :3] = np.array([-128, 127, -1])[None, :]
    x = rng.integers(-128, 128, (PARAMS.token_lanes, steps))
    x[:, 3] = -128
    firsts = [1] + [0] * 11 + [1] + [0] * 11       # two sums of 12 columns
    got = _run(kind, w, x, firsts)
    for end, start in ((11, 0), (23, 12)):
        want = x[:, start:end + 1] @ w[:, start:end + 1].T
        np.testing.assert_array_equal(got[end], want)


def test_mac_accumulator_width():
    # 128 * 128 * max_k must fit, signed: the widest product sum of int8 x int8 lanes.
    bits = mac_acc_bits(PARAMS)
    assert 128 * 128 * PARAMS.max_k < 1 << (bits - 1)
    assert 128 * 128 * PARAMS.max_k >= 1 << (bits - 2)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown lane kind"):
        LaneArray(PARAMS, "int4")


@pytest.mark.parametrize("kind", KINDS)
def test_only_int8_multiplies(kind):
    # The comparison is only fair if the int8 build really has multipliers and the ternary one
    # none: look for $mul cells in the RTLIL of the harness.
    text = rtlil.convert(SerialHarness(PARAMS, kind), name="cmp")
    muls = text.count("cell $mul ")
    if kind == "ternary":
        assert muls == 0
    else:
        assert muls == PARAMS.lanes


def test_harness_output_is_the_parity_of_every_accumulator():
    # The fold keeps every lane in a build: uart_tx is the XOR of all accumulator bits, a fixed
    # number of cycles later (registered stages of 16 inputs, then the pin's register).
    dut = SerialHarness(PARAMS, "ternary")
    n, latency = len(dut.array.acc), 1
    while n > 1:
        n, latency = -(-n // 16), latency + 1
    rng = np.random.default_rng(3)
    parity, tx = [], []

    async def bench(ctx):
        for _ in range(300):
            ctx.set(dut.uart_rx, int(rng.integers(0, 2)))
            parity.append(bin(ctx.get(dut.array.acc)).count("1") & 1)
            tx.append(ctx.get(dut.uart_tx))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(set(parity)) == 2, "the stimulus never changed the accumulators' parity"
    assert tx[latency:] == parity[:-latency]
