# The two commands of the README:
#   make run    set up .venv with warnsvc and its runtime dependencies only, and run it on
#               config/warnsvc.yaml
#   make test   add the dev tools to .venv, then lint, type-check and run every test
# Only Python 3.11+ and make are needed: make test installs the PostgreSQL server binaries its
# throw-away test server needs (scripts/ensure-postgres, docs/testing.md) when they are missing,
# and the browser tests' Chromium and axe-core (scripts/ensure-chromium, scripts/ensure-axe).
# Every install is pinned by constraints.txt, the lock file scripts/lock makes from
# pyproject.toml (the Dockerfile installs with it too).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --constraint constraints.txt
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
CONFIG ?= config/warnsvc.yaml

.PHONY: install install-dev run test lint typecheck pytest demo bench clean

# The runtime: what `make run` needs, nothing more. warnsvc's bytecode is written here: an
# editable install writes none, and where Python may not write it later
# (PYTHONDONTWRITEBYTECODE) every command would compile every module at every start.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) -e .
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

# The dev tools (pytest, ruff, mypy, ...) on top.
$(DEV): $(STAMP)
	$(PIP) -e '.[dev]'
	touch $(DEV)

install: $(STAMP)

install-dev: $(DEV)

run: $(STAMP)
	$(BIN)/warnsvc run -c $(CONFIG)

demo: $(STAMP)
	$(BIN)/warnsvc demo

test: lint typecheck pytest

lint: $(DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(DEV)
	$(BIN)/mypy

pytest: $(DEV)
	scripts/ensure-postgres
	scripts/ensure-chromium
	scripts/ensure-axe
	$(BIN)/pytest

bench: $(DEV)
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build src/*.egg-info
