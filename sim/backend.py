"""What every backend (simulator, Verilator, Amaranth's simulator) takes and returns.

A `Job` is a program and the initial contents of external memory; a `RunResult` is what the
accelerator did with it: final status, the retire trace, the performance counters and every
word it wrote. Backends implement `run(jobs) -> results`; tests compare results across
backends field by field (`RunResult.mismatch`).
"""

from dataclasses import dataclass, field

import numpy as np

from rtl.isa import Counter, ErrorCode, Instr, Status, TraceRecord
from rtl.params import ArrayParams

__all__ = ["Job", "RunResult", "MemoryImage", "projection_job", "random_projection_job"]


@dataclass
class MemoryImage:
    """External memory as regions of whole words: {base word address: uint8 (words, P)}."""

    port_bytes: int
    regions: dict = field(default_factory=dict)

    def add(self, base: int, words: np.ndarray) -> None:
        words = np.ascontiguousarray(words, np.uint8).reshape(-1, self.port_bytes)
        self.regions[int(base)] = words

    def word_dict(self) -> dict:
        """{address: int} for every word (for small images and the cocotb memory model)."""
        out = {}
        for base, words in self.regions.items():
            ints = [int.from_bytes(w.tobytes(), "little") for w in words]
            out.update({base + i: v for i, v in enumerate(ints)})
        return out


@dataclass
class Job:
    """A program and the memory it runs against."""

    program: list
    memory: MemoryImage
    mode: str = "lockstep"          # or "random": seeded stalls and extra latency (results only)
    seed: int = 0
    max_cycles: int | None = None   # None: the backend's own bound

    def words(self) -> list:
        return [i.encode() if isinstance(i, Instr) else int(i) for i in self.program]


@dataclass
class RunResult:
    """What one run did."""

    status: Status
    error: ErrorCode
    error_pc: int
    counters: dict
    trace: list
    writes: list                     # [(word address, int)] in the order they happened
    port_bytes: int
    timeout: bool = False

    def region(self, base: int, words: int) -> np.ndarray:
        """The result words written to [base, base + words) as uint8 (words, P)."""
        out = np.zeros((words, self.port_bytes), np.uint8)
        for addr, value in self.writes:
            if base <= addr < base + words:
                out[addr - base] = np.frombuffer(value.to_bytes(self.port_bytes, "little"),
                                                 np.uint8)
        return out

    def mismatch(self, other: "RunResult", words: bool = True) -> str | None:
        """A one-line description of the first difference from `other`, or None. Without
        `words`, written words are compared by address only."""
        for name in ("status", "error", "error_pc", "timeout"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                return f"{name}: {a!r} != {b!r}"
        for c in Counter:
            a, b = self.counters[c.name], other.counters[c.name]
            if a != b:
                return f"counter {c.name}: {a} != {b}"
        for i, (a, b) in enumerate(zip(self.trace, other.trace)):
            if a != b:
                return f"trace record {i}: {a} != {b}"
        if len(self.trace) != len(other.trace):
            return f"trace length {len(self.trace)} != {len(other.trace)}"
        if words:
            if sorted(self.writes) != sorted(other.writes):
                return "written words differ"
        elif sorted(a for a, _ in self.writes) != sorted(a for a, _ in other.writes):
            return "written addresses differ"
        return None

    @classmethod
    def from_json(cls, d: dict, params: ArrayParams) -> "RunResult":
        return cls(status=Status(d["status"]), error=ErrorCode(d["error"]),
                   error_pc=d["error_pc"], counters=dict(d["counters"]),
                   trace=[TraceRecord.decode(w) for w in d["trace"]],
                   writes=[(a, int(v, 16)) for a, v in d["writes"]],
                   port_bytes=params.port_bytes, timeout=d.get("timeout", False))


def projection_job(params: ArrayParams, w_t: np.ndarray, x_q: np.ndarray,
                   encoding: int = 0, **plan_args) -> tuple:
    """Plan y = x_q . w_t^T and lay out its memory: (plan, Job). The one way tests, benchmarks
    and tools build a single-projection job."""
    from compiler.tiling import pack_activation_image, pack_weight_image, plan_projection
    plan = plan_projection(params, w_t.shape[0], w_t.shape[1], x_q.shape[0], encoding,
                           **plan_args)
    mem = MemoryImage(params.port_bytes)
    mem.add(plan.w_base, pack_weight_image(plan, w_t))
    mem.add(plan.x_base, pack_activation_image(plan, x_q))
    return plan, Job(list(plan.program), mem)


def random_projection_job(params: ArrayParams, n: int, k: int, tokens: int, seed: int = 0,
                          **plan_args) -> tuple:
    """A projection of random ternary weights and int8 activations: (plan, Job, (x_q, w_t))."""
    rng = np.random.default_rng(seed)
    w_t = rng.integers(-1, 2, (n, k)).astype(np.int8)
    x_q = rng.integers(-128, 128, (tokens, k)).astype(np.int8)
    plan, job = projection_job(params, w_t, x_q, **plan_args)
    return plan, job, (x_q, w_t)
