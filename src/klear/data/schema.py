"""The data rows (RL prompts in verl's parquet schema, SFT conversations), reading and writing them.

An RL row::

    {"data_source": "aime24", "ability": "math",
     "prompt": [{"role": "user", "content": "..."}],
     "reward_model": {"style": "rule", "ground_truth": "42"},
     "extra_info": {...}}

``ground_truth`` is the answer string for math. For code it is a test specification, stored as a
JSON string (so a parquet column holds one type) or the decoded object, in one of the shapes
:func:`klear.rewards.code.parse_tests` reads: stdin/stdout ``{"inputs": [...], "outputs": [...]}``,
functional ``{"inputs": [[args...]], "outputs": [...], "fn_name": "f"}``, a LiveCodeBench list of
``{"input", "output", "testtype"}``, or HumanEval ``{"test", "entry_point"}``. A code row whose tests
cannot be read is a data error here, before any training step.

An SFT row::

    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}],
     "source": "r1-0528-math", "difficulty": 0.25, "correct": false}

``difficulty`` is the problem's pass rate in [0, 1] -- the fraction of a reference model's samples
that solve it, as ``klear data filter-math`` measures it (lower is harder); ``correct`` says whether
this response was verified right (None: not verified).

Every error names the file, the 1-based location (``line N`` for jsonl, ``item N`` for json,
``row N`` for parquet) and the field, because users bring data in many shapes and a message without
all three sends them hunting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from klear.errors import KlearError
from klear.io import atomic_path, write_atomic

#: File types every data command reads and writes.
SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
RowKind = Literal["rl", "sft"]


class DataError(KlearError, ValueError):
    """A data file that cannot be used; the message names file, line (or row) and field."""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    style: str = "rule"
    ground_truth: Any


def _math_answer(gt: Any) -> bool:
    """A math ground truth we can score: a string, a number, or a non-empty list of those."""
    if isinstance(gt, list | tuple):
        return bool(gt) and all(_math_answer(g) and not isinstance(g, list | tuple) for g in gt)
    return isinstance(gt, str | int | float) and not isinstance(gt, bool)


class RLRow(BaseModel):
    """One RL prompt (verl's schema); unknown top-level keys are kept and written back."""

    model_config = ConfigDict(extra="allow")
    data_source: str
    ability: str = "math"
    prompt: list[Message] = Field(min_length=1)
    reward_model: RewardSpec
    extra_info: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _code_tests_readable(self) -> RLRow:
        # a code row's tests must parse now: a bad spec found mid-training costs a run
        gt = self.reward_model.ground_truth
        if self.ability == "code":
            code_tests(gt)
        elif self.ability == "math" and not _math_answer(gt):
            # scored as a string it would be wrong for every response: a silent -1 for the whole prompt
            raise ValueError(
                "a math answer must be a string or a number (or a list of them), got " + type(gt).__name__
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SFTRow(BaseModel):
    """One SFT conversation; the loss is on assistant turns, so there must be one."""

    model_config = ConfigDict(extra="allow")
    messages: list[Message] = Field(min_length=1)
    source: str | None = None
    difficulty: float | None = Field(None, ge=0.0, le=1.0, description="problem pass rate (lower: harder)")
    correct: bool | None = None

    @field_validator("messages")
    @classmethod
    def _has_assistant(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "assistant" for m in messages):
            raise ValueError("no assistant message: SFT needs a response to learn from")
        return messages

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def prompt_text(self) -> str:
        """The user side of the conversation (what duplicate removal compares)."""
        return "\n".join(m.content for m in self.messages if m.role == "user")


Row = TypeVar("Row", RLRow, SFTRow)
MODELS: dict[str, type[BaseModel]] = {"rl": RLRow, "sft": SFTRow}


def code_tests(ground_truth: Any) -> int:
    """Number of tests in a code ground truth; ValueError (from ``parse_tests``) when unreadable."""
    from klear.rewards.code import parse_tests  # lazy: keeps `klear --help` fast

    return len(parse_tests(ground_truth).tests)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(location, record) pairs: ``line N`` for jsonl, ``item N`` for json, ``row N`` for parquet (1-based).

    jsonl and parquet stream (parquet by record batch), so a large file is never held whole.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}: line {n}: not UTF-8 text (byte {exc.start + 1})") from None
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
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
        import pyarrow as pa

        n = 0
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
            for batch in batches:
                for item in batch.to_pylist():
                    n += 1
                    yield f"row {n}", item
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable parquet file after row {n} ({exc})") from None
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def count_records(path: str | Path) -> int | None:
    """How many records a file holds, cheaply (for a progress bar's total); None when unknown."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            with path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ImportError, ValueError):  # unreadable: iter_records says why
        return None
    return None


def _normalise(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """Shapes that mean the same thing: a bare string prompt, parquet's null for an empty struct."""
    if kind == "rl":
        if isinstance(record.get("prompt"), str):
            record = {**record, "prompt": [{"role": "user", "content": record["prompt"]}]}
        if "extra_info" in record and record["extra_info"] is None:
            record = {**record, "extra_info": {}}
    return record


def parse_row(record: Any, kind: RowKind, where: str) -> RLRow | SFTRow:
    """Validate one record; DataError ``"{where}: field 'a.b': problem"`` (``where`` names file and line)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    try:
        return MODELS[kind].model_validate(_normalise(record, kind))  # type: ignore[return-value]
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(p) for p in e["loc"]) or "<row>"
        msg = e["msg"]
        if e["type"] == "value_error" and not e["loc"]:  # a model-level check (code tests)
            field, msg = "reward_model.ground_truth", msg.removeprefix("Value error, ")
        raise DataError(f"{where}: field {field!r}: {msg}") from None


def iter_rows(
    path: str | Path, kind: RowKind = "rl", errors: list[str] | None = None
) -> Iterator[tuple[str, RLRow | SFTRow]]:
    """Validated (location, row) pairs, streamed.

    With ``errors`` given, a bad row's message is appended there and the row skipped (so a
    validator can report many at once); without, the first bad row raises. Unreadable JSON always
    raises: nothing after it can be located reliably.
    """
    path = Path(path)
    for where, record in iter_records(path):
        try:
            yield where, parse_row(record, kind, f"{path}: {where}")
        except DataError as exc:
            if errors is None:
                raise
            errors.append(str(exc))


def load_rows(path: str | Path, kind: RowKind) -> list[Any]:
    """All rows of a data file, validated; the first bad row raises with file, line and field."""
    rows = [row for _, row in iter_rows(path, kind)]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def load_rl_rows(path: str | Path) -> list[RLRow]:
    """All rows of an RL data file, validated; the first bad row raises with file, line and field."""
    return load_rows(path, "rl")


def load_sft_rows(path: str | Path) -> list[SFTRow]:
    """All rows of an SFT data file, validated; the first bad row raises with file, line and field."""
    return load_rows(path, "sft")


def detect_kind(path: str | Path) -> RowKind:
    """``sft`` when the first record has ``messages`` and no ``prompt``, else ``rl``."""
    for _, record in iter_records(path):
        if isinstance(record, dict) and "messages" in record and "prompt" not in record:
            return "sft"
        return "rl"
    raise DataError(f"{path}: no rows")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _empty_structs_to_null(value: Any) -> Any:
    """``{}`` anywhere inside a value -> None (parquet cannot store a struct without fields)."""
    if isinstance(value, dict):
        return {k: _empty_structs_to_null(v) for k, v in value.items()} if value else None
    if isinstance(value, list):
        return [_empty_structs_to_null(v) for v in value]
    return value


def _parquet_safe(record: dict[str, Any]) -> dict[str, Any]:
    """Make a row storable in typed columns: a non-string ground truth as JSON text (the code
    reward and the math verifier both read that), an empty struct as null (reading maps a null
    ``extra_info`` back to ``{}``)."""
    out = dict(record)
    spec = out.get("reward_model")
    if isinstance(spec, dict) and not isinstance(spec.get("ground_truth"), str | None):
        out["reward_model"] = {**spec, "ground_truth": json.dumps(spec["ground_truth"], ensure_ascii=False)}
    return {k: _empty_structs_to_null(v) for k, v in out.items()}


def write_rows(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write row dicts atomically as jsonl, json or parquet (by suffix); returns the count written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported output type {suffix!r}; use .jsonl, .json or .parquet")
    count = 0

    def lines() -> Iterator[str]:
        nonlocal count
        for record in records:
            count += 1
            yield json.dumps(record, ensure_ascii=False) + "\n"

    if suffix in (".jsonl", ".ndjson"):
        write_atomic(path, lines())
    elif suffix == ".json":
        items = list(records)
        count = len(items)
        write_atomic(path, [json.dumps(items, ensure_ascii=False, indent=1), "\n"])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        items = [_parquet_safe(r) for r in records]
        count = len(items)
        try:
            # pa.array infers the struct type from every row (from_pylist would use the first only)
            table = pa.Table.from_struct_array(pa.array(items)) if items else pa.table({})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise DataError(
                f"{path}: rows do not fit one parquet schema ({exc}); write .jsonl instead"
            ) from None
        try:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        except pa.ArrowException as exc:
            raise DataError(
                f"{path}: cannot write these rows as parquet ({exc}); write .jsonl instead"
            ) from None
    return count
