"""Reinforcement learning with GPPO (or ppo/cispo/gspo) on verifiable rewards.

Examples:
  klear rl recipes/demo.yaml model.path=runs/demo/sft/final
  klear rl recipes/klear-8b-math-rl.yaml loss.type=cispo trainer.total_steps=200
  klear rl recipes/demo.yaml --no-resume        # start over even if OUT has checkpoints
  klear rl recipes/demo.yaml dist.backend=ray dist.learner_ranks=2   # on Ray (docs/distributed.md)

A run writes OUT/config.yaml (the resolved config), OUT/metrics.jsonl (one line per step),
OUT/checkpoints/step_N/{model,trainer_state.pt} and OUT/curves.png. Started again with the
same OUT, it resumes from the latest checkpoint exactly (model, optimizer, scheduler, RNG,
data position), on any number of learner ranks.
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help="YAML recipe (kind: rl)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.type=cispo optim.lr=1e-6")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in run.out_dir")


def run(args: argparse.Namespace) -> int:
    from klear.config import ConfigError, RLConfig, load_config
    from klear.data.schema import DataError
    from klear.train.rl import NoSignalError, train_rl

    cfg = load_config(RLConfig, args.recipe, args.overrides)
    try:
        result = train_rl(cfg, resume=not args.no_resume)
    except (NoSignalError, DataError) as exc:  # a run that cannot learn, a prompt over the limit
        raise ConfigError(str(exc)) from None
    last = result.history[-1] if result.history else {}
    print(f"done: {result.out_dir} (final model: {result.final_model})")
    if "val/greedy_acc" in last:
        print(f"held-out greedy accuracy: {last['val/greedy_acc']:.3f}")
    return 0
