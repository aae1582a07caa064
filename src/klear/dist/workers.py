"""The bodies of the Ray actors: thin shells around the classes that already run in one process.

Each class here is plain Python (``klear.dist.groups`` wraps it with ``ray.remote``), so
what an actor does is what the single-process run does: a rollout backend, a reward
pool, a :class:`~klear.train.learner.LocalLearner`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from klear.config import RewardConfig, RLConfig
from klear.rollout import SamplingParams
from klear.types import RewardResult, Rollout


def _threads(n: float) -> None:
    torch.set_num_threads(max(1, int(n)))


class VersionMismatch(RuntimeError):
    """A rollout actor was asked to sample with a policy version it does not hold."""


class RolloutWorker:
    """A rollout backend over this actor's own copy of the policy, at a known weights version."""

    def __init__(self, cfg: RLConfig, model_dir: str, threads: float) -> None:
        from klear.rollout import backend_class, backend_options
        from klear.models.loading import load_model, pick_device, quiet_transformers

        _threads(threads)
        quiet_transformers()
        options = backend_options(cfg.rollout, cfg.model)
        cls = backend_class(cfg.rollout.backend)
        # the seed is unused: the group always passes each call's seed (keyed sampling)
        if cfg.rollout.backend == "hf":  # the HF backend samples from a module of its own
            model, tokenizer = load_model(Path(model_dir), cfg.model, pick_device())
            model.eval()
            self.backend = cls(model, tokenizer, seed=cfg.run.seed, **options)
        else:  # an engine (vLLM) loads the directory itself: no second copy of the weights
            self.backend = cls(str(model_dir), seed=cfg.run.seed, **options)
        self.version = 0

    def pid(self) -> int:
        return os.getpid()

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> int:
        self.backend.update_weights(state)
        self.version = version
        return version

    def join_weight_sync(
        self,
        address: str,
        port: int,
        rank: int,
        world: int,
        backend: str,
        bucket_bytes: int,
        timeout_s: float,
    ) -> None:
        """Join the weight-sync group as receiver ``rank`` (``klear.dist.weight_sync``)."""
        from klear.dist.weight_sync import WeightSync

        self.leave_weight_sync()
        self.sync = WeightSync(
            address, port, rank, world, backend=backend, bucket_bytes=bucket_bytes, timeout_s=timeout_s
        )

    def leave_weight_sync(self) -> None:
        sync = getattr(self, "sync", None)
        if sync is not None:
            sync.close()
        self.sync = None

    def receive_weights(self, version: int) -> int:
        """Receive one collective sync into the policy's parameters, in place; returns the version."""
        model = getattr(self.backend, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{type(self.backend).__name__} has no module to receive weights into")
        self.sync.receive(model, version)
        self.version = version
        return version

    def state(self) -> dict[str, torch.Tensor]:
        """The policy's state dict on CPU (a replacement actor's weights under collective sync)."""
        return {k: v.detach().cpu() for k, v in self.backend.model.state_dict().items()}

    def weights_digest(self) -> str:
        """A hash of the policy's parameters (tests compare members bit for bit)."""
        from klear.dist.weight_sync import digest

        return digest(self.backend.model)

    def generate(
        self, prompts: Sequence[Any], sampling: SamplingParams, groups: Sequence[int | str], version: int
    ) -> list[Rollout]:
        if version != self.version:
            raise VersionMismatch(f"asked for policy version {version}, this worker holds {self.version}")
        with torch.no_grad():
            return self.backend.generate(prompts, sampling, groups=groups)


class RewardWorker:
    """A reward pool of ``num_workers`` processes on this actor's node."""

    def __init__(self, cfg: RewardConfig, num_workers: int) -> None:
        from klear.rewards.pool import RewardPool

        self.pool = RewardPool(cfg, num_workers)

    def pid(self) -> int:
        return os.getpid()

    def child_pids(self) -> list[int]:
        return self.pool.worker_pids()

    def score(self, rows: Sequence[dict[str, Any]], responses: Sequence[str]) -> list[RewardResult]:
        return self.pool.score(rows, responses)

    def close(self) -> None:
        self.pool.close()


class LearnerRank:
    """One data-parallel rank: a :class:`~klear.train.learner.LocalLearner` in a process group.

    The model is loaded in :meth:`join`, once the process group exists (FSDP shards it there).
    """

    def __init__(self, cfg: RLConfig, model_dir: str, rank: int, world: int, threads: float) -> None:
        from klear.models.loading import quiet_transformers

        _threads(threads)
        quiet_transformers()
        torch.manual_seed(cfg.run.seed)
        self.cfg, self.model_dir, self.rank, self.world = cfg, model_dir, rank, world
        self.learner: Any = None

    def pid(self) -> int:
        return os.getpid()

    def rendezvous(self) -> tuple[str, int]:
        """(address, free port) of this rank's host, for rank 0 to serve the process group."""
        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join(self, address: str, port: int, timeout_s: float) -> str:
        """Join the process group, then load (and, with FSDP, shard) the model; returns the device."""
        import torch.distributed as dist

        from klear.models.loading import pick_device
        from klear.train.learner import LocalLearner, allreduce_grads

        backend = "nccl" if pick_device().type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                backend,
                init_method=f"tcp://{address}:{port}",
                rank=self.rank,
                world_size=self.world,
                timeout=timedelta(seconds=timeout_s),
            )
        self.learner = LocalLearner(
            self.cfg,
            self.model_dir,
            rank=self.rank,
            world=self.world,
            allreduce=allreduce_grads if self.world > 1 else None,
            strategy=self.cfg.dist.learner_strategy,
        )
        return str(self.learner.device)

    def old_logprobs(self, rollouts: Sequence[Rollout]) -> list[torch.Tensor]:
        """Log-probs of this rank's strided shard of all the step's ``rollouts``."""
        return self.learner.shard_old_logprobs(rollouts)

    def update(self, kept: Any) -> Any:
        return self.learner.update_stats(kept)

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The full state dict (collective when sharded: every rank must be called; rank 0's is it)."""
        return self.learner.full_state()

    def weight_sync_address(self) -> tuple[str, int]:
        """(address, free port) of this rank's host, for the weight-sync group's store (rank 0 hosts it)."""
        import ray

        from klear.dist.weight_sync import free_port

        return ray.util.get_node_ip_address(), free_port()

    def join_weight_sync(
        self, address: str, port: int, world: int, backend: str, bucket_bytes: int, timeout_s: float
    ) -> None:
        """Rank 0 joins the weight-sync group as its source (member 0); other ranks hold no member."""
        from klear.dist.weight_sync import WeightSync

        self.leave_weight_sync()
        if self.rank == 0:
            self.sync = WeightSync(
                address, port, 0, world, backend=backend, bucket_bytes=bucket_bytes, timeout_s=timeout_s
            )

    def leave_weight_sync(self) -> None:
        sync = getattr(self, "sync", None)
        if sync is not None:
            sync.close()
        self.sync = None

    def send_weights(self, version: int) -> int:
        """One collective sync: rank 0 broadcasts; with FSDP every rank takes part in gathering each
        parameter (``full_tensor``), so every rank must be called. Returns the bytes rank 0 sent."""
        from klear.dist.weight_sync import gather_params

        if self.rank == 0:
            return self.sync.send(self.learner.model, version)
        if self.learner.sharded:
            for _ in gather_params(self.learner.model):
                pass
        return 0

    def lr(self) -> float:
        return self.learner.lr()

    def save(self, root: str, step: int, extra: dict[str, Any]) -> str | None:
        path = self.learner.save(Path(root), step, extra)
        return str(path) if path is not None else None

    def restore(self, ckpt: str) -> dict[str, Any]:
        return self.learner.restore(Path(ckpt))
