"""Plug-ins that bring Klear's losses and rewards to other training libraries.

Each submodule imports its library at import time (the edge of the system, like
``klear.dist`` and ``klear.rollout``), so ``import klear`` never pulls them in:

- ``klear.integrations.trl``: GPPO (and every ``klear.algo.losses`` loss) in TRL's
  ``GRPOTrainer``, and Klear's reward pool as a TRL reward function. See ``docs/trl.md``.
"""
