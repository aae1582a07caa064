"""Exact-match accuracy of a rollout backend on rows with a ground truth (the demo's held-out metric).

This is a quick, dependency-free check for built-in tasks, whose answers are plain
integers: the last ``\\boxed{...}`` after ``</think>`` must equal the ground truth string.
Rewards during RL go through ``klear.rewards.math`` (math_verify), which accepts more
forms; on integer answers the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from klear.rollout import RolloutBackend, SamplingParams


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` after ``</think>`` (braces balanced), or None."""
    if "</think>" not in text:
        return None
    tail = text.rsplit("</think>", 1)[1]
    start = tail.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(tail)):
        depth += {"{": 1, "}": -1}.get(tail[j], 0)
        if depth == 0:
            return tail[i:j].strip()
    return None


def exact_match_accuracy(
    backend: RolloutBackend,
    rows: Sequence[dict[str, Any]],
    sampling: SamplingParams,
) -> dict[str, float]:
    """Generate for every row and score exact match of the boxed answer.

    Returns the accuracy (mean over all samples, i.e. avg@n), the mean response length in
    tokens and the fraction of responses cut at ``max_new_tokens``.
    """
    if not rows:
        return {"accuracy": float("nan"), "response_length": float("nan"), "truncated": float("nan")}
    out = backend.generate([r["prompt"] for r in rows], sampling)
    truth = [str(r["reward_model"]["ground_truth"]).strip() for r in rows]
    correct = [extract_boxed(o.text) == truth[i // sampling.n] for i, o in enumerate(out)]
    return {
        "accuracy": sum(correct) / len(out),
        "response_length": sum(len(o.response_ids) for o in out) / len(out),
        "truncated": sum(o.truncated for o in out) / len(out),
    }
