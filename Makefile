# Conveniences around the README's two commands; each makes .venv if needed.
PYTHON ?= python3
VENV ?= .venv

.PHONY: run test lint format bench figures

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

run: $(VENV)/bin/python
	$(VENV)/bin/pip install -e .
	$(VENV)/bin/pot-jax train

test: $(VENV)/bin/python
	$(VENV)/bin/pip install -e '.[test]'
	$(VENV)/bin/python -m pytest

lint: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e .
	$(VENV)/bin/python benchmarks/run_all.py
