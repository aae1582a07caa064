"""The learner side of RL: old log-probs and the PPO-epoch update, for one rank or many.

:func:`update_policy` is the whole update of one RL step. With ``world`` ranks each rank
runs it on the same kept groups: every rank computes the normaliser of each *whole*
mini-batch (it sees all of it), back-propagates only its own shard of the samples, and the
gradients are summed across ranks before the optimizer step. Since each shard's loss is
already divided by the global token count, the sum is exactly the one-rank gradient of the
whole mini-batch (the global token-mean; tested to 1e-6 with 2 gloo ranks). Every rank then
takes the same optimizer step, on its full replica (DDP) or on its shard (FSDP), and a
checkpoint, written from the gathered full states, is the same for any rank count.

:class:`LocalLearner` holds model, optimizer and schedule in this process (``dist.backend
= none``); ``klear.dist`` runs one per Ray actor with a process group between them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from klear.algo.aggregate import Normaliser
from klear.algo.losses import policy_loss
from klear.config import RLConfig
from klear.train.batch import batch_maker, micro_batches, over_budget, response_logprobs
from klear.types import RewardResult, Rollout

#: metrics already divided by the global normaliser: summed over micro-batches and ranks, averaged over mini-batches
_GLOBAL_SUMS = ("loss", "pg_loss", "sft_loss")


@dataclass
class Sample:
    """One scored rollout travelling through a step."""

    row: dict[str, Any]
    rollout: Rollout
    result: RewardResult
    reward: float  # after overlong shaping
    advantage: float = 0.0
    old_logp: torch.Tensor | None = None  # [len(response)] under the policy before this step's updates


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def shard(n: int, rank: int, world: int) -> list[int]:
    """Indices of ``n`` items that rank ``rank`` of ``world`` takes (strided: similar lengths per rank
    when the items are sorted by length)."""
    return list(range(rank, n, world))


def model_autocast(model: torch.nn.Module, cfg: RLConfig):
    """Autocast to ``model.compute_dtype`` when it differs from the weight dtype (one device).

    A sharded model needs none: its FSDP2 mixed-precision policy gathers the parameters in
    the compute dtype (:func:`fsdp_shard`).
    """
    from contextlib import nullcontext

    from klear.models.loading import autocast, precision

    if getattr(model, "_klear_fsdp_mixed_precision", False):
        return nullcontext()
    device = next(model.parameters()).device
    return autocast(device, precision(cfg.model, device)[1])


def old_logprobs(
    model: torch.nn.Module, rollouts: Sequence[Rollout], pad: int, cfg: RLConfig, min_passes: int = 0
) -> list[torch.Tensor]:
    """Response log-probs of ``rollouts`` under ``model``, without gradient (CPU tensors).

    ``min_passes``: run idle forward passes up to this many (sharded ranks must all run the
    same number of forwards: each one gathers parameters collectively).
    """
    out: list[torch.Tensor | None] = [None] * len(rollouts)
    packed = cfg.trainer.pack_sequences
    plan = micro_batches(rollouts, cfg.trainer.micro_batch_tokens, packed) if rollouts else []
    with torch.no_grad():
        for idx in plan:
            mb = batch_maker(packed)([rollouts[i] for i in idx], pad)
            with model_autocast(model, cfg):
                logp, _ = response_logprobs(
                    model, mb, cfg.rollout.temperature, chunk_tokens=cfg.trainer.logits_chunk_tokens
                )
            for row, i in enumerate(idx):
                out[i] = logp[row, : len(rollouts[i].response_ids)].cpu()
        for _ in range(min_passes - len(plan)):
            idle_pass(model, pad, backward=False)
    return out  # type: ignore[return-value]


def idle_pass(model: torch.nn.Module, pad: int, backward: bool) -> None:
    """A forward (and backward) that contributes nothing: keeps a sharded rank in step with the others."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.full((1, 2), pad, dtype=torch.long, device=device), use_cache=False).logits
    if backward:
        (logits.float().sum() * 0.0).backward()


def passes_per_rank(
    rollouts: Sequence[Rollout], world: int, token_budget: int, packed: bool = False
) -> list[int]:
    """Micro-batches each rank runs on its strided shard of ``rollouts`` (every rank can compute all)."""
    return [
        len(micro_batches([rollouts[i] for i in shard(len(rollouts), r, world)], token_budget, packed))
        for r in range(world)
    ]


