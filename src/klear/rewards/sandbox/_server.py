"""The fork server that runs inside the sandbox: a manager, a zygote, and per test a child (and a judge).

This file is never imported by Klear: the client reads its text and runs it with
``python -I -c`` inside bubblewrap, where the Klear checkout is not visible. It
therefore uses the standard library only and runs on any Python >= 3.9. The texts of
``_harness.py`` (the child and the judge; also the frame helpers this file uses) and
``_cleanup.py`` (what happens after each test) arrive in the config and are loaded as modules.

Why a fork server: starting a sandbox and an interpreter per test costs ~100 ms of
CPU (firejail, the reference's way); forking an already-warm interpreter costs a
few ms. Isolation comes from the one long-lived sandbox around this server, plus
per-child rlimits, a separate unprivileged uid for children, and a kill of every
process of that uid after each test.

Two processes, so that nothing of one test reaches another:

- the manager (this process after start-up) speaks the protocol, holds requests and
  replies, collects output and cleans up. Nothing that runs solution code is forked
  from it (only the cleanup helper, which runs ``_cleanup.py``'s code alone).
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
#: Largest request frame read from the client (a test's code and input): 1 GiB.
MAX_REQUEST = 1 << 30
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option, arg):
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


# ------------------------------------------------------------------------------------------
# The server side of one test
# ------------------------------------------------------------------------------------------


class ZygoteGone(Exception):
    """The zygote died (a test may kill it where children share the server's uid): start over."""


def _memfd(harness, name, data):
    fd = os.memfd_create(name, 0)
    harness.write_all(fd, data)
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


def run_test(cfg, zygote, harness, cleanup, code, test):
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
        _memfd(harness, "request", json.dumps(request).encode()),
        _memfd(harness, "stdin", test.get("stdin", "").encode()),
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
        judge_fds = [_memfd(harness, "task", task), answers_r, calls_w, res_w]
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
    # then cleanup.kill_leftovers' helper, running as that uid, does it.
    # The group goes in any case: the child's own children may still be in it.
    for kill, target in ((os.kill, pid), (os.killpg, pid), (os.kill, judge_pid)):
        if target in waiting or kill is os.killpg:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)
    cleanup.kill_leftovers(cfg)
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
    cleanup.reap_all()
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


def _load_module(name, source):
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def _send(harness, fd, obj):
    harness.send_frame(fd, json.dumps(obj).encode())


def _serve(cfg, proto_in, proto_out, zygote, harness, cleanup):
    """The manager's loop. Each request is handled in run_test, whose locals are gone when it returns."""
    while True:
        frame = harness.recv_frame(proto_in, MAX_REQUEST)
        if frame is None:
            return
        req = json.loads(frame)
        try:
            reply = run_test(cfg, zygote, harness, cleanup, req["code"], req["test"])
        except ZygoteGone:
            return  # exiting makes the client restart the sandbox and flag this test
        except Exception as exc:  # a server-side failure is reported, never mistaken for a verdict
            reply = {"status": "server_error", "detail": f"{type(exc).__name__}: {exc}"}
        _send(harness, proto_out, reply)


def main():
    cfg = json.loads(sys.argv[1])
    _check_placement(cfg)
    harness = _load_module("klear_harness", cfg.pop("harness"))
    cleanup = _load_module("klear_cleanup", cfg.pop("cleanup"))
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
    cleanup.KEEP.add(pid)
    _send(harness, proto_out, {"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]})
    _serve(cfg, proto_in, proto_out, _Zygote(ours, pid), harness, cleanup)


if __name__ == "__main__":
    main()
