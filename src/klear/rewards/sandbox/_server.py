"""The fork server that runs inside the sandbox: a manager, a zygote, and per test a child (and a judge).

This file is never imported by Klear: the client reads its text and runs it with
``python -I -c`` inside bubblewrap, where the Klear checkout is not visible. It
therefore uses the standard library only and runs on any Python >= 3.9. The text of
``_harness.py`` (the child and the judge) arrives in the config and is loaded as a module.

Why a fork server: starting a sandbox and an interpreter per test costs ~100 ms of
CPU (firejail, the reference's way); forking an already-warm interpreter costs a
few ms. Isolation comes from the one long-lived sandbox around this server, plus
per-child rlimits, a separate unprivileged uid for children, and a kill of every
process of that uid after each test.

Two processes, so that nothing of one test reaches another:

- the manager (this process after start-up) speaks the protocol, holds requests and
  replies, collects output and cleans up. Nothing that runs solution code is forked
  from it (only the cleanup helper, which runs this file's code alone).
- the zygote, forked once before the first request, warm and then frozen, forks each
  test's processes. It receives only descriptors (and one byte: how many are the
  child's) from the manager and sends back pids and exit statuses: a child forked from it inherits no request,
  reply, output or verdict of any test, in any frame, object or freed memory.

Per test the manager fills memfds (the child's request, stdin, the judge's task) and
pipes, and hands them to the zygote with SCM_RIGHTS; the zygote forks the child and,
for check tests, the judge (see ``_harness.py``), which holds the check and reports
the verdict on a pipe only the manager reads.

Protocol on fds 0/1 (moved to private fds at start): frames of a 4-byte big-endian
length then UTF-8 JSON. The first frame out is ``{"ready": true, ...}``. Each
request ``{"code", "test"}`` gets exactly one reply with the child's status, exit
code or signal, stdout (capped), stderr tail and the result record (a call's value,
a check's verdict). Expected outputs of stdin and call tests never enter the sandbox:
the client compares outside.
"""

import bisect
import collections
import contextlib
import copy
import ctypes
import fractions
import functools
import gc
import heapq
import itertools
import json
import math
import operator
import os
import random
import re
import select
import signal
import socket
import string
import struct
import sys
import time
import types
import typing

# Modules solutions commonly import, loaded once here so that each forked child finds them warm.
_WARM = (
    bisect,
    collections,
    copy,
    fractions,
    functools,
    heapq,
    itertools,
    math,
    operator,
    random,
    re,
    string,
    typing,
)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
STDERR_KEEP = 4096
#: Pids the per-test cleanup must never kill (the zygote).
_KEEP = set()

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option, arg):
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf.extend(chunk)
    return bytes(buf)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _send(fd, obj):
    payload = json.dumps(obj).encode()
    _write_all(fd, struct.pack(">I", len(payload)) + payload)


def _recv(fd):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = _read_exact(fd, n)
    return None if body is None else json.loads(body)


# ------------------------------------------------------------------------------------------
# The server side of one test
# ------------------------------------------------------------------------------------------


def _other_pids(live_only=False):
    """Pids in this pid namespace other than init, this server and its zygote (cheap: the namespace is tiny).

    live_only skips zombies: they run nothing, and _reap_all collects them after each test.
    """
    keep = {1, os.getpid(), *_KEEP}
    pids = [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in keep]
    if live_only:
        pids = [p for p in pids if _state(p) not in ("Z", "")]
    return pids


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _kill_leftovers(cfg):
    """Kill every process a test left behind, then wipe what it left: scratch files and IPC objects.

    With a separate uid: a short-lived helper becomes that uid and sends SIGKILL to -1,
    which inside this pid namespace reaches exactly the test's processes, then empties
    the scratch directories and removes the SysV IPC objects as that uid (their owner);
    it is only forked when something is left over. Without one (unprivileged bubblewrap):
    every pid in the namespace but init and this server, then the same wipe. Without a
    sandbox: nothing beyond the process group, and only the work directory is emptied.
    """
    if cfg["isolation"] == "uid":
        if not _other_pids(live_only=True) and not _has_leftovers(cfg):
            return
        _as_test_uid(cfg, wipe=True)
        # SIGKILL is delivered when the target next leaves the kernel: one caught inside a system
        # call (a loop of kill(-1)) can still finish that call. The next test's processes run under
        # the same uid, so it starts only once nothing of this test is left running.
        _until_dead(lambda: _as_test_uid(cfg, wipe=False))
        return
    if cfg["isolation"] == "pidns":
        _kill_others()
        _until_dead(_kill_others)
    _wipe(cfg)


