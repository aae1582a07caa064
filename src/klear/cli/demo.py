"""The whole pipeline on a laptop CPU: SFT of a tiny model, then GPPO RL, then held-out accuracy.

Writes OUT/summary.json (sft_accuracy, rl_accuracy, seconds, config), OUT/metrics.jsonl,
OUT/curves.png, OUT/sft/ (the SFT run) and OUT/checkpoints/ (the RL run).

Examples:
  klear demo                          # about 2 minutes on 2 cores (README: measured figures)
  klear demo --out runs/demo2 --seed 1
  klear demo --rl trainer.total_steps=20 --sft trainer.max_steps=80   # a shorter run
  klear demo --task code-fn           # the code task: programs scored by the code reward in the sandbox
  klear demo --compare                # = klear ablate loss --out OUT/compare (ppo / gppo / ce-gppo / cispo)
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
    p.add_argument(
        "--compare",
        action="store_true",
        help="run `klear ablate loss` into OUT/compare: ppo, gppo, ce-gppo and cispo on paired seeds",
    )
    p.add_argument("--seeds", type=int, help="paired seeds with --compare (default: the ablation's, 5)")


def run(args: argparse.Namespace) -> int:
    if args.compare:  # one implementation: the loss ablation
        from klear.ablate import AblationError, get_ablation
        from klear.cli.ablate import run_all

        args.jobs = 2
        if args.task != "addition-2to3":  # the loss ablation's recipes are the addition demo's
            raise AblationError(
                f"--compare runs `klear ablate loss` on addition-2to3, not on --task {args.task}; "
                "the code task's ablation is `klear ablate reward`"
            )
        if args.seeds is not None and args.seeds < 2:
            raise AblationError(f"--seeds {args.seeds}: paired intervals need at least 2 seeds")
        run_all([get_ablation("loss")], args.out / "compare", args)
        return 0
    from klear.demo import DemoSettings, run_demo

    run_demo(
        DemoSettings(
            out=args.out,
            seed=args.seed,
            sft_overrides=tuple(args.sft),
            rl_overrides=tuple(args.rl),
            task=args.task,
        )
    )
    return 0
