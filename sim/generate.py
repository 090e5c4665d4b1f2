"""Greedy generation with BitNet b1.58: projections on the accelerator, the rest on the host.

    python -m sim.generate MODEL_DIR (--prompt-ids 1,2,3 | --prompt TEXT) --max-new-tokens N
        [--backend sim|verilator|golden] [--target default | --artifact DIR]
        [--logits FILE.npy] [--json]

MODEL_DIR holds config.json and the checkpoint (packed or float). For the accelerator backends
it is lowered on the fly to MODEL_DIR/accel-<target>-base3, or the artifact there is reused when
it matches (see `sim.host.prepare_artifact`); --artifact runs one already lowered from
MODEL_DIR instead (any encoding, e.g. N:M slots from `python -m compiler.lower --nm`).
--prompt needs MODEL_DIR/tokenizer.json and the `tokenizers` package. --logits saves the
float32 logits of every processed position, shape [prompt length + N - 1, vocab], to exactly
FILE.npy (it must end in .npy); row i is the output after consuming token i.
"""

import contextlib
import errno
import json
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np

from compiler.artifact import Artifact, ArtifactError
from compiler.checkpoint import CheckpointError
from rtl.cli import ArgumentParser, stdout_closed
from rtl.params import SCALE_POINTS

from .host import BACKENDS, PRECISIONS, HostError, HostModel

__all__ = ["main", "parse_ids", "save_logits"]


def parse_ids(text: str) -> list[int]:
    """"1,2,3" -> [1, 2, 3]; a one-line ValueError on anything else (an empty id included)."""
    if not text.strip():
        raise ValueError("--prompt-ids is empty")
    items = [s.strip() for s in text.split(",")]
    if "" in items:
        raise ValueError(f"--prompt-ids has an empty id at position {items.index('') + 1} "
                         f"in {text!r}")
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ValueError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


def save_logits(path: Path, logits: np.ndarray) -> None:
    """Write `logits` to exactly `path` (.npy format), atomically: a temporary file in the same
    directory renamed into place, so a failure (a full disk) leaves no partial file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if path.parent.exists() and not path.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open, not tempfile: the file gets the mode the umask gives, as np.save's would.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            np.save(f, logits)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise HostError(f"{path}: cannot write the logits: {e.strerror or e}") from None
        raise


def _tokenizer(model_dir: Path):
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise HostError(f"{path}: no such file; --prompt needs a tokenizer.json "
                        f"(use --prompt-ids otherwise)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise HostError("--prompt needs the 'tokenizers' package (pip install tokenizers)") \
            from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:   # the Rust side raises its own exception type
        raise HostError(f"{path}: cannot be read as a tokenizer ({e})") from None


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m sim.generate", description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path, help="directory with config.json and the checkpoint")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    src.add_argument("--prompt", help="prompt text (needs MODEL_DIR/tokenizer.json)")
    ap.add_argument("--max-new-tokens", type=int, default=8, metavar="N",
                    help="tokens to generate (default 8)")
    ap.add_argument("--backend", choices=BACKENDS, default="sim",
                    help="where the ternary products run: the cycle-accurate simulator "
                         "(default), the RTL under Verilator, or golden numpy")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--target", choices=list(SCALE_POINTS), default="default",
                       help="scale point to lower for (default: default)")
    where.add_argument("--artifact", type=Path, metavar="DIR",
                       help="run this artifact of MODEL_DIR (python -m compiler.lower, e.g. with "
                            "--nm) instead of lowering; its target is the one it was built for")
    ap.add_argument("--precision", choices=PRECISIONS, default="float16",
                    help="attention precision on the host (default float16)")
    ap.add_argument("--check", action="store_true",
                    help="compare every accelerator product with the golden one")
    ap.add_argument("--logits", type=Path, metavar="FILE.npy",
                    help="save float32 logits [prompt + N - 1, vocab] to exactly this .npy file")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.logits is not None:
        if args.logits.suffix.lower() != ".npy":
            ap.error(f"--logits must name a .npy file, got {str(args.logits)!r}")
        if args.logits.is_dir():
            ap.error(f"--logits {str(args.logits)!r} is a directory, not a .npy file")

    t0 = time.monotonic()
    try:
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        if not (args.model_dir / "config.json").is_file():
            raise HostError(f"{args.model_dir}: no config.json (not a model directory)")
        tok = None
        if args.prompt is not None:
            tok = _tokenizer(args.model_dir)
            prompt = tok.encode(args.prompt).ids
            if not prompt:
                raise ValueError("--prompt encodes to no tokens")
        else:
            prompt = parse_ids(args.prompt_ids)
        art = None
        if args.artifact is not None:
            if args.backend == "golden":
                raise ValueError("--artifact needs an accelerator backend (sim or verilator)")
            art = Artifact.load(args.artifact)
            args.target = art.params.name
        # Non-finite intermediates become HostErrors naming the projection (sim.host), so
        # numpy's floating-point warnings would only repeat them.
        with np.errstate(all="ignore"):
            model = HostModel(args.model_dir, args.backend, args.target, args.precision,
                              args.check, artifact=art,
                              progress=sys.stderr.isatty() and not args.json)
            new, logits = model.generate(prompt, args.max_new_tokens)
        if args.logits is not None:
            save_logits(args.logits, logits)
    except (HostError, CheckpointError, ArtifactError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    text = tok.decode(new) if tok is not None else None
    cycles = sum(s.parts["projections"].cycles or 0 for s in model.ledger)
    out = {"prompt_ids": prompt, "new_ids": new, "text": text, "backend": args.backend,
           "target": args.target if args.backend != "golden" else None,
           "artifact": str(model.artifact.path) if model.artifact else None,
           "artifact_reused": model.reused, "accelerator_cycles": cycles,
           "logits": str(args.logits) if args.logits else None,
           "logits_shape": list(logits.shape), "seconds": round(time.monotonic() - t0, 3)}
    try:
        if args.json:
            print(json.dumps(out, allow_nan=False))
        else:
            print(" ".join(str(i) for i in new))
            if text is not None:
                print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_closed()
    if not args.json and args.backend != "golden":
        print(f"# {cycles:,} accelerator cycles ({args.backend}, target {args.target}); "
              f"{out['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
