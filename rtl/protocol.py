"""The host link protocol: the one definition of its framing, commands, replies and checksum.

The gateware (`rtl.hostlink`) builds its tables from this module and the host driver
(`sim.board`) encodes and decodes with it, as `rtl.isa` is shared by the RTL, the simulator and
the compiler. docs/protocol.md describes it byte for byte. Like `rtl.isa`, it never elaborates
hardware: it imports only the standard library, `amaranth.lib.enum`, `rtl.isa` and
`rtl.params`.

Frame, both directions: SYNC, CODE, LEN (u16 LE), LEN payload bytes, CRC (u16 big-endian),
where CRC is CRC-16/CCITT-FALSE over CODE, LEN and the payload. Sent big-endian, the CRC makes
the CRC of everything after SYNC zero, which is how the receiver checks it.
"""

import dataclasses
import json
import zlib

from amaranth.lib import enum

from .isa import COUNTER_BITS, INSTR_BITS, Counter
from .params import ArrayParams, ChipParams

__all__ = [
    "SYNC", "VERSION", "MAGIC", "Command", "Reply", "LinkError", "CRC_POLY", "CRC_INIT",
    "HEADER_BYTES", "CRC_BYTES", "ADDR_BYTES", "COUNT_BYTES", "INSTR_BYTES", "COUNTER_BYTES",
    "IDENT_FIELDS", "STATUS_FIELDS", "crc16", "crc16_byte", "encode_frame", "FrameError",
    "decode_frame", "params_fingerprint", "identity", "pack_fields", "unpack_fields",
    "status_bytes", "reply_code", "MAX_FRAME_PAYLOAD",
]

#: First byte of every frame. Anything else between frames is dropped.
SYNC = 0x5A
#: Protocol version, reported by PING.
VERSION = 1
#: Project tag at the start of the PING reply.
MAGIC = b"TA"
#: CRC-16/CCITT-FALSE: polynomial x^16 + x^12 + x^5 + 1, MSB first, initial 0xFFFF, no final
#: xor. CRC of the ASCII bytes "123456789" is 0x29B1.
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
#: SYNC, CODE, LEN low, LEN high.
HEADER_BYTES = 4
CRC_BYTES = 2
#: Word address or instruction index at the start of WRITE_MEM, READ_MEM and WRITE_IMEM.
ADDR_BYTES = 4
#: Word count after the address of READ_MEM.
COUNT_BYTES = 2
INSTR_BYTES = INSTR_BITS // 8
COUNTER_BYTES = COUNTER_BITS // 8
#: LEN is 16 bits.
MAX_FRAME_PAYLOAD = 0xFFFF


class Command(enum.IntEnum, shape=8):
    """Request codes (host to chip). Each success reply's code is the command | 0x80."""

    PING = 0x01        #: no payload; reply: the identity (`IDENT_FIELDS`)
    WRITE_MEM = 0x02   #: u32 word address, then whole words; reply: empty
    READ_MEM = 0x03    #: u32 word address, u16 words; reply: the words
    WRITE_IMEM = 0x04  #: u32 instruction index, then whole 16-byte instructions; reply: empty
    START = 0x05       #: no payload; pulse start; reply: empty
    STATUS = 0x06      #: no payload; reply: `STATUS_FIELDS`


class Reply(enum.IntEnum, shape=8):
    """Reply codes (chip to host)."""

    PING = 0x81
    WRITE_MEM = 0x82
    READ_MEM = 0x83
    WRITE_IMEM = 0x84
    START = 0x85
    STATUS = 0x86
    ERROR = 0xFF       #: payload: u8 `LinkError`, u8 the command byte received (0 if none)


def reply_code(cmd: Command) -> Reply:
    return Reply(int(cmd) | 0x80)


class LinkError(enum.IntEnum, shape=8):
    """Why a frame was refused. Nothing changes on the chip when a frame is refused."""

    NONE = 0
    BAD_CRC = 1       #: the checksum does not match
    BAD_COMMAND = 2   #: an unknown command code
    BAD_LENGTH = 3    #: LEN (or READ_MEM's count) is not allowed for the command
    BAD_ADDRESS = 4   #: the access runs past the end of memory or program memory
    BUSY = 5          #: a memory, program or start request while the accelerator runs/drains
    TIMEOUT = 6       #: the frame stopped arriving for `link_timeout_bits` bit times
    FRAMING = 7       #: a byte of the frame had a low stop bit


