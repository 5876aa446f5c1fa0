# The two commands a new user needs: `make run` and `make test`; `make test-fast` is the inner loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint typecheck unit postgres prometheus chromium bench clean

# Playwright's package drives Debian's chromium (scripts/ensure-chromium): it never downloads a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $@

# The real service when AWS credentials or an endpoint are configured (the same check `serve` makes), else the
# demo, so `make run` works on a fresh machine with no AWS account; either way on 127.0.0.1:8080 by default, and one
# process whatever STATUSCACHE_WORKERS says (`statuscache serve --workers N` is for a host with cores to spare).
run: install
	@if $(BIN)/python -c 'import sys; from service.runner import aws_configured; sys.exit(not aws_configured())'; then \
		echo "make run: AWS credentials or an endpoint are configured: running statuscache serve (real AWS)" >&2; \
		exec $(BIN)/statuscache serve --workers 1; \
	else \
		echo "make run: no AWS credentials or endpoint configured: running statuscache demo (a local fake AWS, invented images)" >&2; \
		exec $(BIN)/statuscache demo; \
	fi

test: install postgres prometheus chromium lint typecheck unit

# The inner loop (under two minutes, nothing to start first): ruff, the import contracts and every test that needs
# no PostgreSQL, browser, Prometheus or started process, on SQLite. The markers are set in tests/conftest.py.
FAST_TESTS := not (slow or postgresql or browser or prometheus)

test-fast: lint
	STATUSCACHE_TEST_BACKENDS=sqlite $(BIN)/python -m pytest -n 2 -m '$(FAST_TESTS)'

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy --strict service

# Two processes: most of a test's time is waiting (on AWS retries, loops, servers), so the two cores overlap it.
# A file at a time per process (loadfile): a module's private PostgreSQL server and the packaging test's wheel are
# built once. The 20 slowest tests are listed at the end: where the next minute of the suite goes.
unit: install postgres prometheus chromium
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=20

postgres:
	@scripts/ensure-postgres

# promtool and the Prometheus server (the exposition, the alert rules and a real scrape are tested with them).
prometheus:
	@scripts/ensure-prometheus

# Headless Chromium for the status board's browser test.
chromium:
	@scripts/ensure-chromium

# The docker-compose stack on a real Docker engine: installs docker.io and a Compose where missing, starts
# dockerd if none answers (and stops it after), builds stand-ins for images no registry serves, brings the
# stack up, checks it and takes it down (scripts/compose_test.py). `make test` needs no Docker.
.PHONY: compose-test
compose-test: install
	$(BIN)/python scripts/compose_test.py

bench: install postgres
	@scripts/ensure-wrk
	$(BIN)/python -m bench
	$(BIN)/python -m bench.floor
	$(BIN)/python -m bench.profile --workload describe
	$(BIN)/python -m bench.profile --workload describe --tokens
	$(BIN)/python -m bench.stream_floor
	$(BIN)/python -m bench.workers
	$(BIN)/python -m bench.notify
	$(BIN)/python -m bench.notify --fanout all --waits 0 --ratio-rounds 0
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) statuscache.db statuscache.db-wal statuscache.db-shm statuscache.db-leases
