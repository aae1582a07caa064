"""Addition of two 3-5 digit numbers, worked column by column with written carries.

The solution writes one line per column, least significant first, as
``a+b+c=s`` where ``c`` is the carry coming in and ``s`` the column sum; the carry
out is the tens digit of ``s``. Example for ``482+9135``::

    <think>
    2+5+0=7
    8+3+0=11
    4+1+1=6
    0+9+0=9
    </think>
    \\boxed{9617}

Small models learn this far faster than the bare sum: every line depends only on two
digits located by position and on the previous line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from klear.tasks.base import Problem, format_solution


def column_steps(a: int, b: int) -> list[str]:
    """The written-carry lines for ``a + b`` (non-negative integers)."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return steps


@dataclass(frozen=True)
class AdditionTask:
    """``A+B`` with A and B of ``min_digits``..``max_digits`` digits (lengths drawn independently)."""

    name: str = "addition"
    min_digits: int = 3
    max_digits: int = 5

    def sample(self, rng: random.Random) -> Problem:
        a, b = (self._number(rng) for _ in range(2))
        answer = str(a + b)
        return Problem(
            question=f"{a}+{b}",
            answer=answer,
            solution=format_solution(column_steps(a, b), answer),
            meta={"a": a, "b": b},
        )

    def _number(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(10 ** (digits - 1), 10**digits - 1)
