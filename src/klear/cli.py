"""The ``klear`` command line.

Each subcommand lives next to the code it drives and is listed once in
``COMMANDS``: name -> module exposing ``configure(parser)`` and ``run(args) -> int``.
Those modules import heavy libraries (torch, transformers) inside ``run`` only,
so ``klear --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from klear import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "demo": (
        "klear.demo_cli",
        "the whole pipeline on the built-in tiny task: SFT, GPPO RL, held-out accuracy",
    ),
    "config": ("klear.config_cli", "validate a recipe with overrides and print the resolved config"),
    "rl": ("klear.train.rl_cli", "reinforcement learning (GPPO) on verifiable rewards"),
    "eval": ("klear.eval.cli", "avg@k / pass@k / maj@k on a benchmark; re-score generations"),
    "data": ("klear.data.cli", "validate, convert and curate data (filter-tests, filter-math, sft-select)"),
    "reward": (
        "klear.rewards.cli",
        "score responses offline with the reward pool (math, code, user functions)",
    ),
    "sft": ("klear.train.sft_cli", "supervised fine-tuning on chats (loss on assistant tokens)"),
    "plan": ("klear.plan.cli", "per-GPU memory of a recipe's learner and rollout engines; does it fit"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klear",
        description=(
            "Klear-Reasoner training: long-CoT SFT, GPPO reinforcement learning with verifiable "
            "rewards (math verifier, sandboxed code tests) and avg@k evaluation. "
            "Recipes are YAML files; any setting can be overridden as key.sub=value."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"klear {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from klear.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"klear: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("klear: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
