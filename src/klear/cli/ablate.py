"""The paper's ablations at laptop scale: paired seeds, 95% intervals, one verdict per claim.

Each ablation runs every variant on the same seeds (seed k of every variant starts from the
same SFT checkpoint), prints a time estimate and a line per finished run, and writes
OUT/ablation.md (table + verdicts), OUT/ablation.json, OUT/ablation.png (accuracy vs step with
95% bands) and every run's own outputs under OUT/runs/. A verdict is "reproduced" when the
paired 95% interval of (claimed better - worse) is above 0, "reversed" when below, else
"not distinguishable at this scale". docs/ablations.md has the recorded results.

Examples:
  klear ablate --list                      # the ablations, their claims and estimated minutes
  klear ablate loss                        # ppo clip-higher / gppo / ce-gppo / cispo, 5 seeds
  klear ablate filter --seeds 8 --out runs/filter
  klear ablate all --out runs/ablate       # every ablation in one queue; SFT checkpoints shared where equal
  klear ablate loss --jobs 1               # one run at a time (a busy machine)
  klear ablate loss --rl trainer.total_steps=4 --seeds 2   # a quick look (overrides of demo.yaml)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("name", nargs="?", metavar="NAME", help="an ablation (see --list), or 'all'")
    p.add_argument("--list", action="store_true", help="list the ablations with their claims and estimates")
    p.add_argument("--seeds", type=int, help="paired seeds per variant (default: the ablation's, 5)")
    p.add_argument("--seed", type=int, default=0, help="first seed (seeds are SEED, SEED+1, ...; default 0)")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="seeds (of any ablation, with 'all') run at once in worker processes, one core each "
        "(default 2: a 2-core laptop)",
    )
    p.add_argument("--out", type=Path, help="output directory (default: runs/ablate/NAME)")
    p.add_argument(
        "--sft", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides of recipes/demo-sft.yaml"
    )
    p.add_argument(
        "--rl", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides of recipes/demo.yaml"
    )


def run(args: argparse.Namespace) -> int:
    from klear.ablate import AblationError, all_ablations, get_ablation

    if args.seeds is not None and args.seeds < 2:
        raise AblationError(f"--seeds {args.seeds}: paired intervals need at least 2 seeds")
    if args.jobs < 1:
        raise AblationError(f"--jobs {args.jobs}: must be >= 1")
    if args.list:
        _list(all_ablations(), args.jobs)
        return 0
    if not args.name:
        raise AblationError("name an ablation (klear ablate --list shows them) or 'all'")
    chosen = all_ablations() if args.name == "all" else [get_ablation(args.name)]
    root = args.out or (Path("runs/ablate") / args.name)
    run_all(chosen, root, args)
    return 0


def run_all(chosen, root: Path, args: argparse.Namespace) -> list[dict]:
    from klear.ablate.report import verdict_lines
    from klear.ablate.runner import Settings
    from klear.ablate.schedule import run_ablations

    def settings(ab) -> Settings:
        out = root / ab.name if len(chosen) > 1 else root
        return Settings(
            out=out,
            seeds=args.seeds or ab.seeds,
            base_seed=args.seed,
            sft_overrides=tuple(args.sft),
            rl_overrides=tuple(args.rl),
            sft_cache=root / "sft" if len(chosen) > 1 else None,
            jobs=args.jobs,
            say=_say,
        )

    items = [(ab, settings(ab)) for ab in chosen]

    def finished(ab, s: Settings, summary: dict) -> None:
        print((s.out / "ablation.md").read_text())
        for line in verdict_lines(summary):
            print(f"{ab.name}: {line}")

    return run_ablations(items, finished)


def _list(ablations, jobs: int) -> None:
    from klear.ablate.runner import Settings, estimate
    from klear.ablate.schedule import estimate_all

    items = [(ab, Settings(out=Path("runs/ablate") / ab.name, seeds=ab.seeds, jobs=jobs)) for ab in ablations]
    for ab, s in items:
        est = estimate(ab, s)
        print(f"{ab.name}: {ab.claim}")
        print(f"  baseline {ab.baseline!r}; variants: {', '.join(v.name for v in ab.variants)}")
        print(
            f"  {ab.seeds} seeds by default; about {est['total'] / 60:.0f} min on 2 idle cores with --jobs {jobs}"
        )
    print(f"all: about {estimate_all(items) / 60:.0f} min on 2 idle cores with --jobs {jobs} (one queue)")


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]klear ablate[/]: {msg}", highlight=False, soft_wrap=True)
