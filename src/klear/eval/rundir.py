"""An evaluation's run directory: the samples on disk (appended per problem, read back for a
resume), and ``run.json``, the settings its samples were drawn with, so that a resume under other
settings is refused instead of mixing two runs' samples."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klear.errors import KlearError
from klear.io import write_atomic

if TYPE_CHECKING:
    from klear.eval.benchmarks import Problem
    from klear.eval.runner import GenerationSettings

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
RUN_FILE = "run.json"


class EvalError(KlearError, ValueError):
    """An evaluation input or run directory that cannot be used; the message says where and why."""


# ----------------------------------------------------------------------------- files


def append_lines(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append one problem's records in one write, then fsync: a crash loses at most that problem."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class SamplesOnDisk:
    """What a ``samples.jsonl`` holds, read for a resume.

    complete: records of problems with all n samples, by problem id (sample order).
    dropped: problem ids whose samples were incomplete (they are regenerated).
    torn_tail: the file ended in a line without a newline (an interrupted write), now discarded.
    """

    complete: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    torn_tail: bool = False


def read_samples_for_resume(path: Path, problems: Sequence[Problem], n: int) -> SamplesOnDisk:
    """Read a run's samples; keep problems whose n samples are all present.

    An incomplete trailing line is what an interrupted append leaves, so it is
    discarded; an unreadable line before the end is not (the file was damaged
    some other way), and is an error naming the line.
    """
    out = SamplesOnDisk()
    if not path.exists():
        return out
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] != b"":
        out.torn_tail = True
    lines = lines[:-1]  # the last piece is "" (file ends with a newline) or the torn tail
    known = {p.id for p in problems}
    by_problem: dict[str, dict[int, dict[str, Any]]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EvalError(
                f"{where}: not a valid sample record ({err}); move the file away to start over"
            ) from None
        if not isinstance(record, dict) or "problem_id" not in record or "sample" not in record:
            raise EvalError(f"{where}: a sample record needs 'problem_id' and 'sample'")
        pid, sample = str(record["problem_id"]), record["sample"]
        if pid not in known:
            # another --limit or benchmark version: kept on disk, ignored here
            continue
        if not isinstance(sample, int) or not 0 <= sample < n:
            raise EvalError(f"{where}: sample index {sample!r} outside 0..{n - 1} for n = {n}")
        slot = by_problem.setdefault(pid, {})
        if sample in slot:
            raise EvalError(f"{where}: problem {pid!r} sample {sample} appears twice")
        slot[sample] = record
    for pid, slot in by_problem.items():
        if len(slot) == n:
            out.complete[pid] = [slot[i] for i in range(n)]
        else:
            out.dropped.append(pid)
    return out


def run_identity(
    benchmark: str, settings: GenerationSettings, identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Everything a run's samples depend on: the benchmark, the caller's identity (model ...) and the settings."""
    return {"benchmark": benchmark, **(identity or {}), **settings.to_dict()}


def prepare_run_dir(out_dir: str | os.PathLike[str], identity: Mapping[str, Any], restart: bool) -> None:
    """Refuse to resume a directory that holds samples drawn with other settings; record the settings.

    The CLI calls this before loading the model, so a mismatch costs nothing;
    :func:`run_eval` calls it again (it is idempotent).
    restart: delete the samples already there instead.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path, samples_path = out_dir / RUN_FILE, out_dir / SAMPLES_FILE
    identity = json.loads(
        json.dumps(dict(identity))
    )  # compared with what run.json read back: tuples as lists
    if restart:
        samples_path.unlink(missing_ok=True)
    elif run_path.exists():
        try:
            previous = json.loads(run_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EvalError(f"{run_path}: not valid JSON ({err.msg}); use restart to start over") from None
        old = previous.get("identity", {})
        diffs = [
            f"{key}: {old.get(key)!r} then, {identity.get(key)!r} now"
            for key in sorted(set(old) | set(identity))
            if old.get(key) != identity.get(key)
        ]
        if diffs:
            raise EvalError(
                f"{out_dir} holds samples drawn with other settings ({'; '.join(diffs)}); "
                "use another output directory, or restart to discard them"
            )
    elif samples_path.exists() and samples_path.stat().st_size > 0:
        raise EvalError(
            f"{samples_path} exists but {run_path} does not, so its settings are unknown; "
            "use another output directory, or restart to discard it"
        )
    write_atomic(run_path, json.dumps({"identity": dict(identity)}, indent=2) + "\n")


def kept_lines(path: Path, disk: SamplesOnDisk) -> str:
    """The file's complete lines, less those of problems whose samples were incomplete."""
    dropped = set(disk.dropped)
    raw = path.read_bytes().split(b"\n")[:-1]
    kept: list[str] = []
    for line in raw:
        if not line.strip():
            continue
        record = json.loads(line)
        if str(record["problem_id"]) not in dropped:
            kept.append(line.decode("utf-8") + "\n")
    return "".join(kept)
