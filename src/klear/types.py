"""The records passed between stages: one typed object on each arrow of the data flow.

prompt rows -> rollout backend -> :class:`Rollout` -> reward pool ->
:class:`RewardResult` -> advantages -> train batch. Nothing is re-tokenised
after generation: the token ids and sampling log-probs travel with the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: Why a reward is not a clean verdict. A flagged result is never a silent 0.
RewardFlag = Literal["no_answer", "format", "timeout", "error", "sandbox_restart"]
REWARD_FLAGS: tuple[str, ...] = ("no_answer", "format", "timeout", "error", "sandbox_restart")


@dataclass
class RewardResult:
    """The verdict on one response.

    score: the scalar the trainer uses (already mapped: +1/-1, 1/0, pass rate, penalties).
    correct: whether the answer is right (math: equivalent; code: every selected test passed).
    passed/total: code tests passed / run (None for math).
    flags: what went wrong, if anything (see ``REWARD_FLAGS``).
    answer: the extracted answer (math) or program (code), None when absent.
    seconds: wall time spent scoring this response.
    detail: a human-readable note on an error or timeout.
    infra: the verdict failed for a reason outside the response -- the pool killed or lost the
    worker, the sandbox broke or restarted, the verifier timed out, the ground truth is
    unreadable, a reward function raised. With ``reward.mask_failures`` such a response is
    left out of the loss and of its group's statistics. The model's own failures (its
    program times out or crashes, a wrong format) are verdicts, never ``infra``.
    """

    score: float
    correct: bool
    passed: int | None = None
    total: int | None = None
    flags: tuple[str, ...] = ()
    answer: str | None = None
    seconds: float = 0.0
    detail: str | None = None
    infra: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "correct": self.correct,
            "passed": self.passed,
            "total": self.total,
            "flags": list(self.flags),
            "answer": self.answer,
            "seconds": self.seconds,
            "detail": self.detail,
            "infra": self.infra,
        }


@dataclass
class Rollout:
    """One sampled response to one prompt, exactly as the sampler produced it.

    prompt_ids / response_ids: token ids (the response excludes the prompt; it
    includes the EOS token when generation stopped on it).
    logprobs: log-prob of each response token under the sampling policy
    (same length as ``response_ids``).
    truncated: generation stopped at ``max_new_tokens`` rather than at EOS.
    group: id of the prompt group (the same for the ``n`` samples of one prompt).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool
    group: int | str = 0
    sample: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
