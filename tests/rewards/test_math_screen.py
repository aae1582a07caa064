"""The math fast path's cheap looks (klear.rewards.math_screen) and multi-answer ground truths.

The screen must only catch what math_verify cannot judge in time anyway, and the rational evaluator
must agree with math_verify wherever it answers; both are checked against math_verify itself.
"""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from klear.config import RewardConfig
from klear.rewards import math as mr
from klear.rewards.math import all_boxed, judge, math_reward, normalize_gold, quick_math_reward
from klear.rewards.math_screen import rational_value, screen

CFG = RewardConfig(math={"verify_timeout_s": 30.0}, item_timeout_s=60.0)


def solved(answer: str) -> str:
    return f"<think>work</think> so $\\boxed{{{answer}}}$"


# ---------------------------------------------------------------------------------------------
# the screen
# ---------------------------------------------------------------------------------------------

SCREENED = [
    "9^{9^{9}}",  # 370 million digits
    "9^{9^9}",
    "2^{2^{2^{2^{2^{2}}}}}",
    "10^{10000000}",
    "10^{10^{10}} + 1",
    "1000000!",
    "(10^{6})! + 12345678!",
    "7" * 600_000,
    "1 + " + "7" * 600_000 + "!",
]
NOT_SCREENED = [
    "2^{1000000}",  # 301,030 digits: math_verify computes it in milliseconds
    "10^{100000}",
    "2^{2^{2^{2}}}",  # 65536
    "100000!",
    "7" * 100_000,
    "7" * 400_000 + "+" + "7" * 400_000,  # long runs of digits: the search stays linear
    "e^{e^{x}}",  # symbolic: nothing to compute
    "x^{y^{z}}",
    "1^{9^{9^{9}}}",  # 1: the tower above a base of 1 is never computed here
    "0^{9^{9^{9}}}",
    "5",
]


@pytest.mark.parametrize("answer", SCREENED)
def test_screen_catches_values_too_large_to_compute(answer: str) -> None:
    start = time.perf_counter()
    assert screen(answer) is not None
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("answer", NOT_SCREENED)
def test_screen_leaves_computable_answers_to_math_verify(answer: str) -> None:
    assert screen(answer) is None


def test_screened_answer_scores_what_math_verify_gives_after_its_timeout() -> None:
    """Same score and flag as the timeout it replaces; at once, and in the parent (quick path)."""
    mr.warm_up()
    mr.clear_caches()
    slow = RewardConfig(math={"verify_timeout_s": 1.0, "cache_size": 0, "fast_path": False})
    fast = RewardConfig(math={"verify_timeout_s": 1.0, "cache_size": 0})
    for answer in ("9^{9^{9}}", "1000000!", "10^{10000000}"):
        reference = math_reward(solved(answer), "5", slow)  # math_verify, the whole timeout
        start = time.perf_counter()
        ours = quick_math_reward(solved(answer), "5", fast)
        assert time.perf_counter() - start < 0.05
        assert ours is not None
        assert (ours.score, ours.correct, ours.flags) == (reference.score, reference.correct, reference.flags)
        assert reference.flags == ("timeout",)
        assert "not verified" in (ours.detail or "")


def test_identical_or_pathological_gold_is_not_screened() -> None:
    assert judge("9^{9^{9}}", "9^{9^{9}}", 1.0) == "equal"  # identical text first
    assert judge("9^{9^{9}}", "9^{9^{9}} ", 1.0, allow_verify=False) is None  # gold as large: math_verify


