# The two commands README.md starts with: `make demo` and `make test`.
# Each creates .venv when it is missing and installs autopar into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-pythons lint bench bench-converge bench-threads bench-overhead clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

# The suite on each CPython in noxfile.py (pyenv's), or on some: make test-pythons PYTHONS="3.10 3.13"
test-pythons: $(STAMP)
	$(BIN)/nox --session tests $(if $(PYTHONS),--python $(PYTHONS))

lint: $(STAMP)
	$(BIN)/ruff check autopar tests benchmarks examples noxfile.py
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench,dask]"
	$(BIN)/python benchmarks/compare.py
	$(BIN)/python benchmarks/cluster.py

bench-converge: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench,dask]"
	$(BIN)/python benchmarks/converge.py

bench-threads: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BIN)/python benchmarks/threads.py

bench-overhead: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
