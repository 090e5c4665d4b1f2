"""TernaryLane and WeightDecoder under Amaranth's simulator, against plain-Python models.

The models and the stimulus generators here are also what the cocotb + Verilator tests
(`testbench/test_lane.py`, `testbench/test_decoder.py`) check against, on longer runs.
"""

import dataclasses
import random
import time

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.decoder import WeightDecoder
from rtl.hostlink import HostLink
from rtl.isa import (
    BASE3_VALID_BYTES,
    CODE2_INVALID,
    NM_INVALID,
    NM_SLOTS_PER_BYTE,
    TRITS_PER_BYTE,
    WeightEncoding,
    nm_slot_table,
)
from rtl.lane import TernaryLane
from rtl.params import ACT_BITS, CHIPS, SCALE_POINTS, ArrayParams, sim_chip
from rtl.protocol import SYNC
from sim.golden import pack_trits, unpack_trits

#: Accumulator width of every scale point (it depends only on max_k).
ACC_BITS = SCALE_POINTS["tiny"].acc_bits
#: A small decoder: 4-byte port, 20 lanes.
DECODER_PARAMS = ArrayParams(name="t", port_bytes=4, token_lanes=2, wbuf_rows=64, abuf_rows=64,
                             acc_groups=8, imem_depth=64)
#: One with every encoding, N:M slots included (which need a port of 8 x token_lanes bytes).
NM_DECODER_PARAMS = ArrayParams(name="nm", port_bytes=16, token_lanes=2, wbuf_rows=64,
                                abuf_rows=64, acc_groups=8, imem_depth=64,
                                encodings=tuple(WeightEncoding))
X_MIN, X_MAX = -(1 << (ACT_BITS - 1)), (1 << (ACT_BITS - 1)) - 1
#: Activations worth hitting often: both ends of int8 and the neighbours of zero.
X_CORNERS = (X_MIN, X_MAX, X_MIN + 1, -1, 0, 1)


# -- TernaryLane model ---------------------------------------------------------------------------

#: The lane's inputs in the order of a step's fields (shared with testbench/lane_cocotb.py).
LANE_PORTS = ("step", "first", "init", "nz", "neg", "x", "clear")

