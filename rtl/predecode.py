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
    """`instr` -> `pre`, registered once in the middle: `pre` describes the `instr` of the
    previous cycle.

    The first half works out each check (the opcode's unit and legality, each unit's static
    error, the first-row and first-group refusals) from `instr` and registers them; the second
    selects the instruction's unit's results from those registers.

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
        p = self.params
        head = data.View(header_layout(), self.instr)
        # -- first half: every check, registered -----------------------------------------------
        legal = Signal()
        unit = Signal(Unit)
        with m.Switch(head.opcode):
            for op in Opcode:
                with m.Case(op):
                    m.d.sync += [legal.eq(1), unit.eq(UNIT_OF[op])]
            with m.Default():
                m.d.sync += [legal.eq(0), unit.eq(0)]
        flags = [head.pop_prev, head.pop_next, head.push_prev, head.push_next]
        # A pop or push towards a unit that does not exist, for each unit the opcode may name.
        bad_dep = {Unit.LOAD: head.pop_prev | head.push_prev,
                   Unit.STORE: head.pop_next | head.push_next,
                   Unit.DISPATCH: flags[0] | flags[1] | flags[2] | flags[3]}
        bad_dep_q = {u: Signal(name=f"bad_dep_{u.name.lower()}") for u in bad_dep}
        errs_q = {u: Signal(ErrorCode, name=f"err_{u.name.lower()}") for u in _CHECKS}
        # The refusals are compared here too, each as if the instruction were of its unit:
        # the second half then only picks, and no carry chain lies before the memory.
        refuse_compute, refuse_load, single = Signal(), Signal(), Signal()
        m.d.sync += [bad_dep_q[u].eq(v) for u, v in bad_dep.items()]
        m.d.sync += [errs_q[u].eq(cls.static_error(m, p, self.instr))
                     for u, cls in _CHECKS.items()]
        m.d.sync += [refuse_compute.eq(ComputeUnit.first_group_refused(m, p, self.instr)),
                     refuse_load.eq(LoadUnit.first_row_refused(m, p, self.instr)),
                     single.eq(LoadUnit.single_request(self.instr))]

        # -- second half: the instruction's unit's results ---------------------------------------
        with m.If(~legal):
            m.d.comb += self.pre.disp_err.eq(ErrorCode.ILLEGAL_OPCODE)
        with m.Else(), m.Switch(unit):
            for u, bad in bad_dep_q.items():
                with m.Case(u), m.If(bad):
                    m.d.comb += self.pre.disp_err.eq(ErrorCode.BAD_DEPENDENCY)
        with m.Switch(unit):
            for u, err in errs_q.items():
                with m.Case(u):
                    m.d.comb += self.pre.unit_err.eq(err)
        with m.If(self.pre.disp_err == ErrorCode.NONE):
            m.d.comb += self.pre.go.bit_select(unit, 1).eq(1)
        m.d.comb += [
            self.pre.bad.eq(self.pre.unit_err != ErrorCode.NONE),
            self.pre.refuse0.eq(((unit == Unit.COMPUTE) & refuse_compute) |
                                ((unit == Unit.LOAD) & refuse_load)),
            self.pre.single.eq((unit == Unit.LOAD) & single),
        ]
        return m
