"""Run a compiled artifact on the simulator (or the RTL under Verilator) and report.

    python -m sim.run ARTIFACT [--backend sim|verilator] [--tokens N] [--clock-mhz F] [--json]

Every projection runs as its own program with random int8 activations (seeded). Per layer and
in total it prints cycles, time at the clock, lane utilization, the read channel's achieved
bandwidth as a fraction of its peak, bits per weight streamed and the share of zero-weight
work skipped. With --check each projection's results are compared bit for bit with the golden
integer product.
"""

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.artifact import Artifact, ArtifactError, LayerEntry
from compiler.tiling import (
    pack_activation_image,
    plan_projection,
    unpack_results,
    unpack_weight_image,
)
from rtl.cli import ArgumentParser, stdout_closed
from rtl.isa import Counter, Status, WeightEncoding
from rtl.params import ArrayParams

from .backend import Job, MemoryImage
from .golden import ternary_matmul
from .machine import Simulator

__all__ = ["LayerReport", "run_artifact", "check_tokens", "program_bound", "main",
           "make_backend"]

DEFAULT_CLOCK_MHZ = 1000.0


@dataclass
class LayerReport:
    """What one projection run measured."""

    name: str
    n: int
    k: int
    tokens: int
    cycles: int
    busy_lane_cycles: int
    skipped: int
    bytes_read: int
    bytes_written: int
    weight_bytes: int
    lanes: int
    port_bytes: int
    exact: bool | None

    def metrics(self, clock_mhz: float) -> dict:
        c = max(self.cycles, 1)
        return {
            "name": self.name, "n": self.n, "k": self.k, "tokens": self.tokens,
            "cycles": self.cycles, "time_us": self.cycles / clock_mhz,
            "lane_utilization": self.busy_lane_cycles / (c * self.lanes),
            "read_bandwidth": self.bytes_read / (c * self.port_bytes),
            "weight_bandwidth": self.weight_bytes / (c * self.port_bytes),
            "bits_per_weight": 8 * self.weight_bytes / (self.n * self.k),
            "zero_skip": self.skipped / max(self.busy_lane_cycles, 1),
            "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
            "exact": self.exact,
        }


class RunError(Exception):
    """A run that did not finish with DONE."""


def make_backend(name: str, params):
    if name == "sim":
        return Simulator(params)
    if name == "verilator":
        from testbench.backend import VerilatorBackend
        return VerilatorBackend(params)
    raise ValueError(f"unknown backend {name!r}")


def program_bound(params: ArrayParams, n: int, k: int, tokens: int, token_batch: int,
                  encoding: WeightEncoding = WeightEncoding.BASE3, nm: int = 0) -> tuple:
    """(instructions, exact) of an (n x k) projection's program for `tokens` tokens.

    Cheap: it plans one token batch, never the whole program. Up to one batch the count is
    exact; past it every batch repeats each row tile's k-tiles (a weight LOAD and a MATMUL
    each, at least) and its STORE, and the program ends with HALT: a bound from below.
    """
    batch = min(tokens, token_batch)
    plan = plan_projection(params, n, k, batch, encoding, token_batch=batch, nm=nm)
    if tokens <= batch:
        return len(plan.program), True
    per_tile = 2 * math.ceil(k / plan.k_tile) + 1
    return math.ceil(tokens / batch) * plan.n_tiles * per_tile + 1, False


def check_tokens(art: Artifact, tokens: int, layers: list | None = None) -> None:
    """Raise RunError if a projection's program for `tokens` tokens cannot fit program memory,
    before anything is run: up to one token batch from the program itself (planned once, the
    run reuses it), past it from `program_bound` (nothing is planned in full)."""
    p = art.params
    for layer in art.layers if layers is None else layers:
        if tokens <= art.token_batch:
            need, exact = len(art.program(layer, tokens)[1]), True
        else:
            need, exact = program_bound(p, layer.n, layer.k, tokens, art.token_batch,
                                        art.encoding, layer.nm)
        if need > p.imem_depth:
            raise RunError(too_many_tokens(layer.name, tokens, need, exact, p))


def too_many_tokens(name: str, tokens: int, need: int, exact: bool, params: ArrayParams) -> str:
    """The one-line refusal of a program longer than `params`' program memory."""
    return (f"{name}: {tokens} token(s) need a program of {'' if exact else 'at least '}"
            f"{need} instructions; the program memory of target {params.name} holds "
            f"{params.imem_depth} (use fewer tokens)")


def layer_job(art: Artifact, plan, program: list, x_q: np.ndarray, weights: np.ndarray,
              w_base: int = 0) -> Job:
    """The job for one projection: `weights` (word image) at `w_base`, `x_q` packed at the
    plan's activation base."""
    mem = MemoryImage(art.params.port_bytes)
    mem.add(w_base, weights)
    mem.add(plan.x_base, pack_activation_image(plan, x_q))
    return Job(program, mem)


def golden_exact(art: Artifact, layer: LayerEntry, plan, x_q: np.ndarray, y: np.ndarray) -> bool:
    """Whether `y` equals the golden product of `x_q` and the projection's stored weights."""
    w_t = unpack_weight_image(plan, art.layer_weights(layer))
    return bool(np.array_equal(y, ternary_matmul(x_q, w_t)))


