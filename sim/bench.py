"""Benchmarks (`make bench`): simulator speed, decode bandwidth, prefill utilization, compile.

    python -m sim.bench [--out build/bench] [--results docs/results.md] [--quick] [--json]

Every figure goes into docs/results.md between the markers of this benchmark, with the command
and the machine, and the plots into docs/img/. Ratios are measured in the same run.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from compiler.tiling import (
    unpack_results,
)
from rtl.cli import ArgumentParser
from rtl.isa import Status
from rtl.params import scale_point
from rtl.results import write_section
from sim.backend import random_projection_job
from sim.golden import ternary_matmul
from sim.machine import Simulator

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- sim.bench: begin -->", "<!-- sim.bench: end -->"

#: The BitNet b1.58 2B4T projection shapes (n x k), and the fused ones a runtime would issue.
SHAPES = {"q_proj / o_proj": (2560, 2560), "k_proj / v_proj": (640, 2560),
          "gate_proj / up_proj": (6912, 2560), "down_proj": (2560, 6912),
          "fused q+k+v": (3840, 2560), "fused gate+up": (13824, 2560)}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
            f"numpy {np.__version__}, {platform.system()} {platform.release()}")


def bench_shapes(tokens_list) -> list:
    """Decode bandwidth and prefill utilization at the default scale point, checked exact."""
    p = scale_point("default")
    sim = Simulator(p)
    rows = []
    for name, (n, k) in SHAPES.items():
        for tokens in tokens_list:
            plan, job, (x, w) = random_projection_job(p, n, k, tokens)
            r = sim.run_one(job)
            y = unpack_results(plan, r.region(plan.y_base, plan.y_words))
            cyc = r.counters["CYCLES"]
            rows.append({
                "shape": name, "n": n, "k": k, "tokens": tokens, "cycles": cyc,
                "weight_bandwidth": plan.weight_bytes / (cyc * p.port_bytes),
                "read_bandwidth": r.counters["BYTES_READ"] / (cyc * p.port_bytes),
                "lane_utilization": r.counters["BUSY_LANE_CYCLES"] / (cyc * p.lanes),
                "exact": r.status == Status.DONE and bool(np.array_equal(
                    y, ternary_matmul(x, w))),
            })
    return rows


def bench_compile(work: Path) -> dict:
    """Synthesize a 2B4T-shaped packed checkpoint, then lower it in a child process."""
    model, art = work / "2b4t", work / "2b4t-artifact"
    t0 = time.monotonic()
    reused = (model / "model.safetensors").exists()
    if not reused:
        from compiler.synth import make_checkpoint
        make_checkpoint(model, "2b4t", packed=True, seed=0)
    synth_s = None if reused else time.monotonic() - t0
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "compiler.lower", str(model), "-o", str(art),
                          "--json"], capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t0
    if out.returncode:
        raise SystemExit(f"error: lowering the 2B4T checkpoint failed: {out.stderr.strip()}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(out.stdout)
    return {"synth_seconds": synth_s, "lower_seconds": wall,
            "lower_peak_rss_mb": max(rss, before) / 1024, "artifact": str(art), **summary}


def bench_decode_token(artifact: Path) -> dict:
    """Every projection of a 2B4T-shaped artifact for one token, twice (cold, then warm)."""
    from compiler.artifact import Artifact
    from sim.run import make_backend, run_layer
    art = Artifact.load(artifact)
    be = make_backend("sim", art.params)
    rng = np.random.default_rng(0)
    times, cycles = [], 0
    for _ in range(2):
        t0 = time.monotonic()
        cycles = 0
        for layer in art.layers:
            x = rng.integers(-128, 128, (1, layer.k), dtype=np.int8)
            cycles += run_layer(art, layer, x, be)[1].cycles
        times.append(time.monotonic() - t0)
    return {"cold_seconds": times[0], "warm_seconds": times[1], "cycles": cycles,
            "projections": len(art.layers), "us_at_1ghz": cycles / 1000}


#: Programs for the simulator-against-Verilator comparison: (scale point, n, k, tokens). Each
#: must fit its point's program memory (`tiny`: 256 instructions).
VS_VERILATOR = {"tiny: decode 200x512, 1 token": ("tiny", 200, 512, 1),
                "tiny: prefill 20x512, 8 tokens": ("tiny", 20, 512, 8),
                "default: decode 640x1024, 1 token": ("default", 640, 1024, 1),
                "default: prefill 640x512, 4 tokens": ("default", 640, 512, 4)}


def bench_vs_verilator() -> list:
    """The same programs on the simulator and on the RTL under Verilator."""
    from testbench.backend import VerilatorBackend
    rows = []
    built = {}
    for name, (point, n, k, tokens) in VS_VERILATOR.items():
        p = scale_point(point)
        if point not in built:
            t0 = time.monotonic()
            built[point] = (VerilatorBackend(p), Simulator(p), time.monotonic() - t0)
        vb, sim, build_s = built[point]
        _, job, _ = random_projection_job(p, n, k, tokens)
        reps = 3
        t0 = time.monotonic()
        vres = vb.run([job] * reps)
        v_s = (time.monotonic() - t0) / reps
        t0 = time.monotonic()
        for _ in range(10 * reps):
            sres = sim.run_one(job)
        s_s = (time.monotonic() - t0) / (10 * reps)
        if vres[0].mismatch(sres) is not None:
            raise SystemExit(f"error: simulator and RTL disagree on {name}")
        cyc = sres.counters["CYCLES"]
        rows.append({"program": name, "cycles": cyc, "verilator_seconds": v_s, "sim_seconds": s_s,
                     "verilator_build_seconds": build_s, "ratio": v_s / s_s,
                     "verilator_cycles_per_s": cyc / v_s, "sim_cycles_per_s": cyc / s_s})
    return rows


def plot(rows: list, img: Path) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img.mkdir(parents=True, exist_ok=True)
    names = list(SHAPES)
    out = []
    fig, ax = plt.subplots(figsize=(8, 3.6))
    dec = [next(r for r in rows if r["shape"] == s and r["tokens"] == 1) for s in names]
    ax.bar(names, [100 * r["weight_bandwidth"] for r in dec], color="#4472c4")
    ax.axhline(95, color="k", ls="--", lw=1, label="goal 95%")
    ax.set_ylabel("weight bandwidth, % of port peak")
    ax.set_ylim(80, 100)
    ax.set_title("Decode (1 token), default scale point, base-3 weights")
    ax.legend(loc="lower right")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    path = img / "bench-decode-bandwidth.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    tokens = sorted({r["tokens"] for r in rows if r["tokens"] > 1})
    width = 0.8 / len(tokens)
    for i, t in enumerate(tokens):
        vals = [100 * next(r for r in rows if r["shape"] == s and r["tokens"] == t)
                ["lane_utilization"] for s in names]
        ax.bar(np.arange(len(names)) + i * width, vals, width, label=f"{t} tokens")
    ax.axhline(95, color="k", ls="--", lw=1)
    ax.set_xticks(np.arange(len(names)) + width * (len(tokens) - 1) / 2, names, rotation=20,
                  ha="right")
    ax.set_ylim(80, 100)
    ax.set_ylabel("lane utilization, %")
    ax.set_title("Prefill, default scale point")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = img / "bench-prefill-utilization.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    return out


def render(res: dict, command: str) -> str:
    L = [BEGIN, "", "## Simulator, compiler and schedule benchmarks", "",
         f"Produced by `{command}` on {res['date']}.", "", f"Machine: {res['machine']}.", ""]
    if "compile" in res:
        c = res["compile"]
        synth = ("reused from an earlier run" if c["synth_seconds"] is None
                 else f"{c['synth_seconds']:.1f} s")
        L += ["### Compiling a 2B4T-shaped checkpoint", "",
              "Synthetic weights of the exact shapes (30 layers, 2560/6912, 20/5 heads) in the HF "
              "packed format, lowered for the default scale point with base-3 weights.", "",
              "| figure | measured | goal |", "|---|---|---|",
              f"| `compiler.lower` wall time | {c['lower_seconds']:.1f} s | <= 60 s |",
              f"| peak RSS of `compiler.lower` | {c['lower_peak_rss_mb']:.0f} MB | <= 2048 MB |",
              f"| weights lowered | {c['weights']:,} in {c['layers']} projections | |",
              f"| weight image | {c['weight_bytes']:,} bytes, {c['bits_per_weight']:.4f} "
              f"bits/weight (5 trits/byte is 1.6; the rest is row padding of 6912-row tiles) | |",
              f"| instructions | {c['instructions']:,} | |",
              f"| writing the synthetic checkpoint (not part of the goal) | {synth} | |", ""]
    if "decode_token" in res:
        d = res["decode_token"]
        L += ["### Simulator speed: one decode token of a 2B4T-shaped model", "",
              f"All {d['projections']} projections, one token each, on the cycle-accurate "
              f"simulator ({d['cycles']:,} simulated cycles, {d['us_at_1ghz']:.0f} us at 1 GHz).",
              "", "| run | wall time | goal |", "|---|---|---|",
              f"| first token (weights decoded from the artifact) | {d['cold_seconds']:.1f} s "
              f"| <= 10 s |",
              f"| next tokens (decoded weight tiles cached) | {d['warm_seconds']:.1f} s "
              f"| <= 10 s |", ""]
    if "verilator" in res:
        L += ["### Simulator against Verilator on the same programs", "",
              "Projections at the tiny and the default scale points; identical traces, counters "
              "and outputs on both backends. Verilator runs under cocotb with the testbench "
              "memory model in Python (the lockstep setup), one process for all repetitions; "
              "its one-time build is excluded (the 1280-lane default design takes about ten "
              "minutes to build). The simulator's cost grows with instructions, Verilator's "
              "with cycles and design size, so the ratio grows with the work per instruction.",
              "", "| program | cycles | Verilator per run | simulator per run | ratio "
              "(goal >= 100x) |", "|---|---|---|---|---|"]
        for v in res["verilator"]:
            L.append(f"| {v['program']} | {v['cycles']:,} | {1000 * v['verilator_seconds']:.0f} "
                     f"ms | {1000 * v['sim_seconds']:.2f} ms | **{v['ratio']:.0f}x** |")
        L.append("")
    rows = res["shapes"]
    L += ["### Decode bandwidth and prefill utilization, default scale point", "",
          "1280 lanes (640 rows x 2 tokens), 128 B/cycle port, read latency 32 cycles, base-3 "
          "weights, random ternary weights and int8 activations; every result checked "
          "bit-exact against the golden product. Weight bandwidth = weight bytes / (cycles x "
          "port bytes); lane utilization = busy lane-cycles / (cycles x lanes).", "",
          "| shape | n x k | tokens | cycles | weight bandwidth | lane utilization | exact |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['shape']} | {r['n']}x{r['k']} | {r['tokens']} | {r['cycles']:,} | "
                 f"{100 * r['weight_bandwidth']:.1f}% | {100 * r['lane_utilization']:.1f}% | "
                 f"{'yes' if r['exact'] else 'NO'} |")
    L += ["", "Goals: decode >= 95% of the port's peak; prefill of 64 tokens or more >= 95% "
          "lane utilization.", "",
          "![decode bandwidth](img/bench-decode-bandwidth.png)", "",
          "![prefill utilization](img/bench-prefill-utilization.png)", "", END]
    return "\n".join(L) + "\n"


def write_results(path: Path, section: str) -> None:
    write_section(path, BEGIN, END, section)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m sim.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench", help="work directory")
    ap.add_argument("--results", type=Path, default=None,
                    help="update this results file (e.g. docs/results.md)")
    ap.add_argument("--quick", action="store_true",
                    help="skip the 2B4T compile and decode-token runs and Verilator")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args(argv)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    say("decode and prefill on the 2B4T shapes ...")
    res["shapes"] = bench_shapes([1, 64, 128])
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        say("synthesizing and lowering a 2B4T-shaped checkpoint ...")
        res["compile"] = bench_compile(args.out)
        say("one decode token of the 2B4T-shaped model, cold and warm ...")
        res["decode_token"] = bench_decode_token(Path(res["compile"]["artifact"]))
        say("simulator against Verilator ...")
        res["verilator"] = bench_vs_verilator()
    if args.results:
        img = args.results.parent / "img"
        for path in plot(res["shapes"], img):
            say(f"wrote {path}")
        write_results(args.results, render(res, "make bench"))
        say(f"wrote {args.results}")
    if args.json:
        print(json.dumps(res))
    else:
        for r in res["shapes"]:
            print(f"{r['shape']:<22} {r['n']:>6}x{r['k']:<5} tokens {r['tokens']:>3}: "
                  f"weight bw {100 * r['weight_bandwidth']:5.1f}%  lanes "
                  f"{100 * r['lane_utilization']:5.1f}%  exact {r['exact']}")
        for v in res.get("verilator", []):
            print(f"{v['program']}: simulator {v['ratio']:.0f}x faster than Verilator")
        for key in ("compile", "decode_token"):
            if key in res:
                print(key, json.dumps({k: v for k, v in res[key].items()
                                       if isinstance(v, (int, float))}))
    return 0 if all(r["exact"] for r in res["shapes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
