"""Benchmark problems from the shared files, any jsonl/json/parquet file, HumanEval and LiveCodeBench.

Every loader returns a list of :class:`Problem`: a stable ``id``, the row
``index``, the ``question`` sent as the user turn, and either a reference
``answer`` (math) or a ``tests`` spec (code). Real benchmark files disagree on
where these live (the three shared files use three schemas, which is how the
reference judge came to score every HMMT row as wrong), so each file is read
through an explicit :class:`FieldMap`, given by name, by the caller, or detected
with a clear error when the detection would be a guess (rows, fields and their
detection: :mod:`klear.eval.fields`).

Code test specs (``Problem.tests``), in the two formats the code reward accepts:

- HumanEval: ``{"test": <source defining check(candidate)>, "entry_point": <function name>}``.
- LiveCodeBench style: ``{"tests": [{"input": str, "output": str, "testtype": "stdin" | "functional"}, ...],
  "fn_name": <method name or None>}``. ``stdin`` tests feed ``input`` on stdin
  and compare stdout with ``output``; ``functional`` tests call ``fn_name`` with
  the JSON values on the lines of ``input`` and compare with the JSON ``output``
  (LiveCodeBench's call-based convention). ``fn_name`` comes from the row's
  ``metadata.func_name``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from klear.eval.fields import (  # noqa: F401  (re-exported: the loaders' public names)
    ANSWER_KEYS,
    CODE_TEST_KEYS,
    ID_KEYS,
    MISSING,
    QUESTION_KEYS,
    WEAK_ANSWER_KEYS,
    BenchmarkError,
    FieldMap,
    Row,
    as_answer,
    as_id,
    as_question,
    assign_ids,
    detect_fields,
    get_field,
    is_weak_answer_path,
    last_boxed,
    read_rows,
)

Ability = Literal["math", "code"]

#: Environment variable naming the directory that holds aime24.jsonl, aime25.jsonl, hmmt25.jsonl.
BENCHMARKS_DIR_ENV = "KLEAR_BENCHMARKS_DIR"


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    id: stable identifier (the file's own id when it has one, else the row
    index as a string); samples and generations refer to problems by it.
    index: 0-based position among the file's rows (generations may use it instead of id).
    question: the text of the user turn sent to the model.
    answer: the reference answer for math (None for code).
    tests: the code test spec (None for math); see the module docstring.
    data_source: the benchmark it came from ("aime24", a file's stem, ...).
    ability: "math" or "code": which reward scores it.
    meta: everything else worth keeping (raw question, starter code, dates, ...).
    """

    id: str
    index: int
    question: str
    answer: str | None = None
    tests: dict[str, Any] | None = None
    data_source: str = ""
    ability: Ability = "math"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "index": self.index,
            "question": self.question,
            "answer": self.answer,
            "tests": self.tests,
            "data_source": self.data_source,
            "ability": self.ability,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Problem:
        return cls(
            id=str(row["id"]),
            index=int(row["index"]),
            question=str(row["question"]),
            answer=row.get("answer"),
            tests=row.get("tests"),
            data_source=str(row.get("data_source", "")),
            ability=row.get("ability", "math"),
            meta=dict(row.get("meta") or {}),
        )


@dataclass(frozen=True)
class SharedBenchmark:
    """A benchmark shipped in the shared directory, with its schema spelled out."""

    filename: str
    fields: FieldMap
    ability: Ability = "math"


#: The shared files and their schemas (see shared/benchmarks/README.md). The
#: explicit maps are the point: AIME24 keeps the answer in meta.answer, AIME25
#: only in meta.solution, HMMT25 at the top level (its `solution` is `\boxed{...}`).
SHARED_BENCHMARKS: dict[str, SharedBenchmark] = {
    "aime24": SharedBenchmark("aime24.jsonl", FieldMap("messages", "meta.answer", "meta.unique_id")),
    "aime25": SharedBenchmark("aime25.jsonl", FieldMap("messages", "meta.solution", "meta.unique_id")),
    "hmmt25": SharedBenchmark("hmmt25.jsonl", FieldMap("messages", "answer", "id")),
}

#: Names that :func:`load_benchmark` resolves without a path.
BENCHMARK_NAMES: tuple[str, ...] = (*SHARED_BENCHMARKS, "humaneval")

