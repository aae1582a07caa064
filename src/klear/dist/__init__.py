"""Scale-out on Ray: the RL loop's three engines as groups of actors (``pip install klear[ray]``).

``klear rl RECIPE dist.backend=ray dist.rollout_workers=N dist.reward_workers=M
dist.learner_ranks=R`` runs the very loop of ``klear.train.rl`` with

- a :class:`~klear.dist.groups.RolloutGroup`: N actors, each a rollout backend over its
  own copy of the policy. A call's prompts are split over the actors; keyed sampling
  randomness (``klear.rollout.hf``) makes the result identical to one process's.
  Weights come from the learner after every step, versioned: an actor refuses to
  generate with any other version than the group's, so a step never mixes two policies.
- a :class:`~klear.dist.groups.RewardGroup`: M actors, each a
  :class:`~klear.rewards.pool.RewardPool` of ``reward.num_workers`` processes (one actor
  per node is the usual placement).
- a :class:`~klear.dist.groups.LearnerGroup`: R ranks joined by a torch.distributed
  process group (gloo on CPU, nccl on GPUs), data-parallel with a global token-mean
  (``klear.train.learner``): R ranks take exactly the one-rank step.

Faults: a rollout or reward actor that dies is replaced and its share of the call is
re-issued (``dist.max_worker_restarts`` per call). A learner rank that dies fails the step
with :class:`~klear.dist.groups.LearnerLost`, all ranks are stopped, and running the same
command again resumes from the last checkpoint (on any number of ranks).

This package is the only one that imports ray; nothing imports it unless
``dist.backend=ray``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from klear.config import RLConfig


def ray_engines(cfg: RLConfig, model_dir: Path) -> tuple[Any, Any, Any]:
    """(learner, sampler, reward pool) as Ray actor groups, on the cluster ``dist.address`` names."""
    from klear.dist.groups import build_engines

    return build_engines(cfg, model_dir)


__all__ = ["ray_engines"]
