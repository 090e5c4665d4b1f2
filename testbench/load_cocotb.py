"""cocotb: drive a LoadUnit from an instruction queue and a modelled memory; record what it does.

Input ($TB_JOB, JSON): {"port_bits": int, "late_w_data": bool, "jobs": [job, ...]};
"late_w_data" (default false) says a weight write's `w_data` comes a cycle after its `w_en` and
`w_addr` (`ArrayParams.registered_weight_write`). Each job has "instrs" (a list of
[pc, hex word, arrival cycle]: the queue head shows an instruction once its arrival cycle has
come and it is the oldest not yet taken), "memory" ({word address: hex word}, 0 elsewhere),
"seed", "ready_p" (chance the read channel accepts a request in a cycle), "latency" ([lo, hi]:
a response comes back lo..hi cycles after its request was accepted, in order), "tok_low" (cycles
from reset during which `tok_next` is held low), "tok_p" (chance `tok_next` is high afterwards),
"max_cycles". Each job starts with a reset.

Output ($TB_RESULT): per job, the events by cycle (cycle 0 is the first after reset): "takes"
[cycle, head_pc, take, pop_next, tok_next, head_valid] for every cycle with take or pop_next
high, "reqs" [cycle, addr] for accepted requests, "writes" [cycle, "w"|"a", addr, hex data]
(the cycle of the enable; with "late_w_data" a weight write's data is `w_data` of the next
cycle, sampled one cycle past the end of the run for a write in its last cycle),
"retires" [cycle, pc, push_next], "push_strays" (cycles with push_next but no retire),
"both_en" (cycles with w_en and a_en both high), "req_changes" (cycles where a request that was
not accepted changed or vanished), "resp_refused" (cycles where a response was not accepted),
"error" ([cycle, code, pc] of the first nonzero `error`, or null; the run stops there),
"cycles" and "timeout".
"""

import json
import os
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

INPUTS = ("head_valid", "head_pc", "head_instr", "tok_next", "rd_req__ready",
          "rd_resp__valid", "rd_resp__payload")
#: Cycles the run continues once every instruction retired, to catch stray activity.
TAIL = 6


def _v(handle) -> int:
    return int(handle.value)


async def _reset(dut):
    await FallingEdge(dut.clk)
    dut.rst.value = 1
    for name in INPUTS:
        getattr(dut, name).value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def run_job(dut, job, port_bits, late_w_data=False):
    instrs = [(int(pc), int(word, 16), int(arrival)) for pc, word, arrival in job["instrs"]]
    mem = {int(a): int(v, 16) for a, v in job["memory"].items()}
    rng = random.Random(job["seed"])
    ready_p = float(job["ready_p"])
    lat_lo, lat_hi = (int(x) for x in job["latency"])
    tok_low = int(job.get("tok_low", 0))
    tok_p = float(job.get("tok_p", 1.0))
    max_cycles = int(job.get("max_cycles", 20_000))

    await _reset(dut)
    out = {"takes": [], "reqs": [], "writes": [], "retires": [], "push_strays": [],
           "both_en": [], "req_changes": [], "resp_refused": [], "error": None}
    idx = 0
    pending = deque()          # (due cycle, data), in request order
    last_due = -1
    prev_req = None            # (addr) of a request that was offered and not accepted
    late_w = None              # with late_w_data: last cycle's weight write, its data to come
    done_at = None
    cycle = 0
    while cycle < max_cycles:
        # Drive this cycle's inputs (we are just after a falling edge).
        head = idx < len(instrs) and instrs[idx][2] <= cycle
        dut.head_valid.value = int(head)
        dut.head_pc.value = instrs[idx][0] if head else rng.getrandbits(16)
        dut.head_instr.value = instrs[idx][1] if head else rng.getrandbits(128)
        tok = cycle >= tok_low and rng.random() < tok_p
        dut.tok_next.value = int(tok)
        ready = rng.random() < ready_p
        dut.rd_req__ready.value = int(ready)
        resp = bool(pending) and pending[0][0] <= cycle
        dut.rd_resp__valid.value = int(resp)
        dut.rd_resp__payload.value = pending[0][1] if resp else rng.getrandbits(port_bits)
        await ReadOnly()

        if late_w is not None:
            late_w[3] = f"{_v(dut.w_data):x}"
            late_w = None
        take, pop = _v(dut.take), _v(dut.pop_next)
        if take or pop:
            out["takes"].append([cycle, instrs[idx][0] if head else -1, take, pop, int(tok),
                                 int(head)])
        valid = _v(dut.rd_req__valid)
        addr = _v(dut.rd_req__payload)
        if prev_req is not None and (not valid or addr != prev_req):
            out["req_changes"].append(cycle)
        prev_req = None
        if valid and ready:
            out["reqs"].append([cycle, addr])
            due = max(cycle + rng.randint(lat_lo, lat_hi), last_due + 1)
            last_due = due
            pending.append((due, mem.get(addr, 0)))
        elif valid:
            prev_req = addr
        if resp:
            if _v(dut.rd_resp__ready):
                pending.popleft()
            else:
                out["resp_refused"].append(cycle)
        w_en, a_en = _v(dut.w_en), _v(dut.a_en)
        if w_en and a_en:
            out["both_en"].append(cycle)
        if w_en:
            write = [cycle, "w", _v(dut.w_addr), None if late_w_data else f"{_v(dut.w_data):x}"]
            out["writes"].append(write)
            if late_w_data:
                late_w = write
        if a_en:
            out["writes"].append([cycle, "a", _v(dut.a_addr), f"{_v(dut.a_data):x}"])
        push = _v(dut.push_next)
        if _v(dut.retire):
            out["retires"].append([cycle, _v(dut.retire_pc), push])
        elif push:
            out["push_strays"].append(cycle)
        err = _v(dut.error)
        if err:
            out["error"] = [cycle, err, _v(dut.error_pc)]
            break
        if done_at is None and len(out["retires"]) >= len(instrs) and not pending:
            done_at = cycle
        if done_at is not None and cycle >= done_at + TAIL:
            break
        if take:
            idx += 1
        cycle += 1
        await FallingEdge(dut.clk)
    out["cycles"] = cycle
    out["timeout"] = cycle >= max_cycles
    if late_w is not None:
        # A weight write in the run's last cycle: its data is the next cycle's. (A timeout
        # leaves the loop just after that cycle's falling edge; a break, in the write's cycle.)
        if not out["timeout"]:
            await FallingEdge(dut.clk)
        await ReadOnly()
        late_w[3] = f"{_v(dut.w_data):x}"
    return out


@cocotb.test()
async def run_loads(dut):
    """Run every job of $TB_JOB, each after a reset."""
    with open(os.environ["TB_JOB"]) as f:
        spec = json.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    late = bool(spec.get("late_w_data", False))
    results = [await run_job(dut, job, int(spec["port_bits"]), late) for job in spec["jobs"]]
    with open(os.environ["TB_RESULT"], "w") as f:
        json.dump({"results": results}, f)
