"""Checkpoints that resume exactly: model (a plain HF directory), optimizer, scheduler, RNG, data position.

Layout::

    OUT/checkpoints/step_000010/model/           config.json, model.safetensors, tokenizer files
    OUT/checkpoints/step_000010/trainer_state.pt optimizer, scheduler, RNG states, step, data position
    OUT/checkpoints/latest                       "step_000010"

A checkpoint is written to a temporary directory and renamed into place, and
``latest`` is replaced atomically, so a run killed at any instant (SIGKILL
included) leaves either the previous or the new checkpoint, never half of one.
The ``model/`` directory loads as is with transformers (and vLLM).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from klear.io import write_atomic


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint saved on a node with more GPUs than this one (it resumes on any rank count)
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    extra: dict[str, Any] | None = None,
    *,
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/step_{step}`` atomically and point ``root/latest`` at it; return its path.

    ``model_state`` / ``optimizer_state`` replace ``model.state_dict()`` / ``optimizer.state_dict()``
    (a sharded learner passes the gathered full states).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=model_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        state = {
            "step": step,
            "optimizer": optimizer_state
            if optimizer_state is not None
            else (optimizer.state_dict() if optimizer is not None else None),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": extra or {},
        }
        torch.save(state, tmp / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(root / "latest", name + "\n")
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``root/latest`` names, or None when there is none."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which has no trainer_state.pt")
    return path
