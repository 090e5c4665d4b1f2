"""cocotb: apply words to one WeightDecoder and record what it decodes.

Input ($TB_JOB, JSON): {"registered": bool, "vectors": [[encoding, word as hex], ...]}. Output
($TB_RESULT): {"trits": [hex, ...], "invalid": [0 or 1, ...]}, one entry per vector. A
combinational decoder is sampled 1 ns after the vector is applied. A registered one
(`ArrayParams.registered_decode`) gets the word on `next_word` before a rising edge and on
`word` after it, as the LOAD unit drives it, with a different word on `next_word` meanwhile.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer


@cocotb.test()
async def decode_words(dut):
    """Apply every vector of $TB_JOB in turn."""
    with open(os.environ["TB_JOB"]) as f:
        spec = json.load(f)
    trits, invalid = [], []
    registered = spec["registered"]
    if registered:
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        dut.rst.value = 0
        mask = (1 << len(dut.word)) - 1
    for encoding, word in spec["vectors"]:
        word = int(word, 16)
        if registered:
            await FallingEdge(dut.clk)
            dut.next_word.value = word
            await RisingEdge(dut.clk)
            dut.next_word.value = ~word & mask
        dut.encoding.value = int(encoding)
        dut.word.value = word
        await Timer(1, unit="ns")
        trits.append(f"{int(dut.trits.value):x}")
        invalid.append(int(dut.invalid.value))
    with open(os.environ["TB_RESULT"], "w") as f:
        json.dump({"trits": trits, "invalid": invalid}, f)
