"""Memory per GPU of the learner and the rollout engines, as pure formulas of a model's shape.

Everything is bytes. The learner holds its state (master weights, gradients, AdamW's two
moments) either sharded over all its ranks (FSDP2 full shard) or as a full replica per rank,
plus, during one forward/backward of a micro-batch, the activations saved for backward and
the LM head's logits for at most ``chunk_tokens`` positions at a time
(``klear.models.logprobs``). A rollout engine (vLLM) holds its share of the weights in the
engine dtype and a KV cache in what ``gpu_memory_utilization`` leaves.

The activation count follows one HF Qwen3 decoder layer in training mode, tensor by tensor
(what autograd saves; RMSNorm saves float32 copies whatever the compute dtype):

- two RMSNorms over ``hidden`` (input, normalised) in float32, and their outputs, read by the
  projections (compute dtype);
- q/k head RMSNorms (input, normalised) in float32;
- scaled-dot-product attention: q, k and v repeated to the query heads, and the output
  (flash / memory-efficient kernels: no ``tokens x tokens`` matrix), and o_proj's input;
- the SwiGLU MLP: gate, silu(gate), up and their product (``4 x intermediate``).

With activation checkpointing of every layer (non-reentrant), only each layer's input stays
from forward to backward, and one layer is recomputed at a time. :mod:`klear.plan.validate`
measures the formula against peak RSS of tiny models on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from klear.plan.shapes import ModelShape

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: float32 ``[chunk, vocab]`` buffers alive at once in the chunked log-prob backward: the logits and
#: their exp (the probabilities, turned in place into the logits' gradient); measured, see validate.py
LOGIT_BUFFERS_CHUNKED = 2
#: float32-equivalent ``[tokens, vocab]`` buffers of the unchunked path (``logits_chunk_tokens: 0``):
#: the model's logits, their float32 copy, softmax for the entropy, and the gradients; measured
#: at ~3.6 MB per token with a 151,936 vocabulary, i.e. about 6 float32 copies
LOGIT_BUFFERS_FULL = 6
#: vLLM's own overhead outside weights and KV cache (CUDA graphs, sampler, profiling peak), bytes
ENGINE_OVERHEAD = 2 * GIB
#: vLLM's default ``max_num_seqs`` when the recipe leaves it null
VLLM_DEFAULT_MAX_NUM_SEQS = 256


def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES[name]


def layer_activation_bytes(shape: ModelShape, tokens: int, compute_bytes: int) -> int:
    """Bytes autograd saves in one decoder layer for ``tokens`` tokens (no checkpointing)."""
    h, q, kv, inter = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    fp32_elems = 2 * h + 2 * h + 2 * q + 2 * kv  # RMSNorm inputs and normalised values
    compute_elems = (
        2 * h  # the two norms' outputs, read by q/k/v and gate/up projections
        + 3 * q  # attention: q, k and v repeated to the query heads
        + q  # attention output
        + q  # o_proj input (the output transposed back, contiguous)
        + 4 * inter  # gate, silu(gate), up, silu(gate) * up
    )
    return tokens * (4 * fp32_elems + compute_bytes * compute_elems)


def backward_transient_bytes(shape: ModelShape, tokens: int, compute_bytes: int) -> int:
    """Gradient buffers alive while one layer runs backward: the residual's and the MLP's."""
    return tokens * compute_bytes * (2 * shape.hidden + 2 * shape.intermediate)


def logits_bytes(shape: ModelShape, logit_tokens: int, chunk_tokens: int) -> int:
    """Peak bytes of the LM head's logits: ``chunk x vocab`` buffers, or ``tokens x vocab`` unchunked."""
    if chunk_tokens <= 0:
        return LOGIT_BUFFERS_FULL * 4 * logit_tokens * shape.vocab
    return LOGIT_BUFFERS_CHUNKED * 4 * min(chunk_tokens, logit_tokens) * shape.vocab


@dataclass(frozen=True)
class LearnerSetup:
    """How the learner runs one micro-batch on one GPU."""

    ranks: int  # GPUs holding the learner's state
    sharded: bool  # FSDP2 full shard over ``ranks``; False: a full replica per rank
    weight_dtype: str  # master weights, gradients and AdamW state
    compute_dtype: str  # forward/backward arithmetic
    tokens: int  # tokens in the largest forward/backward (micro-batch, or one longer sequence)
    logit_tokens: int  # positions whose log-probs are taken in it (response / loss tokens)
    chunk_tokens: int  # LM-head tokens per chunk; 0: full logits
    checkpointing: bool


