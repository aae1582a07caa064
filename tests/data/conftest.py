"""Shared helpers for the data tests: the shipped fixtures and an in-process ``klear data`` runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from klear.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def klear(capsys: pytest.CaptureFixture[str]):
    """Run ``klear data ARGS...`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: Any) -> tuple[int, str, str]:
        code = main(["data", *map(str, args)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