def wrap(value: int, bits: int) -> int:
    """Two's complement wrap to a signed `bits`-bit value."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def lane_model(steps, acc_bits: int, acc: int = 0):
    """Expected (acc, total) of a TernaryLane over `steps` of `LANE_PORTS` values.

    acc[i] is the accumulator while step i is applied (acc has one extra entry, after the last
    step); total[i] = (init if first else acc) + w * x with w = 0 if not nz else -1 if neg else 1.
    The accumulator takes 0 when clear, else total when step and (first or nz); a zero weight is
    a skip.
    """
    accs, totals = [acc], []
    for step, first, init, nz, neg, x, clear in steps:
        w = 0 if not nz else -1 if neg else 1
        total = wrap((init if first else acc) + w * x, acc_bits)
        totals.append(total)
        if clear:
            acc = 0
        elif step and (first or nz):
            acc = total
        accs.append(acc)
    return accs, totals


def held_lane_model(steps, acc_bits: int) -> list:
    """Expected acc of a held TernaryLane (`first`, `init` ignored): 0 on clear, else + w * x."""
    acc, accs = 0, [0]
    for step, _first, _init, nz, neg, x, clear in steps:
        if clear:
            acc = 0
        elif step and nz:
            acc = wrap(acc - x if neg else acc + x, acc_bits)
        accs.append(acc)
    return accs


def random_lane_steps(seed: int, n: int, acc_bits: int) -> list:
    """`n` random steps; x is often an int8 extreme, init sometimes an accumulator extreme."""
    rng = random.Random(seed)
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    init_corners = (0, -1, 1, lo, hi, lo + 127, hi - 127)
    steps = []
    for _ in range(n):
        x = rng.choice(X_CORNERS) if rng.random() < 0.4 else rng.randint(X_MIN, X_MAX)
        r = rng.random()
        init = (rng.choice(init_corners) if r < 0.3 else rng.randint(lo, hi) if r < 0.6
                else rng.randint(-4096, 4096))
        steps.append([int(rng.random() < 0.85), int(rng.random() < 0.1), init,
                      int(rng.random() < 0.6), rng.getrandbits(1), x, int(rng.random() < 0.05)])
    return steps


def corner_lane_steps(acc_bits: int) -> list:
    """Every (step, first, nz, neg, clear) with x in the int8 corners, from a few accumulators.

    Each corner step is preceded by a `first` step that loads a known accumulator, so that
    skips and holds are visible against a nonzero value and wrapping at both ends is hit.
    """
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    steps = []
    for start in (0, -1, 1000, lo, hi):
        for x in X_CORNERS:
            for step in (0, 1):
                for first in (0, 1):
                    for nz in (0, 1):
                        for neg, clear in ((0, 0), (1, 0), (0, 1), (1, 1)):
                            init = ~start if first else 12345   # ~start is in range
                            steps.append([1, 1, start, 0, 1, X_MIN, 0])
                            steps.append([step, first, init, nz, neg, x, clear])
    return steps


#: Directed lane cases: (steps, expected acc while each step applies plus after the last).
LANE_CASES = {
    # nz = 0 leaves the accumulator alone whatever neg and x say.
    "skip_zero_weight": ([[1, 1, 100, 1, 0, 5, 0], [1, 0, 0, 0, 0, X_MIN, 0],
                          [1, 0, 0, 0, 1, X_MIN, 0], [1, 0, 0, 0, 0, X_MAX, 0],
                          [1, 0, 0, 0, 1, X_MAX, 0]],
                         [0, 105, 105, 105, 105, 105]),
    "add_sub": ([[1, 1, 0, 1, 0, X_MAX, 0], [1, 0, 0, 1, 1, X_MIN, 0],
                 [1, 0, 0, 1, 0, X_MIN, 0], [1, 0, 0, 1, 1, X_MAX, 0]],
                [0, 127, 255, 127, 0]),
    # first with a zero weight still loads init; step = 0 holds even with first set.
    "first_and_hold": ([[1, 1, -7, 0, 1, 9, 0], [0, 1, 50, 1, 0, 9, 0], [0, 0, 0, 1, 1, 3, 0],
                        [1, 1, 50, 1, 1, X_MIN, 0]],
                       [0, -7, -7, -7, 178]),
    # clear wins over a step with first or a nonzero weight, and a held accumulator restarts
    # from 0 on the next step.
    "clear": ([[1, 1, 40, 1, 0, 2, 0], [1, 0, 0, 1, 0, 5, 1], [1, 0, 0, 1, 1, 3, 0],
               [1, 1, 9, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, X_MAX, 0]],
              [0, 42, 0, -3, 0, 0, 127]),
}


# -- WeightDecoder model -------------------------------------------------------------------------

def trit_field(trits, lane_bits: int = 2, offsets=None) -> int:
    """Lane l's control at bits [b*l + b-1 : b*l] (b = `lane_bits`): bit 0 nonzero, bit 1
    negative, bits 2..4 the N:M slot offset (b = 5 only)."""
    field = 0
    for lane, t in enumerate(trits):
        d = int(offsets[lane]) if offsets is not None else 0
        field |= (int(t != 0) | int(t < 0) << 1 | d << 2) << (lane_bits * lane)
    return field


def _nm_codes(word: int, params: ArrayParams) -> list:
    return [(word >> 4 * lane) & 0xF for lane in range(NM_SLOTS_PER_BYTE * params.port_bytes)]


def decoder_model(params: ArrayParams, encoding: int, word: int):
    """Expected (trits, invalid) of a WeightDecoder; trits is None where it is unspecified."""
    if encoding not in {int(e) for e in params.encodings}:
        return None, 1
    enc = WeightEncoding(encoding)
    lb = params.wbuf_lane_bits
    if enc == WeightEncoding.NM:
        slots = [nm_slot_table()[c] for c in _nm_codes(word, params)]
        if None in slots:
            return None, 1
        return trit_field([t for t, _ in slots], lb, [d for _, d in slots]), 0
    raw = np.frombuffer(word.to_bytes(params.port_bytes, "little"), dtype=np.uint8)
    try:
        trits = unpack_trits(raw, enc, TRITS_PER_BYTE[enc] * params.port_bytes)
    except ValueError:
        return None, 1
    return trit_field(trits, lb), 0   # lanes past the encoding's reach (2-bit mode) read 0


def _word(byte_values) -> int:
    return int.from_bytes(bytes(byte_values), "little")


def _random_valid_bytes(rng: random.Random, params: ArrayParams, enc: WeightEncoding) -> list:
    if enc == WeightEncoding.NM:
        codes = [rng.choice([c for c in range(16) if c != NM_INVALID])
                 for _ in range(NM_SLOTS_PER_BYTE * params.port_bytes)]
        return [lo | hi << 4 for lo, hi in zip(codes[0::2], codes[1::2])]
    n = TRITS_PER_BYTE[enc] * params.port_bytes
    trits = np.array([rng.choice((-1, 0, 1)) for _ in range(n)], dtype=np.int8)
    return list(pack_trits(trits, enc))


def decoder_vectors(seed: int, params: ArrayParams, n_random: int = 50,
                    positions=None) -> list:
    """Labelled (label, encoding, word, expect_invalid) vectors.

    Random valid words in both encodings (packed with `sim.golden.pack_trits`); all 243 valid
    base-3 byte values, and each invalid one, at the byte positions `positions` (default all)
    of an otherwise valid word; every 2-bit byte value at those positions (0b11 anywhere makes
    it invalid); several invalid bytes at once; and the encodings outside `WeightEncoding`.
    """
    rng = random.Random(seed)
    nbytes = params.port_bytes
    positions = range(nbytes) if positions is None else positions
    base3, code2, nm = WeightEncoding.BASE3, WeightEncoding.CODE2, WeightEncoding.NM
    out = []
    for enc in (base3, code2) + ((nm,) if params.nm else ()):
        for i in range(n_random):
            out.append((f"random {enc.name} #{i}", enc, _word(_random_valid_bytes(rng, params,
                                                                                 enc)), 0))
    for j in positions:
        for value in range(256):
            b = _random_valid_bytes(rng, params, base3)
            b[j] = value
            out.append((f"BASE3 byte {j} = {value}", base3, _word(b),
                        int(value >= BASE3_VALID_BYTES)))
        for value in range(256):
            b = _random_valid_bytes(rng, params, code2)
            b[j] = value
            bad = any((value >> (2 * i)) & 3 == CODE2_INVALID for i in range(4))
            out.append((f"CODE2 byte {j} = {value:#010b}", code2, _word(b), int(bad)))
        for value in range(256) if params.nm else ():
            b = _random_valid_bytes(rng, params, nm)
            b[j] = value
            bad = NM_INVALID in (value & 0xF, value >> 4)
            out.append((f"NM byte {j} = {value:#04x}", nm, _word(b), int(bad)))
    for i in range(10):
        b = _random_valid_bytes(rng, params, base3)
        for j in rng.sample(range(nbytes), rng.randint(2, nbytes)):
            b[j] = rng.randrange(BASE3_VALID_BYTES, 256)
        out.append((f"BASE3 several invalid bytes #{i}", base3, _word(b), 1))
        b = _random_valid_bytes(rng, params, code2)
        for lane in rng.sample(range(4 * nbytes), rng.randint(2, 4 * nbytes)):
            b[lane // 4] |= CODE2_INVALID << (2 * (lane % 4))
        out.append((f"CODE2 several 0b11 codes #{i}", code2, _word(b), 1))
    reserved = sorted(set(range(1 << WeightEncoding.as_shape().width)) - {int(e) for e in
                                                                        WeightEncoding})
    for enc in reserved:
        for i in range(5):
            word = (_word(_random_valid_bytes(rng, params, rng.choice((base3, code2))))
                    if i else 0)
            out.append((f"encoding {enc} #{i}", enc, word, 1))
    return out


def check_decoder_outputs(params: ArrayParams, vectors, got, seed) -> None:
    """Compare (trits, invalid) per vector with the model; name the seed and the lanes."""
    assert len(got) == len(vectors), f"seed={seed}: {len(got)} results for {len(vectors)} vectors"
    for (label, enc, word, expect_invalid), (trits, invalid) in zip(vectors, got):
        want_trits, want_invalid = decoder_model(params, int(enc), word)
        assert want_invalid == expect_invalid, f"seed={seed} {label}: vector generator is wrong"
        where = f"seed={seed} {label} (encoding={int(enc)}, word={word:#x})"
        assert invalid == want_invalid, f"{where}: invalid={invalid}, expected {want_invalid}"
        if want_trits is not None and trits != want_trits:
            lb = params.wbuf_lane_bits
            mask = (1 << lb) - 1
            lanes = [f"lane {lane}: {trits >> lb * lane & mask:0{lb}b} != "
                     f"{want_trits >> lb * lane & mask:0{lb}b}"
                     for lane in range(params.row_lanes)
                     if (trits ^ want_trits) >> lb * lane & mask]
            raise AssertionError(f"{where}: lane controls differ (got != expected, bit 0 nz, "
                                 "bit 1 neg, bits 2..4 offset): " + "; ".join(lanes))


# -- Amaranth simulation -------------------------------------------------------------------------

def check_lane_trace(steps, accs, totals, want_accs, want_totals, label) -> None:
    """Compare a recorded lane trace with the expectation; report the first differing cycle."""
    assert len(accs) == len(want_accs), f"{label}: {len(accs)} samples, expected {len(want_accs)}"
    for i, (got, want) in enumerate(zip(accs, want_accs)):
        if got != want:
            prev = steps[i - 1] if i else None
            raise AssertionError(f"{label}: cycle {i}: acc={got}, expected {want} (after step "
                                 f"{LANE_PORTS}={prev}; "
                                 f"before it acc={accs[i - 1] if i else 'reset'})")
    for i, (got, want) in enumerate(zip(totals, want_totals)):
        if got != want:
            raise AssertionError(f"{label}: cycle {i}: total={got}, expected {want} with "
                                 f"{LANE_PORTS}={steps[i]}, acc={accs[i]}")


def simulate_lane(acc_bits: int, steps, held: bool = False):
    """Run `steps` through TernaryLane in Amaranth's simulator; return (accs, totals).

    A `held` lane has no `first`, `init` or `total`: those fields are not driven, and totals
    come back empty.
    """
    dut = TernaryLane(acc_bits, held=held)
    accs, totals = [], []

    async def testbench(ctx):
        for fields in steps:
            for name, value in zip(LANE_PORTS, fields):
                if not (held and name in ("first", "init")):
                    ctx.set(getattr(dut, name), value)
            accs.append(ctx.get(dut.acc))
            if not held:
                totals.append(ctx.get(dut.total))
            await ctx.tick()
        ctx.set(dut.step, 0)
        accs.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return accs, totals


def simulate_decoder(params: ArrayParams, vectors):
    """Apply each (label, encoding, word, _) to WeightDecoder; return [(trits, invalid)].

    A registered decoder (`params.registered_decode`) sees each word as `next_word` one cycle
    before it is `word`, as the LOAD unit drives it; its outputs are read in that second cycle.
    With `params.registered_weight_write` its row is read a cycle later still, while another
    word and encoding are applied.
    """
    dut = WeightDecoder(params)
    got = []
    mask = (1 << params.port_bits) - 1
    clocked = params.registered_decode or params.registered_weight_write

    async def testbench(ctx):
        for _, enc, word, _ in vectors:
            if params.registered_decode:
                ctx.set(dut.next_word, word)
                # Something else is on the port in the cycle the word is decoded.
                await ctx.tick()
                ctx.set(dut.next_word, ~word & mask)
            ctx.set(dut.encoding, enc)
            ctx.set(dut.word, word)
            invalid = ctx.get(dut.invalid)
            if params.registered_weight_write:
                await ctx.tick()
                ctx.set(dut.encoding, ~enc & ((1 << len(dut.encoding)) - 1))
                ctx.set(dut.word, ~word & mask)
            got.append((ctx.get(dut.trits), invalid))

    sim = Simulator(dut)
    if clocked:
        sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return got


@pytest.mark.parametrize("case", sorted(LANE_CASES))
def test_lane_directed(case):
    steps, want = LANE_CASES[case]
    accs, totals = simulate_lane(ACC_BITS, steps)
    want_accs, want_totals = lane_model(steps, ACC_BITS)
    assert want_accs == want, f"{case}: the model disagrees with the written expectation"
    check_lane_trace(steps, accs, totals, want, want_totals, case)


@pytest.mark.parametrize("acc_bits", [ACC_BITS, ACT_BITS + 2])
def test_lane_corners(acc_bits):
    t = time.monotonic()
    steps = corner_lane_steps(acc_bits)
    check_lane_trace(steps, *simulate_lane(acc_bits, steps), *lane_model(steps, acc_bits),
                     f"corners acc_bits={acc_bits}")
    print(f"lane corners, acc_bits={acc_bits}: {len(steps)} cycles in "
          f"{time.monotonic() - t:.2f} s")


@pytest.mark.parametrize("acc_bits", [ACC_BITS, ACT_BITS + 2])
def test_held_lane(acc_bits):
    """The held lane (one accumulator group in the lanes): random steps and every corner."""
    steps = random_lane_steps(3, 1000, acc_bits) + corner_lane_steps(acc_bits)
    accs, _ = simulate_lane(acc_bits, steps, held=True)
    want = held_lane_model(steps, acc_bits)
    bad = next((i for i, (g, w) in enumerate(zip(accs, want)) if g != w), None)
    assert len(accs) == len(want) and bad is None, \
        f"acc_bits={acc_bits}: cycle {bad}: acc={accs[bad]}, expected {want[bad]} after " \
        f"{LANE_PORTS}={steps[bad - 1] if bad else None}"


@pytest.mark.parametrize("seed", [1, 2])
def test_lane_random(seed):
    t = time.monotonic()
    steps = random_lane_steps(seed, 1000, ACC_BITS)
    check_lane_trace(steps, *simulate_lane(ACC_BITS, steps), *lane_model(steps, ACC_BITS),
                     f"seed={seed}")
    print(f"lane seed={seed}: {len(steps)} cycles in {time.monotonic() - t:.2f} s")


@pytest.mark.parametrize("seed", [1])
def test_decoder_vectors(seed):
    t = time.monotonic()
    vectors = decoder_vectors(seed, DECODER_PARAMS, n_random=20, positions=[seed % 4])
    check_decoder_outputs(DECODER_PARAMS, vectors, simulate_decoder(DECODER_PARAMS, vectors),
                          seed)
    print(f"decoder seed={seed}: {len(vectors)} vectors in {time.monotonic() - t:.2f} s")


def test_nm_decoder():
    """N:M slot codes (2 per byte, on lanes 0 .. 2P-1), beside the dense encodings, with the
    offset bits in the wider lane controls."""
    params = NM_DECODER_PARAMS
    vectors = decoder_vectors(7, params, n_random=20, positions=[0, 11])
    check_decoder_outputs(params, vectors, simulate_decoder(params, vectors), 7)


def test_registered_decoder():
    """The tiny scale point's decoder, whose base-3 tables are block RAM read a cycle ahead."""
    params = SCALE_POINTS["tiny"]
    assert params.registered_decode
    vectors = decoder_vectors(5, params, n_random=20)
    check_decoder_outputs(params, vectors, simulate_decoder(params, vectors), 5)


