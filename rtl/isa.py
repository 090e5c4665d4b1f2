"""The instruction set: the one definition of every field, opcode, encoding and trace record.

The RTL decodes instructions with Amaranth layouts derived from the tables below; the simulator
and the compiler encode and decode with plain shifts and masks derived from the same tables.
`docs/isa.md` is generated from this module (`python -m rtl.isa --markdown`), and a test fails
when the committed copy is stale.

Machine model (see docs/architecture.md): three units, LOAD, COMPUTE and STORE, each with an
in-order instruction queue, fed by one in-order dispatcher. Units synchronize only through
dependency tokens: each instruction may pop a token from, and push a token to, its neighbour
in the chain LOAD <-> COMPUTE <-> STORE ("prev" is towards LOAD, "next" towards STORE).
A pop waits until the token is there; this is how double buffering is expressed.

This module imports only the standard library and `amaranth.lib.enum` / `amaranth.lib.data`.
"""

import dataclasses
import sys
from dataclasses import dataclass

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

from .cli import ArgumentParser

__all__ = [
    "INSTR_BITS", "PC_BITS", "Opcode", "Unit", "Buffer", "WeightEncoding", "Status", "ErrorCode",
    "Counter", "Field", "FORMATS", "UNIT_OF", "OPCODE_OF_UNIT", "Instr", "Load", "MatMul",
    "Store", "Halt",
    "INSTR_CLASSES", "decode", "instr_layout", "header_layout", "TRACE_FIELDS", "TraceRecord",
    "trace_layout", "TRITS_PER_BYTE", "TRIT_CODE_OFFSET", "BASE3_VALID_BYTES", "CODE2_INVALID",
    "COUNTER_BITS", "base3_decode_table", "NM_M", "NM_MIN_N", "NM_MAX_N", "NM_OFFSET_BITS",
    "NM_SLOT_BITS", "NM_SLOTS_PER_BYTE", "NM_WORDS_PER_ROW", "NM_EMPTY", "NM_INVALID",
    "nm_slot_table", "nm_bits_per_weight", "markdown",
]

#: Width of one instruction word.
INSTR_BITS = 128
#: Width of a program address (the trace record's pc field).
PC_BITS = 16
#: Default width of each performance counter (`ArrayParams.counter_bits` may narrow it).
COUNTER_BITS = 48


class Opcode(enum.IntEnum, shape=4):
    """Instruction opcodes. 0 is illegal so that erased program memory halts with an error."""

    LOAD = 1    #: LOAD unit: 2-D copy from external memory into the weight or activation buffer
    MATMUL = 2  #: COMPUTE unit: tiled ternary matrix product into the accumulators
    STORE = 3   #: STORE unit: accumulators to external memory as int32
    HALT = 4    #: dispatcher: wait until every unit is idle, then stop with status DONE


class Unit(enum.IntEnum, shape=2):
    """The units, in dependency-chain order. Also the order of same-cycle trace records."""

    LOAD = 0
    COMPUTE = 1
    STORE = 2
    DISPATCH = 3


#: Which unit executes each opcode.
UNIT_OF = {
    Opcode.LOAD: Unit.LOAD,
    Opcode.MATMUL: Unit.COMPUTE,
    Opcode.STORE: Unit.STORE,
    Opcode.HALT: Unit.DISPATCH,
}
#: The opcode each unit retires (the dispatcher retires only HALT).
OPCODE_OF_UNIT = {u: op for op, u in UNIT_OF.items()}


class Buffer(enum.IntEnum, shape=1):
    """On-chip buffer a LOAD writes to."""

    WEIGHT = 0  #: one memory word per row, decoded into `row_lanes` trits on the way in
    ACT = 1     #: int8 activations, one memory word per row, stored as they are


class WeightEncoding(enum.IntEnum, shape=2):
    """How ternary weights are packed in a memory word (trit t_i stored as code c_i = t_i + 1).

    Byte j of a word holds the trits of output rows j*n .. j*n + n - 1 of one weight column,
    n = TRITS_PER_BYTE[encoding]; lanes the word does not reach read zero.
    """

    BASE3 = 0   #: 5 trits per byte: byte = sum(c_i * 3**i); 243..255 are invalid. 1.6 bit/weight
    CODE2 = 1   #: 4 trits per byte: bits [2i+1:2i] = c_i (HF packed codes); 0b11 invalid. 2 bit
    NM = 2      #: N:M slots, 4 bits each, 2 per byte: bits [2:0] offset d, bit 3 negative. N/2 bit


