"""Every setting of Klear, as pydantic models validated at load.

A recipe is a YAML file whose keys mirror these models; command-line overrides
are dotted ``key.sub=value`` pairs applied on top. Anything unknown, mistyped
or contradictory fails here, at load, with a message that names the key, the
value and what is allowed -- never deep inside a training step.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from klear.errors import KlearError

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


class ConfigError(KlearError, ValueError):
    """A recipe or override that cannot be loaded; the message says exactly why."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_registry_name(value: str, registry_module: str, registry_name: str) -> str:
    """Accept a registered name or an importable ``package.module:function`` path to user code."""
    import importlib

    from klear.registry import resolve

    registry = getattr(importlib.import_module(registry_module), registry_name)
    try:
        resolve(value, registry, f"{registry_name} entry")
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    return value


# ---------------------------------------------------------------------------------------------
# Algorithm: losses and advantages
# ---------------------------------------------------------------------------------------------


class LossConfig(Section):
    """Policy loss (paper Sec. 2.2, Eq. 4-6 for GPPO)."""

    type: str = Field("gppo", description="gppo | ppo | cispo | gspo, or 'pkg.module:function'")
    eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="lower clip range: ratio >= 1 - eps_low")
    eps_high: float = Field(0.28, ge=0.0, description="upper clip range (clip-higher): ratio <= 1 + eps_high")
    clip_ratio_c: float | None = Field(
        10.0, description="dual-clip bound c for negative advantages (> 1); null disables dual clip"
    )
    beta_low: float = Field(
        1.0, ge=0.0, description="CE-GPPO: scale of the preserved gradient for A<0, r<1-eps_low"
    )
    beta_high: float = Field(
        1.0, ge=0.0, description="CE-GPPO: scale of the preserved gradient for A>0, r>1+eps_high"
    )
    only_high: bool = Field(False, description="GPPO: preserve only the A>0 (upper) clipped gradient")
    agg: AggMode = Field("token-mean", description="loss aggregation mode")
    sft_alpha: float = Field(
        0.0, ge=0.0, description="weight of the NLL term on rollouts with maximal reward"
    )

    @field_validator("type")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        return _check_registry_name(v, "klear.algo.losses", "LOSSES")

    @model_validator(mode="after")
    def _combination(self) -> LossConfig:
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1.0:
            raise ValueError(
                f"loss.clip_ratio_c = {self.clip_ratio_c}: must be > 1.0 (or null to disable dual clip)"
            )
        if self.type != "gppo":
            if self.beta_low != 1.0 or self.beta_high != 1.0:
                raise ValueError(
                    f"loss.beta_low/beta_high = {self.beta_low}/{self.beta_high}: only allowed with loss.type=gppo "
                    f"(got type={self.type!r}); betas scale GPPO's preserved gradients"
                )
            if self.only_high:
                raise ValueError(
                    f"loss.only_high = true: only allowed with loss.type=gppo (got type={self.type!r})"
                )
        if self.type == "gspo" and self.agg != "seq-mean-token-mean":
            raise ValueError(
                f"loss.agg = {self.agg!r}: loss.type=gspo optimises a sequence-level objective; "
                "set loss.agg=seq-mean-token-mean"
            )
        return self


class AdvantageConfig(Section):
    """Group-relative advantage estimator."""

    type: str = Field("grpo", description="grpo | dr_grpo | rloo | reinforce_pp, or 'pkg.module:function'")
    eps: float = Field(1e-6, gt=0.0, description="added to the std in the denominator")

    @field_validator("type")
    @classmethod
    def _known_adv(cls, v: str) -> str:
        return _check_registry_name(v, "klear.algo.advantages", "ADVANTAGES")


# ---------------------------------------------------------------------------------------------
# Shared sections
# ---------------------------------------------------------------------------------------------


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


