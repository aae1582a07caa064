"""Checks run before any expensive work or any output: a run that fails them leaves nothing behind.

Each raises a :class:`klear.errors.KlearError` subclass whose message names the config key or
option, the file and, for data, the line — the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from klear.config import ConfigError
from klear.data.schema import DataError


def check_out_dir(path: str | Path, key: str = "run.out_dir") -> None:
    """An output directory may exist (a resumed run) but must not be a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}: {str(p)!r} is an existing file, not a directory")
    for parent in p.parents:  # mkdir would fail on a file anywhere above
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key}: {str(parent)!r} (in {str(p)!r}) is a file, not a directory")
            break


def check_model_dir(path: str | Path, key: str = "model.path") -> None:
    """A local Hugging Face model directory: it exists and its config.json names a model type."""
    p = Path(path)
    if not p.is_dir():
        what = "is a file" if p.exists() else "not found"
        raise ConfigError(f"{key}: {str(p)!r} {what}; give a local Hugging Face model directory")
    config = p / "config.json"
    if not config.is_file():
        raise ConfigError(f"{key}: {str(p)!r} has no config.json; is it a Hugging Face model directory?")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}: {config}: not a valid JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ConfigError(f"{key}: {config}: no 'model_type'; transformers cannot tell which model it is")


def check_device(device: str | None, key: str = "--device") -> None:
    """A CUDA device asked for must be visible (torch says so plainly only deep inside a model load)."""
    if not device or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{key} {device}: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    index = device.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"{key} {device}: only {torch.cuda.device_count()} GPU(s) are visible")


def check_files_exist(files: Iterable[str], key: str) -> None:
    """Each named data file exists (cheap; its rows are read, and checked, by the trainer)."""
    for name in files:
        if not Path(name).exists():
            raise DataError(f"{key}: {name}: file not found")


def check_train_run(cfg: Any) -> None:
    """What ``klear rl`` / ``klear sft`` check before the trainer starts; the trainers themselves
    read their data before they create ``run.out_dir`` or load a model."""
    check_out_dir(cfg.run.out_dir)
    if cfg.model.path is not None:
        check_model_dir(cfg.model.path)
    check_files_exist(cfg.data.train_files, "data.train_files")
    check_files_exist(cfg.data.val_files, "data.val_files")
