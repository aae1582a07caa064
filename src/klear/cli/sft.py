"""Supervised fine-tuning from a recipe: chat-template formatting, loss on assistant tokens only,
packed batches, warmup + cosine, checkpoints as plain HF directories.

Examples:
  klear sft recipes/demo-sft.yaml
  klear sft recipes/demo-sft.yaml trainer.max_steps=50 run.out_dir=runs/try
  klear sft recipes/klear-8b-sft.yaml model.path=/models/Qwen3-8B-Base data.train_files=[sft.jsonl]
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help="YAML recipe (kind: sft)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4")


def run(args: argparse.Namespace) -> int:
    from klear.config import SFTConfig, load_config
    from klear.preflight import check_train_run
    from klear.train.sft import run_sft

    cfg = load_config(SFTConfig, args.recipe, args.overrides)
    check_train_run(cfg, "sft")  # before OUT is created or a model loaded
    result = run_sft(cfg)
    shown = {k: v for k, v in result.metrics.items() if k in ("loss", "val/accuracy", "val/response_length")}
    print(
        f"sft: {result.steps} steps in {result.seconds:.1f}s; "
        + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        + f"; model -> {result.model_dir}"
    )
    return 0
