"""The compiled artifact: a directory with a manifest, the weight image and the programs.

Layout (docs/artifact.md):

    manifest.json   format, version, target parameters, memory map, per-layer table
    weights.bin     the weight region: every projection's tiles in the accelerator's layout
    programs.bin    128-bit instruction words, little-endian, all programs back to back

Each projection has programs for one token (decode) and for a full token batch (prefill); a
run with another token count is planned with `compiler.tiling` from the same geometry, which
is deterministic (`Artifact.program` checks this for the stored counts).
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtl.isa import INSTR_BITS, NM_MAX_N, NM_MIN_N, WeightEncoding
from rtl.params import ArrayParams, MemTiming

from .checkpoint import PROJECTION_KINDS
from .tiling import Plan, plan_projection, weight_words

__all__ = ["FORMAT", "VERSION", "FILES", "ArtifactError", "Artifact", "LayerEntry",
           "ArtifactWriter", "params_to_json", "params_from_json", "check_replaceable",
           "stage_directory", "commit_directory", "write_directory", "has_format", "os_errors"]

FORMAT = "ternary-accel-artifact"
VERSION = 1
INSTR_BYTES = INSTR_BITS // 8
MANIFEST = "manifest.json"
#: Everything an artifact directory holds; a directory holding anything else is not replaced.
FILES = (MANIFEST, "weights.bin", "programs.bin")


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


# -- the manifest's schema ------------------------------------------------------------------------
#
# Each check takes (value, where) and returns the value as the loader uses it, or raises
# `_ManifestError` with a message that starts with `where`, the key path ("layers[3].w_offset").

class _ManifestError(Exception):
    pass


Check = Callable[[object, str], object]


def _int(lo: int = 0) -> Check:
    def check(v, where):
        if type(v) is not int or v < lo:             # bool and float are not integers here
            raise _ManifestError(f"{where} must be an integer >= {lo}, got {v!r:.60}")
        return v
    return check


def _scale(v, where):
    if type(v) not in (int, float) or not (math.isfinite(v) and v > 0):
        raise _ManifestError(f"{where} must be a finite number > 0, got {v!r:.60}")
    return float(v)


def _str(choices: tuple | None = None, pattern: str | None = None) -> Check:
    def check(v, where):
        if not isinstance(v, str) or not v or (choices is not None and v not in choices) or (
                pattern is not None and not re.fullmatch(pattern, v)):
            want = (f"one of {', '.join(choices)}" if choices is not None else
                    f"a string matching {pattern}" if pattern is not None else
                    "a non-empty string")
            raise _ManifestError(f"{where} must be {want}, got {v!r:.60}")
        return v
    return check


def _obj(fields: dict, optional: dict | None = None, extra: bool = False) -> Check:
    """A JSON object with `fields` (all required) and `optional` {key: (check, default)};
    other keys are refused unless `extra` (then kept unchecked)."""
    optional = optional or {}

    def check(v, where):
        if not isinstance(v, dict):
            raise _ManifestError(f"{where} must be an object, got {type(v).__name__} {v!r:.40}")
        out = dict(v) if extra else {}
        for key, field in fields.items():
            if key not in v:
                raise _ManifestError(f"{where or 'the manifest'} has no {key!r}")
            out[key] = field(v[key], f"{where}.{key}" if where else key)
        for key, (field, default) in optional.items():
            out[key] = field(v[key], f"{where}.{key}") if key in v else default
        unknown = sorted(set(v) - set(fields) - set(optional))
        if unknown and not extra:
            raise _ManifestError(f"{where or 'the manifest'} has unknown key(s) "
                                 f"{', '.join(map(repr, unknown))}")
        return out
    return check


def _list(item: Check, min_len: int = 0) -> Check:
    def check(v, where):
        if not isinstance(v, list) or len(v) < min_len:
            raise _ManifestError(f"{where} must be a list of at least {min_len} item(s), got "
                             f"{v!r:.40}")
        return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]
    return check


def _programs(v, where):
    """{"tokens": [first, count]} -> {tokens: (first, count)}: tokens >= 1, count >= 1."""
    if not isinstance(v, dict) or not v:
        raise _ManifestError(f"{where} must be a non-empty object {{tokens: [first, count]}}, got "
                         f"{v!r:.40}")
    out = {}
    for key, pair in v.items():
        if not (key.isdigit() and int(key) >= 1):
            raise _ManifestError(f"{where} has key {key!r}: expected a token count >= 1")
        if not (isinstance(pair, list) and len(pair) == 2):
            raise _ManifestError(f"{where}.{key} must be [first instruction, count], got "
                                 f"{pair!r:.40}")
        out[int(key)] = (_int(0)(pair[0], f"{where}.{key}[0]"),
                         _int(1)(pair[1], f"{where}.{key}[1]"))
    return out


def _any_object(v, where):
    return _obj({}, extra=True)(v, where)


_SHA256 = _str(pattern="[0-9a-f]{64}")
_FILE_ENTRY = _obj({"bytes": _int(0), "sha256": _SHA256})
_LAYER = _obj({"name": _str(), "layer": _int(0), "kind": _str(PROJECTION_KINDS), "n": _int(1),
               "k": _int(1), "gamma": _scale, "w_offset": _int(0), "w_words": _int(1),
               "sha256": _SHA256, "zeros": _int(0), "programs": _programs},
              optional={"nm": (_int(0), 0)})       # manifests older than N:M have no nm
_MANIFEST_SCHEMA = _obj({
    "format": _str((FORMAT,)), "version": _int(0), "target": _any_object,
    "encoding": _str(tuple(e.name for e in WeightEncoding)), "token_batch": _int(1),
    "model": _any_object, "totals": _any_object,
    "memory": _obj({key: _int(0) for key in ("weights_base", "weights_words", "x_base",
                                               "x_words", "y_base", "y_words")}),
    "layers": _list(_LAYER, 1),
    "files": _obj({name: _FILE_ENTRY for name in FILES if name != MANIFEST}),
})


def _target(d: dict) -> ArrayParams:
    """`params_from_json` with every integer and flag field checked for its JSON type first."""
    for f in dataclasses.fields(ArrayParams):
        if f.name in d and f.type in (int, bool) and type(d[f.name]) is not f.type:
            want = "an integer" if f.type is int else "true or false"
            raise _ManifestError(f"target.{f.name} must be {want}, got {d[f.name]!r}")
    try:
        return params_from_json(d)
    except (KeyError, TypeError, ValueError) as e:
        raise _ManifestError(f"target: {type(e).__name__}: {e}") from None


def _check_manifest(manifest) -> dict:
    """Check a parsed manifest.json against the schema and across fields; return it normalized
    (layer programs as {tokens: (first, count)}, the target as `ArrayParams`, the encoding as
    `WeightEncoding`). Raises `_ManifestError` naming the key and the problem."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _ManifestError(f"not a {FORMAT} manifest")
    if manifest.get("version") != VERSION or type(manifest.get("version")) is not int:
        raise _ManifestError(f"unknown artifact version {manifest.get('version')!r}; this tool "
                             f"reads version {VERSION}")
    m = _MANIFEST_SCHEMA(manifest, "")
    m["target"] = _target(m["target"])
    m["encoding"] = encoding = WeightEncoding[m["encoding"]]
    seen: set = set()
    for i, e in enumerate(m["layers"]):
        where = f"layers[{i}] ({e['name']})"
        if e["name"] in seen:
            raise _ManifestError(f"{where}: name appears twice")
        seen.add(e["name"])
        for tokens in sorted({1, m["token_batch"]} - set(e["programs"])):
            raise _ManifestError(f"{where}: no program for {tokens} token(s) (programs holds "
                             f"{sorted(e['programs'])}; 1 and token_batch are required)")
        if e["zeros"] > e["n"] * e["k"]:
            raise _ManifestError(f"{where}: zeros {e['zeros']} is more than its n * k = "
                             f"{e['n'] * e['k']} weights")
        # N:M layers carry their N; dense layers (and manifests older than N:M) have nm = 0.
        if not (NM_MIN_N <= e["nm"] <= NM_MAX_N if encoding == WeightEncoding.NM
                else e["nm"] == 0):
            raise _ManifestError(f"{where}: nm={e['nm']!r} is not valid for {encoding.name} "
                                 f"weights")
        words = weight_words(m["target"], e["n"], e["k"], encoding, e["nm"])
        if e["w_words"] != words:
            raise _ManifestError(f"{where}: w_words {e['w_words']}, but a {e['n']} x {e['k']} "
                                 f"projection takes {words} words at this target")
    mem = m["memory"]
    for i, e in enumerate(m["layers"]):
        if e["w_offset"] + e["w_words"] > mem["weights_words"]:
            raise _ManifestError(f"layers[{i}] ({e['name']}): its weights (words {e['w_offset']}"
                                 f"..{e['w_offset'] + e['w_words'] - 1}) run past the end of "
                                 f"weights.bin (memory.weights_words = {mem['weights_words']})")
    if not mem["weights_words"] <= mem["x_base"] < mem["y_base"]:
        raise _ManifestError(f"memory: x_base {mem['x_base']} and y_base {mem['y_base']} must lie "
                             f"past the weights (word {mem['weights_words']}), x_base first")
    return m


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
        """Load and check an artifact; `verify` also checks the SHA-256 of both files and of
        every layer's weight image (one more pass over the weights)."""
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise ArtifactError(f"{path}: not an artifact directory")
        if mpath.is_dir():
            raise ArtifactError(f"{mpath}: is a directory, not a manifest")
        try:
            manifest = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{mpath}: missing (not an artifact directory?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
        except OSError as e:
            raise ArtifactError(f"{mpath}: cannot be read ({e.strerror or e})") from None
        try:
            m = _check_manifest(manifest)
        except _ManifestError as e:
            raise ArtifactError(f"{mpath}: {e}") from None
        params, encoding, files = m["target"], m["encoding"], m["files"]
        layers = [LayerEntry(**e) for e in m["layers"]]
        arrays = {}
        for fname, shape_of in (("weights.bin", params.port_bytes), ("programs.bin", INSTR_BYTES)):
            fpath = path / fname
            meta = files[fname]
            if not fpath.exists():
                raise ArtifactError(f"{fpath}: missing")
            if not fpath.is_file():
                raise ArtifactError(f"{fpath}: not a regular file")
            size = fpath.stat().st_size
            if size != meta["bytes"]:
                raise ArtifactError(f"{fpath}: {size} bytes, the manifest says {meta['bytes']} "
                                    f"(truncated or replaced?)")
            if size % shape_of:
                raise ArtifactError(f"{fpath}: {size} bytes is not a whole number of "
                                    f"{shape_of}-byte words")
            if verify and _sha256(fpath) != meta["sha256"]:
                raise ArtifactError(f"{fpath}: checksum mismatch (damaged)")
            arrays[fname] = (np.memmap(fpath, np.uint8, "r").reshape(-1, shape_of) if size
                             else np.zeros((0, shape_of), np.uint8))
        mem = m["memory"]
        art = cls(path, manifest, params, encoding, layers, arrays["weights.bin"],
                  arrays["programs.bin"], mem["x_base"], mem["y_base"], m["token_batch"])
        for e in layers:
            if e.w_offset + e.w_words > len(art.weights):
                raise ArtifactError(f"{mpath}: layer {e.name} runs past the end of weights.bin")
            for first, count in e.programs.values():
                if first + count > len(art.programs):
                    raise ArtifactError(f"{mpath}: layer {e.name} program runs past programs.bin")
            # The whole-file hash proves weights.bin intact; this one proves that the layer
            # table points at the right slice of it.
            if verify and hashlib.sha256(art.layer_weights(e)).hexdigest() != e.sha256:
                raise ArtifactError(f"{mpath}: layer {e.name}: its weights (words {e.w_offset}.."
                                    f"{e.w_offset + e.w_words - 1}) do not match its sha256 "
                                    f"(w_offset or w_words altered?)")
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


# -- output directories ---------------------------------------------------------------------------
#
# The tools that write a directory (compiler.lower, compiler.nm, compiler.synth) build it in a
# temporary sibling and rename it into place, and replace an existing directory only when it
# holds nothing but their own output: a mistyped -o never costs the user a file.

def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is not a directory (so `path` cannot be
    created), else None."""
    for up in (path, *path.parents):
        if up.exists() or up.is_symlink():
            return up if up != path and not up.is_dir() else None
    return None


def _problem(path: Path, e: OSError) -> str:
    """One line for an OSError met while creating or writing `path`."""
    up = _file_above(path)
    if up is not None:
        return f"{path}: cannot be created: {up} is not a directory"
    return f"{path}: cannot be written ({e.strerror or e})"


@contextlib.contextmanager
def os_errors(path: Path, error: type[Exception]) -> Iterator[None]:
    """Turn an OSError (disk full, read-only file system, ...) into a one-line `error`."""
    try:
        yield
    except OSError as e:
        raise error(_problem(Path(path), e)) from None


def check_replaceable(dest: Path, owns: Callable[[str], bool], what: str,
                      is_own: Callable[[Path], bool] | None, error: type[Exception]) -> None:
    """Refuse with a one-line `error` unless `dest` is absent, an empty directory, or a
    directory of regular files whose names `owns` accepts and which `is_own` (if given)
    recognizes as `what`."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        up = _file_above(dest)
        if up is not None:
            raise error(f"{dest}: cannot be created: {up} is not a directory")
        return
    if dest.is_symlink() or not dest.is_dir():
        kind = "a symbolic link" if dest.is_symlink() else "not a directory"
        raise error(f"{dest}: exists and is {kind}; refusing to replace it")
    with os_errors(dest, error):
        entries = list(os.scandir(dest))
    foreign = sorted(e.name for e in entries
                     if not (owns(e.name) and e.is_file(follow_symlinks=False)))
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise error(f"{dest}: exists and is not {what} (it holds {', '.join(foreign[:3])}"
                    f"{more}); refusing to replace it")
    if entries and is_own is not None and not is_own(dest):
        raise error(f"{dest}: exists and is not {what}; refusing to replace it")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stage_directory(dest: Path, error: type[Exception]) -> Path:
    """Create (with parents) the temporary sibling of `dest` that `commit_directory` renames."""
    dest = Path(dest)
    with os_errors(dest, error):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        os.chmod(tmp, 0o777 & ~_umask())          # mkdtemp makes it 0700
    return tmp


def commit_directory(tmp: Path, dest: Path, error: type[Exception]) -> Path:
    """Rename `tmp` to `dest`. An existing `dest` (checked replaceable before) is first moved to
    a fresh temporary name, removed afterwards, and put back if the rename fails. SIGINT and
    SIGTERM wait until both renames are done."""
    old = None
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        with os_errors(dest, error):
            if dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
                os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except OSError:
                if old is not None:
                    os.replace(old, dest)
                    old = None
                raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def write_directory(dest: Path, fill: Callable[[Path], None], recheck: Callable[[], None],
                    error: type[Exception]) -> Path:
    """Build `dest` with `fill(tmp)` in a temporary sibling, call `recheck()` (the destination
    may have changed meanwhile), then rename it into place (`commit_directory`); on any
    failure the temporary directory is removed and nothing else is touched."""
    dest = Path(dest)
    tmp = stage_directory(dest, error)
    try:
        with os_errors(dest, error):
            fill(tmp)
        recheck()
        return commit_directory(tmp, dest, error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def has_format(path: Path, name: str, fmt: str) -> bool:
    """True when `path`/`name` is a JSON object whose "format" is `fmt` (the marker of a
    directory this project wrote, however damaged the rest)."""
    try:
        doc = json.loads((Path(path) / name).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == fmt


def is_artifact(path: Path) -> bool:
    """True when `path` holds a manifest.json of this format (however damaged the rest)."""
    return has_format(path, MANIFEST, FORMAT)


def check_artifact_destination(dest: Path) -> None:
    """Refuse `dest` unless it is absent, empty, or an artifact this tool wrote (only FILES)."""
    check_replaceable(dest, FILES.__contains__, "an artifact", is_artifact, ArtifactError)


class ArtifactWriter:
    """Write an artifact into a temporary directory; `commit()` renames it into place.

    Nothing appears at the destination unless `commit()` runs: a failure part-way leaves no
    partial artifact (`abort()` removes the temporary directory).
    """

    def __init__(self, dest: Path, params: ArrayParams, encoding: WeightEncoding,
                 token_batch: int):
        self.dest = Path(dest)
        check_artifact_destination(self.dest)
        self.params = params
        self.encoding = WeightEncoding(encoding)
        self.token_batch = token_batch
        self.whash = hashlib.sha256()
        self.phash = hashlib.sha256()
        self.w_words = 0
        self.p_count = 0
        self.layers: list = []
        self.tmp = stage_directory(self.dest, ArtifactError)
        try:
            with self._writing():
                self.wfile = open(self.tmp / "weights.bin", "wb")   # noqa: SIM115 (closed in commit)
                self.pfile = open(self.tmp / "programs.bin", "wb")  # noqa: SIM115
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _writing(self):
        return os_errors(self.dest, ArtifactError)

    def add_weights(self, image: np.ndarray) -> tuple:
        """Append a weight image (words, P); return (first word, words, sha256)."""
        data = np.ascontiguousarray(image, np.uint8)
        if data.ndim != 2 or data.shape[1] != self.params.port_bytes:
            raise ValueError(f"weight image of shape {data.shape} is not (words, "
                             f"{self.params.port_bytes})")
        raw = data.tobytes()
        with self._writing():
            self.wfile.write(raw)
        self.whash.update(raw)
        first = self.w_words
        self.w_words += len(data)
        return first, len(data), hashlib.sha256(raw).hexdigest()

    def add_program(self, words: list) -> tuple:
        raw = b"".join(w.to_bytes(INSTR_BYTES, "little") for w in words)
        with self._writing():
            self.pfile.write(raw)
        self.phash.update(raw)
        first = self.p_count
        self.p_count += len(words)
        return first, len(words)

    def commit(self, model: dict, memory: dict, totals: dict) -> Path:
        with self._writing():
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
        try:
            text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
        except ValueError as e:              # NaN or Infinity: not JSON, never written
            raise ArtifactError(f"{self.dest}: the manifest would hold a non-finite number "
                                f"({e})") from None
        with self._writing():
            (self.tmp / MANIFEST).write_text(text)
        check_artifact_destination(self.dest)    # again: it may have changed meanwhile
        return commit_directory(self.tmp, self.dest, ArtifactError)

    def abort(self) -> None:
        for f in (self.wfile, self.pfile):
            with contextlib.suppress(OSError):      # a full disk fails the flush too
                f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
