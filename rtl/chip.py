"""The chip: the accelerator, the memory it runs against, and the UART host link.

A board wrapper (rtl/fpga.py) provides the `sync` clock domain and connects `uart_rx` and
`uart_tx` to the board's UART; `Chip` itself instantiates no pins.

Run ``python -m rtl.chip --verilog DIR [CHIP ...]`` to write Verilog for the chips of
`rtl.params.CHIPS` (the simulation memory; the iCE40 SPRAM variant needs the iCE40 platform).
"""

import sys
from pathlib import Path

from amaranth.hdl import Cat, ClockSignal, Instance, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.vendor import LatticeICE40Platform

from .cli import ArgumentParser
from .hostlink import HostLink
from .isa import Status
from .memport import read_port, registered
from .params import CHIPS, ChipParams, chip_params
from .top import Accelerator, write_component
from .uart import UARTReceiver, UARTTransmitter

__all__ = ["Chip", "ChipMemory", "main"]

#: iCE40 SPRAM: SB_SPRAM256KA, 16K words of 16 bits.
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16
SPRAM_COUNT = 4     # on an iCE40 UP5K


def uses_spram(platform, words: int, width: int) -> bool:
    """Whether the memory maps onto iCE40 UP SPRAMs on `platform`."""
    if not isinstance(platform, LatticeICE40Platform) or \
            not platform.device.startswith("iCE40UP"):
        return False
    banks = -(-words // SPRAM_DEPTH)
    return width % SPRAM_WIDTH == 0 and banks * (width // SPRAM_WIDTH) <= SPRAM_COUNT


class ChipMemory(wiring.Component):
    """Single-port memory of `words` x `width` bits; a read's data appears
    `rtl.params.chip_memory_latency(banks)` cycles later (the latency, below).

    On an iCE40 UP platform it is built from SPRAMs, whose data is registered after the bank
    select. Elsewhere it is `banks` Amaranth `Memory`s (block RAM, or simulation), each read
    into a register of its own, with the bank picked after those registers: on the ECP5 that
    register is the block RAM's output register (`rtl.bramfold`), and the 5.8 ns a DP16KD
    takes without it no longer lies in front of the bank select. The pick of more than one
    bank is registered again. Both behave identically cycle for cycle: `rdata` is the word at
    the address of a read (`en` without `we`) the latency after it, and undefined the latency
    after a cycle without one. A write (`en` and `we`) stores `wdata`. Contents after power-up
    are undefined on SPRAM (zero in simulation).

    Members
    -------
    addr : In(range(words))
    wdata : In(width)
    en, we : In(1)
    rdata : Out(width)
    """

    def __init__(self, words: int, width: int, banks: int = 1):
        assert banks >= 1 and words % banks == 0
        self.words = words
        self.width = width
        self.banks = banks
        super().__init__({"addr": In(range(words)), "wdata": In(width), "en": In(1),
                          "we": In(1), "rdata": Out(width)})

    def elaborate(self, platform):
        m = Module()
        rdata = Signal(self.width, reset_less=True)
        if uses_spram(platform, self.words, self.width):
            abits = SPRAM_DEPTH.bit_length() - 1
            banks = -(-self.words // SPRAM_DEPTH)
            bank = self.addr[abits:]
            bank_r = Signal.like(bank)
            m.d.sync += bank_r.eq(bank)
            outs = []
            for b in range(banks):
                out = Signal(self.width, name=f"bank{b}_data")
                outs.append(out)
                for s in range(self.width // SPRAM_WIDTH):
                    sl = slice(SPRAM_WIDTH * s, SPRAM_WIDTH * (s + 1))
                    m.submodules[f"spram_{b}_{s}"] = Instance(
                        "SB_SPRAM256KA",
                        i_ADDRESS=self.addr[:abits], i_DATAIN=self.wdata[sl],
                        i_MASKWREN=0b1111, i_WREN=self.we,
                        i_CHIPSELECT=self.en & (bank == b) if banks > 1 else self.en,
                        i_CLOCK=ClockSignal("sync"), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                        o_DATAOUT=out[sl])
            picked = outs[0]
            for b in range(1, banks):
                picked = Mux(bank_r == b, outs[b], picked)
            m.d.sync += rdata.eq(picked)
        else:
            depth = self.words // self.banks
            abits = (depth - 1).bit_length()
            bank = self.addr[abits:]
            if self.banks > 1:
                # The bank of a read, beside its word: at the block RAM's output, then in the
                # second register.
                bank_r = [Signal.like(bank, name=f"bank_r{i}") for i in range(2)]
                m.d.sync += [bank_r[0].eq(bank), bank_r[1].eq(bank_r[0])]
            outs = []
            for b in range(self.banks):
                mem = Memory(shape=self.width, depth=depth, init=[])
                m.submodules[f"mem{b}" if self.banks > 1 else "mem"] = mem
                wp = mem.write_port()
                here = bank == b if self.banks > 1 else 1
                rp, data = read_port(m, mem, en=self.en & ~self.we & here)
                out = Signal(self.width, name=f"bank{b}_data", reset_less=True)
                m.d.sync += out.eq(data)
                outs.append(out)
                m.d.comb += [wp.addr.eq(self.addr[:abits]), wp.data.eq(self.wdata),
                             wp.en.eq(self.en & self.we & here), rp.addr.eq(self.addr[:abits])]
            picked = outs[0]
            for b in range(1, self.banks):
                picked = Mux(bank_r[1] == b, outs[b], picked)
            m.d.comb += rdata.eq(picked)
        if self.banks > 1:
            # The pick is registered too: the banks' block RAMs lie across the die, and their
            # route into the pick and from it into the decoder's tables and checks was the
            # ULX3S chip's critical path. (On SPRAM as well, so that both take as long.)
            picked_r = Signal.like(rdata, name="rdata_r")
            m.d.sync += picked_r.eq(rdata)
            rdata = picked_r
        m.d.comb += self.rdata.eq(rdata)
        return m


class Chip(wiring.Component):
    """Run the accelerator on on-chip memory, driven by a host over a UART.

    The memory has one port. While the accelerator runs it owns the port. A write request is
    always accepted, into a register, and written in the next cycle; a read is accepted, and
    goes to memory in the same cycle, when that register is empty (`rd_req.ready` is its
    registered empty flag, so no request path crosses from STORE to LOAD within a cycle).
    Responses come back `ChipParams.mem_read_latency` cycles after the request, in order, from
    a register at the memory's output (and with `registered_memory_request`, each request goes
    through a register before it). The host link
    reaches memory and program memory only while the accelerator is neither running nor
    draining and no write is pending, so the two never meet. Accelerator addresses wrap at
    `mem_words`.

    Everything resets to a quiet state: the UART line idles high, the receiver ignores the
    line until it has seen it high, the accelerator is IDLE.

    Parameters
    ----------
    chip : ChipParams

    Members
    -------
    uart_rx : In(1)
    uart_tx : Out(1)
    running, done, failed : Out(1)
        Status lights: the accelerator is running; its last run ended DONE; or ERROR.
    """

    uart_rx: In(1)
    uart_tx: Out(1)
    running: Out(1)
    done: Out(1)
    failed: Out(1)

    def __init__(self, chip: ChipParams):
        self.chip = chip
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        chip = self.chip
        a = chip.array
        m.submodules.accel = acc = Accelerator(a)
        m.submodules.uart_rx = rx = UARTReceiver(chip.uart_divisor)
        m.submodules.uart_tx = tx = UARTTransmitter(chip.uart_divisor)
        m.submodules.link = link = HostLink(chip, chip.mem_read_latency)
        m.submodules.mem = mem = ChipMemory(chip.mem_words, a.port_bits, chip.mem_banks)

        m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx)]
        wiring.connect(m, rx.stream, link.rx)
        wiring.connect(m, link.tx, tx.stream)
        if chip.registered_program_write:
            # A program word goes into a register beside the accelerator and is written the next
            # cycle: the link's route across the die and the predecoder's carry chains were one
            # path. A START frame follows a write frame's last word by thousands of cycles.
            we, addr, word = registered(m, "imem_w_", en=link.imem_we, addr=link.imem_addr,
                                        data=link.imem_data)
        else:
            we, addr, word = link.imem_we, link.imem_addr, link.imem_data
        m.d.comb += [
            acc.imem_we.eq(we), acc.imem_addr.eq(addr), acc.imem_data.eq(word),
            acc.start.eq(link.start),
            link.status.eq(acc.status), link.error.eq(acc.error),
            link.error_pc.eq(acc.error_pc),
            link.counters.eq(acc.counters),
            self.running.eq(acc.status == Status.RUNNING),
            self.done.eq(acc.status == Status.DONE),
            self.failed.eq(acc.status == Status.ERROR),
        ]

        abits = (chip.mem_words - 1).bit_length()
        # wr_full: a write taken last cycle, written this cycle.
        wr_full, wr_addr, wr_data = registered(m, "wr_", full=acc.wr_req.valid,
                                               addr=acc.wr_req.payload.addr[:abits],
                                               data=acc.wr_req.payload.data)
        acc_rd = acc.rd_req.valid & ~wr_full
        m.d.comb += [acc.wr_req.ready.eq(1), acc.rd_req.ready.eq(~wr_full),
                     link.draining.eq(acc.draining | wr_full)]
        req_addr, req_wdata = Signal.like(mem.addr), Signal.like(mem.wdata)
        req_we, req_en = Signal(), Signal()
        with m.If(wr_full):
            m.d.comb += [req_addr.eq(wr_addr), req_wdata.eq(wr_data), req_we.eq(1),
                         req_en.eq(1)]
        with m.Elif(acc_rd):
            m.d.comb += [req_addr.eq(acc.rd_req.payload[:abits]), req_en.eq(1)]
        with m.Else():
            m.d.comb += [req_addr.eq(link.mem_addr), req_wdata.eq(link.mem_wdata),
                         req_we.eq(link.mem_we), req_en.eq(link.mem_we | link.mem_re)]
        req = dict(addr=req_addr, wdata=req_wdata, we=req_we, en=req_en)
        if chip.registered_memory_request:
            # The choice of request is registered before it reaches the memory's block RAMs,
            # spread over the die: every request, in order, a cycle later.
            req = dict(zip(req, registered(m, "mem_req_", **req)))
        m.d.comb += [getattr(mem, k).eq(v) for k, v in req.items()]
        # The memory's word, `mem_read_latency` cycles after the read was accepted; `was_rd`
        # its valid flag on the way.
        was_rd = Signal(chip.mem_read_latency - 1)
        m.d.sync += [was_rd.eq(Cat(acc_rd, was_rd)), acc.rd_resp.valid.eq(was_rd[-1])]
        m.d.comb += [acc.rd_resp.payload.eq(mem.rdata), link.mem_rdata.eq(mem.rdata)]
        return m


def write_verilog(chip: ChipParams, path: Path) -> Path:
    """Write the chip as Verilog (top module `ternary_chip`), with the simulation memory."""
    return write_component(Chip(chip), "ternary_chip", path)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m rtl.chip", description=__doc__.split("\n")[0])
    ap.add_argument("--verilog", metavar="DIR", type=Path, required=True,
                    help="write DIR/<chip>.v")
    ap.add_argument("chips", nargs="*", default=list(CHIPS),
                    help=f"chips (default: all of {', '.join(CHIPS)})")
    args = ap.parse_args(argv)
    try:
        chips = [chip_params(n) for n in args.chips]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in chips:
        out = write_verilog(c, args.verilog / f"{c.name}.v")
        print(f"{c.name}: {c.array.name} accelerator, {c.mem_words} x {c.array.port_bits}-bit "
              f"memory, UART {c.baud} baud (divisor {c.uart_divisor}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
