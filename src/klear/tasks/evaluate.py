"""Held-out accuracy of a rollout backend on rows with a ground truth (SFT's held-out metric).

Math rows (the built-in math tasks, whose answers are plain integers): a quick,
dependency-free check that the last ``\\boxed{...}`` after ``</think>`` equals the ground
truth string. Rewards during RL go through ``klear.rewards.math`` (math_verify), which
accepts more forms; on integer answers the two agree. Code rows (``ability: code``) have
no shortcut: their programs run against the tests in the sandbox through the real code
reward, and the mean fraction of tests passed is reported beside the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from klear.config import CodeRewardConfig, RewardConfig
from klear.rollout import RolloutBackend, SamplingParams

#: Code rows at evaluation: every test run (no sampling), default sandbox limits.
_CODE_EVAL = RewardConfig(code=CodeRewardConfig(max_tests=None, soft_mapping="pass_rate"))


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
    """Generate for every row and score it: exact match of the boxed answer, or the code reward.

    Returns the accuracy (mean over all samples, i.e. avg@n), the mean response length in
    tokens and the fraction of responses cut at ``max_new_tokens``; with code rows also
    ``pass_rate``, the mean fraction of tests passed.
    """
    if not rows:
        return {"accuracy": float("nan"), "response_length": float("nan"), "truncated": float("nan")}
    out = backend.generate([r["prompt"] for r in rows], sampling)
    correct, passed = [], []
    for i, o in enumerate(out):
        row = rows[i // sampling.n]
        truth = row["reward_model"]["ground_truth"]
        if row.get("ability") == "code":
            from klear.rewards.code import code_reward

            res = code_reward(o.text, truth, _CODE_EVAL)
            correct.append(res.correct)
            passed.append(res.passed / res.total if res.total else 0.0)
        else:
            correct.append(extract_boxed(o.text) == str(truth).strip())
    metrics = {
        "accuracy": sum(correct) / len(out),
        "response_length": sum(len(o.response_ids) for o in out) / len(out),
        "truncated": sum(o.truncated for o in out) / len(out),
    }
    if passed:
        metrics["pass_rate"] = sum(passed) / len(passed)
    return metrics
