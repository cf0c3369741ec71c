# Two commands from a clean clone: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOME_DIR ?= data
DEMO_CUSTOMERS ?= 20000
DEMO_PORT ?= 3000
DEMO_PAST ?= 2025-08-25
PYTEST_ARGS ?=

export CRMSCORE_HOME ?= $(abspath $(HOME_DIR))

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

# Reinstall only when the dependency pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,redis,postgres,spark]'
	touch $@

# The whole flow on a synthetic world (resumable: a rerun skips finished steps), then the
# service in the foreground with working curl calls printed once it is ready.
# The CRM report comes between them (docs/report.md). Its score monitor judges past runs: the
# demo backfills one at DEMO_PAST (the synthetic world ends 2025-12-27, so both windows have
# passed) with today's champions, which is in-sample and marked so on the page.
demo: setup
	$(BIN)/crmscore pipeline run --world $(DEMO_CUSTOMERS) --seed 1
	$(BIN)/crmscore score churn --as-of $(DEMO_PAST) --reasons none
	$(BIN)/crmscore score lead --as-of $(DEMO_PAST) --reasons none
	$(BIN)/crmscore report
	@echo "CRM report: open $(CRMSCORE_HOME)/reports/latest.html, or GET http://localhost:$(DEMO_PORT)/report with a report or admin key while the service runs"
	$(BIN)/crmscore serve --port $(DEMO_PORT) --as-of snapshot --print-examples

# The whole suite, slow tests included (CI runs this), after the linter (a second).
# Two workers on two cores, so each one's OpenMP (LightGBM, implicit) gets one thread
# instead of fighting for two.
test: setup lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The quick inner loop: everything not marked slow.
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check crmdata features training serving pipelines tests bench

# Each script prints its figures and rewrites its own section of BENCHMARKS.md.
# Heavy: 1M-customer worlds; run them on an otherwise idle machine.
bench: setup
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(HOME_DIR) .pytest_cache
