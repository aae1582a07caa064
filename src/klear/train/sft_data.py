"""SFT data: chats -> token ids with an assistant mask, and the packed steps and micro-batches of a run.

Every rank of a multi-rank run computes the same plan (:func:`plan_steps`, :func:`micro_batches`)
and takes its share of each step's micro-batches (:func:`rank_share`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from klear.config import ConfigError, DataConfig
from klear.train.common import PackedBatch, pack_rows

# ---------------------------------------------------------------------------------------------
# Data: chats -> token ids + assistant mask
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One tokenised chat: ``loss_mask[t]`` is 1 where token t is trained on (assistant tokens)."""

    input_ids: list[int]
    loss_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]], end_ids: Sequence[int]) -> Example:
    """Token ids of a chat and the mask of its assistant tokens.

    Each assistant turn is the text the template adds between "the chat so far with the
    generation prompt" and "the chat including this turn". Pieces are tokenised
    separately, so the context before each turn tokenises exactly like a rollout prompt.
    Within a turn, tokens after the last end-of-turn token (``end_ids``, e.g. the
    template's newline after ``<|im_end|>``) are context, not targets: generation stops
    at the end-of-turn token.
    """
    ids: list[int] = []
    mask: list[int] = []
    done = ""  # rendered text already tokenised

    def add(text: str, train: bool) -> None:
        toks = tokenizer.encode(text, add_special_tokens=False)
        m = [0] * len(toks)
        if train:
            last_end = max((k for k, t in enumerate(toks) if t in end_ids), default=len(toks) - 1)
            m[: last_end + 1] = [1] * (last_end + 1)
        ids.extend(toks)
        mask.extend(m)

    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                "the chat template does not render this chat incrementally (an earlier turn changes when "
                f"turn {i} is added); SFT needs each prefix of the chat to render as a prefix of the whole"
            )
        add(prompt[len(done) :], train=False)
        add(full[len(prompt) :], train=True)
        done = full
    rest = _render(tokenizer, messages, generation_prompt=False)[len(done) :]
    if rest:
        add(rest, train=False)
    return Example(ids, mask)


def chat_of_row(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The chat to train on from one data row: ``messages``, an RL row with
    ``extra_info.solution``, or plain ``prompt``/``response`` strings."""
    from klear.tasks import sft_messages

    if "messages" in row:
        return list(row["messages"])
    if isinstance(row.get("prompt"), list) and "solution" in (row.get("extra_info") or {}):
        return sft_messages(row)
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    raise ValueError(
        f"{where}: cannot find a chat; expected 'messages', an RL row with extra_info.solution, "
        f"or 'prompt' and 'response' strings (keys: {sorted(row)})"
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (list) or .parquet file; DataError naming file and line (or "no rows")."""
    from klear.data.schema import DataError, iter_records

    rows = []
    for where, record in iter_records(path):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {where}: expected an object, got {type(record).__name__}")
        rows.append(record)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def load_rows(data: DataConfig, split: str) -> list[dict[str, Any]]:
    """Training (``split="train"``) or held-out (``"test"``) rows from the built-in task or files."""
    from klear.tasks import task_rows

    if data.task is not None:
        n = data.train_size if split == "train" else data.val_size
        return task_rows(data.task, split, n, seed=data.task_seed)  # type: ignore[arg-type]
    files = data.train_files if split == "train" else data.val_files
    if split == "train" and not files:
        raise ConfigError("no training data: set data.task (a built-in task) or data.train_files")
    return [row for f in files for row in read_rows(f)]


def iter_examples(
    tokenizer: Any,
    rows: Iterable[dict[str, Any]],
    max_length: int,
    end_ids: Sequence[int],
    stats: dict[str, int],
) -> Iterator[Example]:
    """Tokenise rows one by one; truncate to ``max_length``; skip examples left with nothing to
    learn. Counts ``truncated_examples`` and ``dropped_examples`` into ``stats``."""
    stats.setdefault("truncated_examples", 0)
    stats.setdefault("dropped_examples", 0)
    for i, row in enumerate(rows):
        ex = tokenize_chat(tokenizer, chat_of_row(row, f"row {i}"), end_ids)
        if len(ex) > max_length:
            stats["truncated_examples"] += 1
            ex = Example(ex.input_ids[:max_length], ex.loss_mask[:max_length])
        if sum(ex.loss_mask[1:]) == 0:  # the first token is never a target
            stats["dropped_examples"] += 1
            continue
        yield ex


def build_examples(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int, end_ids: Sequence[int]):
    """All examples of ``rows`` in memory (:func:`iter_examples`), and the statistics."""
    stats: dict[str, int] = {}
    return list(iter_examples(tokenizer, rows, max_length, end_ids, stats)), stats


# ---------------------------------------------------------------------------------------------
# Batching: packed optimizer steps and micro-batches
# ---------------------------------------------------------------------------------------------


def plan_steps(lengths: Sequence[int], epochs: float, batch_tokens: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: each epoch reshuffled (seeded), packed greedily
    into steps of at most ``batch_tokens`` tokens; a fractional last epoch takes a prefix."""
    n_total = round(epochs * len(lengths))
    stream: list[int] = []
    for epoch in range(math.ceil(epochs)):
        order = list(range(len(lengths)))
        random.Random(f"sft:{seed}:{epoch}").shuffle(order)
        stream.extend(order)
    steps: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for i in stream[:n_total]:
        if cur and cur_tokens + lengths[i] > batch_tokens:
            steps.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += lengths[i]
    if cur:
        steps.append(cur)
    return steps


def micro_batches(
    examples: Sequence[Example], indices: Sequence[int], micro_tokens: int
) -> Iterator[list[Example]]:
    cur: list[Example] = []
    size = 0
    for i in indices:
        ex = examples[i]
        if cur and size + len(ex) > micro_tokens:
            yield cur
            cur, size = [], 0
        cur.append(ex)
        size += len(ex)
    if cur:
        yield cur


def packed_batch(batch: Sequence[Example], row_length: int, pad_id: int) -> tuple[PackedBatch, torch.Tensor]:
    """Packed rows of a micro-batch and its target mask [R, L]: target[r, t] says whether the
    prediction of the token at t+1 (same example) is trained on."""
    packed = pack_rows([ex.input_ids for ex in batch], row_length, pad_id)
    target = packed.scatter([[*ex.loss_mask[1:], 0] for ex in batch])
    return packed, target


def rank_share(plan: Sequence[list[Example]], rank: int, world: int) -> tuple[list[list[Example]], int]:
    """This rank's micro-batches of a step (strided over the step's plan) and how many passes the
    busiest rank runs (sharded ranks run that many, padding with idle passes: each pass is collective)."""
    return list(plan[rank::world]), math.ceil(len(plan) / world)
