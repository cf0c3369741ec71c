# Two commands from a clean clone: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOME_DIR ?= data
DEMO_CUSTOMERS ?= 20000
PYTEST_ARGS ?=

export CRMSCORE_HOME ?= $(abspath $(HOME_DIR))

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

# Reinstall only when the dependency pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,redis,postgres]'
	touch $@

demo: setup
	$(BIN)/crmscore generate --customers $(DEMO_CUSTOMERS) --seed 1
	$(BIN)/crmscore validate

# The whole suite, slow tests included (CI runs this). Two workers on two cores, so
# each one's OpenMP (LightGBM, implicit) gets one thread instead of fighting for two.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The quick inner loop: everything not marked slow.
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check features training serving pipelines tests bench

bench: setup
	$(BIN)/python bench/bench_data.py

clean:
	rm -rf $(HOME_DIR) .pytest_cache
