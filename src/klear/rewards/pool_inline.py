"""What the reward pool's parent does itself: items decided without a worker, and items no worker can get.

- **Math fast path** (:func:`decide_inline`): a built-in math item whose result needs no math_verify
  -- a format penalty, no answer, a plain number or exact rational compared exactly, an answer
  too large to compute (:mod:`klear.rewards.math_screen`) -- is scored here, in microseconds, by
  :func:`klear.rewards.math.quick_math_reward`, the same code the worker would run (same result).
  Only items that need math_verify go to a worker; on an integer-heavy RL mix that is a minority,
  and the round trips (pickling, pipes, the worker's scheduling) are what those items cost.
- **Repeats**: the samples of a GRPO group often give the same answer; math items still undecided
  whose (ground truth, extracted answer) repeat an earlier one in the batch are not sent at all
  (:func:`find_repeats`): they get a copy of that one's result (the result of an undecided item
  depends on nothing else). On with the fast path and a nonzero ``cache_size``.
- **Code repeats**: a low-entropy policy often writes the very same response several times in a
  group (about 4-5 distinct of 8 on the built-in code task at temperature 0.6); a code item whose
  (ground truth, response) repeats an earlier one is not run again but gets a copy of its result.
  The tests run are the same (``max_tests`` samples per problem, not per response), so a
  deterministic program gets what a second run would give; a program whose output is random gets
  one draw shared by its copies (each copy's expected score is unchanged). Always on.
- **Unsendable items** (:func:`send_items`): a ground truth that cannot be pickled (nested deeper
  than pickle's recursion limit, say) must not stop the batch: the chunk is sent item by item, and an
  item that cannot be sent is flagged ``error`` with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from klear.rewards.registry import REWARDS, failure_score
from klear.types import RewardResult

if TYPE_CHECKING:
    from klear.config import RewardConfig


def decide_inline(path: str, response: str, truth: Any, cfg: RewardConfig) -> RewardResult | None:
    """The item's result when the parent can decide it at once (built-in math only), else None."""
    if path != REWARDS["math"] or not cfg.math.fast_path:
        return None
    from klear.rewards.math import quick_math_reward

    return quick_math_reward(response, truth, cfg)


def _gold(truth: Any) -> str | None:
    try:
        return truth if isinstance(truth, str) else f"{type(truth).__name__}:{truth!r}"
    except RecursionError:  # a ground truth too deep to print: score it on its own
        return None


def _repeat_key(path: str, response: str, truth: Any) -> tuple[str, str, str] | None:
    if path == REWARDS["code"]:  # the whole response: what the code reward reads, nothing less
        gold = _gold(truth)
        return None if gold is None else (path, gold, response)
    from klear.rewards.math import answer_region, last_boxed

    region = answer_region(response)
    answer = last_boxed(region) if region is not None else None
    if not answer:
        return None
    gold = _gold(truth)
    return None if gold is None else (path, gold, answer)


def find_repeats(
    paths: Sequence[str],
    responses: Sequence[str],
    truths: Sequence[Any],
    decided: Sequence[RewardResult | None],
    cfg: RewardConfig,
) -> dict[int, int]:
    """{index: index of the first item with the same key} for undecided built-in math items (with
    the fast path and a cache) and built-in code items (always)."""
    kinds = {REWARDS["code"]}
    if cfg.math.fast_path and cfg.math.cache_size > 0:
        kinds.add(REWARDS["math"])
    first: dict[tuple[str, str, str], int] = {}
    repeats: dict[int, int] = {}
    for i, path in enumerate(paths):
        if path not in kinds or decided[i] is not None:
            continue
        key = _repeat_key(path, responses[i], truths[i])
        if key is None:
            continue
        if key in first:
            repeats[i] = first[key]
        else:
            first[key] = i
    return repeats


def copy_result(result: RewardResult) -> RewardResult:
    """The result of a repeat: the same verdict, no time of its own."""
    return dataclasses.replace(result, seconds=0.0)


def send_items(conn: Connection, items: Sequence[tuple[int, str, str, Any]]) -> list[tuple[int, str]]:
    """Send ``items`` (index, path, response, ground truth) to a worker; [(index, why)] of those that
    cannot be sent. Pipe errors (a dead worker) propagate as before: the caller handles them."""
    try:
        conn.send(list(items))
        return []
    except (BrokenPipeError, OSError):
        raise
    except Exception as exc:  # pickling failed before anything was written: the pipe is intact
        if len(items) == 1:
            return [(items[0][0], f"{type(exc).__name__}: {exc}")]
    failed: list[tuple[int, str]] = []
    for item in items:
        failed += send_items(conn, [item])
    return failed


def unsendable_result(path: str, why: str, cfg: RewardConfig) -> RewardResult:
    """The result of an item that could not be handed to a worker (flag ``error``)."""
    return RewardResult(
        score=failure_score(path, cfg),
        correct=False,
        flags=("error",),
        seconds=0.0,
        detail=f"item could not be sent to a reward worker ({why[:300]})",
    )
