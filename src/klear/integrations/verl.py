"""GPPO and Klear's rewards inside verl (tested against verl 0.9.1).

Two plug-ins, one import:

1. **Policy losses.** :func:`register` puts Klear's losses into verl's policy-loss registry
   (``verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY``) with verl's signature, so
   ``actor_rollout_ref.actor.policy_loss.loss_mode=gppo`` trains with GPPO (Klear-Reasoner Eq. 6).
   Names: ``gppo`` and ``cispo`` when verl has no loss of that name (verl 0.9.1 ships its own
   ``cispo``, which is kept: it equals ours, see the tests), and always ``klear_gppo``,
   ``klear_cispo`` and ``klear_ppo`` (our dual-clip PPO). The per-token loss is computed by
   :mod:`klear.algo.losses`; the aggregation is verl's own ``agg_loss`` with verl's
   ``loss_agg_mode`` and global batch counts, exactly as verl's built-in losses do, so micro-batch
   and data-parallel normalisation are verl's.

   Settings come from verl's actor config: ``clip_ratio_low`` / ``clip_ratio_high`` (each falling
   back to ``clip_ratio``) are ``eps_low`` / ``eps_high``, ``clip_ratio_c`` is the dual-clip bound,
   ``loss_agg_mode`` the aggregation. GPPO's own knobs ``beta_low``, ``beta_high`` (CE-GPPO) and
   ``only_high`` live in the ``policy_loss`` sub-config; verl's ``PolicyLossConfig`` has no such
   fields, so select :class:`KlearPolicyLossConfig` (a subclass that adds them)::

       actor_rollout_ref.actor.policy_loss._target_=klear.integrations.verl.KlearPolicyLossConfig
       actor_rollout_ref.actor.policy_loss.loss_mode=gppo
       +actor_rollout_ref.actor.policy_loss.only_high=true

   Without it the knobs take GPPO's defaults (betas 1, both sides preserved).

2. **Rewards.** :func:`compute_score` (verl's ``custom_reward_function`` signature),
   :func:`compute_score_async` (the same, batched: concurrent calls from verl's reward loop are
   scored together by one :class:`~klear.rewards.pool.RewardPool`) and :func:`compute_score_batch`
   (verl's batch signature). Point verl at them with
   ``reward.custom_reward_function.path=pkg://klear.integrations.verl`` and
   ``reward.custom_reward_function.name=compute_score_async``.

   verl decodes the response tokens alone, so with a chat template that opens ``<think>`` in the
   generation prompt (Qwen3, Klear-Reasoner) the text starts inside the reasoning, and the math
   reward's format check would score every response as missing ``<think>``. Pass the model's
   tokenizer directory (``reward_kwargs.tokenizer=${actor_rollout_ref.model.path}``) or the
   prefix itself (``reward_kwargs.think_prefix``): the reward then judges prefix + response, as
   Klear's own trainer and evaluation do (:mod:`klear.rewards.think`).

How the registration reaches verl's worker processes (any one suffices):

- installed with pip, Klear declares a ``verl.plugins`` entry point, which ``import verl`` loads in
  every process (verl >= 0.9; ``VERL_USE_EXTERNAL_PLUGINS=none`` turns that off);
- ``policy_loss._target_=klear.integrations.verl.KlearPolicyLossConfig`` imports this module
  wherever verl builds the actor config, i.e. in the worker that computes the loss;
- ``VERL_USE_EXTERNAL_MODULES=klear.integrations.verl`` in the workers' environment.

Not carried over: Klear's SFT term on positive rollouts (``loss.sft_alpha``) -- verl's loss hook
sees advantages, not rewards -- and GSPO (verl has its own ``gspo``).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from verl.trainer.ppo import core_algos
from verl.workers.config import PolicyLossConfig

from klear.algo.aggregate import masked_mean
from klear.algo.losses import LOSSES
from klear.config import AGG_MODES, LossConfig, RewardConfig, build_config, read_yaml
from klear.rewards import registry as reward_registry
from klear.rewards import think as think_tags
from klear.rewards.pool import RewardPool
from klear.rewards.think import judged_text
from klear.types import RewardResult

__all__ = [
    "KlearPolicyLossConfig",
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
    "loss_config",
    "register",
]

#: verl loss name -> Klear loss type. ``gppo``/``cispo`` only where verl has no loss of that name.
VERL_LOSSES: dict[str, str] = {
    "gppo": "gppo",
    "cispo": "cispo",
    "klear_gppo": "gppo",
    "klear_cispo": "cispo",
    "klear_ppo": "ppo",
}

# exp() of a log-ratio is clamped here by verl's losses; the KL metric uses the same clamp.
_MAX_LOG_RATIO = 20.0


# ---------------------------------------------------------------------------------------------
# Policy losses
# ---------------------------------------------------------------------------------------------


@dataclass
class KlearPolicyLossConfig(PolicyLossConfig):
    """verl's ``policy_loss`` sub-config plus GPPO's knobs (select it with ``policy_loss._target_``).

    beta_low / beta_high: CE-GPPO scales of the preserved gradient on the A<0 / A>0 clipped sides
    (1, 1 is GPPO); only_high: preserve only the A>0 side's gradient.
    """

    loss_mode: str = "gppo"
    beta_low: float = 1.0
    beta_high: float = 1.0
    only_high: bool = False


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for verl's dataclass configs, DictConfigs and dicts alike; ``default`` if absent."""
    if config is None:
        return default
    if isinstance(config, Mapping) or hasattr(config, "get"):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


