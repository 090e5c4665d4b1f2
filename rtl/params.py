"""The accelerator's parameters: one frozen dataclass and its named scale points.

Everything that sizes the hardware or times it lives here, once. The RTL elaborates from an
`ArrayParams`; the simulator and the compiler import the same object, so a latency or a buffer
depth is never written twice. Like `rtl.isa`, it never elaborates hardware.
"""

import dataclasses
from dataclasses import dataclass, field

from .isa import (
    COUNTER_BITS,
    NM_M,
    NM_OFFSET_BITS,
    NM_SLOTS_PER_BYTE,
    NM_WORDS_PER_ROW,
    WeightEncoding,
)

__all__ = ["ArrayParams", "MemTiming", "SCALE_POINTS", "scale_point"]

#: Activations are int8 (BitNet b1.58 quantizes them per token, symmetric, to [-128, 127]).
ACT_BITS = 8
#: Results leave the accelerator as little-endian int32, one per output row and token.
OUT_BYTES = 4
#: Trits carried by one byte of the densest weight encoding (base 3, 3^5 = 243 <= 256).
#: The row of lanes is as wide as one memory beat of base-3 weights, so decode is port-bound.
TRITS_PER_PORT_BYTE = 5


@dataclass(frozen=True)
class MemTiming:
    """Timing of the external memory port as both the testbench memory and the simulator see it.

    The port moves one beat of `ArrayParams.port_bytes` per cycle in each direction (separate read
    and write channels, as in AXI). A read response is presented exactly `read_latency` cycles
    after its request was accepted. This is the deterministic model used for lockstep; the
    testbench can also inject random latency and back-pressure, where only results must agree.
    """

    read_latency: int = 8

    def __post_init__(self):
        if not 1 <= self.read_latency <= 255:
            raise ValueError(f"read_latency={self.read_latency} must be in 1..255")


