"""Repeated code responses in a batch run once in the sandbox and are copied (klear.rewards.pool_inline):
the copy is what a run of its own gives, and only an exact (ground truth, response) repeat is copied."""

from __future__ import annotations

import json
import shutil

import pytest

from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
from klear.rewards.code import code_reward
from klear.rewards.pool import RewardPool
from klear.rewards.pool_inline import find_repeats
from klear.rewards.registry import REWARDS
from klear.rewards.sandbox import close_all

CFG = RewardConfig(
    num_workers=2,
    code=CodeRewardConfig(soft_mapping="pass_rate", max_tests=None),
    sandbox=SandboxConfig(test_timeout_s=1.0, cpu_time_s=3, memory_mb=256),
)
DOUBLE = json.dumps({"inputs": ["1\n", "2\n", "3\n", "4\n"], "outputs": ["2\n", "4\n", "6\n", "8\n"]})
SQUARE = json.dumps({"inputs": ["1\n", "2\n", "3\n", "4\n"], "outputs": ["1\n", "4\n", "9\n", "16\n"]})


def wrap(code: str) -> str:
    return f"<think>\nx\n</think>\n```python\n{code}```"


RIGHT = wrap("x=int(input())\nprint(2*x)\n")  # doubles: 4/4 on DOUBLE, 1/4 on SQUARE (x=2)
HALF = wrap("x=int(input())\nprint(2*x if x<3 else 0)\n")  # 2/4 on DOUBLE
BATCH = [  # (ground truth, response)
    (DOUBLE, RIGHT),
    (DOUBLE, HALF),
    (DOUBLE, RIGHT),  # repeat of 0: copied
    (SQUARE, RIGHT),  # same response, another problem: run
    (DOUBLE, HALF),  # repeat of 1: copied
    (DOUBLE, RIGHT + " "),  # not the same text: run
    (DOUBLE, RIGHT),  # repeat of 0: copied
]


def row(truth: str) -> dict:
    return {"data_source": "t", "ability": "code", "reward_model": {"ground_truth": truth}}


def test_only_exact_code_repeats_are_copied_whatever_the_math_shortcuts() -> None:
    paths = [REWARDS["code"]] * len(BATCH)
    truths = [t for t, _ in BATCH]
    responses = [r for _, r in BATCH]
    assert find_repeats(paths, responses, truths, [None] * len(BATCH), CFG) == {2: 0, 4: 1, 6: 0}
    plain = CFG.model_copy(update={"math": CFG.math.model_copy(update={"fast_path": False, "cache_size": 0})})
    assert find_repeats(paths, responses, truths, [None] * len(BATCH), plain) == {2: 0, 4: 1, 6: 0}
    # the same texts under the math reward are not code items: no boxed answer, nothing copied
    assert find_repeats([REWARDS["math"]] * len(BATCH), responses, truths, [None] * len(BATCH), CFG) == {}


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_pool_copies_equal_runs_of_their_own() -> None:
    try:
        expected = [code_reward(r, t, CFG) for t, r in BATCH]
        with RewardPool(CFG) as pool:
            got = pool.score([row(t) for t, _ in BATCH], [r for _, r in BATCH])
    finally:
        close_all()
    assert [(g.passed, g.total, g.score) for g in got] == [(e.passed, e.total, e.score) for e in expected]
    assert [(g.passed, g.total) for g in got] == [(4, 4), (2, 4), (4, 4), (1, 4), (2, 4), (4, 4), (4, 4)]
    assert [g.seconds == 0.0 for g in got] == [False, False, True, False, True, False, True]
