"""Algorithm sections: the policy loss and the advantage estimator."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from klear.config.base import Section, _check_registry_name

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


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