def loss_mask(s: Sample, cfg: RLConfig) -> float:
    """0 for a truncated response when ``overlong.filter`` is on (it stays in its group's statistics)."""
    return 0.0 if (cfg.overlong.filter and s.rollout.truncated) else 1.0


@dataclass
class UpdateStats:
    """One rank's metric accumulators; :func:`merge_stats` turns the ranks' stats into metrics."""

    sums: dict[str, float]
    counts: dict[str, int]
    maxima: dict[str, float]
    minima: dict[str, float]


def update_policy(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    kept: list[list[Sample]],
    pad: int,
    cfg: RLConfig,
    *,
    rank: int = 0,
    world: int = 1,
    allreduce: Callable[[torch.nn.Module], None] | None = None,
    lockstep: bool = False,
) -> UpdateStats:
    """PPO epochs: each mini-batch of groups is one optimizer step with a global token-mean normaliser.

    With ``world > 1``, this rank back-propagates its shard of each mini-batch, and the
    gradients must be summed across ranks: by ``allreduce(model)`` before the step (replicas),
    or by the sharded model's own reduce-scatter (FSDP, ``lockstep``: every rank then runs as
    many forward/backward passes as the busiest one). See the module docstring.
    """
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    maxima: dict[str, float] = {}
    minima: dict[str, float] = {}
    lead = rank == 0  # per-mini-batch counts are taken once, on rank 0
    mb_groups = cfg.trainer.ppo_mini_batch_size
    budget, packed = cfg.trainer.micro_batch_tokens, cfg.trainer.pack_sequences
    global_keys = [k for k in _GLOBAL_SUMS if k != "sft_loss" or cfg.loss.sft_alpha > 0]
    for epoch in range(cfg.trainer.ppo_epochs):
        for start in range(0, len(kept), mb_groups):
            samples = [s for g in kept[start : start + mb_groups] for s in g]
            masks = [loss_mask(s, cfg) for s in samples]
            lengths = torch.tensor([len(s.rollout.response_ids) for s in samples])
            all_mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
            all_mask = all_mask.float() * torch.tensor(masks)[:, None]
            sft = torch.tensor([s.result.correct for s in samples])
            norm = Normaliser.of(all_mask, norm_len=cfg.rollout.max_new_tokens)
            sft_norm = Normaliser.of(all_mask * sft[:, None].float(), norm_len=cfg.rollout.max_new_tokens)
            optimizer.zero_grad(set_to_none=True)
            order = sorted(range(len(samples)), key=lambda i: _length(samples[i].rollout))
            mine = [order[k] for k in shard(len(order), rank, world)]
            rollouts = [samples[i].rollout for i in mine]
            plan = micro_batches(rollouts, budget, packed) if rollouts else []
            if epoch == 0:  # a sequence over the budget runs alone; counted, once per rank and sample
                sums["over_budget_seqs"] += float(over_budget(rollouts, budget))
            if lockstep:
                busiest = max(passes_per_rank([samples[i].rollout for i in order], world, budget, packed))
                for _ in range(busiest - len(plan)):
                    idle_pass(model, pad, backward=True)
            mb_sums: dict[str, float] = defaultdict(float)
            for local in plan:
                idx = [mine[k] for k in local]
                mb = batch_maker(packed)([samples[i].rollout for i in idx], pad)
                with model_autocast(model, cfg):
                    logp, entropy = response_logprobs(
                        model,
                        mb,
                        cfg.rollout.temperature,
                        with_entropy=True,
                        chunk_tokens=cfg.trainer.logits_chunk_tokens,
                    )
                resp_mask = mb.response_mask * torch.tensor([masks[i] for i in idx])[:, None]
                old = torch.zeros_like(logp)
                for row, i in enumerate(idx):
                    old[row, : int(lengths[i])] = samples[i].old_logp
                adv = torch.tensor([samples[i].advantage for i in idx], dtype=torch.float32)
                out = policy_loss(
                    logp, old, adv, resp_mask, cfg.loss, norm=norm, sft_mask=sft[idx], sft_norm=sft_norm
                )
                out.loss.backward()
                w = float(resp_mask.sum())
                for k, v in out.metrics.items():
                    if k == "sft_frac":
                        continue  # a per-micro-batch ratio; taken over the whole mini-batch below
                    if k in _GLOBAL_SUMS:
                        mb_sums[k] += float(v)
                    elif k in ("ratio_max", "ratio_min") and w == 0:
                        continue  # no token counted here (all overlong-filtered): no ratio to report
                    elif k == "ratio_max":
                        maxima[k] = max(maxima.get(k, float("-inf")), float(v))
                    elif k == "ratio_min":
                        minima[k] = min(minima.get(k, float("inf")), float(v))
                    else:
                        sums[k] += float(v) * w
                        counts[k] += int(w)
                sums["entropy"] += float((entropy * resp_mask).sum())
                counts["entropy"] += int(w)
            if lead and cfg.loss.sft_alpha > 0:
                counted = torch.tensor(masks) > 0
                sums["sft_frac"] += float(sft[counted].float().mean()) if bool(counted.any()) else 0.0
                counts["sft_frac"] += 1
            for k in global_keys:
                sums[k] += mb_sums.get(k, 0.0)
                counts[k] += int(lead)
            if allreduce is not None:
                allreduce(model)
            grad_norm = clip_grads(model, cfg.optim.grad_clip)
            if lead:
                sums["grad_norm"] += grad_norm
                counts["grad_norm"] += 1
                counts["updates"] += 1
            optimizer.step()
    return UpdateStats(dict(sums), dict(counts), maxima, minima)


