"""Supervised fine-tuning from a recipe: chat-template formatting, loss on assistant tokens only,
packed batches, warmup + cosine, checkpoints that resume on any number of GPUs.

Examples:
  klear sft recipes/demo-sft.yaml
  klear sft recipes/demo-sft.yaml trainer.max_steps=50 run.out_dir=runs/try
  klear sft recipes/klear-8b-sft.yaml model.path=/models/Qwen3-8B-Base data.train_files=[sft.jsonl]
  torchrun --nproc-per-node 8 -m klear sft recipes/klear-8b-sft.yaml      (8 GPUs, FSDP2)

On several ranks (torchrun sets RANK/WORLD_SIZE) every rank runs the same loop on its share of
each step's micro-batches; dist.learner_strategy picks fsdp (sharded) or ddp (replicas); rank 0
writes everything. Started again with the same run.out_dir it resumes from the latest checkpoint
(trainer.save_every), on any number of ranks -- only when the config is the saved one except for
keys safe to change (steps, cadences, dist, logging); any other difference is refused.
"""

from __future__ import annotations

import argparse

from klear.cli.training import add_run_args, prepare_run


def configure(p: argparse.ArgumentParser) -> None:
    add_run_args(p, "sft", "optim.lr=1e-4")


def run(args: argparse.Namespace) -> int:
    from klear.config import SFTConfig, load_config
    from klear.train.parallel import ranks_from_env
    from klear.train.sft import run_sft

    cfg = load_config(SFTConfig, args.recipe, args.overrides)
    prepare_run(cfg, "sft", args, announce=ranks_from_env().lead)
    result = run_sft(cfg, resume=not args.no_resume)
    if not result.lead:
        return 0
    shown = {k: v for k, v in result.metrics.items() if k in ("loss", "val/accuracy", "val/response_length")}
    print(
        f"sft: {result.steps} steps in {result.seconds:.1f}s; "
        + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        + f"; model -> {result.model_dir}"
    )
    return 0
