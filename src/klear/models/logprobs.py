"""Per-token log-probs and entropy from final hidden states, the LM head applied a chunk of tokens at a time.

The plain path (``model(...).logits`` then a log-softmax) holds ``[T, V]`` logits for every
position of every sequence, plus float32 copies and a softmax for backward: with Qwen3's
151,936-token vocabulary that is about 3.6 MB per token, 117 GB for one 32K-token response.
Here the logits of at most ``chunk_tokens`` tokens exist at once: :class:`ChunkedLogprobs`
keeps only the hidden states and the targets for backward and recomputes each chunk's
logits there (a fused linear + log-softmax with its own autograd). Logits are never
computed at prompt positions: :func:`head_outputs` swaps the LM head's forward, for the
duration of one model call, for a function of the head's input hidden states, so the
chunked head runs *inside* the model's forward, where a sharded model's head weight is
gathered, and the positions nobody asked for never reach the vocabulary.

Numerics follow the plain path: under autocast the matmul runs in the autocast dtype
(as ``lm_head`` would), the log-softmax in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


def _matmul_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype ``lm_head`` would compute in: the autocast dtype when autocast is on, else the input's."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return hidden.dtype


class ChunkedLogprobs(torch.autograd.Function):
    """``(log p(targets), entropy)`` of ``softmax(hidden @ weight.T / temperature)``, chunk by chunk.

    hidden ``[N, H]``, weight ``[V, H]``, targets ``[N]`` -> two float32 ``[N]`` tensors
    (entropy is zeros when not asked for). Backward recomputes each chunk's logits and
    returns gradients for ``hidden`` and ``weight`` (entropy's gradient included when used).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        chunk_tokens: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        dtype = _matmul_dtype(hidden)
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for s in range(0, n, chunk_tokens):
                z = _logits(hidden[s : s + chunk_tokens], w, temperature)
                lse = torch.logsumexp(z, dim=-1)
                logp[s : s + chunk_tokens] = z.gather(1, targets[s : s + chunk_tokens, None]).squeeze(1) - lse
                if with_entropy:
                    z.sub_(lse[:, None])  # log p over the vocabulary
                    entropy[s : s + chunk_tokens] = -(z.exp().mul_(z)).sum(-1)
                del z
        ctx.save_for_backward(hidden, weight, targets, entropy)
        ctx.chunk_tokens, ctx.temperature, ctx.dtype = chunk_tokens, temperature, dtype
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None):  # type: ignore[override]
        hidden, weight, targets, entropy = ctx.saved_tensors
        chunk, temperature, dtype = ctx.chunk_tokens, ctx.temperature, ctx.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        n = hidden.shape[0]
        if g_logp is None:
            g_logp = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for s in range(0, n, chunk):
                h = hidden[s : s + chunk].to(dtype)
                t = targets[s : s + chunk]
                gl = g_logp[s : s + chunk].float()
                z = _logits(h, w, temperature)
                z.sub_(torch.logsumexp(z, dim=-1)[:, None])  # log p
                p = z.exp()
                # d log p_t / dz = onehot_t - p;  d H / dz = -p * (log p + H)
                if g_ent is not None:
                    ge = g_ent[s : s + chunk].float()
                    z.add_(entropy[s : s + chunk, None]).mul_(ge[:, None]).add_(gl[:, None])
                    p.mul_(z)
                else:
                    p.mul_(gl[:, None])
                del z
                dz = p.neg_()
                dz.scatter_add_(1, t[:, None], gl[:, None])
                if temperature != 1.0:
                    dz.div_(temperature)
                dz = dz.to(dtype)
                if grad_h is not None:
                    grad_h[s : s + chunk] = (dz @ w).to(grad_h.dtype)
                if grad_w is not None:
                    grad_w.add_(dz.T @ h)  # accumulated in float32 across chunks
                del dz, p
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            None,
            None,
            None,
            None,
        )


def _logits(h: Tensor, w: Tensor, temperature: float) -> Tensor:
    z = (h.to(w.dtype) @ w.T).float()
    if temperature != 1.0:
        z.div_(temperature)
    return z


def chunked_token_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Per-token ``log p(targets)`` (and entropy) of ``hidden [N, H]`` under the LM head ``[V, H]``.

    At most ``chunk_tokens`` rows of logits exist at once, in forward and in backward.
    Returns float32 ``[N]`` tensors; entropy is None unless ``with_entropy``.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp, entropy = ChunkedLogprobs.apply(
        hidden, lm_head_weight, targets, chunk_tokens, float(temperature), with_entropy
    )
    return logp, (entropy if with_entropy else None)


@contextmanager
def head_outputs(model: torch.nn.Module, fn: Callable[[Tensor, Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the model's LM head returns ``fn(hidden_states, head.weight)``.

    The full head is never applied: ``model(...).logits`` is whatever ``fn`` returns. The
    head weight is read inside the model's forward, so a sharded (FSDP) model hands over
    its gathered, compute-dtype weight and reduces its gradient as usual.
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("chunked log-probs need a bias-free linear LM head (model.get_output_embeddings())")
    head.forward = lambda hidden: fn(hidden, head.weight)
    try:
        yield
    finally:
        del head.forward


def model_token_logprobs(
    model: torch.nn.Module,
    inputs: dict[str, Tensor],
    where: tuple[Tensor, Tensor],
    targets: Tensor,
    chunk_tokens: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """One forward of ``model(**inputs)`` giving log-probs only at positions ``where = (rows, cols)``.

    ``targets[k]`` is the token whose log-prob the hidden state at ``(rows[k], cols[k])``
    predicts. Returns flat float32 ``[N]`` tensors (entropy None unless asked for).
    """
    rows, cols = where

    def head(hidden: Tensor, weight: Tensor) -> Tensor:
        logp, entropy = ChunkedLogprobs.apply(
            hidden[rows, cols], weight, targets, chunk_tokens, float(temperature), with_entropy
        )
        return torch.stack([logp, entropy], dim=-1)  # [N, 2], returned as the model's "logits"

    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    with head_outputs(model, head):
        both = model(**inputs, use_cache=False).logits
    # the model's own output carries its backward hooks (FSDP re-gathers the head weight there)
    return both[:, 0], (both[:, 1] if with_entropy else None)
