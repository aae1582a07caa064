"""Prepare data: validate, convert, and curate it the way the paper did.

  klear data validate FILE [--kind rl|sft] [--tokenizer DIR] [--max-prompt-length N | --config RECIPE]
  klear data convert RAW.jsonl --output rl.jsonl --shape qa|messages|code [--question-key K ...]
  klear data filter-tests code.jsonl --kept kept.jsonl --dropped dropped.jsonl (--model DIR | --generations G)
  klear data filter-math math.jsonl --kept kept.jsonl --dropped dropped.jsonl (--model DIR | --generations G)
  klear data sft-select a.jsonl b.jsonl --output sft.jsonl (--quality Q.json | --quality-command CMD) --top-k 2

Every command streams its input through resumable shards (a work directory OUTPUT.work beside the
output; a rerun skips the shards already finished, and the directory is removed after success
unless --keep-work), writes each output whole or not at all (temp file + rename), is deterministic
for a given --seed, and reports bad input as FILE: line N: field 'F': problem. Exit status 2 on
bad input or settings, 1 when `validate` finds invalid rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from klear.progress import progress

MAX_REPORTED_ERRORS = 20


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (pass rates, thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _common(p: argparse.ArgumentParser, shard_size: int) -> None:
    g = p.add_argument_group("run control")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling and hashing (default 0)")
    g.add_argument(
        "--shard-size", type=int, default=shard_size, help=f"items per shard (default {shard_size})"
    )
    g.add_argument(
        "--work-dir", help="where finished shards are kept (default: OUTPUT.work beside the output)"
    )
    g.add_argument("--keep-work", action="store_true", help="keep the work directory after success")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--force", action="store_true", help="replace output files that already exist")


def _sampling(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("responses (exactly one of --model, --generations)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="sample responses from this local HF model directory")
    src.add_argument(
        "--generations",
        metavar="FILE",
        help="read responses: records with 'prompt' and 'responses' (list) or 'response' (one string)",
    )
    g.add_argument(
        "--k", type=int, help="responses per prompt (default 16 with --model; all given with --generations)"
    )
    g.add_argument("--backend", default="hf", help="rollout backend for --model (default hf)")
    g.add_argument("--device", help="device for --model (default: the backend's, cpu for hf)")
    g.add_argument(
        "--temperature", type=float, default=1.0, help="--model: sampling temperature (default 1.0)"
    )
    g.add_argument("--top-p", type=float, default=1.0, help="--model: nucleus sampling (default 1.0: off)")
    g.add_argument(
        "--max-new-tokens", type=int, default=4096, help="--model: tokens per response (default 4096)"
    )
    g.add_argument("--batch-size", type=int, help="max sequences per forward pass (hf)")
    g.add_argument("--save-generations", metavar="FILE", help="also write the sampled responses and rewards")
    g.add_argument("--report", metavar="FILE", help="statistics as JSON (default: KEPT.report.json)")
    g.add_argument("--config", metavar="RECIPE", help=f"RL recipe whose 'reward' section scores {what}")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, repeatable: --set reward.num_workers=4, or just reward.num_workers=4",
    )


#: What each action's --help says: plain words and examples (the modules' docstrings are for developers).
HELP = {
    "validate": """Check every row of a data file against the RL or SFT schema and print a summary
(row count, data sources, abilities, lengths; in tokens with --tokenizer). Exit status 1 when a
row is invalid, listing each as FILE: line N: field 'F': problem.

Examples:
  klear data validate rl.jsonl
  klear data validate sft.parquet --kind sft --tokenizer /models/Qwen3-8B-Base
""",
    "convert": """Convert data in a common shape to our rows, with an explicit field mapping.

