"""Driver-side actor groups with the same methods as the single-process engines.

``train_rl`` cannot tell a :class:`RolloutGroup` from a rollout backend, a
:class:`RewardGroup` from a :class:`~klear.rewards.pool.RewardPool`, or a
:class:`LearnerGroup` from a :class:`~klear.train.learner.LocalLearner`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from klear.config import DistConfig, RLConfig
from klear.dist.workers import LearnerRank, RewardWorker, RolloutWorker
from klear.rollout import CallSeeds, SamplingParams, group_keys
from klear.train.learner import Sample, merge_stats, shard
from klear.types import RewardResult, Rollout

log = logging.getLogger("klear.dist")


class WorkerLost(RuntimeError):
    """Rollout or reward actors kept dying: more than ``dist.max_worker_restarts`` in one call."""


class LearnerLost(RuntimeError):
    """A learner rank died or failed; every rank has been stopped. Resume from the last checkpoint."""


# --- the cluster ---------------------------------------------------------------------------------


def connect(cfg: DistConfig, cpus: float, gpus: float) -> bool:
    """Join ``cfg.address`` (or ``$RAY_ADDRESS``), else start a local cluster; True when we started one.

    A local cluster gets at least ``cpus`` logical CPUs (Ray's CPUs are reservations, not
    cores: on a small machine the actors share the cores) and the GPUs torch sees.
    """
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    have_gpus = torch.cuda.device_count()
    if gpus > have_gpus:
        raise RuntimeError(f"the dist settings need {gpus:g} GPUs; this machine has {have_gpus}")
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)),
        num_gpus=have_gpus,
        include_dashboard=False,
        object_store_memory=512 * 2**20,
        log_to_driver=True,
    )
    return True


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into at most ``parts`` contiguous non-empty slices of near-equal size."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


class ActorSet:
    """``n`` actors of one kind; one that dies is replaced (``make`` brings a new one up to date)."""

    def __init__(self, make: Callable[[int], Any], n: int, max_restarts: int, what: str) -> None:
        self.make, self.max_restarts, self.what = make, max_restarts, what
        self.actors = [make(i) for i in range(n)]
        self.restarts = 0  # over the group's lifetime

    def __len__(self) -> int:
        return len(self.actors)

    def replace(self, i: int) -> None:
        _kill(self.actors[i])
        self.actors[i] = self.make(i)
        self.restarts += 1

    def run(self, chunks: Sequence[Any], call: Callable[[Any, Any], Any]) -> list[Any]:
        """``call(actor, chunk)`` for chunk ``i`` on actor ``i % n``; results in chunk order.

        A chunk whose actor dies is re-issued on its replacement; more than ``max_restarts``
        deaths in one call raise :class:`WorkerLost`. Any other error is the caller's.
        """
        results: list[Any] = [None] * len(chunks)
        pending: dict[Any, tuple[int, int, Any]] = {}

        def submit(ci: int) -> None:
            wi = ci % len(self.actors)
            actor = self.actors[wi]
            pending[call(actor, chunks[ci])] = (wi, ci, actor)

        for ci in range(len(chunks)):
            submit(ci)
        deaths = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            wi, ci, actor = pending.pop(ready[0])
            try:
                results[ci] = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                deaths += 1
                if deaths > self.max_restarts:
                    raise WorkerLost(
                        f"{self.what} actors died {deaths} times in one call (dist.max_worker_restarts = "
                        f"{self.max_restarts}); last: {err}"
                    ) from err
                log.warning("%s actor %d died; replacing it and re-issuing its work", self.what, wi)
                if self.actors[wi] is actor:
                    self.replace(wi)
                submit(ci)
        return results

    def call_all(self, method: str, *args: Any) -> list[Any]:
        return self.run(list(range(len(self.actors))), lambda a, _: getattr(a, method).remote(*args))

    def kill(self) -> None:
        for a in self.actors:
            _kill(a)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass


# --- rollouts ------------------------------------------------------------------------------------


class CollectiveWeights:
    """What ``LearnerGroup.weights()`` returns under ``dist.weight_sync = collective``: not the
    weights, but the learner to broadcast them, and its update count (for a staleness check)."""

    def __init__(self, learner: LearnerGroup, updates: int) -> None:
        self.learner, self.updates = learner, updates


class RolloutGroup:
    """``dist.rollout_workers`` rollout actors behind the rollout-backend interface.

    Each call's prompts are cut into contiguous slices, one per actor; the call seed is
    derived as one backend derives it, so the rollouts equal a single backend's.
    """

    def __init__(self, cfg: RLConfig, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        d = cfg.dist
        actor = ray.remote(RolloutWorker).options(
            num_cpus=d.rollout_cpus, num_gpus=d.rollout_gpus, max_restarts=0
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.seeds, self.version = CallSeeds(cfg.run.seed), 0
        self._weights: Any = None  # ObjectRef of the latest state dict (None: the initial model_dir)
        self.dist = d
        self._source: LearnerGroup | None = None  # collective weight sync: the learner, once attached
        self._stale = False  # an actor was replaced since the weight-sync group was formed
        self._synced_updates = 0  # the learner's update count at the last collective sync

        def make(_: int) -> Any:
            handle = actor.remote(cfg, str(model_dir), d.rollout_cpus)
            if self._source is not None and self.version > 0:
                # a replacement joins the weight-sync group at the next sync; the weights of the
                # current version reach it once through the object store, from a surviving actor
                self._weights = self._peer_weights()
            if self._weights is not None:
                ray.get(handle.load_weights.remote(self._weights, self.version))
            if self._source is not None:
                self._stale = True
            return handle

        self.actors = ActorSet(make, d.rollout_workers, d.max_worker_restarts, "rollout")

    def ready(self) -> list[int]:
        return self.actors.call_all("pid")

    def generate(
        self, prompts: Sequence[Any], sampling: SamplingParams, groups: Sequence[int | str] | None = None
    ) -> list[Rollout]:
        sampling = sampling.replace(seed=self.seeds.next(sampling.seed))  # as one backend would
        keys = group_keys(prompts, groups)
        chunks = [(list(prompts[a:b]), keys[a:b]) for a, b in split(len(prompts), len(self.actors))]
        version = self.version
        parts = self.actors.run(chunks, lambda a, c: a.generate.remote(c[0], sampling, c[1], version))
        return [r for part in parts for r in part]

    def attach_weight_sync(self, learner: LearnerGroup) -> None:
        """Sync weights by collective from now on (``dist.weight_sync = collective``): form the group
        of ``learner``'s rank 0 and every rollout actor; :meth:`update_weights` then takes the
        :class:`CollectiveWeights` that ``learner.weights()`` returns."""
        self._source = learner
        learner.collective = True
        self._form_group()

    def _form_group(self) -> None:
        learner, d = self._source, self.dist
        assert learner is not None
        world = 1 + len(self.actors)
        backend = "nccl" if d.learner_gpus > 0 and d.rollout_gpus > 0 else "gloo"
        address, port = learner.weight_sync_address()
        args = (backend, d.weight_sync_bucket_bytes, d.learner_timeout_s)
        refs = [
            a.join_weight_sync.remote(address, port, i + 1, world, *args)
            for i, a in enumerate(self.actors.actors)
        ]
        learner.join_weight_sync(address, port, world, *args)
        ray.get(refs)
        self._stale = False

    def update_weights(self, weights: Any) -> None:
        """New policy weights on every actor: a :class:`CollectiveWeights` (broadcast by the learner),
        a state dict, a module, or an ObjectRef of a state dict (through the object store)."""
        if isinstance(weights, CollectiveWeights):
            self._collective(weights)
            return
        if isinstance(weights, torch.nn.Module):
            weights = {k: v.detach().cpu() for k, v in weights.state_dict().items()}
        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self.version += 1
        self._weights = ref
        self.actors.call_all("load_weights", ref, self.version)

    def _collective(self, weights: CollectiveWeights) -> None:
        """One broadcast from learner rank 0 to every actor, in buckets (``klear.dist.weight_sync``).

        A sync that loses an actor fails the step with :class:`WorkerLost` (the group cannot
        finish a broadcast without it); an actor replaced between syncs re-forms the group first.
        """
        learner = weights.learner
        if learner is not self._source:
            raise RuntimeError("these collective weights come from a learner this group is not attached to")
        if weights.updates != learner.updates:
            raise RuntimeError(
                f"collective weights of update {weights.updates} asked for after update {learner.updates}: "
                "a collective sync sends the learner's current weights only (use dist.weight_sync = object_store)"
            )
        if self._stale:
            self._form_group()
        version = self.version + 1
        receive = [a.receive_weights.remote(version) for a in self.actors.actors]
        learner.send_weights(version)
        try:
            ray.get(receive)
        except ray.exceptions.RayActorError as err:
            raise WorkerLost(f"a rollout actor died during a collective weight sync: {err}") from err
        self.version = version
        self._synced_updates = weights.updates
        self._weights = None  # the object-store copy, if any, is out of date

    def _peer_weights(self) -> Any:
        """An ObjectRef of a live actor's state dict (the group's current version); the learner's
        when none is left and it has not updated since the last sync."""
        for actor in list(self.actors.actors):  # the one being replaced is dead: skipped
            ref = actor.state.remote()
            try:
                ray.get(ref)
                return ref
            except ray.exceptions.RayActorError:
                continue
        assert self._source is not None
        if self._source.updates != self._synced_updates:
            raise WorkerLost(
                "every rollout actor was lost and the learner has updated since the last weight sync: "
                "no copy of the current policy version is left"
            )
        return self._source.state_ref()

    def digests(self) -> list[str]:
        """Each actor's parameter hash (tests: bit-identical weights)."""
        return self.actors.call_all("weights_digest")

    def get_rng_state(self) -> dict[str, int]:
        return self.seeds.state()

    def set_rng_state(self, state: dict[str, int]) -> None:
        self.seeds.load(state)

    def pids(self) -> list[int]:
        return self.ready()

    def close(self) -> None:
        self.actors.kill()


