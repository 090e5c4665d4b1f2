"""Programs for tests: planned projections, fuzzed instruction streams and malformed programs.

Every generator is seeded; the seed is part of each case's name.
"""

from dataclasses import dataclass

import numpy as np

from compiler.tiling import (
    unpack_results,
)
from rtl.isa import (
    FORMATS,
    NM_EMPTY,
    NM_INVALID,
    NM_M,
    NM_MAX_N,
    NM_MIN_N,
    NM_SLOTS_PER_BYTE,
    NM_WORDS_PER_ROW,
    Buffer,
    ErrorCode,
    Halt,
    Load,
    MatMul,
    Opcode,
    Store,
    WeightEncoding,
    nm_slot_table,
)
from rtl.params import ArrayParams
from sim.backend import Job, MemoryImage, projection_job
from sim.golden import pack_trits, ternary_matmul
from sim.machine import Simulator

__all__ = ["Case", "projection_case", "projection_cases", "special_cases", "fuzz_job",
           "error_cases", "colliding_error_cases", "nm_words", "nm_case"]


@dataclass
class Case:
    """A job and what it must produce: y (int32) at the plan's result region, or an error."""

    name: str
    job: Job
    plan: object = None
    expected: np.ndarray | None = None
    error: ErrorCode = ErrorCode.NONE
    error_pc: int | None = None
    slots: np.ndarray | None = None     # an N:M case's slot codes (buffer rows, lanes)
    #: The program STOREs accumulators no MATMUL of its own wrote: what they hold is left from
    #: earlier runs (the hardware clears no accumulator at start), so only the written
    #: addresses are compared, not the words.
    stale_accumulators: bool = False

    def outputs(self, result) -> np.ndarray:
        return unpack_results(self.plan, result.region(self.plan.y_base, self.plan.y_words))


@dataclass
class _ResultRegion:
    """Where a hand-written program leaves its int32 results (the part of a Plan tests use)."""

    n: int
    tokens: int
    y_base: int
    y_words: int


def projection_case(params: ArrayParams, name: str, w_t: np.ndarray, x_q: np.ndarray,
                    encoding=WeightEncoding.BASE3, **plan_args) -> Case:
    plan, job = projection_job(params, w_t, x_q, encoding, **plan_args)
    return Case(name, job, plan, ternary_matmul(x_q, w_t))


