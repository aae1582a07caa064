"""From rollouts to tensors: micro-batches and per-token log-probs of the response tokens.

Sequences are ``prompt_ids + response_ids`` exactly as sampled (nothing is
re-tokenised). A micro-batch is either *padded* (the default): one right-padded row per
sequence with an attention mask, or *packed* (``trainer.pack_sequences``): whole
sequences concatenated into rows as wide as the micro-batch's longest, position ids
restarting at 0 for each, which transformers reads as sequence boundaries
(block-diagonal attention, as SFT does: ``klear.train.common.pack_rows``), so only row
tails are padding. Log-probs come back response-aligned either way, ``[B, R_max]`` with
a mask, which is the shape every loss takes; only the response positions' logits are
normalised. The two layouts give the same values (tested to 1e-5 in float32).

Budgets: ``trainer.micro_batch_tokens`` bounds the tokens of each micro-batch's tensor,
padding included (``rows x longest`` padded, ``rows x width`` packed): what one
forward/backward holds activations for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from klear.types import Rollout


@dataclass
class SeqBatch:
    """The tensors of one micro-batch of B sequences laid out in R rows of length L.

    Padded (R = B): ``input_ids``/``attention_mask`` ``[B, L]``, sequence b in row b.
    Packed (R = 1): ``input_ids``/``position_ids`` ``[1, L]``, no attention mask; sequence
    b starts ``resp_start[b] - prompt length`` into the row. ``resp_start[b]`` is the index
    (within its row, ``row[b]``) of sequence b's first response token.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    resp_start: Tensor  # [B]
    resp_len: Tensor  # [B]
    position_ids: Tensor | None = None  # packed rows: positions restart at 0 per sequence
    row: Tensor | None = None  # [B] row of each sequence (None: row b holds sequence b)

    @property
    def response_mask(self) -> Tensor:
        r_max = int(self.resp_len.max()) if self.resp_len.numel() else 0
        return (torch.arange(r_max)[None, :] < self.resp_len[:, None]).float()

    @property
    def rows(self) -> Tensor:
        return self.row if self.row is not None else torch.arange(len(self.resp_len))

    def model_inputs(self, device: torch.device) -> dict[str, Tensor]:
        inputs = {"input_ids": self.input_ids.to(device)}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask.to(device)
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids.to(device)
        return inputs


def make_batch(rollouts: Sequence[Rollout], pad_id: int) -> SeqBatch:
    """One right-padded row per rollout."""
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


def make_packed_batch(rollouts: Sequence[Rollout], pad_id: int, row_tokens: int | None = None) -> SeqBatch:
    """The rollouts packed into rows of ``row_tokens`` (default: the longest sequence), positions
    restarting at 0 for each sequence.

    First-fit-decreasing (``klear.train.common.pack_rows``): a row holds as many whole
    sequences as fit; only the tail of a row that none fills is padding (a segment of its
    own). No attention mask: with ``use_cache=False`` transformers (>= 4.53) turns the
    position restarts into block-diagonal attention (flash-attention's variable-length
    kernel on GPU; a block mask with SDPA), so no sequence sees another (tested). Rows as
    wide as the longest sequence keep attention's cost at or below the padded layout's on
    kernels that compute the whole masked square (SDPA, CPU); with variable-length kernels
    the row width does not matter.
    """
    from klear.train.common import pack_rows

    seqs = [r.prompt_ids + r.response_ids for r in rollouts]
    packed = pack_rows(seqs, row_tokens or max(len(s) for s in seqs), pad_id)
    return SeqBatch(
        input_ids=packed.input_ids,
        attention_mask=None,
        resp_start=torch.tensor(
            [start + len(r.prompt_ids) for (_, start, _), r in zip(packed.spans, rollouts, strict=True)]
        ),
        resp_len=torch.tensor([len(r.response_ids) for r in rollouts]),
        position_ids=packed.position_ids,
        row=torch.tensor([row for row, _, _ in packed.spans]),
    )


def batch_maker(packed: bool):
    """:func:`make_packed_batch` or :func:`make_batch` (``trainer.pack_sequences``)."""
    return make_packed_batch if packed else make_batch


