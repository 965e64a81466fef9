# qtkit: two commands on a fresh machine.
#   make test   creates .venv, installs qtkit with its test extras (pinned in constraints.txt), runs the suite
#   make demo   makes maze2d-umaze (D4RL semantics) if missing, trains dt-gpt and qt-maze2d side by side, writes runs/demo/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: test demo install lint bench bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,makers,sweep,bench]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(VENV)/bin/qtkit demo --out runs/demo

# Quick speed figures on this machine (full commands and recorded figures: benchmarks/RESULTS.md).
bench: $(STAMP)
	$(PY) benchmarks/windows.py
	$(PY) benchmarks/backups.py --device cpu --threads 1 --repeats 3
	$(PY) benchmarks/training.py --sizes small --threads 2 --repeats 3
	$(PY) benchmarks/ar_q.py --device cpu --threads 1 --repeats 3 --calls 5

# GPU throughput of the fast path (issue 18): steps/s, tokens/s, MFU per variant, acting latency; under 8 min on
# one H200; without CUDA it runs --smoke (tiny sizes). Table in benchmarks/results/gpu/.
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
