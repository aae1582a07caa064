"""YaRN rope scaling on a Hugging Face model config, for long-context evaluation.

The paper's headline numbers use a 64K generation budget on a model trained
with 32K positions: rope scaling type ``yarn`` with factor 2.5 over 32768
original positions, so ``max_position_embeddings`` = 2.5 x 32768 = 81920 (the
public evaluation script's max model length). YaRN (Peng et al. 2023,
arXiv 2309.00071) interpolates the low-frequency rotary dimensions by the
factor, keeps the high-frequency ones, and scales attention by 0.1 ln(factor) + 1.

Where the setting lives depends on the transformers version:

- transformers >= 5 keeps every rotary setting in ``config.rope_parameters``
  (``rope_type``, ``rope_theta``, ``factor``, ``original_max_position_embeddings``);
  ``rope_scaling`` survives only as a deprecated alias of it. When layer types
  have their own rotary settings, ``rope_parameters`` is a dict per layer type.
- transformers 4.x keeps ``rope_theta`` on the config and the scaling in
  ``config.rope_scaling`` (``{"rope_type": "yarn", "factor", "original_max_position_embeddings"}``).

:func:`apply_yarn` writes whichever the config has. vLLM takes the same dict
through ``hf_overrides`` (see :func:`yarn_overrides`).
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

#: The paper's 64K evaluation setting.
PAPER_YARN_FACTOR = 2.5
PAPER_ORIGINAL_MAX_POSITIONS = 32768
PAPER_MAX_MODEL_LEN = 81920  # = 2.5 * 32768

#: Rotary types that YaRN may replace: plain rope, or an earlier YaRN setting.
_REPLACEABLE = ("default", "yarn", None)

ConfigT = TypeVar("ConfigT")


def yarn_max_positions(factor: float, original_max_position_embeddings: int) -> int:
    """The scaled context length factor x original, which must be a whole number of positions."""
    _check(factor, original_max_position_embeddings)
    scaled = factor * original_max_position_embeddings
    if abs(scaled - round(scaled)) > 1e-9:
        raise ValueError(
            f"factor {factor} x original {original_max_position_embeddings} = {scaled} is not a whole "
            "number of positions"
        )
    return round(scaled)


def yarn_rope_scaling(factor: float, original_max_position_embeddings: int) -> dict[str, Any]:
    """The scaling entries, without rope_theta (which stays the model's own)."""
    _check(factor, original_max_position_embeddings)
    return {
        "rope_type": "yarn",
        "factor": float(factor),
        "original_max_position_embeddings": int(original_max_position_embeddings),
    }


def yarn_overrides(
    factor: float = PAPER_YARN_FACTOR,
    original_max_position_embeddings: int = PAPER_ORIGINAL_MAX_POSITIONS,
    *,
    rope_theta: float | None = None,
) -> dict[str, Any]:
    """Config overrides for engines that take a dict (vLLM's ``hf_overrides``), in the transformers 5 form.

    rope_theta: the model's base; transformers 5 wants it inside
    ``rope_parameters``, so pass it when the engine replaces the dict whole.
    """
    params = yarn_rope_scaling(factor, original_max_position_embeddings)
    if rope_theta is not None:
        params["rope_theta"] = float(rope_theta)
    return {
        "rope_parameters": params,
        "max_position_embeddings": yarn_max_positions(factor, original_max_position_embeddings),
    }


def apply_yarn(
    config: ConfigT,
    factor: float = PAPER_YARN_FACTOR,
    original_max_position_embeddings: int = PAPER_ORIGINAL_MAX_POSITIONS,
) -> ConfigT:
    """A copy of an HF model config with YaRN rope scaling and max_position_embeddings = factor x original.

    The input config is not modified (a deep copy is returned), so the same
    base config can serve short and long runs. rope_theta and any partial
    rotary factor are kept. A config already using another scaling type
    (linear, llama3, longrope, ...) is refused: stacking two scalings is not
    what the model was evaluated with.
    """
    max_positions = yarn_max_positions(factor, original_max_position_embeddings)
    scaling = yarn_rope_scaling(factor, original_max_position_embeddings)
    new = copy.deepcopy(config)
    if hasattr(new, "rope_parameters"):
        params = getattr(new, "rope_parameters", None) or {}
        nested = _nested_keys(new, params)
        targets = [params[key] for key in nested if params[key] is not None] if nested else [params]
        for target in targets:
            _refuse_other_scaling(target)
            for stale in ("type", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
                target.pop(stale, None)
            target.update(scaling)
            if "rope_theta" not in target and getattr(new, "rope_theta", None) is not None:
                target["rope_theta"] = new.rope_theta
        new.rope_parameters = params
    else:
        _refuse_other_scaling(getattr(new, "rope_scaling", None) or {})
        new.rope_scaling = scaling
    new.max_position_embeddings = max_positions
    validate = getattr(new, "validate_rope", None)
    if callable(validate):
        validate()
    return new


def _nested_keys(config: Any, params: dict[str, Any]) -> list[str]:
    """Layer-type keys when rope_parameters holds one dict per layer type (transformers 5)."""
    nested = getattr(config, "nested_rope_parameter_keys", None)
    if callable(nested):
        return list(nested(params))
    return []


def _refuse_other_scaling(params: dict[str, Any]) -> None:
    kind = params.get("rope_type", params.get("type"))
    if kind not in _REPLACEABLE:
        raise ValueError(f"the config already uses rope scaling {kind!r}; refusing to replace it with yarn")


def _check(factor: float, original_max_position_embeddings: int) -> None:
    if not factor >= 1.0:
        raise ValueError(f"yarn factor must be >= 1, got {factor}")
    if (
        int(original_max_position_embeddings) != original_max_position_embeddings
        or original_max_position_embeddings < 1
    ):
        raise ValueError(
            f"original_max_position_embeddings must be a positive integer, got {original_max_position_embeddings}"
        )