def learner_memory(shape: ModelShape, s: LearnerSetup) -> dict[str, int]:
    """Per-GPU bytes of the learner, by component, and the total under ``s.checkpointing``.

    ``activations`` and ``activations_no_ckpt``/``activations_ckpt`` are given both ways, so a
    report can say what turning checkpointing on or off would cost.
    """
    wb, cb = dtype_bytes(s.weight_dtype), dtype_bytes(s.compute_dtype)
    params = shape.params()
    share = math.ceil(params / s.ranks) if s.sharded else params
    out: dict[str, int] = {
        "weights": share * wb,
        "gradients": share * wb,
        "optimizer": 2 * share * wb,  # AdamW exp_avg and exp_avg_sq, in the master dtype
    }
    # the compute-dtype copy of the weights in use: FSDP2 gathers a layer (and prefetches the
    # next) or the embedding / LM head; a replica under autocast caches casts of every weight
    biggest = max(shape.layer_params(), shape.embed_params())
    if s.sharded and s.ranks > 1:
        out["gathered_weights"] = 2 * biggest * cb
    elif cb != wb:
        out["gathered_weights"] = params * cb
    else:
        out["gathered_weights"] = 0
    # the residual stream between layers: compute dtype under FSDP2's param_dtype, the master
    # dtype under autocast (the embedding's output and every residual add stay float32)
    resid = cb if (s.sharded and s.ranks > 1) else wb
    layer = layer_activation_bytes(shape, s.tokens, cb)
    transient = backward_transient_bytes(shape, s.tokens, cb)
    # model-level: embedding output, final norm (float32 input + normalised), hidden states the
    # chunked head keeps for its backward
    head_in = s.tokens * (resid * shape.hidden + 8 * shape.hidden) + s.logit_tokens * cb * shape.hidden
    logits = logits_bytes(shape, s.logit_tokens, s.chunk_tokens)
    no_ckpt = shape.layers * layer + head_in
    ckpt = shape.layers * s.tokens * resid * shape.hidden + head_in
    # logits' backward runs first with every saved activation alive; then the layers, one
    # at a time (recomputed under checkpointing)
    out["activations_no_ckpt"] = no_ckpt + max(logits, transient)
    out["activations_ckpt"] = ckpt + max(logits, layer + transient)
    out["logits"] = logits
    out["activations"] = out["activations_ckpt"] if s.checkpointing else out["activations_no_ckpt"]
    out["total"] = (
        out["weights"] + out["gradients"] + out["optimizer"] + out["gathered_weights"] + out["activations"]
    )
    return out


@dataclass(frozen=True)
class EngineSetup:
    """One vLLM engine: tensor parallel size, dtype, memory share and sequence limits."""

    tp: int
    dtype: str
    gpu_bytes: int
    utilization: float
    max_model_len: int
    max_num_seqs: int


def kv_bytes_per_token(shape: ModelShape, dtype: str, tp: int = 1) -> int:
    """KV cache bytes per token on one GPU: keys and values of every layer, kv heads split over tp."""
    heads = math.ceil(shape.kv_heads / tp)  # vLLM replicates kv heads when tp > kv_heads
    return 2 * shape.layers * heads * shape.head_dim * dtype_bytes(dtype)


def engine_memory(shape: ModelShape, e: EngineSetup) -> dict[str, float | bool]:
    """Per-GPU bytes of a vLLM engine and how many full-length sequences its KV cache holds."""
    weights = shape.params() * dtype_bytes(e.dtype) / e.tp
    budget = e.utilization * e.gpu_bytes
    per_token = kv_bytes_per_token(shape, e.dtype, e.tp)
    kv = budget - weights - ENGINE_OVERHEAD
    kv_tokens = max(0.0, kv) // per_token
    return {
        "weights": weights,
        "overhead": float(ENGINE_OVERHEAD),
        "budget": budget,
        "kv_cache": max(0.0, kv),
        "kv_bytes_per_token": float(per_token),
        "kv_tokens": kv_tokens,
        "kv_needed_full": float(per_token * e.max_model_len * e.max_num_seqs),
        "full_length_seqs": kv_tokens / e.max_model_len,
        "fits_one_seq": kv_tokens >= e.max_model_len,
        "fits_all_seqs": kv_tokens >= e.max_model_len * e.max_num_seqs,
    }


def utilization_for(shape: ModelShape, e: EngineSetup, seqs: int) -> float:
    """The ``gpu_memory_utilization`` at which the KV cache holds ``seqs`` full-length sequences."""
    need = (
        shape.params() * dtype_bytes(e.dtype) / e.tp
        + ENGINE_OVERHEAD
        + kv_bytes_per_token(shape, e.dtype, e.tp) * e.max_model_len * seqs
    )
    return need / e.gpu_bytes


def weight_sync_bytes(shape: ModelShape, dtype: str) -> int:
    """Bytes sent to one engine per weight update: every weight in the engine dtype."""
    return shape.params() * dtype_bytes(dtype)


#: Bandwidth assumed per link for a weight sync, GB/s (10^9 bytes): the NCCL bus bandwidth of one
#: 200 Gb/s InfiniBand HDR NIC per GPU, the usual inter-node link of an 8-GPU node (about 20-24
#: GB/s measured by nccl-tests; NVLink inside a node is faster, so the inter-node link bounds a
#: broadcast that spans nodes). ``klear plan --link-gb-per-s`` replaces it.
SYNC_LINK_GB_PER_S = 25.0


def weight_sync_seconds(bytes_per_engine: int, engines: int, link_gb_per_s: float) -> dict[str, float]:
    """Seconds per weight sync of ``bytes_per_engine`` to ``engines`` engines over links of ``link_gb_per_s``.

    collective: one pipelined broadcast (NCCL ring/tree, ``klear.dist.weight_sync``): every link
    carries each byte once, however many engines there are, so ``bytes / bandwidth``.
    object_store: every engine pulls its own copy, and the copies leave the learner's node
    through its link: ``engines x bytes / bandwidth`` (an upper bound: Ray may also pull from a
    node that already has one). Latency and the gathering of a sharded state are not counted.
    """
    rate = link_gb_per_s * 1e9
    return {"collective": bytes_per_engine / rate, "object_store": engines * bytes_per_engine / rate}
