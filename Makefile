# `make demo` and `make test` set up .venv (CPU PyTorch on a machine without a GPU) and run.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# The build's setuptools, as pyproject.toml's [build-system] (PyTorch 2.11 refuses setuptools 82 and newer).
SETUPTOOLS ?= setuptools>=77.0.3,<82

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade "$(SETUPTOOLS)" wheel ninja $(TORCH)
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
