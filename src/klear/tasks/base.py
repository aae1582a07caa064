"""The records of the built-in tasks (kept apart from the registry to avoid import cycles)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Problem:
    """One generated problem: ``solution`` is the full assistant reply used as the SFT target."""

    question: str
    answer: str
    solution: str
    meta: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """A procedural task: ``sample`` draws one problem from ``rng`` (and from nothing else)."""

    name: str

    def sample(self, rng: random.Random) -> Problem: ...


def format_solution(steps: list[str], answer: str) -> str:
    """The reply shape the math reward checks: reasoning in <think>, then the last \\boxed{}."""
    return "<think>\n" + "\n".join(steps) + "\n</think>\n\\boxed{" + answer + "}"
