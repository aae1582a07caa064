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
from klear.config import ConfigError, DataConfig, RLConfig, save_config
from klear.data.prompts import PromptStats, fit_prompts
from klear.errors import KlearError
from klear.rewards.think import judged_texts, think_prefix
from klear.train.checkpoint import latest_checkpoint, set_rng_state
from klear.train.learner import LocalLearner, Sample
from klear.train.metrics import MetricsLogger, plot_curves
from klear.train.rollouts import AsyncRollouts, Batch, PromptStream, SyncRollouts, collect_batch, valid

log = logging.getLogger("klear.rl")

#: the phases of a step timed in ``time/*`` (gen and reward run on the producer thread when async;
#: wait is the learner waiting for its batch then)
PHASES = ("gen", "reward", "old_logprob", "update", "sync", "wait")

CURVE_KEYS: list[str | tuple[str, list[str]]] = [
    "reward/mean",
    "reward/accuracy",
    "val/greedy_acc",
    "val/greedy_pass_rate",
    "response/length_mean",
    "actor/entropy",
    "actor/grad_norm",
    "actor/clip_frac_high",
    "actor/clip_frac_low",
    "actor/approx_kl",
    "batch/kept_groups",
    ("perf: seconds per step", ["time/step", *(f"time/{p}" for p in PHASES)]),
]


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
            val = _validate(sampler, pool, val_rows, cfg, sampling, prefix)
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
            metrics = _step_metrics(generated, samples, kept, gen_batches, update, timing, reward_metrics)
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
                metrics.update(_validate(sampler, pool, val_rows, cfg, sampling, prefix))
                metrics["time/val"] = time.perf_counter() - t0
            logger.log(step, metrics)
            history.append({"step": step, **metrics})
            _print_step(step, cfg.trainer.total_steps, metrics, cfg.logging.progress)
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


def rl_rows(cfg: DataConfig, split: str) -> list[dict[str, Any]]:
    """RL prompt rows: the built-in task's ``train``/``test`` split, or ``train_files``/``val_files``."""
    return located_rows(cfg, split)[0]


def located_rows(cfg: DataConfig, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    """RL prompt rows and where each came from (``FILE: line N``; ``task NAME SPLIT row N``)."""
    if cfg.task:
        from klear.tasks import task_rows

        rows = task_rows(cfg.task, split, cfg.train_size if split == "train" else cfg.val_size, cfg.task_seed)
        return rows, [f"task {cfg.task} {split} row {i + 1}" for i in range(len(rows))]
    files = cfg.train_files if split == "train" else cfg.val_files
    if split == "train" and not files:
        raise ConfigError("data: set data.task (a built-in task) or data.train_files")
    from klear.data.schema import DataError, iter_rows

    rows, where = [], []
    for f in files:
        found = 0
        for loc, row in iter_rows(f, "rl"):
            rows.append(row.to_dict())
            where.append(f"{f}: {loc}")
            found += 1
        if not found:
            raise DataError(f"{f}: no rows")
    return rows, where


def fit_rows(
    located: tuple[list[dict[str, Any]], list[str]], cfg: DataConfig, tokenizer: Any
) -> tuple[list[dict[str, Any]], PromptStats]:
    """:func:`located_rows`' rows with ``data.max_prompt_length`` applied per ``data.truncation``."""
    rows, where = located
    return fit_prompts(rows, tokenizer, cfg.max_prompt_length, cfg.truncation, where)


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def no_signal_message(idle: int, generated: list[Sample], prefix: str, cfg: RLConfig) -> str:
    """Why a run has nothing to learn from, with this step's figures behind each likely cause."""
    n = max(len(generated), 1)
    fmt = sum("format" in s.result.flags for s in generated) / n
    acc = sum(s.result.correct for s in generated) / n
    mean = sum(s.reward for s in generated) / n
    cut = sum(s.rollout.truncated for s in generated) / n
    m = cfg.reward.math
    return (
        f"no group had signal for {idle} consecutive steps (trainer.max_idle_steps = "
        f"{cfg.trainer.max_idle_steps}): every response of every group scored the same "
        f"(last step: mean reward {mean:+.3f}, accuracy {acc:.3f}). Likely causes: "
        f"(1) a format penalty -- {fmt:.0%} of the responses were flagged 'format' "
        f"(reward.math.no_think_start_score = {m.no_think_start_score}, no_think_end_score = "
        f"{m.no_think_end_score}; think prefix from the chat template: {prefix!r}; "
        f"{cut:.0%} were cut at rollout.max_new_tokens before closing </think>); "
        "(2) the reward function -- it gives every response the same score (check reward.custom and "
        "the rows' data_source/ability); (3) the data -- prompts all too hard (accuracy 0) or all too "
        "easy (accuracy 1) for this model, or a wrong ground truth. Set trainer.max_idle_steps = 0 to go on"
    )


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
        "reward/infra_failures": float(sum(r.infra for r in results)),
    }
    metrics["batch/filtered_groups"] = metrics["batch/generated_groups"] - metrics["batch/kept_groups"]
    for k, v in base.items():
        if k.startswith("flag/"):
            metrics[f"reward/{k}"] = v
    metrics.update(update)
    metrics.update({f"time/{k}": v for k, v in timing.items()})
    return metrics