@dataclass(frozen=True)
class ArrayParams:
    """Size the ternary array, its buffers and its memory port.

    Parameters
    ----------
    name : scale point name, for reports.
    port_bytes : bytes per memory beat (P). A power of two, at least 4.
    token_lanes : tokens computed side by side (Lt). Each of the `row_lanes` output rows has
        `token_lanes` lanes; in decode only one is busy, in prefill all are.
    wbuf_rows : weight buffer depth in columns of `row_lanes` decoded trits.
    abuf_rows : activation buffer depth in rows of `port_bytes` int8 values.
    acc_groups : accumulator buffer depth in groups of `token_lanes` tokens x `row_lanes` rows.
    max_k : largest reduction length that provably cannot overflow an accumulator.
    queue_depth : instructions buffered in front of each of the load, compute and store units;
        0 for none: a unit takes its instruction from the dispatcher, which waits for it.
    token_depth : capacity of each dependency-token queue between units.
    loads_in_flight : LOADs taken by the LOAD unit and not yet retired (all responses back).
    imem_depth : instructions the program memory holds.
    encodings : weight encodings the decoder implements (`rtl.isa.WeightEncoding` values).
        `NM` also widens the weight buffer (a 3-bit slot offset per lane) and gives every lane
        an 8-way activation select; it needs a port of at least 8 * token_lanes bytes, so that
        a group of 8 columns of every token of a token group is in one activation word.
    counter_bits : width of each performance counter; counters wrap around.
    registered_decode : the weight decoder's base-3 tables are block RAM, read in the cycle a
        response arrives: the LOAD response side runs one cycle behind the port (a LOAD retires
        one cycle later). Without it they are logic, about 140 iCE40 cells per port byte.
    registered_weight_write : a decoded weight row is written to the weight buffer one cycle
        later: each encoding's decoding is registered (the base-3 tables' rows as they leave
        their block RAMs) and only the choice of encoding follows the registers (`rtl.decoder`);
        the write's enable and address are registered. No cycle changes: a LOAD's consumers
        issue the cycle after it retires at the earliest, and read a cycle after that. It costs
        a flip-flop per bit of the word and of the tables' rows (on the ECP5 the rows' are the
        block RAMs' output registers, `rtl.bramfold`).
    registered_act_write : likewise an activation word is written to the activation buffer
        from a register, a cycle after its response (its address adder and the route across
        the die then lie before the register). No cycle changes, for the same reason. It costs
        a flip-flop per bit of a word.
    held_fetch : the program memory (and its predecode) is read every cycle, and an instruction
        waiting for its unit is held in flip-flops, instead of the memory holding it with its
        read enable: no issue decision reaches a block RAM. No cycle changes. It costs a
        flip-flop and a mux per bit of an instruction and its predecode (about 300 iCE40 cells).
    prefetch : the program memory (and its predecode) is read ahead into flip-flops, a register
        as the word leaves the block RAM and a queue of two behind the instruction being
        decoded: no issue decision sees a block RAM's output, nor reaches its enable or
        address. The first instruction is decoded a cycle later (one cycle more per run); after
        that one per cycle as without it (`rtl.sequencer`). Instead of `held_fetch`; it costs
        three registers of an instruction and its predecode.
    registered_operands : COMPUTE registers the weight and activation words as they leave their
        block RAMs, a stage before it picks each lane's operands from them: the picking (a byte
        select per token lane behind the activation word) no longer follows a block RAM's
        clock-to-out. A MATMUL retires a cycle later (`matmul_drain`); the next one still
        issues in its last read cycle. It costs a flip-flop per bit of both words. Only with
        held lanes (`acc_in_lanes`), the shape it is verified on.
    fanout_rows : COMPUTE registers the held lanes' clear (`acc_in_lanes`), which reaches
        every accumulator flip-flop, in one copy per `fanout_rows` rows; 0 for a single copy.
        No cycle changes. It costs the copies' flip-flops (the FPGA flow keeps them apart:
        `rtl.memport.copies`). (Copies of the activations, measured on the ULX3S, made no
        lane faster: the route from the byte select to the copies got longer instead.)
    mem : timing of the external memory port.
    """

    name: str
    port_bytes: int
    token_lanes: int
    wbuf_rows: int
    abuf_rows: int
    acc_groups: int
    max_k: int = 16384
    queue_depth: int = 4
    token_depth: int = 8
    loads_in_flight: int = 4
    imem_depth: int = 1024
    encodings: tuple = (WeightEncoding.BASE3, WeightEncoding.CODE2)
    counter_bits: int = COUNTER_BITS
    registered_decode: bool = False
    registered_weight_write: bool = False
    registered_act_write: bool = False
    held_fetch: bool = False
    prefetch: bool = False
    registered_operands: bool = False
    fanout_rows: int = 0
    mem: MemTiming = field(default_factory=MemTiming)

    def __post_init__(self):
        def pow2(v):
            return v > 0 and v & (v - 1) == 0

        checks = [
            (pow2(self.port_bytes) and self.port_bytes >= 4,
             "port_bytes must be a power of 2 >= 4"),
            (pow2(self.token_lanes) and self.token_lanes <= self.port_bytes,
             "token_lanes must be a power of 2 no larger than port_bytes"),
            (self.wbuf_rows >= 2, "wbuf_rows must be >= 2"),
            (self.abuf_rows >= 2, "abuf_rows must be >= 2"),
            (self.acc_groups >= 1, "acc_groups must be >= 1"),
            (self.max_k >= 1, "max_k must be >= 1"),
            (self.queue_depth >= 0, "queue_depth must be >= 0"),
            (self.token_depth >= 1, "token_depth must be >= 1"),
            (self.loads_in_flight >= 1, "loads_in_flight must be >= 1"),
            (self.fanout_rows >= 0, "fanout_rows must be >= 0"),
            (not (self.held_fetch and self.prefetch),
             "held_fetch and prefetch are two ways to fetch: choose one"),
            (not self.registered_operands or self.acc_in_lanes,
             "registered_operands needs held lanes (acc_groups == 1)"),
            (self.imem_depth >= 2, "imem_depth must be >= 2"),
            (16 <= self.counter_bits <= 64, "counter_bits must be in 16..64"),
            (len(self.encodings) >= 1 and set(self.encodings) <= set(WeightEncoding),
             "encodings must be a non-empty subset of rtl.isa.WeightEncoding"),
            (WeightEncoding.NM not in self.encodings
             or self.port_bytes >= NM_M * self.token_lanes,
             "the NM encoding needs port_bytes >= 8 * token_lanes"),
        ]
        for ok, why in checks:
            if not ok:
                raise ValueError(f"ArrayParams {self.name!r}: {why}")

    @property
    def first_decode(self) -> int:
        """The cycle of a run (0: the first RUNNING cycle) that decodes its first instruction."""
        return int(self.prefetch)

    @property
    def matmul_drain(self) -> int:
        """Cycles from a MATMUL's last read to its retire: stage 1 picks each lane's operands
        (a cycle later with `registered_operands`), stage 2 adds. A MATMUL's first stage-1
        cycle is likewise `matmul_drain` cycles after its issue."""
        return 2 + int(self.registered_operands)

    @property
    def row_lanes(self) -> int:
        """Output rows computed at once: the trits in one beat of base-3 weights."""
        return TRITS_PER_PORT_BYTE * self.port_bytes

    @property
    def nm_rows(self) -> int:
        """Rows an N:M weight-buffer row reaches: the slots of NM_WORDS_PER_ROW words."""
        return NM_WORDS_PER_ROW * NM_SLOTS_PER_BYTE * self.port_bytes

    @property
    def nm(self) -> bool:
        """The scale point implements N:M slots (`WeightEncoding.NM`)."""
        return WeightEncoding.NM in self.encodings

    @property
    def wbuf_lane_bits(self) -> int:
        """Bits per lane in a weight-buffer row: (nonzero, negative), and with the NM encoding
        the slot offset d (3 bits) above them."""
        return 2 + (NM_OFFSET_BITS if self.nm else 0)

    @property
    def lanes(self) -> int:
        """Ternary processing elements in the array."""
        return self.row_lanes * self.token_lanes

    @property
    def acc_in_lanes(self) -> bool:
        """With one accumulator group, the lanes' own registers are that group: no buffer.

        The lanes then clear at a non-accumulating MATMUL's first read cycle instead of loading a
        start value, and STORE reads them directly. Results of programs whose tokens order every
        hazard are the same as with a buffer; only a racing STORE can see the difference.
        """
        return self.acc_groups == 1

    @property
    def act_bits(self) -> int:
        return ACT_BITS

    @property
    def acc_bits(self) -> int:
        """Signed accumulator width: |acc| <= 128 * max_k (x = -128 against w = -1)."""
        return (2 ** (ACT_BITS - 1) * self.max_k).bit_length() + 1

    @property
    def batch_tokens(self) -> int:
        """Tokens a compiled program runs at once: those of half the accumulator groups (so
        STORE can drain one half while the lanes fill the other), at least one group of
        `token_lanes`. A whole number of groups: a batch starts on a group of the activation
        image, whose words interleave the tokens of a group."""
        return max(self.acc_groups // 2, 1) * self.token_lanes

    @property
    def out_words_per_token(self) -> int:
        """Memory beats that hold one token's results for a full row of lanes."""
        return OUT_BYTES * self.row_lanes // self.port_bytes

    @property
    def max_tokens(self) -> int:
        """Tokens one accumulator buffer can hold."""
        return self.acc_groups * self.token_lanes

    @property
    def port_bits(self) -> int:
        return 8 * self.port_bytes


SCALE_POINTS = {
    # The iCEBreaker (iCE40 UP5K, 5,280 logic cells): a 32-bit port, 20 rows x 1 token. Sized to
    # fit with its chip top: every accumulator group is a row of flip-flops (too wide for block
    # RAM), so there is one, held in the lanes; no instruction queues; 32-bit counters.
    "tiny": ArrayParams(name="tiny", port_bytes=4, token_lanes=1,
                        wbuf_rows=256, abuf_rows=256, acc_groups=1, queue_depth=0,
                        loads_in_flight=2, imem_depth=256, counter_bits=32,
                        registered_decode=True),
    # ULX3S (ECP5-85F): a 256-bit port, 160 rows x 2 tokens = 320 lanes. One accumulator group,
    # held in the lanes: a buffer of two groups (7,360 flip-flops each) let STORE drain one while
    # the lanes filled the other, but with its read and bypass muxes it cost 74 LUT4 per lane of
    # the 136 (the goal is 50); a STORE of 40 words against a MATMUL of k_len cycles costs less.
    # The base-3 tables are block RAM (registered_decode): the combinational decoder was its
    # critical path, then the tables' route into the weight buffer (registered_weight_write),
    # then the predecode block RAM into the issue decisions and back to its enable (held_fetch,
    # then prefetch), then the lanes' clear (fanout_rows).
    "ecp5": ArrayParams(name="ecp5", port_bytes=32, token_lanes=2,
                        wbuf_rows=1024, abuf_rows=512, acc_groups=1, registered_decode=True,
                        registered_weight_write=True, registered_act_write=True, prefetch=True,
                        registered_operands=True, fanout_rows=4),
    # The reference design: a 1024-bit port (128 B/cycle), 640 rows x 2 tokens = 1280 lanes.
    # 640 rows divide the 2B4T projection heights 2560 and 640 and tile 6912 at 98%.
    # It implements N:M structured sparse weights (rtl.isa NM) besides the dense encodings.
    "default": ArrayParams(name="default", port_bytes=128, token_lanes=2,
                           wbuf_rows=2048, abuf_rows=1024, acc_groups=64,
                           encodings=tuple(WeightEncoding),
                           imem_depth=4096, queue_depth=8, mem=MemTiming(read_latency=32)),
}


def scale_point(name: str) -> ArrayParams:
    """Return the named scale point, or raise a ValueError that lists the valid names."""
    try:
        return SCALE_POINTS[name]
    except KeyError:
        raise ValueError(f"unknown scale point {name!r}; choose one of "
                         f"{', '.join(SCALE_POINTS)}") from None


# -- chips: a scale point on a board, with its on-chip memory and host link (rtl/chip.py) ------

__all__ += ["ChipParams", "CHIPS", "chip_memory_latency", "chip_params", "sim_chip"]


@dataclass(frozen=True)
class ChipParams:
    """Size a whole chip: the accelerator, the memory it serves and the UART host link.

    Parameters
    ----------
    name : board name, for reports.
    array : the accelerator's scale point.
    mem_words : on-chip memory in words of `array.port_bytes`. A power of two; the
        accelerator's word addresses wrap at it.
    clk_hz : frequency of the `sync` clock the board wrapper provides.
    baud : UART bit rate (8N1).
    link_buffer_bytes : data bytes one link frame carries at most; a write frame is buffered
        whole before it is committed. A power of two, a multiple of the memory word and of an
        instruction.
    link_timeout_bits : bit times of silence that end a frame early (the engine then replies
        TIMEOUT) or end a bad frame being discarded.
    registered_program_write : program words pass through a register on their way from the
        link to the accelerator's program memory (a flip-flop per instruction bit; no effect
        on the protocol, whose START follows a write by thousands of cycles).
    registered_memory_request : the memory's address, write data and enables pass through a
        register (every request a cycle later, reads one cycle longer: `mem_read_latency`).
    mem_banks : the memory (where it is block RAM) is built as this many memories, by address,
        each read into a register of its own before the bank is picked (`rtl.chip.ChipMemory`):
        on the ECP5 those registers are the block RAMs' output registers (`rtl.bramfold`). As
        many as the block RAMs' own depth makes of it (Yosys builds 4096 x 256 bits from
        DP16KDs of 2048 x 9: two). The pick is registered too: reads take a cycle longer.
    """

    name: str
    array: ArrayParams
    mem_words: int
    clk_hz: int
    baud: int
    link_buffer_bytes: int = 256
    link_timeout_bits: int = 10_000
    registered_program_write: bool = False
    registered_memory_request: bool = False
    mem_banks: int = 1

    def __post_init__(self):
        from .isa import INSTR_BITS

        def pow2(v):
            return v > 0 and v & (v - 1) == 0

        unit = max(self.array.port_bytes, INSTR_BITS // 8)
        checks = [
            (pow2(self.mem_words) and self.mem_words >= 2, "mem_words must be a power of 2 >= 2"),
            (self.clk_hz > 0 and self.baud > 0, "clk_hz and baud must be > 0"),
            (self.clk_hz >= 4 * self.baud, "the UART needs at least 4 clock cycles per bit"),
            (abs(self.clk_hz / max(self.uart_divisor, 1) - self.baud) <= 0.02 * self.baud,
             "clk_hz / baud is more than 2% from a whole number of cycles per bit"),
            (pow2(self.link_buffer_bytes) and self.link_buffer_bytes % unit == 0
             and self.link_buffer_bytes <= 4096,
             f"link_buffer_bytes must be a power of 2, a multiple of {unit}, at most 4096"),
            (self.link_timeout_bits >= 32, "link_timeout_bits must be >= 32"),
            (pow2(self.mem_banks) and self.mem_banks < self.mem_words,
             "mem_banks must be a power of 2 below mem_words"),
        ]
        for ok, why in checks:
            if not ok:
                raise ValueError(f"ChipParams {self.name!r}: {why}")

    @property
    def uart_divisor(self) -> int:
        """Clock cycles per UART bit."""
        return (2 * self.clk_hz + self.baud) // (2 * self.baud)

    @property
    def mem_read_latency(self) -> int:
        """Cycles from an accepted read to its data: the memory's own (`chip_memory_latency`),
        a cycle more with `registered_memory_request`."""
        return chip_memory_latency(self.mem_banks) + int(self.registered_memory_request)

    @property
    def mem_bytes(self) -> int:
        return self.mem_words * self.array.port_bytes


def chip_memory_latency(banks: int) -> int:
    """Cycles from a read of the chip memory (`rtl.chip.ChipMemory`) to its data: the memory
    registers the address, and its data is registered again before anything uses it (on the
    ECP5 in the block RAMs' output registers: their 5.8 ns clock-to-out without them and the
    route across the die from them were the chip's critical path); with more than one bank the
    pick of the bank is registered as well."""
    return 2 + int(banks > 1)


CHIPS = {
    # iCEBreaker: iCE40 UP5K, its four SPRAMs (128 KB) as the memory, 12 MHz crystal -> PLL.
    # The chip fills 97-98% of the UP5K's logic cells; with its control pipelined (precomputed
    # checks and flags, docs/architecture.md section 5.1) it reaches 29.9-36 MHz, one
    # placement to the next (docs/results.md), so the PLL makes 30 MHz, and a placement
    # that misses it is placed again (`rtl.fpga.Board.retry_seeds`); 48 MHz is still open.
    "icebreaker": ChipParams(name="icebreaker", array=SCALE_POINTS["tiny"], mem_words=32768,
                             clk_hz=30_000_000, baud=1_000_000),
    # ULX3S: ECP5-85F, 128 KB of block RAM beside the accelerator's own buffers. The chip
    # takes 30% of the logic; with the block RAM outputs registered before the decoder, the
    # issue decisions (the program read ahead: `prefetch`) and COMPUTE's operand select
    # (`registered_operands`), every buffer and memory write from a register, a registered
    # reset, a three-stage zero count, the held lanes' clock enables and clears straight
    # from flip-flops and the wide registers off the freeze's enable (the units' `data`
    # domain), the base-3 tables' rows registered before the choice of encoding, and LOAD's
    # registers off its issue decision, its paths reach 101 MHz built for 100 MHz
    # (docs/results.md, session 27; 97 in session 26, 89 before), so the PLL makes 100 MHz
    # from the 25 MHz oscillator (x 4). 150 MHz
    # (6.7 ns) is below a block RAM's 5.8 ns clock-to-out plus a route: the flow folds the
    # register behind a block RAM into its output register (`rtl.bramfold`; the memory's
    # banks each have one: `mem_banks`), and the paths left past 6.7 ns are logic.
    "ulx3s": ChipParams(name="ulx3s", array=SCALE_POINTS["ecp5"], mem_words=4096,
                        clk_hz=100_000_000, baud=1_000_000, registered_program_write=True,
                        registered_memory_request=True, mem_banks=2),
}


def chip_params(name: str) -> ChipParams:
    """Return the named chip, or raise a ValueError that lists the valid names."""
    try:
        return CHIPS[name]
    except KeyError:
        raise ValueError(f"unknown chip {name!r}; choose one of {', '.join(CHIPS)}") from None


def sim_chip(chip: ChipParams, divisor: int = 4, timeout_bits: int = 64) -> ChipParams:
    """The same chip with a fast UART (`divisor` cycles per bit) and a short frame timeout,
    for simulation: every other parameter, and so the logic, is the board's."""
    return dataclasses.replace(chip, name=f"{chip.name}-sim", clk_hz=chip.baud * divisor,
                               link_timeout_bits=timeout_bits)
