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
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help="YAML recipe (kind: sft)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in run.out_dir")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume even though the config differs from the one saved in run.out_dir (see the error)",
    )


def run(args: argparse.Namespace) -> int:
    from klear.config import SFTConfig, load_config
    from klear.preflight import check_train_run
    from klear.train.checkpoint import latest_checkpoint
    from klear.train.parallel import ranks_from_env
    from klear.train.rundir import check_resume
    from klear.train.sft import run_sft

    cfg = load_config(SFTConfig, args.recipe, args.overrides)
    check_train_run(cfg, "sft")  # before OUT is created or a model loaded
    ckpt = None if args.no_resume else latest_checkpoint(Path(cfg.run.out_dir) / "checkpoints")
    if ckpt is not None:
        if not args.resume_anyway:
            check_resume(cfg.run.out_dir, cfg.model_dump(mode="json"), "klear sft")
        if ranks_from_env().lead:
            print(f"resuming from {ckpt.name} ({ckpt}); --no-resume starts over", flush=True)
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