@lru_cache(maxsize=64)
def _cached_loss_config(
    loss_type: str,
    eps_low: float,
    eps_high: float,
    clip_ratio_c: float | None,
    beta_low: float,
    beta_high: float,
    only_high: bool,
    agg: str,
) -> LossConfig:
    return LossConfig(
        type=loss_type,
        eps_low=eps_low,
        eps_high=eps_high,
        clip_ratio_c=clip_ratio_c,
        beta_low=beta_low,
        beta_high=beta_high,
        only_high=only_high,
        agg=agg,
    )


def loss_config(config: Any, loss_type: str, loss_agg_mode: str = "token-mean") -> LossConfig:
    """The :class:`~klear.config.LossConfig` that verl's actor ``config`` means for ``loss_type``.

    ``clip_ratio_low``/``clip_ratio_high`` (falling back to ``clip_ratio``) -> ``eps_low``/``eps_high``;
    ``clip_ratio_c`` -> ``clip_ratio_c`` (verl's default 3.0 when absent, null: no dual clip); ``policy_loss.beta_low``,
    ``beta_high``, ``only_high`` -> the same (GPPO only); ``loss_agg_mode`` -> ``agg`` where Klear
    has that mode (``token-sum`` has no Klear twin: it is verl's ``agg_loss`` that aggregates).
    """
    clip_ratio = _get(config, "clip_ratio", 0.2)
    policy = _get(config, "policy_loss")
    gppo = loss_type == "gppo"
    return _cached_loss_config(
        loss_type,
        float(_get(config, "clip_ratio_low", clip_ratio)),
        float(_get(config, "clip_ratio_high", clip_ratio)),
        _dual_clip(config),
        float(_get(policy, "beta_low", 1.0)) if gppo else 1.0,
        float(_get(policy, "beta_high", 1.0)) if gppo else 1.0,
        bool(_get(policy, "only_high", False)) if gppo else False,
        loss_agg_mode if loss_agg_mode in AGG_MODES else "token-mean",
    )


def _dual_clip(config: Any) -> float | None:
    """verl's ``clip_ratio_c`` (its default 3.0 when the key is absent); an explicit null disables dual clip."""
    if config is None:
        return 3.0
    has = config.get if (isinstance(config, Mapping) or hasattr(config, "get")) else None
    c = has("clip_ratio_c", 3.0) if has is not None else getattr(config, "clip_ratio_c", 3.0)
    return None if c is None else float(c)