# --- rewards -------------------------------------------------------------------------------------


class RewardGroup:
    """``dist.reward_workers`` reward actors, each a pool of ``reward.num_workers`` processes."""

    def __init__(self, cfg: RLConfig) -> None:
        r, d = cfg.reward, cfg.dist
        # reserved by CPU count and spread over the nodes: one sandbox pool per node when
        # dist.reward_workers equals the node count
        actor = ray.remote(RewardWorker).options(
            num_cpus=r.num_workers, max_restarts=0, scheduling_strategy="SPREAD"
        )
        self.cfg = r
        self.actors = ActorSet(
            lambda _: actor.remote(r, r.num_workers), d.reward_workers, d.max_worker_restarts, "reward"
        )

    def ready(self) -> list[int]:
        return self.actors.call_all("pid")

    def pids(self) -> list[int]:
        return self.ready()

    def score(self, rows: Sequence[dict[str, Any]], responses: Sequence[str]) -> list[RewardResult]:
        from klear.rewards.registry import ground_truth, reward_path

        if len(rows) != len(responses):
            raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
        for i, row in enumerate(rows):  # bad rows fail here, with their index in the whole call
            reward_path(row, self.cfg, i)
            ground_truth(row, i)
        chunks = [(list(rows[a:b]), list(responses[a:b])) for a, b in split(len(rows), len(self.actors))]
        parts = self.actors.run(chunks, lambda a, c: a.score.remote(c[0], c[1]))
        return [r for part in parts for r in part]

    def close(self) -> None:
        try:
            ray.get([a.close.remote() for a in self.actors.actors], timeout=30)
        except Exception:  # a dead actor has nothing to close
            pass
        self.actors.kill()


