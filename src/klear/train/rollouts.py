"""Where a step's batch comes from: sampled when the step asks (synchronous) or ahead of it (asynchronous).

:func:`collect_batch` is step 1 of the RL loop: sample ``rollout.n`` responses per prompt,
score them, and keep groups with signal (dynamic sampling) until the batch is full.

- :class:`SyncRollouts` (``trainer.async_rollouts = 0``) calls it when step k asks for its
  batch, with the weights of step k-1: on-policy, one phase after the other.
- :class:`AsyncRollouts` (``trainer.async_rollouts = K >= 1``) calls it on a producer thread
  while the learner trains, up to K batches ahead, on a sampler that holds its own copy of
  the policy (a child process, :class:`klear.train.sampler_process.ProcessSampler`, or the Ray
  rollout actors). The step's importance ratio, against the behaviour policy's log-probs,
  corrects the lag (GPPO keeps the clipped tokens' gradients). Scoring and dynamic sampling
  run on the producer thread too: a refill depends on the scores, and the reward pool's work
  happens in its own processes (or reward actors), so all of step 1 overlaps the update.

The asynchronous schedule is deterministic, so a run is reproducible and a resumed run
regenerates what an uninterrupted one trained on: a batch asked for at the start of step k
is sampled with the weights of version k-1 (the weights after k-1 updates), and it is
trained at step k+j, j <= K, K versions behind at most. Weights go to the producer after each
update, tagged with their version (:meth:`AsyncRollouts.publish`), and the producer loads
exactly the version each batch asks for. A step that validates or writes a checkpoint is a
barrier: nothing is sampled past it until it ends, so the checkpoint's prompt-stream and
sampler RNG states are those of the batch it trained (none is in flight) and the next batch,
in the uninterrupted run as in a resumed one, is sampled with the weights it saved. A batch
more than K versions behind (a sampler whose weights did not arrive) is never trained on: it
is dropped, counted in ``async/dropped_batches``, and the next one is taken.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from klear.config import RLConfig
from klear.data.dynamic_sampling import keep_groups, overlong_penalty
from klear.errors import KlearError
from klear.rewards.think import judged_texts
from klear.train.learner import Sample

log = logging.getLogger("klear.rl")
#: "step k: only m/n groups with signal": its own logger, so that ``klear ablate`` can quiet it (its run
#: lines give the mean number of groups kept per step instead)
short_batch_log = logging.getLogger("klear.rl.short_batch")

#: stale batches dropped in a row before the run stops (a sampler that never gets new weights)
MAX_DROPPED_IN_A_ROW = 3


class StaleRolloutsError(KlearError, RuntimeError):
    """The sampler kept producing batches more than ``trainer.async_rollouts`` versions behind."""


class PromptStream:
    """Prompt rows in a fresh seeded permutation each epoch; its state is two integers (exact resume)."""

    def __init__(self, rows: Sequence[dict[str, Any]], seed: int, shuffle: bool = True):
        if not rows:
            raise ValueError("no training prompts")
        self.rows, self.seed, self.shuffle = list(rows), seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[tuple[int, dict[str, Any]]]:
        """The next ``k`` rows as (uid, row); uid is unique per draw, so repeated prompts are separate groups."""
        out = []
        for _ in range(k):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            idx = self._order[self.pos]
            out.append((self.epoch * len(self.rows) + self.pos, self.rows[idx]))
            self.pos += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._permutation()


@dataclass
class Batch:
    """One step's training batch: kept groups with signal, everything generated for it, and where it came from."""

    kept: list[list[Sample]]
    generated: list[Sample]
    gen_batches: int
    timing: dict[str, float] = field(
        default_factory=dict
    )  # seconds: gen, reward (on the producer when async)
    version: int = 0  # weights version (learner updates) of the policy that sampled it


def valid(s: Sample, cfg: RLConfig) -> bool:
    """False for a response left out of training: an infrastructure failure with ``reward.mask_failures``."""
    return not (cfg.reward.mask_failures and s.result.infra)


def groups_of(batch: list[Sample], n: int) -> list[list[Sample]]:
    return [batch[i : i + n] for i in range(0, len(batch), n)]


