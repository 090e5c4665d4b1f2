"""The ternary processing element: add, subtract or skip an int8 activation. No multiplier."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .params import ACT_BITS

__all__ = ["TernaryLane"]


class TernaryLane(wiring.Component):
    """Accumulate `w * x` for a ternary weight w given as (nz, neg): one add per step.

    Parameters
    ----------
    acc_bits : accumulator width (``ArrayParams.acc_bits``).

    Members
    -------
    step : In(1)
        This cycle carries a weight and an activation.
    first : In(1)
        Start a new sum from `init` instead of the held accumulator.
    init : In(signed(acc_bits))
        The starting value when `first` is set (0, or a partial sum read back).
    nz, neg : In(1)
        The weight: 0 when `nz` is low, else -1 when `neg` is set, else +1.
    x : In(signed(8))
        The activation.
    total : Out(signed(acc_bits))
        The value the accumulator takes at the end of this cycle when it is updated.
    acc : Out(signed(acc_bits))
        The accumulator. A step with a zero weight (and not `first`) leaves it untouched.
    """

    def __init__(self, acc_bits: int):
        self.acc_bits = acc_bits
        super().__init__({
            "step": In(1), "first": In(1), "init": In(signed(acc_bits)),
            "nz": In(1), "neg": In(1), "x": In(signed(ACT_BITS)),
            "total": Out(signed(acc_bits)), "acc": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(self.acc_bits))
        base = Mux(self.first, self.init, acc)
        # Negation as one's complement plus a carry-in: acc + (x ^ -neg) + neg is one adder
        # with a carry, about half the area of a mux between x and -x on iCE40.
        xs = Mux(self.nz, self.x, 0).as_signed()
        flip = Signal(signed(ACT_BITS))
        m.d.comb += flip.eq(xs ^ Mux(self.neg & self.nz, -1, 0))
        m.d.comb += self.total.eq(base + flip + (self.neg & self.nz))
        with m.If(self.step & (self.first | self.nz)):
            m.d.sync += acc.eq(self.total)
        m.d.comb += self.acc.eq(acc)
        return m
