"""The ``klear`` command line.

Every command's parser lives in this package, one module per command group, and is listed once in
``COMMANDS``: name -> module exposing ``configure(parser)`` and ``run(args) -> int``; each calls
library functions and turns nothing into messages itself except through the error boundary in
:func:`main`.
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
        "klear.cli.demo",
        "the whole pipeline on the built-in tiny task: SFT, GPPO RL, held-out accuracy",
    ),
    "ablate": (
        "klear.cli.ablate",
        "the paper's ablations at laptop scale (loss, filter, SFT data, RL vs SFT): paired seeds, intervals",
    ),
    "config": ("klear.cli.config", "validate a recipe with overrides and print the resolved config"),
    "rl": ("klear.cli.rl", "reinforcement learning (GPPO) on verifiable rewards"),
    "eval": ("klear.cli.eval", "avg@k / pass@k / maj@k on a benchmark; re-score generations"),
    "data": ("klear.cli.data", "validate, convert and curate data (filter-tests, filter-math, sft-select)"),
    "reward": (
        "klear.cli.reward",
        "score responses offline with the reward pool (math, code, user functions)",
    ),
    "sft": ("klear.cli.sft", "supervised fine-tuning on chats (loss on assistant tokens)"),
    "plan": ("klear.cli.plan", "per-GPU memory of a recipe's learner and rollout engines; does it fit"),
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
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (for bug reports)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key.sub=value`` overrides may stand anywhere on the line, in every command
    that takes overrides (argparse alone takes positional overrides only right after the other
    positionals, and ``klear data`` only as ``--set``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        overrides = [e for e in extra if "=" in e and not e.startswith("-")]
        if len(overrides) < len(extra) or not hasattr(args, "overrides"):
            parser.parse_args(argv)  # argparse names what it does not recognise (exit 2)
        args.overrides = [*(args.overrides or []), *overrides]
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    from klear.errors import Terminated

    raise Terminated()


def describe_error(exc: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit code for an error a user can fix; None for an internal error."""
    from klear.errors import KlearError

    if isinstance(exc, KlearError):
        return str(exc), 2
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not UTF-8 text ({exc.reason} at byte {exc.start + 1})", 2
    if isinstance(exc, OSError) and exc.filename is not None:  # a path we were told to use
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {exc.strerror or exc}", 2
    if isinstance(exc, MemoryError):
        return "out of memory (lower the batch or sequence sizes)", 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command inside the error boundary.

    Exit codes: 0 success; 1 an internal error (one line, and a hint to rerun with ``--debug``);
    2 bad input, settings or environment (one ``klear: error:`` line naming file, line and field,
    or the config key); 130 Ctrl-C; 143 SIGTERM (handled like Ctrl-C: temp files removed, workers
    reaped).
    """
    import signal

    from klear.errors import Terminated

    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    import threading

    own_sigterm = threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) in (signal.SIG_DFL, None)
    if own_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args._run(args) or 0)
    except Terminated:
        print("klear: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("klear: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        known = describe_error(exc)
        if known is not None:
            print(f"klear: error: {known[0]}", file=sys.stderr)
            return known[1]
        print(
            f"klear: internal error: {type(exc).__name__}: {exc}\n"
            "  rerun with `klear --debug ...` for the traceback, and please report it",
            file=sys.stderr,
        )
        return 1
    finally:
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    raise SystemExit(main())
