"""The aggregate bound of a test: memory summed over all its processes, and inodes of its scratch space.

Why: RLIMIT_AS bounds one process; a test that forks six 80 MB processes under a 128 MB
limit uses 480 MB. The kernel's answer is a memory cgroup, but that needs a delegated,
writable cgroup v2 subtree, which a reward worker usually does not have (in containers
the cgroup tree is read-only, or v1). bubblewrap's ``--tmpfs`` takes no ``nr_inodes``
either, so 150k empty files on /tmp would cost ~150 MB of kernel memory.

How (``memory_guard``): one daemon thread per client process, outside the sandbox where no
test can see or signal it, scans every live sandbox of the process every
:data:`INTERVAL_S`. A test's processes are the sandbox's descendants in a session other
than the server's (each test's child starts its own session, and no process can join
another's session again). When the resident memory of those processes together passes
``sandbox.memory_mb``, or the files on the sandbox's /tmp or /dev/shm pass
``sandbox.tmpfs_inodes``, the guard SIGKILLs them all; the server then reports the test
as killed (a failed test) and its per-test wipe removes the files.

Limits: it is a sampling bound, not a hard one: between two scans a test can overshoot
by what it allocates in ~20 ms (tens of MB); the RLIMIT_AS of each process still bounds
the overshoot of each. Memory is resident memory summed over the processes, with pages
shared between them (the warm interpreter, a parent's data inherited by a fork) counted
once: the proportional set size, read from ``smaps_rollup`` only when the cheap resident
sum passes the bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Seconds between two scans of every sandbox.
INTERVAL_S = 0.02
#: What bounds a test's memory across its processes (reported at pool start-up and in docs/sandbox.md).
MECHANISM = "memory_guard"
_PAGE = os.sysconf("SC_PAGE_SIZE")


class GuardUnavailable(RuntimeError):
    """The guard cannot see a sandbox's processes on this kernel."""


@dataclass
class Watched:
    """One sandbox under watch: the bwrap pid the client started and the test's limits."""

    root_pid: int
    memory_bytes: int
    inodes: int
    kills: int = 0
    last_reason: str | None = None
    _server_sids: set[int] = field(default_factory=set)
    _dying: set[int] = field(default_factory=set)
    _blind: bool = False


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    return out


def _session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size: pages shared by n processes count 1/n in each (falls back to RSS)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return _rss(pid)


def _used_inodes(path: str) -> int | None:
    """Files on the mount at ``path`` (seen through /proc/<init>/root), or None if we may not look."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_files - st.f_ffree


def processes_of_test(w: Watched) -> list[int]:
    """Pids of the sandbox's descendants that belong to a test (not bwrap, its init, the server or its helpers)."""
    todo, pids = [w.root_pid], []
    if not w._server_sids:
        init = _children(w.root_pid)
        for pid in [w.root_pid, *init[:1]]:
            sid = _session(pid)
            if sid is not None:
                w._server_sids.add(sid)
    while todo:
        pid = todo.pop()
        kids = _children(pid)
        todo += kids
        for kid in kids:
            sid = _session(kid)
            if sid is not None and sid not in w._server_sids:
                pids.append(kid)
    return pids


def check(w: Watched) -> str | None:
    """Scan one sandbox once; kill its test's processes if over a bound; return why, or None."""
    found = processes_of_test(w)
    w._dying &= set(found)  # killed, not yet gone: neither counted nor killed (nor reported) twice
    pids = [p for p in found if p not in w._dying]
    if not pids:
        return None
    reason = None
    total = sum(_rss(p) for p in pids)
    if total > w.memory_bytes:  # cheap and an upper bound; only then the exact (and dearer) figure
        total = sum(_pss(p) for p in pids)
    if total > w.memory_bytes:
        reason = (
            f"memory: {total >> 20} MiB resident across {len(pids)} processes > {w.memory_bytes >> 20} MiB"
        )
    else:
        init = _children(w.root_pid)
        for mount in ("tmp", "dev/shm"):
            used = _used_inodes(f"/proc/{init[0]}/root/{mount}") if init else 0
            if used is None:
                if not w._blind:
                    w._blind = True
                    log.warning(
                        "code sandbox %d: cannot see /%s; its inode bound is not enforced", w.root_pid, mount
                    )
                continue
            if used > w.inodes:
                reason = f"inodes: {used} files on /{mount} > {w.inodes}"
                break
    if reason is not None:
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        w._dying.update(pids)
        w.kills += 1
        w.last_reason = reason
        log.warning("code sandbox %d: killed the test's processes (%s)", w.root_pid, reason)
    return reason


class _Guard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, Watched] = {}
        self._thread: threading.Thread | None = None

    def watch(self, w: Watched) -> None:
        with self._lock:
            self._watched[w.root_pid] = w
            if self._thread is None or not self._thread.is_alive() or self._thread.ident is None:
                self._thread = threading.Thread(target=self._loop, name="klear-memory-guard", daemon=True)
                self._thread.start()

    def unwatch(self, root_pid: int) -> None:
        with self._lock:
            self._watched.pop(root_pid, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                watched = list(self._watched.values())
            for w in watched:
                with contextlib.suppress(Exception):  # a guard that dies would silently lift every bound
                    check(w)
            time.sleep(INTERVAL_S)


_GUARD = _Guard()
_GUARD_PID = os.getpid()


def watch(root_pid: int, memory_bytes: int, inodes: int) -> Watched:
    """Start bounding the sandbox whose bwrap process is ``root_pid``."""
    global _GUARD, _GUARD_PID
    if os.getpid() != _GUARD_PID:  # a forked process has the object but not the thread
        _GUARD, _GUARD_PID = _Guard(), os.getpid()
    if not os.path.exists(f"/proc/{root_pid}/task/{root_pid}/children"):
        # a kernel without CONFIG_PROC_CHILDREN: the guard could not see a test's processes
        raise GuardUnavailable(
            "the memory guard needs /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN), "
            "which this kernel lacks"
        )
    w = Watched(root_pid, memory_bytes, inodes)
    _GUARD.watch(w)
    return w


def unwatch(root_pid: int) -> None:
    _GUARD.unwatch(root_pid)
