"""The tokenised SFT set on disk: rank 0 tokenises once, every rank memory-maps the result.

Why: the paper's SFT set is ~1.5M long-CoT chats, ~10^10 tokens. Held as Python lists of ints
(~36 bytes a token) on each of a node's 8 ranks, that is hundreds of GB per rank; even as
int32 arrays it is 40 GB per rank. Here rank 0 writes the token ids and the assistant mask once,
as flat binary files, and every rank maps them read-only: the page cache holds one copy per node,
and a rank touches only the examples of its own micro-batches.

Layout of ``OUT/tokens/``::

    ids.bin      int32, every example's token ids, one after another
    mask.bin     uint8, 1 where the token is trained on (assistant tokens)
    offsets.npy  int64 [n + 1]: example i is [offsets[i], offsets[i + 1])
    targets.npy  int64 [n]: trained tokens of each example (its mask, first token excluded)
    meta.json    the key, the counts and the data statistics; written last

A store is used only when ``meta.json`` exists and its key matches this run's: the data
(built-in task settings, or each file's path, size and modification time), the tokenizer (its
vocabulary, merges, chat template and special tokens), ``trainer.max_length``, the end-of-turn
ids and :data:`FORMAT`. Anything else rebuilds it; an interrupted build, having no
``meta.json``, is rebuilt too. A resumed run therefore skips tokenisation altogether.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from klear.config import DataConfig
from klear.io import write_atomic
from klear.train.sft_data import Example

#: Bumped whenever the rows -> tokens rules change (``tokenize_chat``, ``chat_of_row``).
FORMAT = 1


class TokenStore(Sequence[Example]):
    """The examples of a store, memory-mapped: ``store[i]`` is an :class:`Example` of array views."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.meta: dict[str, Any] = json.loads((self.root / "meta.json").read_text())
        self.offsets = np.load(self.root / "offsets.npy")
        self.targets = np.load(self.root / "targets.npy")
        total = int(self.offsets[-1])
        if total:
            self.ids = np.memmap(self.root / "ids.bin", dtype=np.int32, mode="r", shape=(total,))
            self.mask = np.memmap(self.root / "mask.bin", dtype=np.uint8, mode="r", shape=(total,))
        else:  # np.memmap refuses an empty file
            self.ids, self.mask = np.zeros(0, np.int32), np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Example(self.ids[a:b], self.mask[a:b])  # type: ignore[arg-type]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.meta["stats"])


def data_fingerprint(data: DataConfig) -> dict[str, Any]:
    """What identifies the training rows without reading them: the task's settings, or per file its
    resolved path, size and modification time."""
    if data.task is not None:
        return {"task": data.task, "seed": data.task_seed, "size": data.train_size}
    files = []
    for f in data.train_files:
        st = Path(f).stat()
        files.append({"path": str(Path(f).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {"files": files}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how a chat tokenises."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def store_key(data: DataConfig, tokenizer: Any, max_length: int, end_ids: Sequence[int]) -> str:
    spec = {
        "format": FORMAT,
        "data": data_fingerprint(data),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "end_ids": sorted(int(t) for t in end_ids),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _meta(root: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(root) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def current(root: str | Path, key: str) -> bool:
    """Whether ``root`` holds a complete store built with ``key``."""
    return _meta(root).get("key") == key


def covers(root: str | Path, data: DataConfig) -> bool:
    """Whether ``root`` holds a complete store of these data (tokenised, maybe, with other settings:
    :func:`current` decides). A run that finds one need not read the rows before it knows."""
    return _meta(root).get("data") == data_fingerprint(data)


def build_store(
    root: str | Path,
    key: str,
    examples: Iterable[Example],
    stats: dict[str, int],
    data: dict[str, Any] | None = None,
) -> None:
    """Write ``examples`` as a store at ``root`` (replacing any there), streaming: memory holds one
    example and the offsets. ``stats`` (the data statistics) and ``data`` (the data fingerprint)
    go into ``meta.json``, read once the examples are consumed."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    offsets, targets = [0], []
    with open(root / "ids.bin", "wb") as ids_file, open(root / "mask.bin", "wb") as mask_file:
        for ex in examples:
            ids_file.write(np.asarray(ex.input_ids, dtype=np.int32).tobytes())
            mask_file.write(np.asarray(ex.loss_mask, dtype=np.uint8).tobytes())
            offsets.append(offsets[-1] + len(ex))
            targets.append(int(np.sum(np.asarray(ex.loss_mask[1:], dtype=np.int64))))
    np.save(root / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(root / "targets.npy", np.asarray(targets, dtype=np.int64))
    meta = {"key": key, "data": data, "examples": len(targets), "tokens": offsets[-1], "stats": dict(stats)}
    write_atomic(root / "meta.json", json.dumps(meta, indent=1) + "\n")
