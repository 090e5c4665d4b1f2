"""Run a compiled artifact on an FPGA board over its UART host link, checked bit for bit.

    python -m sim.board PORT ARTIFACT [--tokens N] [--seed S] [--activations X.npy]
                        [--only NAME] [--layers N] [--baud B] [--timeout S] [--json]

It identifies the board (PING), checks that the artifact was compiled for the board's scale
point, and for every projection writes its weights and an activation image (seeded random
int8, or X.npy), writes the program, starts it, polls until DONE or ERROR, reads the results
back and compares them with the golden integer product. The protocol is docs/protocol.md.

The pieces stack: a `Link` moves bytes (`SerialLink` over pyserial; the testbench has one over
simulated UART pins), `BoardClient` speaks the protocol over any link, and
`run_artifact_on_board` runs an artifact with a client.
"""

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from compiler.artifact import Artifact, ArtifactError, LayerEntry
from compiler.tiling import (
    Plan,
    plan_projection,
    unpack_results,
)
from rtl.cli import ArgumentParser, stdout_closed
from rtl.isa import INSTR_BITS, Counter, ErrorCode, Status
from rtl.params import CHIPS
from rtl.protocol import (
    ADDR_BYTES,
    COUNT_BYTES,
    CRC_BYTES,
    HEADER_BYTES,
    IDENT_FIELDS,
    MAGIC,
    STATUS_FIELDS,
    SYNC,
    VERSION,
    Command,
    FrameError,
    LinkError,
    Reply,
    decode_frame,
    encode_frame,
    params_fingerprint,
    reply_code,
    unpack_fields,
)

from .backend import Job
from .run import RunError, check_tokens, golden_exact, layer_job

__all__ = ["Link", "SerialLink", "BoardClient", "BoardError", "LinkTimeoutError", "RefusedError",
           "DeviceError", "ArtifactMismatchError", "check_artifact", "place_projection",
           "run_artifact_on_board", "main"]

INSTR_BYTES = INSTR_BITS // 8
#: Bytes skipped while looking for a reply's SYNC before giving up.
MAX_GARBAGE = 4096
DEFAULT_BAUD = next(iter(CHIPS.values())).baud


class BoardError(Exception):
    """Anything that stops a board run; its message is one line for the user."""


class LinkTimeoutError(BoardError):
    """No (complete) reply in time."""


class RefusedError(BoardError):
    """The board refused a frame with an ERROR reply."""

    def __init__(self, code: LinkError, command: int):
        self.code, self.command = code, command
        try:
            what = Command(command).name
        except ValueError:
            what = f"0x{command:02x}"
        super().__init__(f"the board refused {what}: {code.name}")


class DeviceError(BoardError):
    """The accelerator stopped with status ERROR."""

    def __init__(self, error: ErrorCode, pc: int, where: str = ""):
        self.error, self.pc = error, pc
        super().__init__(f"{where}the accelerator stopped with ERROR {error.name} at pc {pc}")


class ArtifactMismatchError(BoardError):
    """The artifact was compiled for another scale point than the board's."""


class Link(Protocol):
    """A byte pipe to the board."""

    def write(self, data: bytes) -> None: ...

    def read(self, n: int, timeout: float) -> bytes:
        """Up to `n` bytes; fewer if `timeout` seconds pass first."""
        ...

    def flush_input(self) -> None:
        """Drop bytes received and not read yet."""
        ...

    def now(self) -> float:
        """Seconds on the link's clock (wall time on a real port, simulated time in a
        simulation); every timeout is measured with it."""
        ...


