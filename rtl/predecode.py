"""Predecode: what an instruction alone decides, worked out once when the program is written.

A memory beside the program memory holds, for each instruction word, the unit it goes to (as
one-hot `go` bits) and the errors it raises whatever the state: an illegal opcode or dependency
flag (the dispatcher's), and the BAD_FIELD / BAD_ADDRESS checks of its unit
(`LoadUnit.static_error`, `ComputeUnit.static_error`, `StoreUnit.static_error`). The host
writes the program between runs, so these carry chains and comparators sit on the write path,
not between the program memory and the units' issue decisions. Nothing about timing changes:
each error is raised in the same cycle as before. That includes checks that fall after issue: a
MATMUL whose first token group reads past the activation buffer
(`ComputeUnit.first_group_refused`), refused in its first step, and a LOAD whose first row runs
past its buffer (`LoadUnit.first_row_refused`), refused in its first request cycle. The
predecode is written a cycle after its instruction (`rtl.sequencer`).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .compute import ComputeUnit
from .isa import INSTR_BITS, UNIT_OF, ErrorCode, Opcode, Unit, header_layout
from .load import LoadUnit
from .params import ArrayParams
from .store import StoreUnit

__all__ = ["Predecoder", "pre_layout"]

#: What the program memory stores beside each instruction.
pre_layout = data.StructLayout({"disp_err": ErrorCode, "unit_err": ErrorCode, "refuse0": 1,
                                "single": 1, "go": len(Unit), "bad": 1})

_CHECKS = {Unit.LOAD: LoadUnit, Unit.COMPUTE: ComputeUnit, Unit.STORE: StoreUnit}


class Predecoder(wiring.Component):
    """Combinational: `instr` -> `pre`.

    Members
    -------
    instr : In(INSTR_BITS)
    pre : Out(pre_layout)
        `disp_err`: ILLEGAL_OPCODE,
        BAD_DEPENDENCY (a pop or push towards a unit that does not exist) or NONE. `unit_err`:
        the unit's static error, or NONE. `refuse0`: a MATMUL's first token group, or a
        LOAD's first row, runs past its buffer. `single`: a LOAD of one request (one row of one
        word). `go`: one-hot by `Unit`, the instruction goes to that unit (no dispatcher
        error). `bad`: `unit_err` is not NONE. The flags let the issue decisions test single
        bits.
    """

    def __init__(self, params: ArrayParams):
        self.params = params
        super().__init__({"instr": In(INSTR_BITS), "pre": Out(pre_layout)})

    def elaborate(self, platform):
        m = Module()
        head = data.View(header_layout(), self.instr)
        legal = Signal()
        unit = Signal(Unit)
        with m.Switch(head.opcode):
            for op in Opcode:
                with m.Case(op):
                    m.d.comb += [legal.eq(1), unit.eq(UNIT_OF[op])]
        flags = [head.pop_prev, head.pop_next, head.push_prev, head.push_next]
        bad_dep = Signal()
        with m.Switch(unit):
            with m.Case(Unit.LOAD):
                m.d.comb += bad_dep.eq(head.pop_prev | head.push_prev)
            with m.Case(Unit.STORE):
                m.d.comb += bad_dep.eq(head.pop_next | head.push_next)
            with m.Case(Unit.DISPATCH):
                m.d.comb += bad_dep.eq(flags[0] | flags[1] | flags[2] | flags[3])
        with m.If(~legal):
            m.d.comb += self.pre.disp_err.eq(ErrorCode.ILLEGAL_OPCODE)
        with m.Elif(bad_dep):
            m.d.comb += self.pre.disp_err.eq(ErrorCode.BAD_DEPENDENCY)
        errs = {u: cls.static_error(m, self.params, self.instr) for u, cls in _CHECKS.items()}
        with m.Switch(unit):
            for u, err in errs.items():
                with m.Case(u):
                    m.d.comb += self.pre.unit_err.eq(err)
        with m.If(self.pre.disp_err == ErrorCode.NONE):
            m.d.comb += self.pre.go.bit_select(unit, 1).eq(1)
        m.d.comb += self.pre.bad.eq(self.pre.unit_err != ErrorCode.NONE)
        p = self.params
        m.d.comb += [
            self.pre.refuse0.eq(
                ((unit == Unit.COMPUTE) & ComputeUnit.first_group_refused(m, p, self.instr)) |
                ((unit == Unit.LOAD) & LoadUnit.first_row_refused(m, p, self.instr))),
            self.pre.single.eq((unit == Unit.LOAD) & LoadUnit.single_request(self.instr)),
        ]
        return m