# --- the learner ---------------------------------------------------------------------------------


class LearnerGroup:
    """``dist.learner_ranks`` :class:`~klear.dist.workers.LearnerRank` actors in one process group.

    Any rank's death or error stops every rank (the others would wait in a collective) and
    raises :class:`LearnerLost`; the group is unusable afterwards.
    """

    def __init__(self, cfg: RLConfig, model_dir: Path, owns_cluster: bool = False) -> None:
        d = cfg.dist
        actor = ray.remote(LearnerRank).options(num_cpus=1, num_gpus=d.learner_gpus, max_restarts=0)
        threads = cfg.trainer.num_threads or 1
        self.owns_cluster = owns_cluster
        self.failed: str | None = None
        self.collective = False  # weights() hands out CollectiveWeights (RolloutGroup.attach_weight_sync)
        self.updates = 0  # optimizer updates (RL steps with an update) since start or restore
        self.ranks = [
            actor.remote(cfg, str(model_dir), r, d.learner_ranks, threads) for r in range(d.learner_ranks)
        ]
        address, port = self._gather([self.ranks[0].rendezvous.remote()])[0]
        devices = self._gather([h.join.remote(address, port, d.learner_timeout_s) for h in self.ranks])
        self.device = torch.device(devices[0])

    def _gather(self, refs: list[Any]) -> list[Any]:
        """Results of one call per rank (or of rank 0); the first failure stops the whole group."""
        if self.failed:
            raise LearnerLost(self.failed)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except Exception as err:
                rank = refs.index(ready[0]) if len(refs) == len(self.ranks) else 0
                died = isinstance(err, ray.exceptions.RayActorError)
                self.failed = (
                    f"learner rank {rank} {'died' if died else 'failed'} ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); every rank was stopped. "
                    "Run the same command again to resume from the last checkpoint (any number of ranks)."
                )
                self.kill()
                raise LearnerLost(self.failed) from err
        return ray.get(refs)

    def pids(self) -> list[int]:
        return self._gather([h.pid.remote() for h in self.ranks])

    def old_logprobs(self, samples: Sequence[Sample]) -> None:
        """Each rank computes its strided shard (``klear.train.learner.shard``) of the step's rollouts."""
        world = len(self.ranks)
        ref = ray.put([s.rollout for s in samples])
        shares = self._gather([h.old_logprobs.remote(ref) for h in self.ranks])
        for r, share in enumerate(shares):
            for i, lp in zip(shard(len(samples), r, world), share, strict=True):
                samples[i].old_logp = lp

    def update(self, kept: list[list[Sample]]) -> dict[str, float]:
        ref = ray.put(kept)
        stats = merge_stats(self._gather([h.update.remote(ref) for h in self.ranks]))
        self.updates += 1
        return stats

    def weights(self) -> Any:
        """For the rollout group: :class:`CollectiveWeights` (collective sync), else an ObjectRef of
        rank 0's state dict (CPU)."""
        if self.collective:
            return CollectiveWeights(self, self.updates)
        return self.state_ref()

    def state_ref(self) -> Any:
        """An ObjectRef of rank 0's full state dict on CPU (collective over the ranks when sharded)."""
        refs = [h.weights.remote() for h in self.ranks]
        self._gather(refs)
        return refs[0]

    def weight_sync_address(self) -> tuple[str, int]:
        return self._gather([self.ranks[0].weight_sync_address.remote()])[0]

    def join_weight_sync(self, address: str, port: int, world: int, *args: Any) -> Any:
        """Rank 0 joins the weight-sync group (called while the actors join: the store waits for all)."""
        return self._gather([h.join_weight_sync.remote(address, port, world, *args) for h in self.ranks])

    def send_weights(self, version: int) -> int:
        """Rank 0 broadcasts (every rank gathers when sharded); bytes sent."""
        return self._gather([h.send_weights.remote(version) for h in self.ranks])[0]

    def lr(self) -> float:
        return float(self._gather([self.ranks[0].lr.remote()])[0])

    def save(self, root: Path, step: int, extra: dict[str, Any]) -> Path:
        # every rank takes part (gathering sharded states); rank 0 writes the full states
        return Path(self._gather([h.save.remote(str(root), step, extra) for h in self.ranks])[0])

    def restore(self, ckpt: Path) -> dict[str, Any]:
        state = self._gather([h.restore.remote(str(ckpt)) for h in self.ranks])[0]
        self.updates += 1  # new weights: earlier CollectiveWeights are out of date
        return state

    def kill(self) -> None:
        for h in self.ranks:
            _kill(h)

    def close(self) -> None:
        self.kill()
        if self.owns_cluster and ray.is_initialized():
            ray.shutdown()