# ----------------------------------------------------------------------------- locating files


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def benchmarks_dir() -> Path:
    """The directory holding the shared benchmark files.

    ``$KLEAR_BENCHMARKS_DIR`` when set (and then it must exist); else the first
    ``shared/benchmarks`` found next to the repository root or up to two levels
    above it (a checkout in /work/main and a worktree in /work/wt/x both find
    /work/shared/benchmarks), then the same from the current directory.
    """
    env = os.environ.get(BENCHMARKS_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise BenchmarkError(f"${BENCHMARKS_DIR_ENV}={env} is not a directory")
        return path
    tried: list[Path] = []
    for base in (_repo_root(), Path.cwd()):
        for ancestor in list(base.parents)[:3]:
            candidate = ancestor / "shared" / "benchmarks"
            if candidate.is_dir():
                return candidate
            tried.append(candidate)
    raise BenchmarkError(
        "cannot find the shared benchmark files; set "
        f"${BENCHMARKS_DIR_ENV} to the directory holding aime24.jsonl (tried: "
        + ", ".join(str(p) for p in dict.fromkeys(tried))
        + ")"
    )


def benchmark_name(name_or_path: str | os.PathLike[str]) -> str:
    """The short name a benchmark is reported under: a known name, else the file's stem."""
    text = str(name_or_path)
    if text.lower() in BENCHMARK_NAMES:
        return text.lower()
    name = Path(text).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


# ----------------------------------------------------------------------------- math files


def load_math_rows(
    rows: Sequence[Row],
    fields: FieldMap,
    *,
    data_source: str,
    unbox_answer: bool = False,
) -> list[Problem]:
    """Problems from rows through an explicit field map; every row must have every mapped field.

    unbox_answer: take the last ``\\boxed{...}`` of the answer field when it has
    one (used when the answer was detected in a `solution` field).
    """
    if fields.answer is None:
        raise BenchmarkError(f"{data_source}: math problems need an answer field")
    ids = assign_ids(rows, fields.id)
    problems: list[Problem] = []
    for index, (row, pid) in enumerate(zip(rows, ids, strict=True)):
        question = as_question(get_field(row.data, fields.question), row.where, fields.question)
        answer = as_answer(get_field(row.data, fields.answer), row.where, fields.answer)
        if unbox_answer:
            answer = last_boxed(answer) or answer
        problems.append(
            Problem(
                id=pid,
                index=index,
                question=question,
                answer=answer,
                data_source=data_source,
                ability="math",
                meta={"source": row.where},
            )
        )
    return problems


# ----------------------------------------------------------------------------- entry point


def _is_humaneval_row(row: Mapping[str, Any]) -> bool:
    return "test" in row and "entry_point" in row and "prompt" in row


def _is_code_row(row: Mapping[str, Any]) -> bool:
    return any(row.get(key) not in (None, "", []) for key in CODE_TEST_KEYS)


def load_benchmark(
    name_or_path: str | os.PathLike[str],
    question_key: str | None = None,
    answer_key: str | None = None,
    *,
    id_key: str | None = None,
) -> list[Problem]:
    """Problems of a benchmark given by name (aime24, aime25, hmmt25, humaneval) or by file path.

    Named shared benchmarks use their known schema (explicit keys override it).
    Files: HumanEval-format and LiveCodeBench-style rows become code problems;
    other rows are math problems whose question/answer/id fields are given or
    detected (see :func:`detect_fields`). Errors name the file, 1-based line or
    row, and the field.
    """
    from klear.eval.code_benchmarks import load_code_rows, load_humaneval, load_humaneval_rows

    text = str(name_or_path)
    key = text.lower()
    if key == "humaneval":
        return load_humaneval()
    if key in SHARED_BENCHMARKS:
        shared = SHARED_BENCHMARKS[key]
        path = benchmarks_dir() / shared.filename
        if not path.is_file():
            raise BenchmarkError(f"{path}: the {key} benchmark file is missing")
        fields = FieldMap(
            question=question_key or shared.fields.question,
            answer=answer_key or shared.fields.answer,
            id=id_key or shared.fields.id,
        )
        return load_math_rows(read_rows(path), fields, data_source=key)
    path = Path(text).expanduser()
    if not path.exists():
        raise BenchmarkError(
            f"{text!r} is neither a known benchmark ({', '.join(BENCHMARK_NAMES)}) nor an existing file"
        )
    rows = read_rows(path)
    if not rows:
        raise BenchmarkError(f"{path}: no rows")
    source = benchmark_name(path)
    if _is_humaneval_row(rows[0].data) and question_key is None:
        return load_humaneval_rows(rows, data_source=source)
    if _is_code_row(rows[0].data):
        return load_code_rows(rows, data_source=source, question_key=question_key, id_key=id_key)
    fields = detect_fields(rows, question_key=question_key, answer_key=answer_key, id_key=id_key)
    unbox = answer_key is None and fields.answer is not None and is_weak_answer_path(fields.answer)
    return load_math_rows(rows, fields, data_source=source, unbox_answer=unbox)
