"""Write a Python program for an integer function shown by a few input/output pairs.

The built-in code task: the prompt shows ``f(0)..f(7)`` of a two-piece linear function
and the model writes a program that reads ``x`` from stdin and prints ``f(x)``. Each
problem has 16 hidden stdin/stdout tests, ``x`` from ``c-8`` to ``c+7`` (``c`` the first
input of the second piece): eight per piece, so a program right on one piece passes
exactly half of them. The row goes through the real code reward (``ability: code``, APPS
``{"inputs", "outputs"}`` ground truth, run in the sandbox), where
``reward.code.mode=soft`` scores that half-right program 0.5 and ``hard`` scores it 0.

The function family, ``f(x) = a*x + b`` for ``x < c``, else ``e*(x-c) + d``, with slopes in
{-1, 0, 1, 2}, covers lines with a kink, ``min``/``max`` with a constant (slope 0 on one
side) and ``abs(x - k)`` shapes (slopes -1 then 1). ``d`` differs from ``a*c + b`` so the
kink is visible in the shown values, which all lie in 0..19.

The worked solution finds every parameter with one lookup in the prompt or one small
addition or subtraction, checking each shown value against the first line until it breaks::

    Read x, print f(x).
    0:3 1:5 2:7 3:9 4:6 5:8 6:10 7:12

    <think>
    b=3
    a=5-3=2
    2:7 5+2=7 ok
    3:9 7+2=9 ok
    4:6 9+2=11 no
    c=4 d=6
    e=8-6=2
    </think>
    ```python
    x=int(input())
    print(2*x+3 if x<4 else 2*(x-4)+6)
    ```

Every check line reads the value after ``x:`` in the prompt (a content lookup, which a
2-layer model can do, unlike counting positions) and the value two places back on the line
above. The characters are printable ASCII, so the tiny model's tokenizer covers them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from klear.tasks.base import Problem

#: Inputs shown in the prompt.
SHOWN = range(8)
#: Hidden tests per problem: ``x`` from ``c - HALF`` to ``c + HALF - 1``, half on each piece.
HALF = 8


@dataclass(frozen=True)
class PiecewiseFn:
    """``a*x + b`` for ``x < c``, else ``e*(x - c) + d``."""

    a: int
    b: int
    c: int
    e: int
    d: int

    def __call__(self, x: int) -> int:
        return self.a * x + self.b if x < self.c else self.e * (x - self.c) + self.d

    def program(self) -> str:
        """The reference program (stdin -> stdout)."""
        return (
            f"x=int(input())\nprint({self.a}*x+{self.b} if x<{self.c} else {self.e}*(x-{self.c})+{self.d})\n"
        )

    def test_inputs(self) -> list[int]:
        return list(range(self.c - HALF, self.c + HALF))


def _signed(n: int) -> str:
    return f"+{n}" if n >= 0 else f"-{-n}"


def solution_steps(f: PiecewiseFn) -> list[str]:
    """The ``<think>`` lines: read b and a, check the shown values up to the kink, read c, d and e."""
    y = [f(x) for x in SHOWN]
    steps = [f"b={y[0]}", f"a={y[1]}-{y[0]}={f.a}"]
    for x in range(2, f.c + 1):
        pred = y[x - 1] + f.a
        steps.append(f"{x}:{y[x]} {y[x - 1]}{_signed(f.a)}={pred} {'ok' if pred == y[x] else 'no'}")
    steps.append(f"c={f.c} d={f.d}")
    steps.append(f"e={y[f.c + 1]}-{f.d}={f.e}")
    return steps


def format_code_solution(steps: list[str], program: str) -> str:
    """The reply shape the code reward reads: reasoning in <think>, then the last ```python block."""
    return "<think>\n" + "\n".join(steps) + "\n</think>\n```python\n" + program + "```"


@dataclass(frozen=True)
class CodeFnTask:
    """Two-piece linear integer functions shown by ``f(0)..f(7)``; answers are stdin programs."""

    name: str = "code-fn"
    ability: str = "code"
    slopes: tuple[int, ...] = (-1, 0, 1, 2)
    max_b: int = 9
    min_c: int = 2
    max_c: int = 5
    max_value: int = 19

    def sample(self, rng: random.Random) -> Problem:
        while True:
            f = PiecewiseFn(
                a=rng.choice(self.slopes),
                b=rng.randint(0, self.max_b),
                c=rng.randint(self.min_c, self.max_c),
                e=rng.choice(self.slopes),
                d=rng.randint(0, self.max_value),
            )
            shown = [f(x) for x in SHOWN]
            if f.d != f.a * f.c + f.b and all(0 <= y <= self.max_value for y in shown):
                break
        inputs = f.test_inputs()
        tests = {"inputs": [f"{x}\n" for x in inputs], "outputs": [f"{f(x)}\n" for x in inputs]}
        question = "Read x, print f(x).\n" + " ".join(f"{x}:{y}" for x, y in zip(SHOWN, shown, strict=True))
        return Problem(
            question=question,
            answer=json.dumps(tests),
            solution=format_code_solution(solution_steps(f), f.program()),
            meta={"a": f.a, "b": f.b, "c": f.c, "e": f.e, "d": f.d},
        )
