# The two commands of the README: `make demo` (main job) and `make test` (test suite). Both set up .venv first.
.PHONY: setup demo test test-all bench
PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -W ignore::FutureWarning -m mvic.tools.demo

test: setup
	@bash scripts/test-tools.sh
	@$(PY) -m pytest -q

test-all: setup
	@bash scripts/test-tools.sh
	@$(PY) -m pytest -q -m "slow or not slow"

bench: setup
	@$(PY) benchmarks/codec_speed.py
