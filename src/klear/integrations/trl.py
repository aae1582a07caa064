"""TRL plug-in: train with GPPO in TRL's ``GRPOTrainer``, score with Klear's reward pool.

Two pieces, usable together or apart::

    from trl import GRPOConfig
    from klear.integrations.trl import KlearGRPOTrainer, klear_reward_func

    reward = klear_reward_func()                      # a RewardPool behind TRL's reward signature
    args = GRPOConfig(loss_type="gppo", epsilon=0.2, epsilon_high=0.28, ...)
    trainer = KlearGRPOTrainer(model, reward_funcs=reward, args=args, train_dataset=rows)
    trainer.train()
    reward.close()

**The loss.** :class:`KlearGRPOTrainer` is ``GRPOTrainer`` with one more family of
``loss_type`` values: ``"gppo"`` (Klear-Reasoner Eq. 6) and ``"klear"`` (whatever
``LossConfig.type`` names: ``gppo``, ``ppo``, ``cispo``, ``gspo`` or a user path). For these the
per-token loss, its aggregation and the SFT term come from :func:`klear.algo.losses.policy_loss`
-- the very function Klear's own trainer calls -- and TRL supplies the log-probs, old
log-probs, advantages and masks. TRL's ``epsilon`` / ``epsilon_high`` map to ``eps_low`` /
``eps_high``; pass ``loss_config=LossConfig(...)`` for everything else (dual clip
``clip_ratio_c``, CE-GPPO ``beta_low``/``beta_high``, ``only_high``, ``agg``, ``sft_alpha``);
when given, it is the single source of truth and TRL's epsilons are ignored. Every other
``loss_type`` is TRL's own, untouched. (TRL's ``"cispo"`` is TRL's: one-sided, clamped at
``epsilon_high`` as an absolute bound; Klear's CISPO is ``loss_type="klear"`` with
``LossConfig(type="cispo")``.)

Aggregation matches Klear's: the normaliser counts the whole optimizer step (all
gradient-accumulation micro-batches, all ranks), from TRL's ``num_items_in_batch`` (tokens of
the generation batch, all ranks) and the same count of sequences, scaled by
``gradient_accumulation_steps / steps_per_generation`` as TRL's ``dapo`` loss does. It is exact
when a generation batch is one optimizer step (TRL's default ``steps_per_generation =
gradient_accumulation_steps``); otherwise it uses the average step of the generation batch, as TRL does.

**The reward.** :func:`klear_reward_func` returns a :class:`KlearRewardFunction`: a callable with
TRL's reward signature ``(prompts, completions, completion_ids, **columns) -> list[float]`` that
scores through one long-lived :class:`~klear.rewards.pool.RewardPool` (math verifier, code
sandbox, user functions; each item under a hard time bound). Dataset columns arrive as keyword
lists, so a dataset in Klear's row shape (``data_source``, ``ability``,
``reward_model.ground_truth``; what ``klear.tasks.task_rows`` returns) needs no glue. Flagged
results are never silent: per-batch flag fractions go to TRL's metrics through ``log_metric``
(``<name>/flag/<flag>``), and responses not judged cleanly (timeout, error, sandbox restart)
are also logged as a warning. Scores are the pool's: an item the pool killed or lost gets
``RewardConfig.failure_score``.

**TRL internals this module relies on** (checked against TRL 1.16.0; a newer TRL may move them):
``GRPOTrainer._compute_loss(model, inputs)`` (replaced for Klear loss types),
``GRPOTrainer._get_per_token_logps_and_entropies(...) -> (logps, entropies, aux_loss)``,
``GRPOTrainer._generate_and_score_completions(inputs) -> dict`` (extended with up to four 0-dim/[B] entries),
the keys of that dict (``prompt_ids``, ``prompt_mask``, ``completion_ids``, ``completion_mask``,
``tool_mask``, ``advantages``, ``num_items_in_batch``, ``old_per_token_logps`` -- absent when it
equals the current log-probs), the convention that 0-dim tensors in it are not split into
micro-batches, ``GRPOTrainer.loss_is_scaled_for_ga = True`` (the returned loss is
backpropagated unscaled), ``self._metrics[mode]`` lists, and the reward-function keywords
``completion_ids`` and ``log_metric``. :data:`TRL_MIN_VERSION` is enforced at import; newer
major versions warn.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import trl
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer

from klear.algo.aggregate import Normaliser
from klear.algo.losses import policy_loss
from klear.config import LossConfig, RewardConfig
from klear.rewards import think as think_tags
from klear.rewards.pool import RewardPool
from klear.rewards.think import judged_text, prompt_think_prefix
from klear.types import REWARD_FLAGS, RewardResult

logger = logging.getLogger(__name__)

#: Oldest TRL whose GRPOTrainer internals this module was written against (see the module docstring).
TRL_MIN_VERSION = "1.16.0"
#: First TRL version not checked: importing under it warns.
TRL_UNTESTED_FROM = "2.0.0"

if Version(trl.__version__) < Version(TRL_MIN_VERSION):
    raise ImportError(
        f"klear.integrations.trl needs trl>={TRL_MIN_VERSION} (found {trl.__version__}): it extends "
        "GRPOTrainer internals that changed before that version. Upgrade with "
        f"`pip install -c constraints.txt 'trl>={TRL_MIN_VERSION}'` (pin torch in the constraints)."
    )
if Version(trl.__version__) >= Version(TRL_UNTESTED_FROM):
    warnings.warn(
        f"klear.integrations.trl was checked against trl {TRL_MIN_VERSION}..<{TRL_UNTESTED_FROM}; "
        f"found {trl.__version__}. Run tests/integrations/test_trl.py before trusting it.",
        stacklevel=2,
    )

#: ``GRPOConfig.loss_type`` values that route the loss through ``klear.algo.losses``.
KLEAR_LOSS_TYPES: tuple[str, ...] = ("gppo", "klear")

#: Flags of a verdict that is not clean (a verifier or test timed out, a scorer failed): logged as a warning.
FAILURE_FLAGS: tuple[str, ...] = ("timeout", "error", "sandbox_restart")

#: Keywords TRL passes to reward functions that are not dataset columns.
_TRL_REWARD_KWARGS = frozenset({"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"})

#: Multimodal / extra model inputs TRL forwards to ``_get_per_token_logps_and_entropies`` when present.
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text a TRL completion holds: a string as is; for a conversation, its assistant turns joined.

    A turn whose reasoning a response parser split off (``reasoning_content`` or ``thinking``) is
    put back as ``<think>REASONING</think>CONTENT``, the form Klear's math reward reads. Pass a
    tokenizer to :func:`klear_reward_func` to score the exact decoded tokens instead.
    """
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        if message.get("role", "assistant") != "assistant":
            continue  # tool results are not the model's text
        content = message.get("content") or ""
        if isinstance(content, list):  # content blocks: keep the text ones
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        reasoning = message.get("reasoning_content") or message.get("thinking")
        parts.append(f"<think>{reasoning}</think>{content}" if reasoning else content)
    return "\n".join(parts)


