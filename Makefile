# Two entry points for a fresh machine; both install what they need first (idempotent) into the
# project virtual environment .venv, which works on a stock distribution Python (PEP 668).
VENV ?= .venv
BIN := $(VENV)/bin
export KLEAR_VENV := $(VENV)

.PHONY: install demo test lint bench

install:
	@bash scripts/install.sh test

demo:
	@bash scripts/install.sh demo
	$(BIN)/klear demo

test:
	@bash scripts/install.sh test
	$(BIN)/python -m pytest -q

lint:
	@bash scripts/install.sh test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench:
	@bash scripts/install.sh test
	$(BIN)/python bench/loss_overhead.py
