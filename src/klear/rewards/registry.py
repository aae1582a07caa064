"""Which reward function scores a row: one explicit registry, ``REWARDS``, plus user functions by path.

Rows are shaped like verl's RL data::

    {"data_source": "aime24", "ability": "math", "prompt": ...,
     "reward_model": {"style": "rule", "ground_truth": "204"}, "extra_info": {...}}

The function for a row is, in order:

1. ``cfg.custom[row["data_source"]]`` -- a user function, ``'pkg.module:function'``;
2. ``REWARDS[row["ability"]]``;
3. ``REWARDS[row["data_source"]]`` (rows without an ability);

and anything else is an error that names the row. Values are dotted paths, imported on first use in
the reward worker, so importing the registry never imports math_verify or the sandbox.

Every reward function, built in or user, has one signature::

    def my_reward(response: str, ground_truth: Any, cfg: RewardConfig) -> RewardResult | float | bool

``ground_truth`` is ``row["reward_model"]["ground_truth"]`` as stored (string, number, list or
object); ``cfg`` is the whole ``reward`` section of the recipe. A plain number (or bool) is accepted
and wrapped as ``RewardResult(score=float(x), correct=x > 0)``. It runs in a reward worker process,
on that process's main thread (signals work), under the pool's hard time bound ``item_timeout_s``.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from klear.types import RewardResult

if TYPE_CHECKING:
    from klear.config import RewardConfig

RewardFn = Callable[[str, Any, "RewardConfig"], "RewardResult | float | bool"]

#: ability (or data_source) -> reward function, as 'module:function' so nothing heavy loads early.
REWARDS: dict[str, str] = {
    "math": "klear.rewards.math:math_reward",
    "code": "klear.rewards.code:code_reward",
}


class RowError(ValueError):
    """A row the pool cannot score (no reward for it, no ground truth); ``index`` is its 0-based position."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"row {index}: {message}")
        self.index = index
        self.reason = message


def reward_path(row: Any, cfg: RewardConfig, index: int = 0) -> str:
    """The 'module:function' path that scores ``row`` (see the module docstring for the order)."""
    if not isinstance(row, dict):
        raise RowError(index, f"expected a JSON object, got {type(row).__name__}")
    source = row.get("data_source")
    ability = row.get("ability")
    if isinstance(source, str) and source in cfg.custom:
        return cfg.custom[source]
    if isinstance(ability, str) and ability in REWARDS:
        return REWARDS[ability]
    if isinstance(source, str) and source in REWARDS:
        return REWARDS[source]
    raise RowError(
        index,
        f"no reward function for data_source={source!r}, ability={ability!r}; "
        f"abilities with a built-in reward: {', '.join(sorted(REWARDS))}; for other data, set "
        f"reward.custom.<data_source>='pkg.module:function'",
    )


def ground_truth(row: dict[str, Any], index: int = 0) -> Any:
    """``row["reward_model"]["ground_truth"]``, or a RowError saying which part is missing."""
    spec = row.get("reward_model")
    if not isinstance(spec, dict):
        raise RowError(index, "missing 'reward_model' object (expected {'style': ..., 'ground_truth': ...})")
    if "ground_truth" not in spec or spec["ground_truth"] is None:
        raise RowError(index, "missing 'reward_model.ground_truth'")
    return spec["ground_truth"]


def load_function(path: str) -> RewardFn:
    """Import 'pkg.module:function'; errors name the path and what is missing."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward function {path!r}: expected 'pkg.module:function'")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward function {path!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def failure_score(path: str, cfg: RewardConfig) -> float:
    """The score given when the function for ``path`` could not finish (killed, crashed, raised).

    ``cfg.failure_score`` when set; otherwise the lowest ordinary score of that reward, so a failure
    is never better than a wrong answer: math ``negative``, code -1 (signed soft mapping) or 0, user
    functions 0.
    """
    if cfg.failure_score is not None:
        return cfg.failure_score
    if path == REWARDS["math"]:
        return cfg.math.negative
    if path == REWARDS["code"]:
        return -1.0 if cfg.code.mode == "soft" and cfg.code.soft_mapping == "signed" else 0.0
    return 0.0


def as_result(value: Any, path: str) -> RewardResult:
    """A reward function's return value as a RewardResult (numbers and bools are wrapped)."""
    if isinstance(value, RewardResult):
        return value
    if isinstance(value, numbers.Real):
        return RewardResult(score=float(value), correct=float(value) > 0)
    raise TypeError(
        f"reward function {path!r} returned {type(value).__name__}; expected RewardResult or a number"
    )