class MathRewardConfig(Section):
    """Math answers: last \\boxed{} after </think>, checked with math_verify (paper Sec. 3)."""

    positive: float = Field(1.0, description="score of a correct answer")
    negative: float = Field(-1.0, description="score of a wrong or missing answer")
    no_think_end_score: float | None = Field(
        -0.5, description="score when </think> is missing; null: no check"
    )
    no_think_start_score: float | None = Field(
        -2.0, description="score when <think> is missing; null: no check"
    )
    verify_timeout_s: float = Field(
        3.0,
        gt=0.0,
        description="inner timeout (a SIGALRM timer in the worker) on parsing + comparing one answer",
    )
    cache_size: int = Field(65536, ge=0, description="(gold, answer) verdicts kept per worker")
    fast_path: bool = Field(
        True, description="decide plain integers, decimals and simple fractions without math_verify"
    )


class CodeRewardConfig(Section):
    """Code answers: last ```python block after </think>, run against the problem's tests in the sandbox."""

    mode: Literal["soft", "hard"] = Field(
        "soft", description="soft: fraction of tests passed; hard: all or nothing"
    )
    soft_mapping: Literal["pass_rate", "signed"] = Field(
        "signed", description="pass_rate: p in [0, 1]; signed: 2p - 1 in [-1, 1] (the reference)"
    )
    max_tests: int | None = Field(16, ge=1, description="tests run per response; null: all")
    test_selection: Literal["random", "shortest"] = "random"
    seed: int = 0
    float_tol: float = Field(1e-6, ge=0.0)


class SandboxConfig(Section):
    """Limits of the fork server in bubblewrap that runs untrusted code (one per reward worker)."""

    mode: Literal["bwrap", "none"] = Field(
        "bwrap", description="bwrap: isolated; none: run code unsandboxed (trusted code only; logged loudly)"
    )
    test_timeout_s: float = Field(6.0, gt=0.0, description="wall-clock limit per test")
    cpu_time_s: int = Field(10, ge=1, description="RLIMIT_CPU per test")
    memory_mb: int = Field(1024, ge=16, description="RLIMIT_AS per test")
    file_size_mb: int = Field(16, ge=0, description="RLIMIT_FSIZE per test")
    max_processes: int = Field(32, ge=1, description="RLIMIT_NPROC for the test's uid")
    max_output_bytes: int = Field(1 << 20, ge=1024, description="stdout kept per test; more is an error")
    max_open_files: int = Field(64, ge=8, description="RLIMIT_NOFILE per test")
    tmpfs_mb: int = Field(64, ge=1, description="size of the sandbox's private /tmp and of its /dev/shm")
    tmpfs_inodes: int = Field(
        10_000,
        ge=64,
        description="files a test may have on /tmp or /dev/shm at once; past it the memory guard kills the test",
    )
    python: str = Field(
        "auto",
        description="interpreter inside the sandbox; auto: a system python3 under /usr if any (stdlib only); "
        "a path outside /usr (e.g. the training env's, for numpy) has its prefix mounted read-only",
    )
    uid_base: int = Field(
        1_900_000_000, ge=1000, description="first uid of the range test children run under (as root)"
    )
    uid_count: int = Field(4096, ge=1, description="uids in the range; one per live sandbox server")
    startup_timeout_s: float = Field(20.0, gt=0.0, description="time allowed for the server to start")


