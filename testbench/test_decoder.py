"""WeightDecoder under cocotb + Verilator: every byte value at every position, both encodings.

The vectors and the model come from `rtl/tests/test_units_amaranth.py`, which runs a subset of
them under Amaranth's simulator.
"""

import time

import pytest

from rtl.decoder import WeightDecoder
from rtl.tests.test_units_amaranth import DECODER_PARAMS, check_decoder_outputs, decoder_vectors

from .verilator import build, run_cocotb

TOPLEVEL = "weight_decoder"
SEEDS = range(1, 4)


@pytest.fixture(scope="module")
def decoder():
    """Build WeightDecoder(DECODER_PARAMS) with Verilator once for this module."""
    t = time.monotonic()
    runner, bdir = build(WeightDecoder(DECODER_PARAMS), f"decoder-{DECODER_PARAMS.name}",
                         toplevel=TOPLEVEL)
    print(f"\nWeightDecoder({DECODER_PARAMS.port_bytes} bytes) Verilator build: "
          f"{time.monotonic() - t:.1f} s")
    return runner, bdir


def run_decoder(decoder, vectors) -> list:
    """Apply (label, encoding, word, _) vectors; return [(trits, invalid)]."""
    runner, bdir = decoder
    out = run_cocotb(runner, bdir, "testbench.decoder_cocotb", TOPLEVEL,
                     {"vectors": [[int(enc), f"{word:x}"] for _, enc, word, _ in vectors]})
    return [(int(t, 16), i) for t, i in zip(out["trits"], out["invalid"])]


@pytest.mark.parametrize("seed", SEEDS)
def test_decoder_vectors(decoder, seed):
    # Random valid words of both encodings, all 256 values of every byte position in both
    # (every valid base-3 byte decodes, 243..255 and any 0b11 code are invalid), several bad
    # bytes at once, and the reserved encodings 2 and 3.
    t = time.monotonic()
    vectors = decoder_vectors(seed, DECODER_PARAMS, n_random=200)
    check_decoder_outputs(DECODER_PARAMS, vectors, run_decoder(decoder, vectors), seed)
    print(f"decoder seed={seed}: {len(vectors)} vectors in {time.monotonic() - t:.2f} s")
