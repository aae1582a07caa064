"""``klear eval score``: read a generations file made elsewhere, score it with the reward pool, and
write the same outputs as a run (samples, summary, report), so a fresh run and a re-score agree by
construction. Every error names the file and the 1-based line."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klear.eval.benchmarks import Problem
from klear.eval.metrics import DEFAULT_N_BOOT
from klear.eval.rundir import SAMPLES_FILE, EvalError
from klear.eval.runner import (
    MAX_REPORTED_ERRORS,
    EvalOutcome,
    ProgressFn,
    problem_row,
    sample_record,
    summarize_records,
    write_outputs,
)
from klear.io import write_atomic

if TYPE_CHECKING:
    from klear.rewards.pool import RewardPool


@dataclass
class Generations:
    """Responses per problem id read from a generations file, with the lines they came from."""

    responses: dict[str, list[str]]
    lines: dict[str, list[int]]
    path: Path


def read_generations(
    path: str | os.PathLike[str],
    problems: Sequence[Problem],
    *,
    skip: Sequence[Problem] = (),
    max_errors: int = MAX_REPORTED_ERRORS,
) -> Generations:
    """Responses per problem from a jsonl file; every problem must end with the same number of samples.

    Each line names its problem by ``id`` (or ``problem_id``, as ``samples.jsonl``
    does) or by 0-based ``index``, and carries ``responses`` (a list of strings)
    or ``response`` (one string); several lines for one problem accumulate in file
    order, or at their ``sample`` index when lines give one (so a ``samples.jsonl``
    scores back in its own order). All problems of the benchmark must be present; lines
    for the problems in ``skip`` (those a ``--limit`` left out) are ignored.
    Every error names the file and the 1-based line; up to ``max_errors`` are
    reported together.
    """
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"{p}: no such generations file")
    by_id = {prob.id: prob for prob in problems}
    by_index = {prob.index: prob for prob in problems}
    skip_id = {prob.id: prob for prob in skip}
    skip_index = {prob.index: prob for prob in skip}
    slots: dict[str, dict[int, str]] = {}
    lines: dict[str, list[int]] = {}
    errors: list[str] = []
    with open(p, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if len(errors) >= max_errors:
                break
            where = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(f"{where}: not UTF-8 text (byte {exc.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                errors.append(f"{where}: invalid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(row, dict):
                errors.append(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            problem, why = _generation_problem(row, by_id, by_index)
            if problem is None and _generation_problem(row, skip_id, skip_index)[0] is not None:
                continue  # a problem outside --limit
            if problem is None:
                errors.append(f"{where}: {why}")
                continue
            responses, why = _generation_responses(row)
            if responses is None:
                errors.append(f"{where}: {why}")
                continue
            slot = slots.setdefault(problem.id, {})
            sample = row.get("sample")
            if sample is not None and "response" in row:
                if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
                    errors.append(f"{where}: 'sample' should be a non-negative integer, got {sample!r}")
                    continue
                if sample in slot:
                    errors.append(f"{where}: problem {problem.id!r} sample {sample} given twice")
                    continue
                slot[sample] = responses[0]
            else:
                for response in responses:
                    slot[max(slot, default=-1) + 1] = response
            lines.setdefault(problem.id, []).append(lineno)
    _raise_if(errors, p, max_errors)

    missing = [prob.id for prob in problems if prob.id not in slots]
    if missing:
        errors.append(
            f"{p}: {len(missing)} of {len(problems)} problems have no generations, e.g. "
            + ", ".join(repr(m) for m in missing[:5])
            + " (score a subset with --limit, which keeps the first problems)"
        )
    for pid, slot in slots.items():
        if sorted(slot) != list(range(len(slot))):
            gaps = sorted(set(range(max(slot) + 1)) - set(slot))
            errors.append(
                f"{p}: problem {pid!r} (lines {_line_list(lines[pid])}) is missing sample(s) {gaps[:10]}"
            )
    _raise_if(errors, p, max_errors)
    counts: dict[int, list[str]] = {}
    for prob in problems:
        counts.setdefault(len(slots[prob.id]), []).append(prob.id)
    if len(counts) > 1:
        common = max(counts, key=lambda k: len(counts[k]))
        odd = [(pid, k) for k, ids in counts.items() if k != common for pid in ids]
        listing = "; ".join(
            f"{pid!r} has {k} (lines {_line_list(lines[pid])})" for pid, k in odd[:max_errors]
        )
        raise EvalError(
            f"{p}: problems have unequal sample counts: most have {common}, but {listing}"
            + (f"; and {len(odd) - max_errors} more" if len(odd) > max_errors else "")
            + "; avg@k and pass@k need the same number of samples for every problem"
        )
    responses = {pid: [slot[i] for i in range(len(slot))] for pid, slot in slots.items()}
    return Generations(responses=responses, lines=lines, path=p)


def _generation_problem(
    row: Mapping[str, Any], by_id: Mapping[str, Problem], by_index: Mapping[int, Problem]
) -> tuple[Problem | None, str]:
    """The problem a generations line refers to, or (None, why not)."""
    raw_id = row.get("id", row.get("problem_id"))
    raw_index = row.get("index")
    if raw_id is None and raw_index is None:
        return None, "missing field 'id' (or 'problem_id', or 0-based 'index') naming the problem"
    by_id_problem = by_index_problem = None
    if raw_id is not None:
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            return None, f"field 'id' should be a string or an integer, got {raw_id!r}"
        by_id_problem = by_id.get(str(raw_id).strip())
        if by_id_problem is None:
            examples = ", ".join(repr(k) for k in list(by_id)[:3])
            hint = ""
            if str(raw_id).strip().isdigit() and raw_index is None:
                hint = "; to name problems by 0-based row position, use 'index'"
            return (
                None,
                f"unknown problem id {raw_id!r} (the benchmark's ids look like {examples}, ...){hint}",
            )
    if raw_index is not None:
        if isinstance(raw_index, bool) or not isinstance(raw_index, int):
            return None, f"field 'index' should be an integer, got {raw_index!r}"
        by_index_problem = by_index.get(raw_index)
        if by_index_problem is None:
            return (
                None,
                f"problem index {raw_index} out of range (the benchmark has {len(by_index)} problems)",
            )
    if by_id_problem is not None and by_index_problem is not None and by_id_problem is not by_index_problem:
        return None, (
            f"id {raw_id!r} and index {raw_index} name different problems "
            f"(index {raw_index} is {by_index_problem.id!r})"
        )
    problem = by_id_problem or by_index_problem
    assert problem is not None
    return problem, ""


def _generation_responses(row: Mapping[str, Any]) -> tuple[list[str] | None, str]:
    has_one, has_many = "response" in row, "responses" in row
    if has_one == has_many:
        return None, "needs exactly one of 'response' (a string) or 'responses' (a list of strings)"
    if has_one:
        if not isinstance(row["response"], str):
            return None, f"'response' should be a string, got {type(row['response']).__name__}"
        return [row["response"]], ""
    value = row["responses"]
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        return None, "'responses' should be a list of strings"
    if not value:
        return None, "'responses' is empty"
    return list(value), ""


def _line_list(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return shown + (", ..." if len(numbers) > 5 else "")


def _raise_if(errors: Sequence[str], path: Path, max_errors: int) -> None:
    if errors:
        more = f"\n(stopped reading at {max_errors} errors)" if len(errors) >= max_errors else ""
        raise EvalError(f"{len(errors)} problem(s) in generations file {path}:\n" + "\n".join(errors) + more)


def score_generations(
    problems: Sequence[Problem],
    generations: Generations,
    pool: RewardPool,
    out_dir: str | os.PathLike[str],
    *,
    benchmark: str,
    meta: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_boot: int = DEFAULT_N_BOOT,
    progress: ProgressFn | None = None,
) -> EvalOutcome:
    """Score existing generations against ``problems``; write samples, summary and report (all atomically).

    progress(done, total): called with responses scored.
    """
    start = time.monotonic()
    out = Path(out_dir)
    rows = {p.id: problem_row(p) for p in problems}
    order = [(p, j, response) for p in problems for j, response in enumerate(generations.responses[p.id])]
    results = pool.score([rows[p.id] for p, _, _ in order], [r for _, _, r in order], progress=progress)
    records = [
        sample_record(p, j, response, result) for (p, j, response), result in zip(order, results, strict=True)
    ]
    summary = summarize_records(benchmark, problems, records, n_boot=n_boot, seed=seed)
    write_atomic(out / SAMPLES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    seconds = {"scoring": time.monotonic() - start, "total": time.monotonic() - start}
    write_outputs(
        out, summary, records, {**(meta or {}), "generations": str(generations.path), "seconds": seconds}
    )
    return EvalOutcome(summary=summary, out_dir=out, records=records, seconds=seconds)
