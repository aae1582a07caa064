"""The TRL plug-in: its loss is klear.algo.losses (value and gradient), its reward is the reward pool,
and GRPOTrainer trains the tiny model with both."""

from __future__ import annotations

import logging
import math

import pytest
import torch

pytest.importorskip("trl", minversion="1.16", reason="TRL is in the `bench` extra: pip install -e .[bench]")
datasets = pytest.importorskip("datasets")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from klear.algo.aggregate import Normaliser  # noqa: E402
from klear.algo.losses import policy_loss  # noqa: E402
from klear.config import LossConfig, RewardConfig  # noqa: E402
from klear.integrations.trl import (  # noqa: E402
    KlearGRPOTrainer,
    KlearRewardFunction,
    completion_text,
    klear_reward_func,
    loss_config_from_trl,
)
from klear.models.tiny import build_tiny_model, build_tokenizer  # noqa: E402
from klear.rewards.pool import RewardPool  # noqa: E402
from klear.tasks import task_rows  # noqa: E402

PARITY = "tests.train.fixture_rewards:parity"
EXPLODE = "tests.integrations.fixture_rewards:explode"


def grpo_args(out, **overrides) -> GRPOConfig:
    kw = dict(
        output_dir=str(out),
        loss_type="gppo",
        epsilon=0.2,
        epsilon_high=0.28,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    kw.update(overrides)
    return GRPOConfig(**kw)


def constant_reward(completions, **_kwargs):
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", seed=0)


@pytest.fixture(scope="module")
def rows():
    return task_rows("addition", "train", 8, 0)


@pytest.fixture(scope="module")
def trainer(tiny_dir, rows, tmp_path_factory):
    """A KlearGRPOTrainer whose loss tests feed it log-probs directly; 2 accumulation micro-batches."""
    args = grpo_args(tmp_path_factory.mktemp("out"), gradient_accumulation_steps=2, max_completion_length=6)
    t = KlearGRPOTrainer(
        model=str(tiny_dir),
        reward_funcs=constant_reward,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
    )
    t.model.train()
    return t


# ---------------------------------------------------------------------------------------------
# (a) the loss: klear.algo.losses.policy_loss, value and gradient, inside GRPOTrainer._compute_loss
# ---------------------------------------------------------------------------------------------

# Two sequences of 3 completion tokens. Seq 0 (A=+1): ratios 1.5 (above 1+eps_high: clipped high), 1.0,
# padding. Seq 1 (A=-1): 0.5 (below 1-eps_low: clipped low), 1.1, 0.9. Five real tokens.
RATIOS = torch.tensor([[1.5, 1.0, 1.0], [0.5, 1.1, 0.9]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
ADV = torch.tensor([1.0, -1.0])
OLD = torch.log(torch.tensor([[0.3, 0.2, 0.5], [0.6, 0.25, 0.4]]))


def batch(ratios=RATIOS, mask=MASK, adv=ADV, old=OLD, **extra):
    """TRL's micro-batch dict (as _generate_and_score_completions + the plug-in build it) and the logps."""
    b, t = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask.clone(),
        "advantages": adv.clone(),
        "num_items_in_batch": mask.sum(),
        "klear_num_seqs": (mask.sum(-1) > 0).sum(),
        "old_per_token_logps": old.clone(),
    }
    inputs.update(extra)
    return inputs, (old + torch.log(ratios)).clone()


def run_loss(trainer, monkeypatch, inputs, logps, compute=None):
    """The trainer's loss on ``inputs`` with the model's log-probs replaced by ``logps``; (loss, d loss/d logps)."""
    leaf = logps.clone().requires_grad_(True)

    def fake_logps(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert input_ids.shape[1] == inputs["prompt_ids"].shape[1] + logits_to_keep
        return leaf, torch.full_like(leaf, 2.0).detach(), None

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", fake_logps)
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 2, raising=False)
    loss = (compute or trainer._compute_loss)(trainer.model, inputs)
    loss.backward()
    return loss.detach(), leaf.grad


def reference(logps, cfg, mask=MASK, adv=ADV, old=OLD, **kw):
    leaf = logps.clone().requires_grad_(True)
    out = policy_loss(leaf, old, adv, mask, cfg, **kw)
    out.loss.backward()
    return out.loss.detach(), leaf.grad


GPPO = LossConfig(type="gppo", eps_low=0.2, eps_high=0.28)


def test_gppo_equals_policy_loss_and_hand_values(trainer, monkeypatch):
    assert trainer.loss_config == GPPO  # loss_type="gppo", epsilon 0.2 / epsilon_high 0.28
    inputs, logps = batch()
    loss, grad = run_loss(trainer, monkeypatch, inputs, logps)
    ref_loss, ref_grad = reference(logps, GPPO)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)
    # by hand: value -A*clip(r) per token, token-mean over 5 tokens; gradient -A*F/5 with F the bound
    # on the clipped tokens (GPPO keeps it) and r elsewhere
    assert loss.item() == pytest.approx((-1.28 - 1.0 + 0.8 + 1.1 + 0.9) / 5, abs=1e-6)
    hand = torch.tensor([[-1.28, -1.0, 0.0], [0.8, 1.1, 0.9]]) / 5
    torch.testing.assert_close(grad, hand, atol=1e-6, rtol=0)


def test_clipped_tokens_keep_a_gradient_where_ppo_and_trl_dapo_have_none(trainer, monkeypatch):
    inputs, logps = batch()
    _, gppo_grad = run_loss(trainer, monkeypatch, inputs, logps)
    # Klear's PPO through the same plug-in, and TRL's own dapo loss (same clip-higher, token-mean)
    monkeypatch.setattr(trainer, "loss_config", LossConfig(type="ppo", eps_low=0.2, eps_high=0.28))
    _, ppo_grad = run_loss(trainer, monkeypatch, *batch())
    monkeypatch.setattr(trainer, "loss_config", None)
    monkeypatch.setattr(trainer, "loss_type", "dapo")
    trl_loss, trl_grad = run_loss(trainer, monkeypatch, *batch(), compute=trainer._compute_loss)
    ref_loss, ref_grad = reference(logps, LossConfig(type="ppo", eps_low=0.2, eps_high=0.28))
    torch.testing.assert_close(ppo_grad, ref_grad, atol=1e-6, rtol=0)
    # TRL's dapo (num_items_in_batch over 2 micro-batches x 2 accumulation steps / 2 steps_per_generation)
    torch.testing.assert_close(trl_loss, ref_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(trl_grad, ppo_grad, atol=1e-6, rtol=0)
    clipped = torch.tensor([[True, False, False], [True, False, False]])
    assert (ppo_grad[clipped] == 0).all()
    torch.testing.assert_close(gppo_grad[clipped], torch.tensor([-1.28, 0.8]) / 5, atol=1e-6, rtol=0)
    torch.testing.assert_close(gppo_grad[~clipped], ppo_grad[~clipped], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(type="gppo"),  # dual clip c=10 active below
        LossConfig(type="gppo", beta_low=0.5, beta_high=2.0),
        LossConfig(type="gppo", only_high=True, agg="seq-mean-token-mean"),
        LossConfig(type="cispo", agg="seq-mean-token-sum"),
        LossConfig(type="ppo", clip_ratio_c=None, agg="seq-mean-token-sum-norm"),
    ],
    ids=["gppo-dual", "ce-gppo", "only-high", "cispo", "ppo-drgrpo"],
)
def test_every_klear_loss_matches_policy_loss(trainer, monkeypatch, cfg):
    monkeypatch.setattr(trainer, "loss_config", cfg)
    ratios = RATIOS.clone()
    ratios[1, 2] = 12.0  # A<0 and r > c: the dual-clip region
    inputs, logps = batch(ratios=ratios)
    loss, grad = run_loss(trainer, monkeypatch, inputs, logps)
    ref_loss, ref_grad = reference(logps, cfg, norm=Normaliser.of(MASK, norm_len=6))
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_accumulated_micro_batches_add_up_to_the_whole_step(trainer, monkeypatch, agg):
    """Two accumulation micro-batches (lengths differ) sum to policy_loss on the whole step, SFT term included."""
    cfg = LossConfig(type="gppo", agg=agg, sft_alpha=0.1)
    monkeypatch.setattr(trainer, "loss_config", cfg)
    ratios = torch.tensor([[1.5, 1.0, 1.0], [0.5, 1.1, 0.9], [1.2, 0.7, 1.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0, -0.5, 0.3])
    old = torch.log(torch.rand(4, 3, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1)
    sft = torch.tensor([True, False, False, True])
    pos = mask * sft[:, None]
    # what _generate_and_score_completions adds for the generation batch (= this optimizer step)
    totals = {
        "num_items_in_batch": mask.sum(),
        "klear_num_seqs": torch.tensor(4),
        "klear_num_sft_tokens": pos.sum(),
        "klear_num_sft_seqs": (pos.sum(-1) > 0).sum(),
    }
    logps = old + torch.log(ratios)
    losses, grads = [], []
    for half in (slice(0, 2), slice(2, 4)):
        inputs, _ = batch(ratios[half], mask[half], adv[half], old[half], klear_sft_mask=sft[half], **totals)
        loss, grad = run_loss(trainer, monkeypatch, inputs, logps[half])
        losses.append(loss)
        grads.append(grad)
    ref_loss, ref_grad = reference(
        logps, cfg, mask=mask, adv=adv, old=old, sft_mask=sft, sft_norm=Normaliser.of(pos.float())
    )
    torch.testing.assert_close(losses[0] + losses[1], ref_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(grads), ref_grad, atol=1e-6, rtol=0)


def test_normaliser_spans_the_optimizer_step(trainer, monkeypatch):
    """num_items_in_batch counts the generation batch; an optimizer step is accum / steps_per_generation of it."""
    counts = {"num_items_in_batch": torch.tensor(40), "klear_num_seqs": torch.tensor(16)}
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 2, raising=False)
    monkeypatch.setattr(trainer.args, "steps_per_generation", 4)  # 2 optimizer steps per generation
    norm, sft_norm = trainer.klear_normaliser(counts, "train")
    assert (norm.num_tokens, norm.num_seqs, norm.norm_len, sft_norm) == (20.0, 8.0, 6.0, None)
    norm, sft_norm = trainer.klear_normaliser(
        {**counts, "klear_num_sft_tokens": torch.tensor(12), "klear_num_sft_seqs": torch.tensor(3)}, "eval"
    )
    assert (norm.num_tokens, norm.num_seqs, sft_norm.num_tokens, sft_norm.num_seqs) == (40.0, 16.0, 12.0, 3.0)


def test_trl_settings_map_to_loss_config(tmp_path):
    cfg = loss_config_from_trl(grpo_args(tmp_path, epsilon=0.1, epsilon_high=0.3))
    assert (cfg.type, cfg.eps_low, cfg.eps_high, cfg.agg) == ("gppo", 0.1, 0.3, "token-mean")
    assert loss_config_from_trl(grpo_args(tmp_path, epsilon=0.15, epsilon_high=None)).eps_high == 0.15
    given = LossConfig(type="cispo", eps_high=0.5)
    assert loss_config_from_trl(grpo_args(tmp_path, loss_type="klear"), given) is given
    assert loss_config_from_trl(grpo_args(tmp_path, loss_type="dapo")) is None  # TRL's own loss
    with pytest.raises(ValueError, match="loss_type='klear'"):
        loss_config_from_trl(grpo_args(tmp_path, loss_type="dapo"), given)
    with pytest.raises(ValueError, match=r"loss_config\.type='cispo'"):
        loss_config_from_trl(grpo_args(tmp_path), given)
    with pytest.raises(ValueError, match=r"beta != 0.*top_entropy_quantile"):
        loss_config_from_trl(grpo_args(tmp_path, beta=0.01, top_entropy_quantile=0.5))
    with pytest.raises(ValueError, match="gspo"):
        loss_config_from_trl(grpo_args(tmp_path, importance_sampling_level="sequence"))


def test_sft_alpha_needs_the_klear_reward(tiny_dir, rows, tmp_path):
    with pytest.raises(ValueError, match="KlearRewardFunction"):
        KlearGRPOTrainer(
            model=str(tiny_dir),
            reward_funcs=constant_reward,
            args=grpo_args(tmp_path),
            train_dataset=datasets.Dataset.from_list(rows),
            loss_config=LossConfig(sft_alpha=0.1),
        )


# ---------------------------------------------------------------------------------------------
# (c) the reward function: the pool's scores, TRL's calling convention, flags never silent
# ---------------------------------------------------------------------------------------------


def test_completion_text_forms():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}]) == "a"
    turns = [
        {"role": "assistant", "content": "x", "reasoning_content": "think"},
        {"role": "tool", "content": "tool output"},
        {"role": "assistant", "content": [{"type": "text", "text": "y"}]},
    ]
    assert completion_text(turns) == "<think>think</think>x\ny"


