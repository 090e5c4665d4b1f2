"""Dispatcher under cocotb + Verilator: programs against a cycle-level Python model.

The cocotb side (`dispatcher_cocotb.py`) writes a program, starts it and drives random `full`
and `drained` (and, in one test, `run`); this module predicts every cycle's `dispatch`, `instr`,
`pc`, `halted`, `stall` and `error` and checks the in-order, exactly-once hand-out directly too.
"""

import dataclasses
import random
import time

import pytest

from rtl.isa import FORMATS, UNIT_OF, ErrorCode, Opcode, Unit
from rtl.params import ArrayParams
from rtl.sequencer import Dispatcher

from .verilator import build, run_cocotb

TOPLEVEL = "dispatcher"
PARAMS = ArrayParams(name="t", port_bytes=4, token_lanes=2, wbuf_rows=64, abuf_rows=64,
                     acc_groups=8, imem_depth=64)
#: The same with the program memory read every cycle and a waiting instruction held in
#: flip-flops (`ArrayParams.held_fetch`), which must not change a cycle.
HELD = dataclasses.replace(PARAMS, name="t-held", held_fetch=True)
#: The same with the program read ahead into flip-flops (`ArrayParams.prefetch`): the first
#: instruction is decoded a cycle later, and then every cycle is as without it.
PREFETCH = dataclasses.replace(PARAMS, name="t-prefetch", prefetch=True)
DEPTH = PARAMS.imem_depth
SEEDS = range(1, 5)
FLAG_BIT = {f.name: f.lsb for f in FORMATS[Opcode.HALT] if f.name != "opcode"}
#: The dependency flags each unit may use (LOAD has no previous unit, STORE no next one).
LEGAL_FLAGS = {
    Unit.LOAD: ("pop_next", "push_next"),
    Unit.COMPUTE: ("pop_prev", "pop_next", "push_prev", "push_next"),
    Unit.STORE: ("pop_prev", "push_prev"),
    Unit.DISPATCH: (),
}


@pytest.fixture(scope="module", params=[PARAMS, HELD, PREFETCH], ids=lambda p: p.name)
def dispatcher(request):
    """Build Dispatcher(params) with Verilator once for this module."""
    params = request.param
    t = time.monotonic()
    runner, bdir = build(Dispatcher(params), f"dispatcher-{params.name}", toplevel=TOPLEVEL)
    print(f"\nDispatcher({params.name}) Verilator build: {time.monotonic() - t:.1f} s")
    return runner, bdir, params


# -- stimulus ------------------------------------------------------------------------------------

def instr(rng: random.Random, op: Opcode, flags=None) -> int:
    """A word with opcode `op`, the given dependency flags (default: random legal ones) and
    random bits everywhere else above the header."""
    unit = UNIT_OF[op]
    if flags is None:
        flags = [f for f in LEGAL_FLAGS[unit] if rng.random() < 0.5]
    word = int(op) | rng.getrandbits(120) << 8
    for f in flags:
        word |= 1 << FLAG_BIT[f]
    return word


def random_body(rng: random.Random, n: int) -> list:
    return [instr(rng, rng.choice([Opcode.LOAD, Opcode.MATMUL, Opcode.STORE])) for _ in range(n)]


def job(program: list, seed: int, full_p: float = 0.4, drained_p: float = 0.3,
        drained_low: int = 0, run_p: float = 1.0) -> dict:
    assert len(program) <= DEPTH
    return {"program": [f"{w:x}" for w in program], "seed": seed, "full_p": full_p,
            "drained_p": drained_p, "drained_low": drained_low, "run_p": run_p}


def run_dispatch(dispatcher, jobs: list) -> list:
    """Each job's result, with the cycle of its first decode (`ArrayParams.first_decode`)."""
    runner, bdir, params = dispatcher
    results = run_cocotb(runner, bdir, "testbench.dispatcher_cocotb", TOPLEVEL,
                         {"jobs": jobs})["results"]
    return [{**res, "first_decode": params.first_decode} for res in results]


# -- model and checks ----------------------------------------------------------------------------

def model_step(word: int, pc: int, full: int, drained: int):
    """Expected (dispatch, halted, stall, error) for instruction `word` at `pc` in a run cycle."""
    op = word & 0xF
    if op not in {int(o) for o in Opcode}:
        return 0, 0, 0, ErrorCode.ILLEGAL_OPCODE
    unit = UNIT_OF[Opcode(op)]
    used = {f for f, bit in FLAG_BIT.items() if word >> bit & 1}
    if used - set(LEGAL_FLAGS[unit]):
        return 0, 0, 0, ErrorCode.BAD_DEPENDENCY
    if unit == Unit.DISPATCH:
        return 0, int(drained), 0, ErrorCode.NONE
    if full >> unit & 1:
        return 0, 0, 1, ErrorCode.NONE
    if pc == DEPTH - 1:
        return 0, 0, 0, ErrorCode.NO_HALT
    return 1 << unit, 0, 0, ErrorCode.NONE


