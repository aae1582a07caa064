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
5. the new weights to the sampler; 6. metrics; 7. validation; 8. checkpoint.

With ``trainer.async_rollouts = K`` step 1 runs ahead, on a producer thread, while the
learner trains: batches sampled with weights up to K updates old, from a sampler with its
own copy of the policy (:mod:`klear.train.rollouts`; the schedule is deterministic, so
resume stays exact). ``time/*`` metrics split each step into gen, reward, old_logprob,
update, sync and wait (the learner waiting for its batch).

Safety rails (all counted in the metrics): prompts over ``data.max_prompt_length``
follow ``data.truncation``; the reward judges the think prefix the chat template
opened plus the response (:mod:`klear.rewards.think`), exactly as evaluation does;
with ``reward.mask_failures`` a response whose reward is an infrastructure failure
is left out of the loss and of its group's statistics; and ``trainer.max_idle_steps``
steps in a row without any group with signal stop the run with :class:`NoSignalError`.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from klear.algo.advantages import compute_advantages
from klear.config import RLConfig, save_config
from klear.errors import KlearError
from klear.rewards.think import think_prefix
from klear.train.checkpoint import latest_checkpoint, set_rng_state
from klear.train.learner import LocalLearner
from klear.train.metrics import MetricsLogger, plot_curves
from klear.train.rl_data import fit_rows, located_rows
from klear.train.rl_report import CURVE_KEYS, no_signal_message, print_step, step_metrics, validate
from klear.train.rollouts import AsyncRollouts, Batch, PromptStream, SyncRollouts, collect_batch, valid

log = logging.getLogger("klear.rl")


class NoSignalError(KlearError, RuntimeError):
    """``trainer.max_idle_steps`` consecutive steps in which no group had signal (every reward equal)."""


@dataclass
class RLResult:
    out_dir: Path
    final_model: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def train_rl(cfg: RLConfig, *, init_model: str | Path | None = None, resume: bool = True) -> RLResult:
    """Run RL as configured; ``init_model`` overrides ``model.path`` (the demo passes its SFT checkpoint).

    The loop talks to three engines: a learner (model, optimizer, schedule), a sampler and a
    reward pool -- in this process, or spread over a Ray cluster with ``dist.backend=ray``
    (``klear.dist``); the loop is the same.
    """
    from klear.models.loading import quiet_transformers, resolve_model_dir
    from klear.rewards.pool import reward_metrics
    from klear.rollout import SamplingParams

    # 0. Set-up: data (a bad file fails before anything is written), seed, output dir with the
    #    resolved config, engines.
    train_located, val_located = located_rows(cfg.data, "train"), located_rows(cfg.data, "test")
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    _seed_everything(cfg.run.seed)
    if cfg.trainer.num_threads is not None or cfg.trainer.async_rollouts:
        torch.set_num_threads(_threads(cfg))
    quiet_transformers()
    model_dir = (
        Path(init_model) if init_model is not None else resolve_model_dir(cfg.model, out, cfg.run.seed)
    )
    tokenizer = _tokenizer(model_dir)
    prefix = think_prefix(tokenizer)
    if prefix:
        log.info("the chat template opens %r in the prompt: the reward judges it + the response", prefix)
    train_rows, prompt_stats = fit_rows(train_located, cfg.data, tokenizer)
    val_rows, _ = fit_rows(val_located, cfg.data, tokenizer)
    if cfg.validation.max_prompts is not None:
        val_rows = val_rows[: cfg.validation.max_prompts]
    if not train_rows:
        from klear.data.schema import DataError

        raise DataError(
            f"no training prompt fits data.max_prompt_length = {cfg.data.max_prompt_length} tokens "
            f"({prompt_stats.dropped} dropped, longest {prompt_stats.longest})"
        )
    stream = PromptStream(train_rows, cfg.run.seed, cfg.data.shuffle)
    sampling = SamplingParams.from_config(cfg.rollout)
    ckpt_root = out / "checkpoints"
    ckpt = latest_checkpoint(ckpt_root) if resume else None

    learner, sampler, pool = _engines(cfg, model_dir)
    reuse_logprobs = reuse_rollout_logprobs(cfg, learner.device)
    history: list[dict[str, Any]] = []
    logger = rollouts = None
    idle_steps = 0
    try:
        start_step = 0
        if ckpt is not None:
            state = learner.restore(ckpt)
            sampler.update_weights(learner.weights())
            stream.load(state["extra"]["stream"])
            sampler.set_rng_state(state["extra"]["sampler_rng"])
            set_rng_state(state["rng"])
            start_step = int(state["step"])
            log.info("resumed from %s (step %d)", ckpt, start_step)
        logger = MetricsLogger(
            out, cfg.logging, cfg.model_dump(mode="json"), resume_step=start_step if ckpt else None
        )
        if start_step == 0 and cfg.validation.every > 0 and val_rows:
            val = validate(sampler, pool, val_rows, cfg, sampling, prefix)
            logger.log(0, val)
            history.append({"step": 0, **val})

        def produce(step: int) -> Batch:
            return collect_batch(step, stream, sampler, pool, cfg, sampling, prefix)

        rollouts = _rollouts(cfg, sampler, start_step, val_rows, produce)
        for step in range(start_step + 1, cfg.trainer.total_steps + 1):
            t_step, cpu_step, sampler_cpu = time.perf_counter(), time.thread_time(), _cpu(sampler)

            # 1. The batch: sampled and scored now, keeping groups with signal (dynamic sampling) until
            #    it is full -- or, with trainer.async_rollouts = K, taken from the producer thread that
            #    sampled it while earlier steps trained, with weights at most K updates old.
            batch, info = rollouts.next(step)
            kept, generated, gen_batches = batch.kept, batch.generated, batch.gen_batches
            timing = {**batch.timing, "wait": info.pop("time/wait")}
            samples = [s for g in kept for s in g]

            # 2. Advantages over the kept groups (overlong-filtered responses stay in their group's statistics;
            #    infrastructure failures, with reward.mask_failures, are in none and leave the batch).
            if samples:
                adv = compute_advantages(
                    torch.tensor([s.reward for s in samples], dtype=torch.float32),
                    [s.rollout.group for s in samples],
                    cfg.advantage,
                    valid=torch.tensor([valid(s, cfg) for s in samples]),
                )
                for s, a in zip(samples, adv.tolist(), strict=True):
                    s.advantage = a
            masked = sum(not valid(s, cfg) for s in samples)
            kept = [t for t in ([s for s in g if valid(s, cfg)] for g in kept) if t]
            samples = [s for g in kept for s in g]
            signal = any(s.advantage != 0.0 for s in samples)

            # 3. Old log-probs under the policy that sampled (the behaviour policy, K updates old when
            #    async): the sampler's own when they are exact (same model, same precision, untruncated
            #    distribution), else a forward pass with the current weights.
            t0 = time.perf_counter()
            if reuse_logprobs:
                for s in samples:
                    s.old_logp = torch.tensor(s.rollout.logprobs, dtype=torch.float32)
            else:
                learner.old_logprobs(samples)
            timing["old_logprob"] = time.perf_counter() - t0

            # 4. PPO epochs over mini-batches of groups; one optimizer step per mini-batch.
            #    (No group with signal: no update, and the schedule does not advance.)
            t0 = time.perf_counter()
            update = learner.update(kept) if kept else {}
            timing["update"] = time.perf_counter() - t0

            # 5. The new weights (version = step) to the sampler: at once, or to the producer thread.
            t0 = time.perf_counter()
            rollouts.publish(step, learner.weights() if kept else None)
            timing["sync"] = time.perf_counter() - t0

            # 6. Metrics.
            metrics = step_metrics(generated, samples, kept, gen_batches, update, timing, reward_metrics)
            metrics.update(info)
            metrics["batch/masked_samples"] = float(masked)
            metrics.update(prompt_stats.metrics())
            metrics["actor/lr"] = learner.lr()
            metrics["batch/old_logprobs_from_rollout"] = float(reuse_logprobs)
            metrics["time/step"] = time.perf_counter() - t_step
            # CPU seconds of the learner thread and of a sampler process: with time/step, work vs waiting for a core
            metrics["perf/learner_cpu_s"] = time.thread_time() - cpu_step
            if sampler_cpu is not None and (now := _cpu(sampler)) is not None:
                metrics["perf/sampler_cpu_s"] = now - sampler_cpu
            tokens = sum(len(s.rollout.prompt_ids) + len(s.rollout.response_ids) for s in generated)
            metrics["perf/tokens_per_s"] = tokens / metrics["time/step"]

            # 7. Validation (a barrier when async: nothing is sampled past it, the sampler holds these weights).
            if _validates(cfg, val_rows, step):
                t0 = time.perf_counter()
                metrics.update(validate(sampler, pool, val_rows, cfg, sampling, prefix))
                metrics["time/val"] = time.perf_counter() - t0
            logger.log(step, metrics)
            history.append({"step": step, **metrics})
            print_step(step, cfg.trainer.total_steps, metrics, cfg.logging.progress)
            idle_steps = 0 if signal else idle_steps + 1
            if cfg.trainer.max_idle_steps and idle_steps >= cfg.trainer.max_idle_steps:
                raise NoSignalError(no_signal_message(idle_steps, generated, prefix, cfg))

            # 8. Checkpoint (model as a plain HF directory, plus everything needed to resume exactly; a
            #    barrier when async, so the prompt stream and sampler RNG are those of the batch trained).
            if _checkpoints(cfg, step):
                learner.save(
                    ckpt_root, step, {"stream": stream.state(), "sampler_rng": sampler.get_rng_state()}
                )
    finally:
        if rollouts is not None:
            rollouts.close()
        pool.close()
        sampler.close()
        learner.close()
        if logger is not None:
            logger.close()
    final = latest_checkpoint(ckpt_root)
    final_model = (final / "model") if final is not None else out
    rows = history or []
    plot_curves(rows, CURVE_KEYS, out / "curves.png", title=f"{cfg.run.name}: {cfg.loss.type}")
    return RLResult(out_dir=out, final_model=final_model, history=history)


# --- the pieces of the loop ------------------------------------------------------------------


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _engines(cfg: RLConfig, model_dir: Path) -> tuple[Any, Any, Any]:
    """(learner, sampler, reward pool): in this process, or Ray actors for ``dist.backend=ray``."""
    if cfg.dist.backend == "ray":
        from klear.dist import ray_engines

        return ray_engines(cfg, model_dir)
    from klear.rewards.pool import RewardPool

    learner = sampler = None
    try:
        processes = cfg.trainer.sampler_processes
        if cfg.trainer.async_rollouts or processes > 1:  # copies of the policy in processes of their own
            from klear.train.sampler_process import ProcessSampler

            sampler = ProcessSampler(cfg, model_dir, cfg.run.seed, threads=_threads(cfg), processes=processes)
        learner = LocalLearner(cfg, model_dir)
        if sampler is None:  # the learner's own module: no weight copies
            sampler = learner.sampler(cfg.run.seed)
        return learner, sampler, RewardPool(cfg.reward)
    except BaseException:
        if sampler is not None:
            sampler.close()
        if learner is not None:
            learner.close()
        raise


def _threads(cfg: RLConfig) -> int:
    """torch threads of the learner (and of the sampler process when async): ``trainer.num_threads``, or
    all cores -- half each when the sampler has a process of its own."""
    import os

    cores = os.cpu_count() or 1
    if cfg.trainer.num_threads is not None:
        return cfg.trainer.num_threads
    return max(1, cores // 2) if cfg.trainer.async_rollouts and cfg.dist.backend == "none" else cores


def _cpu(sampler: Any) -> float | None:
    """CPU seconds used by a sampler in a process of its own (None for one in this process or on Ray)."""
    cpu = getattr(sampler, "cpu_seconds", None)
    return cpu() if cpu is not None else None


def _validates(cfg: RLConfig, val_rows: list[Any], step: int) -> bool:
    every = cfg.validation.every
    return bool(val_rows) and every > 0 and (step % every == 0 or step == cfg.trainer.total_steps)


def _checkpoints(cfg: RLConfig, step: int) -> bool:
    every = cfg.trainer.save_every
    return bool(every and step % every == 0) or step == cfg.trainer.total_steps


def _rollouts(cfg: RLConfig, sampler: Any, start_step: int, val_rows: list[Any], produce) -> Any:
    """Where the loop's batches come from: :class:`SyncRollouts`, or :class:`AsyncRollouts` for K >= 1."""
    if not cfg.trainer.async_rollouts:
        return SyncRollouts(produce, sampler, start_step)
    return AsyncRollouts(
        produce,
        sampler,
        cfg.trainer.async_rollouts,
        start_step,
        barrier=lambda step: _validates(cfg, val_rows, step) or _checkpoints(cfg, step),
        total_steps=cfg.trainer.total_steps,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reuse_rollout_logprobs(cfg: RLConfig, device: torch.device) -> bool:
    """Whether the sampler's log-probs are the old policy's, so the trainer need not recompute them.

    True for ``trainer.old_logprobs=rollout``; with ``auto`` only when they are the same
    numbers up to kernel rounding: the HF backend samples from the trainer's own module,
    nothing autocasts, and top-p/top-k do not truncate the sampled distribution.
    """
    from klear.models.loading import precision

    mode = cfg.trainer.old_logprobs
    if mode != "auto":
        return mode == "rollout"
    r = cfg.rollout
    untruncated = r.top_p == 1.0 and r.top_k <= 0 and r.temperature > 0
    return r.backend == "hf" and untruncated and precision(cfg.model, device)[1] is None
