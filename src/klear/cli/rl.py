"""Reinforcement learning with GPPO (or ppo/cispo/gspo) on verifiable rewards.

Examples:
  klear rl recipes/demo.yaml model.path=runs/demo/sft/final
  klear rl recipes/klear-8b-math-rl.yaml loss.type=cispo trainer.total_steps=200
  klear rl recipes/demo.yaml --no-resume        # start over even if OUT has checkpoints
  klear rl recipes/demo.yaml trainer.total_steps=200   # resume OUT and train longer
  klear rl recipes/demo.yaml dist.backend=ray dist.learner_ranks=2   # on Ray (docs/distributed.md)

A run writes OUT/config.yaml (the resolved config), OUT/metrics.jsonl (one line per step),
OUT/checkpoints/step_N/{model,trainer_state.pt} and OUT/curves.png. Started again with the
same OUT, it resumes from the latest checkpoint exactly (model, optimizer, scheduler, RNG,
data position), on any number of learner ranks -- only when the config is the saved one except
for keys safe to change (total steps, checkpoint/log/validation cadence, dist placement); any
other difference is refused with the list of changed keys.
"""

from __future__ import annotations

import argparse

from klear.cli.training import add_run_args, prepare_run


def configure(p: argparse.ArgumentParser) -> None:
    add_run_args(p, "rl", "loss.type=cispo optim.lr=1e-6")


def run(args: argparse.Namespace) -> int:
    from klear.config import RLConfig, load_config
    from klear.train.rl import train_rl

    cfg = load_config(RLConfig, args.recipe, args.overrides)
    prepare_run(cfg, "rl", args)
    result = train_rl(cfg, resume=not args.no_resume)
    last = result.history[-1] if result.history else {}
    print(f"done: {result.out_dir} (final model: {result.final_model})")
    if "val/greedy_acc" in last:
        print(f"held-out greedy accuracy: {last['val/greedy_acc']:.3f}")
    return 0