def check_run(program: list, res: dict, label: str, end: tuple) -> list:
    """Compare every cycle with the model; `end` is ("halt", pc) or (ErrorCode, pc).

    Returns the cycles, as [(cycle, record)], at which the model's pc was at each address.
    """
    assert not res["timeout"], f"{label}: no HALT or error within {len(res['cycles'])} cycles"
    pc = 0
    dispatched = []
    for cycle, (run, full, drained, disp, word, got_pc, halted, stall, error) in \
            enumerate(res["cycles"]):
        at = f"{label} cycle={cycle}"
        if not run or cycle < res["first_decode"]:
            why = "run low" if not run else "nothing fetched yet"
            assert (disp, halted, stall, error) == (0, 0, 0, 0), \
                f"{at}: {why} but dispatch={disp} halted={halted} stall={stall} error={error}"
            continue
        want = program[pc]
        assert got_pc == pc, f"{at}: pc={got_pc}, want {pc}"
        assert int(word, 16) == want, f"{at}: instr {word}, want {want:x} (pc={pc})"
        # Direct properties, independent of the model's priorities.
        assert disp & (disp - 1) == 0, f"{at}: dispatch {disp:#06b} is not one-hot"
        if disp:
            unit = disp.bit_length() - 1
            assert unit == UNIT_OF[Opcode(want & 0xF)], \
                f"{at}: pc={pc} dispatched to unit {unit}"
            assert not full >> unit & 1, f"{at}: pc={pc} dispatched to a full unit {unit}"
        assert not (stall and disp), f"{at}: stall and dispatch together"
        got = (disp, halted, stall, ErrorCode(error))
        exp = model_step(want, pc, full, drained)
        assert got == exp, (f"{at}: pc={pc} full={full:03b} drained={drained}: "
                            f"(dispatch, halted, stall, error) = {got}, want {exp}")
        if disp:
            dispatched.append(pc)
            pc += 1
    last = res["cycles"][-1]
    kind, end_pc = end
    if kind == "halt":
        assert last[6] and last[5] == end_pc, f"{label}: ended with {last}, want HALT at {end_pc}"
    else:
        assert (ErrorCode(last[8]), last[5]) == (kind, end_pc), \
            f"{label}: ended with error {ErrorCode(last[8]).name} at pc={last[5]}, " \
            f"want {kind.name} at pc={end_pc}"
    assert dispatched == list(range(end_pc)), \
        f"{label}: dispatched pcs {dispatched}, want 0..{end_pc - 1} once each, in order"
    return dispatched


# -- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_dispatch_random(dispatcher, seed):
    """Random programs ending in HALT under random `full` and `drained`."""
    t = time.monotonic()
    cases = []
    for j, (full_p, drained_p, drained_low) in enumerate(
            [(0.4, 0.3, 0), (0.8, 0.1, 30), (0.1, 0.5, 0), (0.0, 1.0, 0)]):
        rng = random.Random(seed * 100 + j)
        n = rng.randint(1, DEPTH - 1) if j else DEPTH - 1   # the first one fills the imem
        program = random_body(rng, n) + [instr(rng, Opcode.HALT)]
        cases.append((program, job(program, seed * 100 + j, full_p, drained_p, drained_low)))
    results = run_dispatch(dispatcher, [jb for _, jb in cases])
    stalls = 0
    for j, ((program, _), res) in enumerate(zip(cases, results)):
        check_run(program, res, f"seed={seed} job={j}", ("halt", len(program) - 1))
        stalls += sum(r[7] for r in res["cycles"])
    assert stalls, f"seed={seed}: no stall at all: full is not exercised"
    print(f"dispatch seed={seed}: {sum(len(r['cycles']) for r in results)} cycles "
          f"in {time.monotonic() - t:.2f} s")


@pytest.mark.parametrize("seed", SEEDS)
def test_dispatch_run_pauses(dispatcher, seed):
    """With `run` dropping at random, nothing is decoded while it is low and nothing is lost."""
    rng = random.Random(seed)
    program = random_body(rng, rng.randint(20, 40)) + [instr(rng, Opcode.HALT)]
    (res,) = run_dispatch(dispatcher, [job(program, seed, 0.3, 0.3, run_p=0.6)])
    check_run(program, res, f"seed={seed}", ("halt", len(program) - 1))


