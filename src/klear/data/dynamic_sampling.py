"""Dynamic sampling and overlong shaping (DAPO, used by Klear-Reasoner's RL stage).

A prompt group whose metric has zero variance (all right or all wrong) has all
advantages 0 under GRPO: it spends compute and gives no signal. These pure
functions decide which groups to keep and how to shape over-long responses;
the RL loop does the refilling.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from klear.algo.advantages import group_index


def group_std(values: Tensor, group_ids: Sequence[Hashable] | Tensor) -> tuple[Tensor, Tensor]:
    """Population std of ``values [N]`` within each group, and the group index of each sample.

    Returns ``(std_per_group [G], index [N])``; a group of one has std 0.
    """
    index = group_index(group_ids)
    v = values.to(torch.float64)
    g = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, index, torch.ones_like(v))
    mean = torch.zeros(g, dtype=torch.float64).index_add_(0, index, v) / count
    var = torch.zeros(g, dtype=torch.float64).index_add_(0, index, (v - mean[index]) ** 2) / count
    return var.sqrt(), index


def keep_groups(
    values: Tensor,
    group_ids: Sequence[Hashable] | Tensor,
    std_eps: float = 1e-6,
    valid: Tensor | None = None,
) -> Tensor:
    """Bool ``[N]``: samples whose group's metric has std > ``std_eps`` (a mixed group).

    ``std > eps``, not ``std == 0``: rewards such as 0.1 + 0.2 vs 0.3 differ by
    float residue and must still count as equal.

    valid: bool ``[N]``; the std is taken over a group's valid samples only (an
    infrastructure failure is no verdict and cannot make a group look mixed), and an
    invalid sample is never kept itself.
    """
    index = group_index(group_ids)
    if valid is None:
        std, index = group_std(values, index)
        return (std > std_eps)[index]
    valid = torch.as_tensor(valid, dtype=torch.bool)
    if valid.shape != values.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)}, values {tuple(values.shape)}")
    keep = torch.zeros(values.shape, dtype=torch.bool)
    if bool(valid.any()):
        std, sub = group_std(values[valid], index[valid])
        keep[valid] = (std > std_eps)[sub]
    return keep


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, Eq. 13), added to the reward.

    0 up to ``max_len - buffer_len`` tokens, then linearly down to ``-factor``
    at ``max_len``, and ``-factor`` beyond.
    """
    lengths = lengths.to(torch.float64)
    if buffer_len <= 0:
        return torch.where(lengths > max_len, -factor, 0.0).to(torch.float32)
    start = max_len - buffer_len
    pen = torch.clamp((start - lengths) / buffer_len, min=-1.0, max=0.0) * factor
    return pen.to(torch.float32)
