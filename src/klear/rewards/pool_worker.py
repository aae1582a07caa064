"""The reward pool's worker process: scores the items it is sent, one at a time, on its main thread.

Started by :class:`klear.rewards.pool.RewardPool` from a forkserver. It leads its own process
group (so the pool's kill reaches everything it started), dies with its parent, warms the math
verifier up before it reports ready, and turns a reward function's failure into that item's
flagged result (``error``, ``infra``), never its own death.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from klear.rewards.registry import as_result, failure_score, load_function
from klear.types import RewardResult

if TYPE_CHECKING:
    from klear.config import RewardConfig


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent goes, so no worker outlives a crashed trainer."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the pipe closing still ends the worker's loop


def _score_one(
    functions: dict[str, Any], path: str, response: str, truth: Any, cfg: RewardConfig
) -> RewardResult:
    """Run one reward function; its failure is the item's (flag ``error``), never the worker's."""
    start = time.perf_counter()
    try:
        fn = functions.get(path)
        if fn is None:
            fn = functions[path] = load_function(path)
        result = as_result(fn(response, truth, cfg), path)
        if not result.seconds:
            result.seconds = time.perf_counter() - start
        return result
    except BaseException as exc:
        return RewardResult(
            score=failure_score(path, cfg),
            correct=False,
            flags=("error",),
            infra=True,  # the reward function raised: nothing the response did can be scored
            seconds=time.perf_counter() - start,
            detail=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}".strip(),
        )


def worker_main(conn: Connection, cfg: RewardConfig) -> None:
    """Serve chunks of (index, path, response, ground_truth) until told to stop or the pipe closes.

    Each item's result is sent as soon as it is ready: the parent times items one by one.
    """
    os.setsid()  # own process group: the parent's kill reaches everything this worker starts
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from klear.rewards import math as math_reward_module

    math_reward_module.warm_up()
    conn.send(("ready", os.getpid()))
    functions: dict[str, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        try:
            for index, path, response, truth in msg:
                conn.send((index, _score_one(functions, path, response, truth, cfg)))
        except (BrokenPipeError, OSError):
            break
    _close_sandboxes()


def _close_sandboxes() -> None:
    """Stop this worker's sandbox servers, if the code reward started any."""
    import sys

    sandbox = sys.modules.get("klear.rewards.sandbox")
    close_all = getattr(sandbox, "close_all", None)
    if close_all is not None:
        # the worker is exiting: a failure here must not hide anything, the servers die with its group
        with contextlib.suppress(Exception):
            close_all()
