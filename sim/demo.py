"""`make sim`: the main job on a small built-in BitNet-shaped model.

Builds a deterministic demo checkpoint in the Hugging Face packed format under build/demo/,
lowers it with the compiler for the default scale point, then runs a prefill and a few decode
steps of every projection on the cycle-accurate simulator with every result checked bit for
bit against the golden numerics, and prints the counters.
"""

import json
import math
import sys
import time
from pathlib import Path

from compiler.artifact import Artifact, ArtifactError
from compiler.checkpoint import CheckpointError
from compiler.lower import LowerError, lower
from compiler.synth import make_checkpoint, projection_shapes
from rtl.cli import ArgumentParser, stdout_closed
from rtl.params import SCALE_POINTS

from .host import HostError
from .run import (
    RunError,
    make_backend,
    program_bound,
    run_artifact,
    summarize,
    too_many_tokens,
)

__all__ = ["DEMO_SHAPE", "main"]

#: Half of BitNet b1.58 2B4T's width with its head_dim (128), KV width (640, GQA 10/5) and
#: FFN ratio (2.7), 4 layers: every projection shape tiles the default array as 2B4T's do.
DEMO_SHAPE = dict(hidden_size=1280, intermediate_size=3456, num_layers=4, num_heads=10,
                  num_kv_heads=5, vocab_size=1024)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m sim.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build/demo"), help="working directory")
    ap.add_argument("--target", choices=list(SCALE_POINTS), default="default",
                    help="scale point (default: default)")
    ap.add_argument("--prompt-tokens", type=int, default=16,
                    help="prefill length, >= 1 (default 16)")
    ap.add_argument("--decode-steps", type=int, default=3, help="decode steps, >= 0 (default 3)")
    ap.add_argument("--clock-mhz", type=float, default=1000.0,
                    help="clock for the times (default 1000)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.prompt_tokens < 1:
        ap.error(f"--prompt-tokens must be >= 1, got {args.prompt_tokens}")
    if args.decode_steps < 0:
        ap.error(f"--decode-steps must be >= 0, got {args.decode_steps}")
    if not (math.isfinite(args.clock_mhz) and args.clock_mhz > 0):
        ap.error(f"--clock-mhz must be a finite number > 0, got {args.clock_mhz:g}")
    # The prefill runs every projection with all its tokens as one program: refuse a length
    # whose program cannot fit before anything is built.
    p = SCALE_POINTS[args.target]
    for name, (n, k) in projection_shapes(DEMO_SHAPE).items():
        need, exact = program_bound(p, n, k, args.prompt_tokens, p.batch_tokens)
        if need > p.imem_depth:
            ap.error("--prompt-tokens: "
                     + too_many_tokens(name, args.prompt_tokens, need, exact, p))
    try:
        return _demo(args)
    except BrokenPipeError:         # before OSError, of which it is one
        return stdout_closed()
    except (LowerError, ArtifactError, CheckpointError, HostError, RunError, ValueError,
            OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _demo(args) -> int:
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    t0 = time.monotonic()
    model = args.out / "model"
    if not (model / "model.safetensors").exists():
        say(f"building the demo checkpoint (HF packed format) in {model}")
        make_checkpoint(model, DEMO_SHAPE, packed=True, seed=0)
    artifact = args.out / f"artifact-{args.target}"
    say(f"lowering {model} -> {artifact}")
    summary = lower(model, artifact, args.target, progress=False)
    art = Artifact.load(artifact)
    be = make_backend("sim", art.params)

    phases = {}
    steps = [("prefill", args.prompt_tokens)] + [(f"decode {i + 1}", 1)
                                                for i in range(args.decode_steps)]
    for i, (phase, tokens) in enumerate(steps):
        say(f"{phase}: {tokens} token(s) through {len(art.layers)} projections")
        reports = run_artifact(art, tokens, be, seed=i, check=True)
        phases[phase] = summarize(reports, args.clock_mhz)

    exact = all(s["total"]["exact"] for s in phases.values())
    say("Amdahl split: the demo model through the host runtime (attention etc. in fp16)")
    from .amdahl import load_profiles, measured_ledger
    ledger = [r for r in measured_ledger(model, args.prompt_tokens, args.decode_steps,
                                         args.target, "sim", load_profiles(), args.clock_mhz)
              if r["profile"] != "measured"]
    out = {"model": str(model), "artifact": str(artifact), "target": art.params.name,
           "lanes": art.params.lanes, "bits_per_weight": summary["bits_per_weight"],
           "phases": {k: v["total"] for k, v in phases.items()}, "exact": exact,
           "amdahl": [{k: r[k] for k in ("phase", "profile", "F", "speedup", "ceiling")}
                      for r in ledger],
           "seconds": round(time.monotonic() - t0, 2)}
    if args.json:
        print(json.dumps(out, allow_nan=False))
    else:
        p = art.params
        print(f"\ndemo model: {DEMO_SHAPE['num_layers']} layers, hidden "
              f"{DEMO_SHAPE['hidden_size']}, FFN {DEMO_SHAPE['intermediate_size']}; "
              f"{summary['weights']:,} ternary weights at {summary['bits_per_weight']:.3f} "
              f"bits each")
        print(f"target {p.name}: {p.lanes} lanes ({p.row_lanes} rows x {p.token_lanes} tokens), "
              f"{p.port_bytes} B/cycle port, clock {args.clock_mhz:g} MHz\n")
        head = (f"{'phase':<10} {'tokens':>6} {'cycles':>9} {'time us':>9} {'lanes':>6} "
                f"{'read bw':>8} {'zero skip':>9} {'exact':>6}")
        print(head + "\n" + "-" * len(head))
        for (phase, tokens), s in zip(steps, phases.values()):
            t = s["total"]
            print(f"{phase:<10} {tokens:>6} {t['cycles']:>9,} {t['time_us']:>9.1f} "
                  f"{100 * t['lane_utilization']:>5.1f}% {100 * t['read_bandwidth']:>7.1f}% "
                  f"{100 * t['zero_skip']:>8.1f}% {'yes' if t['exact'] else 'NO':>6}")
        print("\nAmdahl split per step, host profiles of sim/profiles.json (nominal): F is the "
              "projections' share\nof all-host time, the speedup is all-host time over "
              "accelerator + host time, the ceiling 1/(1-F)")
        head = f"{'phase':<10} {'host profile':<12} {'F':>6} {'speedup':>8} {'ceiling':>8}"
        print(head + "\n" + "-" * len(head))
        for r in ledger:
            if r["phase"] in ("prefill", "decode 1"):
                print(f"{r['phase']:<10} {r['profile']:<12} {100 * r['F']:>5.1f}% "
                      f"{r['speedup']:>7.2f}x {r['ceiling']:>7.2f}x")
        print(f"\nevery projection bit-exact against the golden numerics: "
              f"{'yes' if exact else 'NO'} ({time.monotonic() - t0:.1f} s; make amdahl for the "
              f"full ledger)")
    sys.stdout.flush()
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
