"""The chip and its host link: the real host driver over simulated UART pins, and the protocol.

The simulation test builds `Chip` (the iCEBreaker chip with a 4-cycle UART bit) under Verilator
once, then one cocotb run (testbench/board_cocotb.py) drives it with `sim.board.BoardClient`:
compiled projections end to end, every kind of bad frame, refused requests while running and a
device error. The fast tests below need no simulator.
"""

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from compiler.artifact import Artifact
from compiler.lower import lower
from compiler.synth import make_checkpoint
from rtl.isa import Buffer, ErrorCode, Halt, Load, MatMul, Status, WeightEncoding
from rtl.params import CHIPS, sim_chip
from rtl.protocol import (
    IDENT_FIELDS,
    MAGIC,
    SYNC,
    Command,
    FrameError,
    LinkError,
    Reply,
    crc16,
    decode_frame,
    encode_frame,
    identity,
    pack_fields,
    params_fingerprint,
    unpack_fields,
)
from sim.backend import Job, MemoryImage
from sim.board import (
    ArtifactMismatchError,
    BoardClient,
    BoardError,
    LinkTimeoutError,
    RefusedError,
    check_artifact,
)
from sim.machine import Simulator

CHIP = sim_chip(CHIPS["icebreaker"])
P = CHIP.array.port_bytes
GUARD_ADDR = 1000
ILLEGAL = 0x0F   # opcode 15 is not an Opcode


def _guard(chip) -> tuple:
    """Four memory words to guard (no 0x5A, SYNC, inside: a frame cut short cannot fake a new
    frame start), and four others that bad frames try to write over them."""
    p = chip.array.port_bytes
    return bytes(b for b in range(1, 256) if b != 0x5A)[:4 * p], bytes(range(100, 100 + 4 * p))


GUARD, OTHER = _guard(CHIP)


def _addr(a: int) -> bytes:
    return a.to_bytes(4, "little")


def _flip(frame: bytes, i: int) -> bytes:
    return frame[:i] + bytes([frame[i] ^ 0x01]) + frame[i + 1:]


