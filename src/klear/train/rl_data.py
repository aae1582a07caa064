"""The RL trainer's prompt rows: a built-in task's split or the recipe's files, each with where it came
from (for error messages), fitted to ``data.max_prompt_length`` per ``data.truncation``."""

from __future__ import annotations

from typing import Any

from klear.config import ConfigError, DataConfig
from klear.data.prompts import PromptStats, fit_prompts


def rl_rows(cfg: DataConfig, split: str) -> list[dict[str, Any]]:
    """RL prompt rows: the built-in task's ``train``/``test`` split, or ``train_files``/``val_files``."""
    return located_rows(cfg, split)[0]


def located_rows(cfg: DataConfig, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    """RL prompt rows and where each came from (``FILE: line N``; ``task NAME SPLIT row N``)."""
    if cfg.task:
        from klear.tasks import task_rows

        rows = task_rows(cfg.task, split, cfg.train_size if split == "train" else cfg.val_size, cfg.task_seed)
        return rows, [f"task {cfg.task} {split} row {i + 1}" for i in range(len(rows))]
    files = cfg.train_files if split == "train" else cfg.val_files
    if split == "train" and not files:
        raise ConfigError("data: set data.task (a built-in task) or data.train_files")
    from klear.data.schema import DataError, iter_rows

    rows, where = [], []
    for f in files:
        found = 0
        for loc, row in iter_rows(f, "rl"):
            rows.append(row.to_dict())
            where.append(f"{f}: {loc}")
            found += 1
        if not found:
            raise DataError(f"{f}: no rows")
    return rows, where


def fit_rows(
    located: tuple[list[dict[str, Any]], list[str]], cfg: DataConfig, tokenizer: Any
) -> tuple[list[dict[str, Any]], PromptStats]:
    """:func:`located_rows`' rows with ``data.max_prompt_length`` applied per ``data.truncation``."""
    rows, where = located
    return fit_prompts(rows, tokenizer, cfg.max_prompt_length, cfg.truncation, where)
