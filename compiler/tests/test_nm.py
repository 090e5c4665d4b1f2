"""compiler.nm: the Standardized Importance metric, N:M masks, the per-layer allocation, the
float encoding that the checkpoint reader turns back into the sparse ternary weights, the whole
pass with calibration through the host model, the logit evaluation, and every refusal."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from compiler import nm
from compiler.checkpoint import Checkpoint
from compiler.synth import make_checkpoint, write_safetensors
from sim.golden import absmean_ternarize
from sim.host import HostModel

CALIB = [[1, 7, 19, 42, 100, 3, 250, 8, 64, 5, 77, 31], [9, 2, 200, 13, 55, 81]]
EVAL_IDS = [11, 23, 37, 150, 6, 91, 240, 18, 4, 66, 120, 33, 71, 2, 199, 58]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("nm") / "dense", "tiny", packed=False, seed=5)


@pytest.fixture(scope="module")
def x_norm(dense):
    return nm.calibrate(HostModel(dense, "golden"), CALIB)


@pytest.fixture(scope="module")
def pruned(dense, tmp_path_factory):
    """N -> (output directory, summary) for the tiny model pruned to N:8."""
    root = tmp_path_factory.mktemp("pruned")
    return {n: (root / f"s{n}", nm.prune(dense, root / f"s{n}", n, CALIB)) for n in (2, 4, 6)}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = nm.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def expect_cli_error(capsys, fragment: str, *argv) -> None:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and fragment in err, err


# -- the metric and the mask ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standardized_importance_matches_direct_transcription(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((5, 16)).astype(np.float32)
    w[2, 3] = 0.0
    x_norm = rng.uniform(0, 4, 16)
    want = np.zeros((5, 16))
    for i in range(5):
        for j in range(16):
            col = sum(abs(float(w[r, j])) for r in range(5))      # sum over outputs i
            row = sum(abs(float(w[i, c])) for c in range(16))     # sum over inputs j
            want[i, j] = (abs(float(w[i, j])) / col + abs(float(w[i, j])) / row) \
                * math.sqrt(x_norm[j])
    got = nm.standardized_importance(w, x_norm)
    np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"seed={seed}")


def test_standardized_importance_axes_and_zero_columns():
    # One output row, two inputs: sum_i runs over the single row, so that term is 1 per weight.
    w = np.array([[1.0, 3.0]], dtype=np.float32)
    s = nm.standardized_importance(w, np.array([4.0, 1.0]))
    np.testing.assert_allclose(s, [[(1 + 1 / 4) * 2, (1 + 3 / 4) * 1]])
    z = nm.standardized_importance(np.zeros((2, 8), np.float32), np.ones(8))
    assert (z == 0).all()
    with pytest.raises(ValueError, match="x_norm"):
        nm.standardized_importance(w, np.array([1.0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", range(1, 8))
def test_nm_mask_keeps_the_n_largest_of_every_group(seed, n):
    rng = np.random.default_rng(seed)
    score = rng.random((6, 40))
    mask = nm.nm_mask(score, n)
    groups = mask.reshape(6, 5, 8)
    assert (groups.sum(axis=-1) == n).all(), f"seed={seed} n={n}"
    s = score.reshape(6, 5, 8)
    kept_min = np.where(groups, s, np.inf).min(axis=-1)
    dropped_max = np.where(groups, -np.inf, s).max(axis=-1)
    assert (kept_min > dropped_max).all(), f"seed={seed} n={n}"


def test_nm_mask_ties_go_to_the_lower_index():
    score = np.array([[1.0] * 8 + [0, 3, 3, 3, 0, 2, 3, 0]])
    mask = nm.nm_mask(score, 2)
    assert mask[0, :8].tolist() == [True, True] + [False] * 6
    assert np.flatnonzero(mask[0, 8:]).tolist() == [1, 2]
    assert np.flatnonzero(nm.nm_mask(score, 4)[0, 8:]).tolist() == [1, 2, 3, 6]
    for _ in range(3):
        assert np.array_equal(nm.nm_mask(score, 3), nm.nm_mask(score.copy(), 3))


def test_nm_mask_first_ranks_above_any_score():
    score = np.array([[9.0, 8, 7, 6, 5, 4, 3, 2]])
    first = np.array([[False, True, False, True, False, False, True, False]])
    assert np.flatnonzero(nm.nm_mask(score, 2, first=first)).tolist() == [1, 3]
    assert np.flatnonzero(nm.nm_mask(score, 4, first=first)).tolist() == [0, 1, 3, 6]


@pytest.mark.parametrize("n", [1, 4, 7])
def test_sparsify_ternary_keeps_dense_values_and_gamma(n):
    rng = np.random.default_rng(n)
    w = (rng.standard_normal((16, 64)) / 8).astype(np.float32)
    sp = nm.sparsify(w, rng.uniform(0.5, 2, 64), n)
    w_t, gamma = absmean_ternarize(w)
    assert sp.scale == gamma == sp.dense_gamma
    assert np.array_equal(sp.values, w_t * sp.mask)
    assert (sp.mask.reshape(16, 8, 8).sum(-1) == n).all()
    nz = np.count_nonzero(sp.values.reshape(16, 8, 8), axis=-1)
    dense_nz = np.count_nonzero(w_t.reshape(16, 8, 8), axis=-1)
    assert (nz == np.minimum(n, dense_nz)).all(), "a kept zero displaced a non-zero weight"


def test_sparsify_binary_keeps_signs_and_alpha():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((8, 32)) / 8).astype(np.float32)
    sp = nm.sparsify(w, np.ones(32), 3, binary=True)
    assert np.array_equal(sp.values != 0, sp.mask)
    assert np.array_equal(sp.values[sp.mask], np.where(w[sp.mask] >= 0, 1, -1))
    np.testing.assert_allclose(sp.scale, np.abs(w[sp.mask]).mean(), rtol=1e-6)


# -- allocation -----------------------------------------------------------------------------------

def test_outlier_ratio_counts_values_above_six_times_the_mean():
    a = np.ones(1000)
    a[:10] = 1000.0                    # mean 10.99, threshold 65.9: exactly 10 outliers
    assert nm.outlier_ratio([a]) == 0.01
    assert nm.outlier_ratio([a, np.ones(1000)]) == 10 / 2000   # the layer's values together


def test_allocate_on_a_synthetic_outlier_pattern():
    rng = np.random.default_rng(0)
    layers = []
    for i in range(32):                # outliers planted: many early, few late
        s = rng.random(4000)
        planted = 200 - 6 * i
        s[:planted] = 100.0
        layers.append(s)
    ratios = [nm.outlier_ratio([s]) for s in layers]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > ratios[-1]
    alloc = nm.allocate(ratios, base=4)
    assert alloc == [6] * 4 + [4] * 20 + [3] * 8
    assert sum(alloc) == 4 * 32
    assert nm.allocate(ratios[::-1], base=3) == [2] * 8 + [3] * 20 + [5] * 4


@pytest.mark.parametrize("layers", [1, 2, 3, 5, 7, 30])
def test_allocate_keeps_the_mean_at_the_base(layers):
    ratios = list(np.random.default_rng(layers).random(layers))
    for base in (2, 3, 4, 5):
        alloc = nm.allocate(ratios, base)
        assert sum(alloc) == base * layers and all(1 <= n <= 7 for n in alloc), (layers, base)
        top = int(np.argmax(ratios))
        assert alloc[top] == max(alloc)


def test_allocate_ties_rank_the_lower_layer_higher():
    assert nm.allocate([0.5, 0.5, 0.5, 0.5], 4) == [5, 4, 4, 3]


@pytest.mark.parametrize("base", [1, 6, 7])
def test_allocate_refuses_a_base_that_would_need_clamping(base):
    with pytest.raises(nm.NMError, match="base N in 2..5"):
        nm.allocate([0.1, 0.2], base)


# -- the float encoding ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 8), (32, 64), (160, 64), (256, 704)])
@pytest.mark.parametrize("n", [1, 4, 7])
def test_encode_float_reads_back_exactly(shape, n):
    rng = np.random.default_rng(shape[0] + n)
    w = (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(np.float32)
    sp = nm.sparsify(w, rng.uniform(0.1, 3, shape[1]), n)
    enc = nm.encode_float(sp.values, sp.scale)
    v = enc.materialize()
    assert v.dtype == np.float32
    w_t, gamma = absmean_ternarize(v)
    assert np.array_equal(w_t, sp.values) and gamma == sp.scale == enc.gamma, (shape, n)


def test_encode_float_binary_scale_is_the_nearest_reachable():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 64)).astype(np.float32)
    sp = nm.sparsify(w, np.ones(64), 5, binary=True)
    enc = nm.encode_float(sp.values, sp.scale, exact=False)
    w_t, gamma = absmean_ternarize(enc.materialize())
    assert np.array_equal(w_t, sp.values) and gamma == enc.gamma
    assert gamma >= sp.scale and gamma - sp.scale <= 4 * np.spacing(sp.scale)


def test_encode_float_refuses_an_empty_tensor():
    with pytest.raises(nm.NMError, match="no non-zero"):
        nm.encode_float(np.zeros((4, 8), np.int8), np.float32(0.1))


# -- calibration ----------------------------------------------------------------------------------

def test_calibration_records_each_projections_float_input(dense, x_norm):
    ckpt = Checkpoint(dense)
    cfg = ckpt.config
    assert set(x_norm) == {p.name for p in ckpt.projections()}
    # Layer 0's q, k, v see input_layernorm(embedding): computed here independently.
    norm_w = ckpt.norm("model.layers.0.input_layernorm.weight")
    sumsq = np.zeros(cfg.hidden_size)
    for seq in CALIB:
        x = np.asarray(ckpt.embedding()[seq], dtype=np.float32)
        x = (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(cfg.rms_norm_eps))
             ).astype(np.float32) * norm_w
        sumsq += (x.astype(np.float64) ** 2).sum(axis=0)
    for kind in ("q_proj", "k_proj", "v_proj"):
        np.testing.assert_allclose(x_norm[f"model.layers.0.self_attn.{kind}.weight"],
                                   np.sqrt(sumsq), rtol=1e-6)
    down = x_norm["model.layers.1.mlp.down_proj.weight"]
    # relu2 can silence a channel on every calibration token: its norm is then exactly 0
    assert down.shape == (cfg.intermediate_size,) and (down >= 0).all() and (down > 0).any()


def test_calibration_leaves_the_model_reset(dense):
    model = HostModel(dense, "golden")
    nm.calibrate(model, CALIB)
    assert model.position == 0 and model.on_projection_input is None


# -- the whole pass -------------------------------------------------------------------------------

def test_prune_round_trips_through_the_checkpoint_reader(dense, x_norm, pruned):
    out, summary = pruned[4]
    src, dst = Checkpoint(dense), Checkpoint(out)
    assert not dst.packed()
    for p, entry in zip(src.projections(), summary["projections"]):
        expect = nm.sparsify(np.asarray(src.read(p.name), np.float32), x_norm[p.name], 4)
        w_t, gamma = dst.ternary(p)
        dense_t, dense_gamma = src.ternary(p)
        assert np.array_equal(w_t, expect.values), p.name
        assert gamma == dense_gamma == np.float32(entry["scale"]), p.name
        assert np.all((w_t == 0) | (w_t == dense_t)), p.name
        assert (np.count_nonzero(w_t.reshape(p.n, -1, 8), axis=-1) <= 4).all(), p.name
        assert entry["n"] == 4 and entry["kept_fraction"] == 0.5
        assert entry["nonzero_fraction"] == np.count_nonzero(w_t) / w_t.size
    for name in src.names():
        if name not in {p.name for p in src.projections()}:
            assert src.info(name)[:2] == dst.info(name)[:2], name
            assert np.asarray(src.read(name)).tobytes() == np.asarray(dst.read(name)).tobytes()
    assert (out / "config.json").read_bytes() == (dense / "config.json").read_bytes()
    saved = json.loads((out / "nm.json").read_text())
    assert saved == {k: v for k, v in summary.items() if k not in ("out", "seconds")}
    assert [e["n"] for e in saved["layers"]] == [4, 4]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary left"


def test_prune_bit_counts(pruned):
    for n, (_, summary) in pruned.items():
        e = summary["projections"][0]
        assert e["nominal_bits"] == n / 8
        assert e["metadata_bits"] == pytest.approx(math.log2(math.comb(8, n)) / 8)
        assert e["value_bits"] == pytest.approx(n * math.log2(3) / 8)
        assert summary["totals"]["nominal_bits"] == pytest.approx(n / 8)
    assert pruned[4][1]["projections"][0]["metadata_bits"] == pytest.approx(0.766, abs=1e-3)


def test_prune_auto_allocates_per_layer(dense, tmp_path):
    summary = nm.prune(dense, tmp_path / "auto", None, CALIB, base=4)
    ratios = [e["outlier_ratio"] for e in summary["layers"]]
    assert [e["n"] for e in summary["layers"]] == nm.allocate(ratios, 4)
    assert sorted(e["n"] for e in summary["layers"]) == [3, 5]
    ckpt = Checkpoint(tmp_path / "auto")
    for p in ckpt.projections():
        n = summary["layers"][p.layer]["n"]
        groups = np.count_nonzero(ckpt.ternary(p)[0].reshape(p.n, -1, 8), axis=-1)
        assert (groups <= n).all() and groups.max() == n, p.name


def test_prune_binary_reads_back_as_plus_minus_one(dense, tmp_path):
    summary = nm.prune(dense, tmp_path / "bin", 3, CALIB, binary=True)
    ckpt = Checkpoint(tmp_path / "bin")
    for p, entry in zip(ckpt.projections(), summary["projections"]):
        w_t, gamma = ckpt.ternary(p)
        assert (np.count_nonzero(w_t.reshape(p.n, -1, 8), axis=-1) == 3).all(), p.name
        assert gamma == np.float32(entry["scale"])
        assert entry["value_bits"] == entry["nominal_bits"] == 3 / 8


def test_prune_replaces_an_earlier_output_and_leaves_nothing_on_failure(dense, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "o"
    nm.prune(dense, out, 5, CALIB)
    first = (out / "model.safetensors").read_bytes()
    nm.prune(dense, out, 5, CALIB)
    assert (out / "model.safetensors").read_bytes() == first
    nm.prune(dense, out, 3, CALIB)
    assert json.loads((out / "nm.json").read_text())["nm"] == "3:8"

    def broken(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(nm, "write_streaming", broken)
    with pytest.raises(nm.NMError, match="new: cannot be written \\(disk full\\)"):
        nm.prune(dense, tmp_path / "new", 4, CALIB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# -- evaluation -----------------------------------------------------------------------------------

def test_eval_of_the_dense_model_against_itself_is_exact(dense):
    r = nm.evaluate(dense, dense, [EVAL_IDS])
    assert r["mean_abs_error"] == r["max_abs_error"] == r["mean_kl"] == 0.0
    assert r["top1_agreement"] == 1.0 and r["positions"] == len(EVAL_IDS)
    assert r["logit_scale"] > 0


def test_eval_sparser_models_are_further_from_dense(dense, pruned):
    r = {n: nm.evaluate(dense, out, [EVAL_IDS, EVAL_IDS[::-1]]) for n, (out, _) in pruned.items()}
    assert r[2]["mean_rel_error"] > r[4]["mean_rel_error"] > r[6]["mean_rel_error"] > 0
    assert r[2]["mean_kl"] > r[6]["mean_kl"] > 0
    assert r[2]["top1_agreement"] < r[6]["top1_agreement"] <= 1.0
    assert r[6]["max_rel_error"] >= r[6]["mean_rel_error"]


# -- command line ---------------------------------------------------------------------------------

def test_cli_prune_and_eval(dense, tmp_path, capsys):
    ids = tmp_path / "calib.txt"
    ids.write_text("# calibration\n" + "\n".join(",".join(map(str, s)) for s in CALIB) + "\n")
    rc, out, _ = run_cli(capsys, dense, "--nm", "auto", "--calib", ids, "--out", tmp_path / "s",
                         "--json")
    assert rc == 0
    summary = json.loads(out)
    assert summary["nm"] == "auto" and summary["calibration"]["tokens"] == 18
    np.save(tmp_path / "eval.npy", np.array([EVAL_IDS]))
    rc, out, _ = run_cli(capsys, "eval", dense, tmp_path / "s", "--ids", tmp_path / "eval.npy",
                         "--json")
    assert rc == 0 and json.loads(out)["positions"] == len(EVAL_IDS)
    rc, out, _ = run_cli(capsys, "eval", dense, tmp_path / "s", "--ids", "1,2,3;4,5")
    assert rc == 0 and "top-1 agreement" in out
    rc, out, _ = run_cli(capsys, dense, "--nm", "6:8", "--calib", "1,2,3", "--out",
                         tmp_path / "t")
    assert rc == 0 and "6:8" in out and "metadata" in out


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        nm.main(["--help"])
    assert e.value.code == 0 and "--calib" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        nm.main(["eval", "--help"])
    assert e.value.code == 0 and "--ids" in capsys.readouterr().out


@pytest.mark.parametrize("bad, fragment", [
    ("8:8", "N must be in 1..7"), ("0:8", "N must be in 1..7"), ("2:4", "only M = 8"),
    ("4:16", "only M = 8"), ("half", "must be N:8"), ("4:8:1", "must be N:8"),
])
def test_cli_refuses_bad_nm(dense, tmp_path, capsys, bad, fragment):
    expect_cli_error(capsys, fragment, dense, "--nm", bad, "--calib", "1,2", "--out",
                     tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_bad_base(dense, tmp_path, capsys):
    expect_cli_error(capsys, "base N in 2..5", dense, "--nm", "auto", "--base", "6:8",
                     "--calib", "1,2", "--out", tmp_path / "o")
    expect_cli_error(capsys, "--base must be N:8", dense, "--nm", "auto", "--base", "auto",
                     "--calib", "1,2", "--out", tmp_path / "o")


def test_cli_refuses_missing_arguments(dense, tmp_path, capsys):
    expect_cli_error(capsys, "--calib is required", dense, "--nm", "4:8", "--out", tmp_path / "o")
    expect_cli_error(capsys, "--nm is required", dense, "--calib", "1", "--out", tmp_path / "o")
    expect_cli_error(capsys, "--out is required", dense, "--nm", "4:8", "--calib", "1")
    expect_cli_error(capsys, "--ids is required", "eval", dense, dense)


@pytest.mark.parametrize("calib, fragment", [
    ("missing.txt", "no such file"), ("1,2,x", "no such file"), ("1,2,256", "outside the vocab"),
    ("", "no token ids"), ("1,-2", "must be >= 0"),
])
def test_cli_refuses_bad_calibration(dense, tmp_path, capsys, calib, fragment):
    expect_cli_error(capsys, fragment, dense, "--nm", "4:8", "--calib", calib, "--out",
                     tmp_path / "o")


def test_cli_refuses_bad_calibration_files(dense, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    expect_cli_error(capsys, "holds no token ids", dense, "--nm", "4:8", "--calib",
                     tmp_path / "empty.txt", "--out", tmp_path / "o")
    (tmp_path / "words.txt").write_text("1 2 three\n")
    expect_cli_error(capsys, "line 1: 'three' is not an integer", dense, "--nm", "4:8",
                     "--calib", tmp_path / "words.txt", "--out", tmp_path / "o")
    np.save(tmp_path / "f.npy", np.ones((2, 3), np.float32))
    expect_cli_error(capsys, "integer array", dense, "--nm", "4:8", "--calib",
                     tmp_path / "f.npy", "--out", tmp_path / "o")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    expect_cli_error(capsys, "cannot be read as a .npy", dense, "--nm", "4:8", "--calib",
                     tmp_path / "junk.npy", "--out", tmp_path / "o")


def test_cli_refuses_a_packed_checkpoint(tmp_path, capsys):
    packed = make_checkpoint(tmp_path / "packed", "tiny", packed=True, seed=5)
    expect_cli_error(capsys, "needs the float latent weights", packed, "--nm", "4:8",
                     "--calib", "1,2", "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_unreadable_model(dense, tmp_path, capsys):
    expect_cli_error(capsys, "neither model.safetensors", tmp_path, "--nm", "4:8", "--calib",
                     "1,2", "--out", tmp_path / "o")
    expect_cli_error(capsys, "no such file", tmp_path / "absent", "--nm", "4:8", "--calib",
                     "1,2", "--out", tmp_path / "o")
    broken = make_checkpoint(tmp_path / "broken", "tiny", packed=False, seed=5)
    (broken / "config.json").write_text("{not json")
    expect_cli_error(capsys, "not valid JSON", broken, "--nm", "4:8", "--calib", "1,2",
                     "--out", tmp_path / "o")
    expect_cli_error(capsys, "not valid JSON", "eval", dense, broken, "--ids", "1,2")


def test_cli_refuses_input_channels_not_a_multiple_of_8(tmp_path, capsys):
    shape = dict(hidden_size=36, intermediate_size=40, num_layers=1, num_heads=4,
                 num_kv_heads=2, vocab_size=64)
    odd = make_checkpoint(tmp_path / "odd", shape, packed=False)
    expect_cli_error(capsys, "36 input channels are not a multiple of M = 8", odd, "--nm",
                     "4:8", "--calib", "1,2", "--out", tmp_path / "o")


def test_cli_refuses_to_overwrite_what_it_did_not_write(dense, tmp_path, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    expect_cli_error(capsys, "refusing to replace it", dense, "--nm", "4:8", "--calib", "1,2",
                     "--out", keep)
    assert (keep / "precious.txt").read_text() == "x"
    expect_cli_error(capsys, "is the model directory", dense, "--nm", "4:8", "--calib", "1,2",
                     "--out", dense)


def test_cli_eval_refuses_mismatched_models_and_ids(dense, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "demo", "demo", packed=False)
    expect_cli_error(capsys, "differs from the dense model", "eval", dense, other, "--ids", "1")
    expect_cli_error(capsys, "outside the vocabulary", "eval", dense, dense, "--ids", "1,999")


# -- robustness -----------------------------------------------------------------------------------

def test_long_inline_id_lists_are_ids_not_file_names(dense, tmp_path, capsys):
    ids = ",".join(str(i % 200) for i in range(400))          # far past NAME_MAX (255)
    assert nm.parse_ids(ids) == [[i % 200 for i in range(400)]]
    assert nm.parse_ids(ids + ";" + ids, 256) == [[i % 200 for i in range(400)]] * 2
    rc, out, err = run_cli(capsys, "eval", dense, dense, "--ids", ids, "--json")
    assert rc == 0 and json.loads(out)["positions"] == 400


@pytest.mark.parametrize("spec, fragment", [
    ("1;;2", "empty sequence between semicolons"), ("1;2;", "empty sequence between semicolons"),
    ("1,,2", "empty token id between commas"), (",1", "empty token id between commas"),
    ("1,2,", "empty token id between commas"),
])
def test_empty_ids_are_refused(spec, fragment):
    with pytest.raises(nm.NMError, match=fragment):
        nm.parse_ids(spec)


def test_empty_ids_in_a_file_are_refused(tmp_path):
    (tmp_path / "ids.txt").write_text("1,2\n3,,4\n")
    with pytest.raises(nm.NMError, match="ids.txt line 2: an empty token id between commas"):
        nm.parse_ids(str(tmp_path / "ids.txt"))


@pytest.mark.parametrize("extra", ["precious.txt", "model-00001-of-00002.safetensors"])
def test_cli_replaces_only_its_own_output(dense, pruned, tmp_path, capsys, extra):
    out = tmp_path / "o"
    shutil.copytree(pruned[4][0], out)
    (out / extra).write_text("keep me")
    before = sorted(p.name for p in out.iterdir())
    expect_cli_error(capsys, f"is not an earlier output of compiler.nm (it holds {extra})",
                     dense, "--nm", "4:8", "--calib", "1,2", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == before
    (out / extra).unlink()
    (out / "nm.json").write_text("{}")                  # our file names, but not our nm.json
    expect_cli_error(capsys, "is not an earlier output of compiler.nm", dense, "--nm", "4:8",
                     "--calib", "1,2", "--out", out)
    assert (out / "nm.json").read_text() == "{}"


def test_cli_out_below_a_regular_file_or_holding_the_model(dense, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    expect_cli_error(capsys, f"{tmp_path / 'file'} is not a directory", dense, "--nm", "4:8",
                     "--calib", "1,2", "--out", tmp_path / "file" / "x")
    expect_cli_error(capsys, "holds the model directory", dense, "--nm", "4:8", "--calib",
                     "1,2", "--out", dense.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _with_q0(dense, tmp_path, fill) -> Path:
    model = tmp_path / "m"
    shutil.copytree(dense, model)
    name = "model.layers.0.self_attn.q_proj.weight"
    ckpt = Checkpoint(model)
    tensors = {n: np.array(ckpt.read(n)) for n in ckpt.names()}
    del ckpt
    tensors[name] = np.full(tensors[name].shape, fill, tensors[name].dtype)
    write_safetensors(model / "model.safetensors", tensors, {"format": "pt"})
    return model


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("fill, fragment", [
    (3e38, "absmean scale of its weights (mean |W|) overflows float32"),
    (0.0, "it has no non-zero weight"),
])
def test_cli_names_the_tensor_it_cannot_store(dense, tmp_path, capsys, fill, fragment):
    model = _with_q0(dense, tmp_path, fill)
    rc, out, err = run_cli(capsys, model, "--nm", "4:8", "--calib", "1,2,3", "--out",
                           tmp_path / "o")
    assert rc == 2 and "\n" not in err.strip(), err
    assert "tensor 'model.layers.0.self_attn.q_proj.weight'" in err and fragment in err
    assert str(model / "model.safetensors") in err
    assert not (tmp_path / "o").exists()
