"""The ternary processing element: add, subtract or skip an int8 activation. No multiplier."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .params import ACT_BITS

__all__ = ["TernaryLane"]


class TernaryLane(wiring.Component):
    """Accumulate `w * x` for a ternary weight w given as (nz, neg): one add per step.

    Parameters
    ----------
    acc_bits : accumulator width (``ArrayParams.acc_bits``).
    held : the lane's register is the accumulator group itself (``ArrayParams.acc_in_lanes``):
        a sum starts from `clear` or from the held value, never from `init`, so the lane has no
        `first`, `init` or `total` and no zeroing of x (a zero weight never updates it). On
        iCE40 that is one logic cell per accumulator bit plus one per activation bit.

    Members
    -------
    step : In(1)
        This cycle carries a weight and an activation.
    first : In(1) (not when `held`)
        Start a new sum from `init` instead of the held accumulator.
    init : In(signed(acc_bits)) (not when `held`)
        The starting value when `first` is set (0, or a partial sum read back).
    nz, neg : In(1)
        The weight: 0 when `nz` is low, else -1 when `neg` is set, else +1.
    x : In(signed(8))
        The activation.
    clear : In(1)
        Set the accumulator to 0 at the end of this cycle, whatever else is asked (a synchronous
        reset: on iCE40 and ECP5 it costs no logic cell).
    total : Out(signed(acc_bits)) (not when `held`)
        The value the accumulator takes at the end of this cycle when it is updated.
    acc : Out(signed(acc_bits))
        The accumulator. A step with a zero weight (and not `first`) leaves it untouched.
    """

    def __init__(self, acc_bits: int, held: bool = False):
        self.acc_bits = acc_bits
        self.held = held
        members = {"step": In(1), "nz": In(1), "neg": In(1), "x": In(signed(ACT_BITS)),
                   "clear": In(1), "acc": Out(signed(acc_bits))}
        if not held:
            members.update({"first": In(1), "init": In(signed(acc_bits)),
                            "total": Out(signed(acc_bits))})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        # No reset: every sum starts from `clear` or `first`, and a reset (the accelerator
        # resets its units at every start) would cost a logic cell per bit next to `clear`.
        # A held lane keeps its group across runs, as the accumulator buffer does.
        acc = Signal(signed(self.acc_bits), reset_less=True)
        bits = self.acc_bits

        def add(a, flip, carry):
            # Negation as one's complement plus a carry-in: a + (x ^ -neg) + neg. Synthesis
            # makes `a + b + c` two adders, so the carry-in rides in an extra low bit of one
            # adder: (2a + 1) + (2b + c) = 2(a + b + c) + 1. About half the area of a mux
            # between x and -x on iCE40.
            wide = Cat(Const(1, 1), a) + Cat(carry, flip, flip[-1].replicate(bits - len(flip)))
            return wide[1:bits + 1].as_signed()

        flip = Signal(signed(ACT_BITS))
        if self.held:
            m.d.comb += flip.eq(self.x ^ Mux(self.neg, -1, 0))
            total = add(acc, flip, self.neg)
            update = self.step & self.nz
        else:
            base = Mux(self.first, self.init, acc)
            xs = Mux(self.nz, self.x, 0).as_signed()
            m.d.comb += flip.eq(xs ^ Mux(self.neg & self.nz, -1, 0))
            m.d.comb += self.total.eq(add(base, flip, self.neg & self.nz))
            total = self.total
            update = self.step & (self.first | self.nz)
        with m.If(self.clear):
            m.d.sync += acc.eq(0)
        with m.Elif(update):
            m.d.sync += acc.eq(total)
        m.d.comb += self.acc.eq(acc)
        return m
