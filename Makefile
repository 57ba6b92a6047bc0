# Two commands on a fresh machine: `make demo` runs the system, `make test` runs the tests.
# Both create .venv and install the project into it first (nothing needs installing by hand).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/routerctl demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(VENV)/.installed
	$(PY) benchmarks/broker_throughput.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/delayed_memory.py
	$(PY) benchmarks/capacity.py

clean:
	rm -rf $(VENV)
