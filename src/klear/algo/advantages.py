"""Outcome advantages from per-response rewards grouped by prompt.

Each estimator maps ``rewards [N]`` and a group id per response to
``advantages [N]`` (one value per response; the trainer broadcasts it over the
response tokens). A group whose rewards are all equal -- including a group of
one -- carries no relative signal and gets exactly 0, never NaN.

A ``valid`` mask leaves responses out entirely (``reward.mask_failures``: an
infrastructure failure is no verdict on the response): they get advantage 0 and
do not count in their group's mean, std or size, nor in batch whitening.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from klear.registry import resolve

if TYPE_CHECKING:
    from klear.config import AdvantageConfig

AdvantageFn = Callable[[Tensor, Tensor, "AdvantageConfig"], Tensor]


def group_index(group_ids: Sequence[Hashable] | Tensor) -> Tensor:
    """Map arbitrary group ids (strings, ints, uuids) to ``0..G-1`` (long ``[N]``), in first-seen order."""
    if isinstance(group_ids, Tensor):
        _, inv = torch.unique(group_ids, return_inverse=True)
        return inv.long()
    seen: dict[Hashable, int] = {}
    return torch.tensor([seen.setdefault(g, len(seen)) for g in group_ids], dtype=torch.long)


class _Groups:
    """Per-group sums gathered back to each sample; the building block of every estimator."""

    def __init__(self, rewards: Tensor, index: Tensor):
        self.r = rewards.to(torch.float64)  # float64: group statistics must be exact for ties
        self.index = index.to(rewards.device)
        g = int(self.index.max()) + 1 if self.index.numel() else 0
        self.count = torch.zeros(g, dtype=torch.float64, device=rewards.device).index_add_(
            0, self.index, torch.ones_like(self.r)
        )
        total = torch.zeros(g, dtype=torch.float64, device=rewards.device).index_add_(0, self.index, self.r)
        self.n = self.count[self.index]  # group size of each sample
        self.mean = (total / self.count)[self.index]
        big = torch.finfo(torch.float64).max
        gmax = torch.full((g,), -big, dtype=torch.float64, device=rewards.device).scatter_reduce(
            0, self.index, self.r, "amax"
        )
        gmin = torch.full((g,), big, dtype=torch.float64, device=rewards.device).scatter_reduce(
            0, self.index, self.r, "amin"
        )
        # exact test: a constant group is one whose max equals its min (no float residue from the mean)
        self.constant = (gmax == gmin)[self.index]

    def std(self) -> Tensor:
        """Unbiased per-group std, gathered to samples (0 for groups of one)."""
        dev2 = (self.r - self.mean) ** 2
        ss = torch.zeros_like(self.count).index_add_(0, self.index, dev2)[self.index]
        return torch.sqrt(ss / (self.n - 1).clamp(min=1.0))

    def finish(self, adv: Tensor, like: Tensor) -> Tensor:
        return torch.where(self.constant, torch.zeros_like(adv), adv).to(like.dtype)


def grpo(rewards: Tensor, index: Tensor, cfg: AdvantageConfig) -> Tensor:
    """GRPO (DeepSeekMath Eq. 3 outcome supervision): ``(r - mean_g) / (std_g + eps)``, unbiased std."""
    g = _Groups(rewards, index)
    return g.finish((g.r - g.mean) / (g.std() + cfg.eps), rewards)


def dr_grpo(rewards: Tensor, index: Tensor, cfg: AdvantageConfig) -> Tensor:
    """Dr. GRPO (Liu et al. 2025): ``r - mean_g``, no division by the std."""
    g = _Groups(rewards, index)
    return g.finish(g.r - g.mean, rewards)


def rloo(rewards: Tensor, index: Tensor, cfg: AdvantageConfig) -> Tensor:
    """RLOO (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j = n/(n-1) * (r_i - mean_g)``."""
    g = _Groups(rewards, index)
    return g.finish((g.r - g.mean) * g.n / (g.n - 1).clamp(min=1.0), rewards)


def reinforce_pp(rewards: Tensor, index: Tensor, cfg: AdvantageConfig) -> Tensor:
    """REINFORCE++ with baseline (Hu et al. 2025): ``r - mean_g``, then whitened over the whole batch.

    Whitening is over responses (each response weighs one), without re-centring
    constant groups, which stay exactly 0.
    """
    g = _Groups(rewards, index)
    centred = torch.where(g.constant, torch.zeros_like(g.r), g.r - g.mean)
    std = centred.std(unbiased=True) if centred.numel() > 1 else centred.new_zeros(())
    whitened = (centred - centred.mean()) / (std + cfg.eps)
    return g.finish(whitened, rewards)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
}


def resolve_advantage(name: str) -> AdvantageFn:
    """A registered estimator by name, or user code given as ``'pkg.module:function'``."""
    return resolve(name, ADVANTAGES, "advantage")


def compute_advantages(
    rewards: Tensor,
    group_ids: Sequence[Hashable] | Tensor,
    cfg: AdvantageConfig,
    valid: Tensor | None = None,
) -> Tensor:
    """Advantages ``[N]`` for ``rewards [N]`` grouped by ``group_ids`` with the configured estimator.

    valid: bool ``[N]``; False leaves a response out of every statistic (its advantage is 0).
    The rewards of left-out responses are not read, so they may be anything finite or not.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    index = group_index(group_ids)
    if index.numel() != rewards.numel():
        raise ValueError(f"{rewards.numel()} rewards but {index.numel()} group ids")
    if valid is not None:
        valid = torch.as_tensor(valid, dtype=torch.bool, device=rewards.device)
        if valid.shape != rewards.shape:
            raise ValueError(f"valid has shape {tuple(valid.shape)}, rewards {tuple(rewards.shape)}")
        if not bool(valid.all()):
            out = torch.zeros_like(rewards)
            if bool(valid.any()):
                _, sub = torch.unique(index[valid.to(index.device)], return_inverse=True)
                out[valid] = _estimate(rewards[valid], sub, cfg)
            return out
    return _estimate(rewards, index, cfg)


def _estimate(rewards: Tensor, index: Tensor, cfg: AdvantageConfig) -> Tensor:
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; a failed reward must be flagged and scored, not NaN")
    if rewards.numel() == 0:
        return rewards.clone()
    return resolve_advantage(cfg.type)(rewards, index, cfg)
