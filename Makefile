# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench fuzz clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ringzero demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

# the live-kernel mutating fuzzer for a long run (make test runs 200 cases);
# RINGZERO_FUZZ_SEED=<n> replays a run
fuzz: $(STAMP)
	RINGZERO_FUZZ_CASES=$${RINGZERO_FUZZ_CASES:-20000} $(PY) -m pytest -q -s -p no:cacheprovider --timeout=0 tests/kernel/test_fuzz.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
