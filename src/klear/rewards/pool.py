"""Batch scoring over worker processes: no item can stall a batch past ``item_timeout_s``.

``RewardPool(cfg)`` keeps ``cfg.num_workers`` processes alive across training steps;
``pool.score(rows, responses)`` returns one :class:`RewardResult` per response, in input order, and
leaves counts in ``pool.last_metrics``. ``score_batch(rows, responses, cfg)`` is the one-shot form.

Why processes, and how they are bounded:

- math_verify's own timeout is a signal alarm, which cannot run off a main thread; code rewards run
  untrusted programs. Each worker runs reward functions on its own main thread, one item at a time,
  with its own inner timeouts (``math.verify_timeout_s``, the sandbox's per-test limits).
- The parent is the hard bound: an item still running ``item_timeout_s`` after it started
  gets its worker killed -- SIGKILL to the worker's process group (each worker is a session leader,
  so anything it started goes too), by PID -- replaced, and the item flagged ``timeout``. A worker
  that dies (``os._exit``, segfault, OOM kill) is replaced and its item flagged ``error``. The parent
  never blocks on a worker: it waits on pipes and process sentinels with a deadline, so it works
  from any thread, and a stuck worker only costs its own item.
- Workers start from a small forkserver (spawn where there is none), never by forking the caller:
  forking a trainer holding GiBs of tensors costs ~150 ms per fork and copies CUDA state. The
  forkserver preloads math_verify, so a replacement worker is ready in well under a second.
- A worker takes items only after it reports ready (imports and math_verify's first-use setup
  done), so start-up time never counts against an item's bound.
- Items go in small chunks to idle workers only (so a send never waits on a busy worker); each
  result comes back on its own and starts the clock of the next item, so the bound stays per item;
  a killed worker's unstarted items go back to the queue. A worker keeps taking the samples of the
  prompt it is on (same ground truth), so its (gold, answer) cache sees the repeats of a GRPO group.
- Built-in math items that need no math_verify (format penalties, no answer, plain numbers, answers
  too large to compute) are decided in the parent before dispatch, and an item whose ground truth
  cannot be sent (not picklable) is flagged, not fatal: :mod:`klear.rewards.pool_inline`.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from klear.rewards import lifecycle
from klear.rewards.pool_inline import (
    copy_result,
    decide_inline,
    find_repeats,
    send_items,
    unsendable_result,
)
from klear.rewards.pool_worker import worker_main
from klear.rewards.registry import failure_score, ground_truth, reward_path
from klear.types import REWARD_FLAGS, RewardResult

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from klear.config import RewardConfig

#: A worker that has not reported ready this long after starting is killed and replaced.
START_TIMEOUT_S = 120.0
#: Consecutive worker start failures after which scoring gives up with an error.
MAX_START_FAILURES = 3
#: Most items handed to a worker in one message (fewer round trips for cheap items; shrinks to 1
#: near the end of a batch so no worker idles while another holds a backlog).
MAX_CHUNK = 8
#: Modules the forkserver imports once, so every worker forked from it starts warm.
PRELOAD = ["klear.rewards.pool_worker", "klear.rewards.math", "klear.rewards.registry", "math_verify"]


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    started: float
    ready: bool = False
    items: deque[int] = field(default_factory=deque)  # handed over, not yet answered; head is running
    group: Any = None  # prompt group of its last item (see _Queue)
    item_started: float = 0.0  # when the head item started (its chunk arrived or the previous answered)


class _Queue:
    """Pending items grouped by prompt, so a worker keeps taking the samples of the prompt it is on.

    The n samples of one prompt share a ground truth and often the same answer; when they go to the
    same worker, its (gold, answer) cache and parsed ground truth are reused instead of recomputed
    in every worker. An idle worker takes, in order: more of its last group; the oldest group no
    other worker is on; else it helps with the largest remaining group (no worker waits while items
    are pending).
    """

    def __init__(self, keys: list[Any], todo: Sequence[int] | None = None) -> None:
        self.keys = keys
        self.groups: dict[Any, deque[int]] = {}
        todo = range(len(keys)) if todo is None else todo
        for index in todo:
            self.groups.setdefault(keys[index], deque()).append(index)
        self.order: deque[Any] = deque(self.groups)
        self.size = len(todo)

    def __len__(self) -> int:
        return self.size

    def _pop(self, key: Any) -> int:
        self.size -= 1
        return self.groups[key].popleft()

    def take(self, last_key: Any, busy_keys: set[Any]) -> int:
        if self.groups.get(last_key):
            return self._pop(last_key)
        while self.order and not self.groups[self.order[0]]:
            self.order.popleft()
        for key in self.order:
            if self.groups[key] and key not in busy_keys:
                return self._pop(key)
        return self._pop(max(self.order, key=lambda k: len(self.groups[k])))

    def put_back(self, index: int) -> None:
        key = self.keys[index]
        if not self.groups[key]:
            self.order.appendleft(key)
        self.groups[key].appendleft(index)
        self.size += 1


@dataclass
class _Batch:
    paths: list[str]
    truths: list[Any]
    responses: Sequence[str]
    results: list[RewardResult | None]
    pending: _Queue
    progress: Callable[[int, int], None] | None = None
    done: int = 0

    def finish(self, index: int, result: RewardResult) -> None:
        self.results[index] = result
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.results))


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def reward_metrics(results: Sequence[RewardResult]) -> dict[str, float]:
    """Mean score, accuracy and a count per flag (``flag/<name>``) over ``results``."""
    n = len(results)
    metrics: dict[str, float] = {
        "items": float(n),
        "mean_score": sum(r.score for r in results) / n if n else 0.0,
        "accuracy": sum(r.correct for r in results) / n if n else 0.0,
    }
    for flag in REWARD_FLAGS:
        metrics[f"flag/{flag}"] = float(sum(flag in r.flags for r in results))
    return metrics


class RewardPool:
    """``cfg.num_workers`` reward worker processes, kept alive across batches; a context manager.

    ``score`` may be called from any thread (concurrent calls on one pool run one after the
    other). After each call,
    ``last_metrics`` holds :func:`reward_metrics` plus ``worker_restarts`` (workers killed or lost
    during the call), ``seconds`` and ``items_per_s``.
    """

    def __init__(self, cfg: RewardConfig, num_workers: int | None = None) -> None:
        self.cfg = cfg
        self.num_workers = num_workers or cfg.num_workers
        self.last_metrics: dict[str, float] = {}
        self._ctx = _context()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, lifecycle.shutdown, self._workers)
        self.memory_bound = lifecycle.report_bounds(cfg.sandbox)  # "memory_guard" (docs/sandbox.md)
        for _ in range(self.num_workers):
            self._workers.append(self._start_worker())

    # -- lifecycle ------------------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(child_conn, self.cfg), name="klear-reward-worker", daemon=False
        )
        process.start()
        child_conn.close()
        return _Worker(process=process, conn=parent_conn, started=time.monotonic())

    def _replace(self, worker: _Worker) -> None:
        lifecycle.kill_worker(worker)
        self._workers[self._workers.index(worker)] = self._start_worker()

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the current workers (for monitoring memory or CPU from outside)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Block until every worker has finished starting (imports, warm-up); raise after ``timeout``.

        Optional: ``score`` only hands items to ready workers anyway. Useful to start the pool early
        and pay the start-up before the first batch is timed.
        """
        deadline = time.monotonic() + timeout
        while not all(w.ready for w in self._workers):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"reward workers not ready after {timeout} s")
            starting = [w for w in self._workers if not w.ready]
            wait([w.conn for w in starting] + [w.process.sentinel for w in starting], timeout=left)
            for w in starting:
                self._drain_ready(w)
                if not w.ready and not w.process.is_alive():
                    raise RuntimeError(f"reward worker died on start-up (exit code {w.process.exitcode})")

    def _drain_ready(self, worker: _Worker) -> None:
        """Read the start-up notice of a worker that has no item yet."""
        with contextlib.suppress(EOFError, OSError):
            while not worker.ready and worker.conn.poll():
                msg = worker.conn.recv()
                worker.ready = isinstance(msg, tuple) and bool(msg) and msg[0] == "ready"

    def close(self) -> None:
        """Stop the workers and reap their sandboxes: none runs when this returns. Idempotent."""
        self._closed = True
        self._finalizer()

    def terminate(self) -> None:
        """Kill the workers and their sandboxes now (no grace), and wait until none runs. Idempotent."""
        self._closed = True
        if self._finalizer.detach() is not None:
            lifecycle.terminate(self._workers)

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # KeyboardInterrupt, SIGTERM's SystemExit, an error: no grace period
            self.terminate()
        else:
            self.close()

    # -- scoring --------------------------------------------------------------------------------

    def score(
        self,
        rows: Sequence[dict[str, Any]],
        responses: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[RewardResult]:
        """Score ``responses[i]`` against ``rows[i]``; results in input order, each within its bound.

        Raises :class:`klear.rewards.registry.RowError` before any work when a row has no reward
        function or no ground truth. ``progress(done, total)`` is called as items finish.
        """
        if len(rows) != len(responses):
            raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
        paths = [reward_path(row, self.cfg, i) for i, row in enumerate(rows)]
        truths = [ground_truth(row, i) for i, row in enumerate(rows)]
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise ValueError(f"response {i}: expected a string, got {type(response).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            start = time.monotonic()
            groups = [
                (path, truth if isinstance(truth, (str, int, float)) else id(truth))
                for path, truth in zip(paths, truths, strict=True)
            ]
            # decided here when no worker is needed (math fast path); the rest go to the workers
            decided = [
                decide_inline(p, r, t, self.cfg) for p, r, t in zip(paths, responses, truths, strict=True)
            ]
            repeats = find_repeats(paths, responses, truths, decided, self.cfg)  # scored once, copied
            todo = [i for i, r in enumerate(decided) if r is None and i not in repeats]
            batch = _Batch(paths, truths, responses, decided, _Queue(groups, todo))
            batch.done = len(rows) - len(todo)
            batch.progress = progress
            if progress is not None and batch.done:
                progress(batch.done, len(rows))
            try:
                restarts = self._run(batch)
            except BaseException:
                self._abandon_busy()
                raise
            for i, first in repeats.items():
                batch.results[i] = copy_result(batch.results[first])  # type: ignore[arg-type]
            results: list[RewardResult] = [r for r in batch.results if r is not None]
            assert len(results) == len(rows)
            seconds = time.monotonic() - start
            self.last_metrics = {
                **reward_metrics(results),
                "worker_restarts": float(restarts),
                "seconds": seconds,
                "items_per_s": len(results) / seconds if seconds > 0 else 0.0,
            }
            return results

    def _abandon_busy(self) -> None:
        """After an interrupted batch: replace workers still on an item, so no stale result leaks
        into the next batch and no next item waits behind an abandoned one."""
        for w in list(self._workers):
            if w.items:
                self._replace(w)

    def _lost(self, batch: _Batch, worker: _Worker, flag: str, detail: str, now: float) -> None:
        """The worker's current item could not finish: flag it and give it the failure score; the
        rest of its chunk, never started, goes back to the queue."""
        if not worker.items:
            return
        index = worker.items.popleft()
        while worker.items:
            batch.pending.put_back(worker.items.pop())
        result = RewardResult(
            score=failure_score(batch.paths[index], self.cfg),
            correct=False,
            flags=(flag,),
            infra=True,  # the pool killed or lost the worker: no verdict on the response
            seconds=now - worker.item_started,
            detail=detail,
        )
        batch.finish(index, result)

    def _run(self, batch: _Batch) -> int:
        """Dispatch loop: hand items to idle ready workers, collect results, enforce every deadline."""
        bound = self.cfg.item_timeout_s
        restarts = 0
        start_failures = 0
        while batch.done < len(batch.results):
            now = time.monotonic()
            # 1. hand a chunk to each idle, ready worker (only idle ones: a send never blocks on a busy one);
            #    again while a chunk turned out unsendable, so no worker idles while items are pending
            for w in self._workers:
                while w.ready and not w.items and batch.pending:
                    busy = {v.group for v in self._workers if v.items}
                    size = max(1, min(MAX_CHUNK, len(batch.pending) // (2 * len(self._workers))))
                    chunk = []
                    for _ in range(size):
                        if not batch.pending:
                            break
                        chunk.append(batch.pending.take(w.group, busy))
                        w.group = batch.pending.keys[chunk[-1]]
                    try:
                        items = [(i, batch.paths[i], batch.responses[i], batch.truths[i]) for i in chunk]
                        for i, why in send_items(w.conn, items):  # unpicklable: flagged, not sent
                            chunk.remove(i)
                            batch.finish(i, unsendable_result(batch.paths[i], why, self.cfg))
                    except (BrokenPipeError, OSError):
                        for i in reversed(chunk):  # it died; its sentinel reports it below
                            batch.pending.put_back(i)
                        break
                    w.items.extend(chunk)
                    w.item_started = now
            if batch.done == len(batch.results):
                break  # the last items were flagged unsendable
            if not batch.pending and not any(w.items for w in self._workers):
                raise RuntimeError(f"reward pool lost track of {len(batch.results) - batch.done} item(s)")
            # 2. sleep until a result, a death, or the nearest deadline
            deadlines = [
                (w.item_started + bound) if w.items else (w.started + START_TIMEOUT_S)
                for w in self._workers
                if w.items or not w.ready
            ]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            waitables: list[Any] = [w.conn for w in self._workers] + [
                w.process.sentinel for w in self._workers
            ]
            ready = set(wait(waitables, timeout=timeout))
            now = time.monotonic()
            # 3. results and deaths
            for w in list(self._workers):
                if w.conn in ready:
                    self._drain(batch, w, now)
                if w.process.sentinel in ready or not w.process.is_alive():
                    self._drain(batch, w, now)
                    code = w.process.exitcode
                    if w.ready:
                        self._lost(batch, w, "error", f"reward worker died (exit code {code})", now)
                    else:
                        start_failures += 1
                        if start_failures >= MAX_START_FAILURES:
                            raise RuntimeError(
                                f"reward workers keep dying on start-up (exit code {code}); "
                                "run `python -c 'import klear.rewards.math'` to see why"
                            )
                    self._replace(w)
                    restarts += 1
            # 4. deadlines: kill what is stuck
            for w in list(self._workers):
                if w.items and now - w.item_started >= bound:
                    self._lost(batch, w, "timeout", f"killed after item_timeout_s={bound} s", now)
                    self._replace(w)
                    restarts += 1
                elif not w.ready and now - w.started >= START_TIMEOUT_S:
                    start_failures += 1
                    if start_failures >= MAX_START_FAILURES:
                        raise RuntimeError(f"reward workers did not start within {START_TIMEOUT_S} s")
                    self._replace(w)
                    restarts += 1
        return restarts

    def _drain(self, batch: _Batch, worker: _Worker, now: float) -> None:
        """Read every message the worker has sent: 'ready' notices and finished items."""
        while True:
            try:
                if worker.conn.closed or not worker.conn.poll():
                    return
                msg = worker.conn.recv()
            except (EOFError, OSError):
                return
            if isinstance(msg, tuple) and msg and msg[0] == "ready":
                worker.ready = True
                continue
            index, result = msg
            if worker.items and index == worker.items[0]:
                worker.items.popleft()
                worker.item_started = now  # the next item of the chunk starts now
                batch.finish(index, result)


def score_batch(
    rows: Sequence[dict[str, Any]], responses: Sequence[str], cfg: RewardConfig
) -> list[RewardResult]:
    """Score one batch with a temporary :class:`RewardPool` (training keeps one pool alive instead)."""
    with RewardPool(cfg) as pool:
        return pool.score(rows, responses)
