"""Lower every BitNet projection of a Hugging Face checkpoint to an accelerator artifact.

    python -m compiler.lower MODEL [-o DIR] [--target default] [--weights base3|2bit] [--json]
    python -m compiler.lower MODEL --nm N:8|auto [-o DIR] [--target default] [--json]

MODEL is a model.safetensors, a sharded model.safetensors.index.json, or the directory that
holds one of them; config.json must sit beside it. Projections are read one at a time through
mmap, ternarized (or unpacked), tiled and packed; the artifact is written to a temporary
directory and renamed into place only when everything succeeded.

With --nm the weights are stored as N:M slots (`rtl.isa` NM, at scale points that implement
it): every group of 8 consecutive input columns of an output row keeps at most N non-zero
weights in N 4-bit slots, N / 2 bits per weight with every bit of position metadata counted.
`--nm N:8` stores every projection with N slots and refuses a checkpoint that is not N:8
sparse (`python -m compiler.nm` makes one); `--nm auto` gives each projection the N of its
densest group (at least 2), and refuses weights with a fully dense group (8 of 8 non-zero).
"""

import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

from rtl.cli import ArgumentParser
from rtl.isa import (
    NM_M,
    NM_MAX_N,
    NM_MIN_N,
    TRITS_PER_BYTE,
    WeightEncoding,
    nm_bits_per_weight,
)
from rtl.params import SCALE_POINTS, ArrayParams, scale_point
from sim.golden import nm_group_nonzeros

from .artifact import ArtifactError, ArtifactWriter, LayerEntry, check_artifact_destination
from .checkpoint import CONFIG_FILE, Checkpoint, CheckpointError
from .tiling import pack_weight_image, plan_projection

__all__ = ["lower", "main", "LowerError", "parse_nm"]

ENCODINGS = {"base3": WeightEncoding.BASE3, "2bit": WeightEncoding.CODE2}


class LowerError(Exception):
    """A model the target cannot run (one line)."""


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0 = total, enabled, time.monotonic()

    def update(self, i: int, label: str):
        if not self.enabled:
            return
        frac = i / max(self.total, 1)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        sys.stderr.write(f"\r[{bar}] {i}/{self.total} {time.monotonic() - self.t0:5.1f}s "
                         f"{label[:48]:<48}")
        sys.stderr.flush()

    def done(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * 110 + "\r")
            sys.stderr.flush()


def default_output(model: Path, target: str, encoding: WeightEncoding) -> Path:
    base = model if model.is_dir() else model.parent
    return base / f"accel-{target}-{encoding.name.lower()}"


def check_output(dest: Path, ckpt: Checkpoint) -> None:
    """Refuse an output directory that is, or holds, the model, or is not an artifact."""
    dest = Path(dest).resolve()
    model_files = [*ckpt.files, ckpt.path, ckpt.path.parent / CONFIG_FILE]
    if dest == ckpt.path.parent.resolve():
        raise LowerError(f"{dest}: is the model's own directory; give another output directory")
    for f in model_files:
        if f.resolve().is_relative_to(dest):
            what = "is" if f.resolve() == dest else f"holds {f},"
            raise LowerError(f"{dest}: {what} a file of the model; refusing to replace it")
    check_artifact_destination(dest)


def parse_nm(text: str) -> int | str:
    """"N:8" -> N (NM_MIN_N .. NM_MAX_N), "auto" -> "auto"; a one-line LowerError otherwise."""
    text = text.strip()
    if text == "auto":
        return text
    n, sep, m = text.partition(":")
    if not (sep and n.strip().isdigit() and m.strip().isdigit()):
        raise LowerError(f"--nm must be N:{NM_M} (N in {NM_MIN_N}..{NM_MAX_N}) or auto, "
                         f"got {text!r}")
    if int(m) != NM_M:
        raise LowerError(f"--nm {text}: the accelerator's N:M groups have M = {NM_M}")
    if not NM_MIN_N <= int(n) <= NM_MAX_N:
        raise LowerError(f"--nm {text}: the accelerator takes N in {NM_MIN_N}..{NM_MAX_N} "
                         f"slots per group of {NM_M}")
    return int(n)


