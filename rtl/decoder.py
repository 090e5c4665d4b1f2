"""Weight decoders: one memory word of packed trits in, a row of (nz, neg) lane controls out."""

from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import (
    BASE3_VALID_BYTES,
    CODE2_INVALID,
    TRIT_CODE_OFFSET,
    TRITS_PER_BYTE,
    WeightEncoding,
    base3_decode_table,
)
from .params import ArrayParams

__all__ = ["WeightDecoder", "trit_bits"]


def trit_bits(t: int) -> int:
    """The 2-bit lane control of a trit as stored in the weight buffer: bit 0 nz, bit 1 neg."""
    return (t != 0) | ((t < 0) << 1)


def base3_rows() -> list:
    """The base-3 ROM: byte -> its 5 trits' lane controls (trit i in bits [2i+1:2i]); 0 past 242."""
    rows = [sum(trit_bits(t) << (2 * i) for i, t in enumerate(trits))
            for trits in base3_decode_table()]
    return rows + [0] * (256 - len(rows))


class WeightDecoder(wiring.Component):
    """Decode one memory word into `row_lanes` trits, combinationally.

    Base-3 bytes go through a 243-entry table (no divider); 2-bit codes are wired directly.
    Lanes that the chosen encoding does not reach (the top fifth in 2-bit mode) read zero.

    Members
    -------
    word : In(port_bits)
    encoding : In(WeightEncoding)
    trits : Out(2 * row_lanes)
        Lane l's control in bits [2l+1:2l]: bit 0 nonzero, bit 1 negative.
    invalid : Out(1)
        The word holds a byte >= 243 (base 3) or a code 0b11 (2-bit), or the encoding is not
        enabled at this scale point.
    """

    def __init__(self, params: ArrayParams):
        self.params = params
        super().__init__({
            "word": In(params.port_bits), "encoding": In(WeightEncoding),
            "trits": Out(2 * params.row_lanes), "invalid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        nbytes = p.port_bytes
        with m.Switch(self.encoding):
            if WeightEncoding.BASE3 in p.encodings:
                with m.Case(WeightEncoding.BASE3):
                    n = TRITS_PER_BYTE[WeightEncoding.BASE3]
                    bad = []
                    for j in range(nbytes):
                        # A ROM with an asynchronous read: Yosys maps it to logic as a mux tree
                        # on the byte's bits, about a third of what a 243-way case becomes.
                        rom = Memory(shape=2 * n, depth=256, init=base3_rows())
                        m.submodules[f"base3_{j}"] = rom
                        port = rom.read_port(domain="comb")
                        byte = self.word[8 * j:8 * j + 8]
                        m.d.comb += [port.addr.eq(byte),
                                     self.trits[2 * n * j:2 * n * (j + 1)].eq(port.data)]
                        bad.append(byte >= BASE3_VALID_BYTES)
                    m.d.comb += self.invalid.eq(Cat(*bad).any())
            if WeightEncoding.CODE2 in p.encodings:
                with m.Case(WeightEncoding.CODE2):
                    bad = []
                    for lane in range(4 * nbytes):
                        code = self.word[2 * lane:2 * lane + 2]
                        # code = trit + 1: 00 -> -1, 01 -> 0, 10 -> +1.
                        assert TRIT_CODE_OFFSET == 1
                        m.d.comb += self.trits[2 * lane].eq(~code[0] & ~(code == CODE2_INVALID))
                        m.d.comb += self.trits[2 * lane + 1].eq(code == 0)
                        bad.append(code == CODE2_INVALID)
                    m.d.comb += self.invalid.eq(Cat(*bad).any())
            with m.Default():
                m.d.comb += self.invalid.eq(1)
        return m