def _validate(sampler, pool, val_rows, cfg: RLConfig, sampling, prefix: str = "") -> dict[str, float]:
    """Greedy accuracy and avg@n (temperature/top_p from ``validation``) on the held-out prompts;
    on code rows also the greedy mean test pass rate."""
    prompts = [r["prompt"] for r in val_rows]
    max_new = cfg.validation.max_new_tokens or cfg.rollout.max_new_tokens
    with torch.no_grad():
        greedy = sampler.generate(prompts, sampling.replace(n=1, temperature=0.0, max_new_tokens=max_new))
    res = pool.score(val_rows, judged_texts(prefix, [g.text for g in greedy]))
    out = {
        "val/greedy_acc": float(np.mean([r.correct for r in res])),
        "val/greedy_len": float(np.mean([len(g.response_ids) for g in greedy])),
    }
    if any(r.total is not None for r in res):  # code (math has no tests): mean fraction of tests passed,
        # whatever reward.code.mode is; a response with no program to run passed none
        out["val/greedy_pass_rate"] = float(np.mean([r.passed / r.total if r.total else 0.0 for r in res]))
    k = cfg.validation.n
    if k > 1:
        v = cfg.validation
        with torch.no_grad():
            samp = sampler.generate(
                prompts,
                sampling.replace(n=k, temperature=v.temperature, top_p=v.top_p, max_new_tokens=max_new),
            )
        res = pool.score(
            [val_rows[i // k] for i in range(len(samp))], judged_texts(prefix, [s.text for s in samp])
        )
        out[f"val/avg@{k}"] = float(np.mean([r.correct for r in res]))
    return out


_SHORT_PHASES = (
    ("gen", "gen"),
    ("rew", "reward"),
    ("old", "old_logprob"),
    ("upd", "update"),
    ("sync", "sync"),
    ("wait", "wait"),
)


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
        "(" + " ".join(f"{short} {m.get(f'time/{p}', 0.0):.2f}" for short, p in _SHORT_PHASES) + ")",
    ]
    if "async/staleness" in m:
        parts.append(f"stale {int(m['async/staleness'])}")
    if "val/greedy_acc" in m:
        parts.append(f"[green]val {m['val/greedy_acc']:.3f}[/]")
    if "val/greedy_pass_rate" in m:
        parts.append(f"[green]pass {m['val/greedy_pass_rate']:.3f}[/]")
    Console(stderr=True, width=240).print("  ".join(parts), highlight=False, soft_wrap=True)