@pytest.mark.slow
def test_reward_function_matches_the_pool_and_reports_flags(rows, caplog):
    gold = [r["reward_model"]["ground_truth"] for r in rows[:4]]
    texts = [
        f"<think>sum</think>\\boxed{{{gold[0]}}}",  # right
        "<think>sum</think>\\boxed{-1}",  # wrong
        f"no think at all \\boxed{{{gold[2]}}}",  # format: missing <think>
        "<think>never closed",  # format: missing </think>
    ]
    cfg = RewardConfig(num_workers=1, failure_score=-3.0, custom={"klear-test/explode": EXPLODE})
    ds = datasets.Dataset.from_list(rows[:4])  # columns as TRL gets them: structs come back as dicts
    columns = {k: ds[k] for k in ds.column_names if k != "prompt"}
    logged: dict[str, list[float]] = {}

    def log_metric(name, value):
        logged.setdefault(name, []).append(value)

    with RewardPool(cfg) as pool:
        expected = [r.score for r in pool.score(rows[:4], texts)]
        assert expected[0] == 1.0 and expected[1] == -1.0  # a real verdict, not a constant
        fn = klear_reward_func(pool=pool)
        assert isinstance(fn, KlearRewardFunction) and fn.__name__ == "klear_reward"
        conversational = [[{"role": "assistant", "content": t}] for t in texts]
        got = fn(prompts=ds["prompt"], completions=conversational, log_metric=log_metric, **columns)
        assert got == expected
        assert [r.correct for r in fn.last_results] == [True, False, False, False]
        assert logged["klear_reward/accuracy"] == [0.25]
        assert logged["klear_reward/flag/format"] == [0.5]
        # with a tokenizer, the exact decoded tokens are scored (not TRL's parsed messages)
        tok = build_tokenizer()
        ids = [[*tok.encode(t, add_special_tokens=False), tok.eos_token_id] for t in texts]
        exact = klear_reward_func(pool=pool, tokenizer=tok)
        parsed = [[{"role": "assistant", "content": "\\boxed{0}"}]] * 4
        assert exact(prompts=ds["prompt"], completions=parsed, completion_ids=ids, **columns) == expected
        # plain-text completions and a flat ground_truth column with a default ability
        flat = klear_reward_func(pool=pool, name="flat", ability="math")
        assert flat(prompts=["q"] * 4, completions=texts, ground_truth=gold) == expected

        # a scorer failure: flagged, counted, logged, given the configured failure score
        bad = klear_reward_func(pool=pool, name="bad", data_source="klear-test/explode")
        with caplog.at_level(logging.WARNING, logger="klear.integrations.trl"):
            scores = bad(
                prompts=["q", "q"], completions=["a", "b"], ground_truth=["1", "2"], log_metric=log_metric
            )
        assert scores == [-3.0, -3.0]
        assert logged["bad/flag/error"] == [1.0] and bad.flag_counts["error"] == 2
        assert "bad: 2 of 2 responses not judged cleanly (2 error)" in caplog.text
        assert "ValueError: cannot score" in caplog.text
        fn.close()  # a pool passed in is the caller's: still usable
        assert pool.score(rows[:1], texts[:1])[0].score == 1.0


