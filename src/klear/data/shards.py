"""Resumable, atomic processing of large inputs: shards in a work directory, outputs written whole.

Every data command runs its per-row work through :func:`run_sharded`:

- the input is cut into shards of ``shard_size`` items, in order;
- each finished shard's results go to ``WORK/shard-NNNNN.jsonl`` (temp file + rename) under a
  header holding the shard's *key*: a digest of the command's parameters and the shard's own
  input records. A rerun reuses a shard whose file carries the same key and recomputes the rest,
  so an interrupted run (Ctrl-C, a crash, a killed job) loses at most the shard in flight, and a
  changed input or setting is never served a stale result;
- results are routed to named destinations (``kept``, ``dropped``, ...) and each destination file
  appears only when the whole run succeeded (:class:`AtomicOutputs`); a failed run leaves the
  previous outputs, if any, untouched.

The work directory defaults to ``OUTPUT.work`` beside the first output and is removed after a
successful run (``keep=True`` keeps it).

Shard seeds come from (seed, shard index), never from a shared generator, so a resumed run
produces exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klear.data.schema import DataError, write_rows
from klear.io import atomic_open

#: A shard's result: (destination name, JSON-serialisable record) pairs, in output order.
Routed = list[tuple[str, dict[str, Any]]]


def digest(value: Any) -> str:
    """A stable hex digest of a JSON-serialisable value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def shard_seed(seed: int, index: int) -> int:
    """The seed of shard ``index``: independent of which shards were already done."""
    return int(digest(["shard-seed", seed, index])[:8], 16)


def default_work_dir(output: str | Path) -> Path:
    """``OUTPUT.work`` beside the output, so a rerun of the same command finds it."""
    output = Path(output)
    return output.parent / f"{output.name}.work"


@dataclass
class ShardStats:
    """What a sharded run did: shards computed now vs reused from the work directory."""

    shards: int = 0
    computed: int = 0
    reused: int = 0
    items: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # destination -> records


def _read_shard(path: Path, key: str) -> Routed | None:
    """A finished shard's results, or None when absent, unreadable or made for another key."""
    try:
        with path.open(encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("key") != key:
                return None
            out = [tuple(json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, TypeError):
        return None
    if len(out) != header.get("count"):
        return None
    return out  # type: ignore[return-value]


def _write_shard(path: Path, key: str, routed: Routed) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps({"key": key, "count": len(routed)}) + "\n")
        for dest, record in routed:
            f.write(json.dumps([dest, record], ensure_ascii=False) + "\n")


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_sharded(
    items: Iterable[Any],
    process: Callable[[list[Any], int], Routed],
    *,
    work_dir: str | Path,
    params: Any,
    shard_size: int,
    key_of: Callable[[Any], Any] = lambda item: item,
    progress: Callable[[int], None] | None = None,
    stats: ShardStats | None = None,
) -> Iterator[Routed]:
    """Results of ``process(shard_items, shard_index)`` for each shard, computed or reused, in order.

    ``key_of(item)`` is the JSON-serialisable part of an item that determines its result (default:
    the item itself); with ``params`` it forms the shard key. ``progress(n)`` is told how many
    items each shard covered, as it finishes.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size = {shard_size}: must be >= 1")
    work = Path(work_dir)
    stats = stats if stats is not None else ShardStats()
    params_digest = digest(params)
    for index, chunk in enumerate(_chunks(items, shard_size)):
        key = digest([params_digest, index, [key_of(item) for item in chunk]])
        path = work / f"shard-{index:05d}.jsonl"
        routed = _read_shard(path, key)
        if routed is None:
            routed = process(chunk, index)
            _write_shard(path, key, routed)
            stats.computed += 1
        else:
            stats.reused += 1
        stats.shards += 1
        stats.items += len(chunk)
        for dest, _ in routed:
            stats.counts[dest] = stats.counts.get(dest, 0) + 1
        if progress is not None:
            progress(len(chunk))
        yield routed


class AtomicOutputs:
    """Destination name -> file, all written only on success: jsonl streams to temp files that are
    renamed at the end; json and parquet are collected and written at the end. Destinations mapped
    to None are discarded."""

    def __init__(self, paths: dict[str, str | Path | None]) -> None:
        self.paths = {name: Path(p) for name, p in paths.items() if p is not None}
        self._tmp: dict[str, tuple[Path, Any]] = {}
        self._held: dict[str, list[dict[str, Any]]] = {}
        self.counts = dict.fromkeys(self.paths, 0)

    def __enter__(self) -> AtomicOutputs:
        for name, path in self.paths.items():
            suffix = path.suffix.lower()
            if suffix in (".jsonl", ".ndjson"):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                self._tmp[name] = (Path(tmp), os.fdopen(fd, "w", encoding="utf-8"))
            elif suffix in (".json", ".parquet"):
                self._held[name] = []
            else:
                self._discard()
                raise DataError(f"{path}: unsupported output type {suffix!r}; use .jsonl, .json or .parquet")
        return self

    def write(self, dest: str, record: dict[str, Any]) -> None:
        if dest not in self.paths:
            return
        self.counts[dest] += 1
        if dest in self._tmp:
            self._tmp[dest][1].write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self._held[dest].append(record)

    def write_all(self, routed: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for dest, record in routed:
            self.write(dest, record)

    def _discard(self) -> None:
        for tmp, f in self._tmp.values():
            f.close()
            tmp.unlink(missing_ok=True)
        self._tmp.clear()

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            for _, f in self._tmp.values():
                f.flush()
                os.fsync(f.fileno())
                f.close()
            for name, records in self._held.items():
                write_rows(self.paths[name], records)
            for name, (tmp, _) in self._tmp.items():
                os.replace(tmp, self.paths[name])
            self._tmp.clear()
        except BaseException:
            self._discard()
            raise


def finish_work_dir(work_dir: str | Path, keep: bool) -> None:
    """Remove the work directory after a successful run (unless asked to keep it)."""
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
