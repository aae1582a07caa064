"""Klear: long-CoT SFT, GPPO reinforcement learning with verifiable rewards, and avg@k evaluation."""

__version__ = "0.1.0"
