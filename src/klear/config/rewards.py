"""Reward sections: math and code scoring, the sandbox that runs code, and the reward pool."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from klear.config.base import Section


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
