"""Sections shared by the RL and SFT configs: run, model (and its precision rule), optimizer,
logging, data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from klear.config.base import Section


class RunConfig(Section):
    name: str = "klear"
    out_dir: str = Field("runs/klear", description="every output of the run goes here")
    seed: int = 0


class ModelConfig(Section):
    path: str | None = Field(None, description="local Hugging Face causal-LM directory")
    tiny: bool = Field(
        False,
        description="with no model.path: build the built-in tiny Qwen3 (random weights seeded by run.seed)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "master weights and optimizer state: auto = float32; bfloat16/float16 hold the weights and "
            "AdamW state themselves in that dtype (no master copy: small updates round away, see "
            "model.allow_low_precision_weights)"
        ),
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "dtype of the forward/backward arithmetic: autocast on one device, FSDP2 param_dtype on "
            "ranks (gradients reduced in float32); auto = bfloat16 on a CUDA GPU that has it when "
            "model.dtype is auto, else model.dtype. Also the vLLM engine dtype"
        ),
    )
    allow_low_precision_weights: bool = Field(
        False,
        description=(
            "accept bfloat16/float16 master weights at an optim.lr below the dtype's rounding threshold "
            "(most AdamW updates then round to nothing)"
        ),
    )
    gradient_checkpointing: bool = False
    yarn_factor: float | None = Field(None, gt=1.0, description="YaRN rope scaling factor for long context")
    yarn_original_max_position: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _source(self) -> ModelConfig:
        if self.path is None and not self.tiny:
            raise ValueError("model: set model.path to a local HF directory, or model.tiny=true")
        if (self.yarn_factor is None) != (self.yarn_original_max_position is None):
            raise ValueError("model.yarn_factor and model.yarn_original_max_position must be set together")
        return self

    def weight_dtype(self) -> str:
        """The master weight (and optimizer state) dtype name: ``dtype`` with auto read as float32."""
        return "float32" if self.dtype == "auto" else self.dtype

    def compute_dtype_on(self, cuda_bf16: bool) -> str:
        """The compute dtype name on a device (``cuda_bf16``: a CUDA GPU with bfloat16 support)."""
        if self.compute_dtype != "auto":
            return self.compute_dtype
        if self.dtype == "auto" and cuda_bf16:
            return "bfloat16"
        return self.weight_dtype()

    def engine_dtype(self) -> str:
        """The dtype a GPU inference engine (vLLM) serves the policy in: the GPU compute dtype."""
        return self.compute_dtype_on(cuda_bf16=True)


#: explicit mantissa bits of the low-precision weight dtypes
_MANTISSA_BITS = {"bfloat16": 7, "float16": 10}
#: typical weight magnitude of a trained transformer (init std 0.02): an AdamW step moves a
#: weight by about lr, and rounds away when that is below half its spacing, |w| * 2^-(bits+1)
_TYPICAL_WEIGHT = 0.02


def lowest_exact_lr(weight_dtype: str) -> float:
    """The learning rate below which AdamW updates of typical weights round away in ``weight_dtype``."""
    bits = _MANTISSA_BITS.get(weight_dtype)
    return 0.0 if bits is None else _TYPICAL_WEIGHT * 2.0 ** -(bits + 1)


def check_weight_precision(model: ModelConfig, optim: OptimConfig) -> None:
    """Refuse low-precision master weights at a learning rate whose updates round to nothing."""
    floor = lowest_exact_lr(model.weight_dtype())
    if optim.lr < floor and not model.allow_low_precision_weights:
        raise ValueError(
            f"model.dtype = {model.dtype} holds the weights and AdamW state in {model.dtype} with no "
            f"float32 master copy, and at optim.lr = {optim.lr:g} (below {floor:.2g}) most updates round "
            f"away: the run would silently not learn. Use model.dtype: float32 with model.compute_dtype: "
            f"bfloat16 (mixed precision), or set model.allow_low_precision_weights: true"
        )


class OptimConfig(Section):
    lr: float = Field(1e-6, gt=0.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0.0, description="max global grad norm; null disables clipping")


class LoggingConfig(Section):
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "klear"
    progress: bool = True


class DataConfig(Section):
    train_files: list[str] = Field(
        default_factory=list,
        description="JSONL/JSON/parquet rows: chat 'messages', or RL rows whose extra_info.solution is the target",
    )
    val_files: list[str] = Field(default_factory=list)
    task: str | None = Field(
        None, description="built-in procedural task instead of files (klear.tasks.TASKS)"
    )
    train_size: int = Field(20000, gt=0, description="problems drawn from the task's train split")
    val_size: int = Field(200, ge=0, description="held-out problems drawn from the task's test split")
    task_seed: int = Field(0, description="seed of the task's problem streams (independent of run.seed)")
    max_prompt_length: int = Field(
        1024, gt=0, description="tokens of a prompt after the chat template (RL prompt loading)"
    )
    truncation: Literal["error", "drop", "left"] = Field(
        "drop",
        description="a prompt over max_prompt_length: error (stop, naming file and line), drop it "
        "(counted in data/prompts_dropped_too_long), or left (keep its last tokens; data/prompts_truncated)",
    )
    shuffle: bool = True

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from klear.tasks import TASKS

        if v not in TASKS:
            raise ValueError(f"unknown built-in task {v!r}; allowed: {', '.join(sorted(TASKS))}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.task is not None and self.train_files:
            raise ValueError("data.task and data.train_files are exclusive: pick one source of training rows")
        return self
