"""The Amdahl ledger: how much of a BitNet b1.58 model the ternary accelerator speeds up.

    python -m sim.amdahl [--out build/amdahl] [--profiles sim/profiles.json] [--quick]
        [--scheduler ADDRESS | --workers N] [--model DIR] [--docs] [--json]

For prefill and for each decode step it accounts time, bytes moved and operations of four parts:
(a) the ternary projections, on the accelerator (simulated cycles at --clock-mhz); (b) attention
in fp16 on the host; (c) the LM head on the host; (d) norms, activation quantization and the
rest on the host. Host time is modeled from named host profiles (`sim/profiles.json`, nominal
peak fp16 FLOP/s, int8 op/s and memory bandwidth, a roofline per part) and, for a real run
(--model, or the built-in synthetic demo model), also measured with time.perf_counter in
`sim.host.HostModel`. It reports F (the accelerated share of the all-host baseline's time),
the achieved speedup over that baseline (in which the projections also run on the host), and
the Amdahl ceiling 1 / (1 - F); plus the analytic MAC share of REFERENCE.md section 5.

The sweep covers context 128 to 16k and several model shapes, with and without the LM head.
Accelerator time of a projection is the simulator's cycle count for that (n, k, tokens) at the
target scale point, run once per distinct shape; those runs go through Dask (a local cluster
of --workers processes by default, or --scheduler ADDRESS). Outputs: CSV, JSON and PNG plots
in --out; with --docs the plots also go to docs/img/amdahl-*.png and the tables into
docs/amdahl.md between its markers.
"""

import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rtl.cli import ArgumentParser
from rtl.params import SCALE_POINTS, scale_point

