"""The RL trainer's validation metrics from known verdicts (no model, no sandbox)."""

from types import SimpleNamespace

import pytest

from klear.config import RLConfig, load_config
from klear.rollout import SamplingParams
from klear.train.rl_report import validate
from klear.types import RewardResult


class _Sampler:
    def generate(self, prompts, sampling):
        return [SimpleNamespace(text=f"answer {i}", response_ids=[0] * (i + 1)) for i in range(len(prompts))]


class _Pool:
    """Code verdicts: 16 of 16 tests passed, 8 of 16, and a response with no program."""

    def score(self, rows, texts):
        return [
            RewardResult(score=1.0, correct=True, passed=16, total=16),
            RewardResult(score=0.5, correct=False, passed=8, total=16),
            RewardResult(score=0.0, correct=False, passed=0, total=0, flags=("no_answer",)),
        ]


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_validation_pass_rate_only_where_every_test_ran(mode):
    cfg = load_config(RLConfig, None, [f"reward.code.mode={mode}", "validation.n=1"])
    rows = [{"prompt": [{"role": "user", "content": str(i)}]} for i in range(3)]
    out = validate(_Sampler(), _Pool(), rows, cfg, SamplingParams.from_config(cfg.rollout))
    assert out["val/greedy_acc"] == pytest.approx(1 / 3)
    assert out["val/greedy_len"] == pytest.approx(2.0)
    if mode == "soft":
        assert out["val/greedy_pass_rate"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    else:  # hard stops at a program's first failed test: `passed` is not what the program passes
        assert "val/greedy_pass_rate" not in out
