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
is written. No content of a valid row stops the batch: invalid UTF-8 is
replaced by U+FFFD (a warning, and a note in the reward's detail), lone
surrogates are written as \\uXXXX escapes, and a ground truth nested deeper
than the JSON reader can follow is flagged 'error'.
The output appears only when complete (temp file + rename).
Settings come from the recipe's 'reward' section (defaults without one) and
dotted overrides such as 'reward.math.negative=0'.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klear.io import check_outputs, write_atomic
from klear.rewards.rows import LineError, decode_line, dump_row, has_deep, parse_row

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
    s.add_argument("--force", action="store_true", help="replace --output if it already exists")


@dataclass
class InputRow:
    """One row to score: where it came from, its content, and what reading it had to work around."""

    lineno: int
    row: dict[str, Any]
    repaired: bool = False  # invalid UTF-8 replaced by U+FFFD
    unreadable_truth: bool = False  # reward_model nested too deep to decode: flagged, not scored

    @property
    def responses(self) -> list[str]:
        return [self.row["response"]] if "response" in self.row else self.row["responses"]


def read_rows(path: Path, reward_cfg: Any) -> tuple[list[InputRow], list[str]]:
    """Parse and check every line: ([InputRow], ["FILE:LINE: problem", ...]).

    No content stops the reading (klear.rewards.rows): invalid UTF-8 is replaced and remembered, a
    row too deep to decode keeps its undecodable members as raw text.
    """
    from klear.rewards.registry import RowError, ground_truth, reward_path

    rows: list[InputRow] = []
    errors: list[str] = []
    with path.open("rb") as f:
        for lineno, data in enumerate(f, start=1):
            line, repaired = decode_line(data)
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = parse_row(line)
            except LineError as exc:
                errors.append(f"{where}: {exc}")
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
            deep = has_deep(row)
            try:
                reward_path(row, reward_cfg, lineno)
                if not deep:
                    ground_truth(row, lineno)
            except RowError as exc:
                errors.append(f"{where}: {exc.reason}")
                continue
            rows.append(InputRow(lineno, row, repaired, deep))
    return rows, errors


def _unreadable_result(item: InputRow, reward_cfg: Any) -> Any:
    from klear.rewards.registry import failure_score, reward_path
    from klear.types import RewardResult

    return RewardResult(
        score=failure_score(reward_path(item.row, reward_cfg), reward_cfg),
        correct=False,
        flags=("error",),
        detail="reward_model nested deeper than the JSON reader can decode: not scored",
    )


def _original_lines(path: Path, linenos: set[int]) -> dict[int, str]:
    """The text of the given lines of ``path`` (for rows too deep to re-encode)."""
    found: dict[int, str] = {}
    if not linenos:
        return found
    with path.open("rb") as f:
        for lineno, data in enumerate(f, start=1):
            if lineno in linenos:
                found[lineno] = decode_line(data)[0]
    return found


def write_rows(path: Path, src: Path, rows: list[InputRow], results: list[Any]) -> None:
    """Each input row plus its ``reward`` / ``rewards``, written atomically; no content can fail it."""
    lines: list[str | None] = []
    retry: set[int] = set()
    cursor = 0
    extras = []
    for item in rows:
        k = len(item.responses)
        got = [r.to_dict() for r in results[cursor : cursor + k]]
        cursor += k
        if item.repaired:
            for r in got:
                note = "input line had invalid UTF-8 (replaced by U+FFFD)"
                r["detail"] = f"{r['detail']}; {note}" if r["detail"] else note
        extra = {"reward": got[0]} if "response" in item.row else {"rewards": got}
        extras.append(extra)
        try:
            lines.append(dump_row(item.row, extra))
        except RecursionError:
            lines.append(None)
            retry.add(item.lineno)
    originals = _original_lines(src, retry)
    for i, item in enumerate(rows):
        if lines[i] is None:
            lines[i] = dump_row(item.row, extras[i], originals[item.lineno])
    write_atomic(path, [line for line in lines if line is not None])


def run(args: argparse.Namespace) -> int:
    from klear.config import load_reward_config
    from klear.data.schema import DataError
    from klear.progress import progress
    from klear.rewards.lifecycle import signals_exit
    from klear.rewards.pool import RewardPool, reward_metrics

    reward_cfg = load_reward_config(args.config, args.overrides)
    src = Path(args.input)
    if not src.is_file():
        print(f"klear: error: input {str(src)!r} not found", file=sys.stderr)
        return 2
    check_outputs([args.output], inputs=[src], force=args.force)
    rows, errors = read_rows(src, reward_cfg)
    if not rows and not errors:
        raise DataError(f"{src}: no rows to score")
    if errors:
        for e in errors[:MAX_REPORTED_ERRORS]:
            print(f"klear: error: {e}", file=sys.stderr)
        if len(errors) > MAX_REPORTED_ERRORS:
            print(f"klear: error: ... and {len(errors) - MAX_REPORTED_ERRORS} more bad rows", file=sys.stderr)
        print(f"klear: nothing written; {len(errors)} bad row(s) in {src}", file=sys.stderr)
        return 2

    # one item per response, remembering which row it came from; rows whose ground truth could not be
    # decoded are flagged here, not sent to the pool
    items_rows: list[dict[str, Any]] = []
    items_responses: list[str] = []
    for item in rows:
        if not item.unreadable_truth:
            items_rows.extend([item.row] * len(item.responses))
            items_responses.extend(item.responses)
    repaired = [item.lineno for item in rows if item.repaired]
    for lineno in repaired[:MAX_REPORTED_ERRORS]:
        print(f"klear: warning: {src}:{lineno}: invalid UTF-8 replaced by U+FFFD", file=sys.stderr)

    start = time.monotonic()
    with (
        signals_exit(),
        progress(not args.no_progress) as bar,
        RewardPool(reward_cfg) as pool,
    ):
        task = bar.add_task("scoring", total=len(items_responses))
        results = pool.score(
            items_rows, items_responses, progress=lambda done, total: bar.update(task, completed=done)
        )
        restarts = pool.last_metrics.get("worker_restarts", 0.0)
    seconds = time.monotonic() - start

    scored = iter(results)
    results = [
        r
        for item in rows
        for r in (
            [_unreadable_result(item, reward_cfg)] * len(item.responses)
            if item.unreadable_truth
            else [next(scored) for _ in item.responses]
        )
    ]
    write_rows(Path(args.output), src, rows, results)

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
