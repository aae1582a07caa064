"""The pool's math fast path (klear.rewards.pool_inline): what the parent decides, or copies for a
repeated answer, is exactly what a worker running math_reward would have returned."""

from __future__ import annotations

from klear.config import RewardConfig
from klear.rewards import math as mr
from klear.rewards.pool import RewardPool
from klear.rewards.pool_inline import decide_inline, find_repeats
from klear.rewards.registry import REWARDS

CFG = RewardConfig(num_workers=2, math={"verify_timeout_s": 30.0}, item_timeout_s=60.0)


def row(truth: object) -> dict:
    return {"data_source": "t", "ability": "math", "reward_model": {"ground_truth": truth}}


def boxed(answer: str) -> str:
    return f"<think>w</think> so \\boxed{{{answer}}}"


BATCH = [
    (row("5"), "no think tags, \\boxed{5}"),  # format: missing <think>
    (row("5"), "<think>cut off"),  # format: missing </think>
    (row("5"), "<think>w</think> no box"),  # no answer
    (row("5"), boxed("5")),
    (row("5"), boxed("6")),
    (row("5"), boxed("9^{9^{9}}")),  # screened: flagged timeout at once
    (row("1"), boxed("\\frac{1}{" * 300 + "1" + "}" * 300)),  # exact rational: equal
    (row("x+1"), boxed("1+x")),  # math_verify
    (row("x+1"), boxed("1+x")),  # a repeat: copied
    (row("x+1"), boxed("x+2")),
    (row("x+1"), boxed("1+x")),  # another repeat
    (row(["\\frac{1}{2}", "0.5"]), boxed("1/2")),  # a list of accepted ground truths
    (row("\\boxed{1} and \\boxed{-2}"), boxed("-2, 1")),  # several boxes: the set of them
    (row("\\boxed{1} and \\boxed{-2}"), boxed("1")),
    (row(7), boxed("7")),
]


def test_pool_results_equal_math_reward_in_process() -> None:
    rows = [r for r, _ in BATCH]
    responses = [s for _, s in BATCH]
    mr.clear_caches()
    expected = [mr.math_reward(s, r["reward_model"]["ground_truth"], CFG) for r, s in BATCH]
    with RewardPool(CFG) as pool:
        got = pool.score(rows, responses)
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert (g.score, g.correct, g.flags, g.answer) == (e.score, e.correct, e.flags, e.answer), (i, e, g)
    assert [g.correct for g in got] == [
        False, False, False, True, False, False, True, True, True, False, True, True, True, False, True
    ]  # fmt: skip
    assert got[5].flags == ("timeout",) and "not verified" in (got[5].detail or "")


def test_what_the_parent_decides_and_what_it_copies() -> None:
    paths = [REWARDS["math"]] * len(BATCH)
    truths = [r["reward_model"]["ground_truth"] for r, _ in BATCH]
    responses = [s for _, s in BATCH]
    mr.clear_caches()  # the parent's own cache is empty in training (it never runs math_verify)
    decided = [decide_inline(p, s, t, CFG) for p, s, t in zip(paths, responses, truths, strict=True)]
    assert [i for i, d in enumerate(decided) if d is None] == [7, 8, 9, 10, 12, 13]
    assert find_repeats(paths, responses, truths, decided, CFG) == {8: 7, 10: 7}
    # shortcuts off: nothing decided or copied in the parent
    plain = CFG.model_copy(update={"math": CFG.math.model_copy(update={"fast_path": False, "cache_size": 0})})
    assert all(
        decide_inline(p, s, t, plain) is None for p, s, t in zip(paths, responses, truths, strict=True)
    )
    assert find_repeats(paths, responses, truths, [None] * len(BATCH), plain) == {}
    # a user function is never decided by the parent
    assert decide_inline("my.mod:fn", boxed("5"), "5", CFG) is None
