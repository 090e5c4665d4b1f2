"""cocotb: the real host driver (sim.board.BoardClient) talking to the Chip through its UART pins.

The client runs unchanged in a bridge thread (`cocotb.task.bridge`); its `Link` here drives
`uart_rx` and samples `uart_tx` bit by bit in simulated time (a Timer per bit, not per cycle).
Timeouts the client gives in seconds are bit times of the real board's baud rate, simulated
at the chip's own divisor.

Input ($TB_JOB, JSON): "chip" (uart_divisor, baud, clock_ns), "timeout" (client, seconds),
"pins" (optional: the top level's "clk", "rx", "tx" and "rst" names, rst null when the design
resets itself, and "reset_cycles" to wait before the first frame; the Chip's own names by
default), and the steps: "artifact" + "projections" (names) + "tokens", "bad_frames", "guard"
(addr, hex words) for the memory that bad frames must not touch, "busy" (program, frames),
"device_error" (program). Output ($TB_RESULT): what each step saw.
"""

import json
import os
import traceback

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import Event, FallingEdge, First, RisingEdge, Timer
from cocotb.utils import get_sim_time

from compiler.artifact import Artifact
from rtl.protocol import Command, Reply
from sim.backend import Job, MemoryImage
from sim.board import BoardClient, BoardError, DeviceError, run_artifact_on_board

#: The Chip's own top-level names (rtl.chip.Chip under Amaranth's Verilog back end).
PINS = {"clk": "clk", "rx": "uart_rx", "tx": "uart_tx", "rst": "rst", "reset_cycles": 4}


class CocotbLink:
    """A `sim.board.Link` over the simulated UART pins."""

    def __init__(self, dut, bit_ns: int, clock_ns: int, baud: int, pins: dict = PINS):
        self.clk, self.rx, self.tx = (getattr(dut, pins[p]) for p in ("clk", "rx", "tx"))
        self.bit_ns = bit_ns
        self.clock_ns = clock_ns
        self.ns_per_second = baud * bit_ns
        self.rxq = bytearray()
        self.arrived = Event()
        self.log: list = []     # (sim ns, "host"/"chip", bytes): the tail goes into failures
        self.write = resume(self._write)
        self.read = resume(self._read)
        self.write_with_bad_stop = resume(self._write)

    async def _write(self, data: bytes, bad_stop: tuple = ()) -> None:
        await FallingEdge(self.clk)   # drive between rising edges
        self.log.append((get_sim_time("ns"), "host", bytes(data).hex()))
        for i, b in enumerate(data):
            stop = 0 if i in bad_stop else 1
            for v in [0] + [(b >> j) & 1 for j in range(8)] + [stop]:
                self.rx.value = v
                await Timer(self.bit_ns, "ns")
            if not stop:
                self.rx.value = 1
                await Timer(self.bit_ns, "ns")
        self.rx.value = 1

    async def _read(self, n: int, timeout: float) -> bytes:
        deadline = get_sim_time("ns") + timeout * self.ns_per_second
        while len(self.rxq) < n:
            left = int(deadline - get_sim_time("ns"))
            if left <= 0:
                break
            self.arrived.clear()
            await First(self.arrived.wait(), Timer(left, "ns"))
        out = bytes(self.rxq[:n])
        del self.rxq[:n]
        return out

    def flush_input(self) -> None:
        self.rxq.clear()

    def now(self) -> float:
        """Simulated time in seconds of the real board (bit times at its baud rate)."""
        return get_sim_time("ns") / self.ns_per_second

    async def monitor(self) -> None:
        """Receive every byte the chip sends, sampling mid-bit."""
        tx = self.tx
        # Half a bit, plus half a clock so samples fall between the chip's clock edges.
        half = self.bit_ns // 2 + self.clock_ns // 2
        while True:
            await FallingEdge(tx)
            await Timer(half, "ns")
            if int(tx.value):
                continue
            b = 0
            for i in range(8):
                await Timer(self.bit_ns, "ns")
                b |= int(tx.value) << i
            await Timer(self.bit_ns, "ns")
            self.rxq.append(b)
            self.log.append((get_sim_time("ns"), "chip", f"{b:02x}"))
            self.arrived.set()


def _words(hexes: list) -> list:
    return [int(w, 16) for w in hexes]


