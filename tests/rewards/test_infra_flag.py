"""``RewardResult.infra``: set where the harness failed (pool kill, lost worker, sandbox error or
restart, verifier timeout, bad ground truth, a reward function raising), never for the model's own
failures (its program times out, crashes or prints the wrong thing; a wrong format)."""

from __future__ import annotations

import pytest

import klear.rewards.code as code_mod
import klear.rewards.math as math_mod
from klear.config import RewardConfig
from klear.rewards.code import code_reward
from klear.rewards.math import math_reward
from klear.rewards.sandbox import SandboxError, TestRun

GT = {"inputs": ["1\n", "2\n"], "outputs": ["1\n", "2\n"]}
PROGRAM = "<think>x</think>\n```python\nprint(input())\n```"


class FakeBox:
    """A sandbox whose every run ends as scripted (no process is started)."""

    def __init__(self, run: TestRun | Exception, privileged: bool = True):
        self.outcome, self.privileged = run, privileged

    def run(self, code, payload):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.fixture
def with_box(monkeypatch):
    def use(outcome):
        monkeypatch.setattr(code_mod, "get_sandbox", lambda cfg: FakeBox(outcome))

    return use


@pytest.mark.parametrize(
    "run, flag",
    [
        (TestRun(status="timeout"), "timeout"),  # wall clock: the program is too slow
        (TestRun(status="exited", signal=24), None),  # SIGXCPU: its CPU limit
        (TestRun(status="exited", exit_code=1, stderr="ZeroDivisionError"), None),  # it crashed
        (TestRun(status="exited", exit_code=0, stdout="wrong\n"), None),  # wrong output
        (TestRun(status="output_limit"), None),  # it printed too much
    ],
)
def test_the_programs_own_failures_are_verdicts(with_box, run, flag):
    with_box(run)
    r = code_reward(PROGRAM, GT, RewardConfig())
    assert not r.infra and r.passed == 0 and r.score == -1.0
    assert (flag in r.flags) if flag else "error" not in r.flags


@pytest.mark.parametrize(
    "outcome, flag",
    [
        (TestRun(status="sandbox_restart"), "sandbox_restart"),
        (TestRun(status="server_error"), "error"),
        (SandboxError("server connection lost"), "error"),
    ],
)
def test_sandbox_failures_are_infra(with_box, outcome, flag):
    with_box(outcome)
    r = code_reward(PROGRAM, GT, RewardConfig())
    assert r.infra and flag in r.flags and not r.correct


def test_a_restart_where_tests_share_the_servers_uid_is_the_programs_failure(monkeypatch):
    """Unprivileged mode: a program can kill its own server. Were that masked, a policy could learn
    to kill the server instead of taking a wrong answer's negative advantage."""
    monkeypatch.setattr(
        code_mod, "get_sandbox", lambda cfg: FakeBox(TestRun(status="sandbox_restart"), False)
    )
    r = code_reward(PROGRAM, GT, RewardConfig())
    assert not r.infra and "sandbox_restart" in r.flags and r.passed == 0 and r.score == -1.0


def test_code_format_and_bad_ground_truth(with_box):
    with_box(TestRun(status="exited", exit_code=0, stdout="1\n"))
    assert not code_reward("```python\nprint(1)\n```", GT, RewardConfig()).infra  # no </think>: format
    bad = code_reward(PROGRAM, {"inputs": ["1"]}, RewardConfig())
    assert bad.infra and bad.flags == ("error",)


def test_math_verifier_timeout_and_bad_gold_are_infra(monkeypatch):
    cfg = RewardConfig()
    assert not math_reward("<think>x</think>\\boxed{5}", "4", cfg).infra  # wrong answer
    assert not math_reward("x</think>\\boxed{4}", "4", cfg).infra  # missing <think>: format
    monkeypatch.setattr(math_mod, "judge", lambda *a, **k: "timeout")
    r = math_reward("<think>x</think>\\boxed{4}", "4", cfg)
    assert r.infra and r.flags == ("timeout",)
    monkeypatch.setattr(math_mod, "judge", lambda *a, **k: "bad_gold")
    assert math_reward("<think>x</think>\\boxed{4}", "4", cfg).infra


def test_pool_kill_and_raising_reward_are_infra():
    from klear.rewards.pool import RewardPool

    cfg = RewardConfig(
        num_workers=1,
        item_timeout_s=1.0,
        math={"verify_timeout_s": 0.2},
        custom={
            "slow": "tests.train.fixture_safety_rewards:sleepy",
            "broken": "tests.train.fixture_safety_rewards:raises",
            "ok": "tests.train.fixture_rewards:parity",
        },
    )
    rows = [{"data_source": s, "reward_model": {"ground_truth": "1"}} for s in ("slow", "broken", "ok")]
    pool = RewardPool(cfg)
    try:
        killed, broken, fine = pool.score(rows, ["ab", "ab", "ab"])
    finally:
        pool.close()
    assert killed.infra and killed.flags == ("timeout",)
    assert broken.infra and broken.flags == ("error",) and "reward server restarted" in broken.detail
    assert not fine.infra and fine.correct
