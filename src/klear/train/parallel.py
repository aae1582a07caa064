"""Ranks of one training job, shared by the SFT trainer and the RL learner.

- :func:`ranks_from_env` / :func:`join_ranks`: the launch environment torchrun (and Slurm
  wrappers, verl-style launchers) set -- ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT`` -- and the process group over it (nccl on GPUs, gloo on
  CPU). No variables: one process, no process group.
- :func:`on_lead`: work only rank 0 does (reading and tokenising data), whose failure every
  rank raises.
- :func:`full_model_state`, :func:`save_full_checkpoint`, :func:`restore_full_checkpoint`:
  checkpoints of a model that may be FSDP2-sharded or replicated over the ranks, written
  from gathered full states (model weights as a plain HF directory, optimizer state keyed
  by parameter name), so a checkpoint saved on any number of ranks, with either strategy,
  loads on any other. Gathering is collective (every rank calls); only rank 0 writes.

The sharding itself (``fsdp_shard``), the gradient all-reduce of replicas and the clipping
of sharded gradients live in :mod:`klear.train.learner`, which both trainers use.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from klear.config import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job: rank 0 of 1 when launched as a plain process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process group was created by join_ranks (and leave_ranks ends it)

    @property
    def lead(self) -> bool:
        """Rank 0: the one that writes logs, metrics and checkpoints."""
        return self.rank == 0


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as torchrun sets them (all absent: one process)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ConfigError(
            f"the launch environment is not numeric: {err} (RANK, WORLD_SIZE, LOCAL_RANK)"
        ) from err
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(
            f"the launch environment is inconsistent: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} "
            "(need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; launch with torchrun)"
        )
    if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise ConfigError(
            f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set: launch the ranks with torchrun "
            "(it sets them), e.g. torchrun --nproc-per-node 8 -m klear sft RECIPE"
        )
    return Ranks(rank, world, local)


def join_ranks(timeout_s: float) -> Ranks:
    """Join the process group the launch environment describes (nccl on GPUs, gloo on CPU).

    On a GPU machine each rank takes GPU ``LOCAL_RANK`` first, so ``pick_device()``'s
    ``cuda`` (and FSDP's device mesh) mean this rank's own GPU.
    """
    ranks = ranks_from_env()
    if ranks.world == 1:
        return ranks
    import torch.distributed as dist

    if torch.cuda.is_available():
        if ranks.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={ranks.local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                "use --nproc-per-node <= the GPUs per node"
            )
        torch.cuda.set_device(ranks.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if dist.is_initialized():  # the caller's group
        return ranks
    dist.init_process_group(
        backend, rank=ranks.rank, world_size=ranks.world, timeout=timedelta(seconds=timeout_s)
    )
    return Ranks(ranks.rank, ranks.world, ranks.local_rank, owned=True)


def leave_ranks(ranks: Ranks) -> None:
    import torch.distributed as dist

    if ranks.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def on_lead(ranks: Ranks, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 alone (None elsewhere). If it raises, every rank raises that error, so
    no rank is left waiting in a later collective for one that failed."""
    result, error = None, None
    if ranks.lead:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if ranks.world > 1:
        import torch.distributed as dist

        if error is not None:
            try:
                pickle.dumps(error)
            except Exception:
                error = RuntimeError(f"{type(error).__name__}: {error}")
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error
    return result


def full_model_state(model: torch.nn.Module, rank: int, sharded: bool) -> dict[str, torch.Tensor] | None:
    """The unsharded model state on CPU (collective when sharded; None on ranks other than 0)."""
    if not sharded:  # replicas: rank 0's copy is everyone's
        return {k: v.detach().cpu() for k, v in model.state_dict().items()} if rank == 0 else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if rank == 0 else None


def _untied(model: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """``state`` for saving: a tied weight once, as the one-device model saves it (gathered
    copies no longer share storage, so ``save_pretrained`` would write both)."""
    if state is None or not getattr(model.config, "tie_word_embeddings", False):
        return state
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    return {k: v for k, v in state.items() if k not in tied}


def save_full_model(
    model: torch.nn.Module, tokenizer: Any, out: Path, rank: int, sharded: bool
) -> Path | None:
    """A plain HF directory of the full model (collective when sharded; rank 0 writes, others get None)."""
    state = _untied(model, full_model_state(model, rank, sharded))
    if rank != 0:
        return None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, state_dict=state)
    tokenizer.save_pretrained(out)
    return out


def save_full_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
    *,
    rank: int,
    sharded: bool,
) -> Path | None:
    """``root/step_N`` (see :mod:`klear.train.checkpoint`) from full states; collective when sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from klear.train.checkpoint import save_checkpoint

    model_state = _untied(model, full_model_state(model, rank, sharded))
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    if rank != 0:
        return None
    return save_checkpoint(
        root,
        step,
        model,
        tokenizer,
        None,
        scheduler,
        extra,
        model_state=model_state,
        optimizer_state=optim_state,
    )


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory's safetensors: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` lists (what ``save_pretrained`` writes past ``max_shard_size``)."""
    import json

    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if not index.is_file():
        return load_file(str(model_dir / "model.safetensors"))
    weights: dict[str, torch.Tensor] = {}
    for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        weights.update(load_file(str(model_dir / name)))
    return weights


def restore_full_checkpoint(
    ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *, sharded: bool
) -> dict[str, Any]:
    """Weights, optimizer and schedule from ``ckpt`` (any rank count, either strategy); returns the
    rest of its state (step, RNG, extra). Every rank calls it.

    Sharded: only rank 0 reads the weights and the optimizer state and broadcasts them tensor by
    tensor, each rank keeping its shard (host memory of one full state on rank 0, not on every
    rank: 8B with AdamW is ~130 GB); the others map the trainer state without reading its tensors.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from klear.train.learner import load_weights

    path = Path(ckpt) / "trainer_state.pt"
    lead = not sharded or dist.get_rank() == 0
    # our own file, written by save_checkpoint: it holds numpy RNG state, hence weights_only=False
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=not lead)
    optim = state.pop("optimizer")
    if sharded:
        options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=True)
        weights = read_weights(Path(ckpt) / "model") if lead else {}
        set_model_state_dict(model, weights, options=options)
        optim = optim if lead else {}
        set_optimizer_state_dict(
            model, optimizer, optim, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
    else:
        load_weights(model, Path(ckpt) / "model")
        if all(isinstance(k, int) for k in optim["state"]):  # a plain optimizer.state_dict()
            optimizer.load_state_dict(optim)
        else:  # keyed by parameter name: saved on any rank count, with either strategy
            set_optimizer_state_dict(model, optimizer, optim, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state.pop("scheduler"))
    return state
