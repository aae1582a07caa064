"""Dynamic sampling keeps only mixed groups; the overlong penalty by hand."""

import pytest
import torch

from klear.data.dynamic_sampling import group_std, keep_groups, overlong_penalty


def test_keeps_only_mixed_groups():
    acc = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    groups = ["a", "a", "a", "b", "b", "c", "c", "c", "d"]
    assert keep_groups(acc, groups).tolist() == [True] * 3 + [False] * 2 + [False] * 3 + [False]


def test_float_residue_counts_as_equal():
    r = torch.tensor([0.1 + 0.2, 0.3, 0.3], dtype=torch.float64)
    assert r[0] != r[1]  # the residue is real ...
    assert not keep_groups(r, [0, 0, 0]).any()  # ... and does not make the group "mixed"


def test_group_std_population():
    std, index = group_std(torch.tensor([1.0, 0.0, 2.0, 2.0]), [0, 0, 1, 1])
    torch.testing.assert_close(std, torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert index.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (60, 0.0), (70, -0.25), (80, -0.5), (100, -1.0), (150, -1.0)],
)
def test_overlong_penalty_by_hand(length, expected):
    # max 100, buffer 40: free up to 60, linear to -1 at 100
    assert overlong_penalty(torch.tensor([length]), 100, 40).item() == pytest.approx(expected)


def test_overlong_penalty_without_buffer_and_factor():
    out = overlong_penalty(torch.tensor([10, 100, 101]), 100, 0, factor=0.5)
    assert out.tolist() == [0.0, 0.0, -0.5]
