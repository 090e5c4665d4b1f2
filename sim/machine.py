"""The cycle-accurate simulator: the RTL's every retire cycle, counter and output bit.

The model is event-driven: it evaluates the machine only in cycles where something can change
(an instruction issues, retires or is dispatched, a unit frees up, an error falls due) and jumps
over the cycles in between, adding the stall counters for the whole stretch. Each instruction's
arithmetic is one vectorized numpy operation (a float32 matrix product is exact for int8 x
ternary sums below 2^24: REFERENCE.md section 1).

Timing rules (docs/architecture.md, "Cycle timing"), all from `rtl.params`:
- dispatch: one instruction per cycle into a unit queue, visible to the unit the next cycle
  (with `queue_depth` 0 there are no queues: the unit sees it in the dispatch cycle, and the
  dispatcher holds it until the unit takes it);
- a unit issues in a cycle where it is free, its queue has a head and its pops are available;
  tokens pushed at retirement in cycle r are visible from r+1;
- LOAD (N words, latency L): requests s+1..s+N, the next may issue at s+N, retires at s+N+L
  (s+N+L+1 with `registered_decode`);
- MATMUL (G token groups, S steps per group: k_len columns, or (k_len / 8) * N slots with
  `nm` = N): reads s+1..s+G*S, the next may issue at s+G*S, retires at s+G*S+2 (s+G*S+3 with
  `registered_operands`: `ArrayParams.matmul_drain`);
- STORE: writes s+1..s+tokens*words, retires at the last write, where the next may issue;
- HALT retires in the first cycle where all queues are empty and all units idle.

Functional effects are applied when an instruction issues; this is exact for programs whose
dependency tokens order every buffer hazard (the compiler's programs do). Programs that race
on a buffer get exact timing but unspecified data, in hardware as here.
"""

import bisect
from collections import deque
from typing import NamedTuple

import numpy as np

from rtl.isa import (
    NM_M,
    NM_MAX_N,
    NM_MIN_N,
    NM_SLOTS_PER_BYTE,
    NM_WORDS_PER_ROW,
    OPCODE_OF_UNIT,
    TRITS_PER_BYTE,
    Buffer,
    Counter,
    ErrorCode,
    Halt,
    Instr,
    Load,
    MatMul,
    Opcode,
    Status,
    Store,
    TraceRecord,
    Unit,
    WeightEncoding,
    decode,
)
from rtl.params import ArrayParams

from .backend import Job, MemoryImage, RunResult
from .golden import nm_slot_fields, unpack_trits

__all__ = ["Simulator", "DueError"]

_ADDR_MASK = (1 << 32) - 1
_NEVER = 1 << 62

# Error priority within one cycle, as rtl/top.py resolves it.
_PRIO_LOAD_RESP, _PRIO_LOAD_REQ, _PRIO_COMPUTE, _PRIO_STORE, _PRIO_OVERFLOW, _PRIO_DISPATCH, \
    _PRIO_DEADLOCK = range(7)



def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class _Memory:
    """External memory: the job's regions for reads, and a log of writes."""

    def __init__(self, image: MemoryImage):
        self.p = image.port_bytes
        self.bases = sorted(image.regions)
        self.regions = [image.regions[b] for b in self.bases]
        self.written: dict = {}
        self.lo, self.hi = _NEVER, -1      # range of written addresses

    def read(self, addr: int, count: int) -> np.ndarray:
        """Words [addr, addr + count) as uint8 (count, P); unmapped words read zero."""
        out = np.zeros((count, self.p), np.uint8)
        if count == 0:
            return out
        i = bisect.bisect_right(self.bases, addr) - 1
        if i >= 0 and addr + count <= self.bases[i] + len(self.regions[i]) and \
                addr + count <= 1 << 32:
            out[:] = self.regions[i][addr - self.bases[i]:addr - self.bases[i] + count]
        else:
            for w in range(count):
                out[w] = self.read_word((addr + w) & _ADDR_MASK)
        if self.lo < addr + count and addr <= self.hi:
            for a, v in self.written.items():
                if addr <= a < addr + count:
                    out[a - addr] = v
        return out

    def stable_key(self, addr: int, stride: int, length: int, rows: int):
        """A cache key for words that come from a read-only region and no write, else None."""
        if rows != 1:
            return None
        i = bisect.bisect_right(self.bases, addr) - 1
        if i < 0 or addr + length > self.bases[i] + len(self.regions[i]):
            return None
        region = self.regions[i]
        if region.flags.writeable or (self.lo < addr + length and addr <= self.hi):
            return None
        return (_data_address(region), addr - self.bases[i], length)

    def write(self, addr: int, word: np.ndarray) -> None:
        self.written[addr] = word.copy()
        self.lo, self.hi = min(self.lo, addr), max(self.hi, addr)

    def read_word(self, addr: int) -> np.ndarray:
        if addr in self.written:
            return self.written[addr]
        i = bisect.bisect_right(self.bases, addr) - 1
        if i >= 0 and addr < self.bases[i] + len(self.regions[i]):
            return self.regions[i][addr - self.bases[i]]
        return np.zeros(self.p, np.uint8)


