"""The Hugging Face transformers rollout backend: a batched sampling loop over the model's KV cache.

Why a loop of our own rather than ``model.generate``: it samples from per-row seeded
generators (``generate`` draws from the global RNG), it returns the log-prob of
each sampled token under the distribution it was drawn from, and it drops finished rows
from the batch and the cache, so a batch whose responses end early stops paying for
them. In greedy mode it produces exactly what ``generate`` does (tested).

The forward passes go through :class:`klear.rollout.kv_decode.KVDecoder` (the model's own
weights over a preallocated cache, without transformers' per-call bookkeeping) whenever it
supports the model (Qwen3, Qwen2, Llama with full attention and plain Linear layers), else
through ``model(...)``; both give the same tokens (tested), the lean one 1.1-1.3x faster on
the demo's batches (``bench/rollout_decode.py``). ``HFRolloutBackend(lean=False)`` forces the latter.

Prompts are left-padded into one batch; positions are counted from each prompt's first
real token, so a padded prompt sees the same positions as an unpadded one.

Randomness is keyed, not streamed: every sampled row draws its uniforms from its own
generator, seeded from (call seed, group, sample index). A row's response therefore does
not depend on which other rows share its batch, how a call is chunked, or how prompts are
split across rollout workers (``klear.dist``): one process and N workers sample the same
responses. The call seed is ``SamplingParams.seed`` when given, else the backend's seed
mixed with a call counter, which is the backend's whole RNG state (exact resume).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from klear.rollout import CallSeeds, PromptInput, SamplingParams, group_keys, row_seed
from klear.rollout.kv_decode import KVDecoder, unsupported
from klear.types import Rollout


def stop_token_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS, ``<|im_end|>`` when the vocabulary has it
    (a chat turn ends there even for a base model whose EOS is ``<|endoftext|>``), and the
    model's generation-config EOS ids."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if extra is not None:
        ids.extend([extra] if isinstance(extra, int) else list(extra))
    return sorted(set(ids))


def encode_prompt(tokenizer: Any, prompt: PromptInput) -> list[int]:
    """Token ids of one prompt: ids as given, a string encoded without special tokens, chat
    messages through the tokenizer's chat template with the generation prompt."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special_tokens=False)
    items = list(prompt)
    if items and isinstance(items[0], Mapping):
        text = tokenizer.apply_chat_template(items, tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return [int(t) for t in items]


def process_logits(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Log-probs of the sampling distribution: logits / temperature, top-k, then top-p (nucleus).

    logits: [B, V] (any float dtype; computed in float32). Returns [B, V] log-probs with
    -inf outside the kept set. Top-p keeps the smallest prefix of tokens, by descending
    probability, whose mass reaches ``top_p`` (always at least one token).
    """
    x = logits.float() / temperature
    if top_k > 0 and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x.log_softmax(-1)


#: uniforms drawn per row at once; a generator yields the same stream in blocks as one by one
_UNIFORM_BLOCK = 64


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Token index per row with ``P(index = k) = probs[k] / sum(probs)``, from uniforms ``u`` in [0, 1).

    The first k with cdf[k] > u * total: never a zero-probability token, never out of range.
    """
    cdf = probs.float().cumsum(-1)
    target = (u.float() * cdf[:, -1])[:, None]
    return (cdf <= target).sum(-1).clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingParams,
    stop_ids: Iterable[int],
    pad_id: int,
    row_seeds: Sequence[int] | None = None,
    lean: bool | None = None,
) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """Sample one response per prompt (expand prompts beforehand for n > 1).

    ``row_seeds[i]`` seeds prompt i's own generator (required unless greedy); the token at
    each step is the inverse CDF of the sampling distribution at one uniform draw.
    Returns (response ids, log-probs, truncated) per prompt; a response includes its stop token.
    ``lean`` (None: whenever the model is supported) runs the forward passes with
    :class:`klear.rollout.kv_decode.KVDecoder` instead of the model's own ``forward``.
    """
    if lean is None:
        lean = unsupported(model) is None
    device = next(model.parameters()).device
    bsz, width = len(prompts), max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("empty prompt: every prompt needs at least one token")
    # 1. Left-pad the prompts; positions start at 0 on each prompt's first real token.
    input_ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    attention = torch.zeros((bsz, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        attention[i, width - len(p) :] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    if not sampling.greedy and (row_seeds is None or len(row_seeds) != bsz):
        raise ValueError("sampling needs one seed per prompt (row_seeds)")
    gens = [torch.Generator().manual_seed(int(s)) for s in row_seeds] if not sampling.greedy else []
    uniforms = torch.zeros((bsz, _UNIFORM_BLOCK))  # row r's next uniforms, drawn a block at a time

    # 2. Prefill: one forward pass over the prompts fills the KV cache.
    steps = _LeanSteps(model, bsz, width + sampling.max_new_tokens) if lean else _HFSteps(model)
    logits = steps.prefill(input_ids, attention, positions)
    next_pos = positions[:, -1] + 1
    rows = torch.arange(bsz, device=device)  # batch row -> prompt index (rows leave when finished)
    responses: list[list[int]] = [[] for _ in range(bsz)]
    logprobs: list[list[float]] = [[] for _ in range(bsz)]
    truncated = [True] * bsz

    for step in range(sampling.max_new_tokens):
        # 3. Pick the next token of every live row and its log-prob under the sampling distribution.
        if sampling.greedy:
            logp = logits.float().log_softmax(-1)
            token = logp.argmax(-1)
        else:
            logp = process_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
            if step % _UNIFORM_BLOCK == 0:  # one generator call per live row per block, not per token
                for r in rows.tolist():
                    uniforms[r] = torch.rand(_UNIFORM_BLOCK, generator=gens[r])
            token = inverse_cdf(logp.exp(), uniforms[rows.cpu(), step % _UNIFORM_BLOCK].to(device))
        token_logp = logp.gather(-1, token[:, None]).squeeze(-1)
        done = torch.isin(token, stops)
        for r, t, lp, d in zip(
            rows.tolist(), token.tolist(), token_logp.tolist(), done.tolist(), strict=True
        ):
            responses[r].append(t)
            logprobs[r].append(lp)
            if d:
                truncated[r] = False
        if step == sampling.max_new_tokens - 1:
            break
        # 4. Drop finished rows from the batch and from the cache.
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            steps.select(keep)
            rows, token, next_pos = rows[keep], token[keep], next_pos[keep]
        # 5. Feed the sampled tokens back: one position per live row.
        logits = steps.step(token, next_pos)
        next_pos = next_pos + 1
    return responses, logprobs, truncated


class _HFSteps:
    """Prefill and per-token steps through the model's own ``forward`` and a transformers cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.cache, self.attention = model, None, None

    def prefill(self, ids: Tensor, attention: Tensor, positions: Tensor) -> Tensor:
        out = self.model(
            input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        self.cache, self.attention = out.past_key_values, attention
        return out.logits[:, -1, :]

    def step(self, token: Tensor, positions: Tensor) -> Tensor:
        att = self.attention
        self.attention = torch.cat([att, att.new_ones((att.shape[0], 1))], dim=-1)
        out = self.model(
            input_ids=token[:, None],
            attention_mask=self.attention,
            position_ids=positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def select(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.attention = self.attention[rows]


class _LeanSteps:
    """The same steps through :class:`klear.rollout.kv_decode.KVDecoder` (a preallocated cache)."""

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int) -> None:
        self.decoder = KVDecoder(model, batch, max_len)

    def prefill(self, ids: Tensor, attention: Tensor, positions: Tensor) -> Tensor:
        return self.decoder.forward(ids, positions, attention.bool())

    def step(self, token: Tensor, positions: Tensor) -> Tensor:
        ones = torch.ones((token.shape[0], 1), dtype=torch.bool, device=token.device)
        return self.decoder.forward(token[:, None], positions[:, None], ones)

    def select(self, rows: Tensor) -> None:
        self.decoder.select(rows)


class HFRolloutBackend:
    """Rollouts from a transformers causal LM held in this process.

    model: the policy module itself (shared with the trainer: ``update_weights(model)``
    is then free) or a separate copy (weights are copied in). ``max_batch_size`` bounds
    the sequences per forward pass (None: all of a call's sequences at once).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        seed: int = 0,
        stop_ids: Sequence[int] | None = None,
        max_batch_size: int | None = None,
        lean: bool | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model)
        if not self.stop_ids:
            raise ValueError("no stop token: the tokenizer has no EOS; pass stop_ids")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.stop_ids[0])
        self.max_batch_size = max_batch_size
        reason = unsupported(model)
        if lean and reason is not None:
            raise ValueError(f"lean decoding was asked for, but {reason} is not supported")
        self.lean = reason is None if lean is None else lean
        self.device = next(model.parameters()).device
        self.seeds = CallSeeds(seed)  # the whole RNG state

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype | None = None, device: str | None = None, **kwargs: Any
    ) -> HFRolloutBackend:
        """Load a local HF directory (model + tokenizer) into a new backend."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
        model.to(device or "cpu").eval()
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    def encode(self, prompt: PromptInput) -> list[int]:
        """Token ids of one prompt (chat messages get the chat template with the generation prompt)."""
        return encode_prompt(self.tokenizer, prompt)

    def generate(
        self,
        prompts: Sequence[PromptInput],
        sampling: SamplingParams,
        groups: Sequence[int | str] | None = None,
    ) -> list[Rollout]:
        keys = group_keys(prompts, groups)
        encoded = [self.encode(p) for p in prompts]
        expanded = [ids for ids in encoded for _ in range(sampling.n)]  # prompt-major
        seed = self.seeds.next(sampling.seed)
        seeds = [row_seed(seed, keys[k // sampling.n], k % sampling.n) for k in range(len(expanded))]
        chunk = self.max_batch_size or len(expanded) or 1
        was_training = self.model.training
        self.model.eval()
        try:
            results: tuple[list, list, list] = ([], [], [])
            for start in range(0, len(expanded), chunk):
                part = sample_batch(
                    self.model,
                    expanded[start : start + chunk],
                    sampling,
                    self.stop_ids,
                    self.pad_id,
                    seeds[start : start + chunk],
                    lean=self.lean,
                )
                for acc, new in zip(results, part, strict=True):
                    acc.extend(new)
        finally:
            self.model.train(was_training)
        texts = self.tokenizer.batch_decode(results[0], skip_special_tokens=True)
        out = []
        for k, (resp, lps, trunc, text) in enumerate(zip(*results, texts, strict=True)):
            i, j = divmod(k, sampling.n)
            out.append(
                Rollout(
                    prompt_ids=list(encoded[i]),
                    response_ids=resp,
                    logprobs=lps,
                    text=text,
                    truncated=trunc,
                    group=keys[i],
                    sample=j,
                    meta={"finish_reason": "length" if trunc else "stop"},
                )
            )
        return out

    def update_weights(self, weights: torch.nn.Module | Mapping[str, Tensor]) -> None:
        """Take new policy weights; a no-op when ``weights`` is the very module this backend samples from."""
        if weights is self.model:
            return
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        self.model.load_state_dict(state, strict=True)

    def get_rng_state(self) -> dict[str, int]:
        """The sampler's RNG state (for exact resume): its seed and the number of unseeded calls."""
        return self.seeds.state()

    def set_rng_state(self, state: dict[str, int]) -> None:
        self.seeds.load(state)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
