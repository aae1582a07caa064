"""Loss aggregation: the one place where a per-token loss matrix becomes a scalar.

Every mode divides by a *normaliser the caller can fix globally*. When a
mini-batch is split into micro-batches (or across data-parallel ranks), the
caller passes the normaliser of the whole mini-batch, so the sum of the
micro-batch losses -- and hence the sum of their gradients -- equals the loss
of the whole mini-batch. Left as ``None`` a normaliser is taken from the
tensors given, which is right only when they are the whole mini-batch.

Modes (``L`` = loss matrix ``[B, T]``, ``m`` = response mask ``[B, T]``):

- ``token-mean``:              sum(L*m) / N_tokens              (DAPO; Klear default)
- ``seq-mean-token-mean``:     sum_i [sum_t L*m / sum_t m] / N_seqs   (GRPO, GSPO)
- ``seq-mean-token-sum``:      sum_i sum_t L*m / N_seqs
- ``seq-mean-token-sum-norm``: sum_i sum_t L*m / (N_seqs * norm_len)  (Dr. GRPO: a constant length)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Normaliser:
    """Counts over the *whole* mini-batch (all micro-batches, all ranks).

    num_tokens: response tokens (sum of the mask); num_seqs: sequences with at
    least one response token; norm_len: the constant length of
    ``seq-mean-token-sum-norm`` (the generation budget).
    """

    num_tokens: float | None = None
    num_seqs: float | None = None
    norm_len: float | None = None

    @staticmethod
    def of(response_mask: Tensor, norm_len: float | None = None) -> Normaliser:
        """The normaliser of a full mini-batch given as one mask ``[B, T]``."""
        m = response_mask.to(torch.float32)
        return Normaliser(
            num_tokens=float(m.sum()),
            num_seqs=float((m.sum(-1) > 0).sum()),
            norm_len=float(norm_len if norm_len is not None else m.shape[-1]),
        )


def aggregate(loss_mat: Tensor, response_mask: Tensor, mode: str, norm: Normaliser | None = None) -> Tensor:
    """Reduce ``loss_mat [B, T]`` over ``response_mask [B, T]`` to a scalar, per ``mode``.

    An empty mask gives 0 (with a gradient graph), never NaN.
    """
    norm = norm or Normaliser()
    mask = response_mask.to(loss_mat.dtype)
    masked = loss_mat * mask
    if mode == "token-mean":
        n = norm.num_tokens if norm.num_tokens is not None else mask.sum()
        return masked.sum() / _at_least_one(n)
    token_sum = masked.sum(-1)  # [B]
    n_seqs = norm.num_seqs if norm.num_seqs is not None else (mask.sum(-1) > 0).sum()
    if mode == "seq-mean-token-mean":
        per_seq = token_sum / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / _at_least_one(n_seqs)
    if mode == "seq-mean-token-sum":
        return token_sum.sum() / _at_least_one(n_seqs)
    if mode == "seq-mean-token-sum-norm":
        norm_len = norm.norm_len if norm.norm_len is not None else loss_mat.shape[-1]
        return token_sum.sum() / (_at_least_one(n_seqs) * norm_len)
    raise ValueError(
        f"unknown aggregation mode {mode!r}; allowed: token-mean, seq-mean-token-mean, "
        "seq-mean-token-sum, seq-mean-token-sum-norm"
    )


def _at_least_one(n: float | Tensor) -> float | Tensor:
    return n.clamp(min=1) if isinstance(n, Tensor) else max(float(n), 1.0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (0 when the mask is empty); for metrics, not for losses."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)
