"""Plug-ins that bring Klear's losses and rewards to other training libraries.

Each submodule imports its library at import time (the edge of the system, like
``klear.dist`` and ``klear.rollout``), so ``import klear`` never pulls them in:

- ``klear.integrations.trl``: GPPO (and every ``klear.algo.losses`` loss) in TRL's
  ``GRPOTrainer``, and Klear's reward pool as a TRL reward function. See ``docs/trl.md``.
- ``klear.integrations.verl``: GPPO / CE-GPPO / CISPO registered in verl's policy-loss
  registry (loaded by verl's plug-in entry point), and Klear's reward pool as a verl custom
  reward function. See ``docs/verl.md``.
"""
