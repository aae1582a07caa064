"""Synthetic SFT data for the SFT ablations: addition traces from "teachers" that slip, and selection by
``klear data sft-select``'s machinery (:mod:`klear.data.sft_select`).

A slip is one wrong column sum in the written-carry trace (:func:`slipped_steps`): the column's
sum is off by one and everything after it follows from the wrong value, so the trace reads
fluently and ends at a wrong answer -- the kind of mistake a verifier catches and a reader may
not. Each row carries ``source``, ``correct`` (checked against the true sum) and ``difficulty``
(the teacher's pass rate on its kind of problem), the fields sft-select decides on.

- ``sources:*`` (the paper: the top 1-2 highest-quality sources beat all sources): four sources
  of 2,000 distinct 2-3 digit problems each whose teachers slip on 0%, 10%, 30% and 60% of the
  traces; each source's quality is measured as the fraction of its traces whose answer verifies,
  and ``select`` keeps the top 1, top 2 or all 4 sources (exact duplicates only: MinHash near
  duplicates of ``482+9135`` are different problems).
- ``correctness:{easy,hard}:{only-correct,mixed}`` (the paper: filter incorrect traces on easy
  problems, keep them on hard ones): 2,500 problems per difficulty, 2+2 digits (easy: the teacher
  slips on 15%) or 3+3 digits (hard: the teacher slips on 50%); ``only-correct`` drops the traces
  that fail verification, ``mixed`` keeps them all (sft-select with every problem counted as easy,
  or as hard).

Every builder also writes the held-out rows the SFT run is evaluated on (``val.jsonl``: 128
problems of the same kind from the task's held-out split). Rows depend on the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klear.tasks import split_of, to_row
from klear.tasks.addition import AdditionTask, shift_steps
from klear.tasks.base import Problem, format_solution

TASK = "addition-2to3"  # the held-out split is the demo task's: every problem here is one of its problems
VAL_SIZE = 128

SOURCE_SLIPS = {"source-a": 0.0, "source-b": 0.1, "source-c": 0.3, "source-d": 0.6}
SOURCE_ROWS = 2000
CORRECTNESS = {"easy": (2, 0.15), "hard": (3, 0.5)}  # digits of both numbers, teacher slip rate
CORRECTNESS_ROWS = 2500


def slipped_steps(a: int, b: int, column: int, delta: int) -> tuple[list[str], str]:
    """The shift trace of ``a + b`` with column ``column``'s sum off by ``delta`` (and what follows from it).

    Returns the trace lines and the (wrong) answer they end at. ``delta`` is applied as is when the
    sum stays >= 0, else negated.
    """
    right = shift_steps(a, b)
    steps = [right[0]]
    ra, rb, carry, result, k = str(a), str(b), 0, "", 0
    while ra or rb:
        x, y = int(ra[-1]) if ra else 0, int(rb[-1]) if rb else 0
        ra, rb = ra[:-1], rb[:-1]
        s = x + y + carry
        if k == column:
            s = s + delta if s + delta >= 0 else s - delta
        last = not ra and not rb
        result = (str(s) if last else str(s % 10)) + result
        steps.append(f"{ra or 0}+{rb or 0}|{x}+{y}+{carry}={s}|{result}")
        carry = s // 10
        k += 1
    return steps, result.lstrip("0") or "0"


def teacher_trace(p: Problem, rng: random.Random, slip: float) -> tuple[str, bool]:
    """The teacher's reply to ``p``: the right trace, or with probability ``slip`` one slipped column."""
    if rng.random() >= slip:
        return p.solution, True
    a, b = p.meta["a"], p.meta["b"]
    columns = max(len(str(a)), len(str(b)))
    steps, answer = slipped_steps(a, b, rng.randrange(columns), rng.choice((-1, 1)))
    return format_solution(steps, answer), answer == p.answer


def draw(task: AdditionTask, split: str, n: int, rng: random.Random, seen: set[str]) -> list[Problem]:
    """``n`` distinct problems of ``task`` from ``split`` of the demo task's problem space (not in ``seen``)."""
    out: list[Problem] = []
    while len(out) < n:
        p = task.sample(rng)
        if p.question in seen or split_of(TASK, p.question) != split:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def sft_row(p: Problem, trace: str, correct: bool, source: str, difficulty: float) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": p.question}, {"role": "assistant", "content": trace}],
        "source": source,
        "correct": correct,
        "difficulty": difficulty,
    }


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    from klear.io import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _val(out: Path, task: AdditionTask, seed: int) -> None:
    rng = random.Random(f"klear-ablate:val:{task.min_digits}:{task.max_digits}")  # the same for every seed
    problems = draw(task, "test", VAL_SIZE, rng, set())
    _write(out / "val.jsonl", [to_row(TASK, p, "test", i) for i, p in enumerate(problems)])


