"""The learner at real-run settings, on the tiny model: mixed precision learns at lr 1e-6,
activation checkpointing and chunked log-probs change nothing, over-budget sequences are counted."""

from __future__ import annotations

import pytest
import torch

from klear.config import RLConfig, build_config
from klear.models.loading import load_model, pick_device
from klear.models.tiny import build_tiny_model
from klear.train.batch import micro_batches, over_budget
from klear.train.common import make_optimizer
from klear.train.learner import Sample, merge_stats, old_logprobs, pad_id, update_policy
from klear.types import RewardResult, Rollout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))


def _cfg(tmp: str, model: dict, optim: dict | None = None, **trainer) -> RLConfig:
    return build_config(
        RLConfig,
        {
            "run": {"out_dir": tmp},
            "model": {"tiny": True, **model},
            "rollout": {"n": 2, "max_new_tokens": 16},
            "loss": {"type": "gppo", "sft_alpha": 0.1},
            "optim": optim or {"lr": 1e-3, "grad_clip": None},
            "trainer": {"ppo_mini_batch_size": 2, "train_batch_size": 2, **trainer},
        },
    )


def _kept(tokenizer) -> list[list[Sample]]:
    kept = []
    for g, question in enumerate(["12+34", "100+230"]):
        prompt = tokenizer.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
        group = []
        for j, text in enumerate(["<think>4+2=6 so 46</think>46", "<think>9 and then some more"]):
            ro = Rollout(prompt, tokenizer.encode(text)[: 8 + 5 * j + g], [], text, False, group=g, sample=j)
            res = RewardResult(score=float(j == 0), correct=j == 0)
            group.append(Sample({}, ro, res, res.score, advantage=1.0 if j == 0 else -1.0))
        kept.append(group)
    return kept


def _step(model_dir: str, cfg: RLConfig) -> tuple[dict, dict, dict]:
    """One learner update; returns (weights before, weights after, metrics with the gradients)."""
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir, cfg.model, pick_device())
    model.train()
    kept = _kept(tokenizer)
    samples = [s for g in kept for s in g]
    for i, (s, lp) in enumerate(
        zip(samples, old_logprobs(model, [s.rollout for s in samples], pad_id(tokenizer), cfg), strict=True)
    ):
        s.old_logp = lp + (0.3 if i % 2 else -0.3)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    stats = update_policy(model, make_optimizer(model, cfg.optim), kept, pad_id(tokenizer), cfg)
    after = {k: v.detach().clone() for k, v in model.named_parameters()}
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}  # of the one mini-batch
    return before, after, {**merge_stats([stats]), "grads": grads}


def _changed_fraction(before: dict, after: dict) -> float:
    changed = sum(int((before[k] != after[k]).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def test_mixed_precision_learns_at_lr_1e6_where_bf16_weights_do_not(model_dir, tmp_path):
    """The 8B recipes' precision (float32 master weights, bf16 compute) at their lr and decay."""
    optim = {"lr": 1e-6, "weight_decay": 0.1, "grad_clip": 1.0}
    mixed = _cfg(str(tmp_path), {"dtype": "float32", "compute_dtype": "bfloat16"}, optim)
    before, after, _ = _step(model_dir, mixed)
    assert all(v.dtype == torch.float32 for v in after.values())
    assert _changed_fraction(before, after) >= 0.99
    low = _cfg(
        str(tmp_path), {"dtype": "bfloat16", "allow_low_precision_weights": True}, optim
    )  # the old 8B setting: weights and AdamW state in bf16
    before, after, _ = _step(model_dir, low)
    assert all(v.dtype == torch.bfloat16 for v in after.values())
    assert _changed_fraction(before, after) < 0.05  # most updates rounded away (measured 1.9%)


def test_compute_dtype_autocasts_on_one_device(model_dir, tmp_path):
    from klear.train.learner import model_autocast

    cfg = _cfg(str(tmp_path), {"dtype": "float32", "compute_dtype": "bfloat16"})
    model, _ = load_model(model_dir, cfg.model, pick_device())
    assert next(model.parameters()).dtype == torch.float32
    with model_autocast(model, cfg):
        out = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert out.dtype == torch.bfloat16
    plain = _cfg(str(tmp_path), {"dtype": "float32"})
    with model_autocast(model, plain):
        assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.dtype == torch.float32


def test_chunked_logprobs_and_checkpointing_give_the_same_update(model_dir, tmp_path):
    ref_before, _, ref_metrics = _step(
        model_dir, _cfg(str(tmp_path), {"dtype": "float32"}, logits_chunk_tokens=0)
    )
    layer_calls = []

    from klear.models import loading

    load = loading.load_model

    def counting_load(*a, **kw):
        model, tok = load(*a, **kw)
        for layer in model.model.layers:
            hook = lambda m, i: layer_calls.append(torch.is_grad_enabled())  # noqa: E731
            layer.self_attn.q_proj.register_forward_pre_hook(hook)  # the layer's own hooks sit outside
        return model, tok

    cfg = _cfg(str(tmp_path), {"dtype": "float32", "gradient_checkpointing": True}, logits_chunk_tokens=3)
    import tests.train.test_learner_long as me

    me.load_model = counting_load
    try:
        before, after, metrics = _step(model_dir, cfg)
    finally:
        me.load_model = load
    for k in ref_before:
        torch.testing.assert_close(before[k], ref_before[k])
        g, ref = metrics["grads"][k], ref_metrics["grads"][k]
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        assert float(ref.abs().max()) > 0
        assert not torch.equal(after[k], before[k])
    assert metrics["actor/entropy"] == pytest.approx(ref_metrics["actor/entropy"], rel=1e-5)
    assert metrics["actor/loss"] == pytest.approx(ref_metrics["actor/loss"], rel=1e-5, abs=1e-7)
    # checkpointing is on: each layer runs again (with grad) in backward. Old log-probs: one
    # no-grad pass; update: one forward keeping no activations, then one recompute per layer
    n_layers = 2
    assert layer_calls == [False] * n_layers + [True] * (2 * n_layers)


def test_a_sequence_over_the_budget_is_its_own_micro_batch_and_counted(model_dir, tmp_path):
    def ro(n: int) -> Rollout:
        return Rollout([1] * 3, [2] * (n - 3), [], "", False)

    rollouts = [ro(10), ro(50), ro(12), ro(30), ro(11)]
    plan = micro_batches(rollouts, token_budget=36)
    assert plan == [[0, 4, 2], [3], [1]]  # 3 x 12 = 36 fits; 50 > 36 runs alone
    assert over_budget(rollouts, 36) == 1
    for group in plan:
        longest = max(len(rollouts[i].prompt_ids) + len(rollouts[i].response_ids) for i in group)
        assert len(group) * longest <= 36 or len(group) == 1
    # the learner reports them
    cfg = _cfg(str(tmp_path), {"dtype": "float32"}, micro_batch_tokens=30)
    _, _, metrics = _step(model_dir, cfg)
    _, tokenizer = load_model(model_dir, cfg.model, pick_device())
    lengths = [len(s.rollout.prompt_ids) + len(s.rollout.response_ids) for g in _kept(tokenizer) for s in g]
    assert metrics["actor/over_budget_seqs"] == sum(n > 30 for n in lengths) > 0
