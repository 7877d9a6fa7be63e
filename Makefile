# Two commands do all the set-up on a fresh clone:
#   make demo   - make the environment and run the main job
#   make test   - make the environment and run the default test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two pytest workers: the suite is mostly compilation and small steps, which
# one process leaves a core idle for (PYTEST_ARGS= for a serial run).
PYTEST_ARGS ?= -n 2

.PHONY: venv demo toy-demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.breastmnist_sgd_vs_sam

toy-demo: $(STAMP)
	$(PY) -m experiments.toy_demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) --durations=20

lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/pyrefly check

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.data_pipeline
	$(PY) -m benchmarks.step_time

clean:
	rm -rf $(VENV) .pytest_cache .cache