def _as_test_uid(cfg, wipe):
    """In a short-lived helper under the test's uid: SIGKILL to -1 (every process of that uid in
    this pid namespace), then, if asked, the wipe of what the test left (as the owner)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            uid = cfg["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            if wipe:
                _wipe(cfg)
        except BaseException:
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)


def _kill_others():
    for pid in _other_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _until_dead(kill_again, tries=400):
    """Wait (up to ~2 s) until no leftover process is running (zombies run nothing), killing again."""
    for _ in range(tries):
        if not _other_pids(live_only=True):
            return
        time.sleep(0.005)
        kill_again()


def _scratch_dirs(cfg):
    """Where a test can leave files for the next one: the work directory, and in the sandbox
    /dev/shm and /dev/mqueue (POSIX message queues are files there)."""
    if cfg["isolation"] == "none":
        return [cfg["workdir"]]
    return [cfg["workdir"]] + [d for d in ("/dev/shm", "/dev/mqueue") if os.path.isdir(d)]


_SYSV = (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl"))
IPC_RMID = 0


def _sysv_ids():
    """(kind, id) of every SysV IPC object in this IPC namespace (the sandbox's own)."""
    out = []
    for kind, _ in _SYSV:
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        out += [(kind, int(line.split()[1])) for line in lines if line.strip()]
    return out


def _remove_sysv():
    """IPC_RMID every SysV shared memory segment, semaphore set and message queue we may remove."""
    calls = dict(_SYSV)
    for kind, ident in _sysv_ids():
        fn = getattr(_libc, calls[kind])
        # shmctl/msgctl(id, IPC_RMID, NULL); semctl(id, 0, IPC_RMID): errors (not ours) are ignored.
        if kind == "sem":
            fn(ctypes.c_int(ident), ctypes.c_int(0), ctypes.c_int(IPC_RMID))
        else:
            fn(ctypes.c_int(ident), ctypes.c_int(IPC_RMID), ctypes.c_void_p(None))


def _has_leftovers(cfg):
    return bool(_sysv_ids()) or any(_has_entries(d) for d in _scratch_dirs(cfg))


def _wipe(cfg):
    """Empty every scratch directory (restoring its mode where we own it) and remove SysV IPC objects."""
    for d in _scratch_dirs(cfg):
        with contextlib.suppress(OSError):  # only the owner may: the server's uid, not a test uid
            os.chmod(d, 0o700 if cfg["isolation"] == "none" else 0o1777)
        _empty_dir(d)
    if cfg["isolation"] != "none":
        _remove_sysv()


def _has_entries(path):
    try:
        return bool(os.listdir(path))
    except OSError:
        return False


def _empty_dir(path):
    """Remove everything below ``path``, whatever its depth, names or modes; never raises.

    Iterative (a 10,000-level tree needs no recursion) and relative to the current
    directory (no path ever grows past PATH_MAX, no descriptor per level): it enters each
    directory after making it ours to read and write (a test may leave one mode 000),
    unlinks its files, and removes it on the way back up. Symlinks are removed, never
    followed. Only runs once every test process is dead, so nothing moves meanwhile.
    """
    try:
        home = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        home = None
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        if home is not None:
            os.close(home)
        return
    try:
        os.fchdir(top)
        stack = [(None, _clear_files())]  # (name of the directory, its subdirectories still to do)
        while stack:
            name, pending = stack[-1]
            if pending:
                sub = pending.pop()
                try:
                    os.chmod(sub, 0o700)
                    fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                    try:
                        os.fchdir(fd)
                    finally:
                        os.close(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)
                    continue
                stack.append((sub, _clear_files()))
                continue
            stack.pop()
            if name is None:
                break
            os.chdir("..")
            with contextlib.suppress(OSError):
                os.rmdir(name)
    except OSError:
        pass
    finally:
        os.close(top)
        if home is not None:
            with contextlib.suppress(OSError):
                os.fchdir(home)
            os.close(home)


def _clear_files():
    """Unlink every non-directory in the current directory; return the names of its subdirectories."""
    subdirs = []
    try:
        with os.scandir(".") as it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    else:
                        os.unlink(entry.name)
                except OSError:
                    pass
    except OSError:
        pass
    return subdirs


def _reap_all():
    """Collect zombies re-parented to this server (a subreaper); they count against RLIMIT_NPROC."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class ZygoteGone(Exception):
    """The zygote died (a test may kill it where children share the server's uid): start over."""


def _memfd(name, data):
    fd = os.memfd_create(name, 0)
    _write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Zygote:
    """The manager's end of the zygote: hand it a test's descriptors, then read pids and exit statuses."""

    MSG = struct.Struct(">ii")

    def __init__(self, sock, pid):
        self.sock, self.pid, self.buf, self.pending = sock, pid, b"", []

    def spawn(self, child_fds, judge_fds):
        """The first byte says how many descriptors are the child's; the rest are the judge's."""
        socket.send_fds(self.sock, [bytes([len(child_fds)])], [*child_fds, *judge_fds])

    def messages(self):
        """Every (pid, value) message received so far and not yet taken; reads once if there is none."""
        if not self.pending:
            self._read()
        out, self.pending = self.pending, []
        return out

    def take(self, count, timeout):
        """The next ``count`` messages (later ones stay pending); ZygoteGone if they do not come in time."""
        deadline = time.monotonic() + timeout
        while len(self.pending) < count:
            ready, _, _ = select.select([self.sock], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise ZygoteGone("the zygote did not answer in time")
            self._read()
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    def _read(self):
        data = self.sock.recv(4096)
        if not data:
            raise ZygoteGone("the zygote exited")
        self.buf += data
        n = len(self.buf) // self.MSG.size * self.MSG.size
        self.pending += [self.MSG.unpack_from(self.buf, i) for i in range(0, n, self.MSG.size)]
        self.buf = self.buf[n:]


def _zygote(cfg, sock, harness):
    """Fork each test's child (and judge) from this warm interpreter, which never sees a test's data."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 16)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        jobs = [(harness.run_child, fds[: msg[0]])]
        judged = len(fds) > msg[0]
        if judged:
            jobs.append((harness.run_judge, fds[msg[0] :]))
        pids = []
        for fn, job_fds in jobs:
            pid = os.fork()
            if pid == 0:
                try:
                    fn(cfg, job_fds)
                finally:
                    os._exit(70)
            pids.append(pid)
        for fd in fds:
            os.close(fd)
        sock.sendall(_Zygote.MSG.pack(pids[0], pids[1] if judged else -1))
        for _ in pids:
            pid, wstatus = os.waitpid(-1, 0)
            sock.sendall(_Zygote.MSG.pack(pid, wstatus))


@functools.lru_cache(maxsize=64)
def _prepared_check(harness, source, entry_point):
    return harness.prepare_check(source, entry_point)


def run_test(cfg, zygote, harness, code, test):
    """Run one test: the zygote forks the child (and judge); collect output within the limits."""
    kind = test["kind"]
    judged = kind == "check"
    # The child's request: a check's test code goes to the judge alone.
    request = {"code": code, **({"kind": kind} if judged else test)}
    request.pop("stdin", None)
    request.pop("min_output", None)  # the output cap is the manager's business
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    child_fds = [
        _memfd("request", json.dumps(request).encode()),
        _memfd("stdin", test.get("stdin", "").encode()),
    ]
    child_fds += [out_w, err_w]
    judge_fds = []
    if kind == "call":
        child_fds.append(res_w)  # the child reports the return value (compared by the client)
    elif judged:
        calls_r, calls_w = os.pipe()
        answers_r, answers_w = os.pipe()
        child_fds += [calls_r, answers_w]
        task = _prepared_check(harness, test["test"], test["entry_point"])
        judge_fds = [_memfd("task", task), answers_r, calls_w, res_w]
    readers = [out_r, err_r, res_r]
    # the client raises the cap for a large expected output, so a correct answer always fits
    cap = max(cfg["max_output"], int(test.get("min_output") or 0))
    caps = {out_r: cap, err_r: STDERR_KEEP, res_r: cfg["max_output"]}
    t0 = time.monotonic()
    try:
        zygote.spawn(child_fds, judge_fds)
    finally:
        for fd in {*child_fds, *judge_fds, res_w}:
            os.close(fd)
    ((pid, judge_pid),) = zygote.take(1, 10.0)
    waiting = {pid} | ({judge_pid} if judged else set())
    wstatus = 0
    bufs = {fd: bytearray() for fd in readers}
    for fd in readers:
        os.set_blocking(fd, False)
    zfd = zygote.sock.fileno()
    poller = select.poll()
    for fd in (*readers, zfd):
        poller.register(fd, select.POLLIN)
    open_fds = set(readers)
    status = None
    deadline = t0 + cfg["timeout_s"]

    def pump(fd):
        nonlocal status
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            poller.unregister(fd)
            open_fds.discard(fd)
            return
        buf = bufs[fd]
        room = caps[fd] - len(buf)
        if fd == err_r:  # keep the tail: a traceback ends with the line that matters
            buf.extend(data)
            del buf[: max(len(buf) - caps[fd], 0)]
        elif len(data) > room:
            buf.extend(data[:room])
            status = "output_limit"
        else:
            buf.extend(data)

    def exited(messages):
        nonlocal wstatus
        for p, w in messages:
            waiting.discard(p)
            if p == pid:
                wstatus = w

    exited(zygote.take(len(zygote.pending), 0))  # a fast test may be over already
    while status is None and waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "timeout"
            break
        for fd, _ev in poller.poll(remaining * 1000):
            if fd == zfd:
                exited(zygote.messages())
            elif status is None:
                pump(fd)
    seconds = time.monotonic() - t0
    # The server may not signal a child that already became the test uid (no CAP_KILL):
    # then _kill_leftovers' helper, running as that uid, does it.
    # The group goes in any case: the child's own children may still be in it.
    for kill, target in ((os.kill, pid), (os.killpg, pid), (os.kill, judge_pid)):
        if target in waiting or kill is os.killpg:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)
    _kill_leftovers(cfg)
    while waiting:
        exited(zygote.take(1, 10.0))
    # Every writer is dead now; drain what is still buffered in the pipes (bounded).
    poller.unregister(zfd)
    drain_until = time.monotonic() + 0.5
    while open_fds and status != "output_limit" and time.monotonic() < drain_until:
        for fd, _ev in poller.poll(50):
            if fd in open_fds:
                pump(fd)
    for fd in readers:
        os.close(fd)
    _reap_all()
    return {
        "status": status or "exited",
        "exit_code": os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None,
        "signal": os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None,
        "stdout": bufs[out_r].decode("utf-8", "replace"),
        "stderr": bufs[err_r].decode("utf-8", "replace"),
        "result": bufs[res_r].decode("utf-8", "replace"),
        "seconds": seconds,
    }


def _check_placement(cfg):
    """Refuse to run where the cleanup after each test could touch anything but test processes.

    The cleanup kills processes (by uid, or every pid of the namespace) and empties the
    work directory; that is only safe inside the sandbox (we are then a child of
    bubblewrap's pid 1), or, unsandboxed, in a private directory the client made.
    """
    if cfg["isolation"] == "none":
        if not os.path.basename(cfg["workdir"]).startswith("klear-nosandbox-"):
            sys.exit(f"klear sandbox server: refusing workdir {cfg['workdir']!r} without a sandbox")
        return
    with open("/proc/1/comm") as f:
        init = f.read().strip()
    if os.getppid() != 1 or init != "bwrap":
        sys.exit("klear sandbox server: isolation needs bubblewrap's pid namespace; refusing to start")


def _load_harness(source):
    harness = types.ModuleType("klear_harness")
    exec(compile(source, "<harness>", "exec"), harness.__dict__)
    return harness


def _serve(cfg, proto_in, proto_out, zygote, harness):
    """The manager's loop. Each request is handled in run_test, whose locals are gone when it returns."""
    while True:
        req = _recv(proto_in)
        if req is None:
            return
        try:
            reply = run_test(cfg, zygote, harness, req["code"], req["test"])
        except ZygoteGone:
            return  # exiting makes the client restart the sandbox and flag this test
        except Exception as exc:  # a server-side failure is reported, never mistaken for a verdict
            reply = {"status": "server_error", "detail": f"{type(exc).__name__}: {exc}"}
        _send(proto_out, reply)


def main():
    cfg = json.loads(sys.argv[1])
    _check_placement(cfg)
    harness = _load_harness(cfg.pop("harness"))
    _prctl(PR_SET_DUMPABLE, 0)  # children (same or other uid) cannot ptrace or read our /proc files
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if cfg["isolation"] != "none":
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    os.makedirs(cfg["workdir"], exist_ok=True)
    harness.warm_up()
    # Zygote trick: move every object alive now out of the collector's reach, so that a
    # collection in a child does not walk (and so copy-on-write copy) the inherited heap.
    gc.collect()
    gc.freeze()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the zygote: holds nothing but the config and the warm modules
        try:
            ours.close()
            os.close(proto_in)
            os.close(proto_out)
            _zygote(cfg, theirs, harness)
        finally:
            os._exit(70)
    theirs.close()
    _KEEP.add(pid)
    _send(proto_out, {"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]})
    _serve(cfg, proto_in, proto_out, _Zygote(ours, pid), harness)


if __name__ == "__main__":
    main()
