"""N:M weights end to end: the tiling plan, the weight image layout, `compiler.lower --nm`, and
the artifact on the simulator (`sim.run`, `sim.generate`) against the golden numerics and the
dense artifact of the same sparse checkpoint."""

import json
import shutil

import numpy as np
import pytest

from compiler import lower as lower_mod
from compiler import nm
from compiler.artifact import Artifact, ArtifactError
from compiler.checkpoint import Checkpoint
from compiler.lower import lower
from compiler.synth import SHAPES, make_checkpoint
from compiler.tiling import (
    pack_activation_image,
    pack_weight_image,
    plan_projection,
    unpack_results,
    unpack_weight_image,
)
from rtl.isa import (
    NM_EMPTY,
    NM_M,
    NM_MAX_N,
    NM_MIN_N,
    NM_SLOT_BITS,
    NM_SLOTS_PER_BYTE,
    NM_WORDS_PER_ROW,
    Buffer,
    Load,
    MatMul,
    Status,
    WeightEncoding,
    nm_bits_per_weight,
)
from rtl.params import scale_point
from sim.backend import Job, MemoryImage
from sim.generate import main as generate_main
from sim.golden import ternary_matmul
from sim.machine import Simulator
from sim.run import main as run_main
from sim.run import make_backend, run_artifact, run_layer

NM = WeightEncoding.NM
#: The scale point that implements N:M weights.
TARGET = "default"
P = scale_point(TARGET)
CALIB = [[1, 7, 19, 42, 100, 3, 250, 8, 64, 5, 77, 31], [9, 2, 200, 13, 55, 81]]


