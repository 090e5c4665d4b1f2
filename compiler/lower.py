"""Lower every BitNet projection of a Hugging Face checkpoint to an accelerator artifact.

    python -m compiler.lower MODEL [-o DIR] [--target default] [--weights base3|2bit] [--json]

MODEL is a model.safetensors, a sharded model.safetensors.index.json, or the directory that
holds one of them; config.json must sit beside it. Projections are read one at a time through
mmap, ternarized (or unpacked), tiled and packed; the artifact is written to a temporary
directory and renamed into place only when everything succeeded.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rtl.isa import TRITS_PER_BYTE, WeightEncoding
from rtl.params import SCALE_POINTS, ArrayParams, scale_point

from .artifact import ArtifactError, ArtifactWriter, LayerEntry
from .checkpoint import Checkpoint, CheckpointError
from .tiling import pack_weight_image, plan_projection

__all__ = ["lower", "main", "LowerError"]

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


def lower(model: Path, out: Path | None = None, target: str = "default",
          encoding: WeightEncoding = WeightEncoding.BASE3, progress: bool = False) -> dict:
    """Lower `model`; return the summary (the manifest's "totals" plus the time taken)."""
    params: ArrayParams = scale_point(target)
    encoding = WeightEncoding(encoding)
    if encoding not in params.encodings:
        raise LowerError(f"target {target} does not implement {encoding.name} weights")
    t0 = time.monotonic()
    ckpt = Checkpoint(Path(model))
    cfg = ckpt.config
    projs = ckpt.projections()
    batch = max(1, params.max_tokens // 2)

    # The memory map: every layer's weights, then one activation and one result region that
    # all layers share (a run executes one projection at a time).
    geometry = []
    offset = x_words = y_words = 0
    for pr in projs:
        try:
            plan = plan_projection(params, pr.n, pr.k, batch, encoding, w_base=offset)
        except ValueError as e:
            raise LowerError(f"{pr.name}: {e}") from None
        geometry.append(offset)
        offset += plan.w_words
        x_words = max(x_words, plan.x_words)
        y_words = max(y_words, plan.y_words)
    x_base, y_base = offset, offset + x_words

    writer = ArtifactWriter(out or default_output(Path(model), target, encoding), params,
                            encoding, batch)
    bar = Progress(len(projs), progress)
    try:
        weights = weight_bytes = instructions = zeros = 0
        for i, (pr, w_base) in enumerate(zip(projs, geometry)):
            bar.update(i, pr.name)
            w_t, gamma = ckpt.ternary(pr)
            plans = {t: plan_projection(params, pr.n, pr.k, t, encoding, w_base=w_base,
                                        x_base=x_base, y_base=y_base, token_batch=min(t, batch))
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
                                            float(gamma), first, words, digest, nz, progs))
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
    return {"artifact": str(path), "target": target, "encoding": encoding.name, **totals,
            "density_limit_bits": 8 / TRITS_PER_BYTE[encoding],
            "seconds": round(time.monotonic() - t0, 3)}


def _table(s: dict) -> str:
    rows = [("artifact", s["artifact"]), ("target / encoding", f"{s['target']} / {s['encoding']}"),
            ("layers", f"{s['layers']}"), ("weights", f"{s['weights']:,}"),
            ("weight bytes", f"{s['weight_bytes']:,}"),
            ("bits per weight", f"{s['bits_per_weight']:.4f}"),
            ("zero weights", f"{100 * s['zero_fraction']:.1f}%"),
            ("instructions", f"{s['instructions']:,}"), ("time", f"{s['seconds']:.1f} s")]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
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
    ap.add_argument("--weights", choices=list(ENCODINGS), default="base3",
                    help="weight encoding: base3 (5 trits/byte, 1.6 bit) or 2bit (HF codes)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)
    try:
        summary = lower(args.model, args.output, args.target, ENCODINGS[args.weights],
                        progress=sys.stderr.isatty() and not args.json)
    except (CheckpointError, ArtifactError, LowerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no artifact written", file=sys.stderr)
        return 130
    print(json.dumps(summary) if args.json else _table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
