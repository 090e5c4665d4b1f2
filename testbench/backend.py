"""The Verilator backend: run `sim.backend.Job`s on the RTL through cocotb."""

from rtl.params import ArrayParams
from rtl.top import Accelerator
from sim.backend import Job, RunResult

from .verilator import build, run_cocotb

__all__ = ["VerilatorBackend", "record_waves", "MAX_CYCLES"]

#: A guard for runs under cocotb (about 30k cycles/s): the RTL cannot hang on any program,
#: so reaching this means a bug, reported as a timeout.
MAX_CYCLES = 5_000_000


class VerilatorBackend:
    """Build the accelerator for `params` once; run batches of jobs on it back to back."""

    name = "verilator"

    def __init__(self, params: ArrayParams, waves: bool = False):
        self.params = params
        self.waves = waves
        self.runner, self.build_dir = build(Accelerator(params), f"accel-{params.name}",
                                            toplevel="ternary_accel", waves=waves)

    def run(self, jobs: list) -> list:
        p = self.params
        for job in jobs:
            if len(job.program) > p.imem_depth:
                raise ValueError(f"program of {len(job.program)} instructions exceeds program "
                                 f"memory ({p.imem_depth})")
        payload = {"port_bytes": p.port_bytes, "imem_depth": p.imem_depth,
                   "counter_bits": p.counter_bits, "jobs": [
            {"program": [f"{w:x}" for w in job.words()],
             "memory": {str(a): f"{v:x}" for a, v in job.memory.word_dict().items()},
             "mode": job.mode, "seed": job.seed, "latency": p.mem.read_latency,
             "max_cycles": job.max_cycles or MAX_CYCLES}
            for job in jobs]}
        out = run_cocotb(self.runner, self.build_dir, "testbench.accel_cocotb", "ternary_accel",
                         payload, waves=self.waves)
        results = [RunResult.from_json(r, p) for r in out["results"]]
        for r, raw in zip(results, out["results"]):
            r.reads, r.responses = raw["reads"], raw["responses"]
            r.waves = out.get("waves")
        return results

    def run_one(self, job: Job) -> RunResult:
        return self.run([job])[0]


def record_waves(params: ArrayParams, job: Job) -> str:
    """Rerun `job` on a build with tracing; return where the waveform (VCD) went."""
    result = VerilatorBackend(params, waves=True).run_one(job)
    return ", ".join(result.waves or []) or "(no waveform produced)"
