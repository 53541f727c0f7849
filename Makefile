# qat_lab: `make sweep` runs the default study, `make test` the test suite. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup sweep test test-fast bench gpu-check lock clean

setup: $(STAMP)

# The venv is rebuilt when the pins or the package metadata change.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

sweep: $(STAMP)
	$(VENV)/bin/qatlab -m bits=4,6,8,16 warmdown=0.1,0.33

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) -m bench.run --out docs/benchmarks.md
	$(PY) -m bench.ief_bench --out docs/benchmarks_ief.md
	$(PY) bench/analysis_bench.py --out docs/benchmarks_analysis.md
	$(PY) -m bench.cli_startup --out docs/benchmarks_cli.md

# The GPU path in one command: throughput and bf16 MFU (15m/50m/100m, eager and compiled), bf16 vs
# fp32 parity, Muon's bf16 Newton-Schulz, a 4-job CLI sweep; CPU mode (tiny models) without a GPU.
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check --out docs/benchmarks_gpu.md

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu//' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) outputs build dist src/*.egg-info
