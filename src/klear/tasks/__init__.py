"""Built-in procedural tasks with verifiable answers, and the tiny model of the demo.

A task draws problems from a seeded ``random.Random``; each problem has a question,
a ground truth and a worked solution written the way the reward expects. Math tasks
(``addition``, ``arithmetic``): ``<think>...steps...</think>`` then ``\\boxed{N}``, checked
by the real math reward (``klear.rewards.math``). The code task (``code-fn``, ``ability:
code``): ``<think>...</think>`` then a ```python block, run against the problem's hidden
tests in the sandbox by the real code reward (``klear.rewards.code``). The solution is the
SFT target.

Train and held-out problems are disjoint by construction: a problem belongs to the
held-out split iff a hash of its question falls in the held-out slice, whatever the
seed or the number of problems asked for. Splits are deterministic given (task, split,
seed, n): the same call returns the same problems on every machine.

Rows come out in the RL row shape that data files use (verl / Klear-Reasoner's parquet
columns), so built-in tasks and user datasets take one code path::

    {"data_source": "klear/addition",
     "prompt": [{"role": "user", "content": "482+9135"}],
     "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": "9617"},
     "extra_info": {"task": "addition", "split": "train", "index": 0, "solution": "<think>..."}}
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from klear.tasks.addition import AdditionTask
from klear.tasks.arithmetic import ArithmeticTask
from klear.tasks.base import Problem, Split, Task
from klear.tasks.code_fn import CodeFnTask

#: Share of the problem space reserved for the held-out ("test") split.
HELDOUT_FRACTION = 0.1


TASKS: dict[str, Task] = {
    "addition": AdditionTask(),
    "addition-2to3": AdditionTask(name="addition-2to3", min_digits=2, max_digits=3),
    "arithmetic": ArithmeticTask(),
    "code-fn": CodeFnTask(),
}


def get_task(name: str) -> Task:
    """The registered task called ``name``, or a ValueError listing the choices."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def split_of(task_name: str, question: str) -> Split:
    """Which split a question belongs to: a stable hash, so splits never overlap."""
    digest = hashlib.sha256(f"{task_name}\x00{question}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") < HELDOUT_FRACTION * 2**64 else "train"


def generate_problems(name: str, split: Split, n: int, seed: int = 0) -> list[Problem]:
    """``n`` distinct problems of task ``name`` from ``split``, deterministic in (name, split, n, seed)."""
    task = get_task(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"klear:{name}:{split}:{seed}")  # str seeds hash with sha512: portable
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 * max(n, 1) + 10000:
            raise ValueError(f"task {name!r}: could not draw {n} distinct {split} problems")
        p = task.sample(rng)
        if p.question in seen or split_of(name, p.question) != split:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def to_row(name: str, problem: Problem, split: Split, index: int) -> dict[str, Any]:
    """One problem as an RL data row (see the module docstring for the shape).

    ``ability`` is the task's (``math`` unless it says otherwise): it picks the reward, so a
    code task's rows are scored by running programs in the sandbox.
    """
    return {
        "data_source": f"klear/{name}",
        "prompt": [{"role": "user", "content": problem.question}],
        "ability": getattr(get_task(name), "ability", "math"),
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": {"task": name, "split": split, "index": index, "solution": problem.solution},
    }


def task_rows(name: str, split: Split, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` RL rows of task ``name``; ``extra_info.solution`` holds the SFT target text."""
    return [to_row(name, p, split, i) for i, p in enumerate(generate_problems(name, split, n, seed))]


def sft_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat of an SFT example: the row's prompt messages, then its solution as the assistant turn."""
    solution = (row.get("extra_info") or {}).get("solution")
    if solution is None:
        raise ValueError("row has no extra_info.solution to train on")
    return [*row["prompt"], {"role": "assistant", "content": solution}]


__all__ = [
    "HELDOUT_FRACTION",
    "TASKS",
    "Problem",
    "Split",
    "Task",
    "generate_problems",
    "get_task",
    "sft_messages",
    "split_of",
    "task_rows",
    "to_row",
]