def _densest_group(w_t: np.ndarray) -> tuple[int, int, int]:
    """(non-zero count, row, group) of the first row group with the most non-zero weights."""
    counts = nm_group_nonzeros(w_t)
    r, q = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return int(counts[r, q]), int(r), int(q)


def _nm_of(pr, w_t: np.ndarray, nm: int | str) -> int:
    """N for one projection: `nm` if its weights fit N slots per group, the densest group's
    count (at least NM_MIN_N) for "auto"; a one-line LowerError naming the tensor otherwise."""
    top, r, q = _densest_group(w_t)
    where = f"row {r}, columns {NM_M * q}..{NM_M * q + NM_M - 1}"
    if nm == "auto":
        if top > NM_MAX_N:
            raise LowerError(f"{pr.name}: {where} hold {top} non-zero weights, more than the "
                             f"{NM_MAX_N} slots of a group (not N:{NM_M} sparse; prune it with "
                             f"python -m compiler.nm)")
        return max(top, NM_MIN_N)
    if top > nm:
        raise LowerError(f"{pr.name}: {where} hold {top} non-zero weights, more than {nm} "
                         f"(not {nm}:{NM_M} sparse; prune it with python -m compiler.nm --nm "
                         f"{nm}:{NM_M}, or lower with --nm auto)")
    return nm


