"""The ISA table: integer and Amaranth encodings agree, bad values are refused, docs are fresh."""

import dataclasses
import random
from pathlib import Path

import pytest
from amaranth.lib import data

from rtl import isa
from rtl.isa import (
    FORMATS,
    INSTR_CLASSES,
    Field,
    Opcode,
    TraceRecord,
    decode,
    instr_layout,
    markdown,
)
from rtl.params import CHIPS, scale_point

DOCS = Path(__file__).resolve().parents[2] / "docs" / "isa.md"


def random_instr(rng: random.Random, op: Opcode):
    values = {}
    for f in FORMATS[op]:
        if f.name == "opcode":
            continue
        choices = [int(m) for m in f.shape] if f.shape is not None else None
        values[f.name] = rng.choice(choices) if choices else rng.randrange(1 << f.width)
    return INSTR_CLASSES[op](**values)


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_int_and_amaranth(seed):
    rng = random.Random(seed)
    for _ in range(200):
        op = rng.choice(list(Opcode))
        ins = random_instr(rng, op)
        word = ins.encode()
        assert decode(word) == ins, f"seed {seed}: {ins}"
        layout = instr_layout(op)
        const = layout.const({"opcode": op, **ins.as_dict()})
        assert const.as_value().value == word, f"seed {seed}: {ins}"
        view = data.Const(layout, word)
        for name, value in ins.as_dict().items():
            assert int(getattr(view, name)) == value, f"seed {seed}: {op.name}.{name}"


def test_out_of_range_field_names_field_and_width():
    with pytest.raises(ValueError, match=r"LOAD\.rows=5000 does not fit in 12 bits"):
        isa.Load(rows=5000)
    with pytest.raises(ValueError, match=r"MATMUL\.k_len=-1 does not fit in 16 bits"):
        isa.MatMul(k_len=-1)
    with pytest.raises(ValueError, match=r"LOAD\.encoding=3 is not a WeightEncoding"):
        isa.Load(encoding=3)
    with pytest.raises(TypeError, match="STORE.dram"):
        isa.Store(dram=1.5)


def test_decode_refuses_illegal_opcode_and_stray_bits():
    with pytest.raises(ValueError, match="illegal opcode 0"):
        decode(0)
    with pytest.raises(ValueError, match="illegal opcode 15"):
        decode(15)
    word = isa.Halt().encode() | 1 << 100
    with pytest.raises(ValueError, match="bits set outside"):
        decode(word)
    assert decode(word, strict=False) == isa.Halt()


def test_lenient_decode_keeps_reserved_encodings():
    enc = next(f for f in FORMATS[Opcode.LOAD] if f.name == "encoding")
    ins = decode(isa.Load().encode() | 3 << enc.lsb, strict=False)
    assert ins.encoding == 3


def test_table_rejects_overlaps(monkeypatch):
    bad = dict(FORMATS)
    bad[Opcode.HALT] = isa.HEADER + (Field("x", 3, 2, "overlaps the opcode"),)
    monkeypatch.setattr(isa, "FORMATS", bad)
    with pytest.raises(AssertionError, match="HALT.x overlaps"):
        isa._check_table()


def test_trace_record_round_trip():
    rng = random.Random(3)
    for _ in range(100):
        rec = TraceRecord(rng.randrange(1 << 40), rng.randrange(4), rng.randrange(1 << 16),
                          rng.choice([int(o) for o in Opcode]))
        assert TraceRecord.decode(rec.encode()) == rec
    with pytest.raises(ValueError, match="cycle"):
        TraceRecord(1 << 40, 0, 0, 1).encode()


def test_base3_table_is_the_radix3_expansion():
    table = isa.base3_decode_table()
    assert len(table) == 243
    for byte, trits in enumerate(table):
        assert sum((t + 1) * 3 ** i for i, t in enumerate(trits)) == byte


def test_docs_isa_md_is_generated_from_isa():
    assert DOCS.read_text() == markdown(), \
        "docs/isa.md is stale: run `make docs` (python -m rtl.isa --markdown > docs/isa.md)"


@pytest.mark.parametrize("changes, why", [
    ({"held_fetch": True, "prefetch": True}, "held_fetch and prefetch are two ways to fetch"),
    ({"acc_groups": 2, "registered_operands": True},
     "registered_operands needs held lanes"),
    ({"fanout_rows": -1}, "fanout_rows must be >= 0"),
])
def test_scale_point_refuses_combinations(changes, why):
    """Options that exclude each other, or that are verified only with another, are refused
    in one line that names the scale point."""
    with pytest.raises(ValueError, match=f"'tiny': {why}"):
        dataclasses.replace(scale_point("tiny"), **changes)


@pytest.mark.parametrize("changes, why", [
    (dict(mem_banks=3), "mem_banks must be a power of 2 below mem_words"),
    (dict(mem_banks=4096), "mem_banks must be a power of 2 below mem_words"),
    (dict(mem_words=3000), "mem_words must be a power of 2"),
    (dict(link_timeout_bits=8), "link_timeout_bits must be >= 32"),
])
def test_chip_refuses_bad_parameters(changes, why):
    """A chip's bad parameter is refused in one line that names the chip."""
    with pytest.raises(ValueError, match=f"'ulx3s': {why}"):
        dataclasses.replace(CHIPS["ulx3s"], **changes)
