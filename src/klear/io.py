"""Atomic file output: a reader (or a resumed run) sees the old file or the whole new one, never half."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is a set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The mode the finished file gets: the replaced file's mode, else what ``open()`` would give."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _publish(tmp: str | Path, path: Path) -> None:
    os.chmod(tmp, _final_mode(path))  # mkstemp makes 0600; a reader expects the usual mode
    os.replace(tmp, path)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """Open a temp file beside ``path`` for text; on success fsync and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str | Iterable[str]) -> None:
    """Write ``text`` (a string or chunks of one) to ``path`` atomically."""
    with atomic_open(path) as f:
        if isinstance(text, str):
            f.write(text)
        else:
            f.writelines(text)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` for a writer that wants a file name (e.g. parquet); renamed on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_outputs(
    paths: Iterable[str | Path | None], inputs: Iterable[str | Path] = (), force: bool = False
) -> None:
    """Before any work: refuse an output that is a directory, is one of the inputs (writing would
    replace it), is named twice, or already exists (unless ``force``). None entries are skipped."""
    from klear.errors import OutputError

    named = [Path(p) for p in paths if p is not None]
    resolved = [p.resolve() for p in named]
    for p in named:
        if p.is_dir():
            raise OutputError(f"{p}: is a directory; give an output file name")
    for src in inputs:
        if Path(src).resolve() in resolved:
            raise OutputError(f"{src}: named as both input and output; writing would replace the input")
    if len(set(resolved)) != len(resolved):
        raise OutputError(f"the same file is named for two outputs: {', '.join(map(str, named))}")
    existing = [str(p) for p in named if p.is_file()]
    if existing and not force:
        raise OutputError(f"{', '.join(existing)}: already exists; pass --force to replace it")
