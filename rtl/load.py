"""The LOAD unit: a 2-D DMA from the read channel into the weight or activation buffer."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .decoder import WeightDecoder
from .isa import (
    INSTR_BITS,
    NM_SLOTS_PER_BYTE,
    NM_WORDS_PER_ROW,
    PC_BITS,
    Buffer,
    ErrorCode,
    Opcode,
    WeightEncoding,
    instr_layout,
)
from .params import ArrayParams

__all__ = ["ADDR_BITS", "InFlight", "LoadUnit"]

#: Width of an external memory word address (the LOAD/STORE `dram` fields).
ADDR_BITS = 32


def _descriptor_layout():
    lay = instr_layout(Opcode.LOAD)
    return data.StructLayout({
        "pc": PC_BITS, "buffer": Buffer, "encoding": WeightEncoding,
        "sram": lay["sram"].shape, "rows_m1": lay["rows"].shape,
        "length_m1": lay["length"].shape, "one_row": 1, "one_word": 1, "push_next": 1,
    })


class InFlight(wiring.Component):
    """A first-word-fall-through queue of `depth` entries whose free entry is written in
    every cycle it has room: `w_data` goes into the entry after the last at every clock edge
    while `w_rdy`, and `w_en` keeps it (the entries after it are free). Its memory's write
    enable is then `w_rdy`, a flip-flop, and not the write decision (as `SyncFIFO`'s is).

    Members: `w_data`, `w_en`, `w_rdy` and `r_data`, `r_en`, `r_rdy` as for `SyncFIFO`
    (`r_data` is the oldest entry while `r_rdy`; a write to an empty queue is read from the
    next cycle on; `w_en` without `w_rdy`, or `r_en` without `r_rdy`, does nothing).
    """

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
                          "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        m.submodules.storage = storage = Memory(shape=self.width, depth=d, init=[])
        wp, rp = storage.write_port(), storage.read_port(domain="comb")
        w_ptr, r_ptr = Signal(range(d)), Signal(range(d))
        level = Signal(range(d + 1))
        full, empty = Signal(), Signal(init=1)
        write = self.w_en & ~full
        read = self.r_en & ~empty
        m.d.comb += [wp.addr.eq(w_ptr), wp.data.eq(self.w_data), wp.en.eq(~full),
                     rp.addr.eq(r_ptr), self.r_data.eq(rp.data),
                     self.w_rdy.eq(~full), self.r_rdy.eq(~empty)]

        def step(ptr):
            return Mux(ptr == d - 1, 0, ptr + 1) if d & (d - 1) else (ptr + 1)[:len(ptr)]

        with m.If(write):
            m.d.sync += w_ptr.eq(step(w_ptr))
        with m.If(read):
            m.d.sync += r_ptr.eq(step(r_ptr))
        with m.If(write & ~read):
            m.d.sync += [level.eq(level + 1), full.eq(level == d - 1), empty.eq(0)]
        with m.Elif(read & ~write):
            m.d.sync += [level.eq(level - 1), full.eq(0), empty.eq(level == 1)]
        return m


class LoadUnit(wiring.Component):
    """Execute LOADs: issue read requests row by row, write responses into a buffer in order.

    The request side and the response side are decoupled: the next LOAD issues its requests
    while the responses of earlier ones (up to `loads_in_flight` instructions) are still coming
    back. Weight words pass through a `WeightDecoder` on their way into the weight buffer.

    Timing (an always-ready port): a LOAD taken at cycle s presents its rows x length requests
    at s+1 .. s+N, and the unit can take the next LOAD at s+N, the cycle of the last request.
    The LOAD retires (and pushes its token) in the cycle its last response is written.

    Domains: `sync`, and with `ArrayParams.registered_decode` or `registered_weight_write`
    also `data`, for the registered words and the decoder's tables, whose use `sync`'s flags
    decide (`rtl.top` clocks it like `sync` but neither freezes nor resets it; alone, rename
    it to `sync`).

    Members
    -------
    head_valid, head_pc, head_instr : In
        The head of this unit's instruction queue.
    head_err, head_bad, head_refuse0, head_single : In (only when `predecoded`)
        `static_error` of the head and whether it is not NONE, `first_row_refused` and
        `single_request`, computed when the program was written.
    take : Out(1)
        The head issues this cycle (pop it from the queue).
    tok_next : In(1)
        A token from COMPUTE is available.
    pop_next, push_next : Out(1)
        Take a token from COMPUTE (at issue) / give one (at retirement).
    rd_req : Out(stream.Signature(ADDR_BITS))
    rd_resp : In(stream.Signature(port_bits))
    w_en, w_addr, w_data : Out
        Weight buffer write port (decoded lane controls). With the NM encoding, `w_en` has a
        bit per `port_bytes` lanes: a word of N:M slots writes half of the lanes below 4P.
        With `ArrayParams.registered_weight_write`, `w_data` comes a cycle after its `w_en`
        and `w_addr` (the decoder's registers, `rtl.decoder`).
    a_en, a_addr, a_data : Out
        Activation buffer write port.
    retire, retire_pc : Out
        A LOAD retires this cycle.
    error, error_pc : Out
    fault : Out(1)
        `error` is not NONE (one bit, from the conditions rather than the code).
    active, blocked : Out(1)
        Work in progress / an instruction waits for a token.
    stall_dep, stall_port : Out(1)
        Stall causes this cycle.
    """

    def __init__(self, params: ArrayParams, predecoded: bool = False):
        self.params = params
        self.predecoded = predecoded
        super().__init__({
            **({"head_err": In(ErrorCode), "head_bad": In(1), "head_refuse0": In(1),
                "head_single": In(1)} if predecoded else {}),
            "head_valid": In(1), "head_pc": In(PC_BITS), "head_instr": In(INSTR_BITS),
            "take": Out(1), "tok_next": In(1), "pop_next": Out(1), "push_next": Out(1),
            "rd_req": Out(stream.Signature(ADDR_BITS)),
            "rd_resp": In(stream.Signature(params.port_bits)),
            "w_en": Out(self.w_granules(params)), "w_addr": Out(range(params.wbuf_rows)),
            "w_data": Out(params.wbuf_lane_bits * params.row_lanes),
            "a_en": Out(1), "a_addr": Out(range(params.abuf_rows)),
            "a_data": Out(params.port_bits),
            "retire": Out(1), "retire_pc": Out(PC_BITS),
            "error": Out(ErrorCode), "error_pc": Out(PC_BITS), "fault": Out(1),
            "active": Out(1), "blocked": Out(1), "stall_dep": Out(1), "stall_port": Out(1),
        })

    @staticmethod
    def w_granules(params: ArrayParams) -> int:
        """Write-enable bits of the weight buffer: one per `port_bytes` lanes with the NM
        encoding (its words fill half rows), else one."""
        return params.row_lanes // params.port_bytes if params.nm else 1

    @staticmethod
    def _is_nm(m, p: ArrayParams, head) -> Signal:
        """LOAD `head` carries N:M slots (two words per weight buffer row)."""
        nm = Signal()
        if p.nm:
            m.d.comb += nm.eq((head.buffer == Buffer.WEIGHT) & (head.encoding == WeightEncoding.NM))
        return nm

    @classmethod
    def static_error(cls, m, p: ArrayParams, instr) -> Signal:
        """What LOAD `instr` alone refuses at issue (BAD_FIELD) or NONE: the checks that need
        no state, done once when the program is written (`rtl.predecode`)."""
        head = data.View(instr_layout(Opcode.LOAD), instr)
        enabled = Signal()
        with m.Switch(head.encoding):
            for enc in p.encodings:
                with m.Case(enc):
                    m.d.comb += enabled.eq(1)
        # N:M slots: two words per buffer row, so a LOAD row is an even number of words.
        shift = NM_WORDS_PER_ROW.bit_length() - 1
        nm = cls._is_nm(m, p, head)
        err = Signal(ErrorCode)
        with m.If((head.rows == 0) | (head.length == 0) |
                  ((head.buffer == Buffer.WEIGHT) & ~enabled) | (nm & (head.length[:shift] != 0))):
            m.d.comb += err.eq(ErrorCode.BAD_FIELD)
        return err

    @classmethod
    def first_row_refused(cls, m, p: ArrayParams, instr) -> Signal:
        """LOAD `instr`'s first row runs past the end of its buffer (BAD_ADDRESS in its first
        request cycle; done when the program is written, `rtl.predecode`)."""
        head = data.View(instr_layout(Opcode.LOAD), instr)
        end = head.sram + cls._row_span(m, p, head)
        refused = Signal()
        m.d.comb += refused.eq(end > cls._depth(m, p, head))
        return refused

    @staticmethod
    def _depth(m, p: ArrayParams, head) -> Signal:
        """Rows of the buffer LOAD `head` writes."""
        depth = Signal(range(max(p.wbuf_rows, p.abuf_rows) + 1))
        with m.Switch(head.buffer):
            for buf, d in {Buffer.WEIGHT: p.wbuf_rows, Buffer.ACT: p.abuf_rows}.items():
                with m.Case(buf):
                    m.d.comb += depth.eq(d)
        return depth

    @staticmethod
    def single_request(instr):
        """LOAD `instr` is one request: one row of one word."""
        head = data.View(instr_layout(Opcode.LOAD), instr)
        return (head.length == 1) & (head.rows == 1)

    @classmethod
    def _row_span(cls, m, p: ArrayParams, head):
        """Buffer rows one LOAD row fills: N:M slots take two words per row."""
        shift = NM_WORDS_PER_ROW.bit_length() - 1
        return Mux(cls._is_nm(m, p, head), head.length >> shift, head.length)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        lay = instr_layout(Opcode.LOAD)
        head = data.View(lay, self.head_instr)
        desc_lay = _descriptor_layout()
        m.submodules.inflight = inflight = InFlight(desc_lay.size, p.loads_in_flight)

        # -- request side ----------------------------------------------------------------------
        # The state the issue decision looks at is kept in flags, each worked out a cycle ahead,
        # so that no comparison or addition lies between these registers and `take`.
        busy = Signal()
        pc = Signal(PC_BITS)
        req_addr = Signal(ADDR_BITS)        # the word being requested
        row_step = Signal(ADDR_BITS)        # stride - (length - 1): last word -> next row
        length_m2 = Signal.like(head.length)   # length - 2, the word before the last
        word = Signal.like(head.length)     # word of the row being requested
        rows_left = Signal.like(head.rows)
        span = Signal.like(head.length)     # buffer rows one LOAD row fills
        # The end of the next row (its first buffer row + span): the next row's refusal is
        # one comparison of registers. A refused row stops the LOAD, so it never wraps.
        next_end = Signal(max(len(head.sram), len(head.length)) + 3)
        last_word = Signal()    # word == length - 1
        last_row = Signal()     # rows_left == 1
        one_word = Signal()     # length == 1
        refuse = Signal()       # the first word of a row that runs past the end of its buffer
        final = Signal()        # last_word & last_row: the LOAD's last request, unless refused

        head_depth = self._depth(m, p, head)
        depth = Signal.like(head_depth)     # of the LOAD being requested
        shift = NM_WORDS_PER_ROW.bit_length() - 1
        head_err = self.head_err if self.predecoded else self.static_error(m, p, self.head_instr)
        if self.predecoded:
            head_bad, head_refused = self.head_bad, self.head_refuse0
            head_single = self.head_single
        else:
            head_bad = head_err != ErrorCode.NONE
            head_refused = self.first_row_refused(m, p, self.head_instr)
            head_single = self.single_request(self.head_instr)

        finishing = Signal()
        # Errors of the response side belong to an older LOAD and win over the request side.
        req_error = Signal(ErrorCode)
        req_error_pc = Signal(PC_BITS)
        resp_error = Signal(ErrorCode)
        resp_error_pc = Signal(PC_BITS)
        with m.If(resp_error != ErrorCode.NONE):
            m.d.comb += [self.error.eq(resp_error), self.error_pc.eq(resp_error_pc)]
        with m.Else():
            m.d.comb += [self.error.eq(req_error), self.error_pc.eq(req_error_pc)]

        with m.If(busy):
            m.d.comb += [self.rd_req.valid.eq(1), self.rd_req.payload.eq(req_addr)]
            # A row that would run past the end of its buffer is refused before it is read.
            with m.If(refuse):
                m.d.comb += [req_error.eq(ErrorCode.BAD_ADDRESS), req_error_pc.eq(pc),
                             self.fault.eq(1)]
                m.d.comb += self.rd_req.valid.eq(0)
            with m.Elif(~self.rd_req.ready):
                m.d.comb += self.stall_port.eq(1)
            with m.Else():
                with m.If(last_word):
                    next_last_row = rows_left == 2
                    m.d.sync += [
                        req_addr.eq(req_addr + row_step), word.eq(0), last_word.eq(one_word),
                        next_end.eq(next_end + span), refuse.eq(next_end > depth),
                        rows_left.eq(rows_left - 1), last_row.eq(next_last_row),
                        final.eq(one_word & next_last_row),
                    ]
                    with m.If(last_row):
                        m.d.sync += busy.eq(0)
                with m.Else():
                    word_next = (word + 1)[:len(word)]
                    last_next = word == length_m2
                    m.d.sync += [req_addr.eq(req_addr + 1), word.eq(word_next),
                                 last_word.eq(last_next), refuse.eq(0),
                                 final.eq(last_next & last_row)]
        # The same condition as the last request above, from one flag.
        m.d.comb += finishing.eq(busy & final & ~refuse & self.rd_req.ready)

        tokens_ok = ~head.pop_next | self.tok_next
        # The next LOAD may issue in the cycle of this one's last request: no bubble.
        # (Written after the request logic so its register updates win.)
        can_issue = (~busy | finishing) & self.head_valid
        with m.If(can_issue):
            with m.If(~tokens_ok):
                m.d.comb += [self.blocked.eq(1), self.stall_dep.eq(1)]
            with m.Elif(head_bad):
                m.d.comb += [req_error.eq(head_err), req_error_pc.eq(self.head_pc),
                             self.fault.eq(1)]
            with m.Elif(~inflight.w_rdy):
                m.d.comb += self.stall_port.eq(1)
            with m.Else():
                m.d.comb += [self.take.eq(1), self.pop_next.eq(head.pop_next),
                             inflight.w_en.eq(1)]
                m.d.sync += busy.eq(1)
        # The registers a LOAD starts from are taken from the head in every cycle the unit
        # could take one (idle, or its last request going out), whether it does or not: their
        # clock enable is then `busy` and `finishing`, not the issue decision. Only a take
        # (`busy`) makes them count. The fields kept while it runs are not read again after
        # its last request is presented, so they take the head from that cycle on, whether
        # the port accepts the request or not.
        head_span = self._row_span(m, p, head)
        with m.If(~busy | finishing):
            m.d.sync += [
                req_addr.eq(head.dram), word.eq(0), last_word.eq(head.length == 1),
                rows_left.eq(head.rows), last_row.eq(head.rows == 1),
                next_end.eq(head.sram + (head_span << 1)),
                refuse.eq(head_refused), final.eq(head_single),
            ]
        with m.If(~busy | (final & ~refuse)):
            m.d.sync += [
                pc.eq(self.head_pc), row_step.eq(head.stride - (head.length - 1)),
                length_m2.eq((head.length - 2)[:len(length_m2)]),
                one_word.eq(head.length == 1), depth.eq(head_depth),
                span.eq(head_span),
            ]
        # The in-flight queue's next entry is written from the head in every cycle it has
        # room; a take keeps it.
        desc = data.View(desc_lay, inflight.w_data)
        m.d.comb += [
            desc.pc.eq(self.head_pc), desc.buffer.eq(head.buffer),
            desc.encoding.eq(head.encoding), desc.sram.eq(head.sram),
            desc.rows_m1.eq(head.rows - 1), desc.length_m1.eq(head.length - 1),
            desc.one_row.eq(head.rows == 1), desc.one_word.eq(head.length == 1),
            desc.push_next.eq(head.push_next),
        ]

        # -- response side ---------------------------------------------------------------------
        # With a registered decoder the response side works on the response of the previous
        # cycle, while the decoder's tables look up the one arriving now.
        # The word and its table lookups are `data` (`rtl.top`): only `resp_valid` makes them
        # count, so the accelerator's enable does not reach them.
        m.submodules.decoder = decoder = WeightDecoder(p, domain="data")
        m.d.comb += self.rd_resp.ready.eq(1)
        if p.registered_decode:
            resp_valid = Signal()
            resp = Signal(p.port_bits, reset_less=True)
            m.d.sync += resp_valid.eq(self.rd_resp.valid)
            m.d.data += resp.eq(self.rd_resp.payload)
            m.d.comb += decoder.next_word.eq(self.rd_resp.payload)
        else:
            resp_valid, resp = self.rd_resp.valid, self.rd_resp.payload
        cur = data.View(desc_lay, inflight.r_data)
        offset = Signal(range(p.wbuf_rows + p.abuf_rows + 1))
        # Words and rows left after the current response, with flags for "none left" worked
        # out a cycle ahead; `fresh` (the LOAD's first response) takes them from its descriptor.
        fresh = Signal(init=1)
        words_left, rows_left = Signal.like(head.length), Signal.like(head.rows)
        no_words, no_rows = Signal(), Signal()
        # The decoded row and the word go out whatever the buffer; only the enables tell.
        # (With `registered_weight_write` the decoder's row is a cycle late, and so is `w_data`.)
        m.d.comb += [decoder.word.eq(resp), decoder.encoding.eq(cur.encoding),
                     self.w_data.eq(decoder.trits), self.a_data.eq(resp)]
        if p.nm:
            # Word 2i of N:M slots: lanes 0 .. 2P-1 of row i; word 2i+1: lanes 2P .. 4P-1, and
            # the lanes past 4P cleared (the enables pick the half).
            lb, half = p.wbuf_lane_bits, NM_SLOTS_PER_BYTE * p.port_bytes
            slots = decoder.trits[:lb * half]
            # The response's word is N:M slots (`nm_now`); `nm_word`: the word of `w_data`.
            nm_now, nm_word = Signal(), Signal()
            m.d.comb += nm_now.eq(cur.encoding == WeightEncoding.NM)
            if p.registered_weight_write:
                m.d.data += nm_word.eq(nm_now)
            else:
                m.d.comb += nm_word.eq(nm_now)
            with m.If(nm_word):
                m.d.comb += self.w_data.eq(Cat(slots, slots, Const(0, lb * p.row_lanes)))
        cur_words = Mux(fresh, cur.length_m1, words_left)
        cur_rows = Mux(fresh, cur.rows_m1, rows_left)
        last_word = Mux(fresh, cur.one_word, no_words)
        last_row = Mux(fresh, cur.one_row, no_rows)
        last = last_word & last_row
        with m.If(resp_valid & inflight.r_rdy):
            addr = cur.sram + offset
            # A word with an invalid code stops the run, and is written all the same: nothing
            # reads the weight buffer after an error, and the write enable then waits on no
            # check of the decoder's output (on ECP5, 32 table outputs after a block RAM).
            with m.If((cur.buffer == Buffer.WEIGHT) & decoder.invalid):
                m.d.comb += [resp_error.eq(ErrorCode.BAD_WEIGHT), resp_error_pc.eq(cur.pc),
                             self.fault.eq(1)]
            with m.If(cur.buffer == Buffer.WEIGHT):
                m.d.comb += [self.w_en.eq(-1), self.w_addr.eq(addr)]
                if p.nm:
                    with m.If(nm_now):
                        # Word 2i writes the granules of lanes 0 .. 2P-1, word 2i+1 the rest.
                        g = self.w_granules(p)
                        low = (1 << NM_SLOTS_PER_BYTE) - 1      # 2P lanes, P per granule
                        m.d.comb += [
                            self.w_addr.eq(cur.sram + (offset >> shift)),
                            self.w_en.eq(Mux(offset[0], ((1 << g) - 1) & ~low, low)),
                        ]
            with m.Else():
                m.d.comb += [self.a_en.eq(1), self.a_addr.eq(addr)]
            with m.If(last):
                m.d.sync += [offset.eq(0), fresh.eq(1)]
                m.d.comb += [inflight.r_en.eq(1), self.retire.eq(1), self.retire_pc.eq(cur.pc),
                             self.push_next.eq(cur.push_next)]
            with m.Else():
                m.d.sync += [offset.eq(offset + 1), fresh.eq(0)]
                with m.If(last_word):
                    m.d.sync += [words_left.eq(cur.length_m1), no_words.eq(cur.one_word),
                                 rows_left.eq(cur_rows - 1), no_rows.eq(cur_rows == 1)]
                with m.Else():
                    m.d.sync += [words_left.eq(cur_words - 1), no_words.eq(cur_words == 1),
                                 rows_left.eq(cur_rows), no_rows.eq(last_row)]

        m.d.comb += self.active.eq(busy | inflight.r_rdy)
        return m