def mixed_groups(batch: list[Sample], n: int, cfg: RLConfig) -> list[list[Sample]]:
    """The groups whose ``dynamic_sampling.metric`` (acc or reward) varies (std > std_eps)."""
    if cfg.dynamic_sampling.metric == "acc":
        values = torch.tensor([float(s.result.correct) for s in batch])
    else:
        values = torch.tensor([s.reward for s in batch])
    ok = torch.tensor([valid(s, cfg) for s in batch])
    keep = keep_groups(values, [s.rollout.group for s in batch], cfg.dynamic_sampling.std_eps, valid=ok)
    return [g for g, k in zip(groups_of(batch, n), keep.view(-1, n).any(dim=1).tolist(), strict=True) if k]


def collect_batch(
    step: int, stream: Any, sampler: Any, pool: Any, cfg: RLConfig, sampling: Any, prefix: str
) -> Batch:
    """Sample and score generation batches of ``gen_batch_size`` prompts, keeping the groups with signal
    (dynamic sampling), until ``train_batch_size`` groups are kept or ``max_num_gen_batches`` ran."""
    n, groups_per_step = cfg.rollout.n, cfg.trainer.train_batch_size
    gen_prompts = cfg.trainer.gen_batch_size or groups_per_step
    timing = {"gen": 0.0, "reward": 0.0}
    kept: list[list[Sample]] = []
    generated: list[Sample] = []
    gen_batches = 0
    while len(kept) < groups_per_step:
        gen_batches += 1
        drawn = stream.take(gen_prompts)
        t0 = time.perf_counter()
        with torch.no_grad():
            rollouts = sampler.generate(
                [r["prompt"] for _, r in drawn], sampling, groups=[u for u, _ in drawn]
            )
        timing["gen"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = [drawn[i // n][1] for i in range(len(rollouts))]
        results = pool.score(rows, judged_texts(prefix, [r.text for r in rollouts]))
        timing["reward"] += time.perf_counter() - t0
        batch = [
            Sample(row, ro, res, res.score) for row, ro, res in zip(rows, rollouts, results, strict=True)
        ]
        if cfg.overlong.penalty:
            pen = overlong_penalty(
                torch.tensor([len(s.rollout.response_ids) for s in batch]),
                cfg.rollout.max_new_tokens,
                cfg.overlong.buffer_len,
                cfg.overlong.penalty_factor,
            )
            for s, p in zip(batch, pen.tolist(), strict=True):
                s.reward += p
        generated.extend(batch)
        kept.extend(mixed_groups(batch, n, cfg) if cfg.dynamic_sampling.enable else groups_of(batch, n))
        limit = cfg.dynamic_sampling.max_num_gen_batches
        if limit and gen_batches >= limit and len(kept) < groups_per_step:
            short_batch_log.warning(
                "step %d: only %d/%d groups with signal after %d generation batches",
                step,
                len(kept),
                groups_per_step,
                gen_batches,
            )
            break
    return Batch(kept[:groups_per_step], generated, gen_batches, timing)


class SyncRollouts:
    """Batch k sampled when step k asks for it, with the weights of step k-1 (``async_rollouts = 0``)."""

    def __init__(self, produce: Callable[[int], Batch], sampler: Any, version: int) -> None:
        self.produce, self.sampler, self.version = produce, sampler, version

    def next(self, step: int) -> tuple[Batch, dict[str, float]]:
        batch = self.produce(step)
        batch.version = self.version
        return batch, {"time/wait": 0.0}

    def publish(self, version: int, weights: Any) -> None:
        """The weights after ``version`` updates (None: unchanged since the last call) to the sampler."""
        if weights is not None:
            self.sampler.update_weights(weights)
        self.version = version

    def close(self) -> None:
        pass


def snapshot(weights: Any) -> Any:
    """A copy the learner's next update cannot change: a module's state dict cloned to CPU; anything
    else (a state dict already copied, a Ray ObjectRef) as it is."""
    if isinstance(weights, torch.nn.Module):
        return {k: v.detach().to("cpu", copy=True) for k, v in weights.state_dict().items()}
    return weights


class AsyncRollouts:
    """Batches made ahead on a producer thread, at most ``max_staleness`` weight versions behind.

    ``produce(step)`` samples one batch with ``sampler`` (see the module docstring for the
    schedule); ``barrier(step)`` is true for a step that validates or checkpoints. The loop
    calls :meth:`next` for each step's batch and :meth:`publish` after each update.
    """

    def __init__(
        self,
        produce: Callable[[int], Batch],
        sampler: Any,
        max_staleness: int,
        version: int,
        barrier: Callable[[int], bool],
        total_steps: int,
    ) -> None:
        if max_staleness < 1:
            raise ValueError(f"max_staleness = {max_staleness}: use SyncRollouts for 0")
        self.produce, self.sampler, self.k = produce, sampler, max_staleness
        self.barrier, self.total_steps = barrier, total_steps
        self.version = version  # the learner's latest weights
        self.held = version  # the weights the sampler holds
        self.outstanding = 0  # batches asked for and not yet handed to the loop
        self._published: dict[int, Any] = {}  # version -> weights, for batches asked for and not yet made
        self._latest: Any = None  # the newest weights published (None: the sampler's starting weights)
        self._loaded: Any = None  # the weights the sampler holds (same convention)
        self._jobs: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Batch | BaseException] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="klear-rollouts", daemon=True)
        self._thread.start()

    # --- the loop's side ------------------------------------------------------------------------

    def next(self, step: int) -> tuple[Batch, dict[str, float]]:
        """Step ``step``'s batch, and metrics: seconds waited for it, its staleness, stale batches dropped."""
        t0 = time.perf_counter()
        dropped = 0
        while True:
            self._ask(step)
            item = self._done.get()
            self.outstanding -= 1
            if isinstance(item, BaseException):
                raise item
            staleness = self.version - item.version
            if staleness <= self.k:
                break
            dropped += 1
            log.warning(
                "step %d: dropped a batch sampled with weights %d versions old (trainer.async_rollouts = %d)",
                step,
                staleness,
                self.k,
            )
            if dropped >= MAX_DROPPED_IN_A_ROW:
                raise StaleRolloutsError(
                    f"step {step}: {dropped} batches in a row were sampled with weights more than "
                    f"trainer.async_rollouts = {self.k} versions old (the last one {staleness}): the sampler "
                    "is not receiving new weights"
                )
        info = {
            "time/wait": time.perf_counter() - t0,
            "async/staleness": float(staleness),
            "async/dropped_batches": float(dropped),
        }
        return item, info

    def _ask(self, step: int) -> None:
        """Keep up to K+1 batches asked for (this step's included), none past the next barrier."""
        until = step
        while until < self.total_steps and not self.barrier(until):
            until += 1
        target = min(self.k + 1, until - step + 1)
        while self.outstanding < target:
            self._jobs.put((step + self.outstanding, self.version))
            self.outstanding += 1

    def publish(self, version: int, weights: Any) -> None:
        """The weights after ``version`` updates (None: unchanged since the last call), for the batches to come.

        With nothing in flight (after a barrier step) they are loaded at once, so validation
        samples with them; else the producer loads them when a batch asks for this version.
        """
        if weights is not None:
            self._latest = snapshot(weights)
        with self._cond:
            self.version = version
            if self.outstanding == 0:  # the producer is idle: load now
                self._published.clear()
                self._hold(version, self._latest)
            else:
                self._published[version] = self._latest
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._jobs.put(None)
        if self.outstanding == 0:
            self._thread.join(timeout=60)

    # --- the producer's side --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            step, need = job
            try:
                self._load(need)
                if self._closed:
                    return
                batch = self.produce(step)
                batch.version = self.held
            except BaseException as exc:  # handed to the loop, which raises it
                self._done.put(exc)
                return
            self._done.put(batch)

    def _load(self, need: int) -> None:
        """Make the sampler hold version ``need`` (waiting for the learner to publish it)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self.held == need or need in self._published)
            if self._closed or self.held == need:
                return
            weights = self._published[need]
            for v in [v for v in self._published if v <= need]:
                del self._published[v]
        self._hold(need, weights)

    def _hold(self, version: int, weights: Any) -> None:
        if weights is not self._loaded:
            self.sampler.update_weights(weights)
            self._loaded = weights
        self.held = version
