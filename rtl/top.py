"""The accelerator: dispatcher, LOAD/COMPUTE/STORE units, buffers, tokens, status, counters.

Run ``python -m rtl.top --verilog DIR [SCALE_POINT ...]`` to write Verilog for scale points.
"""

import sys
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    DomainRenamer,
    EnableInserter,
    Module,
    Mux,
    ResetInserter,
    Signal,
    Value,
)
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .cli import ArgumentParser
from .compute import ComputeUnit, popcount, tree_sum
from .isa import INSTR_BITS, PC_BITS, Counter, ErrorCode, Status, Unit
from .load import ADDR_BITS, LoadUnit
from .memport import read_port, registered
from .params import SCALE_POINTS, ArrayParams, scale_point
from .sequencer import Dispatcher
from .store import StoreUnit, write_layout

__all__ = ["Accelerator", "COUNTERS_FINAL", "main", "write_component", "write_verilog"]

#: The performance counters hold their final values from this cycle on, counting the cycles in
#: which `status` is no longer RUNNING (the first such cycle is 1): each adds a registered
#: increment, and zero weights are counted in three more stages (see `Accelerator.elaborate`).
COUNTERS_FINAL = 5
#: Rows per partial count of zero weights (a register each, summed a cycle later).
ZERO_CHUNK = 16
#: Partial counts per group sum (a register each, summed across the groups a cycle later).
ZERO_GROUP = 4

#: What a unit's instruction queue holds per instruction (and, with no queues, what the
#: dispatcher offers): the word, its address, and its predecoded checks.
entry_layout = data.StructLayout({"instr": INSTR_BITS, "pc": PC_BITS, "err": ErrorCode,
                                  "bad": 1, "refuse0": 1, "single": 1})



