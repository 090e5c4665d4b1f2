"""The Amdahl ledger: REFERENCE.md section 5's values exactly, the ledger's identities, the CLI."""

import json
import math

import pytest

from compiler.synth import make_checkpoint
from sim.amdahl import (
    SHAPES,
    AmdahlError,
    context_at_half,
    cycle_table,
    load_profiles,
    mac_share,
    main,
    measured_ledger,
    projection_cycles,
    projection_macs,
    simulate_cycles,
    step_ledger,
    sweep,
    token_batch,
)

PROFILE = {"peak_fp16_flops": 1e12, "peak_int8_ops": 4e12, "mem_bw_bytes_per_s": 1e11}


def _pct(f: float) -> str:
    return f"{100 * f:.1f}"


@pytest.mark.parametrize("shape, at_half, shares", [
    ("llama-7b", 24_704, {1024: "96.0", 2048: "92.3", 4096: "85.8"}),
    ("gpt2-small", 4_608, {1024: "81.8", 2048: "69.2", 4096: "52.9"}),
    ("bitnet-2b4t", 13_568, {}),
])
def test_reference_mac_shares(shape, at_half, shares):
    s = SHAPES[shape]
    assert context_at_half(s) == at_half
    assert mac_share(s, at_half) == 0.5
    for n, want in shares.items():
        assert _pct(mac_share(s, n)) == want, f"{shape} n={n}"


def test_reference_2b4t_lm_head():
    s = SHAPES["bitnet-2b4t"]
    assert projection_macs(s) == 69_468_160             # REFERENCE.md 2: ternary weights/layer
    no_head, head = mac_share(s, 1024), mac_share(s, 1024, lm_head=True)
    assert round(100 * no_head) == 93 and round(100 * head) == 81
    assert round(1 / (1 - no_head)) == 14 and round(1 / (1 - head)) == 5


def test_shapes_as_stated():
    dims = {k: (s.d, s.d_ff, s.layers, s.heads, s.kv_heads, s.ffn_mats) for k, s in SHAPES.items()}
    assert dims == {
        "bitnet-2b4t": (2560, 6912, 30, 20, 5, 3), "bitnet-700m": (1536, 4096, 24, 16, 16, 3),
        "bitnet-1.3b": (2048, 5460, 24, 32, 32, 3), "bitnet-3b": (3200, 8640, 26, 32, 32, 3),
        "llama-7b": (4096, 11008, 32, 32, 32, 3), "gpt2-small": (768, 3072, 12, 12, 12, 2)}


def test_step_ledger_identities():
    s = SHAPES["bitnet-2b4t"]
    acc = {"cycles": 3_000_000, "bytes_read": 1, "bytes_written": 1}
    r = step_ledger(s, "decode", 1024, True, PROFILE, acc, 1000.0)
    # Amdahl: S_total = 1 / ((1 - F) + F / S_partial), exactly the measured ratio.
    amdahl = 1 / ((1 - r["F"]) + r["F"] / r["S_partial"])
    assert math.isclose(r["speedup"], amdahl, rel_tol=1e-12)
    assert math.isclose(r["ceiling"], 1 / (1 - r["F"]), rel_tol=1e-12)
    assert r["accel_s"] == 3e-3
    assert r["F_mac"] == mac_share(s, 1024, lm_head=True)
    # Decode is bandwidth-bound on the laptop profile: 2 bits per weight at 100 GB/s.
    weights = 30 * projection_macs(s)
    assert math.isclose(r["host_projections_s"], (weights / 4 + 30 * 5 * (4 * 2560 + 6912))
                        / 1e11)
    # The bf16 LM head is read once per token.
    assert math.isclose(r["host_lm_head_s"], (2 * 128256 * 2560 + 4 * 128256) / 1e11)
    no_head = step_ledger(s, "decode", 1024, False, PROFILE, acc, 1000.0)
    assert no_head["host_lm_head_s"] == 0 and no_head["F"] > r["F"]


def test_cycle_table_and_batches():
    s = SHAPES["gpt2-small"]
    table = cycle_table([s], "default")
    b = token_batch("default")
    assert b == 64
    one = simulate_cycles("default", 768, 768, 1)
    assert table["768x768x1"] == one and one["cycles"] > 0
    full = table[f"768x768x{b}"]["cycles"]
    assert projection_cycles(table, 768, 768, 3 * b, b)["cycles"] == 3 * full
    assert projection_cycles(table, 768, 768, 2 * b + 1, b)["cycles"] == 2 * full + one["cycles"]


