"""What ``klear rl`` and ``klear sft`` share: the run-directory options and the checks before training."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_run_args(p: argparse.ArgumentParser, kind: str, override_example: str) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help=f"YAML recipe (kind: {kind})")
    p.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {override_example}")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in run.out_dir")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume even though the config differs from the one saved in run.out_dir (see the error)",
    )


def prepare_run(cfg: Any, kind: str, args: argparse.Namespace, *, announce: bool = True) -> None:
    """Before ``run.out_dir`` is created or a model loaded: the inputs read, and a resume only of
    the same experiment (``klear.train.rundir``); ``announce`` prints where it resumes from."""
    from klear.preflight import check_train_run
    from klear.train.checkpoint import latest_checkpoint
    from klear.train.rundir import check_resume

    check_train_run(cfg)
    ckpt = None if args.no_resume else latest_checkpoint(Path(cfg.run.out_dir) / "checkpoints")
    if ckpt is None:
        return
    if not args.resume_anyway:
        check_resume(cfg.run.out_dir, cfg.model_dump(mode="json"), f"klear {kind}")
    if announce:
        print(f"resuming from {ckpt.name} ({ckpt}); --no-resume starts over", flush=True)