class RewardConfig(Section):
    """Scoring: a pool of worker processes; the reward per row is chosen from data_source/ability."""

    num_workers: int = Field(2, ge=1, description="reward worker processes")
    item_timeout_s: float = Field(
        60.0, gt=0.0, description="hard bound per response; past it: flagged timeout"
    )
    custom: dict[str, str] = Field(
        default_factory=dict, description="data_source -> 'pkg.module:function' for user reward functions"
    )
    failure_score: float | None = Field(
        None,
        description=(
            "score of an item the pool killed (timeout) or lost (worker crash, exception); "
            "null: the lowest ordinary score of the row's reward (math.negative; code: -1 with the signed "
            "soft mapping, else 0; custom functions: 0)"
        ),
    )
    mask_failures: bool = Field(
        True,
        description="leave responses whose reward is an infrastructure failure (pool kill, sandbox error or "
        "restart, verifier timeout, bad ground truth) out of the loss and of their group's statistics; "
        "the model's own failures stay wrong answers",
    )
    math: MathRewardConfig = Field(default_factory=MathRewardConfig)
    code: CodeRewardConfig = Field(default_factory=CodeRewardConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @field_validator("custom")
    @classmethod
    def _dotted_paths(cls, v: dict[str, str]) -> dict[str, str]:
        for source, path in v.items():
            module, _, func = path.partition(":")
            if not func.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
                raise ValueError(
                    f"reward.custom.{source} = {path!r}: expected a dotted path 'pkg.module:function'"
                )
        return v

    @model_validator(mode="after")
    def _bounds(self) -> RewardConfig:
        if self.math.verify_timeout_s >= self.item_timeout_s:
            raise ValueError(
                f"reward.math.verify_timeout_s = {self.math.verify_timeout_s} must be below "
                f"reward.item_timeout_s = {self.item_timeout_s}: the inner timeout flags a slow answer "
                "cheaply; the pool's hard kill (which restarts the worker) is the last resort"
            )
        return self


class DynamicSamplingConfig(Section):
    enable: bool = True
    metric: Literal["acc", "reward"] = "acc"
    std_eps: float = Field(1e-6, ge=0.0, description="a group is kept when std(metric) > std_eps")
    max_num_gen_batches: int = Field(10, ge=0, description="0 means unlimited")


class OverlongConfig(Section):
    filter: bool = Field(False, description="mask truncated responses out of the loss")
    penalty: bool = Field(False, description="DAPO soft overlong penalty")
    buffer_len: int = Field(4096, ge=0)
    penalty_factor: float = Field(1.0, ge=0.0)


class RLTrainerConfig(Section):
    total_steps: int = Field(100, ge=1)
    train_batch_size: int = Field(128, ge=1, description="prompts per step")
    gen_batch_size: int | None = Field(None, ge=1, description="prompts generated per generation batch")
    ppo_mini_batch_size: int = Field(16, ge=1, description="prompts per optimizer update")
    ppo_epochs: int = Field(1, ge=1)
    micro_batch_tokens: int = Field(
        16384,
        ge=1,
        description="token budget per forward/backward, padding included: packed rows x their width "
        "(the micro-batch's longest sequence; shorter ones fill the rows) with pack_sequences, else "
        "padded rows x longest; a longer sequence runs alone",
    )
    pack_sequences: bool = Field(
        False,
        description="learner micro-batches packed: whole sequences concatenated into rows as wide as "
        "the micro-batch's longest, position ids restarting per sequence, padding only at row tails; "
        "false: one right-padded row per sequence. The same log-probs, loss and gradients either way "
        "(klear.train.batch); on CPU with SDPA as fast as padding, not faster (bench/RESULTS.md)",
    )
    logits_chunk_tokens: int = Field(
        1024,
        ge=0,
        description="LM-head tokens per chunk for log-probs and entropy (klear.models.logprobs); "
        "0: full [B, L, V] logits",
    )
    save_every: int = Field(50, ge=0, description="checkpoint every N steps (0: only at the end)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")
    max_idle_steps: int = Field(
        5,
        ge=0,
        description="stop with an error after this many consecutive steps in which no group has signal "
        "(every group's rewards equal); 0: never stop",
    )
    old_logprobs: Literal["auto", "recompute", "rollout"] = Field(
        "auto",
        description=(
            "log-probs of the sampling policy: recompute with a forward pass, or take the sampler's "
            "(exact only when the sampler is the trainer's own module, no autocast, no top-p/top-k); "
            "auto takes the sampler's exactly when that holds"
        ),
    )
    async_rollouts: int = Field(
        0,
        ge=0,
        description=(
            "maximum staleness K, in weight versions, of the batches trained on: 0 samples each step's batch "
            "with the current weights, one phase after the other; K >= 1 samples up to K batches ahead while "
            "the learner updates (in a child process with dist.backend=none, on the rollout actors with ray), "
            "with weights up to K updates old -- the importance ratio against the sampler's log-probs corrects "
            "the lag. A step that validates or checkpoints is a barrier (exact resume)"
        ),
    )

    sampler_processes: int = Field(
        1,
        ge=1,
        description=(
            "sampler processes with dist.backend=none, each with its own copy of the policy and "
            "trainer.num_threads threads: a generation batch's prompts are split among them (the same "
            "rollouts as one: randomness is keyed per prompt and sample). 1 with async_rollouts = 0 "
            "samples from the learner's own module; more than 1 (or async_rollouts >= 1) uses child processes"
        ),
    )

    @model_validator(mode="after")
    def _batches(self) -> RLTrainerConfig:
        if self.train_batch_size % self.ppo_mini_batch_size:
            raise ValueError(
                f"trainer.train_batch_size = {self.train_batch_size} must be a multiple of "
                f"trainer.ppo_mini_batch_size = {self.ppo_mini_batch_size}"
            )
        return self


class ValidationConfig(Section):
    """Periodic held-out evaluation during RL: greedy accuracy and avg@n (paper: AIME x32, every 5 steps)."""

    every: int = Field(
        5, ge=0, description="validate every N steps (0: never; always at start and end if > 0)"
    )
    n: int = Field(1, ge=1, description="samples per prompt for avg@n")
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, gt=0, description="default: rollout.max_new_tokens")
    max_prompts: int | None = Field(None, ge=1, description="cap on held-out prompts")


