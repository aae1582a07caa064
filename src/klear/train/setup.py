"""What every trainer sets up the same way: model + tokenizer, optimizer, LR schedule, prompt rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from klear.config import DataConfig, ModelConfig, OptimConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, float32 otherwise (CPU bf16 is slow and imprecise)."""
    if name != "auto":
        return DTYPES[name]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model_and_tokenizer(
    cfg: ModelConfig, out_dir: str | Path, init_path: str | Path | None = None, seed: int = 0
) -> tuple[torch.nn.Module, Any]:
    """Load ``init_path`` or ``cfg.path`` (a local HF directory), or build the tiny model under ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(init_path) if init_path is not None else (Path(cfg.path) if cfg.path else None)
    if path is None:
        from klear.tasks.tiny import build_tiny_model

        path = build_tiny_model(Path(out_dir) / "tiny-init", seed=seed)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model directory {str(path)!r} has no config.json (model.path must be a local HF directory)"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(cfg.dtype))
    if cfg.yarn_factor is not None:
        from klear.eval.yarn import apply_yarn

        apply_yarn(model.config, cfg.yarn_factor, cfg.yarn_original_max_position)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), AutoTokenizer.from_pretrained(path)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms (the usual split)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` after ``step`` scheduler steps: linear warmup, then constant or cosine to min."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total_steps))


def train_and_val_rows(cfg: DataConfig, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """RL prompt rows: the built-in task's train/test splits, or the configured files."""
    if cfg.task:
        from klear.tasks import task_rows

        return task_rows(cfg.task, "train", cfg.task_train_size, seed), task_rows(
            cfg.task, "test", cfg.task_val_size, seed
        )
    if not cfg.train_files:
        raise ValueError("data: set data.task (a built-in task) or data.train_files")
    from klear.data.schema import load_rl_rows

    train = [r.to_dict() for f in cfg.train_files for r in load_rl_rows(f)]
    val = [r.to_dict() for f in cfg.val_files for r in load_rl_rows(f)]
    return train, val
