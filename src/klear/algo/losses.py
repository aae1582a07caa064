"""Policy losses: PPO (clip-higher, dual-clip), GPPO and CE-GPPO, CISPO, GSPO.

All losses are written in one form. With ratio ``r = exp(logp - logp_old)``
and advantage ``A``, the per-token loss is ``-A * s`` where ``s`` is a
"surrogate ratio" whose *value* and *gradient* are chosen per region. Its
gradient is ``ds = F * dlogp``, so ``grad = -F * A * grad(logp)`` with the
coefficient ``F`` of the table in DESIGN.md:

===========================  ========  =================  ===========
region                       PPO       GPPO (CE-GPPO)     CISPO
===========================  ========  =================  ===========
A>0, r > 1+eps_high          0         b_h * (1+eps_h)    1+eps_h
A<0, r < 1-eps_low           0         b_l * (1-eps_l)    1-eps_l
A<0, r > c (dual clip)       0         0                  1+eps_h
otherwise                    r         r                  clip(r)
===========================  ========  =================  ===========

GPPO (Klear-Reasoner, arXiv 2508.07629, Eq. 6) writes the clip bound as
``bound / sg(r) * r``: equal to ``bound`` in value, with gradient
``bound * dlogp``. PPO and GPPO here compute the value and the coefficient F
of each token without autograd, straight from the table, and carry the
gradient with one expression ``value + F * (logp - sg(logp))`` (the same
value and gradient as the paper's form, without passing through ``exp``, so
it stays exact where the ratio over/underflows, and cheap: GPPO costs what
PPO costs). The tests check both against the textbook ``max``/``min`` form.

A loss function returns a per-token loss matrix and the ratio its clipping
used; :func:`policy_loss` aggregates (``klear.algo.aggregate``), adds the SFT
term and computes the metrics -- the same for every loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from klear.algo.aggregate import Normaliser, aggregate, masked_mean
from klear.registry import resolve

if TYPE_CHECKING:
    from klear.config import LossConfig

# exp() of a log-ratio beyond this is inf/0 in float32; values only, gradients never use it.
_MAX_LOG_RATIO = 20.0


@dataclass
class TokenLoss:
    """What a registered loss returns, all ``[B, T]``.

    ``loss``: per-token loss; ``ratio``: the importance ratio the loss used;
    ``clipped_high`` / ``clipped_low`` / ``dual``: where it applied the upper
    bound, the lower bound and the dual-clip bound (for the metrics).
    """

    loss: Tensor
    ratio: Tensor
    clipped_high: Tensor
    clipped_low: Tensor
    dual: Tensor


@dataclass
class LossOutput:
    """Scalar loss to backpropagate and detached scalar metrics (tensors, to avoid device syncs)."""

    loss: Tensor
    metrics: dict[str, Tensor]


LossFn = Callable[[Tensor, Tensor, Tensor, Tensor, "LossConfig"], TokenLoss]


def _ratio(log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
    return torch.exp((log_prob - old_log_prob).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))


def _surrogate(value: Tensor, coef: Tensor, log_prob: Tensor) -> Tensor:
    """Equal to ``value``; gradient ``coef * dlogp``.

    ``logp - sg(logp)`` is exactly 0 with derivative 1, so the autograd graph is
    one multiply-add whatever the loss: GPPO's ``bound / sg(r) * r`` is
    ``_surrogate(bound, bound, logp)`` and an unclipped ``r`` is ``_surrogate(r, r, logp)``.
    """
    return value + coef * (log_prob - log_prob.detach())


def _regions(ratio: Tensor, adv: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean masks of the clipped regions: (A>0, r>1+eps_h), (A<0, r<1-eps_l), (A<0, r>c)."""
    high = (adv > 0) & (ratio > 1.0 + cfg.eps_high)
    low = (adv < 0) & (ratio < 1.0 - cfg.eps_low)
    if cfg.clip_ratio_c is None:
        dual = torch.zeros_like(high)
    else:
        dual = (adv < 0) & (ratio > cfg.clip_ratio_c)
    return high, low, dual


