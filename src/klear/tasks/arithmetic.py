"""Arithmetic expressions with + - * and parentheses, evaluated one operation per line.

Each line of the solution is the expression after one reduction, in the order a person
evaluates it (innermost parentheses first, ``*`` before ``+``/``-``, left to right).
Example for ``(7+5)*3-20``::

    <think>
    (7+5)*3-20
    12*3-20
    36-20
    16
    </think>
    \\boxed{16}

Intermediate values are kept non-negative (problems that would need a negative number
are redrawn), so every line is plain digits and operators.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypeAlias

from klear.tasks.base import Problem, format_solution

Expr: TypeAlias = "int | Op"
PRECEDENCE = {"+": 1, "-": 1, "*": 2}


@dataclass(frozen=True)
class Op:
    op: str
    left: Expr
    right: Expr


def evaluate(e: Expr) -> int:
    if isinstance(e, int):
        return e
    a, b = evaluate(e.left), evaluate(e.right)
    return a + b if e.op == "+" else a - b if e.op == "-" else a * b


def render(e: Expr) -> str:
    """Infix text with only the parentheses that precedence and left-associativity require."""
    if isinstance(e, int):
        return str(e)
    p = PRECEDENCE[e.op]
    left, right = render(e.left), render(e.right)
    if isinstance(e.left, Op) and PRECEDENCE[e.left.op] < p:
        left = f"({left})"
    if isinstance(e.right, Op) and (
        PRECEDENCE[e.right.op] < p or (PRECEDENCE[e.right.op] == p and e.op == "-")
    ):
        right = f"({right})"
    return f"{left}{e.op}{right}"


def reduce_once(e: Expr) -> Expr:
    """Perform the first operation whose operands are both numbers, in evaluation order."""
    if isinstance(e, int):
        return e
    if isinstance(e.left, Op):
        return Op(e.op, reduce_once(e.left), e.right)
    if isinstance(e.right, Op):
        return Op(e.op, e.left, reduce_once(e.right))
    return evaluate(e)


def reduction_steps(e: Expr) -> list[str]:
    """Every line from the expression itself to its value."""
    steps = [render(e)]
    while isinstance(e, Op):
        e = reduce_once(e)
        steps.append(render(e))
    return steps


def _all_non_negative(e: Expr) -> bool:
    if isinstance(e, int):
        return e >= 0
    return evaluate(e) >= 0 and _all_non_negative(e.left) and _all_non_negative(e.right)


@dataclass(frozen=True)
class ArithmeticTask:
    """Expressions over ``num_operands`` numbers in [0, ``max_operand``] with + - *."""

    name: str = "arithmetic"
    num_operands: int = 3
    max_operand: int = 20

    def sample(self, rng: random.Random) -> Problem:
        while True:
            e = self._expr(rng, self.num_operands)
            if _all_non_negative(e):
                break
        answer = str(evaluate(e))
        return Problem(
            question=render(e),
            answer=answer,
            solution=format_solution(reduction_steps(e), answer),
        )

    def _expr(self, rng: random.Random, n: int) -> Expr:
        if n == 1:
            return rng.randint(0, self.max_operand)
        k = rng.randint(1, n - 1)  # operands on the left
        return Op(rng.choice("+-*"), self._expr(rng, k), self._expr(rng, n - k))
