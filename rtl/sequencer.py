"""The dispatcher: fetch from program memory, decode the header, hand out to the unit queues."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import INSTR_BITS, PC_BITS, ErrorCode, Unit
from .memport import read_port, registered
from .params import ArrayParams
from .predecode import Predecoder, pre_layout

__all__ = ["Dispatcher", "PC_BITS"]


class Dispatcher(wiring.Component):
    """Fetch one instruction per cycle and dispatch it in order to its unit's queue.

    Timing: the start cycle reads address 0; from then on the instruction at `pc` is decoded in
    the cycle after it was read (with `ArrayParams.prefetch`, two cycles after: the first
    decode is a cycle later, and a stream still leaves one per cycle). A dispatch is written
    into the unit queue at the end of its cycle and the next instruction is decoded in the next
    cycle, so one instruction per cycle leaves while the queues have room. A HALT waits until
    `drained`, then retires.

    Members
    -------
    imem_we, imem_addr, imem_data : In
        Program memory write port, for the host between runs.
    start : In(1)
        Begin fetching at address 0 (the first decode is in the next cycle).
    run : In(1)
        The accelerator is running; nothing is decoded otherwise.
    dispatch : Out(4)
        One-hot by `Unit`: the decoded instruction goes to that unit's queue this cycle.
    offer : Out(4)
        With `queue_depth` 0 (no queues): one-hot by `Unit`, the decoded instruction is that
        unit's head this cycle; the unit takes it straight from here.
    full : In(3)
        Per LOAD/COMPUTE/STORE: its queue cannot take an instruction this cycle (with no
        queues: the unit does not take the offered instruction).
    drained : In(1)
        Every queue is empty and every unit idle.
    instr, pc : Out
        The decoded instruction word and its address.
    unit_err : Out(ErrorCode)
        The decoded instruction's static error in its unit (`rtl.predecode`), for the unit.
    unit_bad : Out(1)
        `unit_err` is not NONE (predecoded, a single bit for the unit's issue decision).
    refuse0, single : Out(1)
        Predecoded (`rtl.predecode`): a MATMUL's first token group or a LOAD's first row is
        out of range; a LOAD is a single request.
    halted : Out(1)
        A HALT retires this cycle.
    stall : Out(1)
        An instruction waits for a full queue this cycle.
    error : Out(ErrorCode)
        Nonzero in a cycle where the decoded instruction is malformed.
    fault : Out(1)
        `error` is not NONE (one bit, from the conditions rather than the code).
    """

    def __init__(self, params: ArrayParams):
        self.params = params
        assert params.imem_depth <= 1 << PC_BITS
        super().__init__({
            "imem_we": In(1), "imem_addr": In(range(params.imem_depth)),
            "imem_data": In(INSTR_BITS),
            "start": In(1), "run": In(1),
            "dispatch": Out(len(Unit)), "offer": Out(len(Unit)), "full": In(3),
            "drained": In(1),
            "instr": Out(INSTR_BITS), "pc": Out(PC_BITS), "unit_err": Out(ErrorCode),
            "unit_bad": Out(1), "refuse0": Out(1), "single": Out(1),
            "halted": Out(1), "stall": Out(1), "error": Out(ErrorCode),
            "fault": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        # Beside each instruction, in a memory of its own, its predecode (`rtl.predecode`). A
        # word never written reads as an illegal opcode, as the ISA promises.
        erased = pre_layout.const({"disp_err": ErrorCode.ILLEGAL_OPCODE}).as_value().value
        m.submodules.imem = imem = Memory(shape=INSTR_BITS, depth=p.imem_depth, init=[])
        m.submodules.pmem = pmem = Memory(shape=pre_layout.size, depth=p.imem_depth,
                                          init=[erased] * p.imem_depth)
        m.submodules.predecoder = predecoder = Predecoder(p)
        # A host write stores the instruction at once and its predecode a cycle later: the
        # predecoder registers its checks half way (its carry chains lie between registers, not
        # in front of the memory). The predecode port reads through that write, so a run may
        # start in the cycle after the last write.
        wp, wp_pre = imem.write_port(), pmem.write_port()
        pre_we, pre_addr = registered(m, "pre_", we=self.imem_we, addr=self.imem_addr)
        m.d.comb += [wp.en.eq(self.imem_we), wp.addr.eq(self.imem_addr),
                     wp.data.eq(self.imem_data), predecoder.instr.eq(self.imem_data),
                     wp_pre.en.eq(pre_we), wp_pre.addr.eq(pre_addr),
                     wp_pre.data.eq(predecoder.pre)]
        advance = Signal()
        # The instruction being decoded is there (only `prefetch` ever lacks one: in the first
        # cycle after start).
        head_v = Signal()
        if p.prefetch:
            # Every word read passes through flip-flops before any decision sees it: the read
            # word `r` (registered as it leaves the block RAM, every cycle), and behind the
            # instruction being decoded a queue of up to two, `q`, that holds what arrived while
            # it waited. Words read and not yet taken (in `q`, in `r` and at the memories'
            # output) are one or two: a word is read when one is taken (`advance`) or only one
            # is there (`few`, a register), so a stall loses nothing and a stream goes on at one
            # instruction per cycle. The first instruction is decoded in the second cycle after
            # start instead of the first.
            rp, fetched = read_port(m, imem)
            rp_pre = pmem.read_port(transparent_for=(wp_pre,))
            width = INSTR_BITS + pre_layout.size
            r = Signal(width, reset_less=True)
            q = [Signal(width, reset_less=True, name=f"q{i}") for i in range(2)]
            # `start` reads address 0: the memories' output then holds a wanted word and the
            # next read is at 1 (the initial values are the same, for a reset by `start`).
            f_v = Signal(init=1)            # the memories' output is a word read for the queue
            r_v = Signal()                  # `r` holds one
            n_q = Signal(range(3))          # words in `q`
            some_q = Signal()               # n_q != 0, as a register
            few = Signal(init=1)            # one word read and not taken (else two)
            fa = Signal(PC_BITS, init=1)    # the next address to read
            m.d.sync += r.eq(Cat(fetched, rp_pre.data))
            head = Mux(some_q, q[0], r)
            m.d.comb += [head_v.eq(some_q | r_v), rp.addr.eq(fa)]
            instr, pre_word = head[:INSTR_BITS], head[INSTR_BITS:]
            pop = advance
            read = few | pop
            with m.If(read):
                m.d.sync += fa.eq(fa + 1)
            # A pop reads one in its place; otherwise a single word gets a second one behind it.
            m.d.sync += [f_v.eq(read), r_v.eq(f_v), few.eq(few & pop)]
            # After the pop, what waits (q, then r) is the queue; the memories' word moves to r.
            with m.If(pop & ~r_v):
                m.d.sync += [n_q.eq(n_q - 1), some_q.eq(n_q == 2)]
            with m.Elif(~pop & r_v):
                m.d.sync += [n_q.eq(n_q + 1), some_q.eq(1)]
            with m.If(self.start):
                m.d.sync += [fa.eq(1), f_v.eq(1), r_v.eq(0), n_q.eq(0), some_q.eq(0), few.eq(1)]
            with m.If(pop):
                with m.If(n_q == 1):        # q0 taken: r (if any) moves up
                    m.d.sync += q[0].eq(r)
                with m.Elif(n_q == 2):      # q0 taken: q1 moves up (r is empty when q is full)
                    m.d.sync += q[0].eq(q[1])
            with m.Elif(n_q == 0):          # nothing taken: r (if any) waits
                m.d.sync += q[0].eq(r)
            with m.Elif(n_q == 1):
                m.d.sync += q[1].eq(r)
        elif p.held_fetch:
            # The memories read every cycle, at pc + 1 (or 0 at start), and the instruction
            # being decoded is the word read last cycle after an advance, else a copy held in
            # flip-flops: no issue decision reaches a block RAM's enable or address.
            rp, fetched = read_port(m, imem)
            rp_pre = pmem.read_port(transparent_for=(wp_pre,))
            # The last cycle started or advanced (`start` resets this module: to 1).
            moved = Signal(init=1)
            held = Signal.like(fetched, reset_less=True)
            held_pre = Signal(pre_layout.size, reset_less=True)
            instr, pre_word = Signal.like(fetched), Signal(pre_layout.size)
            m.d.sync += [moved.eq(self.start | advance), held.eq(instr), held_pre.eq(pre_word)]
            m.d.comb += [instr.eq(Mux(moved, fetched, held)),
                         pre_word.eq(Mux(moved, rp_pre.data, held_pre)), head_v.eq(1)]
        else:
            # The read ports hold their data while not enabled, so a stalled instruction stays
            # put.
            rp, instr = read_port(m, imem, en=self.start | advance)
            rp_pre = pmem.read_port(transparent_for=(wp_pre,))
            m.d.comb += [rp_pre.en.eq(self.start | advance), head_v.eq(1)]
            pre_word = rp_pre.data
        m.d.comb += rp_pre.addr.eq(rp.addr)

        # pc + 1 and "pc is the last address" are registers, so that `advance` (the units'
        # issue decisions) only selects the next read address.
        pc = Signal(PC_BITS)
        # (Their initial values are what `start`, which also resets this module, sets.)
        pc_next = Signal(PC_BITS, init=1)
        last = Signal(init=p.imem_depth == 1)
        pre = data.View(pre_layout, pre_word)
        m.d.comb += [self.instr.eq(instr), self.pc.eq(pc),
                     self.unit_err.eq(pre.unit_err), self.unit_bad.eq(pre.bad),
                     self.refuse0.eq(pre.refuse0), self.single.eq(pre.single)]
        if not p.prefetch:
            # The port reads only when it advances (or starts): its address need not wait for
            # the issue decisions behind `advance`.
            m.d.comb += rp.addr.eq(pc_next)
        with m.If(self.start):
            m.d.sync += [pc.eq(0), pc_next.eq(1), last.eq(p.imem_depth == 1)]
            m.d.comb += rp.addr.eq(0)
        with m.Elif(advance):
            m.d.sync += [pc.eq(pc_next), pc_next.eq(pc_next + 1),
                         last.eq(pc_next == p.imem_depth - 1)]

        # One bit per decision: `go` is the predecoded "no dispatcher error, to this unit".
        go = pre.go
        with m.If(self.run & head_v):
            with m.If(pre.disp_err != ErrorCode.NONE):
                m.d.comb += [self.error.eq(pre.disp_err), self.fault.eq(1)]
            with m.Elif(go[Unit.DISPATCH]):
                m.d.comb += self.halted.eq(self.drained)
            # Fetching past the last address would wrap: a program must end in HALT. With queues
            # a full one stalls first; with none the unit would see the instruction now, so the
            # last address is refused before it is offered.
            with m.Elif(last if p.queue_depth == 0 else
                        last & ~(Signal.cast(go)[:3] & self.full).any()):
                m.d.comb += [self.error.eq(ErrorCode.NO_HALT), self.fault.eq(1)]
        for u in (Unit.LOAD, Unit.COMPUTE, Unit.STORE):
            # (With queues, a full queue stalls even the instruction at the last address.)
            here = self.run & head_v & go[u] & \
                (~last if p.queue_depth == 0 else ~last | self.full[u])
            if p.queue_depth == 0:
                m.d.comb += self.offer[u].eq(here)
            with m.If(here):
                with m.If(self.full[u]):
                    m.d.comb += self.stall.eq(1)
                with m.Else():
                    m.d.comb += [advance.eq(1), self.dispatch[u].eq(1)]
        return m
