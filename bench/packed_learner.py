"""Learner tokens/s with packed micro-batches against right-padded ones (``trainer.pack_sequences``).

One learner pass of an RL step on a length-skewed batch: old log-probs (no gradient), then
one PPO epoch of one mini-batch (forward, GPPO loss, backward, AdamW step), through the
very functions the trainer calls (``klear.train.learner.old_logprobs`` / ``update_policy``).
The batch: ``--sequences`` rollouts with ``--prompt-tokens`` prompt tokens and responses
drawn uniformly from ``--min-response``..``--max-response`` tokens (seeded), on the demo's
tiny Qwen3 (``klear.models.tiny``, float32, CPU), micro-batched under ``--budget`` tokens
(the demo's ``trainer.micro_batch_tokens``).

Tokens/s counts real tokens (prompt + response, never padding), the same for both layouts.
Runs alternate padded / packed / packed / padded ... (``--rounds`` pairs, after one
untimed warm-up of each) so that drift in machine load hits both; the ratio of each
round's pair and their median are reported, with the padding the padded layout computes.

    python bench/packed_learner.py [--sequences 64 --rounds 5 --budget 4096 --threads 1]

Prints a table, then one JSON line with every figure (key ``ratio``: packed / padded tokens/s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=64, help="rollouts in the batch (one mini-batch)")
    p.add_argument("--prompt-tokens", type=int, default=30)
    p.add_argument("--min-response", type=int, default=16)
    p.add_argument("--max-response", type=int, default=160)
    p.add_argument("--budget", type=int, default=4096, help="trainer.micro_batch_tokens")
    p.add_argument("--rounds", type=int, default=5, help="timed (padded, packed) pairs")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def config(model_dir: Path, out: Path, args: argparse.Namespace, packed: bool) -> Any:
    from klear.config import RLConfig, build_config

    return build_config(
        RLConfig,
        {
            "run": {"out_dir": str(out)},
            "model": {"path": str(model_dir), "dtype": "float32"},
            "rollout": {"n": 2, "max_new_tokens": args.max_response},
            "loss": {"type": "gppo", "sft_alpha": 0.1},
            "optim": {"lr": 1e-4, "grad_clip": 1.0},
            "trainer": {
                "train_batch_size": args.sequences // 2,
                "ppo_mini_batch_size": args.sequences // 2,
                "micro_batch_tokens": args.budget,
                "pack_sequences": packed,
            },
        },
    )


def samples(args: argparse.Namespace) -> list[list[Any]]:
    from klear.train.learner import Sample
    from klear.types import RewardResult, Rollout

    rng = random.Random(args.seed)
    groups = []
    for g in range(args.sequences // 2):
        group = []
        for j in range(2):
            prompt = [rng.randrange(5, 90) for _ in range(args.prompt_tokens)]
            response = [
                rng.randrange(5, 90) for _ in range(rng.randint(args.min_response, args.max_response))
            ]
            res = RewardResult(score=float(j == 0), correct=j == 0)
            ro = Rollout(prompt, response, [], "", False, group=g, sample=j)
            group.append(Sample({}, ro, res, res.score, advantage=1.0 if j == 0 else -1.0))
        groups.append(group)
    return groups


def learner_pass(model: Any, pad: int, kept: list[list[Any]], cfg: Any) -> dict[str, float]:
    """Old log-probs + one update over ``kept``; seconds of each."""
    from klear.train.common import make_optimizer
    from klear.train.learner import old_logprobs, update_policy

    flat = [s for g in kept for s in g]
    t0 = time.perf_counter()
    for s, lp in zip(flat, old_logprobs(model, [s.rollout for s in flat], pad, cfg), strict=True):
        s.old_logp = lp
    t1 = time.perf_counter()
    update_policy(model, make_optimizer(model, cfg.optim), kept, pad, cfg)
    t2 = time.perf_counter()
    return {"old_logprob": t1 - t0, "update": t2 - t1, "seconds": t2 - t0}


def padding(kept: list[list[Any]], budget: int) -> dict[str, Any]:
    """Tokens each layout computes and its micro-batch count (padding included)."""
    from klear.train.batch import make_batch, make_packed_batch, micro_batches

    rollouts = [s.rollout for g in kept for s in g]
    out: dict[str, Any] = {"real_tokens": sum(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)}
    for name, packed, make in (("padded", False, make_batch), ("packed", True, make_packed_batch)):
        plan = micro_batches(rollouts, budget, packed)
        out[f"{name}_tokens"] = sum(make([rollouts[i] for i in idx], 0).input_ids.numel() for idx in plan)
        out[f"{name}_micro_batches"] = len(plan)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from klear.models.loading import load_model, pick_device, quiet_transformers
    from klear.models.tiny import build_tiny_model
    from klear.train.learner import pad_id

    args = parse(argv)
    if args.sequences < 2 or args.sequences % 2:
        raise SystemExit("--sequences must be an even number >= 2")
    torch.set_num_threads(args.threads)
    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", seed=args.seed)
        cfgs = {p: config(model_dir, Path(tmp), args, p) for p in (False, True)}
        model, tokenizer = load_model(model_dir, cfgs[True].model, pick_device())
        model.train()
        pad = pad_id(tokenizer)
        kept = samples(args)
        layout = padding(kept, args.budget)
        runs: dict[str, list[dict[str, float]]] = {"padded": [], "packed": []}
        for packed in (False, True):  # warm-up, dropped
            learner_pass(model, pad, kept, cfgs[packed])
        order = []
        for r in range(args.rounds):
            order += [False, True] if r % 2 == 0 else [True, False]
        for packed in order:
            runs["packed" if packed else "padded"].append(learner_pass(model, pad, kept, cfgs[packed]))
    tokens = layout["real_tokens"]
    per_s = {k: [tokens / r["seconds"] for r in v] for k, v in runs.items()}
    ratios = [b / a for a, b in zip(per_s["padded"], per_s["packed"], strict=True)]
    result = {
        "tokens_per_s": {k: statistics.median(v) for k, v in per_s.items()},
        "ratio": statistics.median(ratios),
        "ratio_per_round": ratios,
        "seconds": {
            k: {p: statistics.median(r[p] for r in v) for p in ("old_logprob", "update")}
            for k, v in runs.items()
        },
        **layout,
        "padding_fraction": 1 - tokens / layout["padded_tokens"],
        "sequences": args.sequences,
        "budget": args.budget,
        "response_tokens": [args.min_response, args.max_response],
        "rounds": args.rounds,
        "threads": args.threads,
        "load_avg": os.getloadavg()[0],
    }
    print(
        f"{'layout':8} {'tokens/s':>10} {'old_logprob s':>14} {'update s':>9} {'micro-batches':>14} {'computed tokens':>16}"
    )
    for k in ("padded", "packed"):
        s = result["seconds"][k]
        print(
            f"{k:8} {result['tokens_per_s'][k]:10.0f} {s['old_logprob']:14.3f} {s['update']:9.3f} "
            f"{layout[f'{k}_micro_batches']:14d} {layout[f'{k}_tokens']:16d}"
        )
    print(
        f"ratio packed/padded tokens/s: {result['ratio']:.2f}x (per round: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); real tokens {tokens}, padding {result['padding_fraction']:.1%} "
        f"of the padded layout; load average {result['load_avg']:.1f}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
