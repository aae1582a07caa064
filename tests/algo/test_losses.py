"""Policy losses, value and gradient, hand-computed per region of the DESIGN.md coefficient table.

With token-mean over N tokens, d loss / d logp_t = -F_t * A_t / N, where F is the
table's coefficient. Each token below sits in one region (eps_low 0.2, eps_high 0.28, c 3).
"""

from __future__ import annotations

import math

import pytest
import torch

from klear.algo.aggregate import Normaliser
from klear.algo.losses import LOSSES, policy_loss
from klear.config import LossConfig

# (advantage, ratio) per token, one token per region; logp chosen freely, old = logp - log r.
TOKENS = [
    (+1.0, 1.5),  # 0: A>0, r>1+eps_h            PPO 0    GPPO 1.28   CISPO 1.28
    (-1.0, 0.5),  # 1: A<0, r<1-eps_l            PPO 0    GPPO 0.8    CISPO 0.8
    (-2.0, 4.0),  # 2: A<0, r>c (dual clip)      PPO 0    GPPO 0      CISPO 1.28
    (+2.0, 1.1),  # 3: inside                    r        r           r
    (+1.0, 0.5),  # 4: A>0, r<1-eps_l (unclipped by PPO's pessimism)  r  r  clip(r)=0.8
    (-1.0, 1.5),  # 5: A<0, 1+eps_h < r < c (unclipped)               r  r  clip(r)=1.28
    (0.0, 2.0),  # 6: A=0: no loss, no gradient
]
LOGP = [-0.7, -1.2, -0.3, -2.0, -0.9, -0.4, -1.5]
N = len(TOKENS)


def _batch():
    adv = torch.tensor([[a for a, _ in TOKENS]])
    logp = torch.tensor([LOGP], requires_grad=True)
    old = torch.tensor([[lp - math.log(r) for lp, (_, r) in zip(LOGP, TOKENS, strict=True)]])
    mask = torch.ones_like(adv)
    return logp, old, adv, mask


