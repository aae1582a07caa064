"""What the RL trainer reports: a step's metrics, validation on the held-out prompts, the step line
on the terminal, the curves' keys, and why a run with no signal stopped."""

from __future__ import annotations

import numpy as np
import torch

from klear.config import RLConfig
from klear.rewards.think import judged_texts
from klear.train.learner import Sample

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


def step_metrics(generated, samples, kept, gen_batches, update, timing, reward_metrics) -> dict[str, float]:
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


def validate(sampler, pool, val_rows, cfg: RLConfig, sampling, prefix: str = "") -> dict[str, float]:
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
    # code (math has no tests): the mean fraction of tests passed; a response with no program to run
    # passed none. Not with reward.code.mode = hard: it stops at a program's first failed test, so its
    # `passed` counts the tests before that one, not those the program passes.
    if any(r.total is not None for r in res) and cfg.reward.code.mode == "soft":
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


def print_step(step: int, total: int, m: dict[str, float], enabled: bool) -> None:
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
