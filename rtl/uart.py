"""An 8N1 UART: a receiver and a transmitter with a fixed number of clock cycles per bit."""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTReceiver", "UARTTransmitter", "rx_layout", "MIN_DIVISOR"]

#: The receiver samples at half a bit after the start edge and needs the start bit checked
#: before the first data bit.
MIN_DIVISOR = 4
#: One start bit, eight data bits (least significant first), one stop bit.
DATA_BITS = 8

rx_layout = data.StructLayout({"data": DATA_BITS, "frame_error": 1})


def _check(divisor: int) -> int:
    if not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ValueError(f"UART divisor {divisor!r} must be an integer >= {MIN_DIVISOR}")
    return divisor


class UARTReceiver(wiring.Component):
    """Receive 8N1 bytes from `rx`, sampling each bit in its middle.

    The line goes through a two-stage synchronizer that resets to the idle level (high), so a
    reset never sees a start bit. A start bit must still be low half a bit after its falling
    edge (else it was a glitch). A byte whose stop bit is low is delivered with `frame_error`
    set; the receiver then waits for the line to go high before it looks for the next start
    bit, so a held-low line (a break) yields one byte, not a stream of them.

    Parameters
    ----------
    divisor : clock cycles per bit (>= 4).

    Members
    -------
    rx : In(1)
        The serial line.
    stream : Out(stream.Signature(rx_layout))
        Received bytes. `valid` stays up until `ready`; a byte completed while the previous
        one is still waiting replaces it (overrun: the consumer must keep up, one byte per
        ten bit times).
    """

    rx: In(1)
    stream: Out(stream.Signature(rx_layout))

    def __init__(self, divisor: int):
        self.divisor = _check(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(d))
        bits = Signal(range(DATA_BITS + 1))
        shreg = Signal(DATA_BITS)
        tick = timer == 0
        with m.If(~tick):
            m.d.sync += timer.eq(timer - 1)
        with m.If(self.stream.ready):
            m.d.sync += self.stream.valid.eq(0)

        # Start by waiting for an idle (high) line, so a line held low through reset is not
        # taken for a start bit.
        with m.FSM(init="BREAK"):
            with m.State("IDLE"), m.If(~line):
                m.d.sync += timer.eq((d >> 1) - 1)
                m.next = "START"
            with m.State("START"), m.If(tick):
                with m.If(line):
                    m.next = "IDLE"   # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), bits.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"), m.If(tick):
                m.d.sync += [timer.eq(d - 1), shreg.eq(Cat(shreg[1:], line)),
                             bits.eq(bits + 1)]
                with m.If(bits == DATA_BITS - 1):
                    m.next = "STOP"
            with m.State("STOP"), m.If(tick):
                m.d.sync += [self.stream.valid.eq(1), self.stream.payload.data.eq(shreg),
                             self.stream.payload.frame_error.eq(~line)]
                with m.If(line):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "BREAK"
            with m.State("BREAK"), m.If(line):
                m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """Send 8N1 bytes on `tx`; the line idles high, also in and right after reset.

    Parameters
    ----------
    divisor : clock cycles per bit (>= 4).

    Members
    -------
    tx : Out(1)
    stream : In(stream.Signature(8))
        Bytes to send; one is taken whenever the transmitter is idle.
    """

    tx: Out(1)
    stream: In(stream.Signature(DATA_BITS))

    def __init__(self, divisor: int):
        self.divisor = _check(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        frame = DATA_BITS + 2
        timer = Signal(range(d))
        left = Signal(range(frame + 1))
        # Start bit, data, stop bit; shifted out least significant first. Resets to all ones so
        # the line is idle.
        shreg = Signal(frame, init=(1 << frame) - 1)
        m.d.comb += [self.tx.eq(shreg[0]), self.stream.ready.eq(left == 0)]
        with m.If(self.stream.valid & self.stream.ready):
            m.d.sync += [shreg.eq(Cat(Const(0, 1), self.stream.payload, Const(1, 1))),
                         left.eq(frame), timer.eq(d - 1)]
        with m.Elif(left != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), left.eq(left - 1),
                             timer.eq(d - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m
