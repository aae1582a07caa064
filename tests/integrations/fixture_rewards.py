"""Reward functions for the TRL plug-in tests (imported by dotted path in reward workers)."""


def explode(response, ground_truth, cfg):
    """A user reward that always raises: the pool flags the item ``error``."""
    raise ValueError(f"cannot score {response!r}")