def _make_verl_loss(loss_type: str):
    """A verl policy loss (verl 0.9.1's ``PolicyLossFn`` signature) computing Klear's ``loss_type``."""

    def policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        cfg = loss_config(config, loss_type, loss_agg_mode)
        mask = response_mask.to(torch.float32)
        log_prob_f = log_prob.float()
        old_f = old_log_prob.float()
        out = LOSSES[loss_type](log_prob_f, old_f, advantages.float(), mask, cfg)
        loss_mat = out.loss
        if rollout_is_weights is not None:  # verl's rollout correction (off-policy IS) weights
            loss_mat = loss_mat * rollout_is_weights
        batch_info = dict(_get(config, "global_batch_info", None) or {})
        pg_loss = core_algos.agg_loss(
            loss_mat=loss_mat, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **batch_info
        )
        with torch.no_grad():
            log_ratio = (log_prob_f.detach() - old_f).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
            clipped = out.clipped_high | out.clipped_low
            metrics = {
                # verl's names: pg_clipfrac = clipped by either bound, pg_clipfrac_lower = dual clip
                "actor/pg_clipfrac": masked_mean(clipped.float(), mask).item(),
                "actor/ppo_kl": masked_mean(-log_ratio, mask).item(),
                "actor/pg_clipfrac_lower": masked_mean(out.dual.float(), mask).item(),
                "actor/pg_clipfrac_high": masked_mean(out.clipped_high.float(), mask).item(),
                "actor/pg_clipfrac_low": masked_mean(out.clipped_low.float(), mask).item(),
            }
        return pg_loss, metrics

    policy_loss.__name__ = policy_loss.__qualname__ = f"klear_{loss_type}_policy_loss"
    policy_loss.__doc__ = (
        f"Klear's {loss_type!r} loss (klear.algo.losses) with verl's signature and agg_loss."
    )
    policy_loss.klear_loss_type = loss_type  # type: ignore[attr-defined]
    return policy_loss


_VERL_FNS = {loss_type: _make_verl_loss(loss_type) for loss_type in sorted(set(VERL_LOSSES.values()))}


def register() -> dict[str, str]:
    """Register Klear's losses in verl's policy-loss registry; idempotent.

    Returns ``{verl name: owner}``, owner ``'klear'`` or ``'verl'`` (a name verl already had, e.g.
    verl's own ``cispo``, is left alone; the ``klear_*`` names are always ours).
    """
    registry = core_algos.POLICY_LOSS_REGISTRY
    owners: dict[str, str] = {}
    for name, loss_type in VERL_LOSSES.items():
        existing = registry.get(name)
        ours = existing is None or hasattr(existing, "klear_loss_type") or name.startswith("klear_")
        if ours:
            core_algos.register_policy_loss(name)(_VERL_FNS[loss_type])
        owners[name] = "klear" if ours else "verl"
    return owners


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------

#: Seconds the batched scorer waits for more concurrent calls before it starts a batch.
BATCH_WINDOW_S = 0.005

_POOLS: dict[str, RewardPool] = {}
_POOLS_LOCK = threading.Lock()


def _reward_config(reward_config: Any) -> RewardConfig:
    """``reward_config`` as a RewardConfig: None (defaults), a dict of its fields, or a YAML path.

    A YAML file may be a whole Klear recipe (its ``reward:`` section is used) or the section alone.
    """
    if reward_config is None:
        return RewardConfig()
    if isinstance(reward_config, RewardConfig):
        return reward_config
    if isinstance(reward_config, (str, Path)):
        data = read_yaml(reward_config) or {}
        return build_config(RewardConfig, data.get("reward", data), str(reward_config))
    if isinstance(reward_config, Mapping) or hasattr(reward_config, "items"):
        return build_config(RewardConfig, _plain(reward_config), "reward_kwargs.reward_config")
    raise TypeError(
        f"reward_config: expected None, a dict or a YAML path, got {type(reward_config).__name__}"
    )


def _plain(value: Any) -> Any:
    """OmegaConf containers and numpy values (as verl passes them) as plain Python objects."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy arrays and scalars (parquet lists arrive as arrays)
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def reward_pool(reward_config: Any = None) -> RewardPool:
    """This process's RewardPool for ``reward_config`` (started on first use, closed at exit)."""
    cfg = _reward_config(reward_config)
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = RewardPool(cfg)
    return pool


