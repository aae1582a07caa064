"""The code-test comparator (klear.rewards.compare): a table of hand cases for each rule in
docs/comparator.md, and the forge from issue 12 (``1000000000.0`` for ``999999937``) end to end."""

from __future__ import annotations

import pytest

from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
from klear.rewards.code import code_reward
from klear.rewards.compare import MAX_DEPTH, token_match, tokens_match, values_match

BIG = "9" * 5000  # past int()'s default 4300-digit limit: compared as digit strings


@pytest.mark.parametrize(
    ("actual", "expected", "same"),
    [
        # whitespace: any run of spaces, tabs, \r and newlines is one separator; trailing ones do not count
        ("3\n", "3", True),
        ("3", "3\n\n\n", True),
        ("1  2\n3\n\n", "1 2 3", True),
        ("1\t2\r\n3\r\n", "1 2 3", True),
        ("  1 2", "1 2", True),
        ("1 2", "1 2 3", False),
        ("", "", True),
        ("", "0", False),
        ("12", "1 2", False),
        # case: text is case-sensitive
        ("YES", "yes", False),
        ("Yes", "Yes", True),
        # integers: exact, by value, any length
        ("999999937", "999999937", True),
        ("1000000000.0", "999999937", False),  # the forge: a float within 1e-6 relative
        ("1e9", "1000000000", False),  # a float spelling of an integer is not an integer
        ("1000000000", "1e9", True),  # the expected token is a real: tolerance applies
        ("3.0", "3", False),  # 1.0 vs 1: an integer answer wants an integer token
        ("3", "3.0", True),  # ... but an integer is a fine real
        ("1e-7", "0", False),  # no absolute tolerance around an integer
        ("-0", "0", True),  # -0, +0 and 0 are the same integer
        ("0", "-0", True),
        ("+5", "5", True),
        ("007", "7", True),
        ("-007", "-7", True),
        ("-7", "7", False),
        ("1000000000000000001", "1000000000000000000", False),  # no float rounding of big ints
        (BIG, BIG, True),
        (BIG + "8", BIG + "9", False),
        ("0" + BIG, BIG, True),
        ("٣", "3", False),  # Arabic-Indic digit: not an ASCII integer
        # reals: within tol relative or absolute, only where the expected token is a non-integer number
        ("0.3333333", "0.33333333", True),
        ("0.333", "0.3333333", False),
        ("1.0000001", "1.0", True),
        ("0.50", ".5", True),
        ("5e-1", "0.5", True),
        ("abc", "0.5", False),
        ("1_000", "1000.0", False),  # float() would take the underscore; a judge must not
        # non-finite: words, equal only as text
        ("nan", "nan", True),
        ("NaN", "nan", False),
        ("inf", "inf", True),
        ("inf", "1e309", False),
        ("1e999", "1e309", False),  # both overflow to inf: not equal as numbers
    ],
)
def test_tokens_match(actual, expected, same):
    assert tokens_match(actual, expected, 1e-6) is same


def test_megabyte_tokens_compare_in_linear_time():
    import time

    start = time.perf_counter()
    assert not tokens_match("7" * 1_000_000 + "x", "0.5")
    assert not tokens_match("7" * 1_000_000, "7" * 999_999 + "8")
    assert tokens_match("0" * 1_000_000 + "5", "5")
    assert time.perf_counter() - start < 1.0


def test_token_match_uses_the_tolerance_given():
    assert token_match("1.05", "1.0", tol=0.1)
    assert not token_match("1.05", "1.0", tol=0.01)
    assert not token_match("11", "10", tol=0.5)  # integers ignore the tolerance


@pytest.mark.parametrize(
    ("actual", "expected", "same"),
    [
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ((1, 2), [1, 2], True),
        (0.1 + 0.2, 0.3, True),
        (0.3001, 0.3, False),
        (1, 1.0, True),  # an int is a fine float
        (3.0, 3, True),  # a float of exactly the expected int (Python's ==, as LiveCodeBench)
        (1000000000.0, 999999937, False),  # the forge, call-based
        (1e18, 10**18 + 1, False),
        (True, 1, False),  # a bool is not an integer answer
        (1, True, False),
        (10**18 + 1, 10**18, False),
        ({"a": [1.0000000001]}, {"a": [1.0]}, True),
        ({"a": [1.0000000001]}, {"a": [1]}, False),
        ({"a": 1}, {"b": 1}, False),
        ("1", 1, False),
        (None, None, True),
        (None, 0, False),
        (float("nan"), float("nan"), False),
        (float("inf"), float("inf"), True),
        (float("inf"), 1e308, False),
    ],
)
def test_values_match(actual, expected, same):
    assert values_match(actual, expected, 1e-6) is same


def test_values_nested_too_deep_do_not_match_and_do_not_raise():
    def nest(depth):
        value: list = [1]
        for _ in range(depth):
            value = [value]
        return value

    assert values_match(nest(MAX_DEPTH - 5), nest(MAX_DEPTH - 5))
    deep = nest(50_000)
    assert values_match(deep, deep) is False


def test_a_float_printed_for_an_integer_answer_fails_end_to_end():
    """Through code_reward (sandbox mode none: trusted code only, as in this test)."""
    cfg = RewardConfig(
        code=CodeRewardConfig(soft_mapping="pass_rate", max_tests=None),
        sandbox=SandboxConfig(mode="none", test_timeout_s=5.0),
    )
    gt = {"inputs": ["\n"], "outputs": ["999999937\n"]}

    def response(code):
        return f"<think>.</think>\n```python\n{code}\n```\n"

    forged = code_reward(response("print(float(10**9))"), gt, cfg)
    honest = code_reward(response("print(999999937)"), gt, cfg)
    assert (forged.passed, honest.passed) == (0, 1)
