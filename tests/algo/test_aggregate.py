"""Aggregation modes against hand sums; global normalisers make micro-batches add up."""

import pytest
import torch

from klear.algo.aggregate import Normaliser, aggregate

# two sequences: lengths 3 and 1 in a [2, 4] matrix
L = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
M = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),
        ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),
        ("seq-mean-token-sum", ((1 + 2 + 3) + 4) / 2),
        ("seq-mean-token-sum-norm", ((1 + 2 + 3) + 4) / (2 * 4)),
    ],
)
def test_modes_by_hand(mode, expected):
    assert aggregate(L, M, mode).item() == pytest.approx(expected)


def test_norm_len_is_the_generation_budget():
    out = aggregate(L, M, "seq-mean-token-sum-norm", Normaliser(num_seqs=2, norm_len=10))
    assert out.item() == pytest.approx(10 / 20)


def test_global_normaliser_splits_add_up():
    norm = Normaliser.of(M)
    assert (norm.num_tokens, norm.num_seqs, norm.norm_len) == (4.0, 2.0, 4.0)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        whole = aggregate(L, M, mode)
        parts = aggregate(L[:1], M[:1], mode, norm) + aggregate(L[1:], M[1:], mode, norm)
        assert parts.item() == pytest.approx(whole.item())


def test_sequences_without_tokens_do_not_count():
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert aggregate(L, m, "seq-mean-token-mean").item() == pytest.approx(2.0)


def test_unknown_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean"):
        aggregate(L, M, "mean")
