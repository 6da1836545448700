# One-command set-up and runs. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# JAX_VARIANT=cuda installs the CUDA 12 build of the same jax version (requirements-cuda.txt).
JAX_VARIANT ?= cpu
REQS := requirements-dev.txt
ifeq ($(JAX_VARIANT),cuda)
REQS += requirements-cuda.txt
endif

.PHONY: env demo compare test lint format clean-venv

env: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-cuda.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(addprefix -r ,$(REQS))
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint allen-env-optional
	$(PY) -m pytest -q -n 2 tests

# Builds .venv-allen when it can; if not, tests/test_allen_*.py report "skipped" (never "passed").
.PHONY: allen-env-optional
allen-env-optional:
	@$(MAKE) --no-print-directory allen-env || echo "WARNING: allen-env could not be built; the allensdk cross-check is skipped" >&2

# `make demo`: the whole benchmark on the simulated Observatory (configs/demo.py), resumable:
# run it again after an interruption. SCALE=full: paper-size models and schedules (for a GPU).
# `make compare`: the same for seeds 0, 1, 2 (mean +- sd in runs/compare/report.md).
SCALE ?= demo
DEMO_DIR ?= runs/demo$(if $(filter-out demo,$(SCALE)),_$(SCALE))
COMPARE_DIR ?= runs/compare$(if $(filter-out demo,$(SCALE)),_$(SCALE))
SEEDS ?= 0,1,2

demo: $(STAMP)
	$(PY) -m quantformer_jax.demo --workdir $(DEMO_DIR) --scale $(SCALE)

compare: $(STAMP)
	$(PY) -m quantformer_jax.demo --workdir $(COMPARE_DIR) --scale $(SCALE) --seeds $(SEEDS)

clean-venv:
	rm -rf $(VENV)

# The allensdk environment (real Allen data; STACK.md): its own venv, because allensdk pins
# numpy<1.24. The project is installed without deps so its data layer (no jax) imports there.
ALLEN_PYTHON ?= python3.11
ALLEN_VENV ?= .venv-allen
ALLEN_PY := $(ALLEN_VENV)/bin/python
ALLEN_STAMP := $(ALLEN_VENV)/.installed

.PHONY: allen-env

allen-env: $(ALLEN_STAMP)

$(ALLEN_STAMP): requirements-allen.txt
	@command -v $(ALLEN_PYTHON) >/dev/null || { echo "allen-env needs $(ALLEN_PYTHON) \
	(allensdk 2.16.2 runs on Python <= 3.11); set ALLEN_PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(ALLEN_PY) || $(ALLEN_PYTHON) -m venv $(ALLEN_VENV)
	$(ALLEN_PY) -m pip install -q --upgrade pip
	$(ALLEN_PY) -m pip install -q -r requirements-allen.txt
	$(ALLEN_PY) -m pip install -q --no-deps -e .
	touch $(ALLEN_STAMP)
