"""Weight decoders: one memory word of packed trits in, a row of lane controls out."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import (
    BASE3_VALID_BYTES,
    CODE2_INVALID,
    NM_EMPTY,
    NM_INVALID,
    NM_OFFSET_BITS,
    NM_SLOT_BITS,
    NM_SLOTS_PER_BYTE,
    TRIT_CODE_OFFSET,
    TRITS_PER_BYTE,
    WeightEncoding,
    base3_decode_table,
)
from .memport import read_port
from .params import ArrayParams

__all__ = ["WeightDecoder", "trit_bits"]


def trit_bits(t: int, offset: int = 0) -> int:
    """A lane's control as stored in the weight buffer: bit 0 nz, bit 1 neg, and (at scale
    points with the NM encoding, `ArrayParams.wbuf_lane_bits` = 5) the slot offset in bits 2..4."""
    return (t != 0) | ((t < 0) << 1) | (offset << 2)


def base3_rows() -> list:
    """The base-3 ROM: byte -> its 5 trits' lane controls (trit i in bits [2i+1:2i]); the
    invalid bytes 243..255 read 0 (the decoder flags them by comparison, not from the ROM)."""
    rows = [sum(trit_bits(t) << (2 * i) for i, t in enumerate(trits))
            for trits in base3_decode_table()]
    return rows + [0] * (256 - BASE3_VALID_BYTES)


class WeightDecoder(wiring.Component):
    """Decode one memory word into `row_lanes` lane controls, combinationally.

    Base-3 bytes go through a 243-entry table (no divider); 2-bit codes are wired directly.
    Lanes that the chosen encoding does not reach (the top fifth in 2-bit mode) read zero.
    N:M slot codes are wired too: a word's 2P slots come out on lanes 0 .. 2P-1 (the LOAD unit
    writes them to the half of a buffer row they belong to).

    Members
    -------
    word : In(port_bits)
    next_word : In(port_bits) (only with `ArrayParams.registered_decode`)
        The word that will be `word` in the next cycle: the base-3 tables are block RAM and
        are read one cycle ahead.
    encoding : In(WeightEncoding)
    trits : Out(b * row_lanes), b = `ArrayParams.wbuf_lane_bits`
        Lane l's control in bits [b*l + b-1 : b*l]: bit 0 nonzero, bit 1 negative, bits 2..4
        the N:M slot offset (0 for the dense encodings).
    invalid : Out(1)
        The word holds a byte >= 243 (base 3), a code 0b11 (2-bit) or 0b1111 (N:M), or the
        encoding is not enabled at this scale point.

    With `ArrayParams.registered_weight_write`, `trits` is the decoding of the previous
    cycle's `word` and `encoding` (`invalid` is not): each encoding's decoding is registered
    (the base-3 tables' rows a second time: on the ECP5 their block RAMs' output registers,
    `rtl.bramfold`), and the choice by encoding follows those registers, so the weight buffer
    can take the row without a register of its own and no logic follows a block RAM.

    Parameters
    ----------
    domain : the clock domain of the registered tables and invalid flag (with
        `ArrayParams.registered_decode`) and of the registers before the choice of encoding
        (with `registered_weight_write`).
    """

    def __init__(self, params: ArrayParams, domain: str = "sync"):
        self.params = params
        self.domain = domain
        members = {"next_word": In(params.port_bits)} if params.registered_decode else {}
        super().__init__({
            **members,
            "word": In(params.port_bits), "encoding": In(WeightEncoding),
            "trits": Out(params.wbuf_lane_bits * params.row_lanes), "invalid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        nbytes = p.port_bytes
        n = TRITS_PER_BYTE[WeightEncoding.BASE3]
        lb = p.wbuf_lane_bits
        late = p.registered_weight_write

        def delayed(value, name):
            """`value` a cycle late, with `registered_weight_write`: a register without reset
            (the fold takes a table's as its block RAM's output register)."""
            if not late:
                return value
            reg = Signal.like(value, name=name, reset_less=True)
            m.d[self.domain] += reg.eq(value)
            return reg

        # What the decodings and their choice are made from.
        word = delayed(self.word, "late_word")
        encoding = delayed(self.encoding, "late_encoding")

        # Each enabled encoding's decoding of the word, a whole row of lane controls; `trits` is
        # the one `encoding` names (lanes an encoding does not reach read zero).
        decoded = {e: Signal(lb * p.row_lanes, name=f"trits_{e.name.lower()}")
                   for e in p.encodings}

        def put(enc, lane, nz, neg, offset=None):
            ctl = Cat(nz, neg, Const(0, NM_OFFSET_BITS) if offset is None else offset)[:lb]
            return decoded[enc][lb * lane:lb * (lane + 1)].eq(ctl)

        rows = []       # per byte: its base-3 trits, then an invalid bit
        if WeightEncoding.BASE3 in p.encodings:
            for j in range(nbytes):
                # A ROM per byte. Read asynchronously, Yosys makes it a mux tree on the byte's
                # bits, about a third of what a 243-way case becomes; registered, it is one
                # block RAM. (Outside the encoding switch: a registered read looks up the next
                # word, whose encoding is not known yet.)
                rom = Memory(shape=2 * n, depth=256, init=base3_rows())
                m.submodules[f"base3_{j}"] = rom
                if p.registered_decode:
                    port, row = read_port(m, rom, domain=self.domain)
                    m.d.comb += port.addr.eq(self.next_word[8 * j:8 * j + 8])
                else:
                    port = rom.read_port(domain="comb")
                    row = port.data
                    m.d.comb += port.addr.eq(self.word[8 * j:8 * j + 8])
                rows.append(delayed(row, f"late_base3_{j}"))

        def flagged(bad_of):
            """Whether any code of the word is invalid; with registered_decode, worked out on
            `next_word` and registered like the tables, so no check follows the register."""
            if not p.registered_decode:
                return Cat(*bad_of(self.word)).any()
            bad = Signal()
            m.d[self.domain] += bad.eq(Cat(*bad_of(self.next_word)).any())
            return bad

        def base3_bad(word):
            # byte >= 243 = 0b1111_0011: the high nibble all ones and the low one >= 3, in
            # logic rather than a comparator's carry chain.
            assert BASE3_VALID_BYTES == 0b1111_0011
            return [word[8 * j + 4:8 * j + 8].all()
                    & (word[8 * j + 2] | word[8 * j + 3] | (word[8 * j] & word[8 * j + 1]))
                    for j in range(nbytes)]

        def code2_bad(word):
            return [word[2 * lane:2 * lane + 2] == CODE2_INVALID for lane in range(4 * nbytes)]

        def nm_bad(word):
            return [word[NM_SLOT_BITS * lane:NM_SLOT_BITS * (lane + 1)] == NM_INVALID
                    for lane in range(NM_SLOTS_PER_BYTE * nbytes)]

        # (Outside the encoding switch, for the same reason as the tables.) Base 3 too: its
        # check compares the bytes themselves, so no OR of 32 table outputs follows a block RAM.
        checks = {WeightEncoding.BASE3: base3_bad, WeightEncoding.CODE2: code2_bad,
                  WeightEncoding.NM: nm_bad}
        invalid = {e: flagged(checks[e]) for e in WeightEncoding if e in p.encodings}
        if WeightEncoding.BASE3 in p.encodings:
            for j, row in enumerate(rows):
                for i in range(n):
                    m.d.comb += put(WeightEncoding.BASE3, n * j + i, row[2 * i], row[2 * i + 1])
        if WeightEncoding.CODE2 in p.encodings:
            for lane in range(4 * nbytes):
                code = word[2 * lane:2 * lane + 2]
                # code = trit + 1: 00 -> -1, 01 -> 0, 10 -> +1.
                assert TRIT_CODE_OFFSET == 1
                m.d.comb += put(WeightEncoding.CODE2, lane, ~code[0] & ~(code == CODE2_INVALID),
                                code == 0)
        if WeightEncoding.NM in p.encodings:
            for lane in range(NM_SLOTS_PER_BYTE * nbytes):
                code = word[NM_SLOT_BITS * lane:NM_SLOT_BITS * (lane + 1)]
                # The offset, then the sign; NM_EMPTY and NM_INVALID have every offset bit set,
                # and differ in the sign.
                offset, neg = code[:NM_OFFSET_BITS], code[NM_OFFSET_BITS]
                m.d.comb += put(WeightEncoding.NM, lane, offset != NM_EMPTY, neg, offset)
            assert NM_EMPTY == (1 << NM_OFFSET_BITS) - 1
            assert NM_INVALID == NM_EMPTY | 1 << NM_OFFSET_BITS
        # The choice looks at as few bits of `encoding` as tell the enabled encodings apart: a
        # value no enabled encoding has takes the decoding of one that shares its low bits, so
        # that a bit telling only such values apart selects nothing. A weight LOAD with such an
        # encoding is refused at issue, so its choice is never written. (With base 3 and 2-bit
        # codes, one bit: one LUT per lane bit behind the base-3 tables.)
        enabled = sorted(p.encodings)
        low = (1 << max(enabled).bit_length()) - 1
        table = [decoded[WeightEncoding(v)] if v in enabled else
                 decoded[WeightEncoding(v & low)] if (v & low) in enabled else
                 decoded[enabled[0]] for v in range(1 << len(self.encoding))]

        def pick(entries, bit):
            half = len(entries) // 2
            if half == 0:
                return entries[0]
            lo, hi = entries[:half], entries[half:]
            if all(a is b for a, b in zip(lo, hi)):
                return pick(lo, bit - 1)
            return Mux(encoding[bit], pick(hi, bit - 1), pick(lo, bit - 1))

        m.d.comb += self.trits.eq(pick(table, len(self.encoding) - 1))
        with m.Switch(self.encoding):
            for e, bad_any in invalid.items():
                with m.Case(e):
                    m.d.comb += self.invalid.eq(bad_any)
            with m.Default():
                m.d.comb += self.invalid.eq(1)
        return m
