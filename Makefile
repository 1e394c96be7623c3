# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what it needs the first time (and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean chromium bench bench-busy bench-listen bench-cpu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/connector demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# While iterating: everything but the slow groups (a real FHIR server; killing processes mid-sync).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -m "not integration and not crash"

# The benchmark of issue 11 (README, "Benchmark"); flags go in BENCH_ARGS, e.g. BENCH_ARGS="--quick".
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Issue 23: 8 syncs at once beside a CPU hog, CLI start-up and a no-op sync (quiet and busy).
bench-busy: $(STAMP)
	$(BIN)/python -m bench.busy_host $(BENCH_ARGS)

# One first sync's wall time and, with BENCH_ARGS="--py-spy", its CPU per process (docs/performance.md).
bench-cpu: $(STAMP)
	$(BIN)/python -m bench.run_cpu $(BENCH_ARGS)

# How fast `connector listen` answers a notification (docs/subscriptions.md).
bench-listen: $(STAMP)
	$(BIN)/python -m bench.listen $(BENCH_ARGS)

# The report's browser test needs Debian's chromium. Installed only on CI (CI=true), only when missing and
# only as root; elsewhere this does nothing (the test then skips locally and says why).
chromium:
	@if [ "$$CI" = "true" ] && [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the report's browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache demo-warehouse.db demo-warehouse.db-wal demo-warehouse.db-shm demo-report.html
