"""sim.nm_bench on small shapes: the bits table, the N:M weight generator, a small speedup run
(exact, prefill faster for 2:8), the measured bits and layer totals, the exactness check itself,
the accuracy step on the tiny synthetic model, the plots and the rendered section."""

import math

import numpy as np
import pytest

from rtl.isa import WeightEncoding
from rtl.params import scale_point
from sim import nm_bench
from sim.golden import ternary_matmul
from sim.machine import Simulator

#: One N:M row tile (512 rows, less than a 640-row base-3 tile) and one of 640 rows (two N:M
#: tiles against one base-3 tile), counted 2 and 1 times in the "layer".
SMALL = {"a": (512, 256, 2), "b": (640, 128, 1)}


@pytest.fixture(scope="module")
def rows():
    return nm_bench.bench_speedup(SMALL, ns=(2, 6), tokens_list=(1, 64), seed=3)


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory):
    return nm_bench.bench_accuracy(tmp_path_factory.mktemp("acc"), shape="tiny", ns=(2, 6),
                                   calib=(2, 12), evaluation=(2, 16))


def test_bits_table_values():
    table = {b["n"]: b for b in nm_bench.bits_table()}
    assert sorted(table) == [2, 3, 4, 5, 6]
    for n, b in table.items():
        assert b["ours"] == n / 2
        assert b["metadata"] == pytest.approx(math.log2(math.comb(8, n)) / 8)
    assert table[4]["bound"] == pytest.approx(math.log2(1697) / 8)
    assert table[4]["metadata"] == pytest.approx(0.766, abs=1e-3)
    assert [table[n]["nominal"] for n in range(2, 7)] == [None, None, 0.55, 0.7, 0.8]
    bounds = [table[n]["bound"] for n in range(2, 7)]
    assert bounds == sorted(bounds) and all(b < 1.6 for b in bounds)
    # No limit on the non-zeros: a group of 8 trits holds exactly log2(3) bits per weight.
    assert nm_bench.bound_bits(8) == pytest.approx(math.log2(3))


def test_layer_shapes_are_the_seven_2b4t_projections():
    assert sum(c for _, _, c in nm_bench.LAYER_SHAPES.values()) == 7
    weights = sum(n * k * c for n, k, c in nm_bench.LAYER_SHAPES.values())
    assert weights == 69_468_160   # REFERENCE.md section 2: ternary weights per layer


@pytest.mark.parametrize("nnz", [2, 5])
def test_nm_weights_have_exactly_n_nonzeros_per_group(nnz):
    w = nm_bench.nm_weights(30, 64, nnz, np.random.default_rng(1))
    assert w.dtype == np.int8 and set(np.unique(w)) == {-1, 0, 1}
    assert (np.count_nonzero(w.reshape(30, 8, 8), axis=2) == nnz).all()
    again = nm_bench.nm_weights(30, 64, nnz, np.random.default_rng(1))
    assert np.array_equal(w, again)
    with pytest.raises(ValueError):
        nm_bench.nm_weights(4, 12, 2, np.random.default_rng(0))


def test_small_speedup_is_exact_and_prefill_2_of_8_is_faster(rows):
    assert len(rows) == 2 * 2 * 2
    assert all(r["exact"] for r in rows)
    by = {(r["shape"], r["N"], r["tokens"]): r for r in rows}
    for shape in SMALL:
        assert by[shape, 2, 64]["speedup"] > 1.5
        assert by[shape, 2, 64]["speedup"] > by[shape, 6, 64]["speedup"]
    # 512 rows: one tile either way, 1.0 bit against 1.6 (x 640/512 rows of padding).
    assert by["a", 2, 1]["speedup"] > 1.5
    # 6:8 stores 3 bits per weight: decode is slower than base 3.
    assert by["a", 6, 1]["speedup"] < 1
    for r in rows:
        assert r["speedup"] == r["base3_cycles"] / r["nm_cycles"]
        assert 0 < r["nm_lane_utilization"] <= 0.8 + 1e-9   # 512 of 640 rows at most


def test_measured_bits_count_the_tile_padding(rows):
    meas = nm_bench.measured_bits(rows)
    assert meas["2"]["a"] == 1.0 and meas["6"]["a"] == 3.0      # one full 512-row N:M tile
    assert meas["2"]["b"] == 1.0 * 1024 / 640                   # two tiles for 640 rows
    assert meas["base3"]["a"] == 1.6 * 640 / 512
    assert meas["base3"]["b"] == 1.6
    w = {s: n * k * c for s, (n, k, c) in SMALL.items()}
    assert meas["2"]["layer"] == pytest.approx(
        sum(meas["2"][s] * w[s] for s in SMALL) / sum(w.values()))