def _bad_frames(chip=CHIP) -> list:
    """(name, raw bytes, byte indices sent with a low stop bit, expected error, command)."""
    mw, depth, buf = chip.mem_words, chip.array.imem_depth, chip.link_buffer_bytes
    P = chip.array.port_bytes
    OTHER = _guard(chip)[1]
    write = encode_frame(Command.WRITE_MEM, _addr(GUARD_ADDR) + OTHER)
    short_len = bytearray(write)
    short_len[2] = 4 + P          # LEN cut to one word: the rest is not what the CRC covers
    cases = [
        ("crc_byte_flipped", _flip(write, len(write) - 1), (), LinkError.BAD_CRC, 2),
        ("payload_byte_flipped", _flip(write, 10), (), LinkError.BAD_CRC, 2),
        ("length_changed", bytes(short_len), (), LinkError.BAD_CRC, 2),
        ("unknown_command", encode_frame(0x7E), (), LinkError.BAD_COMMAND, 0x7E),
        ("ping_with_payload", encode_frame(Command.PING, b"\0"), (), LinkError.BAD_LENGTH, 1),
        ("partial_word", encode_frame(Command.WRITE_MEM, _addr(GUARD_ADDR) + b"\1\2\3"), (),
         LinkError.BAD_LENGTH, 2),
        ("write_over_buffer", encode_frame(Command.WRITE_MEM, _addr(0) + bytes(buf + P)), (),
         LinkError.BAD_LENGTH, 2),
        ("read_zero_words", encode_frame(Command.READ_MEM, _addr(0) + (0).to_bytes(2, "little")),
         (), LinkError.BAD_LENGTH, 3),
        ("read_over_buffer", encode_frame(Command.READ_MEM, _addr(0)
                                          + (buf // P + 1).to_bytes(2, "little")),
         (), LinkError.BAD_LENGTH, 3),
        ("write_past_end", encode_frame(Command.WRITE_MEM, _addr(mw - 1) + bytes(2 * P)), (),
         LinkError.BAD_ADDRESS, 2),
        ("write_wrapping_address", encode_frame(Command.WRITE_MEM, _addr(0xFFFFFFFF) + bytes(P)),
         (), LinkError.BAD_ADDRESS, 2),
        ("read_past_end", encode_frame(Command.READ_MEM, _addr(mw) + (1).to_bytes(2, "little")),
         (), LinkError.BAD_ADDRESS, 3),
        # Valid low bits under a high one: the range check must see all 32 address bits.
        ("read_high_address", encode_frame(Command.READ_MEM, _addr(1 << 20)
                                           + (1).to_bytes(2, "little")),
         (), LinkError.BAD_ADDRESS, 3),
        ("imem_high_address", encode_frame(Command.WRITE_IMEM, _addr(1 << 31) + bytes(16)), (),
         LinkError.BAD_ADDRESS, 4),
        ("imem_past_end", encode_frame(Command.WRITE_IMEM, _addr(depth - 1) + bytes(32)), (),
         LinkError.BAD_ADDRESS, 4),
        ("stops_mid_frame", write[:9], (), LinkError.TIMEOUT, 2),
        ("low_stop_bit", write, (8,), LinkError.FRAMING, 2),
    ]
    return cases


BAD_FRAMES = _bad_frames()


def _busy_program(a=CHIP.array) -> list:
    """At most about 50k cycles of MATMULs on whatever the buffers hold, then HALT."""
    mm = MatMul(wbuf=0, abuf=0, acc=0, k_len=a.wbuf_rows, tokens=a.token_lanes,
                n_rows=a.row_lanes, x_stride=0)
    return [mm] * min(a.imem_depth // 2, 50_000 // a.wbuf_rows) + [Halt()]


def _error_program() -> list:
    return [Load(buffer=Buffer.WEIGHT, sram=0, rows=1, length=1, dram=0, stride=0), ILLEGAL]


@pytest.fixture(scope="module")
def board_run(tmp_path_factory):
    return _board_run(CHIP, tmp_path_factory)


def board_spec(chip, tmp, target: str = "tiny") -> dict:
    """The steps `testbench.board_cocotb` runs on `chip`: two projections of the tiny model,
    lowered for the scale point `target` (the chip's), then every bad frame, a busy and a
    failing program, and a projection again."""
    p = chip.array.port_bytes
    guard, other = _guard(chip)
    model = make_checkpoint(tmp / "model", "tiny", packed=True, seed=5)
    lower(model, tmp / "art", target, WeightEncoding.BASE3)
    art = Artifact.load(tmp / "art")
    # An attention and an FFN projection (different n and k).
    names = [art.layers[0].name, next(e.name for e in art.layers if e.n != e.k)]
    frames = [encode_frame(Command.WRITE_MEM, _addr(GUARD_ADDR) + other[:p]),
              encode_frame(Command.READ_MEM, _addr(GUARD_ADDR) + (1).to_bytes(2, "little")),
              encode_frame(Command.WRITE_IMEM, _addr(0) + bytes(16)),
              encode_frame(Command.START)]
    return {
        "chip": {"uart_divisor": chip.uart_divisor, "baud": chip.baud, "clock_ns": 10},
        "timeout": 0.01, "artifact": str(tmp / "art"), "projections": names, "tokens": 2,
        "seed": 3,
        "guard": {"addr": GUARD_ADDR, "data": guard.hex()},
        "bad_frames": [{"name": n, "raw": raw.hex(), "bad_stop": list(bs)}
                       for n, raw, bs, _, _ in _bad_frames(chip)],
        "busy": {"program": [f"{w:x}" for w in Job(_busy_program(chip.array), None).words()],
                 "frames": [f.hex() for f in frames]},
        "device_error": {"program": [f"{w:x}" for w in Job(_error_program(), None).words()]},
    }


def _board_run(chip, tmp_path_factory):
    from rtl.chip import Chip

    from .verilator import build, run_cocotb
    tmp = tmp_path_factory.mktemp("board")
    spec = board_spec(chip, tmp)
    runner, bdir = build(Chip(chip), f"chip-{chip.name}", toplevel="ternary_chip")
    out = run_cocotb(runner, bdir, "testbench.board_cocotb", "ternary_chip", spec)
    if "crash" in out:
        pytest.fail(f"the board run crashed:\n{out['crash']}")
    out["names"] = spec["projections"]
    return out


def check_projections(run) -> None:
    """Every projection, and the one run after the bad frames and programs, bit-exact."""
    reps = run["projections"]
    assert [r["name"] for r in reps] == run["names"]
    for r in reps + [run["after"]]:
        assert r["exact"], r
        assert r["cycles"] > r["k"], r


def check_bad_frame(run, case) -> None:
    """A bad frame (a `_bad_frames` case) got its error reply, and the link answered right
    after."""
    name, _, _, err, cmd = case
    got = next(c for c in run["bad_frames"] if c["name"] == name)
    assert got.get("code") == Reply.ERROR, got
    assert bytes.fromhex(got["payload"]) == bytes([err, cmd]), got
    assert got["alive"], f"{name}: no PING reply after the error"


def check_bad_frames(run, chip) -> None:
    """Each bad frame got its error reply, the link answered right after, and the guarded
    words are unchanged."""
    for case in _bad_frames(chip):
        check_bad_frame(run, case)
    assert bytes.fromhex(run["guard_after"]) == _guard(chip)[0]


def check_busy(run, chip) -> None:
    """Requests refused while running, and the run's cycles what the simulator predicts."""
    for got in run["busy_refused"]:
        assert got["code"] == Reply.ERROR and bytes.fromhex(got["payload"])[0] == LinkError.BUSY
    assert run["busy_status"] == Status.RUNNING
    assert run["busy_final"]["status"] == Status.DONE
    # The link's traffic does not disturb the run: the simulator predicts the same cycles.
    p = chip.array.port_bytes
    sim = Simulator(chip.array).run([Job(_busy_program(chip.array), MemoryImage(p))])[0]
    assert sim.status == Status.DONE
    assert run["busy_final"]["cycles"] == sim.counters["CYCLES"]


def check_device_error(run, chip) -> None:
    p = chip.array.port_bytes
    sim = Simulator(chip.array).run([Job(_error_program(), MemoryImage(p))])[0]
    assert sim.status == Status.ERROR and sim.error == ErrorCode.ILLEGAL_OPCODE
    got = run["device_error"]
    assert got == {"error": sim.error, "pc": sim.error_pc, "message":
                   f"the accelerator stopped with ERROR ILLEGAL_OPCODE at pc {sim.error_pc}"}


def test_projections_run_bit_exact_over_uart(board_run):
    check_projections(board_run)


def test_ulx3s_chip_registers_run_bit_exact(tmp_path_factory):
    # The ULX3S chip's registers between the link and the program memory
    # (`ChipParams.registered_program_write`) and in front of the memory
    # (`registered_memory_request`: reads take a cycle more), and its memory in banks, each
    # with its own second register and the pick registered (`mem_banks`: a cycle more), on
    # the small chip: the same frames and runs. Banks of 1,024 words, so that the artifact,
    # its activations and the guard word lie in several.
    chip = dataclasses.replace(CHIP, name=f"{CHIP.name}-regs", registered_program_write=True,
                               registered_memory_request=True, mem_banks=CHIP.mem_words // 1024)
    assert chip.mem_read_latency == CHIP.mem_read_latency + 2
    run = _board_run(chip, tmp_path_factory)
    for r in run["projections"] + [run["after"]]:
        assert r["exact"], r
    assert run["busy_final"]["status"] == Status.DONE


def test_ping_identifies_the_build(board_run):
    ident = board_run["ping"]
    assert ident == identity(CHIP)
    assert ident["fingerprint"] == params_fingerprint(CHIP.array)


@pytest.mark.parametrize("case", BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES])
def test_bad_frame_gets_error_reply_and_link_recovers(board_run, case):
    check_bad_frame(board_run, case)


def test_refused_writes_leave_memory_unchanged(board_run):
    assert bytes.fromhex(board_run["guard_after"]) == GUARD


def test_client_names_the_error_reply(board_run):
    assert board_run["client_error"] == "the board refused READ_MEM: BAD_ADDRESS"


def test_memory_program_and_start_refused_while_running(board_run):
    check_busy(board_run, CHIP)


def test_device_error_reported_with_code_and_pc(board_run):
    check_device_error(board_run, CHIP)


# -- fast tests: no simulator -------------------------------------------------------------

def test_crc_worked_example():
    # CRC-16/CCITT-FALSE check value, and the PING frame of docs/protocol.md.
    assert crc16(b"123456789") == 0x29B1
    assert encode_frame(Command.PING) == bytes([SYNC, 0x01, 0x00, 0x00, 0xFB, 0xAC])
    assert crc16(encode_frame(Command.STATUS)[1:]) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_round_trip_and_any_flip_detected(seed):
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
    frame = encode_frame(0x82, payload)
    assert decode_frame(frame) == (0x82, payload)
    for i in range(1, len(frame)):
        with pytest.raises(FrameError):
            decode_frame(_flip(frame, i))


class FakeLink:
    """Replies with canned bytes to each write."""

    def __init__(self, replies: list):
        self.replies = list(replies)
        self.pending = b""
        self.sent = []

    def write(self, data):
        self.sent.append(bytes(data))
        self.pending += self.replies.pop(0) if self.replies else b""

    def read(self, n, timeout):
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def flush_input(self):
        self.pending = b""

    def now(self):
        return time.monotonic()


def _ident_reply(chip=CHIP, **changes) -> bytes:
    return encode_frame(Reply.PING, pack_fields(IDENT_FIELDS, {**identity(chip), **changes}))


def test_client_errors_are_one_line():
    with pytest.raises(LinkTimeoutError, match="no reply from the board"):
        BoardClient(FakeLink([]), timeout=0.01).ping()
    with pytest.raises(BoardError, match="not a ternary-accel board"):
        BoardClient(FakeLink([_ident_reply(magic=0x1234)])).ping()
    with pytest.raises(BoardError, match="protocol version 9"):
        BoardClient(FakeLink([_ident_reply(version=9)])).ping()
    refused = encode_frame(Reply.ERROR, bytes([LinkError.BUSY, Command.START]))
    with pytest.raises(RefusedError, match="refused START: BUSY"):
        BoardClient(FakeLink([refused])).start()
    noisy = bytes([0x00, 0xFF, 0x13]) + _ident_reply()
    assert BoardClient(FakeLink([noisy])).ping()["magic"] == int.from_bytes(MAGIC, "little")
    damaged = _flip(_ident_reply(), 7)
    with pytest.raises(BoardError, match="damaged reply"):
        BoardClient(FakeLink([damaged])).ping()


def test_writes_are_chunked_to_the_buffer():
    n = 3 * CHIP.link_buffer_bytes // P + 1
    ack = encode_frame(Reply.WRITE_MEM)
    link = FakeLink([_ident_reply()] + [ack] * 4)
    client = BoardClient(link)
    client.write_mem(7, np.zeros((n, P), np.uint8))
    frames = [decode_frame(f) for f in link.sent[1:]]
    assert [int.from_bytes(p[:4], "little") for _, p in frames] == \
        [7 + i * CHIP.link_buffer_bytes // P for i in range(4)]
    assert sum(len(p) - 4 for _, p in frames) == n * P


def test_artifact_mismatch_is_named():
    ident = unpack_fields(IDENT_FIELDS, pack_fields(IDENT_FIELDS, identity(CHIPS["ulx3s"])))

    class Art:
        params = CHIP.array
    with pytest.raises(ArtifactMismatchError, match="for scale point 'tiny'.*port_bytes 4"):
        check_artifact(ident, Art)
    check_artifact(identity(CHIP), Art)


def test_cli_reports_missing_port_in_one_line(tmp_path):
    model = make_checkpoint(tmp_path / "model", "tiny", packed=True, seed=1)
    lower(model, tmp_path / "art", "tiny", WeightEncoding.BASE3)
    r = subprocess.run([sys.executable, "-m", "sim.board", str(tmp_path / "nope"),
                        str(tmp_path / "art"), "--json"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: cannot open serial port") and \
        r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == ""
    help_ = subprocess.run([sys.executable, "-m", "sim.board", "--help"], capture_output=True,
                           text=True)
    assert help_.returncode == 0 and "--json" in help_.stdout
    json.dumps(identity(CHIP))
