"""Every setting of Klear, as pydantic models validated at load.

A recipe is a YAML file whose keys mirror these models; command-line overrides
are dotted ``key.sub=value`` pairs applied on top. Anything unknown, mistyped
or contradictory fails here, at load, with a message that names the key, the
value and what is allowed -- never deep inside a training step.

One module per seam: ``base`` (ConfigError, Section), ``algo`` (loss, advantage), ``shared``
(run, model, optimizer, logging, data), ``rollout``, ``rewards``, ``rl`` (RLConfig), ``sft``
(SFTConfig) and ``load`` (YAML, overrides, readable errors). Import from ``klear.config``.
"""

from __future__ import annotations

from klear.config.algo import AGG_MODES, AdvantageConfig, AggMode, LossConfig
from klear.config.base import ConfigError, Section
from klear.config.load import (
    CONFIG_KINDS,
    apply_overrides,
    build_config,
    load_config,
    load_recipe,
    load_reward_config,
    parse_override,
    read_yaml,
    save_config,
)
from klear.config.rewards import CodeRewardConfig, MathRewardConfig, RewardConfig, SandboxConfig
from klear.config.rl import (
    DistConfig,
    DynamicSamplingConfig,
    OverlongConfig,
    RLConfig,
    RLTrainerConfig,
    ValidationConfig,
)
from klear.config.rollout import RolloutConfig, VLLMConfig
from klear.config.sft import SFTConfig, SFTDistConfig, SFTTrainerConfig
from klear.config.shared import (
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    check_weight_precision,
    lowest_exact_lr,
)

__all__ = [
    "AGG_MODES",
    "CONFIG_KINDS",
    "AdvantageConfig",
    "AggMode",
    "CodeRewardConfig",
    "ConfigError",
    "DataConfig",
    "DistConfig",
    "DynamicSamplingConfig",
    "LoggingConfig",
    "LossConfig",
    "MathRewardConfig",
    "ModelConfig",
    "OptimConfig",
    "OverlongConfig",
    "RLConfig",
    "RLTrainerConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "SFTConfig",
    "SFTDistConfig",
    "SFTTrainerConfig",
    "SandboxConfig",
    "Section",
    "VLLMConfig",
    "ValidationConfig",
    "apply_overrides",
    "build_config",
    "check_weight_precision",
    "load_config",
    "load_recipe",
    "load_reward_config",
    "lowest_exact_lr",
    "parse_override",
    "read_yaml",
    "save_config",
]