def projection_cases(params: ArrayParams, seed: int, count: int) -> list:
    """Random shapes around the array's size: N and K off the tile grid, 1..many tokens."""
    rng = np.random.default_rng(seed)
    cases = []
    rows = 5 * params.port_bytes
    for i in range(count):
        n = int(rng.choice([1, 2, rows - 1, rows, rows + 1, 2 * rows + 3,
                            rng.integers(1, 3 * rows)]))
        k = int(rng.choice([1, 2, 7, params.port_bytes + 1, rng.integers(1, 200)]))
        t = int(rng.choice([1, 1, 2, 3, params.token_lanes + 1, rng.integers(1, 12)]))
        enc = WeightEncoding(int(rng.integers(0, 2)))
        density = rng.choice([0.0, 0.3, 0.7, 1.0])
        w = (rng.integers(-1, 2, (n, k)) * (rng.random((n, k)) < density)).astype(np.int8)
        x = rng.integers(-128, 128, (t, k)).astype(np.int8)
        kw = {}
        if rng.random() < 0.3:
            kw["slots"] = 2
        cases.append(projection_case(params, f"seed{seed}-{i}-n{n}k{k}t{t}-{enc.name}", w, x,
                                     enc, **kw))
    if params.nm:
        cases += nm_cases(params, seed, max(1, count // 3))
        # Planned by the compiler: N:M sparse weights (at most N non-zeros per row and group
        # of 8 columns), k off the group grid.
        for i in range(2):
            n_slots = int(rng.integers(NM_MIN_N, NM_MAX_N + 1))
            n = int(rng.integers(1, 2 * params.nm_rows + 3))
            k = int(rng.choice([NM_M, 3 * NM_M + 5, rng.integers(1, 120)]))
            t = int(rng.integers(1, params.max_tokens + 1))
            w = rng.integers(-1, 2, (n, -(-k // NM_M) * NM_M)).astype(np.int8)
            groups = w.reshape(n, -1, NM_M)
            for g in np.ndindex(groups.shape[:2]):
                nz = np.flatnonzero(groups[g])
                groups[g][rng.permutation(nz)[n_slots:]] = 0
            w = np.ascontiguousarray(w[:, :k])
            x = rng.integers(-128, 128, (t, k)).astype(np.int8)
            cases.append(projection_case(params, f"seed{seed}-plan{i}-n{n}k{k}t{t}-nm{n_slots}",
                                         w, x, WeightEncoding.NM, nm=n_slots))
    return cases


def nm_words(params: ArrayParams, codes: np.ndarray) -> np.ndarray:
    """N:M slot codes (buffer rows, nm_rows lanes) -> memory words, two per buffer row: lanes
    0 .. 2P-1, then 2P .. 4P-1, lane 2i in the low nibble of byte i (rtl/isa.py)."""
    half = NM_SLOTS_PER_BYTE * params.port_bytes
    lanes = codes.reshape(-1, NM_WORDS_PER_ROW, half)
    return (lanes[..., 0::2] | (lanes[..., 1::2] << 4)).reshape(-1, params.port_bytes) \
        .astype(np.uint8)


def nm_case(params: ArrayParams, name: str, seed: int, n_slots: int, k: int, tokens: int,
            n_rows: int, empty: float = 0.3) -> Case:
    """A hand-written N:M program (LOAD slots, LOAD activations, MATMUL nm=N, STORE) on random
    slot codes, its result computed slot by slot from the encoding's definition: slot c of
    group q adds its trit times x[8q + (c + d) mod 8]. Independent of the compiler."""
    p = params
    rng = np.random.default_rng(seed)
    groups = k // NM_M
    codes = rng.integers(0, 16, (groups * n_slots, p.nm_rows)).astype(np.uint8)
    codes[(codes == NM_INVALID) | (rng.random(codes.shape) < empty)] = NM_EMPTY
    words = nm_words(p, codes)
    x = rng.integers(-128, 128, (tokens, k)).astype(np.int8)
    table = nm_slot_table()
    trit = np.array([e[0] if e else 0 for e in table], np.int64)[codes]
    col = (np.arange(len(codes))[:, None] // n_slots * NM_M
           + (np.arange(len(codes))[:, None] % n_slots
              + np.array([e[1] if e else 0 for e in table])[codes]) % NM_M)
    want = np.zeros((tokens, p.row_lanes), np.int64)
    for r in range(min(n_rows, p.nm_rows)):
        want[:, r] = x[:, col[:, r]].astype(np.int64) @ trit[:, r]
    lt = p.token_lanes
    g = -(-tokens // lt)
    xp = np.zeros((g * lt, k), np.int8)
    xp[:tokens] = x
    gw = -(-k * lt // p.port_bytes)
    x_words = np.zeros((g, gw * p.port_bytes), np.uint8)
    x_words[:, :k * lt] = xp.reshape(g, lt, k).transpose(0, 2, 1).reshape(g, -1).view(np.uint8)
    mem = MemoryImage(p.port_bytes)
    mem.add(0, words)
    x_base = len(words)
    mem.add(x_base, x_words.reshape(-1, p.port_bytes))
    y_base = x_base + g * gw
    out = p.out_words_per_token
    prog = [Load(buffer=Buffer.WEIGHT, encoding=WeightEncoding.NM, rows=1, length=len(words),
                 dram=0),
            Load(buffer=Buffer.ACT, rows=g, length=gw, dram=x_base, stride=gw, push_next=1),
            MatMul(nm=n_slots, k_len=k, tokens=tokens, n_rows=n_rows, x_stride=gw, pop_prev=1,
                   push_next=1),
            Store(tokens=tokens, words=out, dram=y_base, stride=out, pop_prev=1),
            Halt()]
    plan = _ResultRegion(n=n_rows, tokens=tokens, y_base=y_base, y_words=tokens * out)
    return Case(name, Job(prog, mem), plan, want[:, :n_rows].astype(np.int32), slots=codes)


def nm_cases(params: ArrayParams, seed: int, count: int) -> list:
    """Random N:M programs: every N, one to several groups, rows past the N:M lanes."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        n_slots = int(rng.integers(NM_MIN_N, NM_MAX_N + 1))
        k = NM_M * int(rng.integers(1, 6))
        t = int(rng.choice([1, 2, params.token_lanes + 1, params.max_tokens]))
        n_rows = int(rng.choice([1, params.nm_rows, params.row_lanes,
                                 rng.integers(1, params.row_lanes + 1)]))
        cases.append(nm_case(params, f"seed{seed}-{i}-nm{n_slots}k{k}t{t}r{n_rows}",
                             int(rng.integers(1 << 30)), n_slots, k, t, n_rows,
                             empty=float(rng.choice([0.0, 0.3, 1.0]))))
    return cases


def special_cases(params: ArrayParams) -> list:
    """Extremes: all-zero weights, -128 and 127 everywhere, the longest reduction."""
    rows = 5 * params.port_bytes
    cases = []
    k = 3 * params.port_bytes + 1
    z = np.zeros((rows + 1, k), np.int8)
    cases.append(projection_case(params, "zero-weights", z, np.full((3, k), 127, np.int8)))
    for v in (-128, 127):
        for wv in (-1, 1):
            w = np.full((rows, k), wv, np.int8)
            cases.append(projection_case(params, f"x{v}-w{wv}", w, np.full((2, k), v, np.int8)))
    # |acc| = 128 * max_k, the bound the accumulator width is derived from, reached exactly:
    # one tile of -1 weights and -128 activations accumulated until k = max_k.
    kt = min(params.wbuf_rows, params.abuf_rows * params.port_bytes // params.token_lanes,
             params.max_k)
    reps = params.max_k // kt
    rows = 5 * params.port_bytes
    mem = MemoryImage(params.port_bytes)
    mem.add(0, pack_trits(np.full(kt * rows, -1, np.int8), WeightEncoding.BASE3)
            .reshape(kt, params.port_bytes))
    xw = -(-kt * params.token_lanes // params.port_bytes)
    mem.add(kt, np.full((xw, params.port_bytes), 0x80, np.uint8))
    prog = [Load(buffer=Buffer.WEIGHT, rows=1, length=kt, dram=0),
            Load(buffer=Buffer.ACT, rows=1, length=xw, dram=kt, push_next=1)]
    prog += [MatMul(k_len=kt, tokens=1, n_rows=rows, accumulate=int(i > 0),
                    pop_prev=int(i == 0), push_next=int(i == reps - 1)) for i in range(reps)]
    y_base = kt + xw
    prog += [Store(tokens=1, words=params.out_words_per_token, dram=y_base, pop_prev=1), Halt()]
    plan = _ResultRegion(n=rows, tokens=1, y_base=y_base, y_words=params.out_words_per_token)
    cases.append(Case("kmax", Job(prog, mem), plan,
                      np.full((1, rows), 128 * reps * kt, np.int32)))
    cases.append(_overwrite_case(params))
    cases.append(_reload_case(params))
    return cases


def _reload_case(params: ArrayParams) -> Case:
    """A MATMUL that reads activations the LOAD just before it wrote, as early as it can: one
    word, reloaded in place between two MATMULs, the second accumulating onto the first (so it
    waits on nothing but the LOAD). An activation word written a cycle late would be read
    stale."""
    rng = np.random.default_rng(12)
    lt, rows = params.token_lanes, params.row_lanes
    k = params.port_bytes // lt
    w = rng.integers(-1, 2, (rows, k)).astype(np.int8)
    x = rng.integers(-128, 128, (2, lt, k)).astype(np.int8)
    mem = MemoryImage(params.port_bytes)
    mem.add(0, pack_trits(w.T.reshape(-1), WeightEncoding.BASE3).reshape(k, params.port_bytes))
    for i in range(2):
        mem.add(k + i, x[i].T.reshape(1, -1).view(np.uint8))
    words = params.out_words_per_token
    y_base = k + 2
    prog = [Load(buffer=Buffer.WEIGHT, rows=1, length=k, dram=0),
            Load(buffer=Buffer.ACT, rows=1, length=1, dram=k, push_next=1),
            MatMul(k_len=k, tokens=lt, n_rows=rows, pop_prev=1, push_prev=1),
            Load(buffer=Buffer.ACT, rows=1, length=1, dram=k + 1, pop_next=1, push_next=1),
            MatMul(k_len=k, tokens=lt, n_rows=rows, accumulate=1, pop_prev=1, push_next=1),
            Store(tokens=lt, words=words, dram=y_base, stride=words, pop_prev=1), Halt()]
    plan = _ResultRegion(n=rows, tokens=lt, y_base=y_base, y_words=lt * words)
    return Case("reload", Job(prog, mem), plan,
                ternary_matmul(x[0], w) + ternary_matmul(x[1], w))


def _overwrite_case(params: ArrayParams) -> Case:
    """Two MATMULs onto one accumulator group, back to back, the second not accumulating: the
    group holds the second's sums alone. Held lanes clear between the first's last add and the
    second's first; a clear a cycle early would let the first's last column into the sums."""
    rng = np.random.default_rng(11)
    lt, rows = params.token_lanes, params.row_lanes
    k = 2 * params.port_bytes + 3
    w = rng.integers(-1, 2, (2, rows, k)).astype(np.int8)
    w[:, :, -1] = 1                 # the first's last column adds to every lane
    x = rng.integers(-128, 128, (lt, k)).astype(np.int8)
    mem = MemoryImage(params.port_bytes)
    for i in range(2):
        mem.add(i * k, pack_trits(w[i].T.reshape(-1), WeightEncoding.BASE3)
                .reshape(k, params.port_bytes))
    xw = -(-k * lt // params.port_bytes)
    xb = np.zeros(xw * params.port_bytes, np.uint8)
    xb[:k * lt] = x.T.reshape(-1).view(np.uint8)
    mem.add(2 * k, xb.reshape(xw, params.port_bytes))
    words = params.out_words_per_token
    y_base = 2 * k + xw
    prog = [Load(buffer=Buffer.WEIGHT, rows=1, length=2 * k, dram=0),
            Load(buffer=Buffer.ACT, rows=1, length=xw, dram=2 * k, push_next=1),
            MatMul(k_len=k, tokens=lt, n_rows=rows, pop_prev=1),
            MatMul(wbuf=k, k_len=k, tokens=lt, n_rows=rows, push_next=1),
            Store(tokens=lt, words=words, dram=y_base, stride=words, pop_prev=1), Halt()]
    plan = _ResultRegion(n=rows, tokens=lt, y_base=y_base, y_words=lt * words)
    return Case("overwrite", Job(prog, mem), plan, ternary_matmul(x, w[1]))


def fuzz_job(params: ArrayParams, seed: int, length: int = 24) -> Job:
    """A random instruction stream: mostly in range, random dependency flags, then HALT.

    Such programs may race on buffers, deadlock or stop with an error; only timing, status,
    trace and the data-independent counters are compared.
    """
    p = params
    rng = np.random.default_rng(seed)
    mem = MemoryImage(p.port_bytes)
    words = 256
    trits = rng.integers(-1, 2, words * 5 * p.port_bytes).astype(np.int8)
    mem.add(0, pack_trits(trits, WeightEncoding.BASE3).reshape(words, p.port_bytes))
    if p.nm:    # N:M slot codes after the base-3 words
        codes = rng.integers(0, 16, (words // 2, p.nm_rows)).astype(np.uint8)
        codes[codes == NM_INVALID] = NM_EMPTY
        mem.add(words, nm_words(p, codes))
    prog = []
    for _ in range(length):
        kind = rng.choice(["load", "matmul", "store"], p=[0.45, 0.35, 0.2])
        flags = {f: int(rng.random() < 0.25) for f in ("pop_prev", "pop_next", "push_prev",
                                                       "push_next")}
        if kind == "load":
            flags["pop_prev"] = flags["push_prev"] = 0
            buf = Buffer(int(rng.integers(0, 2)))
            depth = p.wbuf_rows if buf == Buffer.WEIGHT else p.abuf_rows
            length_ = int(rng.integers(1, 6))
            enc, dram = 0, int(rng.integers(0, words - 12))
            if p.nm and buf == Buffer.WEIGHT and rng.random() < 0.4:
                enc, length_ = WeightEncoding.NM, 2 * int(rng.integers(1, 4))
                dram += words
            prog.append(Load(buffer=buf, encoding=enc, sram=int(rng.integers(0, depth - 12)),
                             rows=int(rng.integers(1, 3)), length=length_,
                             dram=dram, stride=length_, **flags))
        elif kind == "matmul":
            tokens = int(rng.integers(1, p.max_tokens + 1))
            nm, k_len = 0, int(rng.integers(1, 8))
            if p.nm and rng.random() < 0.4:
                nm = int(rng.integers(NM_MIN_N, NM_MAX_N + 1))
                k_len = NM_M * int(rng.integers(1, 3))
            prog.append(MatMul(accumulate=int(rng.integers(0, 2)), nm=nm,
                               wbuf=int(rng.integers(0, p.wbuf_rows - 8)),
                               abuf=int(rng.integers(0, p.abuf_rows // 2)),
                               acc=0, k_len=k_len, tokens=tokens,
                               n_rows=int(rng.integers(1, p.row_lanes + 1)),
                               x_stride=int(rng.integers(0, 3)), **flags))
        else:
            flags["pop_next"] = flags["push_next"] = 0
            prog.append(Store(acc=0, tokens=int(rng.integers(1, p.max_tokens + 1)),
                              words=int(rng.integers(1, p.out_words_per_token + 1)),
                              dram=1024 + int(rng.integers(0, 64)), stride=8, **flags))
    prog.append(Halt())
    return Job(prog, mem, max_cycles=20_000)


def error_cases(params: ArrayParams) -> list:
    """Malformed programs and data, each with the error code and pc it must stop with."""
    p = params
    ok = projection_case(p, "base", np.ones((3, 8), np.int8), np.ones((1, 8), np.int8))
    prog = list(ok.plan.program)
    mem = ok.job.memory
    cases = []

    def case(name, program, code, pc, memory=mem):
        cases.append(Case(name, Job(program, memory, max_cycles=50_000), error=code,
                          error_pc=pc))

    case("illegal-opcode", prog[:2] + [0xF] + prog[2:], ErrorCode.ILLEGAL_OPCODE, 2)
    case("zero-word", prog[:1] + [0], ErrorCode.ILLEGAL_OPCODE, 1)
    case("load-pops-prev", [Load(pop_prev=1, rows=1, length=1)] + prog,
         ErrorCode.BAD_DEPENDENCY, 0)
    case("store-pushes-next", [Store(push_next=1, tokens=1, words=1)] + prog,
         ErrorCode.BAD_DEPENDENCY, 0)
    case("halt-with-flags", [Halt(push_next=1)], ErrorCode.BAD_DEPENDENCY, 0)
    case("load-zero-rows", [Load(rows=0, length=1), Halt()], ErrorCode.BAD_FIELD, 0)
    case("matmul-too-many-rows", [MatMul(k_len=1, tokens=1, n_rows=p.row_lanes + 1), Halt()],
         ErrorCode.BAD_FIELD, 0)
    case("matmul-too-many-tokens", [MatMul(k_len=1, tokens=p.max_tokens + 1, n_rows=1), Halt()],
         ErrorCode.BAD_FIELD, 0)
    case("store-too-many-words", [Store(tokens=1, words=p.out_words_per_token + 1), Halt()],
         ErrorCode.BAD_FIELD, 0)
    case("load-past-buffer", [Load(buffer=Buffer.ACT, sram=p.abuf_rows - 2, rows=3, length=1),
                              Halt()], ErrorCode.BAD_ADDRESS, 0)
    case("load-first-row-past-buffer",
         [Load(buffer=Buffer.ACT, sram=p.abuf_rows - 1, rows=2, length=2), Halt()],
         ErrorCode.BAD_ADDRESS, 0)
    case("load-second-row-past-buffer",
         [Load(buffer=Buffer.WEIGHT, sram=p.wbuf_rows - 3, rows=2, length=2), Halt()],
         ErrorCode.BAD_ADDRESS, 0)
    case("matmul-past-wbuf", [MatMul(wbuf=p.wbuf_rows - 1, k_len=2, tokens=1, n_rows=1), Halt()],
         ErrorCode.BAD_ADDRESS, 0)
    # Two activation rows from the last one: the first group is refused in its first step.
    case("matmul-first-group-past-abuf",
         [MatMul(abuf=p.abuf_rows - 1, k_len=p.port_bytes // p.token_lanes + 1, tokens=1,
                 n_rows=1), Halt()], ErrorCode.BAD_ADDRESS, 0)
    if p.max_tokens > p.token_lanes:     # a second group exists to run past the end
        case("matmul-group-past-abuf",
             [MatMul(abuf=p.abuf_rows - 1, k_len=1, tokens=p.token_lanes + 1, n_rows=1,
                     x_stride=1), Halt()], ErrorCode.BAD_ADDRESS, 0)
        case("store-past-acc", [Store(acc=p.acc_groups - 1, tokens=p.token_lanes + 1, words=1),
                                Halt()], ErrorCode.BAD_ADDRESS, 0)
    case("matmul-past-acc", [MatMul(acc=p.acc_groups, k_len=1, tokens=1, n_rows=1), Halt()],
         ErrorCode.BAD_ADDRESS, 0)
    case("store-past-acc-start", [Store(acc=p.acc_groups, tokens=1, words=1), Halt()],
         ErrorCode.BAD_ADDRESS, 0)
    # The last accumulator group filled exactly is not past it (`rtl.compute.groups_past`):
    # the MATMUL and the STORE pass, and the word after them stops the run.
    case("acc-filled-exactly",
         [MatMul(acc=p.acc_groups - 1, k_len=1, tokens=p.token_lanes, n_rows=1),
          Store(acc=p.acc_groups - 1, tokens=p.token_lanes, words=1), 0xF],
         ErrorCode.ILLEGAL_OPCODE, 2)
    bad = MemoryImage(p.port_bytes)
    for b in (243, 255):
        word = np.zeros((4, p.port_bytes), np.uint8)
        word[2, 1] = b
        bad.add(0, word)
        case(f"base3-byte-{b}", [Load(rows=1, length=4), Halt()], ErrorCode.BAD_WEIGHT, 0, bad)
    # A run that stops while a MATMUL streams zero weights, so that counts of its last cycles
    # arrive after status left RUNNING (`rtl.top.COUNTERS_FINAL`): after the MATMUL, a LOAD
    # whose last word has an invalid byte, into buffer rows the MATMUL does not read.
    k, bad_len, bad_base = 32, 8, 1024
    w_zeros = np.zeros((3, k), np.int8)       # a zero in every row of nearly every column
    w_zeros[[0, 1, 2], [0, 1, 2]] = [1, -1, 1]
    zeros = projection_case(p, "zeros", w_zeros, np.ones((1, k), np.int8))
    late = MemoryImage(p.port_bytes)
    late.regions = dict(zeros.job.memory.regions)
    word = np.zeros((bad_len, p.port_bytes), np.uint8)
    word[-1, 0] = 255
    late.add(bad_base, word)
    assert p.wbuf_rows >= k + bad_len     # the MATMUL reads rows 0 .. k-1
    after = next(i for i, ins in enumerate(zeros.plan.program) if isinstance(ins, MatMul)) + 1
    case("bad-weight-mid-matmul",
         list(zeros.plan.program[:after])
         + [Load(rows=1, length=bad_len, dram=bad_base, sram=p.wbuf_rows - bad_len)]
         + list(zeros.plan.program[after:]),
         ErrorCode.BAD_WEIGHT, after, late)
    code3 = MemoryImage(p.port_bytes)
    word = np.full((2, p.port_bytes), 0b01010101, np.uint8)
    word[1, 0] = 0b01110101
    code3.add(0, word)
    case("code2-0b11", [Load(rows=1, length=2, encoding=WeightEncoding.CODE2), Halt()],
         ErrorCode.BAD_WEIGHT, 0, code3)
    nm = WeightEncoding.NM
    if p.nm:
        codes = np.full((2, p.nm_rows), NM_EMPTY, np.uint8)
        codes[1, 5] = NM_INVALID
        slots = MemoryImage(p.port_bytes)
        slots.add(0, nm_words(p, codes))
        case("nm-slot-0b1111", [Load(rows=1, length=4, encoding=nm), Halt()],
             ErrorCode.BAD_WEIGHT, 0, slots)
        case("nm-odd-length", [Load(rows=1, length=3, encoding=nm), Halt()],
             ErrorCode.BAD_FIELD, 0)
        case("nm-second-row-past-buffer",
             [Load(encoding=nm, sram=p.wbuf_rows - 3, rows=2, length=4), Halt()],
             ErrorCode.BAD_ADDRESS, 0)
        case("matmul-nm-1", [MatMul(nm=1, k_len=8, tokens=1, n_rows=1), Halt()],
             ErrorCode.BAD_FIELD, 0)
        case("matmul-nm-partial-group", [MatMul(nm=3, k_len=12, tokens=1, n_rows=1), Halt()],
             ErrorCode.BAD_FIELD, 0)
        # The slots run past the buffer: wbuf + (k_len / 8) * N rows.
        case("matmul-nm-past-wbuf", [MatMul(nm=5, wbuf=p.wbuf_rows - 9, k_len=16, tokens=1,
                                            n_rows=1), Halt()], ErrorCode.BAD_ADDRESS, 0)
    else:
        case("load-nm-not-built", [Load(rows=1, length=2, encoding=nm), Halt()],
             ErrorCode.BAD_FIELD, 0)
        case("matmul-nm-not-built", [MatMul(nm=2, k_len=8, tokens=1, n_rows=1), Halt()],
             ErrorCode.BAD_FIELD, 0)
    enc = next(f for f in FORMATS[Opcode.LOAD] if f.name == "encoding")
    reserved = Load(rows=1, length=1).encode() | (3 << enc.lsb)
    case("reserved-encoding", [reserved, Halt()], ErrorCode.BAD_FIELD, 0)
    case("token-overflow",
         [Load(rows=1, length=1, push_next=1) for _ in range(p.token_depth + 1)] + [Halt()],
         ErrorCode.TOKEN_OVERFLOW, p.token_depth)
    # The dispatcher waits at the HALT, or (no queues) holds the MATMUL itself.
    case("deadlock-pop-nothing", [MatMul(pop_prev=1, k_len=1, tokens=1, n_rows=1), Halt()],
         ErrorCode.DEADLOCK, 1 if p.queue_depth else 0)
    case("deadlock-queue-full",
         [Load(pop_next=1, rows=1, length=1) for _ in range(p.queue_depth + 1)] + [Halt()],
         ErrorCode.DEADLOCK, p.queue_depth)
    case("no-halt", [Load(rows=1, length=1)] * p.imem_depth, ErrorCode.NO_HALT, p.imem_depth - 1)
    return cases


def colliding_error_cases(params: ArrayParams) -> list:
    """Programs in which two errors of different priority fall in the same cycle; the one first
    in docs/architecture.md's order must be reported. Each is found by lengthening a run of
    filler LOADs (or STOREs) until, in the simulator, the dispatcher reaches an illegal word in
    the cycle the other error falls due."""
    p = params

    bad = MemoryImage(p.port_bytes)
    word = np.zeros((4, p.port_bytes), np.uint8)
    word[3, 0] = 243                        # an invalid base-3 byte in the last word
    bad.add(0, word)
    fillers = [Load(buffer=Buffer.ACT, rows=1, length=1), Store(tokens=1, words=1, dram=1 << 20)]
    heads = {
        "load-response-vs-dispatcher": [Load(rows=1, length=4)],
        "token-overflow-vs-dispatcher":
            [Load(buffer=Buffer.ACT, rows=1, length=1, push_next=1)] * (p.token_depth + 1),
    }
    cases = []
    for name, head in heads.items():
        for filler, n in ((f, n) for f in fillers for n in range(64)):
            job = Job(head + [filler] * n + [0xF], bad, max_cycles=50_000)
            r, due = Simulator(p).run_with_errors(job)
            last = [e for e in due if e.cycle == r.counters["CYCLES"] - 1]
            if len({e.priority for e in last}) >= 2:
                cases.append(Case(name, job, error=r.error, error_pc=r.error_pc,
                                  stale_accumulators=isinstance(filler, Store)))
                break
        else:
            raise AssertionError(f"{p.name}: no run of fillers makes {name} collide")
    return cases