TRITS_PER_BYTE = {WeightEncoding.BASE3: 5, WeightEncoding.CODE2: 4}
#: A trit t in {-1, 0, 1} is stored as the code t + 1 in both encodings.
TRIT_CODE_OFFSET = 1
#: Bytes 0..242 are valid base-3 bytes (3**5 = 243).
BASE3_VALID_BYTES = 3 ** TRITS_PER_BYTE[WeightEncoding.BASE3]
#: The 2-bit code that is not a trit.
CODE2_INVALID = 0b11

# N:M structured sparsity (WeightEncoding.NM, MATMUL field `nm`). Every group of NM_M = 8
# consecutive weight columns (k = 8q .. 8q+7) of a row holds at most N non-zero weights. They are
# stored as N slots per row and group; slot c of row r is a 4-bit code (offset d, negative):
# weight -1 if negative else +1 at column 8q + ((c + d) mod 8); d = 7 with sign 0 is an empty
# slot (no weight), d = 7 with sign 1 is invalid. Sorted positions p_0 < p_1 < ... in slots
# 0, 1, ... give offsets p_c - c in 0..6 (a lone weight at column 7 goes in slot 1). The weight
# buffer keeps one row per slot: group q's slots are rows q*N .. q*N + N - 1 of the tile, and a
# MATMUL with nm = N spends one cycle per slot, N cycles per group of 8 columns instead of 8.
#: Columns per N:M group (M).
NM_M = 8
#: Slots per group a MATMUL accepts: its `nm` field is 0 (dense) or NM_MIN_N .. NM_MAX_N.
NM_MIN_N = 2
NM_MAX_N = 7
#: Bits of a slot's offset d (a column within the group), of one slot code (the offset and a
#: sign bit above it), and codes per byte (lane 2i in the low nibble of byte i).
NM_OFFSET_BITS = (NM_M - 1).bit_length()
NM_SLOT_BITS = NM_OFFSET_BITS + 1
NM_SLOTS_PER_BYTE = 2
#: Words per weight-buffer row of N:M slots: word 2i fills lanes 0 .. 2P-1 of buffer row i,
#: word 2i+1 lanes 2P .. 4P-1 (and clears the top fifth, which N:M rows do not reach).
NM_WORDS_PER_ROW = 2
#: The empty slot, and the one code that is not a slot.
NM_EMPTY = 0b0111
NM_INVALID = 0b1111


class Status(enum.IntEnum, shape=2):
    """The accelerator's state, as read from its status register."""

    IDLE = 0     #: reset, or waiting for start
    RUNNING = 1
    DONE = 2     #: a HALT retired
    ERROR = 3    #: stopped; `ErrorCode` says why and `error_pc` where


class ErrorCode(enum.IntEnum, shape=4):
    """Why the accelerator stopped with status ERROR. Every malformed program ends in one."""

    NONE = 0
    ILLEGAL_OPCODE = 1   #: opcode not in `Opcode`
    BAD_DEPENDENCY = 2   #: a pop/push towards a unit that does not exist (LOAD prev, STORE next)
    BAD_FIELD = 3        #: a zero count, a weight encoding not enabled, a size past the scale point
    BAD_ADDRESS = 4      #: a buffer range that runs past the end of the buffer
    BAD_WEIGHT = 5       #: an invalid code in the weight stream (base-3 >= 243, 2-bit 0b11)
    TOKEN_OVERFLOW = 6   #: a push onto a full dependency-token queue
    DEADLOCK = 7         #: every unit waits on a token that nothing can push
    NO_HALT = 8          #: the program counter ran off the end of program memory


class Counter(enum.IntEnum, shape=4):
    """Performance counters, `ArrayParams.counter_bits` wide (wrapping), counted from start to
    DONE or ERROR."""

    CYCLES = 0              #: cycles from start to the cycle the run ended
    BUSY_LANE_CYCLES = 1    #: lane-cycles of useful work (row < n_rows, token < tokens)
    SKIPPED_ZERO = 2        #: busy lane-cycles whose weight was zero: no accumulator update
    BYTES_READ = 3          #: bytes received from the read channel
    BYTES_WRITTEN = 4       #: bytes sent on the write channel
    STALL_LOAD_DEP = 5      #: cycles the LOAD unit held an instruction waiting for a token
    STALL_COMPUTE_DEP = 6   #: cycles the COMPUTE unit held an instruction waiting for a token
    STALL_STORE_DEP = 7     #: cycles the STORE unit held an instruction waiting for a token
    STALL_READ_PORT = 8     #: cycles the LOAD unit waited on the read channel
    STALL_WRITE_PORT = 9    #: cycles the STORE unit waited on the write channel
    STALL_DISPATCH = 10     #: cycles the dispatcher held an instruction for a full unit queue


