"""Synchronous read ports that leave read/write collisions to the block RAM.

Amaranth's `Memory.read_port()` promises the old word when the same address is written in the
same cycle. Block RAMs do not (iCE40 EBR reads are undefined then), so Yosys keeps the promise
with a bypass: a register for the write data, address and enable, and a mux per bit. That costs
about a logic cell per bit of every buffer, and no unit here ever reads a word in the cycle it
is written (a program that does races, and its data is unspecified in the simulator too).

`read_port` builds the same synchronous port from an asynchronous read and a register. Yosys
merges the two into the block RAM's own read port, and the FPGA flow (`rtl.fpga`) marks every
memory `no_rw_check`, which Yosys applies where it merges such a register: the bypass goes.
In simulation the port behaves exactly like `Memory.read_port()`.

`registered` delays a write port's enable, address and data by a cycle, for writes whose
source lies far from the memory. `copies` registers one value in several flip-flops, each
serving part of a wide fan-out; the FPGA flow keeps them apart (`rtl.fpga.KEEP_COPIES`).
"""

from amaranth.hdl import Signal, Value

__all__ = ["COPY_ATTR", "copies", "read_port", "registered"]

#: The attribute that marks a flip-flop copy (`copies`) for the FPGA flow.
COPY_ATTR = "fanout_copy"


def read_port(m, memory, *, en=None, domain: str = "sync"):
    """A read port of `memory`: drive `.addr`; `data` is the word one cycle later.

    `en`, when given, holds `data` in cycles where it is low. The register has no reset, like a
    memory's own read register, so a reset of the surrounding module does not clear it.
    Returns (port, data): the asynchronous port (for its `addr`) and the registered word.
    """
    port = memory.read_port(domain="comb")
    data = Signal(memory.shape, reset_less=True)
    update = getattr(m.d, domain)
    if en is None:
        update += data.eq(port.data)
    else:
        with m.If(en):
            update += data.eq(port.data)
    return port, data


def registered(m, prefix: str, domain: str = "sync", **values) -> tuple:
    """Flip-flop copies of `values` (keyword order), each one cycle late and named
    `prefix + key`: for a write port, its enable, address and data."""
    regs = tuple(Signal.like(v, name=f"{prefix}{k}") for k, v in values.items())
    m.d[domain] += [r.eq(v) for r, v in zip(regs, values.values())]
    return regs


def copies(m, name: str, value, n: int, domain: str = "sync") -> list:
    """`n` flip-flops that each take `value` every cycle, named `name_0` ... : the same register
    `n` times, so that each copy drives only its share of the loads. Synthesis would merge
    them back into one (they are the same logic), so each carries `COPY_ATTR`, for which the
    FPGA flow marks their flip-flops to keep."""
    shape = Value.cast(value).shape()
    regs = [Signal(shape, name=f"{name}_{i}", attrs={COPY_ATTR: 1}) for i in range(n)]
    m.d[domain] += [r.eq(value) for r in regs]
    return regs