@pytest.mark.slow
def test_reward_function_owns_and_closes_its_pool(rows):
    fn = klear_reward_func(RewardConfig(num_workers=1))
    with fn:
        assert fn(completions=["<think>x</think>\\boxed{0}"], **_columns(rows[:1])) == [-1.0]
        pool = fn.pool
        assert fn.pool is pool  # kept across calls
        fn(completions=["<think>x</think>\\boxed{0}"], **_columns(rows[:1]))
        assert fn.pool is pool and fn.calls == 2
    assert fn._pool is None
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(rows[:1], ["x"])


def _columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}


# ---------------------------------------------------------------------------------------------
# (b) GRPOTrainer trains the tiny model with Klear's loss and reward (what docs/trl.md shows)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_grpo_trainer_steps_with_gppo_and_the_klear_reward(tiny_dir, rows, tmp_path):
    torch.manual_seed(0)
    reward = klear_reward_func(RewardConfig(num_workers=1, custom={"klear/addition": PARITY}))
    trainer = KlearGRPOTrainer(
        model=str(tiny_dir),
        reward_funcs=reward,
        args=grpo_args(tmp_path, max_steps=2),
        train_dataset=datasets.Dataset.from_list(rows),
        loss_config=LossConfig(type="gppo", eps_low=0.2, eps_high=0.28, sft_alpha=0.1),
    )
    assert isinstance(trainer, GRPOTrainer)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    with reward:
        trainer.train()
        assert reward.calls == 2 and reward._pool is not None
    assert reward._pool is None  # closed on leaving the block
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)]
    assert len(changed) == len(before)
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2
    for h in steps:
        assert math.isfinite(h["loss"]) and h["loss"] != 0.0
        assert 0.0 <= h["rewards/klear_reward/mean"] <= 1.0
        # the SFT term covers exactly the completions the reward judged correct (one micro-batch per step)
        assert h["klear/sft_frac"] == pytest.approx(h["klear_reward/accuracy"])
        assert h["klear/ratio_mean"] == pytest.approx(1.0)  # one update per generation: on-policy
        assert h["klear_reward/flag/error"] == 0.0 and "entropy" in h
