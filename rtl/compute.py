"""The COMPUTE unit: the lane array and the MATMUL sequencer that feeds it."""

from amaranth.hdl import Array, Cat, Const, DomainRenamer, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .isa import INSTR_BITS, NM_M, NM_MIN_N, PC_BITS, ErrorCode, Opcode, instr_layout
from .lane import TernaryLane
from .memport import copies, registered
from .params import ArrayParams

__all__ = ["ComputeUnit", "groups_past", "popcount", "sum_exceeds", "tree_sum"]


def popcount(bits):
    """A balanced adder tree over the bits of a value (no multiplier); pass a named Signal."""
    return tree_sum([bits[i] for i in range(len(bits))])


def groups_past(acc, tokens, p: ArrayParams):
    """Whether `tokens` tokens from accumulator group `acc` run past the accumulator buffer:
    acc + ceil(tokens / token_lanes) > acc_groups, as acc * token_lanes + tokens >
    acc_groups * token_lanes (one carry chain, `sum_exceeds`, not three: ceil(t / L) > k
    exactly when t > L * k)."""
    shift = p.token_lanes.bit_length() - 1
    return sum_exceeds(acc << shift, tokens, Const(0, 1), p.acc_groups << shift)


def sum_exceeds(a, b, carry, limit: int):
    """Whether a + b + carry > `limit` (a, b unsigned, `carry` one bit, `limit` >= 0 a
    constant), in one carry chain: a + b + (2**w - limit - 1), with the constant folded in by a
    carry-save step (per bit a LUT: the sum and the carry of a, b and the constant's bit), is
    at least 2**w exactly then. A sum and a comparison would be two carry chains in a row."""
    w = max(len(a), len(b), limit.bit_length()) + 1
    k = (1 << w) - limit - 1
    a, b = a.as_unsigned(), b.as_unsigned()
    bits_a = [a[i] if i < len(a) else Const(0, 1) for i in range(w)]
    bits_b = [b[i] if i < len(b) else Const(0, 1) for i in range(w)]
    pairs = list(enumerate(zip(bits_a, bits_b)))
    s = Cat(*[~(x ^ y) if k >> i & 1 else x ^ y for i, (x, y) in pairs])
    c = Cat(*[(x | y) if k >> i & 1 else x & y for i, (x, y) in pairs])
    # s + 2c + carry: the carry enters as the chain's carry in (the low bit of both operands).
    total = Cat(carry, s) + Cat(Const(1, 1), Const(0, 1), c)
    return total[w + 1:] != 0


def tree_sum(terms):
    """A balanced adder tree over `terms` (no multiplier)."""
    terms = list(terms)
    if not terms:
        return Const(0, 1)
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


