# `make demo` and `make test` set up .venv (CPU PyTorch on a machine without a GPU) and run.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade "setuptools>=70.1" wheel ninja $(TORCH)
	$(VENV)/bin/pip install --no-build-isolation -e ".[test]"
	touch $@

.PHONY: setup demo test lint
setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/powerbert demo

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