class Accelerator(wiring.Component):
    """Run a program of `rtl.isa` instructions against an external memory port.

    The host writes the program through `imem_*` while the accelerator is not running, then
    pulses `start` (ignored while `draining`). `status` goes RUNNING in the next cycle and ends
    DONE when a HALT retires or ERROR when anything is malformed, with `error` and `error_pc`
    from the second cycle in which it is ERROR; either way `counters` hold the run's performance
    counters, from the `COUNTERS_FINAL`-th cycle in which `status` is no longer RUNNING until the
    next start.

    Members
    -------
    imem_we, imem_addr, imem_data : In
    start : In(1)
    status : Out(Status)
    error : Out(ErrorCode)
    error_pc : Out(PC_BITS)
    draining : Out(1)
        Read responses of an aborted run are still outstanding; `start` waits for them.
    counters : Out(ArrayLayout(counter_bits, len(Counter)))
        Wrap around at 2 ** counter_bits.
    retire_valid : Out(len(Unit))
        One bit per `Unit`: it retires an instruction this cycle.
    retire_pc : Out(ArrayLayout(PC_BITS, len(Unit)))
    rd_req : Out(stream.Signature(ADDR_BITS))
        Read requests, word addresses.
    rd_resp : In(stream.Signature(port_bits))
        Read data, in request order. Always accepted.
    wr_req : Out(stream.Signature(write_layout))
        Writes of whole words.
    """

    def __init__(self, params: ArrayParams):
        self.params = params
        super().__init__({
            "imem_we": In(1), "imem_addr": In(range(params.imem_depth)),
            "imem_data": In(INSTR_BITS), "start": In(1),
            "status": Out(Status), "error": Out(ErrorCode), "error_pc": Out(PC_BITS),
            "draining": Out(1),
            "counters": Out(data.ArrayLayout(params.counter_bits, len(Counter))),
            "retire_valid": Out(len(Unit)),
            "retire_pc": Out(data.ArrayLayout(PC_BITS, len(Unit))),
            "rd_req": Out(stream.Signature(ADDR_BITS)),
            "rd_resp": In(stream.Signature(params.port_bits)),
            "wr_req": Out(stream.Signature(write_layout(params))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params

        status = Signal(Status)
        error = Signal(ErrorCode)
        error_pc = Signal(PC_BITS)
        run = Signal()          # status is RUNNING, as a register of its own (a wide fan-out)
        begin = Signal()
        outstanding = Signal(range(1 << 12))
        quiet = Signal(init=1)      # outstanding == 0, worked out a cycle ahead
        m.d.comb += [self.status.eq(status), self.error.eq(error), self.error_pc.eq(error_pc),
                     self.draining.eq(~quiet)]
        m.d.comb += begin.eq(self.start & ~run & quiet)

        # The units run in a clock domain without reset: `begin` resets them at every start,
        # and a second, unconditional reset would cost logic in front of many flip-flops.
        m.domains.units = ClockDomain(local=True, reset_less=True)
        m.d.comb += ClockSignal("units").eq(ClockSignal("sync"))

        def unit(name, component):
            # Reset at every start; frozen whenever the accelerator is not running. The enable
            # must include the start cycle itself, or it would mask the reset. COMPUTE's held
            # lanes and their flags (its `lanes` domain) are not frozen but their flags are
            # held at zero while not running: their clock enables and resets then come
            # straight from their own flip-flops. A unit's `data` domain is neither frozen nor
            # reset: wide registers that take a word every cycle, which only a flag of `sync`
            # or `lanes` makes count, so the enable (over a thousand flip-flops on the ULX3S)
            # does not reach them. While running the two domains step alike.
            m.submodules[name] = DomainRenamer({"sync": "units", "lanes": "units",
                                                "data": "units"})(
                ResetInserter({"lanes": ~run})(
                    EnableInserter({"sync": run | begin})(ResetInserter({"sync": begin})(
                        component))))
            return component

        disp = Dispatcher(p)
        m.submodules.dispatcher = DomainRenamer("units")(ResetInserter(begin)(disp))
        m.d.comb += [disp.imem_we.eq(self.imem_we), disp.imem_addr.eq(self.imem_addr),
                     disp.imem_data.eq(self.imem_data), disp.start.eq(begin), disp.run.eq(run)]

        # The units take each instruction's static errors from the dispatcher (`rtl.predecode`).
        load = unit("load", LoadUnit(p, predecoded=True))
        comp = unit("compute", ComputeUnit(p, predecoded=True))
        store = unit("store", StoreUnit(p, predecoded=True))
        units = {Unit.LOAD: load, Unit.COMPUTE: comp, Unit.STORE: store}

        # -- instruction queues ----------------------------------------------------------------
        # With queue_depth 0 a unit takes its instruction straight from the dispatcher, which
        # holds it until then; `heads` is whether each unit has an instruction to look at.
        # An entry: the instruction with its address and predecoded checks (`rtl.predecode`).
        entry = data.View(entry_layout, Cat(disp.instr, disp.pc, disp.unit_err, disp.unit_bad,
                                            disp.refuse0, disp.single))
        full = []
        heads = {}
        for u, un in units.items():
            if p.queue_depth == 0:
                head, heads[u] = entry, disp.offer[u]
                full.append(~un.take)
            else:
                q = unit(f"queue_{u.name.lower()}",
                         SyncFIFO(width=entry_layout.size, depth=p.queue_depth))
                m.d.comb += [q.w_en.eq(disp.dispatch[u]), q.w_data.eq(entry),
                             q.r_en.eq(un.take)]
                head, heads[u] = data.View(entry_layout, q.r_data), q.r_rdy
                full.append(~q.w_rdy)
            m.d.comb += [un.head_valid.eq(heads[u]), un.head_instr.eq(head.instr),
                         un.head_pc.eq(head.pc), un.head_err.eq(head.err),
                         un.head_bad.eq(head.bad)]
            if u in (Unit.LOAD, Unit.COMPUTE):
                m.d.comb += un.head_refuse0.eq(head.refuse0)
            if u == Unit.LOAD:
                m.d.comb += un.head_single.eq(head.single)
        m.d.comb += disp.full.eq(Cat(*full))

        # -- buffers ---------------------------------------------------------------------------
        m.submodules.wbuf = wbuf = Memory(shape=p.wbuf_lane_bits * p.row_lanes,
                                          depth=p.wbuf_rows, init=[])
        m.submodules.abuf = abuf = Memory(shape=p.port_bits, depth=p.abuf_rows, init=[])
        # N:M words write half rows: an enable per `port_bytes` lanes.
        gran = {"granularity": p.wbuf_lane_bits * p.port_bytes} if p.nm else {}
        wbuf_w, (wbuf_r, wbuf_data) = wbuf.write_port(**gran), read_port(m, wbuf)
        abuf_w, (abuf_r, abuf_data) = abuf.write_port(), read_port(m, abuf)
        if p.acc_in_lanes:
            m.d.comb += store.c_rdata.eq(comp.acc_out)
        else:
            m.submodules.accbuf = accbuf = Memory(shape=p.lanes * p.acc_bits,
                                                  depth=p.acc_groups, init=[])
            acc_w = accbuf.write_port()
            # A MATMUL accumulating onto the group the previous one writes in the same cycle
            # reads through the write (back-to-back issue).
            acc_rc = accbuf.read_port(transparent_for=(acc_w,))
            acc_rs = accbuf.read_port()
            m.d.comb += [
                acc_rc.addr.eq(comp.c_raddr), comp.c_rdata.eq(acc_rc.data),
                acc_w.en.eq(comp.c_we & run), acc_w.addr.eq(comp.c_waddr),
                acc_w.data.eq(comp.c_wdata),
                acc_rs.addr.eq(store.c_raddr), store.c_rdata.eq(acc_rs.data),
            ]
        w_en = load.w_en & run.replicate(len(load.w_en))
        if p.registered_weight_write:
            # The decoded row is written the next cycle: the decoder's block RAM tables then
            # feed registers (their own output registers on the ECP5), and only the choice of
            # encoding lies before the weight buffer's block RAMs across the die. The LOAD
            # unit's row already comes a cycle late (`rtl.decoder`); its enable and address are
            # registered here. No cycle changes: a LOAD retires with its last write requested,
            # its consumers issue a cycle later at the earliest and read a cycle after that.
            w_en, w_addr = registered(m, "wbuf_w_", en=w_en, addr=load.w_addr)
        else:
            w_addr = load.w_addr
        w_data = load.w_data
        a_en, a_addr, a_data = load.a_en & run, load.a_addr, load.a_data
        if p.registered_act_write:
            # The same for an activation word, for the same reason: no cycle changes.
            a_en, a_addr, a_data = registered(m, "abuf_w_", en=a_en, addr=a_addr, data=a_data)
        m.d.comb += [
            wbuf_w.en.eq(w_en), wbuf_w.addr.eq(w_addr), wbuf_w.data.eq(w_data),
            abuf_w.en.eq(a_en), abuf_w.addr.eq(a_addr), abuf_w.data.eq(a_data),
            wbuf_r.addr.eq(comp.w_addr), comp.w_data.eq(wbuf_data),
            abuf_r.addr.eq(comp.a_addr), comp.a_data.eq(abuf_data),
        ]

        # -- memory port: requests leave only while running; responses are always taken ---------
        m.d.comb += [
            self.rd_req.payload.eq(load.rd_req.payload),
            self.rd_req.valid.eq(load.rd_req.valid & run),
            load.rd_req.ready.eq(self.rd_req.ready),
            load.rd_resp.payload.eq(self.rd_resp.payload),
            load.rd_resp.valid.eq(self.rd_resp.valid & run),
            self.rd_resp.ready.eq(1),
            self.wr_req.payload.eq(store.wr_req.payload),
            self.wr_req.valid.eq(store.wr_req.valid & run),
            store.wr_req.ready.eq(self.wr_req.ready),
        ]
        req = self.rd_req.valid & self.rd_req.ready
        resp = self.rd_resp.valid
        with m.If(req & ~resp):
            m.d.sync += [outstanding.eq(outstanding + 1), quiet.eq(0)]
        with m.Elif(resp & ~req & ~quiet):
            m.d.sync += [outstanding.eq(outstanding - 1), quiet.eq(outstanding == 1)]

        # -- dependency tokens -----------------------------------------------------------------
        # (producer push, consumer pop, the consumer's availability input)
        links = {
            "l2c": (load.push_next, comp.pop_prev, comp.tok_prev),
            "c2l": (comp.push_prev, load.pop_next, load.tok_next),
            "c2s": (comp.push_next, store.pop_prev, store.tok_prev),
            "s2c": (store.push_prev, comp.pop_next, comp.tok_next),
        }
        # A token overflow is reported a cycle after the push (see below). Each link's overflow
        # and its pusher's pc are registered as they happen, and one is chosen after those
        # registers, the last by link order (as the simulator reports it): the push and the pop
        # come from the units' retire and issue decisions, which are as deep as a cycle allows.
        overflow_q = Signal()
        overflow_pc_q = Signal(PC_BITS)
        pusher_pc = {"l2c": load.retire_pc, "c2l": comp.retire_pc, "c2s": comp.retire_pc,
                     "s2c": store.retire_pc}
        # Beside each count, flags for "empty" and "full" worked out a cycle ahead.
        for name, (push, pop, avail) in links.items():
            count = Signal(range(p.token_depth + 1), name=f"tokens_{name}")
            some = Signal(name=f"tokens_{name}_some")
            full = Signal(name=f"tokens_{name}_full")
            over_q = Signal(name=f"tokens_{name}_over")
            over_pc_q = Signal(PC_BITS, name=f"tokens_{name}_over_pc")
            m.d.comb += avail.eq(some)
            m.d.sync += [over_q.eq(run & ~begin & push & ~pop & full),
                         over_pc_q.eq(pusher_pc[name])]
            with m.If(over_q):
                m.d.comb += [overflow_q.eq(1), overflow_pc_q.eq(over_pc_q)]
            with m.If(run & ~begin):
                with m.If(push & ~pop & ~full):
                    m.d.sync += [count.eq(count + 1), some.eq(1),
                                 full.eq(count == p.token_depth - 1)]
                with m.Elif(pop & ~push):
                    m.d.sync += [count.eq(count - 1), some.eq(count != 1), full.eq(0)]
            with m.Elif(begin):
                m.d.sync += [count.eq(0), some.eq(0), full.eq(0)]

        # -- drain, deadlock, status -----------------------------------------------------------
        idle = [~un.active & ~heads[u] for u, un in units.items()]
        m.d.comb += disp.drained.eq(idle[0] & idle[1] & idle[2])
        stuck_units = [~un.active & (un.blocked | ~heads[u]) for u, un in units.items()]
        any_blocked = load.blocked | comp.blocked | store.blocked
        halt_waiting = (disp.error == ErrorCode.NONE) & ~disp.halted & \
            (Signal.cast(disp.dispatch) == 0) & ~disp.stall
        deadlock = run & any_blocked & stuck_units[0] & stuck_units[1] & stuck_units[2] & \
            (disp.stall | halt_waiting)

        # A deadlock persists (nothing can move), so it is reported from a register: one cycle
        # after the cycle that shows it. A token overflow is reported the same way, a cycle
        # after the push.
        deadlock_q = Signal()
        m.d.sync += deadlock_q.eq(deadlock)

        # Status stops on any error source at once. The code and pc of the first by priority
        # are chosen one cycle later, from registered copies of every source: `error` and
        # `error_pc` are valid from the second cycle in which status is ERROR.
        # By priority: (raised, error, its pc). Whether a source raises an error is a one-bit
        # `fault` worked out beside its code, not a comparison after the code's multiplexers.
        sources = [
            (load.fault, load.error, load.error_pc), (comp.fault, comp.error, comp.error_pc),
            (store.fault, store.error, store.error_pc),
            (overflow_q, Mux(overflow_q, ErrorCode.TOKEN_OVERFLOW, ErrorCode.NONE),
             overflow_pc_q),
            (disp.fault, disp.error, disp.pc),
            (deadlock_q, Mux(deadlock_q, ErrorCode.DEADLOCK, ErrorCode.NONE), disp.pc),
        ]
        pc_bits = (p.imem_depth - 1).bit_length()
        raised = Signal()
        m.d.comb += raised.eq(Cat(*[fault for fault, _, _ in sources]).any())
        stopped = Signal()      # status went ERROR in this cycle
        codes_q = [Signal(ErrorCode, name=f"stop_code_{i}") for i in range(len(sources))]
        pcs_q = [Signal(pc_bits, name=f"stop_pc_{i}") for i in range(len(sources))]
        m.d.sync += stopped.eq(run & raised)
        m.d.sync += [r.eq(code) for r, (_, code, _) in zip(codes_q, sources)]
        m.d.sync += [r.eq(pc) for r, (_, _, pc) in zip(pcs_q, sources)]

        with m.If(begin):
            m.d.sync += [status.eq(Status.RUNNING), run.eq(1), error.eq(ErrorCode.NONE),
                         error_pc.eq(0)]
        with m.Elif(run):
            with m.If(raised):
                m.d.sync += [status.eq(Status.ERROR), run.eq(0)]
            with m.Elif(disp.halted):
                m.d.sync += [status.eq(Status.DONE), run.eq(0)]
        with m.Elif(stopped):
            for i in reversed(range(len(sources))):
                with m.If(codes_q[i] != ErrorCode.NONE):
                    m.d.sync += [error.eq(codes_q[i]), error_pc.eq(pcs_q[i])]

        # -- retire ports and counters ---------------------------------------------------------
        for u, un in units.items():
            m.d.comb += [self.retire_valid[u].eq(un.retire & run),
                         self.retire_pc[u].eq(un.retire_pc)]
        m.d.comb += [self.retire_valid[Unit.DISPATCH].eq(disp.halted & run),
                     self.retire_pc[Unit.DISPATCH].eq(disp.pc)]

        # COMPUTE's zero bits are counted in three cycles: partial counts of ZERO_CHUNK rows into
        # registers, sums of ZERO_GROUP of those into registers, then the sum of the groups
        # times the token lanes they count for (one adder tree over 160 rows, then one over
        # ten partial counts, was the ULX3S chip's critical path). These registers run
        # whenever the clock does: the units are frozen once the run ends, and the last
        # cycle's count must still come through.
        parts = []
        for i in range(0, p.row_lanes, ZERO_CHUNK):
            rows = comp.zero_rows[i:i + ZERO_CHUNK]
            part = Signal(range(len(rows) + 1), name=f"zeros_{i // ZERO_CHUNK}")
            m.d.sync += part.eq(popcount(rows))
            parts.append(part)
        groups = []
        for i in range(0, len(parts), ZERO_GROUP):
            rows = min(ZERO_GROUP * ZERO_CHUNK, p.row_lanes - i * ZERO_CHUNK)
            group = Signal(range(rows + 1), name=f"zero_group_{i // ZERO_GROUP}")
            m.d.sync += group.eq(tree_sum(parts[i:i + ZERO_GROUP]))
            groups.append(group)
        # The token lanes the rows count for, as a number (counted beside the partial counts):
        # the last stage adds the groups once and picks k times the sum by a case on k, each
        # k's shifts and adds of constants (none for k <= 2), instead of adding a copy of the
        # sum per token lane after it.
        tokens_1 = Signal(range(p.token_lanes + 1))
        tokens = Signal.like(tokens_1)
        m.d.sync += [tokens_1.eq(popcount(comp.zero_tokens)), tokens.eq(tokens_1)]
        zeros = tree_sum(groups)
        skipped = Signal(range(p.row_lanes * p.token_lanes + 1))
        with m.Switch(tokens):
            for k in range(1, p.token_lanes + 1):
                with m.Case(k):
                    m.d.comb += skipped.eq(tree_sum(zeros << b for b in range(k.bit_length())
                                                    if k >> b & 1))

        increments = {
            Counter.CYCLES: 1,
            Counter.BUSY_LANE_CYCLES: comp.busy_lanes,
            Counter.SKIPPED_ZERO: skipped,
            Counter.BYTES_READ: Mux(load.rd_resp.valid, p.port_bytes, 0),
            Counter.BYTES_WRITTEN: Mux(self.wr_req.valid & self.wr_req.ready, p.port_bytes, 0),
            Counter.STALL_LOAD_DEP: load.stall_dep,
            Counter.STALL_COMPUTE_DEP: comp.stall_dep,
            Counter.STALL_STORE_DEP: store.stall_dep,
            Counter.STALL_READ_PORT: load.stall_port,
            Counter.STALL_WRITE_PORT: store.stall_port,
            Counter.STALL_DISPATCH: disp.stall,
        }
        assert set(increments) == set(Counter)
        # Each increment is registered, so that the stall and issue logic behind it and the
        # counter's carry chain are in different cycles: a counter adds what happened in a cycle
        # one cycle later. Zero weights reach `skipped` three cycles late (COMPUTE's register,
        # the partial counts and the group sums), so that counter is final three cycles later
        # still: from the COUNTERS_FINAL-th cycle in which `status` is not RUNNING. Its
        # increments are counted when the cycle they describe was a RUNNING one of this run.
        ran = Signal()          # the previous cycle was a RUNNING one
        ran2 = Signal()         # ... and the one before it, since the last start
        ran3 = Signal()         # ... and the one before that
        m.d.sync += [ran.eq(run), ran2.eq(ran & ~begin), ran3.eq(ran2 & ~begin)]
        counted = {Counter.SKIPPED_ZERO: ran3 & ~begin}
        # The counters clear in the cycle after the start, from a flip-flop (`begin` is logic,
        # and its route to every counter bit was long): the increment they add then is the
        # start cycle's, which is never counted.
        begun = Signal()
        m.d.sync += begun.eq(begin)
        for c, inc in increments.items():
            inc_q = Signal(Value.cast(inc).shape(), name=f"inc_{c.name.lower()}")
            m.d.sync += inc_q.eq(Mux(counted.get(c, run), inc, 0))
            with m.If(begun):
                m.d.sync += self.counters[c].eq(0)
            with m.Else():
                m.d.sync += self.counters[c].eq(self.counters[c] + inc_q)
        return m


def write_verilog(params: ArrayParams, path: Path) -> Path:
    """Write the accelerator at `params` as Verilog (top module `ternary_accel`)."""
    return write_component(Accelerator(params), "ternary_accel", path)


def write_component(component, name: str, path: Path) -> Path:
    """Write `component` as Verilog with top module `name`; no partial file on failure."""
    text = verilog.convert(component, name=name, strip_internal_attrs=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".v.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m rtl.top", description=__doc__.split("\n")[0])
    ap.add_argument("--verilog", metavar="DIR", type=Path, required=True,
                    help="write DIR/<scale point>.v")
    ap.add_argument("points", nargs="*", default=list(SCALE_POINTS),
                    help=f"scale points (default: all of {', '.join(SCALE_POINTS)})")
    args = ap.parse_args(argv)
    try:
        params = [scale_point(n) for n in args.points]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prm in params:
        out = write_verilog(prm, args.verilog / f"{prm.name}.v")
        print(f"{prm.name}: {prm.lanes} lanes ({prm.row_lanes} rows x {prm.token_lanes} tokens), "
              f"{prm.port_bits}-bit port -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
