"""A lean forward pass for sampling: the HF model's own weights over a preallocated KV cache.

Why: with a small model on CPU, transformers' ``model(...)`` per generated token spends much of
its time outside the matrix products (building the 4-D mask, growing the cache by
concatenation, module dispatch, output records), the more so the fewer rows a batch has. This
decoder computes the same function with the same weights and nothing else
(``bench/rollout_decode.py``: 1.1x the tokens/s of the HF forward on the demo's generation batch of
128 rows, 1.3x on half of it).

The math, per decoder layer, for hidden states ``x`` of the new tokens (the HF modelling code
of Qwen3, Qwen2 and Llama, in the same operation order and dtypes)::

    h = RMSNorm(x)                          # in float32, cast back, times the weight
    q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)      # one fused matmul
    q, k = RMSNorm_head(q), RMSNorm_head(k)           # Qwen3 only (per head)
    q, k = rope(q, pos), rope(k, pos)                 # rotate-half form, cos/sin in the model dtype
    K, V = cache with k, v appended at the next column
    a = softmax(q K^T / sqrt(d) + mask) V             # grouped-query: kv head j serves q heads j*g..j*g+g-1
    x = x + a Wo
    h = RMSNorm(x)
    x = x + (silu(h Wg) * (h Wu)) Wd                  # gate and up as one fused matmul

then ``logits = RMSNorm(x) W_lm``. The cache is one tensor per layer for keys and one for values,
``[batch, kv_heads, max_len, head_dim]``, written column by column; every row of the batch fills
the same columns (prompts are left-padded), and ``mask`` hides the padding columns. Logits equal
the HF forward's to float rounding (1e-5 in tests); the weights are the model's tensors (the q/k/v
and gate/up concatenations are copies made once per call of :func:`sample_batch`).

:func:`unsupported` names what this decoder does not model (sliding windows, dynamic rope, biases
in the MLP, other activations, other architectures, sharded parameters, adapters or quantised
layers in place of plain Linear layers); the caller then uses the HF forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: model_type -> whether its attention normalises q and k per head (Qwen3's q_norm / k_norm)
ARCHITECTURES = {"qwen3": True, "qwen2": False, "llama": False}

#: rope types whose inverse frequencies are fixed at load (``dynamic`` and ``longrope`` change them per length)
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


def unsupported(model: torch.nn.Module) -> str | None:
    """Why :class:`KVDecoder` cannot run ``model`` (None when it can)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"model_type {kind!r} (supported: {', '.join(sorted(ARCHITECTURES))})"
    if getattr(cfg, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])
    ):
        return "sliding-window attention"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE:
        return f"rope_type {rope_type!r}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    if getattr(cfg, "mlp_bias", False):
        return "biases in the MLP"
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return f"attention implementation {cfg._attn_implementation!r}"
    if any(hasattr(p, "placements") for p in model.parameters()):
        return "sharded (DTensor) parameters"
    for block in getattr(getattr(model, "model", None), "layers", None) or []:
        attn, mlp = block.self_attn, block.mlp
        for name, module in (("q_proj", attn.q_proj), ("k_proj", attn.k_proj), ("v_proj", attn.v_proj),
                             ("o_proj", attn.o_proj), ("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj),
                             ("down_proj", mlp.down_proj)):  # fmt: skip
            if type(module) is not torch.nn.Linear:  # an adapter (LoRA) or a quantised layer computes more
                return f"{name} is a {type(module).__name__}, not a plain Linear"
    return None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF's RMSNorm: normalised in float32, cast back to x's dtype, then scaled."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, rotate-half form: x * cos + [-x2, x1] * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class KVDecoder:
    """Prefill and per-token steps of a supported causal LM (see :func:`unsupported`) for ``batch`` rows.

    ``forward(ids, positions, valid)`` appends ``T`` columns to every row's cache and returns the
    logits at the last one; ``select(rows)`` keeps only those rows (finished rows leave).
    """

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"KVDecoder does not support this model: {reason}")
        cfg, inner = model.config, model.model
        self.qk_norm = ARCHITECTURES[cfg.model_type]
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.lm_head = model.lm_head.weight
        rotary = inner.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.layers = [self._layer(block) for block in inner.layers]
        self.intermediate = cfg.intermediate_size
        weight = self.embed
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        self.keys = [weight.new_zeros(shape) for _ in self.layers]
        self.values = [weight.new_zeros(shape) for _ in self.layers]
        self.valid = torch.zeros((batch, max_len), dtype=torch.bool, device=weight.device)  # not padding
        self.length = 0  # cache columns filled
        self.max_len = max_len

    def _layer(self, block: Any) -> dict[str, Tensor | None]:
        attn, mlp = block.self_attn, block.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        biases = [p.bias for p in projections]
        return {
            "norm_in": block.input_layernorm.weight,
            "norm_post": block.post_attention_layernorm.weight,
            "q_norm": attn.q_norm.weight if self.qk_norm else None,
            "k_norm": attn.k_norm.weight if self.qk_norm else None,
            "qkv": torch.cat([p.weight for p in projections]).detach(),
            "qkv_bias": torch.cat(biases).detach() if all(b is not None for b in biases) else None,
            "o": attn.o_proj.weight,
            "o_bias": attn.o_proj.bias,
            "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
            "down": mlp.down_proj.weight,
        }

    @torch.no_grad()
    def forward(self, ids: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
        """ids, positions, valid: [B, T] (valid False for padding); returns the last column's logits [B, V]."""
        bsz, t = ids.shape
        start, end = self.length, self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} columns > max_len {self.max_len}")
        self.valid[:, start:end] = valid
        # query i (column start + i) sees the non-padding columns j <= start + i, and always its own
        # column, so a padding query's softmax stays finite (its output is never used)
        cols = torch.arange(end, device=ids.device)
        own = (start + torch.arange(t, device=ids.device))[:, None]  # [T, 1]: each query's column
        seen = (self.valid[:, None, :end] | (cols == own)) & (cols <= own)  # [B, T, end]
        mask = torch.zeros(seen.shape, dtype=self.embed.dtype, device=ids.device).masked_fill(
            ~seen, float("-inf")
        )[:, None]
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        x = F.embedding(ids, self.embed)
        cos = (emb.cos() * self.rope_scale).to(x.dtype)[:, None]  # [B, 1, T, d]
        sin = (emb.sin() * self.rope_scale).to(x.dtype)[:, None]
        nq, nk = self.heads * self.head_dim, self.kv_heads * self.head_dim
        group = self.heads // self.kv_heads
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            h = rms_norm(x, layer["norm_in"], self.eps)
            qkv = F.linear(h, layer["qkv"], layer["qkv_bias"])
            q = qkv[..., :nq].view(bsz, t, self.heads, self.head_dim)
            k = qkv[..., nq : nq + nk].view(bsz, t, self.kv_heads, self.head_dim)
            v = qkv[..., nq + nk :].view(bsz, t, self.kv_heads, self.head_dim)
            if self.qk_norm:
                q, k = rms_norm(q, layer["q_norm"], self.eps), rms_norm(k, layer["k_norm"], self.eps)
            q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
            keys[:, :, start:end] = k
            values[:, :, start:end] = v.transpose(1, 2)
            # grouped-query attention as one batched matmul: [B, kv, g*T, d] x [B, kv, d, L]
            qg = q.reshape(bsz, self.kv_heads, group * t, self.head_dim)
            scores = torch.matmul(qg, keys[:, :, :end].transpose(-1, -2)) * self.head_dim**-0.5
            scores = scores.view(bsz, self.kv_heads, group, t, end) + mask[:, :, None]
            probs = scores.float().softmax(-1).to(q.dtype).view(bsz, self.kv_heads, group * t, end)
            a = torch.matmul(probs, values[:, :, :end]).view(bsz, self.heads, t, self.head_dim)
            x = x + F.linear(a.transpose(1, 2).reshape(bsz, t, nq), layer["o"], layer["o_bias"])
            h = rms_norm(x, layer["norm_post"], self.eps)
            gate_up = F.linear(h, layer["gate_up"])
            x = x + F.linear(
                F.silu(gate_up[..., : self.intermediate]) * gate_up[..., self.intermediate :], layer["down"]
            )
        self.length = end
        return F.linear(rms_norm(x[:, -1], self.final_norm, self.eps), self.lm_head)

    def select(self, rows: Tensor) -> None:
        """Keep only ``rows`` (indices into the current batch), in that order."""
        self.keys = [c.index_select(0, rows) for c in self.keys]
        self.values = [c.index_select(0, rows) for c in self.values]
        self.valid = self.valid.index_select(0, rows)
