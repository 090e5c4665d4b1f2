"""Checkpoints lowered by the compiler run bit-exact on the RTL, in lockstep with the simulator."""

import numpy as np
import pytest

from compiler.artifact import Artifact
from compiler.lower import lower
from compiler.synth import make_checkpoint
from rtl.params import scale_point
from sim.machine import Simulator
from sim.run import run_layer

from .conftest import verilator_backend


@pytest.mark.parametrize("fmt", ["packed", "float"])
@pytest.mark.parametrize("encoding", scale_point("tiny").encodings, ids=lambda e: e.name)
def test_lowered_layers_on_rtl(tmp_path, fmt, encoding):
    model = make_checkpoint(tmp_path / "model", "tiny", packed=fmt == "packed", seed=5)
    lower(model, tmp_path / "art", "tiny", encoding)
    art = Artifact.load(tmp_path / "art")
    rtl = verilator_backend(scale_point("tiny"))
    sim = Simulator(art.params)
    rng = np.random.default_rng(7)
    # One layer's seven projections: both attention and FFN shapes, decode and prefill.
    for layer in art.layers[:7]:
        for tokens in (1, art.token_batch):
            x = rng.integers(-128, 128, (tokens, layer.k), dtype=np.int8)
            y_rtl, rep_rtl = run_layer(art, layer, x, rtl, check=True)
            y_sim, rep_sim = run_layer(art, layer, x, sim, check=True)
            where = f"{fmt} {encoding.name} {layer.name} tokens={tokens}"
            assert rep_rtl.exact and rep_sim.exact, where
            assert rep_rtl.cycles == rep_sim.cycles, where
            assert np.array_equal(y_rtl, y_sim), where
