"""The RL trainer (``klear rl RECIPE``): GPPO on verifiable rewards, one loop that reads top to bottom.

Per step (Klear-Reasoner Sec. 2-3, with DAPO's dynamic sampling):

1. sample ``rollout.n`` responses per prompt and score them in the reward pool,
   dropping groups whose metric has zero variance and generating more until
   ``trainer.train_batch_size`` groups are kept (or ``max_num_gen_batches``);
2. overlong shaping, then group advantages;
3. old log-probs with the current policy (the sampler's are kept for a diagnostic);
4. PPO epochs over mini-batches of ``ppo_mini_batch_size`` groups, micro-batched
   by a token budget, with the configured loss, the ``sft_alpha`` term on correct
   rollouts, and a true global token-mean per mini-batch;
5. metrics; 6. validation; 7. checkpoint.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from klear.algo.advantages import compute_advantages
from klear.algo.aggregate import Normaliser
from klear.algo.losses import policy_loss
from klear.config import DataConfig, RLConfig, save_config
from klear.data.dynamic_sampling import keep_groups, overlong_penalty
from klear.train.batch import make_batch, micro_batches, response_logprobs
from klear.train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from klear.train.metrics import MetricsLogger, plot_curves
from klear.types import RewardResult, Rollout

log = logging.getLogger("klear.rl")

CURVE_KEYS = [
    "reward/mean",
    "reward/accuracy",
    "val/greedy_acc",
    "response/length_mean",
    "actor/entropy",
    "actor/grad_norm",
    "actor/clip_frac_high",
    "actor/clip_frac_low",
    "actor/approx_kl",
    "batch/kept_groups",
]


@dataclass
class Sample:
    """One scored rollout travelling through a step."""

    row: dict[str, Any]
    rollout: Rollout
    result: RewardResult
    reward: float  # after overlong shaping
    advantage: float = 0.0
    old_logp: torch.Tensor | None = None  # [len(response)] under the policy before this step's updates


@dataclass
class RLResult:
    out_dir: Path
    final_model: Path
    history: list[dict[str, Any]] = field(default_factory=list)


class PromptStream:
    """Prompt rows in a fresh seeded permutation each epoch; its state is two integers (exact resume)."""

    def __init__(self, rows: Sequence[dict[str, Any]], seed: int, shuffle: bool = True):
        if not rows:
            raise ValueError("no training prompts")
        self.rows, self.seed, self.shuffle = list(rows), seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[tuple[int, dict[str, Any]]]:
        """The next ``k`` rows as (uid, row); uid is unique per draw, so repeated prompts are separate groups."""
        out = []
        for _ in range(k):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            idx = self._order[self.pos]
            out.append((self.epoch * len(self.rows) + self.pos, self.rows[idx]))
            self.pos += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._permutation()


def train_rl(cfg: RLConfig, *, init_model: str | Path | None = None, resume: bool = True) -> RLResult:
    """Run RL as configured; ``init_model`` overrides ``model.path`` (the demo passes its SFT checkpoint)."""
    from klear.rewards.pool import RewardPool, reward_metrics
    from klear.rollout import SamplingParams, backend_class, backend_options
    from klear.train.common import (
        load_model,
        make_optimizer,
        make_scheduler,
        pick_device,
        quiet_transformers,
        resolve_model_dir,
    )

    # 0. Set-up: seed, output dir with the resolved config, model, data, pool, sampler, optimizer.
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    _seed_everything(cfg.run.seed)
    if cfg.trainer.num_threads is not None:
        torch.set_num_threads(cfg.trainer.num_threads)
    quiet_transformers()
    device = pick_device()
    model_dir = (
        Path(init_model) if init_model is not None else resolve_model_dir(cfg.model, out, cfg.run.seed)
    )
    model, tokenizer = load_model(model_dir, cfg.model, device)
    model.train()
    train_rows, val_rows = rl_rows(cfg.data, "train"), rl_rows(cfg.data, "test")
    if cfg.validation.max_prompts is not None:
        val_rows = val_rows[: cfg.validation.max_prompts]
    stream = PromptStream(train_rows, cfg.run.seed, cfg.data.shuffle)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.trainer.total_steps)
    sampler = backend_class(cfg.rollout.backend)(
        model, tokenizer, seed=cfg.run.seed, **backend_options(cfg.rollout, cfg.model)
    )
    sampling = SamplingParams.from_config(cfg.rollout)
    n, groups_per_step = cfg.rollout.n, cfg.trainer.train_batch_size
    gen_prompts = cfg.trainer.gen_batch_size or groups_per_step
    ckpt_root = out / "checkpoints"

    start_step = 0
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if ckpt is not None:
        start_step = _restore(ckpt, model, optimizer, scheduler, stream, sampler)
        log.info("resumed from %s (step %d)", ckpt, start_step)
    logger = MetricsLogger(
        out, cfg.logging, cfg.model_dump(mode="json"), resume_step=start_step if ckpt else None
    )
    pool = RewardPool(cfg.reward)
    history: list[dict[str, Any]] = []
    try:
        if start_step == 0 and cfg.validation.every > 0 and val_rows:
            val = _validate(sampler, pool, val_rows, cfg, sampling)
            logger.log(0, val)
            history.append({"step": 0, **val})

        for step in range(start_step + 1, cfg.trainer.total_steps + 1):
            t_step = time.perf_counter()
            timing: dict[str, float] = defaultdict(float)
            model.eval()

            # 1. Sample and score, keeping groups with signal (dynamic sampling), until the batch is full.
            kept: list[list[Sample]] = []
            generated: list[Sample] = []
            gen_batches = 0
            while len(kept) < groups_per_step:
                gen_batches += 1
                drawn = stream.take(gen_prompts)
                t0 = time.perf_counter()
                with torch.no_grad():
                    rollouts = sampler.generate(
                        [r["prompt"] for _, r in drawn], sampling, groups=[u for u, _ in drawn]
                    )
                timing["gen"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                rows = [drawn[i // n][1] for i in range(len(rollouts))]
                results = pool.score(rows, [r.text for r in rollouts])
                timing["reward"] += time.perf_counter() - t0
                batch = [
                    Sample(row, ro, res, res.score)
                    for row, ro, res in zip(rows, rollouts, results, strict=True)
                ]
                if cfg.overlong.penalty:
                    pen = overlong_penalty(
                        torch.tensor([len(s.rollout.response_ids) for s in batch]),
                        cfg.rollout.max_new_tokens,
                        cfg.overlong.buffer_len,
                        cfg.overlong.penalty_factor,
                    )
                    for s, p in zip(batch, pen.tolist(), strict=True):
                        s.reward += p
                generated.extend(batch)
                kept.extend(
                    _mixed_groups(batch, n, cfg) if cfg.dynamic_sampling.enable else _groups(batch, n)
                )
                limit = cfg.dynamic_sampling.max_num_gen_batches
                if limit and gen_batches >= limit and len(kept) < groups_per_step:
                    log.warning(
                        "step %d: only %d/%d groups with signal after %d generation batches",
                        step,
                        len(kept),
                        groups_per_step,
                        gen_batches,
                    )
                    break
            kept = kept[:groups_per_step]
            samples = [s for g in kept for s in g]

            # 2. Advantages over the kept groups (overlong-filtered responses stay in their group's statistics).
            if samples:
                adv = compute_advantages(
                    torch.tensor([s.reward for s in samples], dtype=torch.float32),
                    [s.rollout.group for s in samples],
                    cfg.advantage,
                )
                for s, a in zip(samples, adv.tolist(), strict=True):
                    s.advantage = a

            # 3. Old log-probs under the policy that sampled: the sampler's own when they are exact
            #    (same module, same precision, untruncated distribution), else a forward pass.
            t0 = time.perf_counter()
            if reuse_rollout_logprobs(cfg, device):
                for s in samples:
                    s.old_logp = torch.tensor(s.rollout.logprobs, dtype=torch.float32)
            else:
                _old_logprobs(model, samples, tokenizer, cfg)
            timing["old_logprob"] = time.perf_counter() - t0

            # 4. PPO epochs over mini-batches of groups; one optimizer step per mini-batch.
            #    (No group with signal: no update, and the schedule does not advance.)
            t0 = time.perf_counter()
            update: dict[str, float] = {}
            if kept:
                model.train()
                update = _update(model, optimizer, kept, tokenizer, cfg)
                scheduler.step()
                sampler.update_weights(model)
            timing["update"] = time.perf_counter() - t0

            # 5. Metrics.
            metrics = _step_metrics(generated, samples, kept, gen_batches, update, timing, reward_metrics)
            metrics["actor/lr"] = scheduler.get_last_lr()[0]
            metrics["batch/old_logprobs_from_rollout"] = float(reuse_rollout_logprobs(cfg, device))
            metrics["time/step"] = time.perf_counter() - t_step
            tokens = sum(len(s.rollout.prompt_ids) + len(s.rollout.response_ids) for s in generated)
            metrics["perf/tokens_per_s"] = tokens / metrics["time/step"]

            # 6. Validation.
            every = cfg.validation.every
            if val_rows and every > 0 and (step % every == 0 or step == cfg.trainer.total_steps):
                t0 = time.perf_counter()
                metrics.update(_validate(sampler, pool, val_rows, cfg, sampling))
                metrics["time/val"] = time.perf_counter() - t0
            logger.log(step, metrics)
            history.append({"step": step, **metrics})
            _print_step(step, cfg.trainer.total_steps, metrics, cfg.logging.progress)

            # 7. Checkpoint (model as a plain HF directory, plus everything needed to resume exactly).
            save_every = cfg.trainer.save_every
            if (save_every and step % save_every == 0) or step == cfg.trainer.total_steps:
                extra = {"stream": stream.state(), "sampler_rng": sampler.get_rng_state()}
                save_checkpoint(ckpt_root, step, model, tokenizer, optimizer, scheduler, extra)
    finally:
        pool.close()
        logger.close()
        sampler.close()
    final = latest_checkpoint(ckpt_root)
    final_model = (final / "model") if final is not None else out
    rows = history or []
    plot_curves(rows, CURVE_KEYS, out / "curves.png", title=f"{cfg.run.name}: {cfg.loss.type}")
    return RLResult(out_dir=out, final_model=final_model, history=history)


# --- the pieces of the loop ------------------------------------------------------------------


def rl_rows(cfg: DataConfig, split: str) -> list[dict[str, Any]]:
    """RL prompt rows: the built-in task's ``train``/``test`` split, or ``train_files``/``val_files``."""
    if cfg.task:
        from klear.tasks import task_rows

        return task_rows(cfg.task, split, cfg.train_size if split == "train" else cfg.val_size, cfg.task_seed)
    files = cfg.train_files if split == "train" else cfg.val_files
    if split == "train" and not files:
        raise ValueError("data: set data.task (a built-in task) or data.train_files")
    from klear.data.schema import load_rl_rows

    return [r.to_dict() for f in files for r in load_rl_rows(f)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _groups(batch: list[Sample], n: int) -> list[list[Sample]]:
    return [batch[i : i + n] for i in range(0, len(batch), n)]


def _mixed_groups(batch: list[Sample], n: int, cfg: RLConfig) -> list[list[Sample]]:
    """The groups whose ``dynamic_sampling.metric`` (acc or reward) varies (std > std_eps)."""
    if cfg.dynamic_sampling.metric == "acc":
        values = torch.tensor([float(s.result.correct) for s in batch])
    else:
        values = torch.tensor([s.reward for s in batch])
    keep = keep_groups(values, [s.rollout.group for s in batch], cfg.dynamic_sampling.std_eps)
    return [g for g, k in zip(_groups(batch, n), keep[::n].tolist(), strict=True) if k]


def _autocast(model: torch.nn.Module, cfg: RLConfig):
    """bf16 autocast on a GPU when ``model.dtype`` is auto (float32 master weights), else nothing."""
    from klear.train.common import autocast, precision

    device = next(model.parameters()).device
    return autocast(device, precision(cfg.model.dtype, device)[1])


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def reuse_rollout_logprobs(cfg: RLConfig, device: torch.device) -> bool:
    """Whether the sampler's log-probs are the old policy's, so the trainer need not recompute them.

    True for ``trainer.old_logprobs=rollout``; with ``auto`` only when they are the same
    numbers up to kernel rounding: the HF backend samples from the trainer's own module,
    nothing autocasts, and top-p/top-k do not truncate the sampled distribution.
    """
    from klear.train.common import precision

    mode = cfg.trainer.old_logprobs
    if mode != "auto":
        return mode == "rollout"
    r = cfg.rollout
    untruncated = r.top_p == 1.0 and r.top_k <= 0 and r.temperature > 0
    return r.backend == "hf" and untruncated and precision(cfg.model.dtype, device)[1] is None


def _old_logprobs(model: torch.nn.Module, samples: list[Sample], tokenizer: Any, cfg: RLConfig) -> None:
    """Set ``old_logp`` of every sample: response log-probs under the current policy, without gradient."""
    rollouts = [s.rollout for s in samples]
    with torch.no_grad():
        for idx in micro_batches(rollouts, cfg.trainer.micro_batch_tokens):
            mb = make_batch([rollouts[i] for i in idx], _pad_id(tokenizer))
            with _autocast(model, cfg):
                logp, _ = response_logprobs(model, mb, cfg.rollout.temperature)
            for row, i in enumerate(idx):
                samples[i].old_logp = logp[row, : len(rollouts[i].response_ids)].cpu()


def _update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    kept: list[list[Sample]],
    tokenizer: Any,
    cfg: RLConfig,
) -> dict[str, float]:
    """PPO epochs: each mini-batch of groups is one optimizer step with a global token-mean normaliser."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    mb_groups = cfg.trainer.ppo_mini_batch_size
    for _epoch in range(cfg.trainer.ppo_epochs):
        for start in range(0, len(kept), mb_groups):
            samples = [s for g in kept[start : start + mb_groups] for s in g]
            masks = [_loss_mask(s, cfg) for s in samples]
            lengths = torch.tensor([len(s.rollout.response_ids) for s in samples])
            all_mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
            all_mask = all_mask.float() * torch.tensor(masks)[:, None]
            sft = torch.tensor([s.result.correct for s in samples])
            norm = Normaliser.of(all_mask, norm_len=cfg.rollout.max_new_tokens)
            sft_norm = Normaliser.of(all_mask * sft[:, None].float(), norm_len=cfg.rollout.max_new_tokens)
            optimizer.zero_grad(set_to_none=True)
            rollouts = [s.rollout for s in samples]
            for idx in micro_batches(rollouts, cfg.trainer.micro_batch_tokens):
                mb = make_batch([rollouts[i] for i in idx], _pad_id(tokenizer))
                with _autocast(model, cfg):
                    logp, entropy = response_logprobs(model, mb, cfg.rollout.temperature, with_entropy=True)
                resp_mask = mb.response_mask * torch.tensor([masks[i] for i in idx])[:, None]
                old = torch.zeros_like(logp)
                for row, i in enumerate(idx):
                    old[row, : int(lengths[i])] = samples[i].old_logp
                adv = torch.tensor([samples[i].advantage for i in idx], dtype=torch.float32)
                out = policy_loss(
                    logp, old, adv, resp_mask, cfg.loss, norm=norm, sft_mask=sft[idx], sft_norm=sft_norm
                )
                out.loss.backward()
                w = float(resp_mask.sum())
                for k, v in out.metrics.items():
                    if k in ("loss", "pg_loss", "sft_loss"):
                        sums[k] += float(v)  # already normalised globally: sum over micro-batches
                    elif k == "ratio_max":
                        sums[k] = max(sums.get(k, 0.0), float(v))
                    elif k == "ratio_min":
                        sums[k] = min(sums.get(k, float("inf")), float(v))
                    else:
                        sums[k] += float(v) * w
                        counts[k] += int(w)
                sums["entropy"] += float((entropy * resp_mask).sum())
                counts["entropy"] += int(w)
            grad_norm = _clip(model, cfg.optim.grad_clip)
            sums["grad_norm"] += grad_norm
            counts["grad_norm"] += 1
            optimizer.step()
            counts["updates"] += 1
    result = {f"actor/{k}": (v / counts[k] if counts.get(k) else v) for k, v in sums.items()}
    result["actor/updates"] = float(counts["updates"])
    return result


def _loss_mask(s: Sample, cfg: RLConfig) -> float:
    """0 for a truncated response when ``overlong.filter`` is on (it stays in its group's statistics)."""
    return 0.0 if (cfg.overlong.filter and s.rollout.truncated) else 1.0


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    total = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    return float(total)


def _step_metrics(generated, samples, kept, gen_batches, update, timing, reward_metrics) -> dict[str, float]:
    results = [s.result for s in generated]
    base = reward_metrics(results)
    lengths = [len(s.rollout.response_ids) for s in generated]
    metrics: dict[str, float] = {
        "reward/mean": float(np.mean([s.reward for s in generated])) if generated else 0.0,
        "reward/accuracy": base["accuracy"],
        "reward/kept_mean": float(np.mean([s.reward for s in samples])) if samples else 0.0,
        "response/length_mean": float(np.mean(lengths)) if lengths else 0.0,
        "response/length_max": float(max(lengths)) if lengths else 0.0,
        "response/truncated_frac": float(np.mean([s.rollout.truncated for s in generated]))
        if generated
        else 0.0,
        "batch/kept_groups": float(len(kept)),
        "batch/generated_groups": float(len({s.rollout.group for s in generated})),
        "batch/gen_batches": float(gen_batches),
        "batch/kept_samples": float(len(samples)),
    }
    metrics["batch/filtered_groups"] = metrics["batch/generated_groups"] - metrics["batch/kept_groups"]
    for k, v in base.items():
        if k.startswith("flag/"):
            metrics[f"reward/{k}"] = v
    metrics.update(update)
    metrics.update({f"time/{k}": v for k, v in timing.items()})
    return metrics


def _validate(sampler, pool, val_rows, cfg: RLConfig, sampling) -> dict[str, float]:
    """Greedy accuracy and avg@n (temperature/top_p from ``validation``) on the held-out prompts."""
    prompts = [r["prompt"] for r in val_rows]
    max_new = cfg.validation.max_new_tokens or cfg.rollout.max_new_tokens
    with torch.no_grad():
        greedy = sampler.generate(prompts, sampling.replace(n=1, temperature=0.0, max_new_tokens=max_new))
    res = pool.score(val_rows, [g.text for g in greedy])
    out = {
        "val/greedy_acc": float(np.mean([r.correct for r in res])),
        "val/greedy_len": float(np.mean([len(g.response_ids) for g in greedy])),
    }
    k = cfg.validation.n
    if k > 1:
        v = cfg.validation
        with torch.no_grad():
            samp = sampler.generate(
                prompts,
                sampling.replace(n=k, temperature=v.temperature, top_p=v.top_p, max_new_tokens=max_new),
            )
        res = pool.score([val_rows[i // k] for i in range(len(samp))], [s.text for s in samp])
        out[f"val/avg@{k}"] = float(np.mean([r.correct for r in res]))
    return out


def _restore(ckpt: Path, model, optimizer, scheduler, stream: PromptStream, sampler) -> int:
    from safetensors.torch import load_file

    state = load_trainer_state(ckpt)
    weights = load_file(str(ckpt / "model" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied embeddings are saved once; anything else missing is an error
    if unexpected or any("lm_head" not in k for k in missing):
        raise RuntimeError(
            f"checkpoint {ckpt} does not match the model: missing {missing}, unexpected {unexpected}"
        )
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    stream.load(state["extra"]["stream"])
    sampler.update_weights(model)  # a sampler holding its own copy (vLLM) must see the restored policy
    sampler.set_rng_state(state["extra"]["sampler_rng"])
    set_rng_state(state["rng"])
    return int(state["step"])


def _print_step(step: int, total: int, m: dict[str, float], enabled: bool) -> None:
    if not enabled:
        return
    from rich.console import Console

    parts = [
        f"[bold]rl step {step}/{total}[/]",
        f"reward {m['reward/mean']:+.3f}",
        f"acc {m['reward/accuracy']:.3f}",
        f"len {m['response/length_mean']:.0f}",
        f"kept {int(m['batch/kept_groups'])}/{int(m['batch/generated_groups'])}",
        f"clip+ {m.get('actor/clip_frac_high', 0):.3f}",
        f"kl {m.get('actor/approx_kl', 0):+.4f}",
        f"{m['time/step']:.1f}s",
    ]
    if "val/greedy_acc" in m:
        parts.append(f"[green]val {m['val/greedy_acc']:.3f}[/]")
    Console(stderr=True, width=240).print("  ".join(parts), highlight=False, soft_wrap=True)