def test_sweep_decode_matches_section5():
    s = SHAPES["gpt2-small"]
    table = cycle_table([s], "default")
    profiles = {"p": PROFILE}
    rows = sweep([s], (128, 4096), profiles, table, "default", 1000.0)
    assert len(rows) == 2 * 2 * 2 * 1
    for r in rows:
        if r["phase"] == "decode":
            assert r["F_mac"] == mac_share(s, r["context"], r["lm_head"])
        else:   # causal prefill: fewer attention MACs than the square convention
            assert r["F_mac"] > mac_share(s, r["context"], r["lm_head"])
        assert 0 < r["F"] < 1 and r["speedup"] < r["ceiling"]


def test_profiles_file(tmp_path):
    profiles = load_profiles()
    assert {"laptop-cpu", "server-cpu", "phone-soc"} <= set(profiles)
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"profiles": {"x": {**PROFILE, "mem_bw_bytes_per_s": 0}}}))
    with pytest.raises(AmdahlError, match="mem_bw_bytes_per_s must be a positive number"):
        load_profiles(bad)


def test_measured_ledger_tiny(tmp_path):
    model = make_checkpoint(tmp_path / "m", "tiny", packed=True, seed=0)
    rows = measured_ledger(model, 5, 2, "tiny", "sim", {"p": PROFILE}, 1000.0)
    measured = [r for r in rows if r["profile"] == "measured"]
    assert [r["phase"] for r in measured] == ["prefill", "decode 1", "decode 2"]
    assert [r["tokens"] for r in measured] == [5, 1, 1]
    for r in rows:
        assert r["accel_cycles"] > 0 and r["measured_attention_s"] > 0
        assert math.isclose(r["ceiling"], 1 / (1 - r["F"]))


def test_cli_quick(tmp_path, capsys):
    out = tmp_path / "am"
    rc = main(["--out", str(out), "--quick", "--shapes", "gpt2-small", "--workers", "0",
               "--no-measure", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert _pct(doc["mac_share"]["gpt2-small"]["1024"]) == "81.8"
    for name in ("sweep.csv", "amdahl.json", "amdahl-mac-share.png",
                 "amdahl-gpt2-small-decode.png", "amdahl-gpt2-small-breakdown.png"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "amdahl.json").read_text())["rows"]
    assert len(rows) == 2 * 3 * 2 * 3      # phases x contexts x LM head x profiles


def test_cli_dask_local_cluster(tmp_path, capsys):
    pytest.importorskip("distributed")
    rc = main(["--out", str(tmp_path), "--quick", "--shapes", "gpt2-small", "--workers", "2",
               "--no-measure", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    serial = cycle_table([SHAPES["gpt2-small"]], "default")
    assert doc["projection_cycles"] == serial


def test_cli_existing_scheduler(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        rc = main(["--out", str(tmp_path), "--quick", "--shapes", "gpt2-small", "--scheduler",
                   cluster.scheduler_address, "--no-measure", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["projection_cycles"]["768x768x1"]["cycles"] > 0


@pytest.mark.parametrize("args, message", [
    (["--shapes", "nope"], "unknown shape 'nope'"),
    (["--clock-mhz", "0"], "--clock-mhz must be > 0"),
])
def test_cli_bad_input(tmp_path, capsys, args, message):
    rc = main(["--out", str(tmp_path), "--workers", "0", "--no-measure", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_host_ledger_agrees_with_analytic_counts(tmp_path):
    """The counters of sim.host.HostModel and the sweep's analytic counts agree (decode)."""
    from sim.amdahl import ModelShape, step_counts
    from sim.host import HostModel

    model = make_checkpoint(tmp_path / "m", "tiny", packed=True, seed=0)
    host = HostModel(model, "golden")
    host.generate([1, 2, 3, 4], 3)
    c = host.cfg
    shape = ModelShape("tiny", c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads,
                       c.num_kv_heads, c.vocab_size)
    step = host.ledger[-1]                       # decode at position 5: context 6
    want = step_counts(shape, "decode", step.past + 1, lm_head=True)
    assert step.parts["projections"].ops == want["projections"]["macs"]
    assert step.parts["attention"].ops == want["attention"]["ops"]
    assert step.parts["lm_head"].ops == want["lm_head"]["ops"]