def lower(model: Path, out: Path | None = None, target: str = "default",
          encoding: WeightEncoding | None = None, progress: bool = False,
          nm: int | str | None = None) -> dict:
    """Lower `model`; return the summary (the manifest's "totals" plus the time taken).

    `encoding` defaults to BASE3. `nm` selects N:M slots (`WeightEncoding.NM`, implied): N
    (NM_MIN_N .. NM_MAX_N) for every projection, or "auto" for the smallest N that holds each
    projection's weights (also the default for encoding NM).
    """
    params: ArrayParams = scale_point(target)
    if nm is not None and encoding not in (None, WeightEncoding.NM):
        raise LowerError(f"nm={nm!r} needs {WeightEncoding.NM.name} weights, not "
                         f"{WeightEncoding(encoding).name}")
    encoding = WeightEncoding(WeightEncoding.BASE3 if encoding is None and nm is None
                              else WeightEncoding.NM if encoding is None else encoding)
    if encoding == WeightEncoding.NM:
        nm = "auto" if nm is None else nm
        if nm != "auto" and (isinstance(nm, bool) or not isinstance(nm, int)
                             or not NM_MIN_N <= nm <= NM_MAX_N):
            raise LowerError(f"nm={nm!r}: N:M slots take N in {NM_MIN_N}..{NM_MAX_N} or auto")
    if encoding not in params.encodings:
        raise LowerError(f"target {target} does not implement {encoding.name} weights"
                         + (f" (targets that do: {', '.join(_targets_with(encoding))})"
                            if _targets_with(encoding) else ""))
    t0 = time.monotonic()
    ckpt = Checkpoint(Path(model))
    out = Path(out) if out is not None else default_output(Path(model), target, encoding)
    check_output(out, ckpt)
    cfg = ckpt.config
    projs = ckpt.projections()
    batch = params.batch_tokens
    auto = nm == "auto"
    bar = Progress(len(projs) * (2 if auto else 1), progress)

    # N of every projection's slots; "auto" reads every projection once more to find it.
    ns = {pr.name: nm for pr in projs} if encoding == WeightEncoding.NM and not auto else {}
    try:
        for i, pr in enumerate(projs if auto else ()):
            bar.update(i, f"N:M {pr.name}")
            ns[pr.name] = _nm_of(pr, ckpt.ternary(pr)[0], nm)
    except BaseException:
        bar.done()
        raise

    # The memory map: every layer's weights, then one activation and one result region that
    # all layers share (a run executes one projection at a time).
    geometry = []
    offset = x_words = y_words = 0
    for pr in projs:
        try:
            plan = plan_projection(params, pr.n, pr.k, batch, encoding, w_base=offset,
                                   nm=ns.get(pr.name, 0))
        except ValueError as e:
            raise LowerError(f"{pr.name}: {e}") from None
        geometry.append(offset)
        offset += plan.w_words
        x_words = max(x_words, plan.x_words)
        y_words = max(y_words, plan.y_words)
    x_base, y_base = offset, offset + x_words

    writer = ArtifactWriter(out, params, encoding, batch)
    first_bar = len(projs) if auto else 0
    try:
        weights = weight_bytes = instructions = zeros = 0
        for i, (pr, w_base) in enumerate(zip(projs, geometry)):
            bar.update(first_bar + i, pr.name)
            w_t, gamma = ckpt.ternary(pr)
            n_slots = ns.get(pr.name, 0)
            if n_slots and not auto:
                _nm_of(pr, w_t, n_slots)
            plans = {t: plan_projection(params, pr.n, pr.k, t, encoding, w_base=w_base,
                                        x_base=x_base, y_base=y_base, token_batch=min(t, batch),
                                        nm=n_slots)
                     for t in sorted({1, batch})}
            for t, plan in plans.items():
                if len(plan.program) > params.imem_depth:
                    raise LowerError(f"{pr.name}: needs {len(plan.program)} instructions for "
                                     f"{t} token(s); target {target} holds {params.imem_depth}")
            image = pack_weight_image(plans[1], w_t)
            first, words, digest = writer.add_weights(image)
            assert first == w_base
            progs = {t: writer.add_program([ins.encode() for ins in plan.program])
                     for t, plan in plans.items()}
            nz = int(np.count_nonzero(w_t == 0))
            writer.layers.append(LayerEntry(pr.name, pr.layer, pr.kind, pr.n, pr.k,
                                            float(gamma), first, words, digest, nz, progs,
                                            n_slots))
            weights += pr.n * pr.k
            weight_bytes += words * params.port_bytes
            instructions += sum(c for _, c in progs.values())
            zeros += nz
        bar.done()
        totals = {
            "layers": len(projs), "weights": weights, "weight_bytes": weight_bytes,
            "bits_per_weight": 8 * weight_bytes / max(weights, 1),
            "zero_fraction": zeros / max(weights, 1), "instructions": instructions,
        }
        if ns:
            totals.update(_nm_totals(params, projs, ns))
        model_info = {
            "source": str(Path(model).resolve()), "format": "packed" if ckpt.packed() else "float",
            "architecture": cfg.architecture, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_layers": cfg.num_layers,
            "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
            "vocab_size": cfg.vocab_size, "linear_class": cfg.linear_class,
        }
        memory = {"weights_base": 0, "weights_words": offset, "x_base": x_base,
                  "x_words": x_words, "y_base": y_base, "y_words": y_words}
        path = writer.commit(model_info, memory, totals)
    except BaseException:
        bar.done()
        writer.abort()
        raise
    limit = totals["nm_bits_per_weight"] if ns else 8 / TRITS_PER_BYTE[encoding]
    return {"artifact": str(path), "target": target, "encoding": encoding.name, **totals,
            "density_limit_bits": limit, "seconds": round(time.monotonic() - t0, 3)}


def _targets_with(encoding: WeightEncoding) -> list:
    return [name for name, p in SCALE_POINTS.items() if encoding in p.encodings]


