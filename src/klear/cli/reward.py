"""Score model responses offline with the same reward pool training uses.

Examples:
  klear reward score --input rollouts.jsonl --output scored.jsonl
  klear reward score --input r.jsonl --output s.jsonl --config recipes/demo.yaml reward.num_workers=4

Input: JSON lines, each an RL data row ('data_source', 'ability',
'reward_model.ground_truth', ...) plus either 'response' (one string) or
'responses' (a list of strings, e.g. the n samples of one prompt). Blank lines
are skipped.

Output: each input row, unchanged, plus 'reward' (for 'response') or
'rewards' (a list, for 'responses') holding RewardResult objects: score,
correct, passed/total, flags, answer, seconds, detail.

Every row is checked before any scoring; bad rows (invalid JSON, missing
fields, no reward function for the row) are reported as FILE:LINE and nothing
is written. The output appears only when complete (temp file + rename).
Settings come from the recipe's 'reward' section (defaults without one) and
dotted overrides such as 'reward.math.negative=0'.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from klear.io import write_atomic

MAX_REPORTED_ERRORS = 20


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="reward_command", metavar="ACTION", required=True)
    s = sub.add_parser(
        "score",
        help="score a JSONL file of rows + responses",
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--input", required=True, help="JSONL: RL rows plus 'response' or 'responses'")
    s.add_argument("--output", required=True, help="JSONL written atomically: each row plus its reward(s)")
    s.add_argument("--config", metavar="RECIPE", help="RL recipe whose 'reward' section is used")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. reward.num_workers=4")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load_reward_config(recipe: str | None, overrides: list[str]) -> Any:
    from klear.config import ConfigError, RLConfig, load_config, load_recipe

    cfg = load_recipe(recipe, overrides) if recipe else load_config(RLConfig, None, overrides)
    if not hasattr(cfg, "reward"):
        raise ConfigError(f"recipe {recipe!r} has no 'reward' section (is it an RL recipe?)")
    return cfg.reward


def read_rows(path: Path, reward_cfg: Any) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Parse and check every line: ([(line_number, row)], ["FILE:LINE: problem", ...])."""
    from klear.rewards.registry import RowError, ground_truth, reward_path

    rows: list[tuple[int, dict[str, Any]]] = []
    errors: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                errors.append(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            has_one, has_many = "response" in row, "responses" in row
            if has_one == has_many:
                errors.append(f"{where}: needs exactly one of 'response' (string) or 'responses' (list)")
                continue
            if has_one and not isinstance(row["response"], str):
                errors.append(f"{where}: 'response' must be a string")
                continue
            if has_many and not (
                isinstance(row["responses"], list) and all(isinstance(r, str) for r in row["responses"])
            ):
                errors.append(f"{where}: 'responses' must be a list of strings")
                continue
            try:
                reward_path(row, reward_cfg, lineno)
                ground_truth(row, lineno)
            except RowError as exc:
                errors.append(f"{where}: {exc.reason}")
                continue
            rows.append((lineno, row))
    return rows, errors


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from klear.rewards.lifecycle import signals_exit
    from klear.rewards.pool import RewardPool, reward_metrics

    reward_cfg = _load_reward_config(args.config, args.overrides)
    src = Path(args.input)
    if not src.is_file():
        print(f"klear: error: input {str(src)!r} not found", file=sys.stderr)
        return 2
    rows, errors = read_rows(src, reward_cfg)
    if errors:
        for e in errors[:MAX_REPORTED_ERRORS]:
            print(f"klear: error: {e}", file=sys.stderr)
        if len(errors) > MAX_REPORTED_ERRORS:
            print(f"klear: error: ... and {len(errors) - MAX_REPORTED_ERRORS} more bad rows", file=sys.stderr)
        print(f"klear: nothing written; {len(errors)} bad row(s) in {src}", file=sys.stderr)
        return 2

    # one item per response, remembering which row it came from
    items_rows: list[dict[str, Any]] = []
    items_responses: list[str] = []
    for _, row in rows:
        for response in [row["response"]] if "response" in row else row["responses"]:
            items_rows.append(row)
            items_responses.append(response)

    start = time.monotonic()
    err = Console(stderr=True)
    show = not args.no_progress and err.is_terminal
    with (
        signals_exit(),
        Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not show,
        ) as bar,
        RewardPool(reward_cfg) as pool,
    ):
        task = bar.add_task("score", total=len(items_responses))
        results = pool.score(
            items_rows, items_responses, progress=lambda done, total: bar.update(task, completed=done)
        )
        restarts = pool.last_metrics.get("worker_restarts", 0.0)
    seconds = time.monotonic() - start

    out_lines: list[str] = []
    cursor = 0
    for _, row in rows:
        if "response" in row:
            out = {**row, "reward": results[cursor].to_dict()}
            cursor += 1
        else:
            k = len(row["responses"])
            out = {**row, "rewards": [r.to_dict() for r in results[cursor : cursor + k]]}
            cursor += k
        out_lines.append(json.dumps(out, ensure_ascii=False) + "\n")
    write_atomic(Path(args.output), out_lines)

    m = reward_metrics(results)
    flags = ", ".join(f"{k.split('/', 1)[1]}={int(v)}" for k, v in m.items() if k.startswith("flag/"))
    rate = len(results) / seconds if seconds > 0 else 0.0
    print(
        f"scored {len(results)} responses from {len(rows)} rows in {seconds:.1f} s ({rate:.1f} items/s)\n"
        f"mean score {m['mean_score']:.4f}  accuracy {m['accuracy']:.4f}\n"
        f"flags: {flags}  worker restarts: {int(restarts)}\n"
        f"wrote {args.output}",
        file=sys.stdout,
    )
    return 0
