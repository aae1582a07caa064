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
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help="YAML recipe (kind: rl)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.type=cispo optim.lr=1e-6")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in run.out_dir")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume even though the config differs from the one saved in run.out_dir (see the error)",
    )


def run(args: argparse.Namespace) -> int:
    from klear.config import RLConfig, load_config
    from klear.preflight import check_train_run
    from klear.train.checkpoint import latest_checkpoint
    from klear.train.rl import train_rl
    from klear.train.rundir import check_resume

    cfg = load_config(RLConfig, args.recipe, args.overrides)
    check_train_run(cfg, "rl")  # before OUT is created or a model loaded
    ckpt = None if args.no_resume else latest_checkpoint(Path(cfg.run.out_dir) / "checkpoints")
    if ckpt is not None:
        if not args.resume_anyway:
            check_resume(cfg.run.out_dir, cfg.model_dump(mode="json"))
        print(f"resuming from {ckpt.name} ({ckpt}); --no-resume starts over", flush=True)
    result = train_rl(cfg, resume=not args.no_resume)
    last = result.history[-1] if result.history else {}
    print(f"done: {result.out_dir} (final model: {result.final_model})")
    if "val/greedy_acc" in last:
        print(f"held-out greedy accuracy: {last['val/greedy_acc']:.3f}")
    return 0