@dataclass(frozen=True)
class Field:
    """One instruction field: bits [lsb, lsb + width) of the word."""

    name: str
    lsb: int
    width: int
    doc: str
    shape: type | None = None   # an enum for typed fields, else an unsigned integer

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1


HEADER = (
    Field("opcode", 0, 4, "operation", Opcode),
    Field("pop_prev", 4, 1, "wait for and take a token from the previous unit"),
    Field("pop_next", 5, 1, "wait for and take a token from the next unit"),
    Field("push_prev", 6, 1, "on retirement, give a token to the previous unit"),
    Field("push_next", 7, 1, "on retirement, give a token to the next unit"),
)

FORMATS = {
    Opcode.LOAD: HEADER + (
        Field("buffer", 8, 1, "target buffer", Buffer),
        Field("encoding", 9, 2, "weight encoding of the source (weights only)", WeightEncoding),
        Field("sram", 16, 16, "first buffer row written"),
        Field("rows", 32, 12, "rows copied (>= 1)"),
        Field("length", 44, 16, "words per row (>= 1); buffer rows are filled consecutively"),
        Field("dram", 64, 32, "word address of the first row in external memory"),
        Field("stride", 96, 32, "words between the starts of consecutive rows in memory"),
    ),
    Opcode.MATMUL: HEADER + (
        Field("accumulate", 8, 1, "add onto the accumulators (1) or start from zero (0)"),
        Field("nm", 9, 3, "0: dense, one cycle per column; N in 2..7: N:M slots, N cycles per "
                          "group of 8 columns (weight rows hold slots; k_len a multiple of 8)"),
        Field("wbuf", 16, 16, "weight buffer row of column k = 0"),
        Field("abuf", 32, 16, "activation buffer row where token group 0 starts"),
        Field("acc", 48, 12, "first accumulator group"),
        Field("k_len", 64, 16, "reduction length, columns (>= 1)"),
        Field("tokens", 80, 12, "tokens (>= 1); groups of token_lanes tokens run side by side"),
        Field("n_rows", 92, 12, "output rows in use (1 .. row_lanes)"),
        Field("x_stride", 104, 16, "activation buffer rows between token groups"),
    ),
    Opcode.STORE: HEADER + (
        Field("acc", 16, 12, "first accumulator group"),
        Field("tokens", 32, 12, "tokens stored (>= 1)"),
        Field("words", 44, 8, "words written per token (1 .. out_words_per_token)"),
        Field("dram", 64, 32, "word address of token 0's results"),
        Field("stride", 96, 32, "words between consecutive tokens' results"),
    ),
    Opcode.HALT: HEADER,
}


def _check_table():
    for op, fields in FORMATS.items():
        used = 0
        names = set()
        for f in fields:
            if f.name in names:
                raise AssertionError(f"{op.name}: field {f.name} declared twice")
            names.add(f.name)
            if f.width < 1 or f.lsb < 0 or f.lsb + f.width > INSTR_BITS:
                raise AssertionError(f"{op.name}.{f.name}: bits [{f.lsb}, {f.lsb + f.width}) "
                                     f"outside the {INSTR_BITS}-bit word")
            if f.shape is not None and f.width != f.shape.as_shape().width:
                raise AssertionError(f"{op.name}.{f.name}: width {f.width} != {f.shape.__name__}")
            bits = f.mask << f.lsb
            if used & bits:
                raise AssertionError(f"{op.name}.{f.name} overlaps another field")
            used |= bits


_check_table()


