"""The host link engine: frames from the UART in, memory/program/control actions, replies out.

The protocol is `rtl.protocol` (docs/protocol.md). The engine handles one frame at a time:
it receives a whole frame, checks it, acts on it and replies, then waits for the next SYNC.
Bytes that arrive while it checks, acts or replies are dropped; the host waits for each reply.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import COUNTER_BITS, INSTR_BITS, PC_BITS, Counter, ErrorCode, Status
from .memport import read_port
from .params import ChipParams
from .protocol import (
    ADDR_BYTES,
    COUNT_BYTES,
    CRC_INIT,
    CRC_POLY,
    IDENT_FIELDS,
    INSTR_BYTES,
    STATUS_FIELDS,
    SYNC,
    Command,
    LinkError,
    Reply,
    identity,
    pack_fields,
)
from .uart import rx_layout

__all__ = ["HostLink", "crc16_step"]


def crc16_step(crc, byte):
    """The CRC after one more byte, as logic: eight unrolled MSB-first steps (XORs only)."""
    for i in range(8):
        fb = crc[15] ^ byte[7 - i]
        crc = Cat(Const(0, 1), crc[:15]) ^ Mux(fb, CRC_POLY, 0)
    return crc


def _log2(v: int) -> int:
    assert v > 0 and v & (v - 1) == 0
    return v.bit_length() - 1


class HostLink(wiring.Component):
    """Serve the host link protocol between a UART and the accelerator's memory and controls.

    A write frame is buffered whole (`link_buffer_bytes`) and committed only after its CRC and
    every check passed, so a refused frame changes nothing. A frame that stops arriving, or a
    bad header whose length cannot be trusted, is ended by `link_timeout_bits` bit times of
    silence, then answered with an ERROR reply.

    Parameters
    ----------
    chip : ChipParams

    Members
    -------
    rx : In(stream.Signature(rx_layout))
        Bytes from the UART receiver (always accepted).
    tx : Out(stream.Signature(8))
        Bytes to the UART transmitter.
    mem_addr, mem_wdata, mem_we, mem_re : Out
        One access to the memory per strobe; `mem_rdata` holds a read's word `read_latency`
        cycles after.
    mem_rdata : In(port_bits)
    imem_we, imem_addr, imem_data, start : Out
        The accelerator's program port and start pulse.
    status, error, error_pc, draining, counters : In
        The accelerator's state, reported by STATUS.
    """

    def __init__(self, chip: ChipParams, read_latency: int):
        assert read_latency >= 1
        self.chip = chip
        self.read_latency = read_latency
        a = chip.array
        super().__init__({
            "rx": In(stream.Signature(rx_layout)),
            "tx": Out(stream.Signature(8)),
            "mem_addr": Out(range(chip.mem_words)), "mem_wdata": Out(a.port_bits),
            "mem_we": Out(1), "mem_re": Out(1), "mem_rdata": In(a.port_bits),
            "imem_we": Out(1), "imem_addr": Out(range(a.imem_depth)),
            "imem_data": Out(INSTR_BITS), "start": Out(1),
            "status": In(Status), "error": In(ErrorCode), "error_pc": In(PC_BITS),
            "draining": In(1),
            "counters": In(data.ArrayLayout(COUNTER_BITS, len(Counter))),
        })

    def elaborate(self, platform):
        m = Module()
        chip = self.chip
        a = chip.array
        P = a.port_bytes
        buf_bytes = chip.link_buffer_bytes
        width = max(a.port_bits, INSTR_BITS)   # the word/instruction assembly register

        # -- tables from rtl.protocol ----------------------------------------------------------
        ident = pack_fields(IDENT_FIELDS, identity(chip))
        stat_sources = {"status": self.status, "error": self.error, "error_pc": self.error_pc,
                        "draining": self.draining}
        status_bytes = []
        for name, n in STATUS_FIELDS:
            if name in stat_sources:
                src = Value.cast(stat_sources[name])
            else:
                src = self.counters[Counter[name.upper()]]
            wide = Cat(src, Const(0, 8 * n))
            status_bytes += [wide[8 * i:8 * i + 8] for i in range(n)]
        assert len(ident) < 256 and len(status_bytes) < 256
        max_units_read = buf_bytes // P

        # -- state -----------------------------------------------------------------------------
        code = Signal(8)            # command byte received
        length = Signal(16)         # its LEN
        count = Signal(16)          # payload bytes received, then reply payload bytes sent
        hdr = Signal(8 * (ADDR_BYTES + COUNT_BYTES))
        addr = Signal(8 * ADDR_BYTES)
        units = Signal(16)          # words or instructions a write frame carries
        err = Signal(LinkError)
        rcode = Signal(8)
        rlen = Signal(16)
        crc = Signal(16)
        # Counted in bit times (a prescaler of uart_divisor cycles, then bits): two short
        # carry chains instead of one over link_timeout_bits * uart_divisor cycles.
        timer = Signal(range(chip.link_timeout_bits + 1))
        prescale = Signal(range(chip.uart_divisor))
        ptr = Signal(range(buf_bytes + 1))
        shreg = Signal(width)
        busy = Signal()
        m.d.comb += busy.eq((self.status == Status.RUNNING) | self.draining)

        m.submodules.buffer = buffer = Memory(shape=8, depth=buf_bytes, init=[])
        buf_w = buffer.write_port()
        buf_r, buf_rdata = read_port(m, buffer)

        byte = self.rx.payload.data
        got = self.rx.valid
        bad_byte = self.rx.payload.frame_error
        m.d.comb += self.rx.ready.eq(1)

        # The CRC is shared: it advances over received bytes, or over sent ones.
        crc_in = Signal(8)
        crc_en = Signal()
        with m.If(crc_en):
            m.d.sync += crc.eq(crc16_step(crc, crc_in))

        # Silence timer: reloaded by every received byte, expires inside a frame. Whether the
        # timer and the prescaler are zero is worked out a cycle ahead, in flags beside them:
        # `expired` reaches the reply registers' enables, and a comparison of the timer's
        # bits in front of that was one of the ULX3S chip's slowest paths.
        timer_zero = Signal(init=1)
        prescale_zero = Signal(init=1)
        assert chip.link_timeout_bits > 0 and chip.uart_divisor > 1
        with m.If(got):
            m.d.sync += [timer.eq(chip.link_timeout_bits), timer_zero.eq(0),
                         prescale.eq(chip.uart_divisor - 1), prescale_zero.eq(0)]
        with m.Elif(~timer_zero):
            with m.If(prescale_zero):
                m.d.sync += [timer.eq(timer - 1), timer_zero.eq(timer == 1),
                             prescale.eq(chip.uart_divisor - 1), prescale_zero.eq(0)]
            with m.Else():
                m.d.sync += [prescale.eq(prescale - 1), prescale_zero.eq(prescale == 1)]
        expired = ~got & timer_zero

        def fail(reason):
            m.d.sync += err.eq(reason)
            m.next = "DISCARD"

        def reply(rc, n):
            m.d.sync += [rcode.eq(rc), rlen.eq(n), rlast.eq(n - 1)]
            m.next = "TX_SYNC"

        def reply_error(reason):
            m.d.sync += err.eq(reason)
            reply(Reply.ERROR, 2)

        # The start pulse leaves from a register: it resets and enables every unit.
        start = Signal()
        m.d.sync += start.eq(0)
        m.d.comb += self.start.eq(start)
        # Checks and bounds registered a cycle before the decisions and comparisons that use them.
        known_q, len_ok_q, empty_q, crc_ok, busy_q = Signal(), Signal(), Signal(), Signal(), \
            Signal()
        count_last = Signal(16)     # length - 1: the last payload byte
        data_bytes = Signal(16)     # length - ADDR_BYTES: the bytes a write commits
        rlast = Signal(16)          # rlen - 1: the last reply payload byte

        # -- frame checks ----------------------------------------------------------------------
        # On registered fields only (LEN in the cycle after its last byte, the header while
        # the CRC arrives), so that no check lies between the receiver and the next state.
        data_len = Signal(16)
        m.d.comb += data_len.eq(length - ADDR_BYTES)
        has_data = (length > ADDR_BYTES) & (data_len <= buf_bytes)
        len_ok = Signal()
        known = Signal()
        with m.Switch(code):
            for cmd in (Command.PING, Command.START, Command.STATUS):
                with m.Case(cmd):
                    m.d.comb += [known.eq(1), len_ok.eq(length == 0)]
            with m.Case(Command.READ_MEM):
                m.d.comb += [known.eq(1), len_ok.eq(length == ADDR_BYTES + COUNT_BYTES)]
            with m.Case(Command.WRITE_MEM):
                m.d.comb += [known.eq(1),
                             len_ok.eq(has_data & (data_len[:_log2(P)] == 0))]
            with m.Case(Command.WRITE_IMEM):
                m.d.comb += [known.eq(1),
                             len_ok.eq(has_data & (data_len[:_log2(INSTR_BYTES)] == 0))]

        # The command's kind, registered with the command byte: the sums and muxes below
        # start from flip-flops, not from comparisons of `code`.
        is_read, is_imem = Signal(), Signal()
        read_units = hdr[8 * ADDR_BYTES:]
        access_units = Mux(is_read, read_units, units)
        limit = Mux(is_imem, a.imem_depth, chip.mem_words)
        # The access ends within `limit` words. Only addresses below the larger memory can, so
        # the sum needs only that many bits (plus the count's) once the top bits are zero.
        abits = max(chip.mem_words, a.imem_depth).bit_length()
        first = hdr[:8 * ADDR_BYTES]
        # Two register stages (the sum, then the comparison): the header is complete two bytes
        # (hundreds of cycles) before the CRC check looks at them.
        end = Signal(max(abits, 8 * COUNT_BYTES) + 1)
        start_low = Signal()
        m.d.sync += [end.eq(first[:abits] + access_units), start_low.eq(first[abits:] == 0)]
        range_ok = Signal()
        bad_read_len = Signal()
        m.d.sync += [range_ok.eq(start_low & (end <= limit)),
                     bad_read_len.eq(is_read & ((read_units == 0) |
                                                (read_units > max_units_read)))]
        unit_end = Mux(is_imem, ptr[:_log2(INSTR_BYTES)] == INSTR_BYTES - 1,
                       ptr[:_log2(P)] == P - 1)

        m.d.comb += [self.mem_addr.eq(addr), self.mem_wdata.eq(shreg[width - a.port_bits:]),
                     self.imem_addr.eq(addr), self.imem_data.eq(shreg[width - INSTR_BITS:]),
                     buf_r.addr.eq(ptr), buf_w.data.eq(byte)]

        # The assembly register changes in three states, each left after one cycle; a flag
        # beside the FSM, set on the way in, says which, so that its clock enable (a few
        # hundred flip-flops) comes from flip-flops rather than from a decoding of the state.
        fetched = f"FETCH_WAIT_{self.read_latency}"
        shift_in, load_word, shift_out = Signal(), Signal(), Signal()
        flags = {"COMMIT_SHIFT": shift_in, fetched: load_word, "TX_PREP": shift_out}
        m.d.sync += [f.eq(0) for f in flags.values()]

        def goto(state):
            m.next = state
            if state in flags:
                m.d.sync += flags[state].eq(1)

        with m.If(shift_in):
            m.d.sync += shreg.eq(Cat(shreg[8:], buf_rdata))
        with m.Elif(load_word):
            m.d.sync += shreg[width - a.port_bits:].eq(self.mem_rdata)
        with m.Elif(shift_out):
            # The byte leaving for `out_q` in TX_PREP (a READ_MEM reply's lowest) is dropped.
            m.d.sync += shreg.eq(Cat(shreg[8:], Const(0, 8)))

        with m.FSM():
            with m.State("IDLE"), m.If(got & ~bad_byte & (byte == SYNC)):
                m.d.sync += [crc.eq(CRC_INIT), err.eq(LinkError.NONE), code.eq(0),
                             is_read.eq(0), is_imem.eq(0),
                             count.eq(0)]
                m.next = "CMD"

            def receive(field_bytes=True):
                """Common to states that take frame bytes: framing errors and timeouts."""
                with m.If(got & bad_byte):
                    fail(LinkError.FRAMING)
                with m.Elif(expired):
                    reply_error(LinkError.TIMEOUT)
                m.d.comb += [crc_in.eq(byte), crc_en.eq(got & ~bad_byte)]
                return got & ~bad_byte

            with m.State("CMD"), m.If(receive()):
                m.d.sync += [code.eq(byte), is_read.eq(byte == Command.READ_MEM),
                             is_imem.eq(byte == Command.WRITE_IMEM)]
                m.next = "LEN0"
            with m.State("LEN0"), m.If(receive()):
                m.d.sync += length[:8].eq(byte)
                m.next = "LEN1"
            with m.State("LEN1"), m.If(receive()):
                m.d.sync += length[8:].eq(byte)
                m.next = "LEN_CHECK"
            # Two cycles, the checks registered in the first: the next byte is at least a
            # character time away.
            with m.State("LEN_CHECK"):
                m.d.sync += [units.eq(Mux(is_imem, data_len >> _log2(INSTR_BYTES),
                                          data_len >> _log2(P))),
                             known_q.eq(known), len_ok_q.eq(len_ok), empty_q.eq(length == 0),
                             count_last.eq(length - 1), data_bytes.eq(data_len)]
                m.next = "LEN_DECIDE"
            with m.State("LEN_DECIDE"):
                with m.If(~known_q):
                    fail(LinkError.BAD_COMMAND)
                with m.Elif(~len_ok_q):
                    fail(LinkError.BAD_LENGTH)
                with m.Elif(empty_q):
                    m.next = "CRC0"
                with m.Else():
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"), m.If(receive()):
                m.d.sync += count.eq(count + 1)
                for i in range(ADDR_BYTES + COUNT_BYTES):
                    with m.If(count == i):
                        m.d.sync += hdr[8 * i:8 * i + 8].eq(byte)
                m.d.comb += [buf_w.addr.eq(count - ADDR_BYTES),
                             buf_w.en.eq(count >= ADDR_BYTES)]
                with m.If(count == count_last):
                    m.next = "CRC0"
            with m.State("CRC0"), m.If(receive()):
                m.next = "CRC1"
            with m.State("CRC1"), m.If(receive()):
                m.next = "CHECK"
            # Bad header: LEN cannot be trusted, so wait for the line to go quiet.
            with m.State("DISCARD"), m.If(expired):
                reply(Reply.ERROR, 2)

            # Two cycles, the CRC's check and the accelerator's state registered in the first.
            with m.State("CHECK"):
                m.d.sync += [addr.eq(hdr[:8 * ADDR_BYTES]), ptr.eq(0), crc_ok.eq(crc == 0),
                             busy_q.eq(busy)]
                m.next = "DECIDE"
            with m.State("DECIDE"):
                with m.If(~crc_ok):
                    reply_error(LinkError.BAD_CRC)
                with m.Elif(code == Command.PING):
                    reply(Reply.PING, len(ident))
                with m.Elif(code == Command.STATUS):
                    reply(Reply.STATUS, len(status_bytes))
                with m.Elif(busy_q):
                    reply_error(LinkError.BUSY)
                with m.Elif(code == Command.START):
                    m.d.sync += start.eq(1)
                    reply(code | 0x80, 0)
                with m.Elif(bad_read_len):
                    reply_error(LinkError.BAD_LENGTH)
                with m.Elif(~range_ok):
                    reply_error(LinkError.BAD_ADDRESS)
                with m.Elif(is_read):
                    reply(Reply.READ_MEM, read_units << _log2(P))
                with m.Else():
                    m.next = "COMMIT_READ"

            # Buffer -> assembly register -> memory or program memory.
            with m.State("COMMIT_READ"):
                goto("COMMIT_SHIFT")      # buf_rdata is buffer[ptr] in the next cycle
            with m.State("COMMIT_SHIFT"):
                m.d.sync += ptr.eq(ptr + 1)
                with m.If(unit_end):
                    m.next = "COMMIT_WRITE"
                with m.Else():
                    m.next = "COMMIT_READ"
            with m.State("COMMIT_WRITE"):
                m.d.comb += [self.imem_we.eq(is_imem), self.mem_we.eq(~is_imem)]
                m.d.sync += addr.eq(addr + 1)
                with m.If(ptr == data_bytes):
                    reply(code | 0x80, 0)
                with m.Else():
                    m.next = "COMMIT_READ"

            # -- replies -----------------------------------------------------------------------
            def send(value):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
                return self.tx.ready

            def send_crc(value):
                m.d.comb += [crc_in.eq(value), crc_en.eq(self.tx.ready)]
                return send(value)

            with m.State("TX_SYNC"), m.If(send(SYNC)):
                m.d.sync += [crc.eq(CRC_INIT), count.eq(0)]
                m.next = "TX_CODE"
            with m.State("TX_CODE"), m.If(send_crc(rcode)):
                m.next = "TX_LEN0"
            with m.State("TX_LEN0"), m.If(send_crc(rlen[:8])):
                m.next = "TX_LEN1"
            with m.State("TX_LEN1"), m.If(send_crc(rlen[8:])):
                with m.If(rlen == 0):
                    m.next = "TX_CRC0"
                with m.Elif(rcode == Reply.READ_MEM):
                    m.next = "FETCH"
                with m.Else():
                    goto("TX_PREP")
            with m.State("FETCH"):
                m.d.comb += self.mem_re.eq(1)
                m.d.sync += addr.eq(addr + 1)
                goto("FETCH_WAIT_1")
            for i in range(1, self.read_latency):
                with m.State(f"FETCH_WAIT_{i}"):
                    goto(f"FETCH_WAIT_{i + 1}")
            with m.State(fetched):     # the word is loaded into `shreg` (`load_word`)
                goto("TX_PREP")
            # The byte to send is chosen into a register, then sent: the status and identity
            # tables are not in front of the CRC.
            out = Signal(8)
            out_q = Signal(8)
            with m.State("TX_PREP"):
                m.d.sync += out_q.eq(out)
                m.next = "TX_DATA"
                with m.Switch(rcode):
                    with m.Case(Reply.PING), m.Switch(count[:8]):
                        for i, b in enumerate(ident):
                            with m.Case(i):
                                m.d.comb += out.eq(b)
                    with m.Case(Reply.STATUS), m.Switch(count[:8]):
                        for i, b in enumerate(status_bytes):
                            with m.Case(i):
                                m.d.comb += out.eq(b)
                    with m.Case(Reply.READ_MEM):
                        m.d.comb += out.eq(shreg[width - a.port_bits:][:8])
                    with m.Default():
                        m.d.comb += out.eq(Mux(count[0], code, err))
            with m.State("TX_DATA"), m.If(send_crc(out_q)):
                m.d.sync += count.eq(count + 1)
                with m.If(count == rlast):
                    m.next = "TX_CRC0"
                with m.Elif((rcode == Reply.READ_MEM) & (count[:_log2(P)] == P - 1)):
                    m.next = "FETCH"
                with m.Else():
                    goto("TX_PREP")
            with m.State("TX_CRC0"), m.If(send(crc[8:])):
                m.next = "TX_CRC1"
            with m.State("TX_CRC1"), m.If(send(crc[:8])):
                m.next = "IDLE"
        return m