class DistConfig(Section):
    """Where the RL engines run: this process (``none``) or actors on a Ray cluster (``ray``)."""

    backend: Literal["none", "ray"] = Field("none", description="none: one process; ray: klear.dist actors")
    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'); None: $RAY_ADDRESS, "
        "else a local cluster started on demand and stopped at the end",
    )
    rollout_workers: int = Field(1, ge=1, description="rollout actors, each with its own copy of the policy")
    reward_workers: int = Field(
        1, ge=1, description="reward actors, each running a reward pool of reward.num_workers processes"
    )
    learner_ranks: int = Field(1, ge=1, description="data-parallel learner ranks (torch.distributed)")
    learner_strategy: Literal["fsdp", "ddp"] = Field(
        "fsdp",
        description="fsdp: parameters, gradients and optimizer state sharded over the ranks (FSDP2); "
        "ddp: full replicas, gradients summed by one all-reduce",
    )
    rollout_cpus: float = Field(1.0, gt=0.0, description="CPUs Ray reserves per rollout actor")
    rollout_gpus: float = Field(
        0.0, ge=0.0, description="GPUs per rollout actor (vLLM: tensor_parallel_size)"
    )
    learner_gpus: float = Field(0.0, ge=0.0, description="GPUs per learner rank; > 0 selects nccl, else gloo")
    learner_timeout_s: float = Field(
        600.0, gt=0.0, description="collective timeout of the learner process group"
    )
    max_worker_restarts: int = Field(
        3, ge=0, description="rollout/reward actors replaced per call before the step fails"
    )
    weight_sync: Literal["collective", "object_store"] = Field(
        "collective",
        description="how new weights reach the rollout actors after each update: collective: learner "
        "rank 0 broadcasts them in buckets over a process group with the actors (nccl when learner and "
        "actors have GPUs, else gloo), copied in place (klear.dist.weight_sync); object_store: the "
        "whole state dict through Ray's object store. vLLM engines need object_store for now",
    )
    weight_sync_bucket_mb: float = Field(
        256.0,
        gt=0.0,
        allow_inf_nan=False,
        description="bucket size of a collective weight sync in MiB (1/1024 = 1 KiB up to 65536): one "
        "reusable buffer of this size per member, one broadcast per bucket",
    )

    @field_validator("weight_sync_bucket_mb")
    @classmethod
    def _bucket(cls, v: float) -> float:
        if not 1 / 1024 <= v <= 65536:
            raise ValueError(f"must be between 1/1024 (1 KiB) and 65536 MiB, got {v:g}")
        return v

    @property
    def weight_sync_bucket_bytes(self) -> int:
        return int(self.weight_sync_bucket_mb * 2**20)