@pytest.mark.parametrize("params", [
    dataclasses.replace(SCALE_POINTS["tiny"], registered_weight_write=True),
    dataclasses.replace(NM_DECODER_PARAMS, registered_weight_write=True)],
    ids=["tiny", "nm"])
def test_late_decoder(params):
    """A decoder whose row comes a cycle after its word (`registered_weight_write`, as on the
    ECP5): each encoding's decoding registered, the choice after the registers; its row is
    read while another word and encoding are applied, its invalid flag with the word."""
    vectors = decoder_vectors(11, params, n_random=20, positions=[0, params.port_bytes - 1])
    check_decoder_outputs(params, vectors, simulate_decoder(params, vectors), 11)


@pytest.mark.parametrize("only", list(WeightEncoding), ids=lambda e: e.name)
def test_decoder_one_encoding_enabled(only):
    # With one encoding built in, the other is refused like a reserved value.
    params = ArrayParams(name="one", port_bytes=16 if only == WeightEncoding.NM else 4,
                         token_lanes=2, wbuf_rows=64, abuf_rows=64, acc_groups=8, imem_depth=64,
                         encodings=(only,))
    vectors = [(label, enc, word, int(expect or enc != only))
               for label, enc, word, expect in decoder_vectors(3, params, n_random=10,
                                                               positions=[])]
    check_decoder_outputs(params, vectors, simulate_decoder(params, vectors), 3)