def _nm_totals(params: ArrayParams, projs: list, ns: dict) -> dict:
    """N:M figures: projections per N, the slots' bits per weight (N * 4 / 8, all metadata),
    and what the same projections take as dense base-3 words on this target."""
    weights = sum(pr.n * pr.k for pr in projs)
    counts: dict = {}
    for pr in projs:
        key = f"{ns[pr.name]}:{NM_M}"
        counts[key] = counts.get(key, 0) + 1
    slot_bits = sum(pr.n * pr.k * nm_bits_per_weight(ns[pr.name]) for pr in projs)
    out = {"nm": dict(sorted(counts.items())), "nm_bits_per_weight": slot_bits / weights}
    if WeightEncoding.BASE3 in params.encodings:
        words = sum(plan_projection(params, pr.n, pr.k, 1, WeightEncoding.BASE3).w_words
                    for pr in projs)
        out["base3_weight_bytes"] = words * params.port_bytes
        out["base3_bits_per_weight"] = 8 * words * params.port_bytes / weights
    return out


def _table(s: dict) -> str:
    rows = [("artifact", s["artifact"]), ("target / encoding", f"{s['target']} / {s['encoding']}"),
            ("layers", f"{s['layers']}"), ("weights", f"{s['weights']:,}"),
            ("weight bytes", f"{s['weight_bytes']:,}"),
            ("bits per weight", f"{s['bits_per_weight']:.4f}"),
            *_nm_rows(s),
            ("zero weights", f"{100 * s['zero_fraction']:.1f}%"),
            ("instructions", f"{s['instructions']:,}"), ("time", f"{s['seconds']:.1f} s")]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _nm_rows(s: dict) -> list:
    if "nm" not in s:
        return []
    rows = [("N:M slots", ", ".join(f"{k} x {v}" for k, v in s["nm"].items())
             + " projections"),
            ("slot bits per weight", f"{s['nm_bits_per_weight']:.4f} (N * 4 / 8: the slot "
                                     f"codes are all the metadata)")]
    if "base3_weight_bytes" in s:
        rows.append(("dense base-3", f"{s['base3_weight_bytes']:,} bytes, "
                                     f"{s['base3_bits_per_weight']:.4f} bits per weight "
                                     f"({s['weight_bytes'] / s['base3_weight_bytes']:.3f}x)"))
    return rows


def main(argv=None) -> int:
    ap = ArgumentParser(
        prog="python -m compiler.lower",
        description="Lower every BitNet projection of a Hugging Face checkpoint to the "
                    "accelerator's instruction stream and weight image.")
    ap.add_argument("model", type=Path,
                    help="model.safetensors, model.safetensors.index.json, or their directory "
                         "(config.json beside it)")
    ap.add_argument("-o", "--output", type=Path,
                    help="artifact directory (default: accel-<target>-<encoding> beside the "
                         "model); an existing artifact there is replaced")
    ap.add_argument("--target", choices=list(SCALE_POINTS), default="default",
                    help="array parameters to compile for (default: default)")
    enc = ap.add_mutually_exclusive_group()
    enc.add_argument("--weights", choices=list(ENCODINGS), default=None,
                     help="dense weight encoding: base3 (5 trits/byte, 1.6 bit; the default) or "
                          "2bit (HF codes)")
    enc.add_argument("--nm", metavar="N:8|auto",
                     help=f"N:M structured sparse weights (NM encoding; targets "
                          f"{', '.join(_targets_with(WeightEncoding.NM))}): N:8 stores N 4-bit "
                          f"slots per group of 8 input columns (N in {NM_MIN_N}..{NM_MAX_N}, N/2 "
                          f"bits per weight) and refuses a checkpoint that is not N:8 sparse "
                          f"(python -m compiler.nm prunes one); auto gives each projection the "
                          f"N of its densest group. Output default: accel-<target>-nm")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)
    caught = []

    def terminate(signum, frame):
        caught.append(signum)
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C, so that the temporary directory is removed.
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        nm = parse_nm(args.nm) if args.nm is not None else None
        encoding = ENCODINGS[args.weights] if args.weights else None
        summary = lower(args.model, args.output, args.target, encoding,
                        progress=sys.stderr.isatty() and not args.json, nm=nm)
    except (CheckpointError, ArtifactError, LowerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                     # the writer names its paths; this is a fallback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no artifact written", file=sys.stderr)
        return 128 + (caught[0] if caught else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, allow_nan=False) if args.json else _table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
