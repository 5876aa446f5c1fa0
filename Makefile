# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck unit postgres prometheus chromium bench clean

# Playwright's package drives Debian's chromium (scripts/ensure-chromium): it never downloads a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $@

# The real service when AWS credentials or an endpoint are configured (the same check `serve` makes), else the
# demo, so `make run` works on a fresh machine with no AWS account; either way on 127.0.0.1:8080 by default.
run: install
	@if $(BIN)/python -c 'import sys; from service.runner import aws_configured; sys.exit(not aws_configured())'; then \
		echo "make run: AWS credentials or an endpoint are configured: running statuscache serve (real AWS)" >&2; \
		exec $(BIN)/statuscache serve; \
	else \
		echo "make run: no AWS credentials or endpoint configured: running statuscache demo (a local fake AWS, invented images)" >&2; \
		exec $(BIN)/statuscache demo; \
	fi

test: install postgres prometheus chromium lint typecheck unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy --strict service

unit: install postgres prometheus chromium
	$(BIN)/python -m pytest

postgres:
	@scripts/ensure-postgres

# promtool and the Prometheus server (the exposition, the alert rules and a real scrape are tested with them).
prometheus:
	@scripts/ensure-prometheus

# Headless Chromium for the status board's browser test.
chromium:
	@scripts/ensure-chromium

bench: install postgres
	@scripts/ensure-wrk
	$(BIN)/python -m bench
	$(BIN)/python -m bench.notify

clean:
	rm -rf $(VENV) statuscache.db statuscache.db-wal statuscache.db-shm