# -- Dispatcher: program memory that was never written -------------------------------------------

def test_unwritten_program_memory_is_an_illegal_opcode():
    """Each program word carries its predecoded checks (`rtl.predecode`); a word never written
    must still read as opcode 0, an illegal opcode, at its own address."""
    from rtl.isa import ErrorCode, Halt, Load
    from rtl.sequencer import Dispatcher

    dut = Dispatcher(DECODER_PARAMS)
    seen = []

    async def testbench(ctx):
        # One LOAD at address 0 and nothing else: the dispatcher then reads address 1.
        ctx.set(dut.imem_we, 1)
        ctx.set(dut.imem_addr, 0)
        ctx.set(dut.imem_data, Load(rows=1, length=1).encode())
        await ctx.tick()
        ctx.set(dut.imem_we, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.run, 1)
        for _ in range(4):
            seen.append((ctx.get(dut.pc), ErrorCode(ctx.get(dut.error)), ctx.get(dut.dispatch)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen[0] == (0, ErrorCode.NONE, 1)          # the LOAD goes to the LOAD unit
    assert seen[1][:2] == (1, ErrorCode.ILLEGAL_OPCODE)
    assert Halt().encode() != 0


@pytest.mark.parametrize("point", list(SCALE_POINTS))
def test_matmul_first_group_refusal_is_the_span_bound(point):
    """`ComputeUnit.last_start` (one carry chain, the rounding up as its borrow) is abuf_rows
    less ceil(k_len * token_lanes / port_bytes), and a first group is refused exactly when it
    would read past the activation buffer, on every small k_len and on random and extreme ones."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import data

    from rtl.compute import ComputeUnit
    from rtl.isa import INSTR_BITS, Opcode, instr_layout

    p = SCALE_POINTS[point]
    m = Module()
    instr = Signal(INSTR_BITS)
    head = data.View(instr_layout(Opcode.MATMUL), instr)
    last_start = ComputeUnit.last_start(m, p, head)
    refused = ComputeUnit.first_group_refused(m, p, instr)
    rng = random.Random(7)
    kmax, amax = (1 << len(head.k_len)) - 1, (1 << len(head.abuf)) - 1
    k_lens = [*range(70), kmax, *(rng.randrange(kmax + 1) for _ in range(200))]
    abufs = [0, 1, p.abuf_rows - 1, p.abuf_rows, amax, rng.randrange(amax + 1)]
    checked = []

    async def bench(ctx):
        for k in k_lens:
            span = -(-k * p.token_lanes // p.port_bytes)
            ctx.set(head.k_len, k)
            for a in abufs:
                ctx.set(head.abuf, a)
                assert ctx.get(last_start) == p.abuf_rows - span, (k, a)
                assert ctx.get(refused) == (a + span > p.abuf_rows), (k, a)
                checked.append(k)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) == len(k_lens) * len(abufs)


@pytest.mark.parametrize("board, divisor, bits", [("icebreaker", 4, 64), ("ulx3s", 5, 40)])
def test_link_timeout_is_its_bit_times_exactly(board, divisor, bits):
    """A frame that falls silent after a byte is answered (its reply's SYNC offered) exactly
    `link_timeout_bits` bit times of `uart_divisor` cycles after that byte, plus one cycle."""
    chip = sim_chip(CHIPS[board], divisor=divisor, timeout_bits=bits)
    dut = HostLink(chip, chip.mem_read_latency)
    waited = []

    async def testbench(ctx):
        ctx.set(dut.tx.ready, 1)
        await ctx.tick().repeat(3)
        ctx.set(dut.rx.payload.data, SYNC)
        ctx.set(dut.rx.valid, 1)
        await ctx.tick()
        ctx.set(dut.rx.valid, 0)
        n = 0
        while not ctx.get(dut.tx.valid) and n < 2 * bits * divisor:
            await ctx.tick()
            n += 1
        waited.append((n, ctx.get(dut.tx.payload)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert waited == [(bits * divisor + 1, SYNC)]


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_in_flight_queue_keeps_what_was_written_when_taken(depth):
    """LOAD's in-flight queue (`rtl.load.InFlight`) writes its free entry in every cycle it
    has room, with whatever `w_data` holds; only the entries written with `w_en` are read
    back, in order, and a full queue keeps its entries while `w_data` keeps changing. Against
    a plain FIFO of `depth` entries, on random traffic."""
    from collections import deque

    from rtl.load import InFlight

    dut = InFlight(8, depth)
    rng = random.Random(depth)
    model = deque()
    trace = []

    async def testbench(ctx):
        for cycle in range(600):
            w_en, r_en = rng.random() < 0.55, rng.random() < 0.5
            value = rng.randrange(256)
            ctx.set(dut.w_data, value)
            ctx.set(dut.w_en, w_en)
            ctx.set(dut.r_en, r_en)
            w_rdy, r_rdy = ctx.get(dut.w_rdy), ctx.get(dut.r_rdy)
            assert (w_rdy, r_rdy) == (len(model) < depth, len(model) > 0), cycle
            if r_rdy:
                assert ctx.get(dut.r_data) == model[0], cycle
            trace.append(len(model))
            await ctx.tick()
            if r_en and r_rdy:
                model.popleft()
            if w_en and w_rdy:
                model.append(value)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert {0, depth} <= set(trace)     # the run saw the queue empty and full


@pytest.mark.parametrize("wa, wb, limit", [(3, 3, 0), (3, 3, 5), (4, 2, 9), (2, 4, 18),
                                            (3, 3, 14), (3, 3, 15), (4, 4, 16), (1, 3, 7)])
def test_sum_exceeds_every_input(wa, wb, limit):
    """`rtl.compute.sum_exceeds(a, b, carry, limit)` is a + b + carry > limit for every a, b
    and carry of the widths, limits past the largest sum and at it included (it folds the
    limit into the operands, a step where an off-by-one would show only at the edges)."""
    from amaranth.hdl import Module, Signal

    from rtl.compute import sum_exceeds

    a, b, cin, out = Signal(wa), Signal(wb), Signal(), Signal()
    m = Module()
    m.d.comb += out.eq(sum_exceeds(a, b, cin, limit))
    wrong = []

    async def testbench(ctx):
        for x in range(1 << wa):
            for y in range(1 << wb):
                for c in (0, 1):
                    ctx.set(a, x)
                    ctx.set(b, y)
                    ctx.set(cin, c)
                    if ctx.get(out) != (x + y + c > limit):
                        wrong.append((x, y, c))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    assert not wrong, f"wrong for (a, b, carry) = {wrong[:5]}"