def build_engines(cfg: RLConfig, model_dir: Path) -> tuple[LearnerGroup, RolloutGroup, RewardGroup]:
    """Start (or join) the cluster and the three groups; actors start in parallel."""
    d = cfg.dist
    cpus = d.rollout_workers * d.rollout_cpus + d.reward_workers * cfg.reward.num_workers + d.learner_ranks
    owns = connect(d, cpus, d.rollout_workers * d.rollout_gpus + d.learner_ranks * d.learner_gpus)
    made: list[Any] = []
    try:
        sampler = RolloutGroup(cfg, model_dir)
        made.append(sampler)
        pool = RewardGroup(cfg)
        made.append(pool)
        learner = LearnerGroup(cfg, model_dir, owns_cluster=owns)
        made.append(learner)
        sampler.ready()
        pool.ready()
        if d.weight_sync == "collective":
            sampler.attach_weight_sync(learner)
    except BaseException:
        for group in made:
            group.close()
        if owns and ray.is_initialized():
            ray.shutdown()
        raise
    log.info(
        "ray: %d rollout, %d reward (x%d processes), %d learner ranks on %s",
        d.rollout_workers,
        d.reward_workers,
        cfg.reward.num_workers,
        d.learner_ranks,
        learner.device,
    )
    return learner, sampler, pool