def _cfg(**kw) -> LossConfig:
    return LossConfig(**{"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 3.0, **kw})


def _run(cfg: LossConfig):
    logp, old, adv, mask = _batch()
    out = policy_loss(logp, old, adv, mask, cfg)
    out.loss.backward()
    return out, logp.grad[0]


def _expected_grad(coefs: list[float]) -> torch.Tensor:
    return torch.tensor([-f * a / N for f, (a, _) in zip(coefs, TOKENS, strict=True)])


PPO_VALUE = [
    -1.0 * 1.28,  # clipped at 1+eps_h
    +1.0 * 0.8,  # clipped at 1-eps_l
    +2.0 * 3.0,  # dual clip: -A*c
    -2.0 * 1.1,
    -1.0 * 0.5,
    +1.0 * 1.5,
    0.0,
]


def test_ppo_value_and_gradient():
    out, grad = _run(_cfg(type="ppo"))
    assert out.loss.item() == pytest.approx(sum(PPO_VALUE) / N, abs=1e-6)
    torch.testing.assert_close(grad, _expected_grad([0, 0, 0, 1.1, 0.5, 1.5, 2.0]), atol=1e-6, rtol=0)


def test_gppo_value_equals_ppo_and_gradient_preserved():
    out, grad = _run(_cfg(type="gppo"))
    assert out.loss.item() == pytest.approx(sum(PPO_VALUE) / N, abs=1e-6)
    torch.testing.assert_close(grad, _expected_grad([1.28, 0.8, 0, 1.1, 0.5, 1.5, 2.0]), atol=1e-6, rtol=0)


def test_ce_gppo_betas_scale_the_preserved_gradients():
    out, grad = _run(_cfg(type="gppo", beta_low=0.5, beta_high=2.0))
    assert out.loss.item() == pytest.approx(sum(PPO_VALUE) / N, abs=1e-6)
    torch.testing.assert_close(
        grad, _expected_grad([2.0 * 1.28, 0.5 * 0.8, 0, 1.1, 0.5, 1.5, 2.0]), atol=1e-6, rtol=0
    )


def test_gppo_only_high_preserves_only_the_upper_side():
    out, grad = _run(_cfg(type="gppo", only_high=True))
    assert out.loss.item() == pytest.approx(sum(PPO_VALUE) / N, abs=1e-6)
    torch.testing.assert_close(grad, _expected_grad([1.28, 0, 0, 1.1, 0.5, 1.5, 2.0]), atol=1e-6, rtol=0)


def test_cispo_value_and_gradient():
    out, grad = _run(_cfg(type="cispo"))
    weights = [1.28, 0.8, 1.28, 1.1, 0.8, 1.28, 1.28]  # sg(clip(r)); c plays no role
    value = sum(-a * w * lp for (a, _), w, lp in zip(TOKENS, weights, LOGP, strict=True)) / N
    assert out.loss.item() == pytest.approx(value, abs=1e-6)
    torch.testing.assert_close(grad, _expected_grad(weights), atol=1e-6, rtol=0)


def test_gppo_forward_equals_ppo_forward_exactly_on_random_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logp = -torch.rand(8, 33, generator=g) * 3
        old = logp + torch.randn(8, 33, generator=g) * 0.6
        adv = torch.randn(8, 1, generator=g).expand(8, 33)
        mask = (torch.rand(8, 33, generator=g) > 0.2).float()
        for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
            ppo = policy_loss(logp, old, adv, mask, _cfg(type="ppo", agg=agg)).loss
            gppo = policy_loss(logp, old, adv, mask, _cfg(type="gppo", agg=agg)).loss
            ce = policy_loss(
                logp, old, adv, mask, _cfg(type="gppo", agg=agg, beta_low=0.3, beta_high=1.7)
            ).loss
            assert torch.equal(ppo, gppo) and torch.equal(gppo, ce)


def _verl_style_reference(logp, old, adv, mask, eps_l, eps_h, c, preserve: bool):
    """The textbook form: max(-A r, -A clip(r)) and, for A<0, min(., -A c); GPPO bounds as bound/sg(r)*r."""
    r = torch.exp(logp - old)
    if preserve:
        lo = (1 - eps_l) / r.detach() * r
        hi = (1 + eps_h) / r.detach() * r
        clipped = torch.where(r < 1 - eps_l, lo, torch.where(r > 1 + eps_h, hi, r))
    else:
        clipped = torch.clamp(r, 1 - eps_l, 1 + eps_h)
    l1 = torch.maximum(-adv * r, -adv * clipped)
    l2 = torch.minimum(l1, -adv * c)
    per_tok = torch.where(adv < 0, l2, l1)
    return (per_tok * mask).sum() / mask.sum()


@pytest.mark.parametrize("loss_type", ["ppo", "gppo"])
def test_matches_textbook_formula_value_and_gradient(loss_type):
    g = torch.Generator().manual_seed(1)
    logp0 = -torch.rand(16, 40, generator=g) * 3
    old = logp0 + torch.randn(16, 40, generator=g) * 0.8  # many tokens beyond both bounds and c
    adv = torch.randn(16, 40, generator=g)
    mask = (torch.rand(16, 40, generator=g) > 0.1).float()
    a = logp0.clone().requires_grad_(True)
    b = logp0.clone().requires_grad_(True)
    ours = policy_loss(a, old, adv, mask, _cfg(type=loss_type)).loss
    ref = _verl_style_reference(b, old, adv, mask, 0.2, 0.28, 3.0, preserve=loss_type == "gppo")
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)
    ratio = torch.exp(logp0 - old)
    assert (
        ((ratio > 3.0) & (adv < 0)).any()
        and ((ratio < 0.8) & (adv < 0)).any()
        and ((ratio > 1.28) & (adv > 0)).any()
    )


def test_cispo_differs_from_ppo_exactly_where_the_table_says():
    _, g_ppo = _run(_cfg(type="ppo"))
    _, g_cispo = _run(_cfg(type="cispo"))
    differs = ~torch.isclose(g_ppo, g_cispo, atol=1e-7)
    # regions 0, 1, 2 (PPO zero, CISPO bounded), 4 and 5 (clip(r) vs r); same inside and at A=0
    assert differs.tolist() == [True, True, True, False, True, True, False]


def test_dual_clip_disabled_with_null_c():
    _, grad = _run(_cfg(type="ppo", clip_ratio_c=None))
    # token 2 (A<0, r=4 > 1+eps_h) is now unclipped: F = r
    torch.testing.assert_close(grad[2], torch.tensor(-4.0 * -2.0 / N), atol=1e-6, rtol=0)


def test_gspo_sequence_ratio_value_and_gradient():
    # two sequences; seq 0 (A=+1): log-ratios 0.1, 0.3 -> s0 = e^0.2 (inside [0.8, 1.28]);
    # seq 1 (A=+1): log-ratios 0.5, 0.7, 0.6 -> s1 = e^0.6 = 1.82 > 1.28: clipped, no gradient.
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.4, -0.3]], requires_grad=True)
    old = logp.detach() - torch.tensor([[0.1, 0.3, 0.0], [0.5, 0.7, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.0, 1.0])
    cfg = LossConfig(type="gspo", agg="seq-mean-token-mean", clip_ratio_c=None)
    out = policy_loss(logp, old, adv, mask, cfg)
    out.loss.backward()
    s0 = math.exp(0.2)
    assert out.loss.item() == pytest.approx((-s0 + -1.28) / 2, abs=1e-6)
    expected = torch.tensor([[-s0 / 2 / 2, -s0 / 2 / 2, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=0)
    assert out.metrics["clip_frac_high"].item() == pytest.approx(3 / 5)


def test_sft_term_adds_alpha_nll_on_positive_rollouts():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    old = logp.detach().clone()  # r = 1 everywhere
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    cfg = LossConfig(type="gppo", sft_alpha=0.1)
    out = policy_loss(logp, old, adv, mask, cfg, sft_mask=torch.tensor([True, False]))
    out.loss.backward()
    pg = (-1 * 1 - 1 * 1 + 1 + 1) / 4  # -A*r summed over tokens / 4
    sft = (1.0 + 2.0) / 2  # NLL token-mean over the positive rollout's 2 tokens
    assert out.loss.item() == pytest.approx(pg + 0.1 * sft, abs=1e-6)
    expected = torch.tensor([[-1 / 4 - 0.1 / 2, -1 / 4 - 0.1 / 2], [1 / 4, 1 / 4]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=0)
    assert out.metrics["sft_loss"].item() == pytest.approx(1.5)


def test_metrics_count_regions():
    out, _ = _run(_cfg(type="ppo"))
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["clip_frac_high"] == pytest.approx(1 / N)
    assert m["clip_frac_low"] == pytest.approx(1 / N)
    assert m["dual_clip_frac"] == pytest.approx(1 / N)
    assert m["ratio_max"] == pytest.approx(4.0, rel=1e-6)
    assert m["ratio_min"] == pytest.approx(0.5, rel=1e-6)
    log_r = [math.log(r) for _, r in TOKENS]
    assert m["approx_kl"] == pytest.approx(-sum(log_r) / N, abs=1e-6)
    assert m["approx_kl_k3"] == pytest.approx(sum(math.expm1(x) - x for x in log_r) / N, abs=1e-5)


def test_empty_mask_gives_zero_not_nan():
    logp = torch.zeros(2, 3, requires_grad=True)
    for t in LOSSES:
        agg = "seq-mean-token-mean" if t == "gspo" else "token-mean"
        out = policy_loss(
            logp, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3), LossConfig(type=t, agg=agg)
        )
        out.loss.backward()
        assert out.loss.item() == 0.0 and torch.isfinite(logp.grad).all()
        assert all(torch.isfinite(v) for v in out.metrics.values())


def test_extreme_log_ratio_keeps_gppo_gradient_finite_and_exact():
    # r = e^50 overflows nothing: the preserved gradient does not pass through exp
    logp = torch.tensor([[0.0, -60.0]], requires_grad=True)
    old = torch.tensor([[-50.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0]])
    out = policy_loss(logp, old, adv, torch.ones(1, 2), _cfg(type="gppo", clip_ratio_c=None))
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.28 / 2, 0.8 / 2]]), atol=1e-6, rtol=0)


