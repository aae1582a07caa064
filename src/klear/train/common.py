"""Pieces both trainers share: model loading, precision, optimizer, LR schedule, packed forward.

Kept as plain functions so each trainer's loop stays readable top to bottom and so
the RL trainer computes log-probs exactly the way SFT computes its loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from klear.config import ModelConfig, OptimConfig

# ---------------------------------------------------------------------------------------------
# Device, precision, model
# ---------------------------------------------------------------------------------------------


def quiet_transformers() -> None:
    """Our own progress output replaces transformers' per-load progress bars and info logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def precision(model: ModelConfig | str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(master weight dtype, autocast dtype or None) for the ``model`` config section on ``device``.

    ``model.dtype`` is what the weights and AdamW state are held in (auto: float32);
    ``model.compute_dtype`` what the arithmetic runs in (auto: bfloat16 on a CUDA GPU that
    has it when ``model.dtype`` is auto -- the usual mixed precision, AdamW updates stay
    exact -- else ``model.dtype``; on CPU plain float32 is faster than emulated bfloat16).
    Autocast is used when the two differ. A bare string is read as ``model.dtype``.
    """
    cfg = ModelConfig(tiny=True, dtype=model) if isinstance(model, str) else model
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    weight = _DTYPES[cfg.weight_dtype()]
    compute = _DTYPES[cfg.compute_dtype_on(cuda_bf16)]
    return weight, (compute if compute != weight else None)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def resolve_model_dir(cfg: ModelConfig, out_dir: str | Path, seed: int) -> Path:
    """The HF directory to start from: ``model.path``, or the tiny model built under ``out_dir/init``."""
    if cfg.path is not None:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path = {str(path)!r}: no config.json there; expected a local Hugging Face model directory"
            )
        return path
    from klear.models.tiny import build_tiny_model

    return build_tiny_model(Path(out_dir) / "init", seed=seed)


def load_model(path: str | Path, cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Load (model, tokenizer) from a local HF directory, in the weight dtype ``cfg.dtype`` asks for."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    weight_dtype, _ = precision(cfg, device)
    config = AutoConfig.from_pretrained(path)
    if cfg.yarn_factor is not None and cfg.yarn_original_max_position is not None:
        from klear.models.yarn import apply_yarn

        config = apply_yarn(config, cfg.yarn_factor, cfg.yarn_original_max_position)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=weight_dtype).to(device)
    if cfg.gradient_checkpointing:  # non-reentrant: works under no_grad, with FSDP2 and unused inputs
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(model: torch.nn.Module, tokenizer: Any, out: str | Path) -> Path:
    """Write a plain HF directory (config, safetensors, generation config, tokenizer)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps`` (reaching the full lr at step warmup_steps - 1),
    then constant, or cosine from 1 down to ``min_lr_ratio`` at the last step
    (the paper's SFT: 8e-5 cosine to 4e-5, i.e. min_lr_ratio 0.5).
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(total_steps - cfg.warmup_steps - 1, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Packed, padding-free forward
# ---------------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Sequences packed into rows without attention padding: input_ids / position_ids [R, L].

    Positions restart at 0 at each sequence; with no attention mask and no cache,
    transformers (>= 4.53) reads those restarts as sequence boundaries and attends
    block-diagonally (tested against separate forwards). The tail of a row that no
    sequence fills holds ``pad_id`` tokens forming a segment of their own, which nothing
    else attends to; masks built with ``scatter`` are 0 there.
    spans[i] = (row, start, length) of sequence i.
    """

    input_ids: Tensor
    position_ids: Tensor
    spans: list[tuple[int, int, int]]

    def scatter(self, values: Sequence[Sequence[float]], fill: float = 0.0) -> Tensor:
        """Per-sequence per-token values placed in the [R, L] layout (``fill`` elsewhere), float32."""
        out = torch.full(self.input_ids.shape, fill, dtype=torch.float32)
        for (row, start, length), v in zip(self.spans, values, strict=True):
            out[row, start : start + length] = torch.as_tensor(v, dtype=torch.float32)
        return out

    def gather(self, x: Tensor) -> list[Tensor]:
        """The inverse of ``scatter``: per-sequence slices of an [R, L] tensor."""
        return [x[row, start : start + length] for row, start, length in self.spans]

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.spans)


def pack_rows(sequences: Sequence[Sequence[int]], row_length: int, pad_id: int) -> PackedBatch:
    """First-fit-decreasing packing of ``sequences`` into rows of at most ``row_length`` tokens
    (a longer sequence gets a row of its own). One long row would cost attention over the
    whole row squared on kernels without variable-length support (CPU, SDPA); rows of
    ``row_length`` bound that cost while wasting almost no compute on padding."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    rows: list[list[int]] = []
    fill: list[int] = []
    place: dict[int, tuple[int, int]] = {}
    for i in order:
        n = len(sequences[i])
        row = next((r for r, used in enumerate(fill) if used + n <= row_length), None)
        if row is None:
            rows.append([])
            fill.append(0)
            row = len(rows) - 1
        place[i] = (row, fill[row])
        rows[row].append(i)
        fill[row] += n
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, members in enumerate(rows):
        for i in members:
            _, start = place[i]
            n = len(sequences[i])
            ids[r, start : start + n] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            pos[r, start : start + n] = torch.arange(n)
        pos[r, fill[r] :] = torch.arange(width - fill[r])  # padding: a segment of its own
    spans = [(place[i][0], place[i][1], len(sequences[i])) for i in range(len(sequences))]
    return PackedBatch(ids, pos, spans)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    temperature: float = 1.0,
    *,
    chunk_tokens: int = 0,
    mask: Tensor | None = None,
) -> Tensor:
    """Log-prob of each next token of packed rows: out[:, t] = log p(input_ids[:, t+1] | ...).

    input_ids, position_ids: [R, T] (see ``pack_rows``). Returns [R, T] float32; the last
    column, the last token of each sequence (which "predicts" across a boundary) and the
    padding are meaningless and must be masked by the caller. ``use_cache=False`` matters: a cache would disable
    the packed-sequence attention. ``chunk_tokens > 0``: the LM head runs only where
    ``mask`` (``[R, T]``, default everywhere) is nonzero, that many tokens at a time
    (``klear.models.logprobs``); the other entries are 0.
    """
    targets = torch.roll(input_ids, shifts=-1, dims=-1)
    if chunk_tokens > 0:
        from klear.models.logprobs import model_token_logprobs

        where = mask != 0 if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        rows, cols = where.nonzero(as_tuple=True)
        inputs = {"input_ids": input_ids, "position_ids": position_ids}
        flat, _ = model_token_logprobs(
            model, inputs, (rows, cols), targets[rows, cols], chunk_tokens, temperature
        )
        return torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device).index_put(
            (rows, cols), flat
        )
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return -nll.view_as(input_ids)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` as a scheduler stepped once per optimizer step (SFT) or per RL step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