@atexit.register
def close_pools() -> None:
    """Stop every reward pool this module started."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


def _row(data_source: Any, ground_truth_value: Any, extra_info: Any, ability: str | None) -> dict[str, Any]:
    """A Klear reward row from verl's arguments.

    verl passes ``data_source``, the ground truth and ``extra_info`` but not the row's ``ability``;
    the reward is chosen (``klear.rewards.registry``) by ``reward.custom[data_source]``, then the
    ability -- ``extra_info['ability']`` or else the ``ability`` keyword (``reward_kwargs``) --
    then the data source itself (``math``, ``code``).
    """
    extra = _plain(extra_info) if extra_info is not None else {}
    row_ability = extra.get("ability") if isinstance(extra, dict) else None
    return {
        "data_source": str(data_source),
        "ability": row_ability or ability,
        "reward_model": {"ground_truth": _plain(ground_truth_value)},
    }


def _verl_result(result: RewardResult) -> dict[str, float]:
    """What verl keeps per response: ``score`` is the reward, ``acc`` feeds metrics and DAPO filtering."""
    return {"score": float(result.score), "acc": float(result.correct)}


@lru_cache(maxsize=8)
def _template_prefix(tokenizer: str) -> str:
    from transformers import AutoTokenizer

    return think_tags.think_prefix(AutoTokenizer.from_pretrained(tokenizer))


def response_prefix(think_prefix: str | None = None, tokenizer: Any = None) -> str:
    """What verl's decoded response is judged after: ``think_prefix`` if given, else the think
    prefix of ``tokenizer``'s chat template (a directory or hub name, loaded once per process),
    else ``""``."""
    if think_prefix is not None:
        return str(think_prefix)
    if tokenizer is None:
        return ""
    return _template_prefix(str(tokenizer))


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    reward_config: Any = None,
    ability: str | None = None,
    think_prefix: str | None = None,
    tokenizer: str | None = None,
    **_: Any,
) -> dict[str, float]:
    """verl's ``custom_reward_function``: one response scored by Klear's RewardPool.

    Keywords come from ``reward.custom_reward_function.reward_kwargs``: ``reward_config`` (a dict of
    :class:`~klear.config.RewardConfig` fields, or a YAML path), ``ability`` (the reward for
    rows whose ``extra_info`` has no ``ability``, e.g. ``math``), and ``tokenizer`` (the model's
    directory) or ``think_prefix`` (see :func:`response_prefix`); others verl adds are ignored.
    Returns ``{"score": reward, "acc": 1.0 if correct else 0.0}``.
    """
    row = _row(data_source, ground_truth, extra_info, ability)
    text = judged_text(response_prefix(think_prefix, tokenizer), solution_str)
    return _verl_result(reward_pool(reward_config).score([row], [text])[0])


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    *,
    reward_config: Any = None,
    ability: str | None = None,
    think_prefix: str | None = None,
    tokenizer: str | None = None,
    **_: Any,
) -> list[dict[str, float]]:
    """verl's batch signature (``reward_manager=batch``): every response scored in one pool call."""
    extras = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    rows = [
        _row(ds, gt, extra, ability)
        for ds, gt, extra in zip(data_sources, ground_truths, extras, strict=True)
    ]
    prefix = response_prefix(think_prefix, tokenizer)
    results = reward_pool(reward_config).score(rows, [judged_text(prefix, s) for s in solution_strs])
    return [_verl_result(r) for r in results]


class _Batcher:
    """Collects concurrent async calls on one event loop into one ``RewardPool.score`` per round.

    verl's reward loop awaits one ``compute_score`` per response, all at once (``asyncio.gather``);
    calls that arrive while a round is scoring go into the next round.
    """

    def __init__(self, pool: RewardPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.pending: list[tuple[dict[str, Any], str, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def score(self, row: dict[str, Any], response: str) -> RewardResult:
        # a bad row fails its own call here, not the round it would have joined
        reward_registry.reward_path(row, self.pool.cfg)
        reward_registry.ground_truth(row)
        future = self.loop.create_future()
        self.pending.append((row, response, future))
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[dict[str, Any], str, asyncio.Future]] = []
        try:
            await asyncio.sleep(BATCH_WINDOW_S)
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    results = await asyncio.to_thread(
                        self.pool.score, [b[0] for b in batch], [b[1] for b in batch]
                    )
                except Exception as exc:
                    _fail(batch, exc)
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        except BaseException as exc:  # cancelled or worse: no caller may wait forever
            _fail(batch + self.pending, exc)
            self.pending = []
            raise


def _fail(batch: list[tuple[dict[str, Any], str, asyncio.Future]], exc: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


_BATCHERS: dict[tuple[int, int], _Batcher] = {}


async def compute_score_async(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    reward_config: Any = None,
    ability: str | None = None,
    think_prefix: str | None = None,
    tokenizer: str | None = None,
    **_: Any,
) -> dict[str, float]:
    """:func:`compute_score` for verl's async reward loop: concurrent calls are scored as one batch."""
    pool = reward_pool(reward_config)
    loop = asyncio.get_running_loop()
    key = (id(loop), id(pool))
    batcher = _BATCHERS.get(key)
    if batcher is None or batcher.loop is not loop or batcher.pool is not pool:
        batcher = _BATCHERS[key] = _Batcher(pool, loop)
    row = _row(data_source, ground_truth, extra_info, ability)
    text = judged_text(response_prefix(think_prefix, tokenizer), solution_str)
    return _verl_result(await batcher.score(row, text))


register()
