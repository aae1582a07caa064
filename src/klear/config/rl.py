"""Sections only ``klear rl`` reads, and :class:`RLConfig` itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from klear.config.algo import AdvantageConfig, LossConfig
from klear.config.base import Section
from klear.config.rewards import RewardConfig
from klear.config.rollout import RolloutConfig
from klear.config.shared import (
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    check_weight_precision,
)


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
