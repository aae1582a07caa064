"""Stopping reward workers so that nothing they started outlives the pool.

A worker's sandbox is a chain of processes: the worker, ``bwrap``, bubblewrap's init (pid 1
of the sandbox), the fork server and whatever a test left running. Killing the worker's
process group reaches ``bwrap`` but not the server (bubblewrap gives it a session of its
own); the rest follows by parent-death signals, asynchronously. So the pool records every
descendant of its workers (by pid *and* start time, read from ``/proc``, never by name)
before it stops them, kills them all, and returns only once none is running, within
:data:`REAP_TIMEOUT_S`.

- :func:`shutdown` (``pool.close()``, the end of a ``with`` block): ask each worker to stop,
  allow :data:`GRACE_S` to close its sandboxes, then kill and reap everything recorded.
- :func:`terminate` (an exception or a signal leaves the ``with`` block): kill and reap now.
- :func:`report_bounds`: the start-up log line naming the aggregate memory bound in use.
- :func:`signals_exit` (the CLI): SIGTERM raises ``SystemExit(143)``, SIGINT KeyboardInterrupt,
  so that the ``with`` block is left through :func:`terminate`; a second signal is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Seconds a worker has to stop on its own (and close its sandboxes) on a normal close.
GRACE_S = 1.0
#: Seconds after the kill within which every recorded process must be gone.
REAP_TIMEOUT_S = 1.5


class _WorkerLike(Protocol):
    process: Any
    conn: Any


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a live process: what a later kill checks, so a reused pid is never hit."""
    st = _stat(pid)
    return None if st is None else (pid, st[19])


def running(ident: tuple[int, str]) -> bool:
    """The process still exists and is not a zombie (a zombie runs nothing and holds no memory)."""
    st = _stat(ident[0])
    return st is not None and st[19] == ident[1] and st[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of all its threads, recursively), from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def record(workers: list[_WorkerLike]) -> list[tuple[int, str]]:
    """Identities of the workers and everything below them, taken before they are stopped."""
    idents = []
    for w in workers:
        pid = w.process.pid
        if pid is None:
            continue
        for p in [pid, *descendants(pid)]:
            ident = identity(p)
            if ident is not None:
                idents.append(ident)
    return idents


def kill_and_reap(idents: list[tuple[int, str]], timeout: float = REAP_TIMEOUT_S) -> list[int]:
    """SIGKILL each recorded process still running (start time checked), wait until none runs.

    Returns the pids still running at the timeout (empty when all are gone).
    """
    for ident in idents:
        if running(ident):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(ident[0], signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left = [i for i in idents if running(i)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [i for i in left if running(i)]
    return [i[0] for i in left]


def kill_worker(worker: _WorkerLike) -> None:
    """SIGKILL the worker's process group (it is a session leader), then the worker itself, by PID.

    Its sandboxes are recorded first and reaped after, so none lives on.
    """
    idents = record([worker])
    pid = worker.process.pid
    if pid is not None:
        for kill, target in ((os.killpg, pid), (os.kill, pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)
    worker.process.join(timeout=5)
    worker.conn.close()
    kill_and_reap(idents)


def shutdown(workers: list[_WorkerLike]) -> None:
    """Ask every worker to stop, give them :data:`GRACE_S` to close their sandboxes, then reap all."""
    idents = record(workers)
    for w in workers:
        with contextlib.suppress(BrokenPipeError, OSError):
            w.conn.send(None)
    deadline = time.monotonic() + GRACE_S
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))
    _finish(workers, idents)


def terminate(workers: list[_WorkerLike]) -> None:
    """Kill every worker and everything below it now, and wait until none runs (signal, error)."""
    _finish(workers, record(workers))


def _finish(workers: list[_WorkerLike], idents: list[tuple[int, str]]) -> None:
    for w in workers:
        pid = w.process.pid
        if pid is not None and w.process.is_alive():
            for kill, target in ((os.killpg, pid), (os.kill, pid)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(target, signal.SIGKILL)
    kill_and_reap(idents)
    for w in workers:
        w.process.join(timeout=1.0)  # collects the worker's exit status (no zombie left)
        with contextlib.suppress(OSError):
            w.conn.close()
    workers.clear()


@contextlib.contextmanager
def signals_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt in the main thread.

    After the first of them both are ignored until the block is left, so that a second
    Ctrl-C or SIGTERM cannot interrupt the reaping it started.
    """

    def on_signal(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    try:
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report_bounds(sandbox_cfg: Any) -> str:
    """Log, once per pool, what bounds a code test across its processes; return the mechanism's name."""
    from klear.rewards.sandbox.guard import MECHANISM

    log.info(
        "code sandbox: aggregate memory bound per test by %s (%d MiB over all its processes, "
        "%d files on /tmp and /dev/shm); no delegated cgroup v2 is used",
        MECHANISM,
        sandbox_cfg.memory_mb,
        sandbox_cfg.tmpfs_inodes,
    )
    return MECHANISM
