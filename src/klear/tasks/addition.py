"""Addition of two 3-5 digit numbers, worked right to left with written carries.

Two traces; the default ``shift`` is the one a 2-layer model learns (see ``shift_steps``)::

    <think>
    482+9135
    48+913|2+5+0=7|7
    4+91|8+3+0=11|17
    0+9|4+1+1=6|617
    0+0|0+9+0=9|9617
    </think>
    \\boxed{9617}

``columns`` writes only the column lines (``2+5+0=7``, ``8+3+0=11``, ...): half the tokens,
but each line must find its digits by counting positions in the question and the answer
must be read back in reverse: the tiny model was still at 0% held-out greedy accuracy on it
after 300 SFT steps of 2K tokens (loss 0.23 per token). On the shift trace it reached 32-55%
after 600 steps, after a late phase change (0% at step 300).

The task is registered twice (``klear.tasks.TASKS``): ``addition`` (3-5 digits) and
``addition-2to3`` (2-3 digits, the demo's task). SFT cost is set by the tokens it takes to
pass the phase change: with 2048-token batches at lr 3e-3, 3-4 digits reached 14% held-out
greedy accuracy at step 350 and 77% at 400; 2-3 digits (traces ~66 tokens, not ~89) reached
16% at step 250 and 40% at 275 (both in 400-step cosine runs). Halving the batch needed
about twice the steps; lr 6e-3 was slower than 3e-3.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from klear.tasks.base import Problem, format_solution


def shift_steps(a: int, b: int) -> list[str]:
    """Written carries where every lookup is local (the ``shift`` trace).

    Line k copies both numbers without their last k digits, then the column just
    consumed (the last digits of the previous line's numbers), then the result so far::

        482+9135
        48+913|2+5+0=7|7
        4+91|8+3+0=11|17
        0+9|4+1+1=6|617
        0+0|0+9+0=9|9617

    The digits a column needs sit right before the previous line's ``+`` and ``|``,
    and the result grows by one digit per line, so a 2-layer model only ever copies
    from the line above instead of counting positions in the question.
    """
    steps = [f"{a}+{b}"]
    ra, rb, carry, result = str(a), str(b), 0, ""
    while ra or rb:
        x, y = int(ra[-1]) if ra else 0, int(rb[-1]) if rb else 0
        ra, rb = ra[:-1], rb[:-1]
        s = x + y + carry
        last = not ra and not rb
        result = (str(s) if last else str(s % 10)) + result
        steps.append(f"{ra or 0}+{rb or 0}|{x}+{y}+{carry}={s}|{result}")
        carry = s // 10
    return steps


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
    trace: str = "shift"  # "shift" (local lookups, see shift_steps) or "columns" (column lines only)

    def sample(self, rng: random.Random) -> Problem:
        a, b = (self._number(rng) for _ in range(2))
        answer = str(a + b)
        return Problem(
            question=f"{a}+{b}",
            answer=answer,
            solution=format_solution((shift_steps if self.trace == "shift" else column_steps)(a, b), answer),
            meta={"a": a, "b": b},
        )

    def _number(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(10 ** (digits - 1), 10**digits - 1)
