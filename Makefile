# Two commands on a fresh machine: `make demo` runs the system, `make test` runs the tests.
# Both create .venv and install the project into it first (nothing needs installing by hand).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench bench-matrix smoke clean

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

# Every benchmark once, each printing its figure beside what it is compared with. The capacity
# line runs one representative cell per enforcement mode (20 s windows); `bench-matrix` runs
# every mode x {60, 150, 600}/min x {2, 5}x oversubscription at 60 s windows (about an hour on 2 cores).
bench: $(VENV)/.installed
	$(PY) benchmarks/broker_throughput.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/delayed_memory.py
	$(PY) benchmarks/retry_delay.py
	$(PY) benchmarks/stream_latency.py
	$(PY) benchmarks/surface.py
	$(PY) -m benchmarks.redaction
	cd benchmarks && ../$(PY) gateway.py
	$(PY) -m benchmarks.capacity --pool --window 20 --rates 150 --over 2

bench-matrix: $(VENV)/.installed
	$(PY) -m benchmarks.capacity --window 60 --rates 60,150,600 --over 2,5

clean:
	rm -rf $(VENV)
