"""The RL data row (verl's parquet schema) and loading with errors that name file, line and field.

A row::

    {"data_source": "aime24", "ability": "math",
     "prompt": [{"role": "user", "content": "..."}],
     "reward_model": {"style": "rule", "ground_truth": "42"},
     "extra_info": {...}}

``ground_truth`` is a string for math and a JSON string or object describing
tests for code (see ``klear.rewards.code``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class DataError(ValueError):
    """A data file that cannot be used; the message names file, line (or row) and field."""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    style: str = "rule"
    ground_truth: Any


class RLRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    data_source: str
    ability: str = "math"
    prompt: list[Message] = Field(min_length=1)
    reward_model: RewardSpec
    extra_info: dict[str, Any] = Field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record) pairs: ``line N`` for jsonl, ``item N`` for json, ``row N`` for parquet (1-based)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"line {n}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}: line {n}: invalid JSON ({exc.msg} at column {exc.colno})"
                    ) from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of rows, got {type(data).__name__}")
        for n, item in enumerate(data, 1):
            yield f"item {n}", item
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow (`pip install pyarrow`)") from None
        for n, item in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"row {n}", item
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def load_rl_rows(path: str | Path) -> list[RLRow]:
    """All rows of an RL data file, validated; the first bad row raises with file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    for where, record in _records(path):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {where}: expected an object, got {type(record).__name__}")
        if isinstance(record.get("prompt"), str):  # tolerate a bare string prompt
            record = {**record, "prompt": [{"role": "user", "content": record["prompt"]}]}
        try:
            rows.append(RLRow.model_validate(record))
        except ValidationError as err:
            e = err.errors()[0]
            field = ".".join(str(p) for p in e["loc"]) or "<row>"
            raise DataError(f"{path}: {where}: field {field!r}: {e['msg']}") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