def sparse_weights(seed: int, n: int, k: int, slots: int) -> np.ndarray:
    """(n, k) ternary weights with exactly min(slots, columns) non-zero weights per group."""
    rng = np.random.default_rng(seed)
    groups = -(-k // NM_M)
    w = rng.choice(np.array([-1, 1], np.int8), (n, groups, NM_M))
    rank = np.argsort(rng.random(w.shape), axis=2).argsort(axis=2)
    w = np.where(rank < slots, w, 0).astype(np.int8).reshape(n, -1)
    return np.ascontiguousarray(w[:, :k])


# -- the plan -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, k, tokens, slots", [
    (160, 64, 1, 4), (600, 100, 3, 2), (1100, 2600, 1, 7), (700, 1000, 130, 3),
    (512, 8, 1, 2), (2560, 6912, 1, 5),
])
def test_plan_structure(n, k, tokens, slots):
    plan = plan_projection(P, n, k, tokens, NM, nm=slots)
    wslot = P.wbuf_rows // plan.slots
    groups = -(-k // NM_M)
    assert plan.nm == slots and plan.rows_per_tile == P.nm_rows
    assert plan.tile_words == groups * slots * NM_WORDS_PER_ROW
    assert plan.w_words == -(-n // P.nm_rows) * plan.tile_words
    assert plan.k_tile % (P.port_bytes // P.token_lanes) == 0
    assert -(-plan.k_tile // NM_M) * slots <= wslot
    prog = plan.program
    covered = np.zeros(plan.w_words, np.int64)
    for a, b in zip(prog, prog[1:]):
        if isinstance(a, Load) and a.buffer == Buffer.WEIGHT:
            assert isinstance(b, MatMul)
            steps = b.k_len // NM_M * slots
            assert a.encoding == NM and a.rows == 1 and a.length % NM_WORDS_PER_ROW == 0
            assert a.length == steps * NM_WORDS_PER_ROW and a.sram == b.wbuf
            assert b.wbuf % wslot == 0 and steps <= wslot
            assert b.nm == slots and b.k_len % NM_M == 0 and 0 < b.n_rows <= P.nm_rows
            start = a.dram - plan.w_base
            covered[start:start + a.length] += 1
    batches = -(-tokens // plan.token_batch)
    assert (covered == batches).all(), "weight LOADs must read every word once per batch"
    assert all(not isinstance(i, MatMul) or i.nm == slots for i in prog)


def test_plan_k_tile_bounded_by_the_weight_slot():
    # 7 slots per group: a k-tile of kl columns takes ceil(kl / 8) * 7 buffer rows.
    plan = plan_projection(P, 640, 8192, 200, NM, nm=NM_MAX_N)
    wslot = P.wbuf_rows // plan.slots
    assert -(-plan.k_tile // NM_M) * NM_MAX_N <= wslot
    # A 512-row slot: 576 columns (72 groups, 504 rows) fit, 640 (80 groups, 560 rows) do not.
    assert wslot == 512 and P.port_bytes // P.token_lanes == 64
    assert plan_projection(P, 640, 8192, 1, NM, nm=NM_MAX_N, k_tile=576).k_tile == 576
    with pytest.raises(ValueError, match="k_tile=640 must be a multiple of 64 and <= 576"):
        plan_projection(P, 640, 8192, 1, NM, nm=NM_MAX_N, k_tile=640)


@pytest.mark.parametrize("encoding, slots, target, match", [
    (NM, 0, TARGET, "N in 2..7"), (NM, NM_MAX_N + 1, TARGET, "N in 2..7"),
    (NM, 1, TARGET, "N in 2..7"), (WeightEncoding.BASE3, 4, TARGET, "only for NM"),
    (NM, 4, "tiny", "not enabled"),
])
def test_plan_refusals(encoding, slots, target, match):
    with pytest.raises(ValueError, match=match):
        plan_projection(scale_point(target), 64, 64, 1, encoding, nm=slots)


def test_dense_plans_have_nm_zero():
    plan = plan_projection(P, 640, 256, 3, WeightEncoding.BASE3)
    assert plan.nm == 0 and plan.w_words == plan.n_tiles * plan.k
    assert all(i.nm == 0 for i in plan.program if isinstance(i, MatMul))


# -- the weight image ---------------------------------------------------------------------------

@pytest.mark.parametrize("row, col, slots", [
    (0, 0, 2), (1, 3, 4), (2 * P.port_bytes + 5, 17, 3), (P.nm_rows + 6, 9, 2),
    (700, 7, 5),          # a lone weight at column 7 of its group: slot 1, d = 6
])
@pytest.mark.parametrize("sign", [1, -1])
def test_weight_image_layout(row, col, slots, sign):
    n, k = 800, 40
    w = np.zeros((n, k), np.int8)
    w[row, col] = sign
    plan = plan_projection(P, n, k, 1, NM, nm=slots)
    image = pack_weight_image(plan, w)
    tile, lane = divmod(row, P.nm_rows)
    q, d = divmod(col, NM_M)
    c = 1 if d == NM_M - 1 else 0
    half, pos = divmod(lane, NM_SLOTS_PER_BYTE * P.port_bytes)
    byte, nibble = divmod(pos, NM_SLOTS_PER_BYTE)
    word = tile * plan.tile_words + (q * slots + c) * NM_WORDS_PER_ROW + half
    want = np.full_like(image, NM_EMPTY * 0x11)
    code = (d - c) | (1 << (NM_SLOT_BITS - 1) if sign < 0 else 0)
    shift = NM_SLOT_BITS * nibble
    other = NM_EMPTY << (NM_SLOT_BITS * (1 - nibble))     # the byte's other lane: empty
    want[word, byte] = other | code << shift
    np.testing.assert_array_equal(image, want)
    np.testing.assert_array_equal(unpack_weight_image(plan, image), w)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n, k, slots", [(64, 160, 4), (600, 100, 2), (1100, 37, 7)])
def test_weight_image_round_trip(seed, n, k, slots):
    w = sparse_weights(seed, n, k, slots)
    plan = plan_projection(P, n, k, 1, NM, nm=slots)
    image = pack_weight_image(plan, w)
    assert image.shape == (plan.w_words, P.port_bytes) and image.dtype == np.uint8
    np.testing.assert_array_equal(unpack_weight_image(plan, image), w, err_msg=f"seed={seed}")


def test_weight_image_refuses_a_group_too_dense():
    w = sparse_weights(3, 64, 64, 4)
    w[5, 8:16] = 1
    plan = plan_projection(P, 64, 64, 1, NM, nm=4)
    with pytest.raises(ValueError, match=r"row 5, group 1 \(columns 8\.\.15\) holds 8"):
        pack_weight_image(plan, w)


@pytest.mark.parametrize("n, k, tokens, slots", [
    (160, 64, 1, 4), (600, 100, 3, 2), (1100, 1300, 1, 7), (530, 37, 70, 3), (64, 600, 5, 6),
])
def test_projection_runs_bit_exact_on_simulator(n, k, tokens, slots):
    """Plan, pack and run one projection: k not a multiple of 8, several row and k-tiles, more
    tokens than one batch."""
    seed = n + k + tokens
    w = sparse_weights(seed, n, k, slots)
    x_q = np.random.default_rng(seed).integers(-128, 128, (tokens, k), dtype=np.int8)
    plan = plan_projection(P, n, k, tokens, NM, nm=slots)
    mem = MemoryImage(P.port_bytes)
    mem.add(plan.w_base, pack_weight_image(plan, w))
    mem.add(plan.x_base, pack_activation_image(plan, x_q))
    result = Simulator(P).run([Job(list(plan.program), mem)])[0]
    assert result.status == Status.DONE, (result.status, result.error, result.error_pc)
    y = unpack_results(plan, result.region(plan.y_base, plan.y_words))
    np.testing.assert_array_equal(y, ternary_matmul(x_q, w), err_msg=f"seed={seed}")


# -- lowering and running -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense float checkpoint, the same pruned to 4:8, and pruned per layer (3:8 and 5:8)."""
    root = tmp_path_factory.mktemp("nm_lower")
    dense = make_checkpoint(root / "dense", "tiny", packed=False, seed=5)
    nm.prune(dense, root / "s4", 4, CALIB)
    nm.prune(dense, root / "auto", None, CALIB, base=4)
    return {"dense": dense, "s4": root / "s4", "auto": root / "auto"}


@pytest.fixture(scope="module")
def lowered(models, tmp_path_factory):
    """(artifact directory, summary) for: 4:8 and auto of the 4:8 model, auto of the per-layer
    model, and the dense base-3 artifact of the 4:8 model."""
    root = tmp_path_factory.mktemp("arts")
    return {
        "4:8": (root / "s4-nm4", lower(models["s4"], root / "s4-nm4", TARGET, nm=4)),
        "auto": (root / "s4-auto", lower(models["s4"], root / "s4-auto", TARGET, nm="auto")),
        "layers": (root / "l-auto", lower(models["auto"], root / "l-auto", TARGET, nm="auto")),
        "base3": (root / "s4-b3", lower(models["s4"], root / "s4-b3", TARGET)),
    }


def max_group(w_t: np.ndarray) -> int:
    n, k = w_t.shape
    padded = np.zeros((n, -(-k // NM_M) * NM_M), np.int8)
    padded[:, :k] = w_t
    return int(np.count_nonzero(padded.reshape(n, -1, NM_M), axis=2).max())


@pytest.mark.parametrize("which", ["4:8", "auto", "layers"])
def test_nm_artifact_holds_the_checkpoint_weights(models, lowered, which):
    path, summary = lowered[which]
    art = Artifact.load(path)
    ckpt = Checkpoint(models["auto" if which == "layers" else "s4"])
    assert art.encoding == NM and summary["encoding"] == "NM"
    for e, pr in zip(art.layers, ckpt.projections()):
        w_t, _ = ckpt.ternary(pr)
        want = 4 if which == "4:8" else max(NM_MIN_N, max_group(w_t))
        assert e.nm == want, e.name
        plan = art.plan(e, 1)
        assert plan.nm == e.nm and e.w_words == plan.w_words
        np.testing.assert_array_equal(unpack_weight_image(plan, art.layer_weights(e)), w_t)
    ns = sorted({e.nm for e in art.layers})
    if which == "layers":
        assert ns == [3, 5], "compiler.nm's allocation gives one layer 3:8, the other 5:8"
    counts = {f"{n}:{NM_M}": sum(e.nm == n for e in art.layers) for n in ns}
    assert summary["nm"] == counts
    weights = sum(e.n * e.k for e in art.layers)
    assert summary["nm_bits_per_weight"] == pytest.approx(
        sum(e.n * e.k * nm_bits_per_weight(e.nm) for e in art.layers) / weights)
    assert summary["bits_per_weight"] == pytest.approx(8 * summary["weight_bytes"] / weights)
    assert summary["weight_bytes"] == sum(e.w_words for e in art.layers) * P.port_bytes
    assert summary["base3_weight_bytes"] == lowered["base3"][1]["weight_bytes"]


@pytest.mark.parametrize("which", ["4:8", "auto", "layers"])
def test_nm_artifact_runs_bit_exact_on_simulator(lowered, which):
    art = Artifact.load(lowered[which][0])
    for tokens in (1, 3, art.token_batch + 1):
        reports = run_artifact(art, tokens=tokens, check=True, seed=tokens)
        assert all(r.exact for r in reports), f"{which} tokens={tokens}"


def test_nm_and_dense_artifacts_compute_the_same_products(lowered):
    """The same sparse checkpoint and activations: the same int32 results."""
    a_nm, a_b3 = (Artifact.load(lowered[w][0]) for w in ("4:8", "base3"))
    be = make_backend("sim", P)
    rng = np.random.default_rng(7)
    for e_nm, e_b3 in zip(a_nm.layers, a_b3.layers):
        x_q = rng.integers(-128, 128, (5, e_nm.k), dtype=np.int8)
        y_nm, _ = run_layer(a_nm, e_nm, x_q, be)
        y_b3, _ = run_layer(a_b3, e_b3, x_q, be)
        np.testing.assert_array_equal(y_nm, y_b3, err_msg=e_nm.name)


def test_nm_lowering_is_reproducible_and_default_output(models, lowered):
    dest = models["s4"] / "accel-default-nm"
    try:
        s = lower(models["s4"], None, TARGET, nm=4)
        assert s["artifact"] == str(dest)
        for f in ("weights.bin", "programs.bin"):
            assert (dest / f).read_bytes() == (lowered["4:8"][0] / f).read_bytes(), f
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_manifest_nm_field_and_old_manifests(lowered, tmp_path):
    dense = tmp_path / "dense"
    shutil.copytree(lowered["base3"][0], dense)
    mpath = dense / "manifest.json"
    manifest = json.loads(mpath.read_text())
    assert all(e["nm"] == 0 for e in manifest["layers"])
    for e in manifest["layers"]:       # as written before N:M existed
        del e["nm"]
    mpath.write_text(json.dumps(manifest))
    art = Artifact.load(dense)
    assert all(e.nm == 0 for e in art.layers)
    assert all(r.exact for r in run_artifact(art, tokens=2, check=True))
    manifest["layers"][0]["nm"] = 4
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="nm=4 is not valid for BASE3"):
        Artifact.load(dense)
    sparse = tmp_path / "sparse"
    shutil.copytree(lowered["4:8"][0], sparse)
    manifest = json.loads((sparse / "manifest.json").read_text())
    assert {e["nm"] for e in manifest["layers"]} == {4}
    manifest["layers"][3]["nm"] = 0
    (sparse / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="nm=0 is not valid for NM"):
        Artifact.load(sparse)


def test_sim_run_cli_on_nm_artifact(lowered, capsys):
    assert run_main([str(lowered["auto"][0]), "--tokens", "2", "--check", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["encoding"] == "NM" and s["total"]["exact"] is True and len(s["layers"]) == 14


def test_generate_with_nm_artifact_matches_dense(models, lowered, tmp_path, capsys):
    args = [str(models["s4"]), "--prompt-ids", "1,7,19,42", "--max-new-tokens", "4", "--json"]
    runs = {}
    for which in ("4:8", "base3"):
        logits = tmp_path / f"{which.replace(':', '_')}.npy"
        rc = generate_main([*args, "--artifact", str(lowered[which][0]), "--check",
                            "--logits", str(logits)])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["artifact"] == str(lowered[which][0])
        runs[which] = (out, np.load(logits))
    assert runs["4:8"][0]["new_ids"] == runs["base3"][0]["new_ids"]
    np.testing.assert_array_equal(runs["4:8"][1], runs["base3"][1])
    assert generate_main([*args, "--backend", "golden"]) == 0
    assert json.loads(capsys.readouterr().out)["new_ids"] == runs["4:8"][0]["new_ids"]


def test_generate_refuses_an_artifact_of_another_model(models, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "other", {**SHAPES["tiny"], "intermediate_size": 96},
                            packed=True, seed=1)
    lower(other, tmp_path / "art", TARGET)
    rc = generate_main([str(models["s4"]), "--prompt-ids", "1,2", "--artifact",
                        str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "projections are not those of" in err


# -- the command line ---------------------------------------------------------------------------

def expect_error(capsys, fragment: str, argv: list, out=None) -> None:
    assert lower_mod.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_cli_refuses_a_dense_checkpoint(models, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(capsys, "model.layers.0.self_attn.q_proj.weight: row ",
                 [models["dense"], "--nm", "4:8", "-o", out], out)
    expect_error(capsys, "python -m compiler.nm", [models["dense"], "--nm", "4:8", "-o", out],
                 out)
    expect_error(capsys, "hold 8 non-zero weights, more than the 7 slots",
                 [models["dense"], "--nm", "auto", "-o", out], out)


def test_cli_refuses_too_few_slots(models, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(capsys, "more than 3 (not 3:8 sparse", [models["s4"], "--nm", "3:8", "-o", out],
                 out)


@pytest.mark.parametrize("argv, fragment", [
    (["--nm", "4:8", "--target", "tiny"], "target tiny does not implement NM weights"),
    (["--nm", "1:8"], "N in 2..7"),
    (["--nm", "8:8"], "N in 2..7"),
    (["--nm", "4:16"], "M = 8"),
    (["--nm", "half"], "--nm must be N:8"),
])
def test_cli_refuses_bad_nm(models, tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    expect_error(capsys, fragment, [models["s4"], *argv, "-o", out], out)


def test_cli_nm_and_weights_are_exclusive(models, capsys):
    with pytest.raises(SystemExit) as e:
        lower_mod.main([str(models["s4"]), "--nm", "4:8", "--weights", "2bit"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_cli_json_and_table(models, tmp_path, capsys):
    assert lower_mod.main([str(models["s4"]), "--nm", "auto", "-o", str(tmp_path / "a"),
                           "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["encoding"] == "NM" and s["nm"] == {"4:8": 14}
    assert s["nm_bits_per_weight"] == 2.0 == s["density_limit_bits"]
    assert s["base3_weight_bytes"] > 0 and s["base3_bits_per_weight"] > 0
    assert lower_mod.main([str(models["s4"]), "--nm", "4:8", "-o", str(tmp_path / "a")]) == 0
    table = capsys.readouterr().out
    assert "4:8 x 14 projections" in table and "dense base-3" in table


def test_cli_help_mentions_nm(capsys):
    with pytest.raises(SystemExit):
        lower_mod.main(["--help"])
    text = capsys.readouterr().out
    assert "--nm N:8|auto" in text and "compiler.nm" in text