def _clipped_value(r: Tensor, high: Tensor, low: Tensor, dual: Tensor, cfg: LossConfig) -> Tensor:
    """PPO's surrogate ratio in value: the bound in each clipped region, ``r`` elsewhere."""
    v = torch.where(high, 1.0 + cfg.eps_high, r)
    v = torch.where(low, 1.0 - cfg.eps_low, v)
    if cfg.clip_ratio_c is not None:
        v = torch.where(dual, cfg.clip_ratio_c, v)
    return v


def ppo_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, response_mask: Tensor, cfg: LossConfig
) -> TokenLoss:
    """PPO clipped surrogate with clip-higher (DAPO) and dual clip (Ye et al. 2020).

    Equal in value and gradient to ``max(-A r, -A clip(r))`` and, for A<0,
    ``min(that, -A c)``: clipped tokens have coefficient 0, the rest ``r``.
    """
    with torch.no_grad():
        r = _ratio(log_prob, old_log_prob)
        high, low, dual = _regions(r, advantages, cfg)
        value = _clipped_value(r, high, low, dual, cfg)
        coef = torch.where(high | low | dual, 0.0, r)
    return TokenLoss(-advantages * _surrogate(value, coef, log_prob), r, high, low, dual)


def gppo_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, response_mask: Tensor, cfg: LossConfig
) -> TokenLoss:
    """GPPO (Klear-Reasoner Eq. 6) and CE-GPPO (betas): PPO's value, clipped tokens keep a bounded gradient.

    A>0, r>1+eps_h: coefficient ``beta_high*(1+eps_high)``; A<0, r<1-eps_l:
    ``beta_low*(1-eps_low)`` (0 with ``only_high``); dual clip (A<0, r>c) still 0.
    """
    low_scale = 0.0 if cfg.only_high else cfg.beta_low
    with torch.no_grad():
        r = _ratio(log_prob, old_log_prob)
        high, low, dual = _regions(r, advantages, cfg)
        value = _clipped_value(r, high, low, dual, cfg)
        # the coefficient is the value itself (the bound, or r), but 0 under dual clip ...
        coef = torch.where(dual, 0.0, value)
        # ... and scaled by beta on the preserved sides (skipped for GPPO's betas of 1)
        if cfg.beta_high != 1.0:
            coef = torch.where(high, cfg.beta_high * (1.0 + cfg.eps_high), coef)
        if low_scale != 1.0:
            coef = torch.where(low, low_scale * (1.0 - cfg.eps_low), coef)
    return TokenLoss(-advantages * _surrogate(value, coef, log_prob), r, high, low, dual)


def cispo_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, response_mask: Tensor, cfg: LossConfig
) -> TokenLoss:
    """CISPO (MiniMax-M1): ``-sg(clip(r, 1-eps_low, 1+eps_high)) * A * logp``; no token loses its gradient."""
    with torch.no_grad():
        r = _ratio(log_prob, old_log_prob)
        weight = r.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
        high, low = r > 1.0 + cfg.eps_high, r < 1.0 - cfg.eps_low
    return TokenLoss(-advantages * weight * log_prob, r, high, low, torch.zeros_like(high))


