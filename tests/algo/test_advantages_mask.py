"""The ``valid`` mask: a left-out response (an infrastructure failure) counts in no statistic and
gets advantage 0; the model's own failure stays in with a negative advantage. Hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from klear.algo.advantages import compute_advantages
from klear.config import AdvantageConfig
from klear.data.dynamic_sampling import keep_groups

# group 0: right, own timeout (-1, a verdict), infra failure (masked), right; group 1: right, infra, wrong
REWARDS = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
GROUPS = [0, 0, 0, 0, 1, 1, 1]
VALID = torch.tensor([True, True, False, True, True, False, True])


def test_grpo_over_the_valid_samples_only():
    adv = compute_advantages(REWARDS, GROUPS, AdvantageConfig(type="grpo", eps=1e-12), valid=VALID)
    # group 0 over {1, -1, 1}: mean 1/3, unbiased std sqrt(((2/3)^2 * 2 + (4/3)^2) / 2) = sqrt(4/3)
    s0 = math.sqrt(4 / 3)
    # group 1 over {1, -1}: mean 0, unbiased std sqrt(2)
    s1 = math.sqrt(2)
    expected = [(2 / 3) / s0, (-4 / 3) / s0, 0.0, (2 / 3) / s0, 1 / s1, 0.0, -1 / s1]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert adv[1] < 0  # the model's own timeout: a wrong answer, pushed down
    assert adv[2] == 0 and adv[5] == 0  # the infra failures: no gradient


def test_masked_equals_the_estimator_on_the_subset():
    for kind in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        cfg = AdvantageConfig(type=kind)
        masked = compute_advantages(REWARDS, GROUPS, cfg, valid=VALID)
        sub = compute_advantages(
            REWARDS[VALID], [g for g, v in zip(GROUPS, VALID.tolist(), strict=True) if v], cfg
        )
        assert torch.equal(masked[VALID], sub), kind
        assert torch.equal(masked[~VALID], torch.zeros(2))


def test_an_infra_failure_cannot_make_a_group_look_mixed():
    r = torch.tensor([1.0, 1.0, -1.0])  # two right, one infra failure scored -1
    valid = torch.tensor([True, True, False])
    assert compute_advantages(r, [0, 0, 0], AdvantageConfig(), valid=valid).tolist() == [0.0, 0.0, 0.0]
    assert compute_advantages(r, [0, 0, 0], AdvantageConfig()).abs().sum() > 0  # unmasked: fake signal
    assert keep_groups(r, [0, 0, 0], valid=valid).tolist() == [False] * 3
    assert keep_groups(r, [0, 0, 0]).tolist() == [True] * 3


def test_keep_groups_with_valid_never_keeps_an_invalid_sample():
    keep = keep_groups(REWARDS, GROUPS, valid=VALID)
    assert keep.tolist() == [True, True, False, True, True, False, True]
    all_invalid = torch.zeros(7, dtype=torch.bool)
    assert not keep_groups(REWARDS, GROUPS, valid=all_invalid).any()
    assert compute_advantages(REWARDS, GROUPS, AdvantageConfig(), valid=all_invalid).tolist() == [0.0] * 7


def test_masked_rewards_are_not_read_and_shapes_are_checked():
    r = REWARDS.clone()
    r[2] = float("nan")  # a masked reward may be anything
    adv = compute_advantages(r, GROUPS, AdvantageConfig(), valid=VALID)
    assert torch.isfinite(adv).all()
    with pytest.raises(ValueError, match="valid has shape"):
        compute_advantages(REWARDS, GROUPS, AdvantageConfig(), valid=VALID[:3])