__all__ = ["SHAPES", "ModelShape", "mac_share", "context_at_half", "load_profiles",
           "projection_shapes", "simulate_cycles", "cycle_table", "step_ledger", "sweep",
           "measured_ledger", "main", "AmdahlError"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILES = Path(__file__).resolve().parent / "profiles.json"
DOCS = ROOT / "docs" / "amdahl.md"
DOCS_IMG = ROOT / "docs" / "img"
BEGIN, END = "<!-- sim.amdahl: begin -->", "<!-- sim.amdahl: end -->"
CONTEXTS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_CONTEXTS = (128, 1024, 16384)
QUICK_SHAPES = ("bitnet-2b4t", "gpt2-small")
PHASES = ("decode", "prefill")
PARTS = ("projections", "attention", "lm_head", "other")
DEFAULT_CLOCK_MHZ = 1000.0
#: Bytes per KV-cache and attention value on the host (fp16).
FP16_BYTES = 2
#: Bits per weight of the all-host baseline's weight stream (2-bit codes, as bitnet.cpp I2_S).
HOST_BITS_PER_WEIGHT = 2.0


class AmdahlError(Exception):
    """Bad input (one line)."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions the ledger needs. `ffn_mats` is k of REFERENCE.md 5: 3 gated, 2 plain."""

    name: str
    d: int
    d_ff: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    ffn_mats: int = 3
    head_bytes: int = 2          # bytes per LM-head weight (bf16 / fp16)
    note: str = ""

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    @property
    def d_kv(self) -> int:
        return self.kv_heads * self.head_dim


SHAPES = {s.name: s for s in (
    ModelShape("bitnet-2b4t", 2560, 6912, 30, 20, 5, 128256,
               note="REFERENCE.md section 2 (GQA 20/5, tied bf16 LM head)"),
    ModelShape("bitnet-700m", 1536, 4096, 24, 16, 16, 32000,
               note="assumed: LLaMA-style MHA, LLaMA vocabulary (1bitLLM bitnet_b1_58-large)"),
    ModelShape("bitnet-1.3b", 2048, 5460, 24, 32, 32, 32000,
               note="assumed: LLaMA-style MHA, LLaMA vocabulary (bitnet_b1_58-xl)"),
    ModelShape("bitnet-3b", 3200, 8640, 26, 32, 32, 32000,
               note="assumed: LLaMA-style MHA, LLaMA vocabulary (bitnet_b1_58-3B)"),
    ModelShape("llama-7b", 4096, 11008, 32, 32, 32, 32000,
               note="LLaMA-7B-shaped, MHA, gated FFN, ternary projections"),
    ModelShape("gpt2-small", 768, 3072, 12, 12, 12, 50257, ffn_mats=2,
               note="GPT-2-small-shaped, MHA, plain MLP (k = 2), ternary projections"),
)}


# -- REFERENCE.md section 5: the analytic MAC share -----------------------------------------------

def projection_macs(s: ModelShape) -> int:
    """P of REFERENCE.md 5: projection MACs per token per layer."""
    return s.d * s.d + 2 * s.d * s.d_kv + s.d * s.d + s.ffn_mats * s.d * s.d_ff


def mac_share(s: ModelShape, n: int, lm_head: bool = False) -> float:
    """F_MAC(n) = P / (P + 2 n d) per layer; with the LM head, vocab * d MACs per token join
    the unaccelerated side (summed over layers)."""
    p = s.layers * projection_macs(s)
    rest = s.layers * 2 * n * s.d + (s.vocab * s.d if lm_head else 0)
    return p / (p + rest)


def context_at_half(s: ModelShape) -> float:
    """The context at which F_MAC = 50% (no LM head): P / (2 d)."""
    return projection_macs(s) / (2 * s.d)


# -- host profiles --------------------------------------------------------------------------------

_PROFILE_KEYS = ("peak_fp16_flops", "peak_int8_ops", "mem_bw_bytes_per_s")


def load_profiles(path: Path = DEFAULT_PROFILES) -> dict:
    """{name: {peak_fp16_flops, peak_int8_ops, mem_bw_bytes_per_s, description}}, checked."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise AmdahlError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AmdahlError(f"{path}: cannot be read as JSON ({e})") from None
    profiles = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(profiles, dict) or not profiles:
        raise AmdahlError(f"{path}: needs a non-empty object 'profiles'")
    for name, p in profiles.items():
        if not isinstance(p, dict):
            raise AmdahlError(f"{path}: profile {name!r} is not an object")
        for key in _PROFILE_KEYS:
            v = p.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or not math.isfinite(v):
                raise AmdahlError(f"{path}: profile {name!r}: {key} must be a positive number, "
                                  f"got {v!r}")
    return profiles


# -- the accelerator's cycle model ----------------------------------------------------------------

def projection_shapes(s: ModelShape) -> list[tuple[str, int, int]]:
    """(kind, n, k) of each projection of one layer (REFERENCE.md 5's P)."""
    out = [("q_proj", s.d, s.d), ("k_proj", s.d_kv, s.d), ("v_proj", s.d_kv, s.d),
           ("o_proj", s.d, s.d)]
    if s.ffn_mats == 3:
        out.append(("gate_proj", s.d_ff, s.d))
    return out + [("up_proj", s.d_ff, s.d), ("down_proj", s.d, s.d_ff)]


def token_batch(target: str) -> int:
    """Tokens per accelerator run, as compiler.lower stores programs (half the accumulators)."""
    return scale_point(target).batch_tokens


def simulate_cycles(target: str, n: int, k: int, tokens: int) -> dict:
    """Run one (n, k, tokens) projection on the simulator; its cycles and weight bytes."""
    from sim.backend import random_projection_job
    from sim.machine import Simulator

    params = scale_point(target)
    plan, job, _ = random_projection_job(params, n, k, tokens)
    r = Simulator(params, cache_bytes=0).run_one(job)
    if r.status.name != "DONE":
        raise AmdahlError(f"simulator stopped with {r.status.name} on {n}x{k}, {tokens} tokens")
    return {"cycles": int(r.counters["CYCLES"]), "weight_bytes": int(plan.weight_bytes),
            "bytes_read": int(r.counters["BYTES_READ"]),
            "bytes_written": int(r.counters["BYTES_WRITTEN"])}


def _key(n: int, k: int, t: int) -> str:
    return f"{n}x{k}x{t}"


def cycle_table(shapes: list[ModelShape], target: str, client=None, cache: Path | None = None,
                progress: bool = False) -> dict:
    """{"NxKxT": simulate_cycles(...)} for every projection shape at 1 token and one batch.

    Runs missing shapes through the Dask `client` (in-process when None); `cache` is a JSON
    file of earlier results for this target, read and updated.
    """
    batch = token_batch(target)
    want = sorted({(n, k, t) for s in shapes for _, n, k in projection_shapes(s)
                   for t in (1, batch)}, key=lambda x: -x[0] * x[1] * x[2])
    table: dict = {}
    if cache is not None and cache.is_file():
        try:
            doc = json.loads(cache.read_text())
            if doc.get("target") == asdict_params(target):
                table = doc["cycles"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            table = {}
    todo = [w for w in want if _key(*w) not in table]
    t0 = time.monotonic()
    if todo and client is not None:
        from dask.distributed import as_completed

        futures = {client.submit(simulate_cycles, target, *w, pure=True): w for w in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            table[_key(*futures[fut])] = fut.result()
            _progress(progress, i, len(todo), t0)
    else:
        for i, w in enumerate(todo, 1):
            table[_key(*w)] = simulate_cycles(target, *w)
            _progress(progress, i, len(todo), t0)
    if progress and todo:
        sys.stderr.write("\n")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"target": asdict_params(target), "cycles": table},
                                    indent=1) + "\n")
    return table


def asdict_params(target: str) -> dict:
    from compiler.artifact import params_to_json
    return params_to_json(scale_point(target))


def _progress(enabled: bool, i: int, n: int, t0: float) -> None:
    if enabled:
        bar = "#" * (30 * i // n) + "-" * (30 - 30 * i // n)
        sys.stderr.write(f"\rsimulating projection shapes [{bar}] {i}/{n} "
                         f"{time.monotonic() - t0:5.1f}s")
        sys.stderr.flush()


def projection_cycles(table: dict, n: int, k: int, tokens: int, batch: int) -> dict:
    """Cycles of `tokens` tokens: whole batches plus one batch of the rest (tokens % batch is
    looked up only when it is 1, else scaled from a full batch: an upper bound)."""
    full, rest = divmod(tokens, batch)
    b, one = table[_key(n, k, batch)], table[_key(n, k, 1)]
    out = {key: full * b[key] for key in b}
    if rest == 1:
        out = {key: out[key] + one[key] for key in out}
    elif rest:
        out = {key: out[key] + b[key] for key in out}
    return out


# -- one step of the ledger -----------------------------------------------------------------------

def _roofline(ops: float, peak: float, nbytes: float, bw: float) -> float:
    return max(ops / peak, nbytes / bw)


def step_counts(s: ModelShape, phase: str, context: int, lm_head: bool) -> dict:
    """Analytic operations and bytes of one step. decode: one token at context `context`
    (it attends `context` keys); prefill: `context` tokens from an empty cache, causal
    masking exploited, the LM head for the last position only (as inference runtimes do)."""
    L, d, dkv, ff = s.layers, s.d, s.d_kv, s.d_ff
    if phase == "decode":
        tokens, attended, kv_len = 1, context, context
    elif phase == "prefill":
        tokens, attended, kv_len = context, context * (context + 1) // 2, context
    else:
        raise AmdahlError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    weights = L * projection_macs(s)
    macs = tokens * weights
    attn_macs = L * 2 * d * attended
    head_tokens = 1 if lm_head else 0
    # (d): 4 RMSNorms, per-token quantization of 7 projection inputs, dequantization of their
    # outputs, RoPE, the FFN activation and gating, 2 residual adds (FLOPs per element).
    gated = 3 * ff if s.ffn_mats == 3 else ff
    elems = (3 * d + ff) + (6 * d + ff) + (3 * d + 2 * dkv + (s.ffn_mats - 1) * ff) + \
        (d + dkv) + ff + 2 * d
    other_ops = 4 * (3 * d + ff) + 3 * (6 * d + ff) + 2 * (3 * d + 2 * dkv + 2 * ff) + \
        3 * (d + dkv) + gated + 2 * d
    return {
        "tokens": tokens,
        "projections": {"ops": 2 * macs, "macs": macs,
                        "host_bytes": math.ceil(weights * HOST_BITS_PER_WEIGHT / 8)
                        + L * tokens * 5 * (4 * d + ff)},
        "attention": {"ops": 2 * attn_macs + L * 5 * s.heads * attended, "macs": attn_macs,
                      "bytes": L * FP16_BYTES * (2 * dkv * kv_len + 2 * d * tokens)},
        "lm_head": {"ops": 2 * head_tokens * s.vocab * d, "macs": head_tokens * s.vocab * d,
                    "bytes": head_tokens and (s.head_bytes * s.vocab * d + 4 * s.vocab)},
        "other": {"ops": L * tokens * other_ops, "macs": 0,
                  "bytes": L * tokens * 8 * elems},
    }


def step_ledger(s: ModelShape, phase: str, context: int, lm_head: bool, profile: dict,
                accel: dict, clock_mhz: float) -> dict:
    """Times of one step under a host profile, with `accel` = the projections' summed cycles
    and bytes on the accelerator; F, the achieved speedup and the ceiling."""
    c = step_counts(s, phase, context, lm_head)
    f16, i8, bw = (profile["peak_fp16_flops"], profile["peak_int8_ops"],
                   profile["mem_bw_bytes_per_s"])
    host = {
        "projections": _roofline(c["projections"]["ops"], i8, c["projections"]["host_bytes"],
                                 bw),
        "attention": _roofline(c["attention"]["ops"], f16, c["attention"]["bytes"], bw),
        "lm_head": _roofline(c["lm_head"]["ops"], f16, c["lm_head"]["bytes"], bw),
        "other": _roofline(c["other"]["ops"], f16, c["other"]["bytes"], bw),
    }
    t_acc = accel["cycles"] / (clock_mhz * 1e6)
    rest = host["attention"] + host["lm_head"] + host["other"]
    baseline = host["projections"] + rest
    accelerated = t_acc + rest
    f = host["projections"] / baseline
    macs_rest = c["attention"]["macs"] + c["lm_head"]["macs"]
    return {
        "model": s.name, "phase": phase, "context": context, "tokens": c["tokens"],
        "lm_head": lm_head,
        "accel_s": t_acc, "accel_cycles": accel["cycles"], "accel_bytes": accel["bytes_read"]
        + accel["bytes_written"],
        **{f"host_{p}_s": host[p] for p in PARTS},
        **{f"{p}_ops": c[p]["ops"] for p in PARTS},
        "projections_host_bytes": c["projections"]["host_bytes"],
        **{f"{p}_bytes": c[p]["bytes"] for p in ("attention", "lm_head", "other")},
        "baseline_s": baseline, "accelerated_s": accelerated,
        "F": f, "S_partial": host["projections"] / t_acc, "speedup": baseline / accelerated,
        "ceiling": 1 / (1 - f),
        "F_mac": c["projections"]["macs"] / (c["projections"]["macs"] + macs_rest),
    }


def sweep(shapes: list[ModelShape], contexts, profiles: dict, table: dict, target: str,
          clock_mhz: float) -> list[dict]:
    """Every (shape, phase, context, with/without LM head, profile) point."""
    batch = token_batch(target)
    rows = []
    for s in shapes:
        for phase in PHASES:
            for n in contexts:
                tokens = 1 if phase == "decode" else n
                acc = {"cycles": 0, "bytes_read": 0, "bytes_written": 0}
                for _, pn, pk in projection_shapes(s):
                    c = projection_cycles(table, pn, pk, tokens, batch)
                    for key in acc:
                        acc[key] += s.layers * c[key]
                for head in (False, True):
                    for pname, prof in profiles.items():
                        row = step_ledger(s, phase, n, head, prof, acc, clock_mhz)
                        rows.append({"profile": pname, **row})
    return rows


# -- a measured run -------------------------------------------------------------------------------

def measured_ledger(model_dir: Path, prompt_len: int, decode_steps: int, target: str,
                    backend: str, profiles: dict, clock_mhz: float) -> list[dict]:
    """Run `model_dir` through `sim.host.HostModel`: per step, measured and modeled times.

    The accelerated system is `backend` (projections at `clock_mhz`); its measured all-host
    baseline runs the same prompt with the projections on the host (the golden numpy path,
    ``ternary_matmul`` in int64: a slow host kernel, so the measured F is an upper bound).
    """
    from sim.host import HostModel

    host = HostModel(model_dir, backend, target)
    vocab = host.cfg.vocab_size
    prompt = [(7 * i + 1) % vocab for i in range(prompt_len)]
    ref = host if backend == "golden" else HostModel(model_dir, "golden")
    for model in {id(host): host, id(ref): ref}.values():
        model.generate(prompt, 2)     # warm up: caches, BLAS threads; the ledger restarts
        model.generate(prompt, decode_steps + 1)
    weights = sum(p.n * p.k for p in host.ckpt.projections())
    rows = []
    for step, gstep in zip(host.ledger, ref.ledger):
        parts = step.parts
        t_acc = (parts["projections"].cycles or 0) / (clock_mhz * 1e6)
        base = {"phase": step.phase, "tokens": step.tokens, "past": step.past,
                "accel_cycles": parts["projections"].cycles, "accel_s": t_acc,
                **{f"{p}_ops": parts[p].ops for p in PARTS},
                **{f"{p}_bytes": parts[p].bytes for p in PARTS},
                **{f"measured_{p}_s": parts[p].seconds for p in PARTS if p != "projections"},
                "measured_host_projections_s": gstep.parts["projections"].seconds}
        variants = {"measured": (gstep.parts["projections"].seconds,
                                 sum(parts[p].seconds for p in ("attention", "lm_head", "other")))}
        for pname, prof in profiles.items():
            f16, i8, bw = (prof["peak_fp16_flops"], prof["peak_int8_ops"],
                           prof["mem_bw_bytes_per_s"])
            host_proj = _roofline(2 * parts["projections"].ops, i8,
                                  weights * HOST_BITS_PER_WEIGHT / 8, bw)
            rest = sum(_roofline(parts[p].ops, f16, parts[p].bytes, bw)
                       for p in ("attention", "lm_head", "other"))
            variants[pname] = (host_proj, rest)
        for pname, (host_proj, rest) in variants.items():
            f = host_proj / (host_proj + rest)
            rows.append({**base, "profile": pname, "host_projections_s": host_proj,
                         "host_rest_s": rest, "accelerated_s": t_acc + rest, "F": f,
                         "speedup": (host_proj + rest) / (t_acc + rest),
                         "ceiling": 1 / (1 - f)})
    return rows


# -- outputs --------------------------------------------------------------------------------------

def write_csv(path: Path, rows: list[dict]) -> None:
    keys: list = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _pick(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def plot(rows: list[dict], shapes: list[ModelShape], profiles: dict, dirs: list[Path],
         prefix: str = "amdahl-") -> list[str]:
    """The figures; each is written to every directory of `dirs`. Returns the file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    names = []

    def save(fig, name):
        fig.tight_layout()
        for d in dirs:
            fig.savefig(d / f"{prefix}{name}.png", dpi=110)
        plt.close(fig)
        names.append(f"{prefix}{name}.png")

    ctx = sorted({r["context"] for r in rows})
    first = next(iter(profiles))
    # 1. the analytic MAC share of every shape (section 5 convention, decode)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, s in enumerate(shapes):
        for head, ls in ((False, "-"), (True, ":")):
            rs = _pick(rows, model=s.name, phase="decode", lm_head=head, profile=first)
            ax.plot(ctx, [100 * r["F_mac"] for r in rs], ls, marker="o", ms=3, color=f"C{i}",
                    label=f"{s.name}{' + LM head' if head else ''}")
    ax.set_xscale("log", base=2)
    ax.axhline(50, color="k", lw=0.6)
    ax.set_xlabel("context length n")
    ax.set_ylabel("F_MAC, % of MACs on the accelerator")
    ax.set_title("Accelerated MAC share per decode token (REFERENCE.md 5)")
    ax.legend(fontsize=7, ncol=2)
    save(fig, "mac-share")
    # 2. 2B4T (or the first shape): time-based F, speedup and ceiling per profile
    main_shape = shapes[0].name
    for phase in PHASES:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for i, pname in enumerate(profiles):
            for head, ls in ((False, "-"), (True, ":")):
                rs = _pick(rows, model=main_shape, phase=phase, lm_head=head, profile=pname)
                lab = f"{pname}{' + LM head' if head else ''}"
                axes[0].plot(ctx, [100 * r["F"] for r in rs], ls, marker="o", ms=3,
                             color=f"C{i}", label=lab)
                axes[1].plot(ctx, [r["speedup"] for r in rs], ls, marker="o", ms=3,
                             color=f"C{i}", label=lab)
                axes[1].plot(ctx, [r["ceiling"] for r in rs], ls, color=f"C{i}", alpha=0.3)
        axes[0].set_ylabel("F, % of all-host time in projections")
        axes[1].set_ylabel("speedup over all-host (faint: ceiling 1/(1-F))")
        axes[1].set_yscale("log")
        axes[1].axhline(1, color="k", lw=0.6)
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context length n")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{main_shape}, {phase}: modeled host profiles, accelerator simulated")
        save(fig, f"{main_shape}-{phase}")
    # 3. where the time goes: decode, accelerated system, per profile, with LM head
    fig, axes = plt.subplots(1, len(profiles), figsize=(4 * len(profiles), 3.8), sharey=False)
    axes = [axes] if len(profiles) == 1 else list(axes)
    colors = {"accel": "#4472c4", "attention": "#ed7d31", "lm_head": "#a5a5a5",
              "other": "#ffc000"}
    for ax, pname in zip(axes, profiles):
        rs = _pick(rows, model=main_shape, phase="decode", lm_head=True, profile=pname)
        xs = [str(r["context"]) for r in rs]
        bottom = [0.0] * len(rs)
        for key, col in colors.items():
            vals = [1e3 * (r["accel_s"] if key == "accel" else r[f"host_{key}_s"]) for r in rs]
            ax.bar(xs, vals, bottom=bottom, color=col,
                   label="projections (accelerator)" if key == "accel" else key)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_title(pname)
        ax.set_xlabel("context")
        ax.set_ylabel("ms per decode token")
        plt.setp(ax.get_xticklabels(), rotation=45)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{main_shape}: time per decode token on the accelerated system")
    save(fig, f"{main_shape}-breakdown")
    return names


def _fmt_table(rows: list[dict], shape: str, profiles: dict, contexts) -> str:
    lines = ["| profile | phase | LM head | " + " | ".join(f"n={n}" for n in contexts) + " |",
             "|---|---|---|" + "---|" * len(contexts)]
    for pname in profiles:
        for phase in PHASES:
            for head in (False, True):
                rs = {r["context"]: r for r in _pick(rows, model=shape, phase=phase,
                                                     lm_head=head, profile=pname)}
                cells = [f"{100 * rs[n]['F']:.0f}% / {rs[n]['speedup']:.2f}x / "
                         f"{rs[n]['ceiling']:.1f}x" for n in contexts]
                lines.append(f"| {pname} | {phase} | {'yes' if head else 'no'} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_docs(rows: list[dict], shapes: list[ModelShape], profiles: dict, images: list[str],
                command: str, target: str, clock_mhz: float, measured: list[dict],
                measured_model: str) -> str:
    """The generated section of docs/amdahl.md."""
    first = next(iter(profiles))
    contexts = sorted({r["context"] for r in rows})
    show = [n for n in (128, 1024, 4096, 16384) if n in contexts]
    out = [BEGIN, "", f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}; target "
           f"`{target}` at {clock_mhz:g} MHz.", "",
           "### Analytic MAC share (REFERENCE.md section 5 convention, decode)", "",
           "| model | 50% at n | " + " | ".join(f"F n={n}" for n in show)
           + " | F n=1024 + LM head | ceiling n=1024 (no head / head) |",
           "|---|---|" + "---|" * len(show) + "---|---|"]
    for s in shapes:
        rs = {r["context"]: r for r in _pick(rows, model=s.name, phase="decode", lm_head=False,
                                             profile=first)}
        f_head = mac_share(s, 1024, True)
        f_no = mac_share(s, 1024)
        out.append(f"| {s.name} | {context_at_half(s):,.0f} | "
                   + " | ".join(f"{100 * rs[n]['F_mac']:.1f}%" for n in show)
                   + f" | {100 * f_head:.1f}% | {1 / (1 - f_no):.1f}x / {1 / (1 - f_head):.1f}x |")
    for s in shapes[:1]:
        out += ["", f"### {s.name}: time share F / achieved speedup / ceiling 1/(1-F)", "",
                "Host parts modeled from the nominal profiles of `sim/profiles.json`; the "
                "projections' accelerator time is simulated.", "",
                _fmt_table(rows, s.name, profiles, show)]
    if measured:
        out += ["", f"### Measured run: {measured_model}", "",
                "Host parts timed with `time.perf_counter` in `sim.host.HostModel` on the machine "
                "below; the all-host baseline's projections are the golden numpy path "
                "(int64 `ternary_matmul`, a slow kernel); accelerator time is simulated cycles "
                "at the clock.", "", f"Machine: {_machine()}.", "",
                "| step | tokens | accelerator | host projections | attention | LM head | "
                "other | F | speedup |", "|---|---|---|---|---|---|---|---|---|"]
        for r in measured:
            if r["profile"] == "measured":
                out.append(f"| {r['phase']} | {r['tokens']} | {1e6 * r['accel_s']:.1f} us | "
                           f"{1e3 * r['host_projections_s']:.2f} ms | "
                           f"{1e3 * r['measured_attention_s']:.2f} ms | "
                           f"{1e3 * r['measured_lm_head_s']:.2f} ms | "
                           f"{1e3 * r['measured_other_s']:.2f} ms | {100 * r['F']:.0f}% | "
                           f"{r['speedup']:.2f}x |")
    out += [""] + [f"![{name}](img/{name})" for name in images] + ["", END]
    return "\n".join(out)


def _machine() -> str:
    try:
        from sim.bench import machine
        return machine()
    except Exception:   # a report must not fail on /proc
        import platform
        return platform.platform()


def write_docs(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else f"# Amdahl ledger\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise AmdahlError(f"{path}: markers {BEGIN} / {END} missing")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + section + tail)


# -- the CLI --------------------------------------------------------------------------------------

def _client(args):
    if args.scheduler:
        from dask.distributed import Client
        return Client(args.scheduler, timeout="20s"), None
    if args.workers == 0:
        return None, None
    from dask.distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster


def _demo_model(out: Path) -> Path:
    from compiler.synth import make_checkpoint

    model = out / "model"
    if not (model / "config.json").is_file():
        make_checkpoint(model, "demo", packed=True, seed=0)
    return model


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m sim.amdahl", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build/amdahl"), help="output directory")
    ap.add_argument("--profiles", type=Path, default=DEFAULT_PROFILES,
                    help="host profiles JSON (default sim/profiles.json)")
    ap.add_argument("--target", choices=list(SCALE_POINTS), default="default",
                    help="accelerator scale point (default: default)")
    ap.add_argument("--clock-mhz", type=float, default=DEFAULT_CLOCK_MHZ,
                    help=f"accelerator clock (default {DEFAULT_CLOCK_MHZ:g})")
    ap.add_argument("--shapes", help=f"comma-separated model shapes (default all: "
                                     f"{', '.join(SHAPES)})")
    ap.add_argument("--quick", action="store_true",
                    help=f"few points: {', '.join(QUICK_SHAPES)} at n = "
                         f"{', '.join(map(str, QUICK_CONTEXTS))}")
    ap.add_argument("--scheduler", metavar="ADDRESS", help="use this Dask scheduler")
    ap.add_argument("--workers", type=int, default=2,
                    help="local Dask worker processes (default 2; 0 runs in this process)")
    ap.add_argument("--model", type=Path,
                    help="measured ledger of this model directory (default: the synthetic "
                         "'demo' shape built in OUT/model)")
    ap.add_argument("--no-measure", action="store_true", help="skip the measured run")
    ap.add_argument("--backend", choices=["sim", "verilator", "golden"], default="sim",
                    help="backend of the measured run (default sim)")
    ap.add_argument("--measure-target", default="default", choices=list(SCALE_POINTS),
                    help="scale point of the measured run (default: default)")
    ap.add_argument("--prompt-len", type=int, default=32, help="measured run: prompt tokens")
    ap.add_argument("--decode-steps", type=int, default=4, help="measured run: decode steps")
    ap.add_argument("--docs", action="store_true",
                    help="also write docs/img/amdahl-*.png and the tables into docs/amdahl.md")
    ap.add_argument("--json", action="store_true", help="print one JSON summary")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    client = cluster = None
    try:
        if args.clock_mhz <= 0:
            raise AmdahlError("--clock-mhz must be > 0")
        if args.workers < 0:
            raise AmdahlError("--workers must be >= 0")
        if args.prompt_len < 1 or args.decode_steps < 0:
            raise AmdahlError("--prompt-len must be >= 1 and --decode-steps >= 0")
        profiles = load_profiles(args.profiles)
        names = args.shapes.split(",") if args.shapes else \
            (list(QUICK_SHAPES) if args.quick else list(SHAPES))
        bad = [n for n in names if n not in SHAPES]
        if bad:
            raise AmdahlError(f"unknown shape {bad[0]!r}; known: {', '.join(SHAPES)}")
        shapes = [SHAPES[n] for n in names]
        contexts = QUICK_CONTEXTS if args.quick else CONTEXTS
        args.out.mkdir(parents=True, exist_ok=True)
        progress = sys.stderr.isatty() and not args.json
        client, cluster = _client(args)
        table = cycle_table(shapes, args.target, client, args.out / f"cycles-{args.target}.json",
                            progress)
        rows = sweep(shapes, contexts, profiles, table, args.target, args.clock_mhz)
        measured = []
        if not args.no_measure:
            model = args.model or _demo_model(args.out)
            measured = measured_ledger(model, args.prompt_len, args.decode_steps,
                                       args.measure_target, args.backend, profiles,
                                       args.clock_mhz)
    except AmdahlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:   # checkpoint, artifact and host errors, each one line
        from compiler.artifact import ArtifactError
        from compiler.checkpoint import CheckpointError
        from sim.host import HostError
        if isinstance(e, (CheckpointError, ArtifactError, HostError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    write_csv(args.out / "sweep.csv", rows)
    if measured:
        write_csv(args.out / "measured.csv", measured)
    dirs = [args.out] + ([DOCS_IMG] if args.docs else [])
    images = plot(rows, shapes, profiles, dirs)
    summary = {
        "target": args.target, "clock_mhz": args.clock_mhz, "shapes": [asdict(s) for s in shapes],
        "contexts": list(contexts), "profiles": profiles,
        "mac_share": {s.name: {"context_at_half": context_at_half(s),
                               **{str(n): mac_share(s, n) for n in contexts},
                               "1024_lm_head": mac_share(s, 1024, True)} for s in shapes},
        "projection_cycles": table, "files": [str(args.out / n) for n in
                                              ["sweep.csv", "amdahl.json", *images]],
        "seconds": round(time.monotonic() - t0, 2),
    }
    (args.out / "amdahl.json").write_text(json.dumps({**summary, "rows": rows,
                                                      "measured": measured}, indent=1) + "\n")
    if args.docs:
        command = "python -m sim.amdahl " + " ".join(argv if argv is not None else sys.argv[1:])
        model_name = str(args.model) if args.model else "the synthetic 'demo' shape " \
            "(hidden 256, FFN 704, 2 layers, vocab 512), packed"
        write_docs(DOCS, render_docs(rows, shapes, profiles, images, command.strip(),
                                     args.target, args.clock_mhz, measured, model_name))
    if args.json:
        print(json.dumps(summary))
    else:
        print(_summary_text(rows, shapes, profiles, measured, args.out, summary["seconds"]))
    return 0


def _summary_text(rows, shapes, profiles, measured, out, seconds) -> str:
    lines = [f"{'model':<12} {'50% at n':>9} " + " ".join(f"{'F n=' + str(n):>9}"
                                                          for n in (1024, 2048, 4096))
             + f" {'+head 1024':>10}"]
    for s in shapes:
        lines.append(f"{s.name:<12} {context_at_half(s):>9,.0f} "
                     + " ".join(f"{100 * mac_share(s, n):>8.1f}%" for n in (1024, 2048, 4096))
                     + f" {100 * mac_share(s, 1024, True):>9.1f}%")
    s = shapes[0]
    lines.append(f"\n{s.name}, decode, with LM head: F (time) / speedup / ceiling")
    for pname in profiles:
        rs = _pick(rows, model=s.name, phase="decode", lm_head=True, profile=pname)
        lines.append(f"  {pname:<12} " + "  ".join(
            f"n={r['context']}: {100 * r['F']:.0f}% {r['speedup']:.2f}x {r['ceiling']:.1f}x"
            for r in rs if r["context"] in (128, 1024, 4096, 16384)))
    if measured:
        lines.append("\nmeasured run (host parts timed on this machine, accelerator simulated):")
        for r in measured:
            if r["profile"] == "measured":
                lines.append(f"  {r['phase']:<9} tokens={r['tokens']:<3} accel "
                             f"{1e6 * r['accel_s']:7.1f} us  host proj "
                             f"{1e6 * r['host_projections_s']:8.1f} us  attention "
                             f"{1e6 * r['measured_attention_s']:7.1f} us  lm_head "
                             f"{1e6 * r['measured_lm_head_s']:7.1f} us  other "
                             f"{1e6 * r['measured_other_s']:7.1f} us  F {100 * r['F']:.0f}% "
                             f"speedup {r['speedup']:.2f}x")
    lines.append(f"\nwrote {out}/ ({seconds:.1f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
