"""The compiled artifact: a directory with a manifest, the weight image and the programs.

Layout (docs/artifact.md):

    manifest.json   format, version, target parameters, memory map, per-layer table
    weights.bin     the weight region: every projection's tiles in the accelerator's layout
    programs.bin    128-bit instruction words, little-endian, all programs back to back

Each projection has programs for one token (decode) and for a full token batch (prefill); a
run with another token count is planned with `compiler.tiling` from the same geometry, which
is deterministic (`Artifact.program` checks this for the stored counts).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtl.isa import INSTR_BITS, NM_MAX_N, NM_MIN_N, WeightEncoding
from rtl.params import ArrayParams, MemTiming

from .tiling import Plan, plan_projection

__all__ = ["FORMAT", "VERSION", "ArtifactError", "Artifact", "LayerEntry", "ArtifactWriter",
           "params_to_json", "params_from_json"]

FORMAT = "ternary-accel-artifact"
VERSION = 1
INSTR_BYTES = INSTR_BITS // 8


class ArtifactError(Exception):
    """A missing, damaged or incompatible artifact (one line: the file and the problem)."""


def params_to_json(p: ArrayParams) -> dict:
    d = dataclasses.asdict(p)
    d["encodings"] = [WeightEncoding(e).name for e in p.encodings]
    return d


def params_from_json(d: dict) -> ArrayParams:
    d = dict(d)
    d["encodings"] = tuple(WeightEncoding[e] for e in d["encodings"])
    d["mem"] = MemTiming(**d["mem"])
    return ArrayParams(**d)


@dataclass(frozen=True)
class LayerEntry:
    """One projection in the artifact."""

    name: str
    layer: int
    kind: str
    n: int
    k: int
    gamma: float
    w_offset: int            # word address of its first weight word
    w_words: int
    sha256: str
    zeros: int               # zero weights (for the skipped-work figure)
    programs: dict           # {tokens: (first instruction, count)}
    nm: int = 0              # N of its N:M slots (WeightEncoding.NM); 0 for dense weights


@dataclass
class Artifact:
    """A loaded artifact. `weights` is a read-only memory map of weights.bin as (words, P)."""

    path: Path
    manifest: dict
    params: ArrayParams
    encoding: WeightEncoding
    layers: list
    weights: np.ndarray
    programs: np.ndarray     # (instructions, 16) uint8
    x_base: int
    y_base: int
    token_batch: int
    _programs: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path, verify: bool = True) -> "Artifact":
        path = Path(path)
        mpath = path / "manifest.json"
        if not path.is_dir():
            raise ArtifactError(f"{path}: not an artifact directory")
        try:
            manifest = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{mpath}: missing (not an artifact directory?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArtifactError(f"{mpath}: not a {FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise ArtifactError(f"{mpath}: unknown artifact version {manifest.get('version')!r}; "
                                f"this tool reads version {VERSION}")
        try:
            params = params_from_json(manifest["target"])
            encoding = WeightEncoding[manifest["encoding"]]
            mem = manifest["memory"]
            layers = [LayerEntry(**{**e, "programs": {int(t): tuple(v)
                                                      for t, v in e["programs"].items()}})
                      for e in manifest["layers"]]
            files = manifest["files"]
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None
        # N:M layers carry their N; dense layers (and manifests older than N:M) have nm = 0.
        for e in layers:
            ok = (NM_MIN_N <= e.nm <= NM_MAX_N if encoding == WeightEncoding.NM
                  else e.nm == 0) if type(e.nm) is int else False
            if not ok:
                raise ArtifactError(f"{mpath}: layer {e.name} has nm={e.nm!r}, not valid for "
                                    f"{encoding.name} weights")
        arrays = {}
        for fname, shape_of in (("weights.bin", params.port_bytes), ("programs.bin", INSTR_BYTES)):
            fpath = path / fname
            meta = files.get(fname)
            if meta is None:
                raise ArtifactError(f"{mpath}: no entry for {fname}")
            if not fpath.is_file():
                raise ArtifactError(f"{fpath}: missing")
            size = fpath.stat().st_size
            if size != meta["bytes"] or size % shape_of:
                raise ArtifactError(f"{fpath}: {size} bytes, the manifest says {meta['bytes']} "
                                    f"(truncated or replaced?)")
            if verify and _sha256(fpath) != meta["sha256"]:
                raise ArtifactError(f"{fpath}: checksum mismatch (damaged)")
            arrays[fname] = (np.memmap(fpath, np.uint8, "r").reshape(-1, shape_of) if size
                             else np.zeros((0, shape_of), np.uint8))
        art = cls(path, manifest, params, encoding, layers, arrays["weights.bin"],
                  arrays["programs.bin"], mem["x_base"], mem["y_base"], manifest["token_batch"])
        for e in layers:
            if e.w_offset + e.w_words > len(art.weights):
                raise ArtifactError(f"{mpath}: layer {e.name} runs past the end of weights.bin")
            for first, count in e.programs.values():
                if first + count > len(art.programs):
                    raise ArtifactError(f"{mpath}: layer {e.name} program runs past programs.bin")
        return art

    def plan(self, layer: LayerEntry, tokens: int) -> Plan:
        """The plan for `tokens` tokens; past the stored batch the result region moves up."""
        batch = min(tokens, self.token_batch)
        plan = plan_projection(self.params, layer.n, layer.k, tokens, self.encoding,
                               w_base=layer.w_offset, x_base=self.x_base, y_base=self.y_base,
                               token_batch=batch, nm=layer.nm)
        if self.x_base + plan.x_words > self.y_base:
            plan = plan_projection(self.params, layer.n, layer.k, tokens, self.encoding,
                                   w_base=layer.w_offset, x_base=self.x_base,
                                   y_base=self.x_base + plan.x_words, token_batch=batch,
                                   nm=layer.nm)
        return plan

    def program(self, layer: LayerEntry, tokens: int) -> tuple:
        """(plan, instructions) for `tokens` tokens: stored if present, else planned.

        The stored words are checked against the planner once; results are cached.
        """
        key = (layer.name, tokens)
        if key not in self._programs:
            self._programs[key] = self._program(layer, tokens)
        return self._programs[key]

    def _program(self, layer: LayerEntry, tokens: int) -> tuple:
        plan = self.plan(layer, tokens)
        if tokens in layer.programs:
            first, count = layer.programs[tokens]
            raw = self.programs[first:first + count]
            words = [int.from_bytes(bytes(w), "little") for w in raw]
            planned = [i.encode() for i in plan.program]
            if words != planned:
                raise ArtifactError(f"{self.path}: stored program of {layer.name} for {tokens} "
                                    f"token(s) differs from this planner's (built by another "
                                    f"compiler version?)")
        return plan, list(plan.program)

    def layer_weights(self, layer: LayerEntry) -> np.ndarray:
        return self.weights[layer.w_offset:layer.w_offset + layer.w_words]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


class ArtifactWriter:
    """Write an artifact into a temporary directory; `commit()` renames it into place.

    Nothing appears at the destination unless `commit()` runs: a failure part-way leaves no
    partial artifact (`abort()` removes the temporary directory).
    """

    def __init__(self, dest: Path, params: ArrayParams, encoding: WeightEncoding,
                 token_batch: int):
        self.dest = Path(dest)
        if self.dest.exists() and not (self.dest / "manifest.json").exists():
            raise ArtifactError(f"{self.dest}: exists and is not an artifact; refusing to "
                                f"replace it")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", dir=self.dest.parent))
        self.params = params
        self.encoding = WeightEncoding(encoding)
        self.token_batch = token_batch
        self.wfile = open(self.tmp / "weights.bin", "wb")    # noqa: SIM115 (closed in commit)
        self.pfile = open(self.tmp / "programs.bin", "wb")   # noqa: SIM115
        self.whash = hashlib.sha256()
        self.phash = hashlib.sha256()
        self.w_words = 0
        self.p_count = 0
        self.layers: list = []

    def add_weights(self, image: np.ndarray) -> tuple:
        """Append a weight image (words, P); return (first word, words, sha256)."""
        data = np.ascontiguousarray(image, np.uint8)
        if data.ndim != 2 or data.shape[1] != self.params.port_bytes:
            raise ValueError(f"weight image of shape {data.shape} is not (words, "
                             f"{self.params.port_bytes})")
        raw = data.tobytes()
        self.wfile.write(raw)
        self.whash.update(raw)
        first = self.w_words
        self.w_words += len(data)
        return first, len(data), hashlib.sha256(raw).hexdigest()

    def add_program(self, words: list) -> tuple:
        raw = b"".join(w.to_bytes(INSTR_BYTES, "little") for w in words)
        self.pfile.write(raw)
        self.phash.update(raw)
        first = self.p_count
        self.p_count += len(words)
        return first, len(words)

    def commit(self, model: dict, memory: dict, totals: dict) -> Path:
        self.wfile.close()
        self.pfile.close()
        manifest = {
            "format": FORMAT, "version": VERSION,
            "target": params_to_json(self.params), "encoding": self.encoding.name,
            "token_batch": self.token_batch, "model": model, "memory": memory,
            "totals": totals,
            "layers": [{**dataclasses.asdict(e),
                        "programs": {str(t): list(v) for t, v in e.programs.items()}}
                       for e in self.layers],
            "files": {
                "weights.bin": {"bytes": self.w_words * self.params.port_bytes,
                                "sha256": self.whash.hexdigest()},
                "programs.bin": {"bytes": self.p_count * INSTR_BYTES,
                                 "sha256": self.phash.hexdigest()},
            },
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        old = None
        if self.dest.exists():
            old = self.dest.with_name(self.dest.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.dest, old)
        os.replace(self.tmp, self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest

    def abort(self) -> None:
        for f in (self.wfile, self.pfile):
            if not f.closed:
                f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