def _data_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class _DecodeCache:
    """Decoded weight tiles of read-only memory regions, kept across runs (bounded, FIFO)."""

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.used = 0
        self.entries: dict = {}
        self.keep: dict = {}    # data address -> region, so an address is not reused while cached

    def get(self, key, enc):
        return self.entries.get((key, int(enc)))

    def put(self, key, enc, trits, bad, zeros):
        size = trits.nbytes
        while self.entries and self.used + size > self.limit:
            old = next(iter(self.entries))
            self.used -= self.entries.pop(old)[0].nbytes
        if size <= self.limit:
            self.entries[(key, int(enc))] = (trits, bad, zeros)
            self.used += size


class _Run:
    """One program run. Cycle numbers count from the first RUNNING cycle (0)."""

    def __init__(self, p: ArrayParams, job: Job, cache: "_DecodeCache | None" = None):
        self.p = p
        self.job = job
        self.cache = cache
        if len(job.program) > p.imem_depth:
            raise ValueError(f"program of {len(job.program)} instructions exceeds program "
                             f"memory ({p.imem_depth})")
        self.program = []
        for w in job.program:
            if isinstance(w, Instr):
                self.program.append(w)
                continue
            try:
                self.program.append(decode(int(w), strict=False))
            except ValueError:
                self.program.append(None)     # illegal: stops the run when reached
        self.mem = _Memory(job.memory)
        # Trits as float32, ready for the product; and each row's count of zero trits.
        self.wbuf = np.zeros((p.wbuf_rows, p.row_lanes), np.float32)
        self.wzero = np.full(p.wbuf_rows, p.row_lanes, np.int64)
        self.wpos = np.zeros((p.wbuf_rows, p.row_lanes), np.int8)    # N:M slot offsets d
        self.abuf = np.zeros((p.abuf_rows, p.port_bytes), np.uint8)
        self.acc = np.zeros((p.acc_groups, p.token_lanes, p.row_lanes), np.int64)
        self.counters = dict.fromkeys(Counter, 0)
        self.trace: list = []
        self.writes: list = []        # (cycle, address, int)
        self.busy_parts: list = []    # per MATMUL: (issue cycle, per-cycle busy and zero arrays)
        self.read_spans: list = []    # per LOAD: (first response cycle, responses)
        self.write_spans: list = []

        self.queues = {u: deque() for u in (Unit.LOAD, Unit.COMPUTE, Unit.STORE)}
        self.tokens = {"l2c": 0, "c2l": 0, "c2s": 0, "s2c": 0}
        self.retires: dict = {}       # cycle -> [(unit, pc, {link: 1})]
        self.errors: list = []        # (cycle, priority, code, pc)
        self.inflight: list = []      # (issue cycle, retire cycle) of LOADs
        self.gen_free = 0             # first cycle the LOAD request side may issue again
        self.gen_busy_end = -1        # its last busy cycle
        self.comp_free = 0
        self.comp_active_until = -1   # last cycle the COMPUTE unit is active
        self.store_free = 0
        self.store_busy_end = -1
        self.pc = 0

    # -- helpers ---------------------------------------------------------------------------------

    def _head(self, u: Unit, c: int):
        # Units evaluate before the dispatcher appends in a cycle, so every queued entry was
        # dispatched in an earlier cycle and is visible.
        q = self.queues[u]
        return q[0] if q else None

    def _inflight(self, c: int) -> int:
        return sum(1 for s, r in self.inflight if s < c <= r)

    def _schedule_retire(self, cycle: int, unit: Unit, pc: int, pushes: dict):
        self.retires.setdefault(cycle, []).append((unit, pc, pushes))

    def _error(self, cycle: int, prio: int, code: ErrorCode, pc: int):
        self.errors.append((cycle, prio, code, pc))

    # -- the units -------------------------------------------------------------------------------

    def _load(self, c: int):
        """The LOAD request side at cycle c. Returns (issued, stall_dep, stall_port)."""
        p = self.p
        if c < self.gen_free:
            return False, False, False
        head = self._head(Unit.LOAD, c)
        if head is None:
            return False, False, False
        pc, ins, _ = head
        if ins.pop_next and self.tokens["c2l"] == 0:
            return False, True, False
        enc_ok = ins.encoding in p.encodings
        nm = ins.buffer == Buffer.WEIGHT and ins.encoding == WeightEncoding.NM
        if ins.rows == 0 or ins.length == 0 or (ins.buffer == Buffer.WEIGHT and not enc_ok) \
                or (nm and ins.length % NM_WORDS_PER_ROW):
            self._error(c, _PRIO_LOAD_REQ, ErrorCode.BAD_FIELD, pc)
            return False, False, False
        if self._inflight(c) >= p.loads_in_flight:
            return False, False, True
        self.queues[Unit.LOAD].popleft()
        self.pops["c2l"] += ins.pop_next
        depth = p.wbuf_rows if ins.buffer == Buffer.WEIGHT else p.abuf_rows
        # Buffer rows one LOAD row fills: N:M slots take two words per buffer row.
        row_span = ins.length // NM_WORDS_PER_ROW if nm else ins.length
        fit = max(0, (depth - ins.sram) // row_span) if ins.sram <= depth else 0
        rows = min(ins.rows, fit)
        n = rows * ins.length
        lat = p.mem.read_latency
        # Responses are written (and checked) `resp` cycles after their request: the port's
        # latency, and one more with a registered decoder.
        resp = lat + int(p.registered_decode)
        if rows < ins.rows:
            self._error(c + 1 + rows * ins.length, _PRIO_LOAD_REQ, ErrorCode.BAD_ADDRESS, pc)
        self.read_spans.append((c + 1 + lat, n))
        key = hit = None
        if ins.buffer == Buffer.WEIGHT and self.cache:
            key = self.mem.stable_key(ins.dram, ins.stride, ins.length, rows)
            hit = self.cache.get(key, ins.encoding) if key else None
        data = None if hit else np.concatenate(
            [self.mem.read((ins.dram + r * ins.stride) & _ADDR_MASK, ins.length)
             for r in range(rows)]) if rows else np.zeros((0, p.port_bytes), np.uint8)
        if nm:
            slots, bad = hit[:2] if hit else self._decode_nm(data)
            if bad.any():
                first = int(np.argmax(bad))
                self._error(c + 1 + first + resp, _PRIO_LOAD_RESP, ErrorCode.BAD_WEIGHT, pc)
            if self.cache and key and not hit:
                self.cache.put(key, ins.encoding, slots, bad, None)
            self._write_nm(ins.sram, slots, bad)
        elif ins.buffer == Buffer.WEIGHT:
            trits, bad = hit[:2] if hit else self._decode(data, WeightEncoding(ins.encoding))
            if bad.any():
                first = int(np.argmax(bad))
                self._error(c + 1 + first + resp, _PRIO_LOAD_RESP, ErrorCode.BAD_WEIGHT, pc)
            zeros = hit[2] if hit else (trits == 0).sum(axis=1)
            if self.cache and key and not hit:
                self.cache.put(key, ins.encoding, trits, bad, zeros)
            if bad.any():
                good = ~bad
                self.wbuf[ins.sram:ins.sram + n][good] = trits[good]
                self.wzero[ins.sram:ins.sram + n][good] = zeros[good]
            else:
                self.wbuf[ins.sram:ins.sram + n] = trits
                self.wzero[ins.sram:ins.sram + n] = zeros
            if p.nm:
                self.wpos[ins.sram:ins.sram + n][~bad] = 0
        else:
            self.abuf[ins.sram:ins.sram + n] = data
        self.gen_free = c + n if rows == ins.rows else _NEVER
        # A refused row keeps the request side busy until the error cycle.
        self.gen_busy_end = c + n + (rows < ins.rows)
        if rows == ins.rows:
            self.inflight.append((c, c + n + resp))
            self._schedule_retire(c + n + resp, Unit.LOAD, pc, {"l2c": ins.push_next})
        return True, False, False

    def _decode(self, words: np.ndarray, enc: WeightEncoding):
        """Decode weight words to (n, row_lanes) trits and a per-word invalid flag."""
        p = self.p
        n = len(words)
        per_word = TRITS_PER_BYTE[enc] * p.port_bytes
        trits = np.zeros((n, p.row_lanes), np.int8)
        bad = np.zeros(n, bool)
        if n == 0:
            return trits, bad
        try:
            trits[:, :per_word] = unpack_trits(words.reshape(-1), enc, n * per_word) \
                .reshape(n, per_word)
        except ValueError:
            for i in range(n):
                try:
                    trits[i, :per_word] = unpack_trits(words[i], enc, per_word)
                except ValueError:
                    bad[i] = True
        return trits, bad

    def _decode_nm(self, words: np.ndarray):
        """Decode N:M words to (2, n, 2P) int8 (trit, offset) per slot, and invalid flags."""
        codes = np.empty((len(words), self.p.port_bytes, NM_SLOTS_PER_BYTE), np.uint8)
        codes[:, :, 0] = words & 0xF
        codes[:, :, 1] = words >> 4
        trit, offset, bad = nm_slot_fields(codes.reshape(len(words), -1))
        return np.stack([trit, offset]), bad.any(axis=1)

    def _write_nm(self, sram: int, slots: np.ndarray, bad: np.ndarray):
        """Word i fills lanes h*2P .. h*2P + 2P - 1 (h = i % 2) of buffer row sram + i // 2; the
        second word of a row also clears the lanes past 4P. Invalid words are not written."""
        p = self.p
        half = slots.shape[2]
        rows = set()
        for h in range(NM_WORDS_PER_ROW):
            idx = np.arange(h, len(bad), NM_WORDS_PER_ROW)
            idx = idx[~bad[idx]]
            dst = sram + idx // NM_WORDS_PER_ROW
            self.wbuf[dst, h * half:(h + 1) * half] = slots[0, idx]
            self.wpos[dst, h * half:(h + 1) * half] = slots[1, idx]
            if h == NM_WORDS_PER_ROW - 1:
                self.wbuf[dst, p.nm_rows:] = 0
                self.wpos[dst, p.nm_rows:] = 0
            rows.update(dst.tolist())
        rows = np.array(sorted(rows), np.int64)
        if len(rows):
            self.wzero[rows] = (self.wbuf[rows] == 0).sum(axis=1)

    def _compute(self, c: int):
        """The COMPUTE unit at cycle c. Returns (issued, stall_dep)."""
        p = self.p
        if c < self.comp_free:
            return False, False
        head = self._head(Unit.COMPUTE, c)
        if head is None:
            return False, False
        pc, ins, _ = head
        if (ins.pop_prev and self.tokens["l2c"] == 0) or \
                (ins.pop_next and self.tokens["s2c"] == 0):
            return False, True
        groups = _ceil(ins.tokens, p.token_lanes)
        nm_ok = ins.nm == 0 or (WeightEncoding.NM in p.encodings and NM_MIN_N <= ins.nm
                                <= NM_MAX_N and ins.k_len % NM_M == 0)
        if ins.k_len == 0 or ins.tokens == 0 or ins.n_rows == 0 or ins.n_rows > p.row_lanes \
                or ins.tokens > p.max_tokens or not nm_ok:
            self._error(c, _PRIO_COMPUTE, ErrorCode.BAD_FIELD, pc)
            return False, False
        # Cycles per token group: one per column, or one per N:M slot.
        steps = ins.k_len // NM_M * ins.nm if ins.nm else ins.k_len
        if ins.wbuf + steps > p.wbuf_rows or ins.acc + groups > p.acc_groups:
            self._error(c, _PRIO_COMPUTE, ErrorCode.BAD_ADDRESS, pc)
            return False, False
        self.queues[Unit.COMPUTE].popleft()
        self.pops["l2c"] += ins.pop_prev
        self.pops["s2c"] += ins.pop_next
        k = ins.k_len
        span = (((k - 1) * p.token_lanes) // p.port_bytes) + 1
        ok_groups = groups
        for g in range(groups):
            if ins.abuf + g * ins.x_stride + span > p.abuf_rows:
                self._error(c + 1 + g * steps, _PRIO_COMPUTE, ErrorCode.BAD_ADDRESS, pc)
                ok_groups = g
                break
        self._matmul(ins, ok_groups, span, steps, c)
        cycles = groups * steps
        self.comp_free = c + cycles if ok_groups == groups else _NEVER
        # Stage 1 (operands) and stage 2 (the adds) follow the last read.
        self.comp_active_until = c + cycles + p.matmul_drain
        if ok_groups == groups:
            self._schedule_retire(c + cycles + p.matmul_drain, Unit.COMPUTE, pc,
                                  {"c2l": ins.push_prev, "c2s": ins.push_next})
        return True, False

    def _matmul(self, ins: MatMul, groups: int, span: int, steps: int, c: int):
        p = self.p
        lt, k, nr = p.token_lanes, ins.k_len, ins.n_rows
        w = self.wbuf[ins.wbuf:ins.wbuf + steps]
        if nr == p.row_lanes:
            zeros = self.wzero[ins.wbuf:ins.wbuf + steps].copy()    # kept until the run ends
        else:
            zeros = (w[:, :nr] == 0).sum(axis=1)
        active = [min(lt, ins.tokens - g * lt) for g in range(groups)]
        # Stage-1 cycles from c + matmul_drain on, group-major: busy lanes and zero-weight lanes
        # per cycle.
        self.busy_parts.append((c + p.matmul_drain, steps, nr, active, zeros))
        if ins.nm and groups:
            # Slot c of group q adds its trit at column 8q + (c + d) mod 8: the same sums as the
            # dense matrix with every slot added in at its column.
            step = np.arange(steps)
            q, slot = step // ins.nm, step % ins.nm
            col = q[:, None] * NM_M + (slot[:, None] + self.wpos[ins.wbuf:ins.wbuf + steps]) % NM_M
            dense = np.zeros((k, p.row_lanes), np.float32)
            np.add.at(dense, (col, np.broadcast_to(np.arange(p.row_lanes), col.shape)), w)
            w = dense
        if not groups:
            return
        if groups == 1 and ins.abuf + span <= p.abuf_rows:
            raw = self.abuf[ins.abuf:ins.abuf + span].reshape(-1)[:k * lt].view(np.int8)
            x = raw.reshape(1, k, lt).transpose(0, 2, 1).astype(np.float32)
        else:
            x = np.empty((groups, lt, k), np.float32)
            for g in range(groups):
                row = ins.abuf + g * ins.x_stride
                raw = self.abuf[row:row + span].reshape(-1)[:k * lt].view(np.int8)
                x[g] = raw.reshape(k, lt).T
        prod = (x @ w).astype(np.int64)                               # exact: |sum| < 2^24
        if nr < p.row_lanes:
            prod[:, :, nr:] = 0
        for g, a in enumerate(active):
            prod[g, a:] = 0
        dst = self.acc[ins.acc:ins.acc + groups]
        out = dst + prod if ins.accumulate else prod
        half = 1 << (p.acc_bits - 1)
        if ins.accumulate or k * 128 >= half:
            out = (out + half) % (2 * half) - half                    # the accumulator wraps
        self.acc[ins.acc:ins.acc + groups] = out

    def _store(self, c: int):
        """The STORE unit at cycle c. Returns (issued, stall_dep)."""
        p = self.p
        if c < self.store_free:
            return False, False
        head = self._head(Unit.STORE, c)
        if head is None:
            return False, False
        pc, ins, _ = head
        if ins.pop_prev and self.tokens["c2s"] == 0:
            return False, True
        groups = _ceil(ins.tokens, p.token_lanes)
        if ins.tokens == 0 or ins.words == 0 or ins.words > p.out_words_per_token or \
                ins.tokens > p.max_tokens:
            self._error(c, _PRIO_STORE, ErrorCode.BAD_FIELD, pc)
            return False, False
        if ins.acc + groups > p.acc_groups:
            self._error(c, _PRIO_STORE, ErrorCode.BAD_ADDRESS, pc)
            return False, False
        self.queues[Unit.STORE].popleft()
        self.pops["c2s"] += ins.pop_prev
        lt = p.token_lanes
        vals = self.acc[ins.acc:ins.acc + groups].reshape(groups * lt, p.row_lanes)
        images = vals[:ins.tokens].astype("<i4").view(np.uint8).reshape(ins.tokens, -1)
        cyc = c + 1
        for t in range(ins.tokens):
            base = ins.dram + t * ins.stride
            for wi in range(ins.words):
                word = images[t, wi * p.port_bytes:(wi + 1) * p.port_bytes]
                addr = (base + wi) & _ADDR_MASK
                self.writes.append((cyc, addr, int.from_bytes(word.tobytes(), "little")))
                self.mem.write(addr, word)
                cyc += 1
        n = ins.tokens * ins.words
        self.write_spans.append((c + 1, n))
        self.store_free = c + n
        self.store_busy_end = c + n
        self._schedule_retire(c + n, Unit.STORE, pc, {"s2c": ins.push_prev})
        return True, False

    # -- the whole machine -----------------------------------------------------------------------

    def run(self) -> RunResult:
        p = self.p
        c = 0
        end = None
        status = Status.RUNNING
        error = ErrorCode.NONE
        error_pc = 0
        timeout = False
        while True:
            self.pops = dict.fromkeys(self.tokens, 0)
            levels = {u: len(q) for u, q in self.queues.items()}
            # Program memory past the program holds zeros: an illegal opcode. Before the first
            # instruction is fetched (`prefetch`), the dispatcher decodes nothing.
            fetched = c >= p.first_decode
            ins = self.program[self.pc] if self.pc < len(self.program) else None
            offered = None
            if p.queue_depth == 0 and ins is not None and fetched:
                # No queues: the dispatcher's instruction is its unit's head this cycle, unless
                # the dispatcher refuses it (bad dependency, the last address).
                unit = _unit_of(ins)
                if unit != Unit.DISPATCH and not _bad_dependency(ins, unit) and \
                        self.pc != p.imem_depth - 1:
                    self.queues[unit].append((self.pc, ins, c))
                    offered = unit
            heads = {u: bool(q) for u, q in self.queues.items()}
            load_active = c <= self.gen_busy_end or self._inflight(c) > 0
            comp_active = c <= self.comp_active_until
            store_active = c <= self.store_busy_end
            active = {Unit.LOAD: load_active, Unit.COMPUTE: comp_active,
                      Unit.STORE: store_active}

            issued_l, dep_l, port_l = self._load(c)
            issued_c, dep_c = self._compute(c)
            issued_s, dep_s = self._store(c)
            blocked = {Unit.LOAD: dep_l, Unit.COMPUTE: dep_c, Unit.STORE: dep_s}

            # The dispatcher.
            dispatched = halted = stall_d = halt_wait = False
            if fetched and ins is None:
                self._error(c, _PRIO_DISPATCH, ErrorCode.ILLEGAL_OPCODE, self.pc)
            elif fetched:
                unit = _unit_of(ins)
                if _bad_dependency(ins, unit):
                    self._error(c, _PRIO_DISPATCH, ErrorCode.BAD_DEPENDENCY, self.pc)
                elif unit == Unit.DISPATCH:
                    drained = all(levels[u] == 0 and not active[u] for u in self.queues)
                    halted = drained
                    halt_wait = not drained
                elif p.queue_depth == 0:
                    if self.pc == p.imem_depth - 1:
                        self._error(c, _PRIO_DISPATCH, ErrorCode.NO_HALT, self.pc)
                    elif self.queues[offered]:
                        self.queues[offered].clear()      # not taken: offered again next cycle
                        stall_d = True
                    else:
                        self.pc += 1
                        dispatched = True
                elif levels[unit] >= p.queue_depth:
                    stall_d = True
                elif self.pc == p.imem_depth - 1:
                    self._error(c, _PRIO_DISPATCH, ErrorCode.NO_HALT, self.pc)
                else:
                    self.queues[unit].append((self.pc, ins, c + 1))
                    self.pc += 1
                    dispatched = True

            # Deadlock: nothing active, somebody blocked, nobody can move. It persists, and is
            # reported one cycle after the first cycle that shows it.
            stuck = all(not active[u] and (blocked[u] or not heads[u]) for u in self.queues)
            if any(blocked.values()) and stuck and (stall_d or halt_wait):
                self._error(c + 1, _PRIO_DEADLOCK, ErrorCode.DEADLOCK, self.pc)

            # Retirements and token updates.
            retiring = self.retires.pop(c, [])
            for unit, pc, _ in sorted(retiring, key=lambda r: r[0]):
                self.trace.append(TraceRecord(c, int(unit), pc, int(OPCODE_OF_UNIT[unit])))
            if halted:
                self.trace.append(TraceRecord(c, int(Unit.DISPATCH), self.pc, int(Opcode.HALT)))
            pushed = dict.fromkeys(self.tokens, 0)
            pusher = {}
            for _, pc, pushes in retiring:
                for link, v in pushes.items():
                    if v:
                        pushed[link] += 1
                        pusher[link] = pc
            for link in ("l2c", "c2l", "c2s", "s2c"):
                if pushed[link] and not self.pops[link] and self.tokens[link] == p.token_depth:
                    # Reported a cycle after the push, as the RTL registers it.
                    self._error(c + 1, _PRIO_OVERFLOW, ErrorCode.TOKEN_OVERFLOW, pusher[link])
                else:
                    self.tokens[link] += pushed[link] - self.pops[link]
            self.inflight = [(s, r) for s, r in self.inflight if r > c]

            stalls = {Counter.STALL_LOAD_DEP: dep_l, Counter.STALL_READ_PORT: port_l,
                      Counter.STALL_COMPUTE_DEP: dep_c, Counter.STALL_STORE_DEP: dep_s,
                      Counter.STALL_DISPATCH: stall_d}

            now = [e for e in self.errors if e[0] == c]
            if now:
                _, _, error, error_pc = min(now, key=lambda e: e[1])
                if error == ErrorCode.TOKEN_OVERFLOW:
                    # Several overflows in one cycle: the last link's pusher is reported.
                    error_pc = [e for e in now if e[1] == _PRIO_OVERFLOW][-1][3]
                status, end = Status.ERROR, c
            elif halted:
                status, end = Status.DONE, c
            if end is not None:
                self._count_stalls(stalls, 1)
                break

            if issued_l or issued_c or issued_s or dispatched or retiring or not fetched:
                nxt = c + 1
            else:
                future = [t for t in (self.gen_free, self.comp_free, self.store_free,
                                      self.gen_busy_end + 1, self.store_busy_end + 1,
                                      self.comp_active_until + 1) if c < t < _NEVER]
                future += [t for t in self.retires if t > c]
                future += [e[0] for e in self.errors if e[0] > c]
                future += [r + 1 for _, r in self.inflight if r + 1 > c]
                nxt = min(future) if future else _NEVER
            limit = MAX_CYCLES if self.job.max_cycles is None else self.job.max_cycles
            if nxt > limit:
                self._count_stalls(stalls, limit + 1 - c)
                timeout, end = True, limit
                break
            self._count_stalls(stalls, nxt - c)
            c = nxt

        return self._result(end, status, error, error_pc, timeout)

    def _count_stalls(self, stalls: dict, n: int):
        for ctr, on in stalls.items():
            if on:
                self.counters[ctr] += n

    def _result(self, end: int, status, error, error_pc, timeout) -> RunResult:
        p = self.p
        ctr = self.counters
        ctr[Counter.CYCLES] = end + 1
        for first, n in self.read_spans:
            ctr[Counter.BYTES_READ] += p.port_bytes * max(0, min(n, end + 1 - first))
        for first, n in self.write_spans:
            ctr[Counter.BYTES_WRITTEN] += p.port_bytes * max(0, min(n, end + 1 - first))
        for first, k, nr, active, zeros in self.busy_parts:
            m = max(0, min(k * len(active), end + 1 - first))      # stage-1 cycles that ran
            full, part = divmod(m, k)
            done = sum(active[:full])
            busy = nr * (done * k + (active[full] * part if part else 0))
            skipped = int(zeros.sum()) * done + (int(zeros[:part].sum()) * active[full]
                                                 if part else 0)
            ctr[Counter.BUSY_LANE_CYCLES] += busy
            ctr[Counter.SKIPPED_ZERO] += skipped
        mask = (1 << p.counter_bits) - 1        # the counters wrap around
        trace = sorted(r for r in self.trace if r.cycle <= end)
        writes = [(a, v) for cyc, a, v in self.writes if cyc <= end]
        return RunResult(status=status, error=error, error_pc=error_pc,
                         counters={c.name: int(v) & mask for c, v in ctr.items()}, trace=trace,
                         writes=writes, port_bytes=p.port_bytes, timeout=timeout)


_UNIT_OF_CLASS = {Load: Unit.LOAD, MatMul: Unit.COMPUTE, Store: Unit.STORE, Halt: Unit.DISPATCH}


def _unit_of(ins) -> Unit:
    return _UNIT_OF_CLASS[type(ins)]


def _bad_dependency(ins, unit: Unit) -> bool:
    if unit == Unit.LOAD:
        return bool(ins.pop_prev or ins.push_prev)
    if unit == Unit.STORE:
        return bool(ins.pop_next or ins.push_next)
    if unit == Unit.DISPATCH:
        return bool(ins.pop_prev or ins.pop_next or ins.push_prev or ins.push_next)
    return False


class Simulator:
    """The simulator backend: `run(jobs) -> [RunResult]`, as `testbench.backend` does on RTL."""

    name = "sim"

    def __init__(self, params: ArrayParams, cache_bytes: int = 6 << 30):
        self.params = params
        # Weight words from read-only regions (a memory-mapped artifact) decode once.
        self.cache = _DecodeCache(cache_bytes) if cache_bytes else None

    def run(self, jobs: list) -> list:
        return [self.run_one(j) for j in jobs]

    def run_one(self, job: Job) -> RunResult:
        return self.run_with_errors(job)[0]

    def run_with_errors(self, job: Job) -> tuple:
        """Run `job`; return its RunResult and every error that fell due in the run, in the
        order they were found, as `DueError`s. The one reported is the one of the lowest
        priority in its cycle; the others show which errors collided (testbench/programs.py
        builds its colliding-error cases from them)."""
        if job.mode != "lockstep":
            raise ValueError("the simulator models the lockstep memory only")
        if self.cache is not None:
            for region in job.memory.regions.values():
                if not region.flags.writeable:
                    self.cache.keep[_data_address(region)] = region
        run = _Run(self.params, job, self.cache)
        result = run.run()
        return result, [DueError(*e) for e in run.errors]


class DueError(NamedTuple):
    """An error that fell due in a run: its cycle (counted from the first RUNNING cycle, 0),
    its priority within the cycle (as rtl/top.py resolves it; lower wins), code and pc."""

    cycle: int
    priority: int
    code: ErrorCode
    pc: int


#: Without a job limit the simulator runs until the 40-bit cycle counter would wrap.
MAX_CYCLES = (1 << 40) - 1