Shapes: qa (a question and an answer: an RL math row, or a two-turn SFT row with --to sft),
messages (chats, ShareGPT turns too: an SFT row), code (a problem statement and tests as
TACO/APPS, LiveCodeBench or HumanEval: an RL code row whose tests are checked by the code
reward's own parser). Unnamed keys are found among the usual names. Every output row is
validated, so a converted file always loads back.

Examples:
  klear data convert raw.jsonl --output rl.jsonl --question-key problem --answer-key solution
  klear data convert chats.jsonl --output sft.jsonl --shape messages
  klear data convert taco.parquet --output code.jsonl --shape code --skip-invalid --rejected bad.jsonl
  klear data convert qa.jsonl --output rl.jsonl --prompt-template "{question} Put the answer in \\boxed{{}}."
""",
    "filter-tests": """Keep code prompts whose tests are trustworthy, as the paper did: a prompt with at
least --min-tests tests is kept when a strong model's k samples pass all of them more than
--threshold of the time (a prompt it rarely passes more likely has wrong tests than is hard).
Responses are sampled from --model or read from --generations; scoring uses the reward pool.

Examples:
  klear data filter-tests code.jsonl --kept kept.jsonl --dropped dropped.jsonl --model /models/strong --k 16
  klear data filter-tests code.jsonl --kept kept.jsonl --dropped dropped.jsonl --generations gens.jsonl
""",
    "filter-math": """Keep math prompts that more than --majority of k samples solve, and tag every
prompt with its pass rate (extra_info.difficulty, read by sft-select). Responses are sampled from
--model or read from --generations.

Examples:
  klear data filter-math math.jsonl --kept kept.jsonl --dropped dropped.jsonl --model /models/strong --k 8
  klear data filter-math math.jsonl --kept kept.jsonl --dropped dropped.jsonl --generations gens.jsonl
""",
    "sft-select": """Select SFT data the way the paper found works: keep only the --top-k
highest-quality sources (scores from --quality, or measured by --quality-command), drop wrong
responses on easy problems but keep them on hard ones (difficulty = pass rate, easy at or above
--easy-pass-rate), and remove exact and near-duplicate prompts (MinHash), keeping the copy from
the better source.

Examples:
  klear data sft-select a.jsonl b.jsonl c.jsonl --output sft.jsonl --quality scores.json --top-k 2
  klear data sft-select *.jsonl --output sft.jsonl --quality-command "python score.py {file}" --dropped out.jsonl
""",
}


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str, doc: str | None) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=(doc or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    v = add("validate", "check a data file and print a summary", HELP["validate"])
    v.add_argument("file", help="a .jsonl, .json or .parquet data file")
    v.add_argument(
        "--kind", choices=["auto", "rl", "sft"], default="auto", help="row schema (default: detect)"
    )
    v.add_argument("--tokenizer", metavar="DIR", help="report lengths in tokens of this local tokenizer")
    v.add_argument(
        "--max-prompt-length",
        type=int,
        metavar="N",
        help="count RL prompts over N tokens (needs a tokenizer); exit 1 with --truncation error",
    )
    v.add_argument(
        "--truncation",
        choices=["error", "drop", "left"],
        help="what training does with them (default: the recipe's data.truncation, else drop)",
    )
    v.add_argument(
        "--config",
        metavar="RECIPE",
        help="RL recipe: data.max_prompt_length, data.truncation and (without --tokenizer) model.path",
    )

    c = add(
        "convert", "convert question/answer, messages or code-problem files to our schema", HELP["convert"]
    )
    c.add_argument("input", help="the file to convert (.jsonl, .json or .parquet)")
    c.add_argument("--output", required=True, help=".jsonl, .json or .parquet")
    c.add_argument(
        "--shape",
        choices=["qa", "messages", "code"],
        default="qa",
        help="qa: question + answer; messages: chats; code: a problem + tests (default qa)",
    )
    c.add_argument("--to", choices=["rl", "sft"], help="row kind (default: sft for messages, rl otherwise)")
    for key in ("question", "answer", "messages", "tests", "fn-name", "source"):
        c.add_argument(f"--{key}-key", metavar="KEY", help=f"input field holding the {key.replace('-', ' ')}")
    c.add_argument("--data-source", help="data_source (RL) / source (SFT) of every row")
    c.add_argument("--ability", help="ability of every RL row (default: math, or code for --shape code)")
    c.add_argument("--prompt-template", default="{question}", help="user turn text; {question} is replaced")
    c.add_argument("--system-prompt", help="a system turn before the user turn")
    c.add_argument("--keep", action="append", default=[], metavar="KEY", help="copy this input field along")
    c.add_argument("--skip-invalid", action="store_true", help="write what converts; list the rest")
    c.add_argument("--rejected", metavar="FILE", help="with --skip-invalid: write bad records and why")
    _common(c, 10000)

    ft = add(
        "filter-tests",
        "keep code prompts a strong model passes (> 0.5 of k) with >= 16 tests",
        HELP["filter-tests"],
    )
    ft.add_argument("input", help="RL rows with ability 'code'")
    ft.add_argument("--kept", required=True, help="where the kept rows go (.jsonl, .json or .parquet)")
    ft.add_argument("--dropped", required=True, help="where the dropped rows go, each with its reason")
    ft.add_argument(
        "--threshold", type=_fraction, default=0.5, help="keep when pass rate > this (default 0.5)"
    )
    ft.add_argument("--min-tests", type=int, default=16, help="keep only prompts with this many tests (16)")
    _sampling(ft, "the programs")
    _common(ft, 64)

    fm = add(
        "filter-math", "keep math prompts a majority of k samples solve; tag pass rate", HELP["filter-math"]
    )
    fm.add_argument("input", help="RL rows (math)")
    fm.add_argument("--kept", required=True, help="where the kept rows go (.jsonl, .json or .parquet)")
    fm.add_argument("--dropped", required=True, help="where the dropped rows go, each with its reason")
    fm.add_argument(
        "--majority", type=_fraction, default=0.5, help="keep when pass rate > this (default 0.5)"
    )
    _sampling(fm, "the answers")
    _common(fm, 64)

    s = add("sft-select", "top-K sources, correctness by difficulty, duplicate removal", HELP["sft-select"])
    s.add_argument("inputs", nargs="+", help="SFT row files")
    s.add_argument("--output", required=True, help="the selected SFT rows (.jsonl, .json or .parquet)")
    s.add_argument("--dropped", help="also write dropped rows with 'selection.reason'")
    s.add_argument("--report", help="report JSON (default: OUTPUT.report.json)")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument(
        "--quality", metavar="FILE", help="source -> score (JSON/YAML mapping or 'source<TAB>score')"
    )
    q.add_argument(
        "--quality-command",
        metavar="CMD",
        help="command run per source ({file}: its rows as jsonl, {source}: its name); last stdout line = score",
    )
    s.add_argument("--quality-timeout", type=float, help="seconds allowed per quality command")
    s.add_argument("--top-k", type=int, default=2, help="sources kept (default 2)")
    s.add_argument(
        "--easy-pass-rate",
        type=_fraction,
        default=0.5,
        help="difficulty (pass rate) at or above which a problem is easy: wrong responses dropped",
    )
    s.add_argument("--unknown-is-hard", action="store_true", help="rows without difficulty count as hard")
    s.add_argument(
        "--near-threshold", type=_fraction, default=0.8, help="estimated Jaccard for a near duplicate"
    )
    s.add_argument("--no-near", action="store_true", help="remove exact duplicates only")
    s.add_argument("--per-prompt", type=int, default=1, help="responses kept per prompt (default 1)")
    s.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    s.add_argument("--bands", type=int, default=32, help="LSH bands over the permutations (default 32)")
    s.add_argument("--shingle", type=int, default=5, help="character n-gram size")
    _common(s, 10000)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def err(msg: str) -> None:
    print(f"klear: error: {msg}", file=sys.stderr)


def write_json(path: str | Path, data: Any) -> None:
    from klear.io import write_atomic

    write_atomic(path, [json.dumps(data, indent=2, ensure_ascii=False), "\n"])


def located_rows(path: str, kind: str) -> list[tuple[str, Any]]:
    """(\"FILE: line N\", row) for every row; the first bad row raises DataError."""
    from klear.data.schema import DataError, iter_rows

    rows = [(f"{path}: {where}", row) for where, row in iter_rows(path, kind)]  # type: ignore[arg-type]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def check_outputs(*paths: str | None, inputs: Sequence[str] = (), force: bool = False) -> None:
    """:func:`klear.io.check_outputs`, and an output type we can write (.jsonl, .json, .parquet)."""
    from klear.data.schema import SUFFIXES, DataError
    from klear.io import check_outputs as check_paths

    check_paths(paths, inputs, force)
    for p in paths:
        if p is not None and Path(p).suffix.lower() not in SUFFIXES:
            raise DataError(f"{p}: unsupported output type {Path(p).suffix!r}; use .jsonl, .json or .parquet")


def run(args: argparse.Namespace) -> int:
    from klear.cli.data_curate import run_filter, run_sft_select
    from klear.config import ConfigError
    from klear.data.schema import DataError

    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "validate": run_validate,
        "convert": run_convert,
        "filter-tests": run_filter,
        "filter-math": run_filter,
        "sft-select": run_sft_select,
    }
    try:
        return commands[args.data_command](args)
    except (DataError, ConfigError) as exc:
        err(str(exc))
        return 2


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------


def _prompt_limit(args: argparse.Namespace) -> tuple[Any, int | None, str]:
    """(tokenizer, max_prompt_length, truncation) from --tokenizer/--max-prompt-length/--truncation,
    the recipe of --config filling what is not given."""
    from klear.config import ConfigError

    tokenizer_dir, limit, mode, tiny = args.tokenizer, args.max_prompt_length, args.truncation, False
    if args.config:
        from klear.config import load_recipe

        cfg = load_recipe(args.config)
        data = getattr(cfg, "data", None)
        if data is None or not hasattr(data, "truncation"):
            raise ConfigError(f"recipe {args.config!r} has no RL 'data' section (is it an RL recipe?)")
        limit = limit if limit is not None else data.max_prompt_length
        mode = mode or data.truncation
        if tokenizer_dir is None:
            tokenizer_dir, tiny = cfg.model.path, cfg.model.path is None and cfg.model.tiny
    if limit is not None and limit <= 0:
        raise ConfigError(f"--max-prompt-length {limit}: must be positive")
    tokenizer = None
    if tokenizer_dir:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    elif tiny:
        from klear.models.tiny import build_tokenizer

        tokenizer = build_tokenizer()
    if limit is not None and tokenizer is None:
        raise ConfigError(
            "--max-prompt-length counts tokens: give --tokenizer DIR (or a recipe with model.path)"
        )
    return tokenizer, limit, mode or "drop"


def run_validate(args: argparse.Namespace) -> int:
    from klear.data.summary import summarize_file

    tokenizer, limit, mode = _prompt_limit(args)
    s = summarize_file(args.file, args.kind, tokenizer, progress=True, max_prompt_length=limit)
    for e in s["errors"][:MAX_REPORTED_ERRORS]:
        err(e)
    if s["invalid"] > MAX_REPORTED_ERRORS:
        err(f"... and {s['invalid'] - MAX_REPORTED_ERRORS} more invalid rows")
    print(f"{s['file']}: {s['kind']} rows: {s['rows']} valid, {s['invalid']} invalid")
    for field, bucket in s["counts"].items():
        items = sorted(bucket.items(), key=lambda kv: (-kv[1], kv[0]))
        print(f"  {field}: " + ", ".join(f"{k} {v}" for k, v in items))
    for name, pct in s["lengths"].items():
        unit = "" if name.startswith("difficulty") else f" {s['unit']}"
        print(f"  {name}{unit}: " + "  ".join(f"{k} {v:g}" for k, v in pct.items()))
    over = s["too_long"]
    if limit is not None and s["kind"] == "rl":
        fate = {"error": "training stops on the first", "drop": "dropped", "left": "truncated on the left"}
        print(f"  prompts over max_prompt_length {limit}: {len(over)} (data.truncation {mode}: {fate[mode]})")
        for line in over[:MAX_REPORTED_ERRORS]:
            print(f"    {line}")
        if len(over) > MAX_REPORTED_ERRORS:
            print(f"    ... and {len(over) - MAX_REPORTED_ERRORS} more")
    return 1 if s["invalid"] or not s["rows"] or (over and mode == "error") else 0


# ---------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------


def run_convert(args: argparse.Namespace) -> int:
    from klear.data.convert import FieldMap, _prompt, convert_shard
    from klear.data.schema import DataError, count_records, iter_records
    from klear.data.shards import (
        AtomicOutputs,
        ShardStats,
        default_work_dir,
        finish_work_dir,
        run_sharded,
    )

    check_outputs(args.output, args.rejected, inputs=[args.input], force=args.force)
    fm = FieldMap(
        shape=args.shape,
        to=args.to,
        question_key=args.question_key,
        answer_key=args.answer_key,
        messages_key=args.messages_key,
        tests_key=args.tests_key,
        fn_name_key=args.fn_name_key,
        source_key=args.source_key,
        data_source=args.data_source,
        ability=args.ability,
        prompt_template=args.prompt_template,
        system_prompt=args.system_prompt,
        keep_keys=tuple(args.keep),
    )
    if "{question}" not in args.prompt_template:
        raise DataError(
            f"--prompt-template {args.prompt_template!r} has no {{question}}: every question would be dropped"
        )
    _prompt("x", fm)  # a bad template is a setting error, not a row error
    src = Path(args.input)
    work = Path(args.work_dir) if args.work_dir else default_work_dir(args.output)
    items = ((f"{src}: {where}", i, rec) for i, (where, rec) in enumerate(iter_records(src)))
    total = count_records(src)
    if total == 0:
        raise DataError(f"{src}: no records to convert")
    stats = ShardStats()
    rejected: list[dict[str, Any]] = []
    try:
        with progress(not args.no_progress) as bar:
            task = bar.add_task("convert", total=total)
            with AtomicOutputs({"rows": args.output, "rejected": args.rejected}) as out:
                for routed in run_sharded(
                    items,
                    lambda chunk, _i: convert_shard(chunk, fm, src.stem),
                    work_dir=work,
                    params=["convert", dataclasses.asdict(fm), src.stem],
                    shard_size=args.shard_size,
                    key_of=lambda item: [item[1], item[2]],
                    progress=lambda n: bar.advance(task, n),
                    stats=stats,
                ):
                    rejected.extend(r for d, r in routed if d == "rejected")
                    if not rejected or args.skip_invalid:
                        out.write_all(routed)
                    # else: keep converting (and caching) shards, to report every bad line at once
                if rejected and not args.skip_invalid:
                    raise Abort
    except Abort:
        for r in rejected[:MAX_REPORTED_ERRORS]:
            err(r["error"])
        if len(rejected) > MAX_REPORTED_ERRORS:
            err(f"... and {len(rejected) - MAX_REPORTED_ERRORS} more bad records")
        err(f"nothing written; {len(rejected)} bad record(s) in {src} (--skip-invalid writes the rest)")
        return 2
    finish_work_dir(work, args.keep_work)
    n = stats.counts.get("rows", 0)
    for r in rejected[:MAX_REPORTED_ERRORS]:
        err(f"skipped {r['error']}")
    print(
        f"converted {n} of {stats.items} records from {src} to {args.output} ({fm.target} rows); "
        f"{len(rejected)} rejected; shards: {stats.computed} computed, {stats.reused} reused"
    )
    return 0


class Abort(Exception):
    """Leave an AtomicOutputs block without writing, then report."""