def _length(r: Rollout) -> int:
    return len(r.prompt_ids) + len(r.response_ids)


def merge_stats(stats: Sequence[UpdateStats]) -> dict[str, float]:
    """``actor/*`` metrics from every rank's accumulators (token-weighted means over all ranks)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for s in stats:
        for k, v in s.sums.items():
            sums[k] += v
        for k, c in s.counts.items():
            counts[k] += c
    out = {f"actor/{k}": (v / counts[k] if counts.get(k) else v) for k, v in sums.items()}
    for k in {k for s in stats for k in s.maxima}:
        out[f"actor/{k}"] = max(s.maxima[k] for s in stats if k in s.maxima)
    for k in {k for s in stats for k in s.minima}:
        out[f"actor/{k}"] = min(s.minima[k] for s in stats if k in s.minima)
    out["actor/updates"] = float(counts.get("updates", 0))
    return out


def clip_grads(model: torch.nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    total = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    if hasattr(total, "full_tensor"):  # sharded (FSDP) gradients: the norm is a DTensor
        total = total.full_tensor()
    return float(total)


def allreduce_grads(model: torch.nn.Module, group: Any = None) -> None:
    """Sum every parameter's gradient over the ranks of ``group`` (one flat buffer, one collective).

    A rank whose shard was empty contributes zeros. Summing (not averaging) is what makes the
    globally normalised shard losses add up to the one-rank loss.
    """
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def load_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Load a checkpoint's safetensors (one file or shards) into ``model`` (tied embeddings are saved once)."""
    from klear.train.parallel import read_weights

    weights = read_weights(Path(model_dir))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any("lm_head" not in k for k in missing):
        raise RuntimeError(
            f"checkpoint {model_dir} does not match the model: missing {missing}, unexpected {unexpected}"
        )
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