#: PING reply payload, in order: (name, bytes), every integer little-endian.
IDENT_FIELDS = (
    ("magic", 2), ("version", 1), ("port_bytes", 1), ("token_lanes", 1), ("row_lanes", 2),
    ("imem_depth", 2), ("mem_words", 4), ("buffer_bytes", 2), ("counters", 1),
    ("counter_bits", 1), ("fingerprint", 4), ("clk_hz", 4),
)

#: STATUS reply payload: the accelerator's status, then every `Counter` in order.
STATUS_FIELDS = (("status", 1), ("error", 1), ("error_pc", 2), ("draining", 1)) + tuple(
    (c.name.lower(), COUNTER_BYTES) for c in Counter)


def crc16_byte(crc: int, byte: int) -> int:
    """Advance the CRC by one byte, most significant bit first."""
    crc ^= byte << 8
    for _ in range(8):
        crc = ((crc << 1) ^ CRC_POLY if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    for b in data:
        crc = crc16_byte(crc, b)
    return crc


def encode_frame(code: int, payload: bytes = b"") -> bytes:
    """SYNC, code, LEN, payload, CRC: one frame ready for the wire."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes does not fit LEN (16 bits)")
    body = bytes([code]) + len(payload).to_bytes(2, "little") + bytes(payload)
    return bytes([SYNC]) + body + crc16(body).to_bytes(CRC_BYTES, "big")


class FrameError(Exception):
    """A received frame that is malformed."""


def decode_frame(frame: bytes) -> tuple:
    """(code, payload) of one whole frame; FrameError if it is not one."""
    if len(frame) < HEADER_BYTES + CRC_BYTES or frame[0] != SYNC:
        raise FrameError(f"not a frame: {bytes(frame[:8]).hex()}")
    length = int.from_bytes(frame[2:4], "little")
    if len(frame) != HEADER_BYTES + length + CRC_BYTES:
        raise FrameError(f"frame of {len(frame)} bytes, LEN says {length} payload bytes")
    if crc16(frame[1:]) != 0:
        raise FrameError("bad checksum in a reply")
    return frame[1], bytes(frame[HEADER_BYTES:HEADER_BYTES + length])


def params_fingerprint(p: ArrayParams) -> int:
    """A CRC-32 of every parameter that shapes programs and images (all but the name and the
    memory timing), so a host can tell that an artifact was compiled for this exact build."""
    d = dataclasses.asdict(p)
    d.pop("name")
    d.pop("mem")
    d["encodings"] = [int(e) for e in p.encodings]
    return zlib.crc32(json.dumps(d, sort_keys=True).encode())


def identity(chip: ChipParams) -> dict:
    """The PING reply's fields for `chip`."""
    a = chip.array
    return {"magic": int.from_bytes(MAGIC, "little"), "version": VERSION,
            "port_bytes": a.port_bytes, "token_lanes": a.token_lanes, "row_lanes": a.row_lanes,
            "imem_depth": a.imem_depth, "mem_words": chip.mem_words,
            "buffer_bytes": chip.link_buffer_bytes, "counters": len(Counter),
            "counter_bits": COUNTER_BITS, "fingerprint": params_fingerprint(a),
            "clk_hz": chip.clk_hz}


def pack_fields(fields: tuple, values: dict) -> bytes:
    return b"".join(int(values[name]).to_bytes(n, "little") for name, n in fields)


def unpack_fields(fields: tuple, payload: bytes) -> dict:
    need = sum(n for _, n in fields)
    if len(payload) != need:
        raise FrameError(f"payload of {len(payload)} bytes, expected {need}")
    out, pos = {}, 0
    for name, n in fields:
        out[name] = int.from_bytes(payload[pos:pos + n], "little")
        pos += n
    return out


def status_bytes() -> int:
    return sum(n for _, n in STATUS_FIELDS)
