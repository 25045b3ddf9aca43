# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck imports unit system-packages clean bench bench-quick bench-packages bench-ab bench-webhooks bench-gc

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	@echo "The command line is $(BIN)/shipyard; in another terminal, for example:"
	@echo "  export SHIPYARD_REGISTRY=http://127.0.0.1:5000 SHIPYARD_USER=admin"
	@echo "  $(BIN)/shipyard accounts list"
	$(BIN)/shipyard serve

system-packages:
	bash scripts/install-system-packages.sh

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

imports: $(VENV)/.test-installed
	$(BIN)/lint-imports

unit: $(VENV)/.test-installed
	$(BIN)/pytest tests/unit

test: $(VENV)/.test-installed system-packages lint typecheck imports
	$(BIN)/pytest

# -- the benchmark (bench/): Shipyard beside CNCF Distribution and nginx, in one run -------------
BENCH_ARGS ?=
BENCH_TOOLS := hey wrk nginx-light docker-registry skopeo curl

$(VENV)/.bench-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $@ $(VENV)/.run-installed

# Debian packages the benchmark drives; installed only when running as root and missing.
bench-packages:
	@missing=""; \
	for pkg in $(BENCH_TOOLS); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then echo "bench: not root, cannot install:$$missing" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  for service in nginx docker-registry; do \
	    (systemctl stop $$service || service $$service stop) >/dev/null 2>&1 || true; \
	  done; \
	fi

# the registry beside Distribution and nginx, then GC's rate and push throughput with a webhook
bench: $(VENV)/.bench-installed $(VENV)/.test-installed bench-packages system-packages
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.gc $(BENCH_GC_ARGS)
	$(BIN)/python -m bench.webhooks

# push throughput with one webhook subscribed vs none, side by side (bench/webhooks.py)
bench-webhooks: $(VENV)/.test-installed
	$(BIN)/python -m bench.webhooks

bench-quick: $(VENV)/.bench-installed bench-packages system-packages
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

# the manifest GET hot path beside an earlier commit, in interleaved rounds: CPU per request and whether
# it stays within 10% (`make bench BENCH_ARGS="--against REV"` does the same)
AGAINST ?= 772227a
bench-ab: $(VENV)/.bench-installed bench-packages
	$(BIN)/python -m bench.ab --against $(AGAINST)

# GC rate with 100,000 blobs (10% garbage) and GC time at 1% against 10%, on SQLite and PostgreSQL
bench-gc: $(VENV)/.bench-installed
	$(BIN)/python -m bench.gc $(BENCH_GC_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
