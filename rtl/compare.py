"""The hardware side of the Amdahl analysis: the lane array, ternary versus int8 multiply-add.

`LaneArray` is the accelerator's array of rows x token lanes with the accumulators, built with
either lane kind:

- ``ternary``: `rtl.lane.TernaryLane`, the accelerator's own lane (add, subtract or skip;
  no multiplier), accumulators of ``ArrayParams.acc_bits``;
- ``int8``: `Int8MacLane`, ``acc += w * x`` with int8 weights, the lane an int8 weight format
  would need, accumulators wide enough for the same reduction length (`mac_acc_bits`).

This is a build option for the comparison only: the accelerator never instantiates
`Int8MacLane`. `SerialHarness` feeds an array from a one-pin shift chain and folds every
accumulator into one output pin, so that an FPGA build keeps all of it and needs three pins;
the FPGA flow (`rtl.fpga`) builds and reports both kinds side by side.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .lane import TernaryLane
from .params import ACT_BITS, ArrayParams

__all__ = ["KINDS", "Int8MacLane", "LaneArray", "SerialHarness", "int8_array", "mac_acc_bits",
           "ternary_array"]

#: Lane kinds of the comparison.
KINDS = ("ternary", "int8")


def mac_acc_bits(params: ArrayParams) -> int:
    """Accumulator width of an int8 x int8 lane for `params.max_k`: |acc| <= 128 * 128 * max_k."""
    return (2 ** (2 * (ACT_BITS - 1)) * params.max_k).bit_length() + 1


class Int8MacLane(wiring.Component):
    """Accumulate ``w * x`` for an int8 weight: one multiply-add per step (comparison only).

    Members
    -------
    step, first : In(1)
        As in `TernaryLane`; `first` starts a new sum from zero.
    w, x : In(signed(8))
    acc : Out(signed(acc_bits))
    """

    def __init__(self, acc_bits: int):
        self.acc_bits = acc_bits
        super().__init__({
            "step": In(1), "first": In(1), "w": In(signed(ACT_BITS)), "x": In(signed(ACT_BITS)),
            "acc": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(self.acc_bits), reset_less=True)     # as TernaryLane's
        with m.If(self.step):
            m.d.sync += acc.eq(Mux(self.first, 0, acc) + self.w * self.x)
        m.d.comb += self.acc.eq(acc)
        return m


class LaneArray(wiring.Component):
    """`row_lanes` x `token_lanes` lanes of one kind, as in the accelerator's COMPUTE unit.

    Every step, lane (r, j) accumulates weight r times activation j.

    Members
    -------
    step, first : In(1)
    w : In(row_lanes * weight_bits)
        Row r's weight in bits [r * weight_bits +: weight_bits]: (nz, neg) for ternary lanes
        (`rtl.decoder.trit_bits`), a two's complement byte for int8 lanes.
    x : In(token_lanes * 8)
        Token j's activation in byte j.
    acc : Out(lanes * acc_bits)
        Lane (r, j)'s accumulator at index j * row_lanes + r.
    """

    def __init__(self, params: ArrayParams, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown lane kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.params = params
        self.kind = kind
        self.weight_bits = 2 if kind == "ternary" else ACT_BITS
        self.acc_bits = params.acc_bits if kind == "ternary" else mac_acc_bits(params)
        super().__init__({
            "step": In(1), "first": In(1),
            "w": In(params.row_lanes * self.weight_bits),
            "x": In(params.token_lanes * ACT_BITS),
            "acc": Out(params.lanes * self.acc_bits),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        wb = self.weight_bits
        accs = []
        for j in range(p.token_lanes):
            x = self.x[ACT_BITS * j:ACT_BITS * (j + 1)].as_signed()
            for r in range(p.row_lanes):
                w = self.w[wb * r:wb * (r + 1)]
                if self.kind == "ternary":
                    lane = TernaryLane(self.acc_bits)
                    m.d.comb += [lane.init.eq(0), lane.nz.eq(w[0]), lane.neg.eq(w[1])]
                else:
                    lane = Int8MacLane(self.acc_bits)
                    m.d.comb += lane.w.eq(w.as_signed())
                m.submodules[f"lane_{j}_{r}"] = lane
                m.d.comb += [lane.step.eq(self.step), lane.first.eq(self.first), lane.x.eq(x)]
                accs.append(lane.acc)
        m.d.comb += self.acc.eq(Cat(*accs))
        return m


class SerialHarness(wiring.Component):
    """A `LaneArray` behind two pins, for FPGA builds of the comparison.

    Weights, activations and the step/first controls are the taps of a shift chain that
    `uart_rx` feeds one bit per cycle; `uart_tx` is the (pipelined) XOR of every accumulator bit,
    so synthesis can drop no lane. (The pins are the board's UART pins, so `rtl.fpga` places
    it like the chip; there is no UART.) The chain adds one flip-flop per weight and
    activation bit to both kinds.
    """

    def __init__(self, params: ArrayParams, kind: str):
        self.array = LaneArray(params, kind)
        super().__init__({"uart_rx": In(1), "uart_tx": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = arr = self.array
        width = len(arr.w) + len(arr.x) + 2
        # No resets in the harness: a reset reaching every flip-flop of a large array was the
        # critical path on ECP5, which measured the wrapper instead of the lanes.
        chain = Signal(width, reset_less=True)
        m.d.sync += chain.eq(Cat(self.uart_rx, chain[:-1]))
        m.d.comb += [arr.w.eq(chain[:len(arr.w)]),
                     arr.x.eq(chain[len(arr.w):len(arr.w) + len(arr.x)]),
                     arr.step.eq(chain[-2]), arr.first.eq(chain[-1])]
        # Fold in registered stages of at most 16 inputs each (two LUT4 levels), so the fold is
        # never the critical path: the array is.
        bits = [arr.acc[i] for i in range(len(arr.acc))]
        while len(bits) > 1:
            stage = Signal((len(bits) + 15) // 16, reset_less=True)
            m.d.sync += stage.eq(Cat(*[Cat(*bits[i:i + 16]).xor()
                                       for i in range(0, len(bits), 16)]))
            bits = [stage[i] for i in range(len(stage))]
        m.d.sync += self.uart_tx.eq(bits[0])
        return m


def ternary_array(chip) -> SerialHarness:
    """`rtl.fpga --top rtl.compare:ternary_array`: the chip's array with ternary lanes."""
    return SerialHarness(chip.array, "ternary")


def int8_array(chip) -> SerialHarness:
    """`rtl.fpga --top rtl.compare:int8_array`: the chip's array with int8 multiply-add lanes."""
    return SerialHarness(chip.array, "int8")