def test_halt_waits_for_drained(dispatcher):
    """HALT is decoded, then waits with no stall or error until `drained`, then retires."""
    seed, low = 3, 80
    rng = random.Random(seed)
    program = random_body(rng, 10) + [instr(rng, Opcode.HALT)] + random_body(rng, 5)
    (res,) = run_dispatch(dispatcher, [job(program, seed, 0.0, 1.0, drained_low=low)])
    label = f"seed={seed}"
    check_run(program, res, label, ("halt", 10))
    cycles = res["cycles"]
    assert len(cycles) == low + 1, f"{label}: HALT retired at cycle {len(cycles) - 1}, want {low}"
    waiting = [r for r in cycles if r[5] == 10]
    assert len(waiting) == low + 1 - 10 - res["first_decode"], \
        f"{label}: HALT decoded for {len(waiting)} cycles"
    assert all(r[3] == r[6] == r[7] == r[8] == 0 for r in waiting[:-1]), \
        f"{label}: activity while HALT waits for drained"


@pytest.mark.parametrize("seed", SEEDS)
def test_illegal_opcode(dispatcher, seed):
    """Opcode 0 or 5..15 stops at its pc, after everything before it was dispatched."""
    rng = random.Random(seed)
    cases = []
    for k, op in enumerate([0, *range(5, 16)]):
        n = rng.randint(0, 20) if k else 0
        bad = op | rng.getrandbits(124) << 4
        program = random_body(rng, n) + [bad] + random_body(rng, 3) + \
            [instr(rng, Opcode.HALT)]
        cases.append((program, n, job(program, seed * 100 + k)))
    results = run_dispatch(dispatcher, [jb for *_, jb in cases])
    for (program, n, _), res in zip(cases, results):
        check_run(program, res, f"seed={seed} opcode={program[n] & 0xF}",
                  (ErrorCode.ILLEGAL_OPCODE, n))


BAD_DEPS = [(Opcode.LOAD, "pop_prev"), (Opcode.LOAD, "push_prev"),
            (Opcode.STORE, "pop_next"), (Opcode.STORE, "push_next"),
            (Opcode.HALT, "pop_prev"), (Opcode.HALT, "pop_next"),
            (Opcode.HALT, "push_prev"), (Opcode.HALT, "push_next")]


@pytest.mark.parametrize("seed", SEEDS)
def test_bad_dependency(dispatcher, seed):
    """A token towards a unit that does not exist stops at its pc; legal flags pass."""
    rng = random.Random(seed)
    cases = []
    for k, (op, flag) in enumerate(BAD_DEPS):
        n = rng.randint(0, 20)
        others = [f for f in LEGAL_FLAGS[UNIT_OF[op]] if rng.random() < 0.5]
        program = random_body(rng, n) + [instr(rng, op, [flag, *others])] + \
            random_body(rng, 3) + [instr(rng, Opcode.HALT)]
        cases.append((program, n, (op, flag), job(program, seed * 100 + k)))
    # Every legal flag at once on each unit.
    legal = [instr(rng, op, LEGAL_FLAGS[UNIT_OF[op]])
             for op in (Opcode.LOAD, Opcode.MATMUL, Opcode.STORE)] * 3
    legal.append(instr(rng, Opcode.HALT))
    results = run_dispatch(dispatcher, [jb for *_, jb in cases] + [job(legal, seed * 100 + 9)])
    for (program, n, (op, flag), _), res in zip(cases, results):
        check_run(program, res, f"seed={seed} {op.name} with {flag}",
                  (ErrorCode.BAD_DEPENDENCY, n))
    check_run(legal, results[-1], f"seed={seed} legal flags", ("halt", len(legal) - 1))


@pytest.mark.parametrize("seed", SEEDS)
def test_no_halt(dispatcher, seed):
    """Running into the last imem address is NO_HALT, unless the word there stops first."""
    rng = random.Random(seed)
    body = random_body(rng, DEPTH - 1)
    last_words = {
        "no_halt": (random_body(rng, 1)[0], (ErrorCode.NO_HALT, DEPTH - 1)),
        "halt": (instr(rng, Opcode.HALT), ("halt", DEPTH - 1)),
        "illegal": (rng.choice([0, *range(5, 16)]), (ErrorCode.ILLEGAL_OPCODE, DEPTH - 1)),
        "bad_dep": (instr(rng, Opcode.LOAD, ["pop_prev"]), (ErrorCode.BAD_DEPENDENCY, DEPTH - 1)),
    }
    jobs = [job(body + [w], seed * 100 + k, 0.5) for k, (w, _) in enumerate(last_words.values())]
    for (name, (w, end)), res in zip(last_words.items(), run_dispatch(dispatcher, jobs)):
        check_run(body + [w], res, f"seed={seed} last={name}", end)
