"""Advantage estimators against hand values and their invariances."""

import math

import pytest
import torch

from klear.algo.advantages import ADVANTAGES, compute_advantages, group_index
from klear.config import AdvantageConfig

# group a: 1, 0, 0, 1; group b: all equal; group c: a single response
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.7, 0.7, 0.7, 0.5])
GROUPS = ["a", "a", "a", "a", "b", "b", "b", "c"]


def adv(kind, rewards=REWARDS, groups=GROUPS):
    return compute_advantages(rewards, groups, AdvantageConfig(type=kind))


def test_grpo_by_hand():
    std = math.sqrt(4 * 0.25 / 3)  # unbiased
    a = 0.5 / (std + 1e-6)
    torch.testing.assert_close(adv("grpo"), torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))


def test_dr_grpo_by_hand():
    torch.testing.assert_close(adv("dr_grpo"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_rloo_by_hand():
    # 1 - mean(0, 0, 1) = 2/3 ; 0 - mean(1, 0, 1) = -2/3
    torch.testing.assert_close(adv("rloo"), torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]))


def test_reinforce_pp_by_hand():
    centred = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    std = math.sqrt((4 * 0.25) / 7)
    torch.testing.assert_close(adv("reinforce_pp"), centred / (std + 1e-6))


@pytest.mark.parametrize("kind", sorted(ADVANTAGES))
def test_constant_groups_are_exactly_zero_never_nan(kind):
    r = torch.tensor([0.1, 0.1, 0.1, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 5.0])
    out = adv(kind, r, [0, 0, 0, 1, 1, 1, 1, 2])
    assert torch.equal(out, torch.zeros(8))


@pytest.mark.parametrize("kind", sorted(ADVANTAGES))
def test_all_equal_batch_gives_zeros(kind):
    assert torch.equal(adv(kind, torch.ones(6), [0, 0, 0, 1, 1, 1]), torch.zeros(6))


def test_grpo_invariant_to_shift_and_positive_scale():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(64, generator=g)
    ids = torch.arange(64) // 8
    base = adv("grpo", r, ids)
    torch.testing.assert_close(adv("grpo", 3.0 * r + 7.0, ids), base, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(adv("grpo", r - 100.0, ids), base, atol=1e-4, rtol=1e-4)


def test_group_order_does_not_matter():
    perm = torch.tensor([7, 2, 5, 0, 3, 6, 1, 4])
    out = adv("grpo", REWARDS[perm], [GROUPS[i] for i in perm])
    torch.testing.assert_close(out, adv("grpo")[perm])


def test_group_index_from_strings_and_tensors():
    assert group_index(["x", "y", "x"]).tolist() == [0, 1, 0]
    assert group_index(torch.tensor([9, 4, 9])).tolist() == [1, 0, 1]


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        adv("grpo", torch.tensor([1.0, float("nan")]), [0, 0])
    with pytest.raises(ValueError, match="group ids"):
        adv("grpo", torch.tensor([1.0, 0.0]), [0])
    with pytest.raises(ValueError, match="1-D"):
        adv("grpo", torch.ones(2, 2), [0, 0])


def test_dtype_is_preserved():
    assert adv("grpo", REWARDS.double()).dtype == torch.float64
