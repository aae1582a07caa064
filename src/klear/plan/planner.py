"""Apply the memory formulas to a loaded recipe on a cluster: per-GPU figures and a verdict.

What is read from the recipe, and what is assumed:

- RL (``kind: rl``): with ``dist.backend: ray`` the learner runs on ``dist.learner_ranks`` GPUs
  (FSDP2 full shard when ``dist.learner_strategy: fsdp``, else a replica each) and the rollout
  engines on their own ``dist.rollout_workers x dist.rollout_gpus`` GPUs; with ``dist.backend:
  none`` everything is one process on one GPU (a vLLM engine then shares it with the learner and
  the learner gets ``1 - gpu_memory_utilization`` of it). The largest forward/backward is
  ``trainer.micro_batch_tokens``, or one whole sequence (``data.max_prompt_length +
  rollout.max_new_tokens``) when that is longer, since a longer sequence is a micro-batch of its own.
  The budget counts the tensor's tokens, padding included, packed (``trainer.pack_sequences``:
  rows x width) or padded (rows x longest), so the activations are sized the same either way.
- SFT (``kind: sft``): under ``torchrun`` the trainer uses every GPU it is launched on (all
  ``--nodes x --gpus-per-node``), FSDP2-sharded when the recipe's ``dist.learner_strategy`` is
  ``fsdp``; a recipe schema without a ``dist`` section is taken as one device. The largest
  forward/backward is one packed row of ``trainer.micro_batch_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from klear.plan.memory import (
    ENGINE_OVERHEAD,
    GIB,
    SYNC_LINK_GB_PER_S,
    VLLM_DEFAULT_MAX_NUM_SEQS,
    EngineSetup,
    LearnerSetup,
    engine_memory,
    learner_memory,
    utilization_for,
    weight_sync_bytes,
    weight_sync_seconds,
)
from klear.plan.shapes import ModelShape, PlanError, load_shape

#: per-GPU memory the learner cannot use: CUDA context, NCCL buffers, allocator fragmentation
LEARNER_RESERVE = 2 * GIB
#: the highest ``gpu_memory_utilization`` the plan suggests for an engine with a GPU of its own
MAX_SUGGESTED_UTILIZATION = 0.9


@dataclass(frozen=True)
class Cluster:
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0  # GiB per GPU
    nodes: int | None = None  # None: as many as the recipe needs (RL) / one (SFT)
    link_gb_per_s: float = SYNC_LINK_GB_PER_S  # per link, for the weight-sync time (klear.plan.memory)

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise PlanError(f"--gpus-per-node = {self.gpus_per_node}: must be >= 1")
        if not self.gpu_memory_gb > 0:
            raise PlanError(f"--gpu-memory-gb = {self.gpu_memory_gb}: must be > 0")
        if self.nodes is not None and self.nodes < 1:
            raise PlanError(f"--nodes = {self.nodes}: must be >= 1")
        if not (self.link_gb_per_s > 0 and math.isfinite(self.link_gb_per_s)):
            raise PlanError(f"--link-gb-per-s = {self.link_gb_per_s}: must be a number > 0")

    @property
    def gpu_bytes(self) -> int:
        return int(self.gpu_memory_gb * GIB)


def _dtypes(model: Any) -> tuple[str, str]:
    """(master weight dtype, GPU compute dtype) of a ModelConfig, with or without compute_dtype."""
    if hasattr(model, "weight_dtype"):
        return model.weight_dtype(), model.compute_dtype_on(cuda_bf16=True)
    weight = "float32" if model.dtype == "auto" else model.dtype
    return weight, ("bfloat16" if model.dtype == "auto" else weight)


def plan(cfg: Any, cluster: Cluster, arch: str | None = None, recipe: str = "<config>") -> dict[str, Any]:
    """The plan of a validated RL or SFT config on ``cluster``: a JSON-ready dict (bytes, counts, verdict)."""
    shape, source = load_shape(cfg.model.path, cfg.model.tiny, arch)
    weight_dtype, compute_dtype = _dtypes(cfg.model)
    notes: list[str] = []
    problems: list[str] = []
    out: dict[str, Any] = {
        "recipe": recipe,
        "kind": cfg.kind,
        "model": {**shape.to_dict(), "source": source},
    }
    if cfg.kind == "rl":
        learner, rollout, gpus = _rl(cfg, shape, cluster, weight_dtype, compute_dtype, notes)
    else:
        learner, rollout, gpus = _sft(cfg, shape, cluster, weight_dtype, compute_dtype, notes)
    nodes = (
        cluster.nodes
        if cluster.nodes is not None
        else max(1, math.ceil(gpus["total"] / cluster.gpus_per_node))
    )
    gpus["nodes"] = nodes
    gpus["available"] = nodes * cluster.gpus_per_node
    out["cluster"] = {
        "nodes": nodes,
        "gpus_per_node": cluster.gpus_per_node,
        "gpu_memory_gib": cluster.gpu_memory_gb,
        "nodes_given": cluster.nodes is not None,
    }
    out["gpus"] = gpus
    out["learner"] = learner
    out["rollout"] = rollout
    if gpus["total"] > gpus["available"]:
        problems.append(
            f"the recipe needs {gpus['total']} GPUs; {nodes} node(s) x {cluster.gpus_per_node} have "
            f"{gpus['available']}"
        )
    if learner.get("problem"):
        problems.append(learner["problem"])
    if learner["memory"]["total"] > learner["budget"]:
        problems.append(
            f"learner: {learner['memory']['total'] / GIB:.1f} GiB per GPU > {learner['budget'] / GIB:.1f} GiB "
            "available" + _learner_hint(learner, shape)
        )
    if rollout is not None and not rollout["memory"]["fits_one_seq"]:
        problems.append(
            f"rollout engine: KV cache holds {int(rollout['memory']['kv_tokens']):,} tokens, fewer than one "
            f"sequence of max_model_len {rollout['max_model_len']:,} (vLLM refuses to start); raise "
            f"rollout.vllm.gpu_memory_utilization or rollout.tensor_parallel_size"
        )
    out["fits"] = not problems
    out["problems"] = problems
    out["notes"] = notes
    return out


def _learner_hint(learner: dict[str, Any], shape: ModelShape) -> str:
    hints = []
    if not learner["checkpointing"]:
        hints.append("model.gradient_checkpointing: true")
    if not learner["sharded"]:
        hints.append("dist.learner_strategy: fsdp over more ranks")
    if learner["chunk_tokens"] == 0:
        hints.append("trainer.logits_chunk_tokens: 1024")
    return (
        f" (try {', '.join(hints)})"
        if hints
        else " (more learner ranks, or a shorter trainer.micro_batch_tokens)"
    )


def _learner_block(shape: ModelShape, setup: LearnerSetup, budget: int, colocated: bool) -> dict[str, Any]:
    mem = learner_memory(shape, setup)
    return {
        **setup.__dict__,
        "memory": mem,
        "budget": budget,
        "colocated_with_engine": colocated,
        "fits": mem["total"] <= budget,
    }


def _rl(
    cfg: Any, shape: ModelShape, cluster: Cluster, weight_dtype: str, compute_dtype: str, notes: list[str]
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, int]]:
    d, r, t = cfg.dist, cfg.rollout, cfg.trainer
    ray = d.backend == "ray"
    vllm = r.backend == "vllm"
    seq_len = cfg.data.max_prompt_length + r.max_new_tokens
    max_model_len = r.vllm.max_model_len
    if max_model_len is None:
        base = shape.max_position or seq_len
        max_model_len = int(base * cfg.model.yarn_factor) if cfg.model.yarn_factor else base
        if vllm:
            notes.append(
                f"rollout.vllm.max_model_len is null: vLLM takes the model's ({max_model_len:,}); "
                f"a prompt + response is at most {seq_len:,} tokens"
            )
    if vllm and max_model_len < seq_len:
        notes.append(
            f"max_model_len {max_model_len:,} < data.max_prompt_length + rollout.max_new_tokens = {seq_len:,}: "
            "responses are cut at max_model_len"
        )
        seq_len = max_model_len
    tokens = max(t.micro_batch_tokens, seq_len)
    if seq_len > t.micro_batch_tokens:
        notes.append(
            f"a sequence of up to {seq_len:,} tokens is longer than trainer.micro_batch_tokens = "
            f"{t.micro_batch_tokens:,}: it is a micro-batch of its own, so activations are sized at {tokens:,}"
        )
    ranks = d.learner_ranks if ray else 1
    chunk = getattr(t, "logits_chunk_tokens", 0)
    setup = LearnerSetup(
        ranks=ranks,
        sharded=ray and d.learner_strategy == "fsdp" and ranks > 1,
        weight_dtype=weight_dtype,
        compute_dtype=compute_dtype,
        tokens=tokens,
        logit_tokens=min(tokens, r.max_new_tokens) if tokens == seq_len else tokens,
        chunk_tokens=chunk,
        checkpointing=cfg.model.gradient_checkpointing,
    )
    colocated = vllm and not ray
    learner_budget = cluster.gpu_bytes - LEARNER_RESERVE
    share = int(cluster.gpu_bytes * (1 - r.vllm.gpu_memory_utilization)) - LEARNER_RESERVE
    if colocated and r.vllm.enable_sleep_mode:
        # the engine sleeps while the learner trains (its KV cache freed, weights offloaded or
        # dropped), but wakes up next to the learner's resident state to generate
        learner_budget -= int(ENGINE_OVERHEAD)
        notes.append(
            "dist.backend none with rollout.vllm.enable_sleep_mode: the learner trains on the whole GPU "
            "(less the sleeping engine's overhead); its weights, gradients and AdamW state must leave "
            f"the waking engine its gpu_memory_utilization ({share / GIB:.1f} GiB left for them)"
        )
    elif colocated:
        learner_budget = share
        notes.append(
            "dist.backend none: the vLLM engine shares the learner's GPU; the learner gets "
            f"1 - gpu_memory_utilization = {1 - r.vllm.gpu_memory_utilization:.2f} of it"
        )
    learner = _learner_block(shape, setup, learner_budget, colocated)
    resident = sum(learner["memory"][k] for k in ("weights", "gradients", "optimizer"))
    learner["resident_during_generation"] = resident if colocated else 0
    if colocated and r.vllm.enable_sleep_mode and resident > share:
        learner["fits"] = False
        learner["problem"] = (
            f"learner: {resident / GIB:.1f} GiB of weights, gradients and AdamW state stay on the GPU while "
            f"the engine wakes with gpu_memory_utilization {r.vllm.gpu_memory_utilization:g}, which leaves "
            f"{share / GIB:.1f} GiB"
        )
    learner_gpus = ranks * max(1, math.ceil(d.learner_gpus)) if ray else 1
    if ray and d.learner_gpus == 0:
        notes.append("dist.learner_gpus is 0: the learner would run on CPU; counted here as one GPU per rank")
    rollout = None
    rollout_gpus = 0
    engine_dtype = r.vllm.dtype or (
        cfg.model.engine_dtype() if hasattr(cfg.model, "engine_dtype") else "bfloat16"
    )
    if vllm:
        engines = d.rollout_workers if ray else 1
        max_num_seqs = r.vllm.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
        if r.vllm.max_num_seqs is None:
            notes.append(
                f"rollout.vllm.max_num_seqs is null: vLLM's default ({VLLM_DEFAULT_MAX_NUM_SEQS}) assumed"
            )
        e = EngineSetup(
            tp=r.tensor_parallel_size,
            dtype=engine_dtype,
            gpu_bytes=cluster.gpu_bytes,
            utilization=r.vllm.gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
        )
        mem = engine_memory(shape, e)
        rollout = {
            "engines": engines,
            **e.__dict__,
            "memory": mem,
            "suggested_utilization": None,
        }
        if not mem["fits_all_seqs"]:
            want = utilization_for(shape, e, max_num_seqs)
            best = min(MAX_SUGGESTED_UTILIZATION, want)
            msg = (
                f"rollout: the KV cache holds {mem['full_length_seqs']:.1f} full-length sequences "
                f"({max_model_len:,} tokens), not max_num_seqs = {max_num_seqs}: vLLM runs fewer at once "
                "(queueing, preempting) when responses are long"
            )
            if not colocated and r.vllm.gpu_memory_utilization < best:
                e_best = EngineSetup(**{**e.__dict__, "utilization": best})
                rollout["suggested_utilization"] = round(best, 2)
                msg += (
                    f"; the engines have GPUs of their own, so rollout.vllm.gpu_memory_utilization "
                    f"{r.vllm.gpu_memory_utilization:g} -> {best:.2f} would hold "
                    f"{engine_memory(shape, e_best)['full_length_seqs']:.1f}"
                )
            notes.append(msg)
        rollout_gpus = engines * max(r.tensor_parallel_size, math.ceil(d.rollout_gpus)) if ray else 0
        if not ray:
            rollout_gpus = r.tensor_parallel_size - 1  # the first GPU is the learner's
        per_engine = weight_sync_bytes(shape, engine_dtype)
        rollout["weight_sync"] = {
            "dtype": engine_dtype,
            "bytes_per_engine": per_engine,
            "bytes_per_step": per_engine * engines,
            "buckets_per_engine": math.ceil(per_engine / (r.vllm.weight_bucket_mb * 1024 * 1024)),
            "mode": d.weight_sync if ray else "in-process",
            "link_gb_per_s": cluster.link_gb_per_s,
            "seconds": weight_sync_seconds(per_engine, engines, cluster.link_gb_per_s),
        }
    else:
        notes.append(
            "rollout.backend hf: generation runs on the learner's own model; its KV cache is not counted"
        )
    gpus = {"learner": learner_gpus, "rollout": rollout_gpus, "total": learner_gpus + rollout_gpus}
    return learner, rollout, gpus


def _sft(
    cfg: Any, shape: ModelShape, cluster: Cluster, weight_dtype: str, compute_dtype: str, notes: list[str]
) -> tuple[dict[str, Any], None, dict[str, int]]:
    t = cfg.trainer
    dist = getattr(cfg, "dist", None)
    nodes = cluster.nodes or 1
    if dist is None:
        ranks, sharded = 1, False
        notes.append("this SFT config has no dist section: the trainer is taken as one device")
    else:
        ranks = nodes * cluster.gpus_per_node
        sharded = dist.learner_strategy == "fsdp" and ranks > 1
        notes.append(
            f"SFT under torchrun on {nodes} node(s) x {cluster.gpus_per_node} GPUs: {ranks} ranks, "
            f"dist.learner_strategy {dist.learner_strategy}"
        )
    setup = LearnerSetup(
        ranks=ranks,
        sharded=sharded,
        weight_dtype=weight_dtype,
        compute_dtype=compute_dtype,
        tokens=t.micro_batch_tokens,
        logit_tokens=t.micro_batch_tokens,
        chunk_tokens=getattr(t, "logits_chunk_tokens", 0),
        checkpointing=cfg.model.gradient_checkpointing,
    )
    learner = _learner_block(shape, setup, cluster.gpu_bytes - LEARNER_RESERVE, False)
    return learner, None, {"learner": ranks, "rollout": 0, "total": ranks}