def _selected(
    rows: list[dict[str, Any]], quality: dict[str, float], top_k: int, easy_pass_rate: float
) -> list[dict[str, Any]]:
    """The rows ``klear data sft-select`` keeps (exact duplicates only, one response per prompt)."""
    from klear.data.schema import SFTRow
    from klear.data.sft_select import MinHasher, row_features, select

    hasher = MinHasher()
    features = [row_features(SFTRow.model_validate(r), hasher, easy_pass_rate, False) for r in rows]
    chosen = select(features, quality, top_k, hasher, near=False)
    return [r for r, why in zip(rows, chosen.reasons, strict=True) if why is None]


def build_sources(out: Path, seed: int, top_k: int) -> dict[str, Any]:
    """Four sources of graded quality; the top ``top_k`` by measured quality go to ``train.jsonl``."""
    rng = random.Random(f"klear-ablate:sources:{seed}")
    task = AdditionTask(name=TASK, min_digits=2, max_digits=3)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for source, slip in SOURCE_SLIPS.items():
        for p in draw(task, "train", SOURCE_ROWS, rng, seen):
            trace, correct = teacher_trace(p, rng, slip)
            rows.append(sft_row(p, trace, correct, source, 1.0 - slip))
    quality = {s: sum(r["correct"] for r in rows if r["source"] == s) / SOURCE_ROWS for s in SOURCE_SLIPS}
    kept = _selected(rows, quality, top_k, easy_pass_rate=1.0)  # every problem "hard": no correctness filter
    random.Random(f"klear-ablate:shuffle:{seed}").shuffle(kept)
    _write(out / "train.jsonl", kept)
    _val(out, task, seed)
    info = {
        "quality": quality,
        "top_k": top_k,
        "rows": len(kept),
        "wrong": sum(not r["correct"] for r in kept),
    }
    _write(out / "info.jsonl", [info])
    return info


def build_correctness(out: Path, seed: int, difficulty: str, only_correct: bool) -> dict[str, Any]:
    """One difficulty's teacher traces: verified-correct ones only, or all of them."""
    digits, slip = CORRECTNESS[difficulty]
    rng = random.Random(f"klear-ablate:correctness:{difficulty}:{seed}")
    task = AdditionTask(name=TASK, min_digits=digits, max_digits=digits)
    rows = []
    for p in draw(task, "train", CORRECTNESS_ROWS, rng, set()):
        trace, correct = teacher_trace(p, rng, slip)
        rows.append(sft_row(p, trace, correct, difficulty, 1.0 - slip))
    # sft-select drops wrong traces of problems at or above easy_pass_rate: 0 -> every problem is
    # "easy" (only correct traces kept); 1 -> every problem is "hard" (all kept)
    kept = _selected(rows, {difficulty: 1.0}, 1, easy_pass_rate=0.0 if only_correct else 1.0)
    _write(out / "train.jsonl", kept)
    _val(out, task, seed)
    info = {
        "difficulty": difficulty,
        "only_correct": only_correct,
        "rows": len(kept),
        "wrong": sum(not r["correct"] for r in kept),
    }
    _write(out / "info.jsonl", [info])
    return info


#: name -> builder(out_dir, seed): writes out_dir/train.jsonl and out_dir/val.jsonl.
SFT_DATA: dict[str, Callable[[Path, int], Any]] = {
    "sources:top-1": lambda out, seed: build_sources(out, seed, 1),
    "sources:top-2": lambda out, seed: build_sources(out, seed, 2),
    "sources:all": lambda out, seed: build_sources(out, seed, len(SOURCE_SLIPS)),
    **{
        f"correctness:{d}:{kind}": (
            lambda out, seed, d=d, oc=(kind == "only-correct"): build_correctness(out, seed, d, oc)
        )
        for d in CORRECTNESS
        for kind in ("only-correct", "mixed")
    },
}
