"""Steps/s of the RL loop with ``trainer.async_rollouts=1`` against the synchronous loop (issue 14).

The demo's setting (``recipes/demo.yaml``: the tiny Qwen3, 16 prompts x 8 samples, dynamic
sampling, 2 optimizer steps per RL step) from the demo's SFT checkpoint, which is trained
once at the start (``recipes/demo-sft.yaml``, or ``--init-model`` to reuse one). Each round
runs the synchronous loop and the asynchronous one (K = 1: the sampler, a child process with
its own copy of the policy, samples batch k+1 while the learner trains on batch k), in
alternating order, for ``1 + --steps`` steps each; the first step of every run (pool start,
no overlap yet) is dropped. steps/s = timed steps / the sum of their ``time/step``;
``speedup`` = async / sync over all rounds, with each round's ratio printed too. Target:
>= 1.4x on 2 cores (the learner and the sampler get one thread each, ``trainer.num_threads=1``).
The wall-clock ratio needs two idle cores; ``cpu_bound_ceiling`` (the CPU seconds per step of
the synchronous thread over those of the busier asynchronous process) is what it would be with
a core each, and tells the load apart from the code on a shared machine.

``--accuracy``: held-out greedy accuracy after the demo's full RL run (24 steps), sync vs
async-1, for ``--seeds`` seeds (each its own SFT checkpoint), means with 95% t-intervals and
the paired difference: the staleness must not cost accuracy.

    python bench/async_rollouts.py [--steps 4 --rounds 3] [--accuracy --seeds 3]

Prints a table, then one JSON line (``speedup`` and every figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PHASES = ("gen", "reward", "old_logprob", "update", "sync", "wait")


def sft_model(args: argparse.Namespace, root: Path, seed: int) -> Path:
    """The demo's SFT checkpoint for ``seed`` (trained here unless ``--init-model``)."""
    from klear.demo import DemoSettings, sft_config
    from klear.train.sft import run_sft

    if args.init_model:
        return Path(args.init_model)
    overrides = ["logging.progress=false", *args.sft]
    cfg = sft_config(DemoSettings(root, seed, sft_overrides=tuple(overrides)), root / f"sft{seed}")
    return run_sft(cfg, resume=False).model_dir


def run_rl(args: argparse.Namespace, model: Path, out: Path, seed: int, extra: list[str]) -> list[dict]:
    """One demo RL run with the overrides ``extra`` (after ``--rl``); its metrics rows."""
    from klear.demo import DemoSettings, rl_config
    from klear.train.metrics import read_metrics
    from klear.train.rl import train_rl

    overrides = ["logging.progress=false", *args.rl, *extra]
    cfg = rl_config(DemoSettings(out, seed, rl_overrides=tuple(overrides)), out)
    train_rl(cfg, init_model=model, resume=False)
    return read_metrics(out / "metrics.jsonl")


def timed(rows: list[dict]) -> dict[str, float]:
    """steps/s and mean seconds per phase over the timed steps (the first step is a warm-up)."""
    steps = [r for r in rows if r["step"] >= 2]
    seconds = sum(r["time/step"] for r in steps)
    out = {"steps": len(steps), "seconds": seconds, "steps_per_s": len(steps) / seconds}
    for p in PHASES:
        out[p] = statistics.fmean(r.get(f"time/{p}", 0.0) for r in steps)
    out["gen_batches"] = statistics.fmean(r["batch/gen_batches"] for r in steps)
    for who in ("learner", "sampler"):
        out[f"{who}_cpu"] = statistics.fmean(r.get(f"perf/{who}_cpu_s", 0.0) for r in steps)
    return out


def loops(args: argparse.Namespace) -> dict[str, list[str]]:
    """The loops compared: name -> overrides. ``sync`` is the demo's loop (one process); ``async``
    samples one batch ahead in ``--samplers`` processes; with more than one sampler process,
    ``sync-par`` generates in the same processes without the overlap (the fair baseline for it)."""
    out = {"sync": ["trainer.async_rollouts=0"], "async": ["trainer.async_rollouts=1"]}
    out["async"].append(f"trainer.sampler_processes={args.samplers}")
    if args.samplers > 1:
        out["sync-par"] = ["trainer.async_rollouts=0", f"trainer.sampler_processes={args.samplers}"]
    return out


