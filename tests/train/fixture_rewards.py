"""Reward functions for trainer tests: they give an untrained model's groups some variance.

They run in reward worker processes (imported by dotted path), so they live in a module.
"""

from klear.types import RewardResult


def parity(response, ground_truth, cfg):
    """1 for an even-length response: about half of any group is right."""
    ok = len(response) % 2 == 0
    return RewardResult(score=float(ok), correct=ok)


def parity_on_odd_answers(response, ground_truth, cfg):
    """Like ``parity`` for problems with an odd answer; constant 0 (no signal) for even answers."""
    if int(ground_truth) % 2 == 0:
        return RewardResult(score=0.0, correct=False)
    return parity(response, ground_truth, cfg)


def slow_parity(response, ground_truth, cfg):
    """``parity``, 50 ms late: makes a step slow enough to SIGKILL a run between two checkpoints."""
    import time

    time.sleep(0.05)
    return parity(response, ground_truth, cfg)