def micro_batches(rollouts: Sequence[Rollout], token_budget: int, packed: bool = False) -> list[list[int]]:
    """Indices into ``rollouts`` grouped so that each micro-batch's tensor has ``<= token_budget`` tokens.

    Padded (``packed=False``): ``rows * longest``, sorted by length first so padding is
    small. Packed: the rows of :func:`make_packed_batch` (``rows * row width``, the width
    being the micro-batch's longest sequence), filled first-fit-decreasing over the whole
    list (:func:`_packed_plan`), so short sequences fill the rows of long ones and only row
    tails are padding. A sequence longer than the budget is a micro-batch of its own,
    never grouped with another (:func:`over_budget` counts them; the learner reports
    ``actor/over_budget_seqs``). The grouping does not change the loss (the normaliser is
    global), only the arithmetic's.
    """
    if packed:
        return _packed_plan(rollouts, token_budget)
    order = sorted(range(len(rollouts)), key=lambda i: _length(rollouts[i]))
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = _length(rollouts[i])
        if cur and (len(cur) + 1) * max(longest, n) > token_budget:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def _packed_plan(rollouts: Sequence[Rollout], token_budget: int) -> list[list[int]]:
    """First-fit-decreasing of whole sequences into rows, rows grouped into micro-batches.

    Longest first: a sequence goes into the first row, of any micro-batch so far, with room
    for it (a micro-batch's rows are as wide as its first, longest, sequence); else into a
    new row of the last micro-batch if ``rows x width`` stays within the budget; else it
    starts a micro-batch. Each micro-batch's indices come longest first, so
    :func:`make_packed_batch` (first-fit-decreasing over just that micro-batch, rows as wide
    as its longest) rebuilds exactly these rows: every sequence met the same rows, filled by
    the same longer sequences, in both passes.
    """
    order = sorted(range(len(rollouts)), key=lambda i: (-_length(rollouts[i]), i))
    members: list[list[int]] = []
    widths: list[int] = []
    fills: list[list[int]] = []  # per micro-batch, the tokens used in each row
    for i in order:
        n = _length(rollouts[i])
        spot = next(
            ((m, r) for m, rows in enumerate(fills) for r, used in enumerate(rows) if used + n <= widths[m]),
            None,
        )
        if spot is not None:
            fills[spot[0]][spot[1]] += n
            members[spot[0]].append(i)
        elif fills and (len(fills[-1]) + 1) * widths[-1] <= token_budget:
            fills[-1].append(n)
            members[-1].append(i)
        else:
            members.append([i])
            widths.append(n)
            fills.append([n])
    return members


def _length(r: Rollout) -> int:
    return len(r.prompt_ids) + len(r.response_ids)


def over_budget(rollouts: Sequence[Rollout], token_budget: int) -> int:
    """How many of ``rollouts`` are longer than ``token_budget`` (each is a micro-batch of its own)."""
    return sum(_length(r) > token_budget for r in rollouts)


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
    (``klear.models.logprobs``); 0: the full ``[R, L, V]`` logits (the reference path).
    Packed and padded batches give the same values (up to float rounding; tested).
    """
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    r_max = int(batch.resp_len.max())
    seq_rows = batch.rows.to(device)
    # positions that predict response token j of sequence b: resp_start[b] - 1 + j (in row row[b])
    pos = (
        (batch.resp_start[:, None] - 1 + torch.arange(r_max)[None, :]).clamp(max=ids.shape[1] - 2).to(device)
    )
    mask = batch.response_mask.to(device)
    temp = temperature if temperature > 0 else 1.0
    inputs = batch.model_inputs(device)
    if chunk_tokens > 0:
        from klear.models.logprobs import model_token_logprobs

        seqs, cols = mask.nonzero(as_tuple=True)
        at, rows = pos[seqs, cols], seq_rows[seqs]
        flat_logp, flat_ent = model_token_logprobs(
            model, inputs, (rows, at), ids[rows, at + 1], chunk_tokens, temp, with_entropy
        )
        logp = torch.zeros(mask.shape, dtype=torch.float32, device=device).index_put((seqs, cols), flat_logp)
        entropy = None
        if flat_ent is not None:
            entropy = torch.zeros_like(mask).index_put((seqs, cols), flat_ent.detach())
        return logp, entropy
    logits = model(**inputs, use_cache=False).logits
    if batch.row is None:  # row b is sequence b
        pred = logits.gather(1, pos[:, :, None].expand(-1, -1, logits.shape[-1])).float()  # [B, R_max, V]
    else:
        pred = logits[seq_rows[:, None], pos].float()
    if temp != 1.0:
        pred = pred / temp
    # log p(target) = logit[target] - logsumexp(logits): no vocabulary-sized log-softmax kept for backward
    lse = torch.logsumexp(pred, dim=-1)
    targets = ids[seq_rows[:, None], pos + 1]
    logp = pred.gather(-1, targets[:, :, None]).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = lse - (torch.softmax(pred, dim=-1) * pred).sum(-1)
    return logp * mask, (entropy * mask if entropy is not None else None)