# ---------------------------------------------------------------------------------------------
# exact rationals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", Fraction(3)),
        ("-3", Fraction(-3)),
        ("1+2*3", Fraction(7)),
        ("(1+2)*3", Fraction(9)),
        ("1/2/3", Fraction(1, 6)),
        ("2-3-4", Fraction(-5)),
        ("-1/2", Fraction(-1, 2)),
        ("2*-3", Fraction(-6)),
        ("\\frac{1}{2}+\\dfrac{1}{3}", Fraction(5, 6)),
        ("\\frac{\\frac{1}{2}}{3}", Fraction(1, 6)),
        ("\\left(1+1\\right)\\cdot 3", Fraction(6)),
        ("2\\times 5", Fraction(10)),
        ("{{7}}", Fraction(7)),
        ("\\frac{1}{" * 300 + "2" + "}" * 300, Fraction(2)),  # 300 levels: no recursion
        ("\\frac{1}{" * 5001 + "3" + "}" * 5001, Fraction(1, 3)),
        ("1/0", None),
        ("2(3)", None),  # implicit multiplication: left to math_verify
        ("1.5", None),
        ("x+1", None),
        ("\\frac12", None),
        ("\\frac{1}{2", None),
        ("(1", None),
        ("1)", None),
        ("", None),
        ("+", None),
        ("10^{2}", None),
        ("9" * 500 + "*" + "9" * 500, None),  # past 400 digits: left to math_verify
    ],
)
def test_rational_value(text: str, value: Fraction | None) -> None:
    assert rational_value(text) == value


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("7", "3+4"),
        ("7", "3+5"),
        ("\\frac{5}{6}", "\\frac{1}{2}+\\frac{1}{3}"),
        ("\\frac{1}{6}", "\\frac{\\frac{1}{2}}{3}"),
        ("-6", "2*-3"),
        ("1", "\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{1}}}}"),
        ("2", "\\frac{1}{\\frac{1}{2}}"),
        ("0.5", "\\frac{2}{4}"),
        ("3", "(1+2)"),
    ],
)
def test_rational_fast_path_agrees_with_math_verify(gold: str, answer: str) -> None:
    quick = judge(gold, answer, 30.0, fast_path=True)
    assert quick in ("equal", "unequal")
    mr.clear_caches()
    assert judge(gold, answer, 30.0, fast_path=False) == quick


# ---------------------------------------------------------------------------------------------
# multi-answer ground truths
# ---------------------------------------------------------------------------------------------


def test_all_boxed_top_level_in_order() -> None:
    assert all_boxed("\\boxed{1} and \\boxed{-2}") == ["1", "-2"]
    assert all_boxed("\\boxed{\\boxed{1}} \\fbox{2} \\boxed{3") == ["\\boxed{1}", "2"]
    assert all_boxed("none") == []


def test_normalize_gold_keeps_several_boxes_whole() -> None:
    assert normalize_gold("$\\boxed{5}$") == "5"
    assert normalize_gold("\\boxed{4} so \\boxed{4}") == "4"  # one answer, repeated
    assert normalize_gold("$$\\boxed{1} and \\boxed{-2}$$") == "\\boxed{1} and \\boxed{-2}"


PRIMES = "$$\\boxed{2}, \\boxed{3}, \\boxed{5}, \\boxed{7}, \\boxed{13}$$"


@pytest.mark.parametrize(
    ("gold", "answer", "correct"),
    [
        ("\\boxed{1} and \\boxed{-2}", "-2, 1", True),  # reduced to its last box this scored wrong
        ("\\boxed{1} and \\boxed{-2}", "1, -2", True),
        ("\\boxed{1} and \\boxed{-2}", "\\{1, -2\\}", True),
        ("\\boxed{1} and \\boxed{-2}", "1", False),  # half the answer
        ("\\boxed{1} and \\boxed{-2}", "-2", False),
        ("\\boxed{1} and \\boxed{-2}", "1, 2", False),
        (PRIMES, "13, 7, 5, 3, 2", True),
        (PRIMES, "2, 3, 5, 7", False),
        ("\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}", "(6, 2), (2, 2)", True),
        ("\\boxed{4} so \\boxed{4}", "4", True),
    ],
)
def test_multi_answer_gold(gold: str, answer: str, correct: bool) -> None:
    assert math_reward(solved(answer), gold, CFG).correct is correct


def test_multi_answer_gold_reads_as_math_verify_reads_it() -> None:
    """Boxes far apart in prose are not one answer to math_verify: nor to us."""
    from math_verify import parse, verify

    gold = "\\boxed{1} no no no no no \\boxed{2}"
    for answer in ("1, 2", "2"):
        plain = bool(verify(parse(gold), parse("\\boxed{" + answer + "}")))
        assert math_reward(solved(answer), gold, CFG).correct is plain