def _has_parsed_reasoning(completion: Any) -> bool:
    """A conversational completion with a turn whose reasoning a response parser split off."""
    if isinstance(completion, str):
        return False
    return any(m.get("reasoning_content") or m.get("thinking") for m in completion if isinstance(m, Mapping))


def _is_column(value: Any, n: int) -> bool:
    """A per-completion column: TRL passes lists; a ``datasets`` column (sequence-like) is accepted too."""
    if isinstance(value, (str, bytes, Mapping)):
        return False
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and len(value) == n


class KlearRewardFunction:
    """Klear's reward pool as a TRL reward function; see :func:`klear_reward_func`.

    After each call: ``last_results`` (one :class:`RewardResult` per completion, in order),
    ``last_metrics`` (the pool's counts); over the run: ``flag_counts`` and ``calls``.
    """

    def __init__(
        self,
        cfg: RewardConfig | None = None,
        *,
        pool: RewardPool | None = None,
        name: str = "klear_reward",
        tokenizer: Any = None,
        data_source: str | None = None,
        ability: str | None = None,
        think_prefix: str | None = None,
    ) -> None:
        if pool is not None and cfg is not None and pool.cfg is not cfg:
            raise ValueError("pass either cfg or pool (a pool carries its own RewardConfig), not both")
        self.cfg = pool.cfg if pool is not None else (cfg or RewardConfig())
        self.__name__ = name  # TRL names the reward's metrics (rewards/<name>/mean) after it
        self.tokenizer = tokenizer
        self.data_source = data_source
        self.ability = ability
        self.think_prefix = think_prefix
        self._template_prefix: str | None = None
        self._pool = pool
        self._owns_pool = pool is None
        self.last_results: list[RewardResult] = []
        self.last_metrics: dict[str, float] = {}
        self.flag_counts: Counter[str] = Counter()
        self.calls = 0

    @property
    def pool(self) -> RewardPool:
        """The pool, started on first use and kept for every later call."""
        if self._pool is None:
            self._pool = RewardPool(self.cfg)
        return self._pool

    def close(self) -> None:
        """Stop the pool's workers if this function started them (a pool passed in is the caller's)."""
        if self._pool is not None and self._owns_pool:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> KlearRewardFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, n: int, columns: dict[str, Any]) -> list[dict[str, Any]]:
        """The Klear rows of a batch from TRL's keyword columns (one list of ``n`` values per column).

        A flat ``ground_truth`` column becomes ``reward_model.ground_truth``; ``data_source`` and
        ``ability`` fall back to this function's defaults.
        """
        lists = {k: v for k, v in columns.items() if k not in _TRL_REWARD_KWARGS and _is_column(v, n)}
        out = []
        for i in range(n):
            row = {k: v[i] for k, v in lists.items()}
            if row.get("reward_model") is None and "ground_truth" in row:
                row["reward_model"] = {"ground_truth": row["ground_truth"]}
            if row.get("data_source") is None and self.data_source is not None:
                row["data_source"] = self.data_source
            if row.get("ability") is None and self.ability is not None:
                row["ability"] = self.ability
            out.append(row)
        return out

    def texts(
        self,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None,
        prompts: Sequence[Any] | None = None,
    ) -> list[str]:
        """What the reward judges per completion (:mod:`klear.rewards.think`): the think prefix its
        prompt opened, then the response -- decoded ``completion_ids`` when a tokenizer was given,
        else :func:`completion_text`. A completion whose reasoning a response parser split off is
        already whole (``<think>...</think>`` put back) and gets no prefix."""
        n = len(completions) if completion_ids is None else len(completion_ids)
        prompt_list = list(prompts) if prompts is not None and len(prompts) == n else [None] * n
        if self.tokenizer is not None and completion_ids is not None:
            raw = self.tokenizer.batch_decode(list(completion_ids), skip_special_tokens=True)
            return [judged_text(self.prefix(p), r) for p, r in zip(prompt_list, raw, strict=True)]
        return [
            completion_text(c)
            if _has_parsed_reasoning(c)
            else judged_text(self.prefix(p), completion_text(c))
            for p, c in zip(prompt_list, completions, strict=True)
        ]

    def prefix(self, prompt: Any) -> str:
        """The think prefix a completion was sampled after: ``think_prefix`` when given; for a text
        prompt, the ``<think>`` block its end opened; for a conversation, the one the tokenizer's
        chat template opens (``""`` without a tokenizer)."""
        if self.think_prefix is not None:
            return self.think_prefix
        if isinstance(prompt, str):
            return prompt_think_prefix(prompt)
        if self.tokenizer is None:
            return ""
        if self._template_prefix is None:
            self._template_prefix = think_tags.think_prefix(self.tokenizer)
        return self._template_prefix

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        completion_ids: Sequence[Sequence[int]] | None = None,
        **columns: Any,
    ) -> list[float]:
        """TRL's reward-function signature; returns one score per completion, in order."""
        n = len(completions)
        results = self.pool.score(self.rows(n, columns), self.texts(completions, completion_ids, prompts))
        self.last_results = results
        self.last_metrics = dict(self.pool.last_metrics)
        self.calls += 1
        self._report(results, columns.get("log_metric"))
        return [r.score for r in results]

    def _report(self, results: list[RewardResult], log_metric: Any) -> None:
        """Count flags; tell TRL's metrics (fractions of the batch); log a warning for unclean verdicts."""
        n = max(len(results), 1)
        counts = Counter(f for r in results for f in r.flags)
        self.flag_counts.update(counts)
        if log_metric is not None:
            log_metric(f"{self.__name__}/accuracy", sum(r.correct for r in results) / n)
            for flag in REWARD_FLAGS:
                log_metric(f"{self.__name__}/flag/{flag}", counts.get(flag, 0) / n)
        failed = [r for r in results if any(f in FAILURE_FLAGS for f in r.flags)]
        if failed:
            kinds = ", ".join(f"{counts[f]} {f}" for f in FAILURE_FLAGS if counts.get(f))
            logger.warning(
                "%s: %d of %d responses not judged cleanly (%s); scored as their reward decided "
                "(an item the pool killed or lost: reward.failure_score). First: %s",
                self.__name__,
                len(failed),
                len(results),
                kinds,
                failed[0].detail,
            )