class RLConfig(Section):
    """Everything ``klear rl`` reads."""

    kind: Literal["rl"] = "rl"
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(tiny=True))
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)
    trainer: RLTrainerConfig = Field(default_factory=RLTrainerConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    dist: DistConfig = Field(default_factory=DistConfig)

    @model_validator(mode="after")
    def _precision(self) -> RLConfig:
        check_weight_precision(self.model, self.optim)
        return self

    @model_validator(mode="after")
    def _dist(self) -> RLConfig:
        d = self.dist
        if (
            d.backend == "ray"
            and self.rollout.backend == "vllm"
            and d.rollout_gpus < self.rollout.tensor_parallel_size
        ):
            raise ValueError(
                f"dist.rollout_gpus = {d.rollout_gpus:g} is too few: each vLLM rollout actor needs "
                f"rollout.tensor_parallel_size = {self.rollout.tensor_parallel_size} GPUs"
            )
        if d.backend == "ray" and d.weight_sync == "collective":
            if self.rollout.backend != "hf":
                raise ValueError(
                    f"dist.weight_sync = collective needs rollout.backend = hf (the engine of rollout.backend "
                    f"= {self.rollout.backend} is not a member of the weight-sync group yet): set "
                    "dist.weight_sync = object_store"
                )
            if getattr(self.trainer, "async_rollouts", 0):
                raise ValueError(
                    "dist.weight_sync = collective sends the learner's current weights, but "
                    "trainer.async_rollouts > 0 may load an older version later: set dist.weight_sync = "
                    "object_store"
                )
        if d.backend == "ray" and self.trainer.sampler_processes > 1:
            raise ValueError(
                f"trainer.sampler_processes = {self.trainer.sampler_processes} is for dist.backend = none; "
                "with ray the rollout actors sample (dist.rollout_workers)"
            )
        return self


class SFTTrainerConfig(Section):
    epochs: float = Field(1.0, gt=0.0, description="passes over the training rows (fractions allowed)")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (caps epochs)"
    )
    max_length: int = Field(4096, gt=0, description="tokens per example; longer examples are truncated")
    batch_tokens: int = Field(
        16384, gt=0, description="tokens per optimizer step (examples packed, no padding)"
    )
    micro_batch_tokens: int = Field(16384, gt=0, description="tokens per forward/backward (one packed row)")
    logits_chunk_tokens: int = Field(
        1024, ge=0, description="LM-head tokens per chunk for the NLL (klear.models.logprobs); 0: full logits"
    )
    log_every: int = Field(10, ge=1, description="steps between metric lines in metrics.jsonl")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: only the final model)")
    eval_every: int = Field(0, ge=0, description="steps between held-out evaluations (0: only at the end)")
    eval_max_new_tokens: int = Field(256, gt=0, description="generation budget of the held-out evaluation")
    eval_batch_size: int = Field(256, gt=0, description="sequences per generation batch in evaluation")
    num_threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch CPU threads (None: torch's default). On a 2-core machine shared with other processes "
            "(reward workers), 1 is faster: measured 16x8 tiny-model rollouts 1.9 s with 1 thread vs 23-36 s "
            "with 2 threads under load, as threads wait on each other at every small op"
        ),
    )

    @model_validator(mode="after")
    def _tokens(self) -> SFTTrainerConfig:
        if self.micro_batch_tokens < self.max_length:
            raise ValueError(
                f"trainer.micro_batch_tokens = {self.micro_batch_tokens} must be >= trainer.max_length = "
                f"{self.max_length}: one example must fit in a micro-batch"
            )
        if self.batch_tokens < self.max_length:
            raise ValueError(
                f"trainer.batch_tokens = {self.batch_tokens} must be >= trainer.max_length = {self.max_length}"
            )
        return self