class LocalLearner:
    """Model, optimizer and LR schedule of one rank (the whole learner when ``world`` is 1).

    With ``world > 1`` (``klear.dist``, process group already initialised) the ranks are
    either replicas whose gradients ``allreduce`` sums (``strategy="ddp"``), or one model
    sharded with FSDP2 (``strategy="fsdp"``: each decoder layer and the root are
    ``fully_shard``-ed, so parameters, gradients and AdamW state are split over the ranks;
    gradients are reduce-scattered as sums). Checkpoints hold full, unsharded states with
    the optimizer state keyed by parameter name, so they load on any number of ranks and
    with either strategy.
    """

    def __init__(
        self,
        cfg: RLConfig,
        model_dir: str | Path,
        *,
        rank: int = 0,
        world: int = 1,
        allreduce: Callable[[torch.nn.Module], None] | None = None,
        strategy: str = "ddp",
    ) -> None:
        from klear.models.loading import load_model, pick_device, precision
        from klear.train.common import make_optimizer, make_scheduler

        self.cfg, self.rank, self.world, self.allreduce = cfg, rank, world, allreduce
        self.sharded = strategy == "fsdp" and world > 1
        self.device = pick_device()
        self.model, self.tokenizer = load_model(model_dir, cfg.model, self.device)
        if self.sharded:
            fsdp_shard(self.model, world, self.device, precision(cfg.model, self.device)[1])
        self.model.train()
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, cfg.optim, cfg.trainer.total_steps)
        self.pad = pad_id(self.tokenizer)

    def sampler(self, seed: int) -> Any:
        """A rollout backend of ``rollout.backend`` over this learner's own module (no weight copies)."""
        from klear.rollout import backend_class, backend_options

        options = backend_options(self.cfg.rollout, self.cfg.model)
        return backend_class(self.cfg.rollout.backend)(self.model, self.tokenizer, seed=seed, **options)

    def weights(self) -> torch.nn.Module:
        return self.model

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The unsharded model state on CPU (collective when sharded; None on ranks other than 0)."""
        from klear.train.parallel import full_model_state

        return full_model_state(self.model, self.rank, self.sharded)

    def old_logprobs(self, samples: Sequence[Sample]) -> None:
        """Set ``old_logp`` of every sample (this rank computes all of them)."""
        logps = old_logprobs(self.model, [s.rollout for s in samples], self.pad, self.cfg)
        for s, lp in zip(samples, logps, strict=True):
            s.old_logp = lp

    def shard_old_logprobs(self, rollouts: Sequence[Rollout]) -> list[torch.Tensor]:
        """Log-probs of this rank's strided shard of ``rollouts`` (all ranks get the whole list)."""
        mine = [rollouts[i] for i in shard(len(rollouts), self.rank, self.world)]
        passes = (
            max(
                passes_per_rank(
                    rollouts, self.world, self.cfg.trainer.micro_batch_tokens, self.cfg.trainer.pack_sequences
                )
            )
            if self.sharded
            else 0
        )
        return old_logprobs(self.model, mine, self.pad, self.cfg, min_passes=passes)

    def update_stats(self, kept: list[list[Sample]]) -> UpdateStats:
        """This rank's part of the update; the schedule advances once per RL step."""
        self.model.train()
        stats = update_policy(
            self.model,
            self.optimizer,
            kept,
            self.pad,
            self.cfg,
            rank=self.rank,
            world=self.world,
            allreduce=None if self.sharded else self.allreduce,
            lockstep=self.sharded,
        )
        self.scheduler.step()
        return stats

    def update(self, kept: list[list[Sample]]) -> dict[str, float]:
        return merge_stats([self.update_stats(kept)])

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, root: Path, step: int, extra: dict[str, Any]) -> Path | None:
        """Write the checkpoint (collective when sharded; rank 0 writes, others return None)."""
        from klear.train.parallel import save_full_checkpoint

        return save_full_checkpoint(
            root,
            step,
            self.model,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            extra,
            rank=self.rank,
            sharded=self.sharded,
        )

    def restore(self, ckpt: Path) -> dict[str, Any]:
        """Weights, optimizer and schedule from ``ckpt``; returns the rest of its state (step, RNG, extra)."""
        from klear.train.parallel import restore_full_checkpoint

        return restore_full_checkpoint(ckpt, self.model, self.optimizer, self.scheduler, sharded=self.sharded)

    def close(self) -> None:
        pass


def fsdp_shard(
    model: torch.nn.Module, world: int, device: torch.device, compute_dtype: torch.dtype | None = None
) -> None:
    """FSDP2 over ``world`` ranks: each decoder layer (the model's ``_no_split_modules``) and the root.

    Gradients are reduce-scattered as sums (divide factor 1): the shard losses are already
    divided by the global token count. ``compute_dtype`` (e.g. bfloat16 over float32 master
    weights): parameters are gathered in it for forward and backward, and gradients are
    reduced in float32 into the float32 shards (FSDP2 ``MixedPrecisionPolicy``).

    Build the optimizer right after this, before any forward: after a forward the root
    module holds its gathered (unsharded) parameters until backward, and an optimizer made
    then would step those copies and never the shards (the root's embeddings and final norm
    would silently stay fixed).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if type(m).__name__ in layer_classes] + [model]
    for module in units:
        fully_shard(module, mesh=mesh, mp_policy=policy)
    for module in units:  # each unit reduces its own gradients: plain sums, no averaging
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    model._klear_fsdp_mixed_precision = compute_dtype is not None  # type: ignore[attr-defined]
