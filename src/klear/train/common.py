"""Pieces both trainers share: optimizer, LR schedule, packed forward and token log-probs.

Kept as plain functions so each trainer's loop stays readable top to bottom and so
the RL trainer computes log-probs exactly the way SFT computes its loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from klear.config import OptimConfig

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