class SFTDistConfig(Section):
    """How ``klear sft`` uses the ranks it is launched on (``torchrun --nproc-per-node N -m klear sft``
    sets RANK/WORLD_SIZE; without them it is one process and these settings do nothing)."""

    learner_strategy: Literal["fsdp", "ddp"] = Field(
        "fsdp",
        description="fsdp: parameters, gradients and AdamW state sharded over the ranks (FSDP2, what an 8B "
        "model needs); ddp: full replicas, gradients summed by one all-reduce",
    )
    timeout_s: float = Field(
        1800.0,
        gt=0.0,
        description="collective timeout of the process group (rank 0 writes checkpoints while the others wait)",
    )


class SFTConfig(Section):
    """Everything ``klear sft`` reads."""

    kind: Literal["sft"] = "sft"
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(tiny=True))
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(lr=8e-5, schedule="cosine", min_lr_ratio=0.5)
    )
    trainer: SFTTrainerConfig = Field(default_factory=SFTTrainerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    dist: SFTDistConfig = Field(default_factory=SFTDistConfig)

    @model_validator(mode="after")
    def _precision(self) -> SFTConfig:
        check_weight_precision(self.model, self.optim)
        return self


# ---------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides -> validated model, with readable errors
# ---------------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (a pydantic error location) in ``model``."""
    cur: Any = model
    for part in loc[:-1]:
        field = cur.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cur = ann
    return list(cur.model_fields)


def _format_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "<root>"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"  {key}: unknown key{hint}; allowed here: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if isinstance(value, dict):  # a cross-field rule: the message names the keys itself
            lines.append(f"  {key}: {msg}")
        else:
            lines.append(f"  {key} = {json.dumps(value, default=str)}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted override set (sections are created as needed)."""
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for item in overrides:
        parts, value = parse_override(item)
        cur = out
        for p in parts[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p!r} is a value ({nxt!r}), not a section")
            cur = nxt
        cur[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text (byte {exc.start + 1})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r}: top level must be a mapping, got {type(data).__name__}")
    return data


def build_config(model: type[M], data: dict[str, Any], source: str = "<dict>") -> M:
    """Validate plain data into ``model`` or raise ConfigError naming key, value and what is allowed."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, model, source)) from None


def load_config(model: type[M], recipe: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Load a recipe (optional) and apply dotted overrides, validating everything."""
    data = read_yaml(recipe) if recipe is not None else {}
    data = apply_overrides(data, overrides or [])
    source = str(recipe) if recipe is not None else "defaults"
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return build_config(model, data, source)


def save_config(cfg: BaseModel, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config next to a run's outputs (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    from klear.io import write_atomic

    write_atomic(target, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return target


CONFIG_KINDS: dict[str, type[BaseModel]] = {"rl": RLConfig, "sft": SFTConfig}


def load_recipe(recipe: str | Path, overrides: list[str] | None = None, kind: str | None = None) -> BaseModel:
    """Load a recipe whose schema is named by its top-level ``kind`` (``rl`` or ``sft``; default ``rl``)."""
    data = read_yaml(recipe)
    kind = kind or data.get("kind", "rl")
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"recipe {str(recipe)!r}: kind = {kind!r}: allowed: {', '.join(CONFIG_KINDS)}")
    return load_config(CONFIG_KINDS[kind], recipe, overrides)


def load_reward_config(recipe: str | None, overrides: list[str] | None = None) -> RewardConfig:
    """The ``reward`` section of an RL recipe (defaults without one) with dotted overrides: what the
    offline scorers (``klear reward score``, the data filters) use."""
    cfg = load_recipe(recipe, overrides) if recipe else load_config(RLConfig, None, overrides)
    if not hasattr(cfg, "reward"):
        raise ConfigError(f"recipe {recipe!r} has no 'reward' section (is it an RL recipe?)")
    return cfg.reward
