# edgeplane: `make run` starts the platform on the quickstart example; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests wait on sockets and processes more than on the CPU: three pytest workers fit two cores.
TEST_WORKERS ?= 3

.PHONY: run test bench bench-control-plane bench-rules bench-tls bench-access bench-mirror lint clean test-tools
# apt-get, as root or through sudo; the package lists are refreshed only if an install needs it.
APT_INSTALL = sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get install -y --no-install-recommends $(1) || { $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends $(1); }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/edgeplane up --config examples/quickstart.yaml --bind 127.0.0.1 --demo-backend 127.0.0.1:9001 --data-dir .edgeplane

# What the tests run besides Python: pebble (the ACME test server of tests/test_acme.py).
test-tools:
	@command -v pebble >/dev/null 2>&1 || { $(call APT_INSTALL,pebble); }

test: $(STAMP) test-tools
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	bash bench/run.sh

bench-tls: $(STAMP)
	@{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1 || { $(call APT_INSTALL,nginx-light); }
	$(BIN)/python bench/tls.py

bench-control-plane: $(STAMP)
	$(BIN)/python bench/control_plane.py propagation
	$(BIN)/python bench/control_plane.py scale

bench-mirror: $(STAMP)
	@{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1 || { $(call APT_INSTALL,nginx-light); }
	@command -v wrk >/dev/null 2>&1 || { $(call APT_INSTALL,wrk); }
	$(BIN)/python bench/mirror.py

bench-rules: $(STAMP)
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/rules_e2e.py

bench-access: $(STAMP)
	$(BIN)/python bench/access.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