def gspo_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, response_mask: Tensor, cfg: LossConfig
) -> TokenLoss:
    """GSPO (Zheng et al. 2025), token form, with the sequence ratio ``s_i = exp(mean_t(logp - logp_old))``.

    Every token of sequence i has value ``s_i`` (clipped as PPO, clip-higher, no
    dual clip) and gradient coefficient ``s_i`` (0 when clipped), so with
    ``seq-mean-token-mean`` the gradient is GSPO's ``-A_i s_i mean_t(dlogp_t)``.
    """
    with torch.no_grad():
        log_seq = ((log_prob - old_log_prob) * response_mask).sum(-1) / response_mask.sum(-1).clamp(min=1.0)
        s = torch.exp(log_seq.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)).unsqueeze(-1).expand_as(log_prob)
        high = (advantages > 0) & (s > 1.0 + cfg.eps_high)
        low = (advantages < 0) & (s < 1.0 - cfg.eps_low)
        value = torch.where(high, 1.0 + cfg.eps_high, torch.where(low, 1.0 - cfg.eps_low, s))
        coef = torch.where(high | low, 0.0, s)
    return TokenLoss(-advantages * _surrogate(value, coef, log_prob), s, high, low, torch.zeros_like(high))


LOSSES: dict[str, LossFn] = {
    "ppo": ppo_loss,
    "gppo": gppo_loss,
    "cispo": cispo_loss,
    "gspo": gspo_loss,
}


def resolve_loss(name: str) -> LossFn:
    """A registered loss by name, or user code given as ``'pkg.module:function'``."""
    return resolve(name, LOSSES, "loss")


def policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    cfg: LossConfig,
    *,
    norm: Normaliser | None = None,
    sft_mask: Tensor | None = None,
    sft_norm: Normaliser | None = None,
) -> LossOutput:
    """The policy loss of a (micro-)batch: registered loss -> aggregation -> + SFT term -> metrics.

    Args:
        log_prob: ``[B, T]`` log-probs of the sampled tokens under the current policy (with grad).
        old_log_prob: ``[B, T]`` log-probs under the sampling policy.
        advantages: ``[B, T]`` (or ``[B]``, broadcast over tokens).
        response_mask: ``[B, T]`` 1 for response tokens that count.
        cfg: the :class:`~klear.config.LossConfig`.
        norm: normaliser of the whole mini-batch (see ``klear.algo.aggregate``); default: this batch.
        sft_mask: ``[B]`` bool, rollouts that get the ``sft_alpha * NLL`` term (reward == max).
        sft_norm: normaliser of the SFT term over the whole mini-batch (its positive tokens only).
    """
    log_prob = log_prob.float()
    old_log_prob = old_log_prob.float()
    advantages = advantages.float()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(log_prob)
    mask = response_mask.to(torch.float32)

    out = resolve_loss(cfg.type)(log_prob, old_log_prob, advantages, mask, cfg)
    pg_loss = aggregate(out.loss, mask, cfg.agg, norm)
    loss = pg_loss

    with torch.no_grad():
        log_ratio = log_prob.detach() - old_log_prob
        ratio = out.ratio.detach()
        on = mask > 0
        any_on = on.any()
        zero = ratio.new_zeros(())
        metrics = {
            "pg_loss": pg_loss.detach(),
            "clip_frac_high": masked_mean(out.clipped_high.float(), mask),
            "clip_frac_low": masked_mean(out.clipped_low.float(), mask),
            "dual_clip_frac": masked_mean(out.dual.float(), mask),
            "approx_kl": masked_mean(-log_ratio, mask),
            # k3 = r - 1 - log r, an unbiased, non-negative estimate of KL(old || new) under old samples
            "approx_kl_k3": masked_mean(torch.expm1(log_ratio.clamp(max=_MAX_LOG_RATIO)) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(any_on, torch.where(on, ratio, -torch.inf).max(), zero),
            "ratio_min": torch.where(any_on, torch.where(on, ratio, torch.inf).min(), zero),
        }

    if cfg.sft_alpha > 0.0 and sft_mask is not None:
        pos = mask * sft_mask.to(mask.dtype).unsqueeze(-1)
        sft_loss = aggregate(-log_prob, pos, cfg.agg, sft_norm)
        loss = loss + cfg.sft_alpha * sft_loss
        metrics["sft_loss"] = sft_loss.detach()
        metrics["sft_frac"] = sft_mask.float().mean()
    metrics["loss"] = loss.detach()
    return LossOutput(loss=loss, metrics=metrics)
