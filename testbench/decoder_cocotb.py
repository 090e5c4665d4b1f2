"""cocotb: apply words to one WeightDecoder (combinational) and record what it decodes.

Input ($TB_JOB, JSON): {"vectors": [[encoding, word as hex], ...]}. Output ($TB_RESULT):
{"trits": [hex, ...], "invalid": [0 or 1, ...]}, one entry per vector, sampled 1 ns after the
vector is applied (the decoder has no clock).
"""

import json
import os

import cocotb
from cocotb.triggers import Timer


@cocotb.test()
async def decode_words(dut):
    """Apply every vector of $TB_JOB in turn."""
    with open(os.environ["TB_JOB"]) as f:
        spec = json.load(f)
    trits, invalid = [], []
    for encoding, word in spec["vectors"]:
        dut.encoding.value = int(encoding)
        dut.word.value = int(word, 16)
        await Timer(1, unit="ns")
        trits.append(f"{int(dut.trits.value):x}")
        invalid.append(int(dut.invalid.value))
    with open(os.environ["TB_RESULT"], "w") as f:
        json.dump({"trits": trits, "invalid": invalid}, f)
