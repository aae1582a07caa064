# Two entry points for a fresh machine; both install what they need first (idempotent).
PY ?= python3

.PHONY: install demo test lint bench

install:
	@bash scripts/install.sh

demo: install
	klear demo

test: install
	$(PY) -m pytest -q

lint: install
	ruff check . && ruff format --check .

bench: install
	$(PY) bench/loss_overhead.py