def run_layer(art: Artifact, layer: LayerEntry, x_q: np.ndarray, backend,
              check: bool = False) -> tuple:
    """Run one projection on `x_q` (tokens, k) int8; return (int32 results, LayerReport)."""
    p = art.params
    plan, program = art.program(layer, x_q.shape[0])
    if len(program) > p.imem_depth:
        raise RunError(too_many_tokens(layer.name, x_q.shape[0], len(program), True, p))
    result = backend.run([layer_job(art, plan, program, x_q, art.weights)])[0]
    if result.status != Status.DONE:
        raise RunError(f"{layer.name}: the accelerator stopped with {result.status.name} "
                       f"{result.error.name} at pc {result.error_pc}")
    y = unpack_results(plan, result.region(plan.y_base, plan.y_words))
    exact = golden_exact(art, layer, plan, x_q, y) if check else None
    ctr = result.counters
    rep = LayerReport(layer.name, layer.n, layer.k, x_q.shape[0], ctr[Counter.CYCLES.name],
                      ctr[Counter.BUSY_LANE_CYCLES.name], ctr[Counter.SKIPPED_ZERO.name],
                      ctr[Counter.BYTES_READ.name], ctr[Counter.BYTES_WRITTEN.name],
                      plan.weight_bytes, p.lanes, p.port_bytes, exact)
    return y, rep


def run_artifact(art: Artifact, tokens: int = 1, backend="sim", seed: int = 0,
                 check: bool = False, progress: bool = False) -> list:
    """Run every projection with random activations; return its LayerReports.

    `backend` is a name for `make_backend` or a backend already made (reused across calls,
    so the simulator's decoded weights stay cached).
    """
    if not art.layers:
        raise RunError(f"{art.path}: no projections to run")
    check_tokens(art, tokens)
    be = make_backend(backend, art.params) if isinstance(backend, str) else backend
    rng = np.random.default_rng(seed)
    reports = []
    t0 = time.monotonic()
    for i, layer in enumerate(art.layers):
        if progress:
            sys.stderr.write(f"\r{i + 1}/{len(art.layers)} {time.monotonic() - t0:5.1f}s "
                             f"{layer.name[:60]:<60}")
            sys.stderr.flush()
        x_q = rng.integers(-128, 128, (tokens, layer.k), dtype=np.int8)
        reports.append(run_layer(art, layer, x_q, be, check)[1])
    if progress:
        sys.stderr.write("\r" + " " * 80 + "\r")
    return reports


def summarize(reports: list, clock_mhz: float) -> dict:
    """Per-layer metrics and totals (totals weight each layer by its cycles)."""
    layers = [r.metrics(clock_mhz) for r in reports]
    tot = LayerReport("total", sum(r.n * r.k for r in reports), 1,
                      reports[0].tokens if reports else 0, sum(r.cycles for r in reports),
                      sum(r.busy_lane_cycles for r in reports), sum(r.skipped for r in reports),
                      sum(r.bytes_read for r in reports), sum(r.bytes_written for r in reports),
                      sum(r.weight_bytes for r in reports),
                      reports[0].lanes if reports else 1, reports[0].port_bytes if reports else 1,
                      None if any(r.exact is None for r in reports)
                      else all(r.exact for r in reports))
    return {"clock_mhz": clock_mhz, "layers": layers, "total": tot.metrics(clock_mhz)}


def format_table(summary: dict) -> str:
    head = (f"{'layer':<40} {'n x k':>12} {'cycles':>10} {'time us':>9} {'lanes':>6} "
            f"{'read bw':>7} {'bits/w':>6} {'skip':>5} {'exact':>5}")
    lines = [head, "-" * len(head)]
    for m in summary["layers"] + [summary["total"]]:
        shape = f"{m['n']}x{m['k']}" if m["name"] != "total" else ""
        exact = {None: "-", True: "yes", False: "NO"}[m["exact"]]
        lines.append(f"{m['name'][-40:]:<40} {shape:>12} {m['cycles']:>10,} "
                     f"{m['time_us']:>9.1f} {100 * m['lane_utilization']:>5.1f}% "
                     f"{100 * m['read_bandwidth']:>6.1f}% {m['bits_per_weight']:>6.3f} "
                     f"{100 * m['zero_skip']:>4.0f}% {exact:>5}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m sim.run", description=__doc__.split("\n")[0])
    ap.add_argument("artifact", type=Path, help="artifact directory from python -m compiler.lower")
    ap.add_argument("--backend", choices=["sim", "verilator"], default="sim",
                    help="cycle-accurate simulator (default) or the RTL under Verilator")
    ap.add_argument("--tokens", type=int, default=1, help="tokens per projection (default 1)")
    ap.add_argument("--clock-mhz", type=float, default=DEFAULT_CLOCK_MHZ,
                    help=f"clock for the time column (default {DEFAULT_CLOCK_MHZ:g})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random activations")
    ap.add_argument("--check", action="store_true",
                    help="compare every projection with the golden integer product")
    ap.add_argument("--layers", type=int, default=None, metavar="N",
                    help="run only the first N projections (N >= 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.tokens < 1:
        ap.error(f"--tokens must be >= 1, got {args.tokens}")
    if not (math.isfinite(args.clock_mhz) and args.clock_mhz > 0):
        ap.error(f"--clock-mhz must be a finite number > 0, got {args.clock_mhz:g}")
    if args.layers is not None and args.layers < 1:
        ap.error(f"--layers must be >= 1, got {args.layers}")
    try:
        art = Artifact.load(args.artifact)
        if args.layers is not None:
            art.layers = art.layers[:args.layers]
        with np.errstate(all="ignore"):
            reports = run_artifact(art, args.tokens, args.backend, args.seed, args.check,
                                   progress=sys.stderr.isatty() and not args.json)
    except (ArtifactError, RunError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    summary = summarize(reports, args.clock_mhz)
    summary.update(artifact=str(args.artifact), backend=args.backend,
                   target=art.params.name, encoding=art.encoding.name)
    try:
        print(json.dumps(summary, allow_nan=False) if args.json else format_table(summary))
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_closed()
    if args.check and not summary["total"]["exact"]:
        print("error: results differ from the golden numerics", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