class ComputeUnit(wiring.Component):
    """Execute MATMULs on `row_lanes` x `token_lanes` ternary lanes.

    For each group of `token_lanes` tokens and each column k < k_len, one cycle: every lane
    (r, j) adds, subtracts or skips activation x[j, k] by weight w[r, k]. Columns come from the
    weight buffer (row wbuf + k); a group's activations sit at activation-buffer rows from
    abuf + g * x_stride on, token j of column k at byte k * token_lanes + j. A group's sums are
    written to accumulator group acc + g after its last column.

    With the MATMUL field nm = N (scale points with the NM encoding), a group of 8 columns takes
    N cycles, one per slot: weight row wbuf + q*N + c holds slot c of column group q, and lane
    (r, j) takes activation x[j, 8q + (c + d_r) mod 8], d_r the slot offset of row r (an 8-way
    select per lane). Everything else runs as for k_len = (k_len / 8) * N columns.

    Timing: a MATMUL taken at cycle s reads in cycles s+1 .. s+G*k_len (stage 0), picks each
    lane's operands from the words read one cycle later (stage 1: registers between the buffers
    and the lanes; two cycles later with `ArrayParams.registered_operands`, which registers the
    words first), adds one cycle after that (stage 2) and retires at s + G*k_len + d, d =
    `ArrayParams.matmul_drain`; the next MATMUL can be taken in cycle s + G*k_len, the last
    read cycle, so back-to-back MATMULs keep the lanes busy. A partial sum to accumulate onto
    is read in stage 1, so a MATMUL reads through the write of the group the previous one
    writes in the same cycle.

    Domains: held lanes (`ArrayParams.acc_in_lanes`), their step flags and their clear copies
    are in `lanes`; the words read, the row mask, the activations and signs registered for the
    lanes, the zero rows and the fields a MATMUL keeps while it runs are in `data`, the rest
    in `sync`. The accelerator freezes `sync`
    while it is not running, resets `lanes` instead (`rtl.top`): the flags are zero and the
    lanes keep their sums, while each accumulator's clock enable and reset come straight from
    a flip-flop; and neither freezes nor resets `data`, which counts only through a flag of
    `sync` or `lanes` (the freeze's enable then does not reach those wide registers). (An error
    that stops a MATMUL between stages lets the lanes finish the step in flight; the sums of
    a stopped MATMUL are unspecified either way.)

    Members
    -------
    head_valid, head_pc, head_instr : In
    head_err, head_bad : In(ErrorCode), In(1) (only when `predecoded`)
        `static_error` of the head, computed when the program was written; without
        `predecoded` the unit computes it from `head_instr`.
    head_refuse0 : In(1) (only when `predecoded`)
        `first_group_refused` of the head, likewise.
    take : Out(1)
    tok_prev, tok_next : In(1)
        A token from LOAD / from STORE is available.
    pop_prev, pop_next, push_prev, push_next : Out(1)
    w_addr : Out, w_data : In
        Weight buffer read port (data one cycle after the address).
    a_addr : Out, a_data : In
        Activation buffer read port.
    c_raddr : Out, c_rdata : In
        Accumulator buffer read port (partial sums when accumulating).
    c_we, c_waddr, c_wdata : Out
        Accumulator buffer write port.
    acc_out : Out (only with `ArrayParams.acc_in_lanes`)
        The lanes' accumulators, the one accumulator group, for STORE; the buffer ports are
        then unused.
    retire, retire_pc, error, error_pc, active, blocked, stall_dep : Out
    fault : Out(1)
        `error` is not NONE (one bit, from the conditions rather than the code).
    busy_lanes : Out
        Busy lane-cycles of this cycle's stage 1.
    zero_rows, zero_tokens : Out
        The previous cycle's stage 1, registered as it left the weight buffer: its rows with a
        zero weight, and its token lanes. Their zero-weight lane-cycles are the count of
        `zero_rows` for each set bit of `zero_tokens`; the accelerator counts them in stages.
    """

    def __init__(self, params: ArrayParams, predecoded: bool = False):
        self.params = params
        self.predecoded = predecoded
        p = params
        acc_row = p.lanes * p.acc_bits
        members = {"acc_out": Out(acc_row)} if p.acc_in_lanes else {}
        if predecoded:
            members["head_err"] = In(ErrorCode)
            members["head_bad"] = In(1)
            members["head_refuse0"] = In(1)
        super().__init__({
            **members,
            "head_valid": In(1), "head_pc": In(PC_BITS), "head_instr": In(INSTR_BITS),
            "take": Out(1), "tok_prev": In(1), "tok_next": In(1),
            "pop_prev": Out(1), "pop_next": Out(1), "push_prev": Out(1), "push_next": Out(1),
            "w_addr": Out(range(p.wbuf_rows)), "w_data": In(p.wbuf_lane_bits * p.row_lanes),
            "a_addr": Out(range(p.abuf_rows)), "a_data": In(p.port_bits),
            "c_raddr": Out(range(p.acc_groups)), "c_rdata": In(acc_row),
            "c_we": Out(1), "c_waddr": Out(range(p.acc_groups)), "c_wdata": Out(acc_row),
            "retire": Out(1), "retire_pc": Out(PC_BITS),
            "error": Out(ErrorCode), "error_pc": Out(PC_BITS), "fault": Out(1),
            "active": Out(1), "blocked": Out(1), "stall_dep": Out(1),
            "busy_lanes": Out(range(p.lanes + 1)),
            "zero_rows": Out(p.row_lanes), "zero_tokens": Out(p.token_lanes),
        })

    @staticmethod
    def steps(m, p: ArrayParams, head) -> Signal:
        """Steps per token group of MATMUL `head`: k_len, or (k_len / 8) * N slots, as shifts
        and adds."""
        steps = Signal(len(head.k_len) + 1)
        groups8 = head.k_len >> (NM_M.bit_length() - 1)
        if p.nm:
            m.d.comb += steps.eq(Mux(head.nm == 0, head.k_len,
                                     sum(Mux(head.nm[i], groups8 << i, 0)
                                         for i in range(len(head.nm)))))
        else:
            m.d.comb += steps.eq(head.k_len)
        return steps

    @classmethod
    def static_error(cls, m, p: ArrayParams, instr) -> Signal:
        """What MATMUL `instr` alone refuses at issue (BAD_FIELD, BAD_ADDRESS) or NONE: the
        checks that need no state, done once when the program is written (`rtl.predecode`)."""
        head = data.View(instr_layout(Opcode.MATMUL), instr)
        group_shift = NM_M.bit_length() - 1
        if p.nm:
            bad_nm = (head.nm != 0) & ((head.nm < NM_MIN_N) | (head.k_len[:group_shift] != 0))
        else:
            bad_nm = head.nm != 0
        steps = cls.steps(m, p, head)
        err = Signal(ErrorCode)
        with m.If((head.k_len == 0) | (head.tokens == 0) | (head.n_rows == 0) |
                  (head.n_rows > p.row_lanes) | (head.tokens > p.max_tokens) | bad_nm):
            m.d.comb += err.eq(ErrorCode.BAD_FIELD)
        with m.Elif((head.wbuf + steps > p.wbuf_rows) | groups_past(head.acc, head.tokens, p)):
            m.d.comb += err.eq(ErrorCode.BAD_ADDRESS)
        return err

    @staticmethod
    def group_rows(p: ArrayParams, head) -> tuple:
        """The activation buffer rows a token group of MATMUL `head` reads,
        ceil(k_len * token_lanes / port_bytes), as (whole rows, a partial row: one bit)."""
        shift = (p.port_bytes // p.token_lanes).bit_length() - 1
        return head.k_len >> shift, head.k_len[:shift] != 0

    @classmethod
    def last_start(cls, m, p: ArrayParams, head) -> Signal:
        """The last activation buffer row a token group of MATMUL `head` may start on:
        abuf_rows less the rows a group reads (`group_rows`); negative when no group fits. One
        carry chain: the rounding up is the adder's borrow."""
        rows, partial = cls.group_rows(p, head)
        width = max(len(head.k_len), p.abuf_rows.bit_length()) + 1
        # abuf_rows + ~rows + (1 - partial) = abuf_rows - rows - partial, in `width` bits; the
        # low bit of each operand carries the (1 - partial) in.
        total = (Cat(~partial, Const(p.abuf_rows, width)) +
                 Cat(Const(1, 1), ~Cat(rows, Const(0, width - len(rows)))))
        last = Signal(signed(width))
        m.d.comb += last.eq(total[1:width + 1])
        return last

    @classmethod
    def first_group_refused(cls, m, p: ArrayParams, instr) -> Signal:
        """MATMUL `instr`'s first token group reads past the activation buffer: BAD_ADDRESS in
        its first step, a cycle after issue (done when the program is written, `rtl.predecode`)."""
        head = data.View(instr_layout(Opcode.MATMUL), instr)
        # abuf > last_start: abuf + the rows a group reads > abuf_rows, in one carry chain.
        rows, partial = cls.group_rows(p, head)
        refused = Signal()
        m.d.comb += refused.eq(sum_exceeds(head.abuf, rows, partial, p.abuf_rows))
        return refused

    def elaborate(self, platform):
        m = Module()
        p = self.params
        lay = instr_layout(Opcode.MATMUL)
        head = data.View(lay, self.head_instr)
        lt_shift = p.token_lanes.bit_length() - 1
        port_shift = p.port_bytes.bit_length() - 1
        lb = p.wbuf_lane_bits

        # -- issue -----------------------------------------------------------------------------
        running = Signal()
        pc = Signal(PC_BITS)
        wbuf = Signal.like(head.wbuf)
        grow = Signal(len(head.abuf) + 1)      # activation row of the current group
        acc = Signal.like(head.acc)
        k_pen = Signal.like(head.k_len)     # steps per token group (columns, or N:M slots) - 2
        x_stride = Signal.like(head.x_stride)
        tokens_left = Signal(len(head.tokens) + 1)
        # The next group's activation row, and the last row a group may start on (abuf_rows
        # less the rows one group reads; negative when a group cannot fit): the refusal of the
        # next group is then one comparison of two registers.
        next_grow = Signal.like(grow)
        head_last_start = self.last_start(m, p, head)
        last_start = Signal.like(head_last_start)
        n_rows = Signal.like(head.n_rows)
        accumulate = Signal()
        push_prev = Signal()
        push_next = Signal()
        k = Signal.like(head.k_len)
        g = Signal.like(head.acc)
        bytepos = Signal(len(head.k_len) + lt_shift)
        nm = Signal.like(head.nm)            # slots per group of 8 columns, 0 when dense
        slot = Signal.like(head.nm)

        # -- stage 0: read ----------------------------------------------------------------------
        # The read's flags, registered as it is issued (`rd`): they arrive with the words read.
        rd = Signal()
        rd_first = Signal()
        rd_last = Signal()
        rd_final = Signal()
        rd_g = Signal.like(self.c_waddr)
        # The read's byte offset in the word, in whole token groups: `bytepos` only ever moves
        # by token_lanes bytes (or N:M's 8 x token_lanes), so its low bits are always zero and
        # the pick of the lanes' bytes is a mux of port_bytes / token_lanes ways.
        rd_off = Signal(port_shift - lt_shift)
        rd_tok = Signal(p.token_lanes)
        rd_nm = Signal()
        rd_slot = Signal.like(slot)
        finishing = Signal()
        clear = Signal()        # held lanes: start a non-accumulating group from 0
        m.d.sync += rd.eq(0)
        m.d.comb += [
            self.w_addr.eq(wbuf + k),
            self.a_addr.eq(grow + (bytepos >> port_shift)),
        ]
        # Flags the issue decision and stage 0 look at, each worked out a cycle ahead, so that
        # no comparison lies between these registers and `take`.
        first_k = Signal()      # k == 0
        last_k = Signal()       # k == steps - 1
        one_step = Signal()     # k_len == 1
        last_tokens = Signal()  # tokens_left <= token_lanes: the final group
        last_slot = Signal()    # slot == nm - 1
        refuse = Signal()       # k == 0 and the group's activation rows run past the buffer
        with m.If(running):
            with m.If(refuse):
                m.d.comb += [self.error.eq(ErrorCode.BAD_ADDRESS), self.error_pc.eq(pc),
                             self.fault.eq(1)]
            with m.Else():
                final = last_k & last_tokens
                if p.acc_in_lanes:
                    m.d.comb += clear.eq(first_k & ~accumulate)
                m.d.sync += [
                    rd.eq(1), rd_first.eq(first_k),
                    rd_last.eq(last_k), rd_final.eq(final),
                    rd_g.eq(acc + g), rd_off.eq(bytepos[lt_shift:port_shift]),
                    rd_tok.eq(Cat(*[tokens_left > j for j in range(p.token_lanes)])),
                    rd_nm.eq(nm != 0), rd_slot.eq(slot),
                ]
                with m.If(last_k):
                    m.d.sync += [k.eq(0), bytepos.eq(0), g.eq(g + 1), slot.eq(0),
                                 grow.eq(next_grow),
                                 next_grow.eq((next_grow + x_stride)[:len(grow)]),
                                 tokens_left.eq(tokens_left - p.token_lanes),
                                 last_tokens.eq(tokens_left <= 2 * p.token_lanes),
                                 first_k.eq(1), last_k.eq(one_step),
                                 last_slot.eq(nm == 1),
                                 refuse.eq(next_grow > last_start)]
                    with m.If(final):
                        m.d.sync += running.eq(0)
                        m.d.comb += finishing.eq(1)
                with m.Else():
                    k_next = (k + 1)[:len(k)]
                    m.d.sync += [k.eq(k_next), first_k.eq(0), last_k.eq(k == k_pen)]
                    with m.If(nm == 0):
                        m.d.sync += bytepos.eq(bytepos + p.token_lanes)
                    with m.Elif(last_slot):
                        m.d.sync += [slot.eq(0), last_slot.eq(nm == 1),
                                     bytepos.eq(bytepos + NM_M * p.token_lanes)]
                    with m.Else():
                        m.d.sync += [slot.eq(slot + 1), last_slot.eq(slot == nm - 2)]

        # Rows r < n_rows (an issued MATMUL has n_rows <= row_lanes), in two levels on
        # n = 16 h + l: r = 16 i + j is in when h > i, or h == i and l > j. Tables on h and on l
        # and one LUT per row, instead of a comparator of the 12-bit field (a carry chain) per
        # row, or one table over all of n.
        # From the kept `n_rows`, not the head: the mask is first read a cycle after the take,
        # so only two LUT levels lie between that register and `rd_mask`, and no instruction
        # queue in front of them.
        n_small = n_rows[:p.row_lanes.bit_length()]
        h, low = n_small[4:], n_small[:4]
        groups_r = (p.row_lanes + 15) // 16
        h_gt, h_eq, l_gt = Signal(groups_r), Signal(groups_r), Signal(16)
        with m.Switch(h):
            for v in range(min(groups_r, (1 << len(h)) - 1) + 1):
                with m.Case(v):
                    m.d.comb += [h_gt.eq((1 << min(v, groups_r)) - 1),
                                 h_eq.eq((1 << v) & ((1 << groups_r) - 1))]
        with m.Switch(low):
            for v in range(16):
                with m.Case(v):
                    m.d.comb += l_gt.eq((1 << v) - 1)
        row_mask_of = Signal(p.row_lanes)
        m.d.comb += row_mask_of.eq(Cat(*[h_gt[r // 16] | (h_eq[r // 16] & l_gt[r % 16])
                                         for r in range(p.row_lanes)]))
        steps = self.steps(m, p, head)
        if self.predecoded:
            head_err, head_refuse0 = self.head_err, self.head_refuse0
            head_bad = self.head_bad
        else:
            head_err = self.static_error(m, p, self.head_instr)
            head_bad = head_err != ErrorCode.NONE
            head_refuse0 = self.first_group_refused(m, p, self.head_instr)
        tokens_ok = (~head.pop_prev | self.tok_prev) & (~head.pop_next | self.tok_next)
        # The next MATMUL may issue in the final stage-0 cycle of this one: no bubble.
        # (Written after stage 0 so its register updates win.)
        with m.If((~running | finishing) & self.head_valid):
            with m.If(~tokens_ok):
                m.d.comb += [self.blocked.eq(1), self.stall_dep.eq(1)]
            with m.Elif(head_bad):
                m.d.comb += [self.error.eq(head_err), self.error_pc.eq(self.head_pc),
                             self.fault.eq(1)]
            with m.Else():
                m.d.comb += [self.take.eq(1), self.pop_prev.eq(head.pop_prev),
                             self.pop_next.eq(head.pop_next)]
                m.d.sync += [
                    running.eq(1), grow.eq(head.abuf), slot.eq(0),
                    tokens_left.eq(head.tokens), k.eq(0), g.eq(0), bytepos.eq(0),
                    next_grow.eq((head.abuf + head.x_stride)[:len(grow)]),
                    first_k.eq(1), last_k.eq(steps == 1),
                    last_tokens.eq(head.tokens <= p.token_lanes), last_slot.eq(head.nm == 1),
                    refuse.eq(head_refuse0),
                ]
        # The fields a MATMUL keeps while it runs are `data`, taken from the head in every cycle
        # the unit could take one (idle, or its last read), whether it does or not: their clock
        # enable is then `running` and `finishing`, not the issue decision, which reached some
        # 150 flip-flops. Only a take makes them count.
        with m.If(~running | finishing):
            m.d.data += [
                pc.eq(self.head_pc), wbuf.eq(head.wbuf), acc.eq(head.acc),
                k_pen.eq((steps - 2)[:len(k_pen)]), x_stride.eq(head.x_stride),
                nm.eq(head.nm if p.nm else 0), n_rows.eq(head.n_rows),
                accumulate.eq(head.accumulate), push_prev.eq(head.push_prev),
                push_next.eq(head.push_next), last_start.eq(head_last_start),
                one_step.eq(steps == 1),
            ]

        # The rest of the read's flags: the MATMUL's, as its stages see them.
        rd_pc = Signal(PC_BITS)
        rd_acc = Signal()
        rd_push = Signal(2)
        rd_mask = Signal(p.row_lanes)
        rd_nrows = Signal.like(n_rows)
        m.d.sync += [rd_pc.eq(pc), rd_acc.eq(accumulate), rd_push.eq(Cat(push_prev, push_next)),
                     rd_nrows.eq(n_rows)]
        # The row mask and the words read are `data`: they count only with a stage's flag.
        m.d.data += rd_mask.eq(row_mask_of)
        flags = dict(v=rd, first=rd_first, last=rd_last, final=rd_final, g=rd_g, off=rd_off,
                     tok=rd_tok, nm=rd_nm, slot=rd_slot, pc=rd_pc, acc=rd_acc, push=rd_push,
                     nrows=rd_nrows)
        clear_1 = clear         # the clear as its copies take it, a cycle ahead of stage 2
        if p.registered_operands:
            # The words read are registered as they leave their block RAMs, and the read's
            # flags (and the clear, a cycle ahead of them) wait a cycle with them.
            w_data = Signal.like(self.w_data, name="w_word", reset_less=True)
            a_data = Signal.like(self.a_data, name="a_word", reset_less=True)
            m.d.data += [w_data.eq(self.w_data), a_data.eq(self.a_data)]
            flags = dict(zip(flags, registered(m, "s1_", **flags)))
            s1_mask, = registered(m, "s1_", domain="data", mask=rd_mask)
            clear_1, = registered(m, "rd_", clear=clear)
        else:
            w_data, a_data = self.w_data, self.a_data
            s1_mask = rd_mask

        # -- stage 1: each lane's operands, registered between the buffers and the lanes ---------
        s1, s1_first, s1_last, s1_final, s1_g, s1_off, s1_tok, s1_nm, s1_slot = (
            flags[n] for n in ("v", "first", "last", "final", "g", "off", "tok", "nm", "slot"))
        s1_pc, s1_acc, s1_push, s1_nrows = (flags[n] for n in ("pc", "acc", "push", "nrows"))
        # The partial sums to accumulate onto are read here and arrive with stage 2.
        m.d.comb += self.c_raddr.eq(s1_g)
        act = Signal(p.port_bits)
        m.d.comb += act.eq(a_data >> Cat(Const(0, 3 + lt_shift), s1_off))
        # Stage 2's registers: the step's flags, the activations (the token lanes' bytes of the
        # column, or of the group of 8 columns with N:M), each row's weight and slot position.
        # The activations, signs and slots are `data`: a step's flags make them count.
        s2 = Signal()
        s2_first, s2_last, s2_final, s2_acc = (Signal(name=f"s2_{n}")
                                               for n in ("first", "last", "final", "acc"))
        s2_g = Signal.like(s1_g)
        s2_pc = Signal(PC_BITS)
        s2_push = Signal(2)
        s2_tok = Signal(p.token_lanes)
        x_bytes = (NM_M if p.nm else 1) * p.token_lanes
        s2_x = Signal(8 * x_bytes)
        m.d.data += s2_x.eq(act[:len(s2_x)])
        s2_neg = Signal(p.row_lanes)
        w_nz = [w_data[lb * r] & s1_mask[r] for r in range(p.row_lanes)]
        m.d.sync += [
            s2.eq(s1), s2_first.eq(s1_first), s2_last.eq(s1_last), s2_final.eq(s1 & s1_final),
            s2_acc.eq(s1_acc), s2_g.eq(s1_g), s2_pc.eq(s1_pc),
            s2_push.eq(s1_push), s2_tok.eq(s1_tok),
        ]
        m.d.data += s2_neg.eq(Cat(*[w_data[lb * r + 1] for r in range(p.row_lanes)]))
        if not p.acc_in_lanes:
            s2_nz = Signal(p.row_lanes)
            m.d.sync += s2_nz.eq(Cat(*w_nz))
        else:
            # The lane holds the group; clearing it in stage 1, one cycle ahead of the first add,
            # drops only a result this MATMUL overwrites anyway. The clear, which reaches every
            # accumulator flip-flop, is registered in one copy per `fanout_rows` rows
            # (`ArrayParams.fanout_rows`): copy r // fanout_rows serves row r.
            rows_per_copy = p.fanout_rows or p.row_lanes
            s1_clears = copies(m, "s1_clear", clear_1, -(-p.row_lanes // rows_per_copy),
                               domain="lanes")
            # A step with a zero weight leaves a held lane as it is, so each lane's step and
            # nonzero weight are one flag, registered from stage 1 (its clock enable, straight
            # from a flip-flop of its own).
            s2_upd = Signal(p.lanes)
            m.d.lanes += s2_upd.eq(Cat(*[s1 & s1_tok[j] & w_nz[r] for j in range(p.token_lanes)
                                        for r in range(p.row_lanes)]))
        # With N:M slots, row r's lanes read column 8q + (c + d_r) mod 8 of the group.
        pos = []
        for r in range(p.row_lanes):
            if p.nm:
                d = w_data[lb * r + 2:lb * (r + 1)]
                pos_r = Signal.like(d, name=f"pos_{r}")
                m.d.data += pos_r.eq(Mux(s1_nm, s1_slot + d, 0))
                pos.append(pos_r)

        # -- stage 2: the lanes ----------------------------------------------------------------
        totals = []
        for j in range(p.token_lanes):
            x_dense = s2_x[8 * j:8 * j + 8].as_signed()
            if p.nm:
                x_of = Array([s2_x[8 * (i * p.token_lanes + j):8 * (i * p.token_lanes + j) + 8]
                              for i in range(NM_M)])
            for r in range(p.row_lanes):
                lane = TernaryLane(p.acc_bits, held=p.acc_in_lanes)
                m.submodules[f"lane_{j}_{r}"] = \
                    DomainRenamer("lanes")(lane) if p.acc_in_lanes else lane
                m.d.comb += [
                    lane.neg.eq(s2_neg[r]),
                    lane.x.eq(x_of[pos[r]].as_signed() if p.nm else x_dense),
                ]
                if p.acc_in_lanes:
                    upd = s2_upd[j * p.row_lanes + r]
                    m.d.comb += [lane.step.eq(upd), lane.nz.eq(upd),
                                 lane.clear.eq(s1_clears[r // rows_per_copy])]
                    totals.append(lane.acc)
                else:
                    idx = j * p.row_lanes + r
                    init = self.c_rdata[idx * p.acc_bits:(idx + 1) * p.acc_bits].as_signed()
                    m.d.comb += [lane.step.eq(s2), lane.nz.eq(s2_nz[r] & s2_tok[j]),
                                 lane.first.eq(s2_first), lane.init.eq(Mux(s2_acc, init, 0))]
                    totals.append(lane.total)

        # -- counters: stage 1's busy lanes, and its zero weights a cycle later ------------------
        zero_bits = [~w_data[lb * r] & s1_mask[r] for r in range(p.row_lanes)]
        # A named signal: slicing an unnamed Cat bit by bit re-emits the whole Cat each time,
        # which made the netlist grow with the square of the row count.
        zero_vec = Signal(p.row_lanes)
        m.d.comb += zero_vec.eq(Cat(*zero_bits))
        # The zero bits are registered as they leave the weight buffer; the accelerator counts
        # the register (stage 1's tokens are stage 2's now).
        m.d.data += self.zero_rows.eq(Mux(s1, zero_vec, 0))
        m.d.comb += self.zero_tokens.eq(s2_tok)
        with m.If(s1):
            m.d.comb += self.busy_lanes.eq(sum(Mux(s1_tok[j], s1_nrows, 0)
                                               for j in range(p.token_lanes)))
        with m.If(s2):
            if not p.acc_in_lanes:
                m.d.comb += [self.c_we.eq(s2_last), self.c_waddr.eq(s2_g),
                             self.c_wdata.eq(Cat(*totals))]
            with m.If(s2_final):
                m.d.comb += [self.retire.eq(1), self.retire_pc.eq(s2_pc),
                             self.push_prev.eq(s2_push[0]), self.push_next.eq(s2_push[1])]
        if p.acc_in_lanes:
            m.d.comb += self.acc_out.eq(Cat(*totals))
        m.d.comb += self.active.eq(running | rd | s1 | s2)
        return m