def run_steps(link: CocotbLink, spec: dict) -> dict:
    """The blocking part: everything the client does, in the bridge thread."""
    client = BoardClient(link, timeout=spec["timeout"], run_timeout=spec["timeout"] * 1000)
    out: dict = {}
    out["ping"] = client.ping()
    p = client.ident["port_bytes"]

    # Real projections, end to end.
    art = Artifact.load(spec["artifact"])
    layers = [e for e in art.layers if e.name in spec["projections"]]
    reports = run_artifact_on_board(client, art, tokens=spec["tokens"], seed=spec["seed"],
                                    layers=layers)
    out["projections"] = [r.as_dict() for r in reports]

    # Bad frames: each gets its error reply, and the link works right after.
    g = spec["guard"]
    guard = np.frombuffer(bytes.fromhex(g["data"]), np.uint8).reshape(-1, p)
    client.write_mem(g["addr"], guard)
    cases = []
    for case in spec["bad_frames"]:
        link.flush_input()
        link.write_with_bad_stop(bytes.fromhex(case["raw"]), tuple(case.get("bad_stop", ())))
        try:
            code, payload = client.read_reply()
            got = {"code": code, "payload": payload.hex()}
        except BoardError as e:
            got = {"exception": str(e)}
        try:
            alive = client.ping()["magic"] == out["ping"]["magic"]
        except BoardError:
            alive = False
        cases.append({"name": case["name"], **got, "alive": alive})
    out["bad_frames"] = cases
    out["guard_after"] = client.read_mem(g["addr"], len(guard)).tobytes().hex()
    # The client's own error path for a refused request.
    try:
        client.read_mem(client.ident["mem_words"] - 1, 2)
        out["client_error"] = None
    except BoardError as e:
        out["client_error"] = str(e)

    # Requests while the accelerator runs are refused; STATUS and PING still answer.
    busy = spec["busy"]
    client.write_imem(0, _words(busy["program"]))
    client.start()
    refused = []
    for raw in busy["frames"]:
        code, payload = client.transact(0, raw=bytes.fromhex(raw))
        refused.append({"code": code, "payload": payload.hex()})
    out["busy_refused"] = refused
    out["busy_status"] = int(client.status()["status"])
    final = client.wait()
    out["busy_final"] = {"status": int(final["status"]),
                         "cycles": final["counters"]["CYCLES"]}

    # A program that ends in a device error is reported with its code and pc.
    job = Job(_words(spec["device_error"]["program"]), MemoryImage(p))
    try:
        client.run_job(job, [])
        out["device_error"] = None
    except DeviceError as e:
        out["device_error"] = {"error": int(e.error), "pc": e.pc, "message": str(e)}
    # And the board still runs a real job after all of this.
    out["after"] = run_artifact_on_board(client, art, tokens=1, seed=spec["seed"] + 1,
                                         layers=layers[:1])[0].as_dict()
    out["commands"] = {c.name: int(c) for c in Command} | {"ERROR": int(Reply.ERROR)}
    return out


@cocotb.test()
async def board(dut):
    """Run $TB_JOB's steps with the real BoardClient over the UART pins."""
    with open(os.environ["TB_JOB"]) as f:
        spec = json.load(f)
    chip = spec["chip"]
    pins = spec.get("pins", PINS)
    clock_ns = chip["clock_ns"]
    clk, rx = getattr(dut, pins["clk"]), getattr(dut, pins["rx"])
    cocotb.start_soon(Clock(clk, clock_ns, unit="ns").start())
    rst = None if pins["rst"] is None else getattr(dut, pins["rst"])
    if rst is not None:
        rst.value = 1
    rx.value = 1
    for _ in range(pins["reset_cycles"]):
        await RisingEdge(clk)
    await FallingEdge(clk)
    if rst is not None:
        rst.value = 0
    link = CocotbLink(dut, chip["uart_divisor"] * clock_ns, clock_ns, chip["baud"], pins)
    cocotb.start_soon(link.monitor())
    try:
        result = await bridge(run_steps)(link, spec)
    except Exception:
        tail = [f"{t:.0f} ns {who}: {h[:80]}" for t, who, h in link.log[-40:]]
        result = {"crash": traceback.format_exc() + f"\nat {get_sim_time('ns'):.0f} ns, "
                  f"{len(link.rxq)} bytes unread; link log tail:\n" + "\n".join(tail)}
    with open(os.environ["TB_RESULT"], "w") as f:
        json.dump(result, f, default=str)
