"""WeightDecoder under cocotb + Verilator: every byte value at every position, both encodings.

The vectors and the model come from `rtl/tests/test_units_amaranth.py`, which runs a subset of
them under Amaranth's simulator.
"""

import time

import pytest

from rtl.decoder import WeightDecoder
from rtl.params import scale_point
from rtl.tests.test_units_amaranth import (
    DECODER_PARAMS,
    NM_DECODER_PARAMS,
    check_decoder_outputs,
    decoder_vectors,
)

from .verilator import build, run_cocotb

TOPLEVEL = "weight_decoder"
SEEDS = range(1, 4)


#: The combinational decoder, the tiny scale point's registered one (base-3 tables in block
#: RAM, read a cycle ahead), and one with N:M slots as well.
PARAMS = {"comb": DECODER_PARAMS, "registered": scale_point("tiny"), "nm": NM_DECODER_PARAMS}


@pytest.fixture(scope="module", params=list(PARAMS))
def decoder(request):
    """Build WeightDecoder for each of `PARAMS` with Verilator once for this module."""
    params = PARAMS[request.param]
    assert params.registered_decode == (request.param == "registered")
    t = time.monotonic()
    runner, bdir = build(WeightDecoder(params), f"decoder-{params.name}", toplevel=TOPLEVEL)
    print(f"\nWeightDecoder({params.port_bytes} bytes, {request.param}) Verilator build: "
          f"{time.monotonic() - t:.1f} s")
    return params, runner, bdir


def run_decoder(decoder, vectors) -> list:
    """Apply (label, encoding, word, _) vectors; return [(trits, invalid)]."""
    params, runner, bdir = decoder
    out = run_cocotb(runner, bdir, "testbench.decoder_cocotb", TOPLEVEL,
                     {"registered": params.registered_decode,
                      "vectors": [[int(enc), f"{word:x}"] for _, enc, word, _ in vectors]})
    return [(int(t, 16), i) for t, i in zip(out["trits"], out["invalid"])]


@pytest.mark.parametrize("seed", SEEDS)
def test_decoder_vectors(decoder, seed):
    # Random valid words of both encodings, all 256 values of every byte position in both
    # (every valid base-3 byte decodes, 243..255 and any 0b11 code are invalid), several bad
    # bytes at once, the reserved encodings, and with N:M every byte value of slot codes
    # (0b1111 in either nibble is invalid).
    params = decoder[0]
    t = time.monotonic()
    vectors = decoder_vectors(seed, params, n_random=200)
    check_decoder_outputs(params, vectors, run_decoder(decoder, vectors), seed)
    print(f"decoder {params.name} seed={seed}: {len(vectors)} vectors in "
          f"{time.monotonic() - t:.2f} s")