class SerialLink:
    """A `Link` over a serial port (pyserial), 8N1."""

    def __init__(self, port: str, baud: int = DEFAULT_BAUD):
        try:
            import serial
        except ImportError:
            raise BoardError("pyserial is not installed (pip install pyserial)") from None
        try:
            self.port = serial.Serial(port, baud, timeout=0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise BoardError(f"cannot open serial port {port}: {e}") from None

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def read(self, n: int, timeout: float) -> bytes:
        self.port.timeout = max(timeout, 0)
        return self.port.read(n)

    def flush_input(self) -> None:
        self.port.reset_input_buffer()

    def now(self) -> float:
        return time.monotonic()

    def close(self) -> None:
        self.port.close()


class BoardClient:
    """Speak the host link protocol over a `Link`.

    Parameters
    ----------
    link : the byte pipe.
    timeout : seconds to wait for a reply (must exceed the board's frame timeout).
    run_timeout : seconds a run may take before `wait` gives up.
    progress : optional callable(label, done, total) called per chunk of a transfer.
    """

    def __init__(self, link: Link, timeout: float = 1.0, run_timeout: float = 60.0,
                 progress=None):
        self.link = link
        self.timeout = timeout
        self.run_timeout = run_timeout
        self.progress = progress
        self.ident: dict | None = None

    # -- frames ----------------------------------------------------------------------------
    def _read_exact(self, n: int, deadline: float) -> bytes:
        out = b""
        while len(out) < n:
            left = deadline - self.link.now()
            chunk = self.link.read(n - len(out), max(left, 0)) if left > 0 else b""
            if not chunk:
                raise LinkTimeoutError(f"no reply from the board within {self.timeout:g} s "
                                  f"(wrong port, board not configured, or wrong baud rate?)")
            out += chunk
        return out

    def read_reply(self) -> tuple:
        """(code, payload) of the next frame from the board."""
        deadline = self.link.now() + self.timeout
        for _ in range(MAX_GARBAGE):
            if self._read_exact(1, deadline)[0] == SYNC:
                break
        else:
            raise BoardError(f"no frame start in {MAX_GARBAGE} bytes from the board "
                             f"(wrong baud rate?)")
        head = self._read_exact(HEADER_BYTES - 1, deadline)
        length = int.from_bytes(head[1:3], "little")
        rest = self._read_exact(length + CRC_BYTES, deadline)
        try:
            return decode_frame(bytes([SYNC]) + head + rest)
        except FrameError as e:
            raise BoardError(f"damaged reply from the board: {e}") from None

    def transact(self, code: int, payload: bytes = b"", raw: bytes | None = None) -> tuple:
        """Send one frame (or `raw` bytes as they are) and return the reply (code, payload)."""
        self.link.flush_input()
        self.link.write(raw if raw is not None else encode_frame(code, payload))
        return self.read_reply()

    def request(self, cmd: Command, payload: bytes = b"") -> bytes:
        """Send a command; return its reply's payload or raise RefusedError."""
        code, reply = self.transact(cmd, payload)
        if code == Reply.ERROR:
            raise RefusedError(LinkError(reply[0]), reply[1])
        if code != reply_code(cmd):
            raise BoardError(f"unexpected reply 0x{code:02x} to {cmd.name}")
        return reply

    # -- commands --------------------------------------------------------------------------
    def ping(self) -> dict:
        """Identify the board; raise BoardError unless it speaks this protocol version."""
        try:
            ident = unpack_fields(IDENT_FIELDS, self.request(Command.PING))
        except FrameError:
            raise BoardError("the device's identity reply has the wrong size "
                             "(not a ternary-accel board?)") from None
        if ident["magic"] != int.from_bytes(MAGIC, "little"):
            raise BoardError("the device is not a ternary-accel board (wrong identity)")
        if ident["version"] != VERSION:
            raise BoardError(f"the board speaks protocol version {ident['version']}, this "
                             f"tool version {VERSION}")
        if ident["clk_hz"] == 0:
            raise BoardError("the board reports a clock of 0 Hz (damaged identity reply?)")
        self.ident = ident
        return ident

    def _id(self) -> dict:
        return self.ident if self.ident is not None else self.ping()

    def _chunks(self, total: int, unit: int):
        per = self._id()["buffer_bytes"] // unit
        for first in range(0, total, per):
            yield first, min(per, total - first)

    def _report(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(label, done, total)

    def write_mem(self, addr: int, words: np.ndarray, label: str = "write") -> None:
        """Write whole words (uint8 (n, port_bytes)) from word address `addr`, in chunks."""
        p = self._id()["port_bytes"]
        words = np.ascontiguousarray(words, np.uint8).reshape(-1, p)
        for first, n in self._chunks(len(words), p):
            self.request(Command.WRITE_MEM, (addr + first).to_bytes(ADDR_BYTES, "little")
                         + words[first:first + n].tobytes())
            self._report(label, (first + n) * p, len(words) * p)

    def read_mem(self, addr: int, count: int, label: str = "read") -> np.ndarray:
        """Read `count` words from word address `addr`: uint8 (count, port_bytes)."""
        p = self._id()["port_bytes"]
        parts = []
        for first, n in self._chunks(count, p):
            data = self.request(Command.READ_MEM, (addr + first).to_bytes(ADDR_BYTES, "little")
                                + n.to_bytes(COUNT_BYTES, "little"))
            if len(data) != n * p:
                raise BoardError(f"READ_MEM returned {len(data)} bytes, expected {n * p}")
            parts.append(np.frombuffer(data, np.uint8).reshape(n, p))
            self._report(label, (first + n) * p, count * p)
        return np.concatenate(parts) if parts else np.zeros((0, p), np.uint8)

    def write_imem(self, index: int, words: list) -> None:
        """Write instruction words (ints) from program memory index `index`."""
        raw = b"".join(int(w).to_bytes(INSTR_BYTES, "little") for w in words)
        for first, n in self._chunks(len(words), INSTR_BYTES):
            self.request(Command.WRITE_IMEM, (index + first).to_bytes(ADDR_BYTES, "little")
                         + raw[first * INSTR_BYTES:(first + n) * INSTR_BYTES])

    def start(self) -> None:
        self.request(Command.START)

    def status(self) -> dict:
        """The accelerator's status, error, error_pc, draining and every counter by name."""
        s = unpack_fields(STATUS_FIELDS, self.request(Command.STATUS))
        s["status"] = Status(s["status"])
        s["error"] = ErrorCode(s["error"])
        s["counters"] = {c.name: s.pop(c.name.lower()) for c in Counter}
        return s

    def wait(self, where: str = "") -> dict:
        """Poll until the run ends; return the status, or raise DeviceError on ERROR."""
        deadline = self.link.now() + self.run_timeout
        while True:
            s = self.status()
            if s["status"] == Status.ERROR:
                raise DeviceError(s["error"], s["error_pc"], where)
            if s["status"] != Status.RUNNING:
                return s
            if self.link.now() > deadline:
                raise BoardError(f"{where}still running after {self.run_timeout:g} s")

    def run_job(self, job: Job, results: list, where: str = "") -> tuple:
        """Load `job`'s memory and program, run it, read back `results` [(base, words)].

        Returns (status, [uint8 (words, port_bytes) per result region]).
        """
        ident = self._id()
        program = job.words()
        if len(program) > ident["imem_depth"]:
            raise BoardError(f"{where}program of {len(program)} instructions exceeds the "
                             f"board's program memory ({ident['imem_depth']})")
        for base, words in job.memory.regions.items():
            if base + len(words) > ident["mem_words"]:
                raise BoardError(f"{where}memory image [{base}, {base + len(words)}) exceeds "
                                 f"the board's {ident['mem_words']} words")
            self.write_mem(base, words, label=f"{where}write")
        self.write_imem(0, program)
        self.start()
        status = self.wait(where)
        return status, [self.read_mem(b, n, label=f"{where}read") for b, n in results]


# -- running an artifact ---------------------------------------------------------------------

def check_artifact(ident: dict, art: Artifact) -> None:
    """Raise ArtifactMismatchError unless `art` was compiled for the board's scale point."""
    p = art.params
    want = {"port_bytes": p.port_bytes, "token_lanes": p.token_lanes, "row_lanes": p.row_lanes,
            "imem_depth": p.imem_depth}
    diff = [f"{k} {v} (board {ident[k]})" for k, v in want.items() if ident[k] != v]
    if not diff and ident["fingerprint"] != params_fingerprint(p):
        diff = ["buffer sizes or limits"]
    if diff:
        raise ArtifactMismatchError(f"the artifact was compiled for scale point {p.name!r}, which "
                               f"differs from the board's: {', '.join(diff)}")


def place_projection(art: Artifact, layer: LayerEntry, tokens: int, mem_words: int) -> tuple:
    """(plan, program, weight base) for one projection in a memory of `mem_words` words.

    The artifact's own memory map is used when it fits; otherwise the projection is planned
    again with its weights at word 0, its activations and results right after.
    """
    plan, program = art.program(layer, tokens)
    if max(layer.w_offset + layer.w_words, plan.x_base + plan.x_words,
           plan.y_base + plan.y_words) <= mem_words:
        return plan, program, layer.w_offset
    plan = plan_projection(art.params, layer.n, layer.k, tokens, art.encoding, w_base=0,
                           x_base=layer.w_words, token_batch=min(tokens, art.token_batch))
    if plan.y_base + plan.y_words > mem_words:
        raise BoardError(f"{layer.name} needs {plan.y_base + plan.y_words} words of memory "
                         f"with {tokens} token(s); the board has {mem_words}")
    return plan, list(plan.program), 0


@dataclass
class BoardReport:
    """One projection run on the board."""

    name: str
    n: int
    k: int
    tokens: int
    cycles: int
    time_us: float
    bytes_moved: int
    seconds: float
    exact: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_projection(client: BoardClient, art: Artifact, layer: LayerEntry,
                   x_q: np.ndarray) -> tuple:
    """Run one projection on the board: (int32 results (tokens, n), BoardReport)."""
    ident = client._id()
    t0 = time.monotonic()
    plan: Plan
    plan, program, w_base = place_projection(art, layer, x_q.shape[0], ident["mem_words"])
    job = layer_job(art, plan, program, x_q, art.layer_weights(layer), w_base)
    status, (y_image,) = client.run_job(job, [(plan.y_base, plan.y_words)],
                                        where=f"{layer.name}: ")
    y = unpack_results(plan, y_image)
    exact = golden_exact(art, layer, plan, x_q, y)
    cycles = status["counters"][Counter.CYCLES.name]
    moved = (sum(w.size for w in job.memory.regions.values()) + y_image.size
             + len(program) * INSTR_BYTES)
    return y, BoardReport(layer.name, layer.n, layer.k, x_q.shape[0], cycles,
                          1e6 * cycles / ident["clk_hz"], moved, time.monotonic() - t0, exact)


def run_artifact_on_board(client: BoardClient, art: Artifact, tokens: int = 1, seed: int = 0,
                          activations: np.ndarray | None = None, layers: list | None = None,
                          on_layer=None) -> list:
    """Run the projections `layers` (default: all) of `art`; return their BoardReports.

    Activations are `activations` (int8 (tokens, k)) when given, else seeded random int8, one
    draw per projection in order (as `sim.run` draws them).
    """
    ident = client.ping()
    check_artifact(ident, art)
    rng = np.random.default_rng(seed)
    reports = []
    todo = art.layers if layers is None else layers
    for i, layer in enumerate(todo):
        if on_layer is not None:
            on_layer(i, len(todo), layer)
        if activations is not None:
            if activations.shape[1] != layer.k:
                raise BoardError(f"{layer.name} takes {layer.k} inputs; the activations have "
                                 f"{activations.shape[1]} (select projections with --only)")
            x_q = activations
        else:
            x_q = rng.integers(-128, 128, (tokens, layer.k), dtype=np.int8)
        reports.append(run_projection(client, art, layer, x_q)[1])
    return reports


def load_activations(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BoardError(f"{path}: cannot read activations ({e})") from None
    if x.dtype != np.int8 or x.ndim != 2 or 0 in x.shape:
        raise BoardError(f"{path}: activations must be a non-empty 2-D int8 array "
                         f"(tokens, k), got {x.dtype} {x.shape}")
    return x


def _progress_printer(enabled: bool):
    state = {"layer": ""}

    def on_layer(i, total, layer):
        state["layer"] = f"{i + 1}/{total} {layer.name[-40:]}"

    def progress(label, done, total):
        if enabled:
            sys.stderr.write(f"\r{state['layer']:<46} {label.split(': ')[-1]:<6} "
                             f"{done:>9,}/{total:,} B {100 * done // max(total, 1):3d}%   ")
            sys.stderr.flush()

    return on_layer, progress


def format_table(ident: dict, reports: list) -> str:
    head = (f"{'projection':<40} {'n x k':>10} {'tokens':>6} {'cycles':>10} {'time us':>9} "
            f"{'bytes':>9} {'link s':>7} {'exact':>5}")
    lines = [f"board: port {ident['port_bytes']} B, {ident['row_lanes']} x "
             f"{ident['token_lanes']} lanes, {ident['mem_words']} words, clock "
             f"{ident['clk_hz'] / 1e6:g} MHz", head, "-" * len(head)]
    for r in reports:
        lines.append(f"{r.name[-40:]:<40} {f'{r.n}x{r.k}':>10} {r.tokens:>6} {r.cycles:>10,} "
                     f"{r.time_us:>9.1f} {r.bytes_moved:>9,} {r.seconds:>7.2f} "
                     f"{'yes' if r.exact else 'NO':>5}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m sim.board", description=__doc__.split("\n")[0])
    ap.add_argument("port", help="serial port of the board (e.g. /dev/ttyUSB1)")
    ap.add_argument("artifact", type=Path, help="artifact directory from python -m compiler.lower")
    ap.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                    help=f"UART bit rate (default {DEFAULT_BAUD})")
    ap.add_argument("--tokens", type=int, default=1, help="tokens per projection (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random activations")
    ap.add_argument("--activations", type=Path, metavar="X.npy",
                    help="int8 (tokens, k) activations instead of random ones")
    ap.add_argument("--only", metavar="NAME",
                    help="run only projections whose name contains NAME")
    ap.add_argument("--layers", type=int, metavar="N", help="run only the first N projections")
    ap.add_argument("--timeout", type=float, default=1.0,
                    help="seconds to wait for each reply (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.tokens < 1:
        ap.error(f"--tokens must be >= 1, got {args.tokens}")
    if args.layers is not None and args.layers < 1:
        ap.error(f"--layers must be >= 1, got {args.layers}")
    if args.baud < 1:
        ap.error(f"--baud must be >= 1, got {args.baud}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        ap.error(f"--timeout must be a finite number of seconds > 0, got {args.timeout:g}")
    link = None
    try:
        art = Artifact.load(args.artifact)
        layers = [e for e in art.layers if args.only is None or args.only in e.name]
        if args.layers is not None:
            layers = layers[:args.layers]
        if not layers:
            raise BoardError(f"no projection of {args.artifact} matches --only {args.only!r}")
        x = load_activations(args.activations) if args.activations else None
        check_tokens(art, args.tokens if x is None else x.shape[0], layers)
        link = SerialLink(args.port, args.baud)
        on_layer, progress = _progress_printer(sys.stderr.isatty() and not args.json)
        client = BoardClient(link, timeout=args.timeout, progress=progress)
        reports = run_artifact_on_board(client, art, args.tokens, args.seed, x, layers,
                                        on_layer=on_layer)
        if progress and sys.stderr.isatty() and not args.json:
            sys.stderr.write("\r" + " " * 90 + "\r")
    except (BoardError, ArtifactError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        if link is not None:
            link.close()
    ident = client.ident
    exact = all(r.exact for r in reports)
    try:
        if args.json:
            print(json.dumps({"port": args.port, "artifact": str(args.artifact), "board": ident,
                              "projections": [r.as_dict() for r in reports], "exact": exact},
                             allow_nan=False))
        else:
            print(format_table(ident, reports))
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_closed()
    if not exact:
        print("error: results differ from the golden numerics", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
