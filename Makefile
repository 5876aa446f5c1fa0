# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck unit postgres bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $@

run: install
	$(BIN)/statuscache serve

test: install postgres lint typecheck unit

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy --strict service

unit: install postgres
	$(BIN)/python -m pytest

postgres:
	@scripts/ensure-postgres

bench: install postgres
	@scripts/ensure-wrk
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) statuscache.db statuscache.db-wal statuscache.db-shm