ALL_AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


# gspo is defined with seq-mean-token-mean only (the config rejects the rest)
PAIRS = [(t, a) for t in ("ppo", "gppo", "cispo") for a in ALL_AGG] + [("gspo", "seq-mean-token-mean")]


@pytest.mark.parametrize(("loss_type", "agg"), PAIRS)
def test_micro_batch_invariance(loss_type, agg):
    g = torch.Generator().manual_seed(2)
    B, T = 6, 17
    logp0 = -torch.rand(B, T, generator=g) * 2
    old = logp0 + torch.randn(B, T, generator=g) * 0.5
    adv = torch.randn(B, generator=g)
    lengths = torch.tensor([17, 3, 9, 1, 12, 5])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    sft_mask = torch.tensor([True, False, True, False, False, True])
    cfg = LossConfig(type=loss_type, agg=agg, sft_alpha=0.1)

    full = logp0.clone().requires_grad_(True)
    policy_loss(full, old, adv, mask, cfg, sft_mask=sft_mask).loss.backward()

    split = logp0.clone().requires_grad_(True)
    norm = Normaliser.of(mask)
    sft_norm = Normaliser.of(mask * sft_mask[:, None].float())
    for idx in (slice(0, 2), slice(2, 4), slice(4, 6)):
        out = policy_loss(
            split[idx],
            old[idx],
            adv[idx],
            mask[idx],
            cfg,
            norm=norm,
            sft_mask=sft_mask[idx],
            sft_norm=sft_norm,
        )
        out.loss.backward()
    torch.testing.assert_close(split.grad, full.grad, atol=1e-6, rtol=0)


def test_user_loss_by_dotted_path():
    cfg = LossConfig(type="tests.algo.custom_loss:constant_loss")
    logp = torch.zeros(1, 2, requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), cfg)
    assert out.loss.item() == pytest.approx(7.0)


def test_bf16_inputs_are_computed_in_float32():
    logp = torch.tensor([[-1.0, -0.5]], dtype=torch.bfloat16, requires_grad=True)
    out = policy_loss(logp, logp.detach().float(), torch.ones(1), torch.ones(1, 2), _cfg(type="gppo"))
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and logp.grad.dtype == torch.bfloat16
