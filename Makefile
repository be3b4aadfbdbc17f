# The two commands of the README:
#   make run    set up .venv, install warnsvc, and run it on config/warnsvc.yaml
#   make test   set up .venv with the dev tools, then lint, type-check and run every test
# Only Python 3.11+ and make are needed: make test installs the PostgreSQL server binaries its
# throw-away test server needs (scripts/ensure-postgres, docs/testing.md) when they are missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/warnsvc.yaml

.PHONY: install run test lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/warnsvc run -c $(CONFIG)

demo: $(STAMP)
	$(BIN)/warnsvc demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	scripts/ensure-postgres
	$(BIN)/pytest

bench: $(STAMP)
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build src/*.egg-info
