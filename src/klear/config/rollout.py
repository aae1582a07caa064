"""Rollout sections: sampling settings and the vLLM engine."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from klear.config.base import Section


class VLLMConfig(Section):
    """Engine settings used only by ``rollout.backend: vllm`` (see docs/vllm.md)."""

    gpu_memory_utilization: float = Field(
        0.5, gt=0.0, le=1.0, description="share of GPU memory vLLM may take (the trainer shares the GPU)"
    )
    dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None,
        description="engine dtype; null: the model's GPU compute dtype (ModelConfig.engine_dtype: auto -> bfloat16)",
    )
    max_model_len: int | None = Field(None, gt=0, description="null: the model config's (after YaRN)")
    enable_prefix_caching: bool = True
    enable_sleep_mode: bool = Field(
        False, description="release vLLM's GPU memory between generate calls (LLM.sleep / wake_up)"
    )
    sleep_level: Literal[1, 2] = Field(
        1, description="1: weights to CPU; 2: weights dropped (reloaded by update)"
    )
    enforce_eager: bool = False
    max_num_seqs: int | None = Field(
        None, gt=0, description="sequences per engine step; null: vLLM's default"
    )
    per_request_seeds: bool = Field(
        True, description="seed every request from (run.seed, call counter): reproducible, a little slower"
    )
    weight_bucket_mb: int = Field(512, gt=0, description="size of one weight-update RPC")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM(...) arguments")


class RolloutConfig(Section):
    backend: Literal["hf", "vllm"] = "hf"
    n: int = Field(8, ge=1, description="responses sampled per prompt")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, description="-1 disables top-k")
    max_new_tokens: int = Field(1024, gt=0)
    tensor_parallel_size: int = Field(1, ge=1)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