def speed(args: argparse.Namespace, root: Path, model: Path) -> dict[str, Any]:
    variants = loops(args)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    extra = [f"trainer.total_steps={1 + args.steps}", "validation.every=0", "trainer.save_every=0"]
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            rows = run_rl(args, model, root / f"{name}{r}", args.seed, variants[name] + extra)
            runs[name].append(timed(rows))
            m = runs[name][-1]
            print(f"round {r} {name:8s}: {m['steps_per_s']:.3f} steps/s", file=sys.stderr)
    per_round = [
        a["steps_per_s"] / s["steps_per_s"] for s, a in zip(runs["sync"], runs["async"], strict=True)
    ]
    pooled = {name: sum(m["steps"] for m in ms) / sum(m["seconds"] for m in ms) for name, ms in runs.items()}
    phases = {name: {p: statistics.fmean(m[p] for m in ms) for p in PHASES} for name, ms in runs.items()}
    cpu = {
        name: {who: statistics.fmean(m[f"{who}_cpu"] for m in ms) for who in ("learner", "sampler")}
        for name, ms in runs.items()
    }
    a = cpu["async"]
    # the async step with a core per process and --cores cores in all: the busiest of the learner, one
    # sampler process (its share of the sampling) and the cores' share of all the work
    busiest = max(
        a["learner"], a["sampler"] / args.samplers, (a["learner"] + a["sampler"]) / args.cores, 1e-9
    )
    result = {
        "samplers": args.samplers,
        "cpu_seconds_per_step": cpu,
        "cpu_bound_ceiling": cpu["sync"]["learner"] / busiest,
        "steps_per_s": pooled,
        "speedup": pooled["async"] / pooled["sync"],
        "speedup_per_round": per_round,
        "phase_seconds": phases,
        "gen_batches": {name: statistics.fmean(m["gen_batches"] for m in ms) for name, ms in runs.items()},
        "timed_steps": {name: sum(m["steps"] for m in ms) for name, ms in runs.items()},
    }
    if "sync-par" in pooled:
        result["speedup_vs_sync_par"] = pooled["async"] / pooled["sync-par"]
    return result


def accuracy(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Held-out greedy accuracy after the demo's RL run, sync vs async-1, one SFT checkpoint per seed."""
    from klear.ablate.stats import mean_ci, paired_diff

    finals: dict[str, list[float]] = {"sft": [], "sync": [], "async": []}
    for k in range(args.seeds):
        seed = args.seed + k
        model = sft_model(args, root / f"acc{seed}", seed)
        for name in ("sync", "async"):
            rows = run_rl(args, model, root / f"acc{seed}" / name, seed, loops(args)[name])
            vals = [r for r in rows if "val/greedy_acc" in r]
            if name == "sync":
                finals["sft"].append(vals[0]["val/greedy_acc"])
            finals[name].append(vals[-1]["val/greedy_acc"])
            print(f"seed {seed} {name:5s}: held-out greedy {vals[-1]['val/greedy_acc']:.3f}", file=sys.stderr)
    return {
        "seeds": args.seeds,
        "final": finals,
        "ci": {name: mean_ci(v).to_dict() for name, v in finals.items()},
        "async_minus_sync": paired_diff(finals["async"], finals["sync"]).to_dict(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (after 1 warm-up step)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (sync, async) runs, alternating order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", type=int, default=2, help="sampler processes of the async loop (default 2)")
    p.add_argument("--cores", type=int, default=2, help="cores the ceiling assumes (default 2)")
    p.add_argument("--init-model", help="an SFT checkpoint to start from (default: train the demo's SFT)")
    p.add_argument("--sft", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of demo-sft.yaml")
    p.add_argument("--rl", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of demo.yaml")
    p.add_argument("--accuracy", action="store_true", help="also the held-out accuracy, sync vs async")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the accuracy comparison")
    p.add_argument("--no-speed", action="store_true", help="skip the steps/s rounds")
    p.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="klear-bench-async-") as tmp:
        root = args.out or Path(tmp)
        result: dict[str, Any] = {}
        if not args.no_speed:
            result.update(speed(args, root, sft_model(args, root, args.seed)))
        if args.accuracy:
            result["accuracy"] = accuracy(args, root)
    result["seconds"] = time.perf_counter() - t0
    print_table(result)
    print(json.dumps(result))
    return result


def print_table(res: dict[str, Any]) -> None:
    if "speedup" in res:
        print("| loop | steps/s | " + " | ".join(PHASES) + " |")
        print("|---|---|" + "---|" * len(PHASES))
        for name, rate in res["steps_per_s"].items():
            ph = res["phase_seconds"][name]
            cells = " | ".join(f"{ph[p]:.3f}" for p in PHASES)
            print(f"| {name} | {rate:.3f} | {cells} |")
        c = res["cpu_seconds_per_step"]
        print(
            f"\nCPU s/step: sync {c['sync']['learner']:.2f} (one thread); async learner {c['async']['learner']:.2f}, "
            f"{res['samplers']} sampler process(es) {c['async']['sampler']:.2f} -> "
            f"{res['cpu_bound_ceiling']:.2f}x with idle cores"
        )
        rounds = ", ".join(f"{r:.2f}" for r in res["speedup_per_round"])
        print(f"\nspeedup async-1 / sync = {res['speedup']:.2f}x (per round {rounds}; target >= 1.4x)")
        if "speedup_vs_sync_par" in res:
            print(
                f"async-1 / sync-par (sync sampling in the same {res['samplers']} processes) = "
                f"{res['speedup_vs_sync_par']:.2f}x"
            )
    if "accuracy" in res:
        acc = res["accuracy"]
        print(f"\nheld-out greedy accuracy after the demo's RL ({acc['seeds']} seeds, mean [95% CI]):")
        for name in ("sft", "sync", "async"):
            c = acc["ci"][name]
            print(f"  {name:5s} {100 * c['mean']:.1f} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]")
        d = acc["async_minus_sync"]
        print(f"  async - sync {100 * d['mean']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")


if __name__ == "__main__":
    main()
