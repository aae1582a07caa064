"""Reward functions for the RL safety-rail tests (imported by dotted path in reward workers)."""

from klear.types import RewardResult


def opens_think(response, ground_truth, cfg):
    """1 when the judged text starts with the Qwen3 think prefix, else -1 (the tiny model never writes it)."""
    ok = response.startswith("<think>\n")
    return RewardResult(score=1.0 if ok else -1.0, correct=ok)


def parity_with_infra(response, ground_truth, cfg):
    """Even length: right (1). Length 1 mod 4: an infrastructure failure (-1, flagged, ``infra``).
    Length 3 mod 4: the model's own failure (its program timed out: -1, flagged, not ``infra``)."""
    n = len(response)
    if n % 2 == 0:
        return RewardResult(score=1.0, correct=True)
    if n % 4 == 1:
        return RewardResult(score=-1.0, correct=False, flags=("sandbox_restart",), infra=True)
    return RewardResult(score=-1.0, correct=False, flags=("timeout",))


def sleepy(response, ground_truth, cfg):
    """Hangs past any item timeout: the pool must kill it (an infrastructure failure)."""
    import time

    time.sleep(30)
    return 1.0


def raises(response, ground_truth, cfg):
    """A broken reward function: the harness failed, not the response."""
    raise RuntimeError("reward server restarted")