class Instr:
    """Base of the instruction classes: range-checked fields, `encode()` to an integer."""

    opcode: Opcode
    fields: tuple

    def __post_init__(self):
        for f in self.fields:
            if f.name == "opcode":
                continue
            v = getattr(self, f.name)
            if f.shape is not None:
                try:
                    v = f.shape(v)
                except ValueError:
                    raise ValueError(f"{self.opcode.name}.{f.name}={v!r} is not a "
                                     f"{f.shape.__name__}") from None
                object.__setattr__(self, f.name, v)
            elif isinstance(v, bool):
                object.__setattr__(self, f.name, int(v))
            elif not isinstance(v, int):
                raise TypeError(f"{self.opcode.name}.{f.name}={v!r} is not an integer")
            if not 0 <= int(v) <= f.mask:
                raise ValueError(f"{self.opcode.name}.{f.name}={v} does not fit in "
                                 f"{f.width} bits")

    def encode(self) -> int:
        word = 0
        for f in self.fields:
            value = self.opcode if f.name == "opcode" else getattr(self, f.name)
            word |= int(value) << f.lsb
        return word

    def to_bytes(self) -> bytes:
        return self.encode().to_bytes(INSTR_BITS // 8, "little")

    def as_dict(self) -> dict:
        return {f.name: int(getattr(self, f.name)) for f in self.fields if f.name != "opcode"}


def _make_class(name: str, op: Opcode):
    spec = [(f.name, int, dataclasses.field(default=0)) for f in FORMATS[op] if f.name != "opcode"]
    cls = dataclasses.make_dataclass(
        name, spec, bases=(Instr,), frozen=True,
        namespace={"opcode": op, "fields": FORMATS[op],
                   "__doc__": f"The {op.name} instruction (fields: FORMATS[Opcode.{op.name}])."})
    cls.__module__ = __name__
    return cls


Load = _make_class("Load", Opcode.LOAD)
MatMul = _make_class("MatMul", Opcode.MATMUL)
Store = _make_class("Store", Opcode.STORE)
Halt = _make_class("Halt", Opcode.HALT)
INSTR_CLASSES = {cls.opcode: cls for cls in (Load, MatMul, Store, Halt)}


_ENUM_VALUES = {en: frozenset(int(m) for m in en) for en in (Opcode, Buffer, WeightEncoding)}


def decode(word: int, strict: bool = True) -> Instr:
    """Decode an instruction word; raise ValueError for an illegal opcode.

    With `strict`, bits outside the opcode's fields are refused too; without it they are
    ignored, as the hardware ignores them.
    """
    if not 0 <= word < 1 << INSTR_BITS:
        raise ValueError(f"instruction word {word:#x} is not {INSTR_BITS} bits")
    raw = word & 0xF
    try:
        op = Opcode(raw)
    except ValueError:
        raise ValueError(f"illegal opcode {raw}") from None
    cls = INSTR_CLASSES[op]
    values = {}
    covered = 0
    for f in cls.fields:
        covered |= f.mask << f.lsb
        if f.name != "opcode":
            values[f.name] = (word >> f.lsb) & f.mask
    if strict:
        if word & ~covered:
            raise ValueError(f"{op.name}: bits set outside its fields ({word & ~covered:#x})")
        return cls(**values)
    # As the hardware sees it: reserved enum values are kept as plain integers.
    ins = object.__new__(cls)
    for f in cls.fields:
        if f.name != "opcode":
            v = values[f.name]
            if f.shape is not None and v in _ENUM_VALUES[f.shape]:
                v = f.shape(v)
            object.__setattr__(ins, f.name, v)
    return ins


def header_layout() -> data.FlexibleLayout:
    """The fields every instruction shares, as an Amaranth layout over the whole word."""
    return _layout(HEADER)


def instr_layout(op: Opcode) -> data.FlexibleLayout:
    """The Amaranth layout of one opcode's instruction word, derived from FORMATS."""
    return _layout(FORMATS[op])


def _layout(fields, bits: int = INSTR_BITS) -> data.FlexibleLayout:
    return data.FlexibleLayout(bits, {
        f.name: data.Field(f.shape if f.shape is not None else unsigned(f.width), f.lsb)
        for f in fields})


# -- retire trace -------------------------------------------------------------------------------

TRACE_FIELDS = (
    Field("cycle", 0, 40, "cycles since start when the instruction retired"),
    Field("pc", 40, PC_BITS, "program address of the instruction"),
    Field("opcode", 56, 4, "its opcode", Opcode),
    Field("unit", 60, 2, "the unit that retired it", Unit),
)
TRACE_BITS = 64


@dataclass(frozen=True, order=True)
class TraceRecord:
    """One retired instruction. RTL and simulator emit identical sequences of these.

    Records are ordered by cycle, then unit (LOAD, COMPUTE, STORE, DISPATCH): at most one
    instruction per unit retires per cycle.
    """

    cycle: int
    unit: int
    pc: int
    opcode: int

    def encode(self) -> int:
        word = 0
        for f in TRACE_FIELDS:
            v = int(getattr(self, f.name))
            if not 0 <= v <= f.mask:
                raise ValueError(f"trace {f.name}={v} does not fit in {f.width} bits")
            word |= v << f.lsb
        return word

    @classmethod
    def decode(cls, word: int) -> "TraceRecord":
        return cls(**{f.name: (word >> f.lsb) & f.mask for f in TRACE_FIELDS})

    def __str__(self):
        return (f"{self.cycle:>10} {Unit(self.unit).name:<8} pc={self.pc:<5} "
                f"{Opcode(self.opcode).name}")


def trace_layout() -> data.FlexibleLayout:
    return _layout(TRACE_FIELDS, TRACE_BITS)


# -- weight encodings ---------------------------------------------------------------------------

def base3_decode_table() -> list:
    """The 243-entry table: byte -> 5 trits (t_0 first), the hardware decoder's contents."""
    n = TRITS_PER_BYTE[WeightEncoding.BASE3]
    table = []
    for byte in range(BASE3_VALID_BYTES):
        trits = []
        for _ in range(n):
            byte, code = divmod(byte, 3)
            trits.append(code - TRIT_CODE_OFFSET)
        table.append(tuple(trits))
    return table


def nm_slot_table() -> list:
    """The 16 slot codes -> (trit, offset d), None for the invalid code; empty is (0, 7)."""
    table = []
    for code in range(1 << NM_SLOT_BITS):
        d, neg = code & ((1 << NM_OFFSET_BITS) - 1), code >> NM_OFFSET_BITS
        if code == NM_INVALID:
            table.append(None)
        elif code == NM_EMPTY:
            table.append((0, d))
        else:
            table.append((-1 if neg else 1, d))
    return table


def nm_bits_per_weight(n: int) -> float:
    """Stored bits per weight of N:M slots: N codes of NM_SLOT_BITS per NM_M weights, all
    metadata included (there is none besides the codes)."""
    return n * NM_SLOT_BITS / NM_M


# -- documentation ------------------------------------------------------------------------------

def markdown() -> str:
    """Render the ISA reference (docs/isa.md) from the tables above."""
    out = ["# ISA reference", "",
           "Generated from `rtl/isa.py` by `python -m rtl.isa --markdown`; do not edit by hand "
           "(a test compares this file with the generator).", "",
           f"Instructions are {INSTR_BITS}-bit words, little-endian in program images. "
           "Bits are numbered from 0 (least significant).", "",
           "## Opcodes", "", "| value | opcode | unit | meaning |", "|---|---|---|---|"]
    for op in Opcode:
        out.append(f"| {int(op)} | `{op.name}` | {UNIT_OF[op].name} | {_doc(Opcode, op)} |")
    out += ["", "Any other opcode value stops the accelerator with `ILLEGAL_OPCODE`.", ""]
    for op, fields in FORMATS.items():
        out += [f"## {op.name}", "", "| bits | field | meaning |", "|---|---|---|"]
        for f in fields:
            out.append(f"| [{f.lsb + f.width - 1}:{f.lsb}] | `{f.name}` | {f.doc} |")
        out.append("")
    for en in (Buffer, WeightEncoding, Unit, Status, ErrorCode, Counter):
        out += [f"## {en.__name__}", "", (en.__doc__ or "").strip().replace("\n    ", " "), "",
                "| value | name | meaning |", "|---|---|---|"]
        for m in en:
            out.append(f"| {int(m)} | `{m.name}` | {_doc(en, m)} |")
        out.append("")
    out += ["## Retire trace record", "",
            f"A {TRACE_BITS}-bit record per retired instruction.", "",
            "| bits | field | meaning |", "|---|---|---|"]
    for f in TRACE_FIELDS:
        out.append(f"| [{f.lsb + f.width - 1}:{f.lsb}] | `{f.name}` | {f.doc} |")
    out += ["", f"Counters are `ArrayParams.counter_bits` wide ({COUNTER_BITS} unless a scale "
            "point narrows them) and wrap around.", ""]
    return "\n".join(out)


def _member_docs(en) -> dict:
    """Read the `#:` comments of an enum's members from this file's source."""
    import inspect
    src, _ = inspect.getsourcelines(en)
    docs = {}
    for line in src:
        if "=" in line and "#:" in line:
            name = line.split("=")[0].strip()
            docs[name] = line.split("#:", 1)[1].strip()
    return docs


def _doc(en, member) -> str:
    return _member_docs(en).get(member.name, "").replace("|", "\\|")


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m rtl.isa", description="The instruction set's reference.")
    ap.add_argument("--markdown", action="store_true", required=True,
                    help="print the ISA reference (docs/isa.md) as Markdown")
    ap.parse_args(argv)
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
