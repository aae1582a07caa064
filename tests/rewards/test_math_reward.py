"""Math reward: hand-checked tables of answers, format penalties, fast path vs math_verify, timeouts."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from klear.config import RewardConfig
from klear.rewards import math as mr
from klear.rewards.math import answer_region, fast_equal, judge, last_boxed, math_reward, normalize_gold

# A generous inner timeout: these tables test verdicts, not speed, and CI machines can be loaded.
CFG = RewardConfig(math={"verify_timeout_s": 30.0}, item_timeout_s=60.0)


def solved(answer: str) -> str:
    return f"<think>Let me work it out... maybe \\boxed{{wrong}}.</think>\nSo the answer is $\\boxed{{{answer}}}$."


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{42}", "42"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),  # escaped brace is text, not nesting
        (r"\fbox{7}", "7"),
        (r"\boxed {  8 }", "8"),
        (r"\boxed{3} and a cut-off \boxed{\frac{1}{", "3"),  # unclosed last box: previous complete one
        (r"\boxed 5", None),
        ("no box at all", None),
        (r"\boxed{}", ""),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_many_unclosed_boxes_cost_linear_time() -> None:
    text = "\\boxed{" * 20000 + "x" * 100_000  # a degenerate, repetitive response
    start = time.monotonic()
    assert last_boxed(text) is None
    assert last_boxed("\\boxed{1}" + text) == "1"
    assert time.monotonic() - start < 1.0


def test_answer_region() -> None:
    assert answer_region("<think>a</think>b</think>c") == "c"  # after the LAST </think>
    assert answer_region("<think>still thinking") is None
    assert answer_region("plain answer") == "plain answer"
    assert answer_region("prefilled think...</think>final") == "final"


def test_normalize_gold() -> None:
    assert normalize_gold(204) == "204"
    assert normalize_gold("$\\frac{1}{2}$") == "\\frac{1}{2}"
    assert normalize_gold("\\boxed{x+1}") == "x+1"


# ---------------------------------------------------------------------------------------------
# the reward table
# ---------------------------------------------------------------------------------------------

EQUIVALENT = [
    (r"\frac{1}{2}", r"\frac12"),
    (r"\frac{1}{2}", "0.5"),
    (r"\frac{1}{2}", "1/2"),
    (r"\frac{1}{2}", r"\dfrac{1}{2}"),
    ("0.5", r"\frac{1}{2}"),
    (r"\{1,2\}", r"\{2,1\}"),  # sets: order free
    ("(0,1]", "(0, 1]"),  # intervals
    ("5", r"5\text{ cm}"),  # units
    ("5", r"5 \mathrm{cm}"),
    (r"\text{(A)}", "A"),  # \text{}
    ("A", r"\text{A}"),
    ("x+1", "1+x"),
    (r"\sqrt{2}", "2^{1/2}"),
    ("1000", "1,000"),
    (204, "204"),  # numeric ground truth
    (["3", "three"], "3"),  # list of accepted answers
]

WRONG = [
    (r"\frac{1}{2}", r"\frac13"),
    (r"\frac{1}{2}", "0.6"),
    (r"\{1,2\}", r"\{1,3\}"),
    ("(0,1]", "[0,1]"),  # closedness matters
    ("(0,1]", "(0,1)"),
    ("3", "-3"),
    ("1000000", "1000001"),
    (r"\pi", "3.14159"),
    ("x+1", "x+2"),
]


@pytest.mark.parametrize(("gold", "answer"), EQUIVALENT)
def test_equivalent_forms_score_positive(gold: object, answer: str) -> None:
    r = math_reward(solved(answer), gold, CFG)
    assert (r.score, r.correct, r.flags) == (1.0, True, ()), r
    assert r.answer == answer


@pytest.mark.parametrize(("gold", "answer"), WRONG)
def test_wrong_answers_score_negative(gold: str, answer: str) -> None:
    r = math_reward(solved(answer), gold, CFG)
    assert (r.score, r.correct, r.flags) == (-1.0, False, ()), r


def test_no_answer_after_think() -> None:
    r = math_reward("<think>I think it is 4</think> The answer is four.", "4", CFG)
    assert (r.score, r.correct, r.flags, r.answer) == (-1.0, False, ("no_answer",), None)


def test_answer_only_inside_think_does_not_count() -> None:
    r = math_reward("<think>so \\boxed{4}</think>I am confident.", "4", CFG)
    assert (r.score, r.correct, r.flags) == (-1.0, False, ("no_answer",))


def test_truncated_mid_think_is_format_and_no_answer() -> None:
    r = math_reward("<think>so far \\boxed{4} but wait", "4", CFG)
    assert (r.score, r.correct) == (-0.5, False)
    assert set(r.flags) == {"format", "no_answer"}


def test_truncated_mid_think_without_end_check_still_has_no_answer() -> None:
    cfg = RewardConfig(math={"no_think_end_score": None})
    r = math_reward("<think>so far \\boxed{4} but wait", "4", cfg)
    assert (r.score, r.correct, r.flags) == (-1.0, False, ("no_answer",))


def test_missing_think_start_penalty_and_disabling_it() -> None:
    response = "reasoning</think> \\boxed{4}"
    r = math_reward(response, "4", CFG)
    assert (r.score, r.correct, r.flags) == (-2.0, False, ("format",))
    r = math_reward(response, "4", RewardConfig(math={"no_think_start_score": None}))
    assert (r.score, r.correct, r.flags) == (1.0, True, ())


def test_no_tags_with_both_checks_off_reads_whole_text() -> None:
    cfg = RewardConfig(math={"no_think_start_score": None, "no_think_end_score": None})
    assert math_reward("easy: \\boxed{4}", "4", cfg).correct


def test_one_zero_scores() -> None:
    cfg = RewardConfig(math={"positive": 1.0, "negative": 0.0})
    assert math_reward(solved("4"), "4", cfg).score == 1.0
    assert math_reward(solved("5"), "4", cfg).score == 0.0
    assert math_reward("<think>x</think>no box", "4", cfg).score == 0.0


def test_unparseable_ground_truth_is_flagged_error() -> None:
    r = math_reward(solved("4"), "", CFG)
    assert (r.score, r.correct, r.flags) == (-1.0, False, ("error",))


# ---------------------------------------------------------------------------------------------
# fast path: must agree with math_verify wherever it answers
# ---------------------------------------------------------------------------------------------

FAST_PAIRS = [
    ("3", "3"),
    ("3", "03"),
    ("3", "4"),
    ("-3", "3"),
    ("123456789012345678", "123456789012345679"),
    ("2", "2.0"),
    ("2", "2.5"),
    ("0.5", "1/2"),
    ("0.5", r"\frac{1}{2}"),
    ("0.5", r"\dfrac12"),
    ("0.25", r"\tfrac{1}{4}"),
    ("1/3", "2/3"),
    ("1/3", "0.3333"),  # close: math_verify decides
    ("1/3", "0.333333"),  # close: math_verify says equal (6-place rounding)
    ("2", "2.0000001"),
    ("0.5000001", "0.5"),
    ("1/7", "0.142857"),
    ("7", "7/1"),
    ("10", "10.01"),
    ("-1/2", "-0.5"),
    ("100", "99.9"),
]


def _math_verify(gold: str, answer: str) -> bool:
    from math_verify import parse, verify

    return verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + answer + "}"))


def test_fast_path_agrees_with_math_verify() -> None:
    decided = 0
    for gold, answer in FAST_PAIRS:
        quick = fast_equal(gold, answer)
        if quick is not None:
            decided += 1
            assert quick == _math_verify(gold, answer), (gold, answer, quick)
    assert decided >= 15  # the fast path must actually take the common cases


def test_fast_path_defers_close_and_non_numeric() -> None:
    assert fast_equal("1/3", "0.3333") is None
    assert fast_equal("1/3", "0.333333") is None
    assert fast_equal("x", "1") is None
    assert fast_equal("1/0", "1") is None
    assert fast_equal("3", "4") is False
    assert fast_equal("0.5", r"\frac12") is True


def test_verdicts_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    mr.clear_caches()
    calls = []
    real = mr._math_verify_equal

    def counting(gold: str, answer: str, cache_size: int) -> str:
        calls.append((gold, answer))
        return real(gold, answer, cache_size)

    monkeypatch.setattr(mr, "_math_verify_equal", counting)
    for _ in range(3):
        assert judge("x+1", "1+x", timeout_s=5.0, cache_size=16) == "equal"
    assert calls == [("x+1", "1+x")]
    assert judge("x+1", "1+x", timeout_s=5.0, cache_size=0) == "equal"  # a 0-size cache still answers


# ---------------------------------------------------------------------------------------------
# timeouts
# ---------------------------------------------------------------------------------------------

PATHOLOGICAL = ["9^{9^{9}}", "1000000!", "\\frac{1}{" * 300 + "2" + "}" * 300]


@pytest.mark.parametrize("answer", PATHOLOGICAL, ids=["power-tower", "factorial", "nested-frac"])
def test_pathological_answers_time_out_within_bound(answer: str) -> None:
    mr.warm_up()
    # fast path off: it would decide these without math_verify (tests/rewards/test_math_screen.py)
    cfg = RewardConfig(math={"verify_timeout_s": 0.5, "cache_size": 0, "fast_path": False})
    start = time.monotonic()
    r = math_reward(solved(answer), "5", cfg)
    elapsed = time.monotonic() - start
    assert r.flags == ("timeout",), r
    assert (r.score, r.correct) == (-1.0, False)
    assert elapsed < 1.5, elapsed


def test_callers_alarm_and_handler_survive() -> None:
    fired = []

    def handler(signum: int, frame: object) -> None:
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        mr.clear_caches()
        assert math_reward(solved("1+x"), "x+1", CFG).correct  # goes through math_verify
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining <= 30.0  # the caller's timer is still armed
        assert signal.getsignal(signal.SIGALRM) is handler
        assert not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_off_main_thread_refuses_clearly_instead_of_silently_scoring() -> None:
    mr.clear_caches()
    out: list[BaseException | object] = []

    def target() -> None:
        try:
            out.append(math_reward(solved("1+x"), "x+1", CFG))
        except RuntimeError as exc:
            out.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    assert isinstance(out[0], RuntimeError)
    assert "RewardPool" in str(out[0])
