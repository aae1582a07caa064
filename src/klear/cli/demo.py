"""The whole pipeline on a laptop CPU: SFT of a tiny model, then GPPO RL, then held-out accuracy.

Writes OUT/summary.json (sft_accuracy, rl_accuracy, seconds, config), OUT/metrics.jsonl,
OUT/curves.png, OUT/sft/ (the SFT run) and OUT/checkpoints/ (the RL run).

Examples:
  klear demo                          # about 2 minutes on 2 cores (README: measured figures)
  klear demo --out runs/demo2 --seed 1
  klear demo --rl trainer.total_steps=20 --sft trainer.max_steps=80   # a shorter run
  klear demo --compare --seeds 3      # ppo / gppo / ce-gppo / cispo from one SFT checkpoint
  klear demo --task code-fn           # the code task: programs scored by the code reward in the sandbox
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output directory (default: runs/demo)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the tiny model, data order and sampling (default 0)"
    )
    p.add_argument(
        "--task",
        default="addition-2to3",
        metavar="NAME",
        help="built-in task: addition-2to3 (default; recipes/demo-sft.yaml, demo.yaml) or code-fn "
        "(recipes/demo-code-sft.yaml, demo-code.yaml)",
    )
    p.add_argument(
        "--sft", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the task's SFT recipe"
    )
    p.add_argument(
        "--rl", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the task's RL recipe"
    )
    p.add_argument("--compare", action="store_true", help="compare ppo, gppo, ce-gppo and cispo over seeds")
    p.add_argument("--seeds", type=int, default=3, help="RL seeds per variant with --compare (default 3)")


def run(args: argparse.Namespace) -> int:
    from klear.demo import DemoSettings, run_compare, run_demo

    s = DemoSettings(
        out=args.out,
        seed=args.seed,
        sft_overrides=tuple(args.sft),
        rl_overrides=tuple(args.rl),
        task=args.task,
    )
    if args.compare:
        run_compare(s, args.seeds)
    else:
        run_demo(s)
    return 0
