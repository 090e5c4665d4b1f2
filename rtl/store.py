"""The STORE unit: accumulator groups to the write channel as little-endian int32."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .compute import groups_past
from .isa import INSTR_BITS, PC_BITS, ErrorCode, Opcode, instr_layout
from .load import ADDR_BITS
from .memport import COPY_ATTR
from .params import OUT_BYTES, ArrayParams

__all__ = ["StoreUnit", "write_layout"]


def select(values: list, index):
    """values[index] as a balanced tree of 2-way muxes on the bits of `index` (indexing an
    Array gave a chain of comparisons, as deep as there are values)."""
    level = 0
    while len(values) > 1:
        values = [Mux(index[level], values[i + 1], values[i]) if i + 1 < len(values)
                  else values[i] for i in range(0, len(values), 2)]
        level += 1
    return values[0]


def write_layout(params: ArrayParams) -> data.StructLayout:
    """Payload of a write request: a word address and one word of data."""
    return data.StructLayout({"addr": ADDR_BITS, "data": params.port_bits})


class StoreUnit(wiring.Component):
    """Execute STOREs: for each token, `words` words of its results, rows in order.

    Word w of token t holds rows w * port_bytes/4 .. of token t, each sign-extended to 32 bits,
    and goes to address dram + t * stride + w (computed by adding, never multiplying).

    Timing (an always-ready port): a STORE taken at cycle s writes in cycles
    s+1 .. s + tokens*words and retires in the cycle of its last write, in which the next STORE
    can be taken.

    Members
    -------
    head_valid, head_pc, head_instr : In
    head_err, head_bad : In(ErrorCode), In(1) (only when `predecoded`)
        `static_error` of the head, computed when the program was written.
    take : Out(1)
    tok_prev : In(1)
    pop_prev, push_prev : Out(1)
    c_raddr : Out, c_rdata : In
        Accumulator buffer read port.
    wr_req : Out(stream.Signature(write_layout))
    retire, retire_pc, error, error_pc, active, blocked, stall_dep, stall_port : Out
    fault : Out(1)
        `error` is not NONE (one bit, from the conditions rather than the code).
    """

    def __init__(self, params: ArrayParams, predecoded: bool = False):
        self.params = params
        self.predecoded = predecoded
        p = params
        super().__init__({
            **({"head_err": In(ErrorCode), "head_bad": In(1)} if predecoded else {}),
            "head_valid": In(1), "head_pc": In(PC_BITS), "head_instr": In(INSTR_BITS),
            "take": Out(1), "tok_prev": In(1), "pop_prev": Out(1), "push_prev": Out(1),
            "c_raddr": Out(range(p.acc_groups)), "c_rdata": In(p.lanes * p.acc_bits),
            "wr_req": Out(stream.Signature(write_layout(p))),
            "retire": Out(1), "retire_pc": Out(PC_BITS),
            "error": Out(ErrorCode), "error_pc": Out(PC_BITS), "fault": Out(1),
            "active": Out(1), "blocked": Out(1), "stall_dep": Out(1), "stall_port": Out(1),
        })

    @staticmethod
    def static_error(m, p: ArrayParams, instr) -> Signal:
        """What STORE `instr` alone refuses at issue (BAD_FIELD, BAD_ADDRESS) or NONE: the
        checks that need no state, done once when the program is written (`rtl.predecode`)."""
        head = data.View(instr_layout(Opcode.STORE), instr)
        err = Signal(ErrorCode)
        with m.If((head.tokens == 0) | (head.words == 0) |
                  (head.words > p.out_words_per_token) | (head.tokens > p.max_tokens)):
            m.d.comb += err.eq(ErrorCode.BAD_FIELD)
        with m.Elif(groups_past(head.acc, head.tokens, p)):
            m.d.comb += err.eq(ErrorCode.BAD_ADDRESS)
        return err

    def elaborate(self, platform):
        m = Module()
        p = self.params
        lay = instr_layout(Opcode.STORE)
        head = data.View(lay, self.head_instr)

        running = Signal()
        pc = Signal(PC_BITS)
        acc_g = Signal(len(head.acc) + 1)
        tokens_left = Signal.like(head.tokens)
        words_m2 = Signal.like(head.words)     # words - 2, the word before the last
        addr = Signal(ADDR_BITS)
        stride = Signal(ADDR_BITS)
        word = Signal.like(head.words)
        lane = Signal(range(p.token_lanes))
        push_prev = Signal()
        # Flags worked out a cycle ahead, so that no comparison lies before `finishing`.
        last_word = Signal()    # word == words - 1
        one_word = Signal()     # words == 1
        last_token = Signal()   # tokens_left == 1

        head_err = self.head_err if self.predecoded else self.static_error(m, p, self.head_instr)
        head_bad = self.head_bad if self.predecoded else head_err != ErrorCode.NONE
        m.d.comb += self.c_raddr.eq(acc_g)
        finishing = Signal()
        # The word written: int32 i of it is row w * port_bytes/4 + i of token lane `lane`. Each
        # int32 picks its row by a copy of `word` and `lane` of its own (`COPY_ATTR`): the
        # pick's first muxes reach some 3,700 inputs on the ULX3S, too many for one register.
        per_word = p.port_bytes // OUT_BYTES
        sel = [(Signal.like(word, name=f"word_{i}", attrs={COPY_ATTR: 1}),
                Signal.like(lane, name=f"lane_{i}", attrs={COPY_ATTR: 1}))
               for i in range(per_word)]

        def set_word(v):
            m.d.sync += [word.eq(v), *(w.eq(v) for w, _ in sel)]

        def set_lane(v):
            m.d.sync += [lane.eq(v), *(t.eq(v) for _, t in sel)]

        parts = []
        for i, (word_i, lane_i) in enumerate(sel):
            table = []
            for j in range(p.token_lanes):
                idx = [j * p.row_lanes + w * per_word + i for w in range(p.out_words_per_token)]
                table.append(select([self.c_rdata[x * p.acc_bits:(x + 1) * p.acc_bits]
                                     for x in idx], word_i))
            v = select(table, lane_i)
            parts.append(Cat(v, v[-1].replicate(8 * OUT_BYTES - p.acc_bits)))
        out_word = Cat(*parts)

        with m.If(running):
            m.d.comb += [self.wr_req.valid.eq(1), self.wr_req.payload.addr.eq(addr + word),
                         self.wr_req.payload.data.eq(out_word)]
            with m.If(~self.wr_req.ready):
                m.d.comb += self.stall_port.eq(1)
            with m.Elif(last_word):
                m.d.sync += [last_word.eq(one_word), addr.eq(addr + stride),
                             tokens_left.eq(tokens_left - 1), last_token.eq(tokens_left == 2)]
                set_word(0)
                with m.If(last_token):
                    m.d.sync += running.eq(0)
                    m.d.comb += finishing.eq(1)
                    m.d.comb += [self.retire.eq(1), self.retire_pc.eq(pc),
                                 self.push_prev.eq(push_prev)]
                with m.Elif(lane == p.token_lanes - 1):
                    # Read the next group now so its data is there for the next word.
                    m.d.sync += acc_g.eq(acc_g + 1)
                    set_lane(0)
                    m.d.comb += self.c_raddr.eq(acc_g + 1)
                with m.Else():
                    set_lane(lane + 1)
            with m.Else():
                m.d.sync += last_word.eq(word == words_m2)
                set_word(word + 1)
        # The next STORE may issue in the cycle of this one's last write: no bubble.
        # (Written after the write logic so its register updates and read address win.)
        with m.If((~running | finishing) & self.head_valid):
            m.d.comb += self.c_raddr.eq(head.acc)
            with m.If(head.pop_prev & ~self.tok_prev):
                m.d.comb += [self.blocked.eq(1), self.stall_dep.eq(1)]
            with m.Elif(head_bad):
                m.d.comb += [self.error.eq(head_err), self.error_pc.eq(self.head_pc),
                             self.fault.eq(1)]
            with m.Else():
                m.d.comb += [self.take.eq(1), self.pop_prev.eq(head.pop_prev)]
                m.d.sync += [
                    running.eq(1), pc.eq(self.head_pc), acc_g.eq(head.acc),
                    tokens_left.eq(head.tokens), words_m2.eq((head.words - 2)[:len(words_m2)]),
                    addr.eq(head.dram),
                    stride.eq(head.stride),
                    push_prev.eq(head.push_prev), one_word.eq(head.words == 1),
                    last_word.eq(head.words == 1), last_token.eq(head.tokens == 1),
                ]
                set_word(0)
                set_lane(0)

        m.d.comb += self.active.eq(running)
        return m
