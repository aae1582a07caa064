"""From rollouts to tensors: padded micro-batches and per-token log-probs of the response tokens.

Sequences are ``prompt_ids + response_ids`` exactly as sampled (nothing is
re-tokenised), right-padded per micro-batch, sorted by length so padding stays
small (RL responses of one step have similar lengths; SFT, with very unequal
examples, packs them instead: ``klear.train.common.pack_rows``). Log-probs come
back response-aligned, ``[B, R_max]`` with a mask, which is the shape every loss
takes; only the response positions' logits are normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from klear.types import Rollout


@dataclass
class SeqBatch:
    """A right-padded micro-batch: ``input_ids``/``attention_mask`` ``[B, L]``; response slices per row."""

    input_ids: Tensor
    attention_mask: Tensor
    resp_start: Tensor  # [B] index of the first response token in input_ids
    resp_len: Tensor  # [B]

    @property
    def response_mask(self) -> Tensor:
        r_max = int(self.resp_len.max()) if self.resp_len.numel() else 0
        return (torch.arange(r_max)[None, :] < self.resp_len[:, None]).float()


def make_batch(rollouts: Sequence[Rollout], pad_id: int) -> SeqBatch:
    seqs = [r.prompt_ids + r.response_ids for r in rollouts]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
    return SeqBatch(
        input_ids=ids,
        attention_mask=att,
        resp_start=torch.tensor([len(r.prompt_ids) for r in rollouts]),
        resp_len=torch.tensor([len(r.response_ids) for r in rollouts]),
    )


def micro_batches(rollouts: Sequence[Rollout], token_budget: int) -> list[list[int]]:
    """Indices into ``rollouts`` grouped so that ``rows * longest <= token_budget``.

    A sequence longer than the budget is a micro-batch of its own, never grouped with
    another (:func:`over_budget` counts them; the learner reports ``actor/over_budget_seqs``).

    Sorted by length first, so padding is small; the order does not change the
    loss (the normaliser is global), only the arithmetic's grouping.
    """
    order = sorted(
        range(len(rollouts)), key=lambda i: len(rollouts[i].prompt_ids) + len(rollouts[i].response_ids)
    )
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = len(rollouts[i].prompt_ids) + len(rollouts[i].response_ids)
        if cur and (len(cur) + 1) * max(longest, n) > token_budget:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def over_budget(rollouts: Sequence[Rollout], token_budget: int) -> int:
    """How many of ``rollouts`` are longer than ``token_budget`` (each is a micro-batch of its own)."""
    return sum(len(r.prompt_ids) + len(r.response_ids) > token_budget for r in rollouts)


def response_logprobs(
    model: torch.nn.Module,
    batch: SeqBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = 1024,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, R_max]`` of each response token under ``model`` (logits / temperature).

    The trainer's log-probs use the sampling temperature, as the sampler did, so
    that the importance ratio compares like with like. Entropy (same shape) is
    returned without gradient, for the metrics. ``chunk_tokens > 0``: the LM head runs
    only at the positions that predict response tokens, ``chunk_tokens`` of them at a time
    (``klear.models.logprobs``); 0: the full ``[B, L, V]`` logits (the reference path).
    """
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    r_max = int(batch.resp_len.max())
    # positions that predict response token j of row b: resp_start[b] - 1 + j
    pos = (
        (batch.resp_start[:, None] - 1 + torch.arange(r_max)[None, :]).clamp(max=ids.shape[1] - 2).to(device)
    )
    mask = batch.response_mask.to(device)
    temp = temperature if temperature > 0 else 1.0
    inputs = {"input_ids": ids, "attention_mask": batch.attention_mask.to(device)}
    if chunk_tokens > 0:
        from klear.models.logprobs import model_token_logprobs

        rows, cols = mask.nonzero(as_tuple=True)
        at = pos[rows, cols]
        flat_logp, flat_ent = model_token_logprobs(
            model, inputs, (rows, at), ids[rows, at + 1], chunk_tokens, temp, with_entropy
        )
        logp = torch.zeros(mask.shape, dtype=torch.float32, device=device).index_put((rows, cols), flat_logp)
        entropy = None
        if flat_ent is not None:
            entropy = torch.zeros_like(mask).index_put((rows, cols), flat_ent.detach())
        return logp, entropy
    logits = model(**inputs, use_cache=False).logits
    pred = logits.gather(1, pos[:, :, None].expand(-1, -1, logits.shape[-1])).float()
    if temp != 1.0:
        pred = pred / temp
    # log p(target) = logit[target] - logsumexp(logits): no vocabulary-sized log-softmax kept for backward
    lse = torch.logsumexp(pred, dim=-1)
    targets = ids.gather(1, pos + 1)
    logp = pred.gather(-1, targets[:, :, None]).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = lse - (torch.softmax(pred, dim=-1) * pred).sum(-1)
    return logp * mask, (entropy * mask if entropy is not None else None)