def klear_reward_func(
    cfg: RewardConfig | None = None,
    *,
    pool: RewardPool | None = None,
    name: str = "klear_reward",
    tokenizer: Any = None,
    data_source: str | None = None,
    ability: str | None = None,
    think_prefix: str | None = None,
) -> KlearRewardFunction:
    """A TRL reward function that scores with Klear's rewards through one long-lived reward pool.

    Args:
        cfg: the reward settings (default ``RewardConfig()``: math +1/-1 with format penalties,
            code soft reward, 2 workers).
        pool: an existing pool to use instead (its ``cfg`` applies; the caller closes it).
        name: the function's ``__name__``; TRL logs ``rewards/<name>/mean`` and this function
            logs ``<name>/accuracy`` and ``<name>/flag/<flag>``.
        tokenizer: when given, responses are the decoded ``completion_ids``
            (``skip_special_tokens=True``) rather than TRL's parsed completions.
        data_source, ability: for datasets without those columns (e.g. ``ability="math"``).
        think_prefix: what each response is judged after (:mod:`klear.rewards.think`). Default:
            for text prompts, the ``<think>`` block the prompt's end opened; for conversational
            prompts, the block the tokenizer's chat template opens (Qwen3: ``"<think>\\n"``), so
            a response that starts inside its reasoning is not scored as missing ``<think>``.

    The pool starts on the first call; call ``.close()`` (or use ``with``) when training ends.
    """
    return KlearRewardFunction(
        cfg,
        pool=pool,
        name=name,
        tokenizer=tokenizer,
        data_source=data_source,
        ability=ability,
        think_prefix=think_prefix,
    )


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def loss_config_from_trl(args: GRPOConfig, loss_config: LossConfig | None = None) -> LossConfig | None:
    """The Klear loss settings a ``GRPOConfig`` asks for; ``None`` when its ``loss_type`` is TRL's own.

    ``loss_type="gppo"``: GPPO with ``eps_low = epsilon`` and ``eps_high = epsilon_high`` (or
    ``epsilon``), token-mean, the other fields at ``LossConfig``'s defaults; ``"klear"``: any Klear
    loss. A ``loss_config`` given is used as is (TRL's epsilons are then ignored). Raises
    ``ValueError`` for TRL options the Klear path does not implement.
    """
    if args.loss_type not in KLEAR_LOSS_TYPES:
        if loss_config is not None:
            raise ValueError(
                f"loss_config is used with loss_type in {KLEAR_LOSS_TYPES}, but GRPOConfig.loss_type is "
                f"{args.loss_type!r}; set loss_type='klear' (any Klear loss) or 'gppo'"
            )
        return None
    if loss_config is None:
        eps_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        loss_config = LossConfig(type="gppo", eps_low=args.epsilon, eps_high=eps_high, agg="token-mean")
    elif args.loss_type == "gppo" and loss_config.type != "gppo":
        raise ValueError(
            f"loss_type='gppo' but loss_config.type={loss_config.type!r}; use loss_type='klear' for other losses"
        )
    unsupported = {
        "beta != 0 (KL to a reference model; Klear trains without KL)": args.beta != 0.0,
        "importance_sampling_level='sequence' (use LossConfig(type='gspo', agg='seq-mean-token-mean'))": (
            args.importance_sampling_level != "token"
        ),
        "delta (use LossConfig.clip_ratio_c, the dual clip)": args.delta is not None,
        "top_entropy_quantile < 1": args.top_entropy_quantile < 1.0,
        "off_policy_mask_threshold": args.off_policy_mask_threshold is not None,
        "entropy_coef / use_adaptive_entropy": args.entropy_coef != 0.0 or bool(args.use_adaptive_entropy),
        "use_vllm with vllm_importance_sampling_correction (set it to False)": bool(
            args.use_vllm and args.vllm_importance_sampling_correction
        ),
    }
    bad = [what for what, on in unsupported.items() if on]
    if bad:
        raise ValueError(f"loss_type={args.loss_type!r} (Klear's losses) does not support: {'; '.join(bad)}")
    return loss_config


class KlearGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose loss, for ``loss_type`` in :data:`KLEAR_LOSS_TYPES`, is ``klear.algo.losses``.

    Takes ``GRPOTrainer``'s arguments plus ``loss_config`` (a :class:`~klear.config.LossConfig`).
    With ``loss_config.sft_alpha > 0`` the ``alpha * NLL`` term covers the completions a
    :class:`KlearRewardFunction` among ``reward_funcs`` judged correct (as Klear's trainer does).
    Logs ``klear/clip_frac_high``, ``klear/clip_frac_low``, ``klear/dual_clip_frac``,
    ``klear/approx_kl``, ``klear/ratio_mean`` (...) and ``entropy``.
    """

    def __init__(
        self, model: Any, reward_funcs: Any = None, args: GRPOConfig | None = None, *rest: Any, **kwargs: Any
    ):
        loss_config = kwargs.pop("loss_config", None)
        if args is not None:  # fail before loading anything
            loss_config_from_trl(args, loss_config)
        elif loss_config is not None:
            raise ValueError("loss_config needs args=GRPOConfig(loss_type='gppo' or 'klear', ...)")
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
        self.loss_config = loss_config_from_trl(self.args, loss_config)
        self._klear_reward = next((f for f in self.reward_funcs if isinstance(f, KlearRewardFunction)), None)
        if self.loss_config is not None:
            # TRL reads these only in its own losses; keep them truthful for anything that prints them
            self.epsilon_low, self.epsilon_high = self.loss_config.eps_low, self.loss_config.eps_high
            if self.loss_config.sft_alpha > 0.0 and self._klear_reward is None:
                raise ValueError(
                    "loss_config.sft_alpha > 0 needs a KlearRewardFunction (klear_reward_func()) among "
                    "reward_funcs: its verdicts pick the completions of the SFT term"
                )
            if self.aux_loss_enabled:
                raise ValueError(
                    "Klear's losses do not add the MoE router aux loss; set router_aux_loss_coef=0"
                )

    # -- generation: the counts the normaliser needs, and the SFT mask -------------------------

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        calls = self._klear_reward.calls if self._klear_reward is not None else 0
        output = super()._generate_and_score_completions(inputs)
        if self.loss_config is None:
            return output
        mask = self._loss_mask(output).float()
        # 0-dim tensors are kept whole by TRL's split into micro-batches, like num_items_in_batch
        output["klear_num_seqs"] = self.accelerator.gather((mask.sum(-1) > 0).sum()).sum()
        if self.loss_config.sft_alpha > 0.0:
            rf = self._klear_reward
            if rf is None or rf.calls == calls or len(rf.last_results) != mask.size(0):
                raise RuntimeError(
                    "sft_alpha > 0: the Klear reward function did not score this generation batch "
                    f"({mask.size(0)} completions); it must be one of reward_funcs and synchronous"
                )
            sft = torch.tensor([r.correct for r in rf.last_results], device=mask.device)
            output["klear_sft_mask"] = sft
            pos = mask * sft[:, None]
            output["klear_num_sft_tokens"] = self.accelerator.gather(pos.sum()).sum()
            output["klear_num_sft_seqs"] = self.accelerator.gather((pos.sum(-1) > 0).sum()).sum()
        return output

    @staticmethod
    def _loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask if inputs.get("tool_mask") is None else mask * inputs["tool_mask"]

    def klear_normaliser(self, inputs: dict[str, Any], mode: str) -> tuple[Normaliser, Normaliser | None]:
        """Normalisers of this rank's micro-batch such that, summed over the accumulation window and
        averaged over ranks (DDP), the loss is Klear's aggregate over the whole optimizer step."""
        scale = 1.0 / self.accelerator.num_processes
        if mode == "train":
            accum = getattr(
                self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
            )
            scale *= accum / self.args.steps_per_generation
        norm_len = float(self.max_completion_length)
        norm = Normaliser(
            num_tokens=float(inputs["num_items_in_batch"]) * scale,
            num_seqs=float(inputs["klear_num_seqs"]) * scale,
            norm_len=norm_len,
        )
        sft_norm = None
        if "klear_num_sft_tokens" in inputs:
            # the SFT term is averaged over the positive completions only, as in Klear's trainer
            sft_norm = Normaliser(
                num_tokens=float(inputs["klear_num_sft_tokens"]) * scale,
                num_seqs=float(inputs["klear_num_sft_seqs"]) * scale,
                norm_len=norm_len,
            )
        return norm, sft_norm

    # -- the loss -------------------------------------------------------------------------------

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if self.loss_config is None:
            return super()._compute_loss(model, inputs)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = self._loss_mask(inputs)
        extra = {k: inputs[k] for k in _FORWARD_KEYS if inputs.get(k) is not None}
        # 1. log-probs (and entropies) of the completion tokens under the current policy
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True, **extra
        )
        # 2. TRL leaves old log-probs out when they equal the current ones (one update per generation)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        # 3. Klear's loss: per-token loss -> aggregate over the optimizer step -> + SFT term
        mode = "train" if self.model.training else "eval"
        norm, sft_norm = self.klear_normaliser(inputs, mode)
        sft_mask = inputs.get("klear_sft_mask") if self.loss_config.sft_alpha > 0.0 else None
        out = policy_loss(
            logps,
            old,
            inputs["advantages"],
            mask,
            self.loss_config,
            norm=norm,
            sft_mask=sft_mask,
            sft_norm=sft_norm if sft_mask is not None else None,
        )
        self._log_klear_metrics(out.metrics, entropies, mask, mode)
        return out.loss

    def _log_klear_metrics(
        self, metrics: dict[str, torch.Tensor], entropies: torch.Tensor, mask: torch.Tensor, mode: str
    ) -> None:
        """Rank means of Klear's loss metrics (extremes for ratio_max/min); the scaled losses are left
        out: TRL's ``loss`` is the optimizer step's."""
        gather = self.accelerator.gather
        for key, value in metrics.items():
            if key in ("loss", "pg_loss", "sft_loss"):
                continue
            v = gather(value.detach().float().reshape(1))
            v = v.max() if key == "ratio_max" else v.min() if key == "ratio_min" else v.mean()
            self._metrics[mode][f"klear/{key}"].append(float(v))
        m = mask.float()
        totals = self.accelerator.reduce(
            torch.stack([(entropies.detach() * m).sum(), m.sum()]), reduction="sum"
        )
        self._metrics[mode]["entropy"].append(float(totals[0] / totals[1].clamp(min=1.0)))


__all__ = [
    "FAILURE_FLAGS",
    "KLEAR_LOSS_TYPES",
    "TRL_MIN_VERSION",
    "KlearGRPOTrainer",
    "KlearRewardFunction",
    "completion_text",
    "klear_reward_func",
    "loss_config_from_trl",
]