def test_layer_totals_weight_by_projection_count(rows):
    tot = {(t["N"], t["tokens"]): t for t in nm_bench.layer_totals(rows)}
    assert sorted(tot) == [(2, 1), (2, 64), (6, 1), (6, 64)]
    by = {(r["shape"], r["N"], r["tokens"]): r for r in rows}
    t = tot[2, 64]
    assert t["base3_cycles"] == 2 * by["a", 2, 64]["base3_cycles"] + by["b", 2, 64]["base3_cycles"]
    assert t["nm_cycles"] == 2 * by["a", 2, 64]["nm_cycles"] + by["b", 2, 64]["nm_cycles"]
    assert t["speedup"] == t["base3_cycles"] / t["nm_cycles"] and t["exact"]


def test_the_exactness_check_catches_a_wrong_result():
    p = scale_point("default")
    sim = Simulator(p)
    rng = np.random.default_rng(0)
    w = nm_bench.nm_weights(64, 64, 3, rng)
    x = rng.integers(-128, 128, (2, 64)).astype(np.int8)
    want = ternary_matmul(x, w)
    for enc, nm in ((WeightEncoding.BASE3, 0), (WeightEncoding.NM, 3)):
        assert nm_bench._run(sim, p, w, x, want, enc, nm)["exact"]
        wrong = want.copy()
        wrong[1, 7] += 1
        assert not nm_bench._run(sim, p, w, x, wrong, enc, nm)["exact"]


def test_accuracy_step_on_the_tiny_model(accuracy):
    runs = {r["label"]: r for r in accuracy["runs"]}
    assert list(runs) == ["2:8", "6:8", "auto (base 4:8)"]
    assert runs["2:8"]["layer_n"] == [2, 2] and sorted(runs["auto (base 4:8)"]["layer_n"]) == [3, 5]
    assert runs["2:8"]["mean_rel_error"] > runs["6:8"]["mean_rel_error"] > 0
    assert runs["2:8"]["mean_kl"] > runs["6:8"]["mean_kl"] > 0
    assert runs["2:8"]["nonzero_fraction"] <= 2 / 8 < runs["6:8"]["nonzero_fraction"]
    assert runs["6:8"]["nonzero_fraction"] <= runs["6:8"]["dense_nonzero_fraction"]


def _res(rows, accuracy=None):
    res = {"machine": "test machine", "date": "2000-01-01", "ns": [2, 6],
           "bits": nm_bench.bits_table((2, 6)), "speedup": rows,
           "measured_bits": nm_bench.measured_bits(rows),
           "layer_totals": nm_bench.layer_totals(rows)}
    if accuracy is not None:
        res["accuracy"] = accuracy
    return res


def test_render_and_write_results(rows, accuracy, tmp_path):
    text = nm_bench.render(_res(rows, accuracy), "make bench")
    assert text.startswith(nm_bench.BEGIN + "\n") and text.endswith(nm_bench.END + "\n")
    assert "## N:M structured sparse weights (STBLLM)" in text and "`make bench`" in text
    assert "test machine" in text and "random synthetic weights" in text
    assert "| 2:8 | - | 0.601 | 0.876 | 1.00 | **" in text
    assert "| 6:8 | 0.80 |" in text
    assert "| NO" not in text and "img/nm-bits.png" in text and "img/nm-speedup.png" in text
    assert "a at 6:8" in text          # the decode speedup below 1 is listed
    quick = nm_bench.render(_res(rows), "make bench")
    assert "random synthetic weights" not in quick and quick.endswith(nm_bench.END + "\n")
    path = tmp_path / "results.md"
    path.write_text("# Results\n\nbefore\n")
    nm_bench.write_results(path, quick)
    nm_bench.write_results(path, text)
    out = path.read_text()
    assert out.count(nm_bench.BEGIN) == out.count(nm_bench.END) == 1
    assert "before" in out and "random synthetic weights" in out


def test_render_flags_an_inexact_result(rows):
    bad = [dict(r) for r in rows]
    bad[0]["exact"] = False
    assert "| NO |" in nm_bench.render(_res(bad), "make bench")


def test_plot_writes_both_images(rows, tmp_path):
    paths = nm_bench.plot(_res(rows), tmp_path / "img")
    assert [p.name for p in paths] == ["nm-bits.png", "nm-speedup.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
