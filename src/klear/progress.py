"""Progress that a long job shows wherever its output goes.

On a terminal: a rich bar on stderr. Otherwise (nohup, SLURM, CI logs, a pipe): one plain line
every ``interval`` seconds per task (10 s; ``KLEAR_PROGRESS_SECONDS`` sets it),
``label: done/total (pct) rate/s ETA``, and a last line when a task that printed any ends, so a
long job never looks dead in a log file and a quick one prints nothing extra. Both offer the small part of rich's
``Progress`` API the commands use: ``add_task``, ``advance``, ``update``, and the context manager.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    start: float = 0.0
    last_line: float = 0.0  # when the last line was printed; -1 once the final one was
    lines: int = 0
    initial: float = 0.0  # done before this process started (a resumed run): not in the rate
    fields: dict[str, Any] = field(default_factory=dict)


def _duration(secs: float) -> str:
    seconds = round(secs)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """Progress as periodic log lines (see the module docstring)."""

    def __init__(
        self,
        interval: float = 10.0,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval, self.stream, self.clock = interval, stream, clock
        self.tasks: dict[int, _Task] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks.values():
            if task.lines and task.last_line >= 0:  # reported along the way, not yet finished
                self._line(task, final=True)

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, **fields: Any
    ) -> int:
        now = self.clock()
        task_id = len(self.tasks)
        self.tasks[task_id] = _Task(
            description, total, completed, start=now, last_line=now, fields=fields, initial=completed
        )
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = description
        task.fields.update(fields)
        if task.last_line < 0:  # finished
            return
        due = self.clock() - task.last_line >= self.interval
        complete = task.total is not None and task.completed >= task.total
        if complete and (due or task.lines):
            self._line(task, final=True)
        elif due:
            self._line(task)

    def _line(self, task: _Task, final: bool = False) -> None:
        now = self.clock()
        elapsed = max(now - task.start, 1e-9)
        rate = (task.completed - task.initial) / elapsed
        done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
        parts = [f"{task.description}: {done}"]
        if task.total:
            parts.append(f"({100 * task.completed / task.total:.0f}%)")
        parts.append(f"{rate:.3g}/s")
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif task.total and rate > 0:
            parts.append(f"ETA {_duration((task.total - task.completed) / rate)}")
        status = task.fields.get("status")
        if status:
            parts.append(str(status))
        print(" ".join(parts), file=self.stream or sys.stderr, flush=True)
        task.last_line = -1.0 if final else now
        task.lines += 1


def progress(enabled: bool = True, *columns: Any, interval: float = 10.0) -> Any:
    """A rich ``Progress`` on a terminal, a :class:`LineProgress` otherwise, a silent one if disabled.

    ``columns`` are rich columns for the terminal bar (default: description, bar, done/total,
    elapsed, remaining).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    err = Console(stderr=True)
    if enabled and not err.is_terminal:
        env = os.environ.get("KLEAR_PROGRESS_SECONDS")
        try:
            interval = float(env) if env else interval
        except ValueError:
            raise ValueError(f"KLEAR_PROGRESS_SECONDS={env!r}: expected a number of seconds") from None
        return LineProgress(interval)
    columns = columns or (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=err, disable=not enabled)
