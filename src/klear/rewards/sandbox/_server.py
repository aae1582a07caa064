"""The fork server ("zygote") that runs inside the sandbox and forks one child per test.

This file is never imported by Klear: the client reads its text and runs it with
``python -I -c`` inside bubblewrap, where the Klear checkout is not visible. It
therefore uses the standard library only and runs on any Python >= 3.9.

Why a fork server: starting a sandbox and an interpreter per test costs ~100 ms of
CPU (firejail, the reference's way); forking an already-warm interpreter costs a
few ms. Isolation comes from the one long-lived sandbox around this server, plus
per-child rlimits, a separate unprivileged uid for children, and a kill of every
process of that uid after each test.

Protocol on fds 0/1 (moved to private fds at start): frames of a 4-byte big-endian
length then UTF-8 JSON. The first frame out is ``{"ready": true, ...}``. Each
request ``{"code", "test", "nonce"}`` gets exactly one reply with the child's
status, exit code or signal, stdout (capped), stderr tail and the result channel.
The server never receives expected outputs: the client compares outside the
sandbox, so a child that reads this process's memory (which it inherits when
forked) learns nothing that lets it forge a pass on stdin or call-based tests.
"""

import bisect
import builtins
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
import resource
import select
import signal
import string
import struct
import sys
import time
import traceback
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
RESULT_FD = 3

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
# The child: becomes the test's uid, limits itself, runs the solution in this warm interpreter
# ------------------------------------------------------------------------------------------


def _find_callable(ns, name):
    """LeetCode style ``class Solution`` method first, then a top-level function."""
    cls = ns.get("Solution")
    if isinstance(cls, type) and hasattr(cls, name):
        return getattr(cls(), name)
    if name in ns and callable(ns[name]):
        return ns[name]
    raise NameError(f"function {name!r} is not defined by the solution")


def _child(cfg, code, test, nonce, fds):
    fd_in, out_w, err_w, res_w = fds
    os.setsid()  # own process group: the server kills the whole group afterwards
    os.dup2(fd_in, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(res_w, RESULT_FD)
    os.closerange(RESULT_FD + 1, 1 << 16)  # protocol pipes and everything else: gone
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["as_bytes"], cfg["as_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize_bytes"], cfg["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["nofile"], cfg["nofile"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    uid = cfg["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # drops every capability the server kept
    os.chdir(cfg["workdir"])
    os.umask(0o077)

    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)  # noqa: SIM115
    sys.argv = ["solution.py"]
    kind = test["kind"]
    ns = {"__name__": "__main__" if kind == "stdin" else "solution", "__builtins__": builtins}
    status = 0
    try:
        exec(compile(code, "<solution>", "exec"), ns)
        if kind == "call":
            value = _find_callable(ns, test["fn_name"])(*test["args"])
            record = json.dumps({"value": value})
            _write_all(RESULT_FD, ("\n" + nonce + " " + record + "\n").encode())
        elif kind == "check":
            exec(compile(test["test"], "<test>", "exec"), ns)
            ns["check"](ns[test["entry_point"]])
            _write_all(RESULT_FD, ("\n" + nonce + ' {"ok": true}\n').encode())
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            status = 0
        elif isinstance(exc.code, int):
            status = exc.code & 0xFF
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(status)


# ------------------------------------------------------------------------------------------
# The server side of one test
# ------------------------------------------------------------------------------------------


def _other_pids(live_only=False):
    """Pids in this pid namespace other than init and this server (cheap: the namespace is tiny).

    live_only skips zombies: they run nothing, and _reap_all collects them after each test.
    """
    me = os.getpid()
    pids = [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in (1, me)]
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
                _wipe(cfg)
            except BaseException:
                code = 1
            os._exit(code)
        os.waitpid(pid, 0)
        return
    if cfg["isolation"] == "pidns":
        for pid in _other_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    _wipe(cfg)


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


def run_test(cfg, code, test, nonce):
    """Fork a child for one test, feed stdin from memory, collect output within the limits."""
    fd_in = os.memfd_create("stdin", 0)
    _write_all(fd_in, test.get("stdin", "").encode())
    os.lseek(fd_in, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(cfg, code, test, nonce, (fd_in, out_w, err_w, res_w))
        finally:
            os._exit(70)
    for fd in (fd_in, out_w, err_w, res_w):
        os.close(fd)
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    # the client raises the cap for a large expected output, so a correct answer always fits
    cap = max(cfg["max_output"], int(test.get("min_output") or 0))
    caps = {out_r: cap, err_r: STDERR_KEEP, res_r: cfg["max_output"]}
    for fd in bufs:
        os.set_blocking(fd, False)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (out_r, err_r, res_r, pidfd):
        poller.register(fd, select.POLLIN)
    open_fds = {out_r, err_r, res_r}
    status = None
    exited = False
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

    while status is None and not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "timeout"
            break
        for fd, _ev in poller.poll(remaining * 1000):
            if fd == pidfd:
                exited = True
            elif status is None:
                pump(fd)
    seconds = time.monotonic() - t0
    if exited:  # reap first, so that a clean test leaves nothing for _kill_leftovers to do
        _, wstatus = os.waitpid(pid, 0)
    # The server may not signal a child that already became the test uid (no CAP_KILL):
    # then _kill_leftovers' helper, running as that uid, does it.
    for kill, target in ((os.kill, pid), (os.killpg, pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)
    _kill_leftovers(cfg)
    if not exited:
        _, wstatus = os.waitpid(pid, 0)
    # Every writer is dead now; drain what is still buffered in the pipes (bounded).
    drain_until = time.monotonic() + 0.5
    while open_fds and status != "output_limit" and time.monotonic() < drain_until:
        for fd, _ev in poller.poll(50):
            if fd != pidfd and fd in open_fds:
                pump(fd)
    for fd in (out_r, err_r, res_r, pidfd):
        os.close(fd)
    _reap_all()
    reply = {
        "status": status or "exited",
        "exit_code": os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None,
        "signal": os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None,
        "stdout": bufs[out_r].decode("utf-8", "replace"),
        "stderr": bufs[err_r].decode("utf-8", "replace"),
        "result": bufs[res_r].decode("utf-8", "replace"),
        "seconds": seconds,
    }
    return reply


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


def main():
    cfg = json.loads(sys.argv[1])
    _check_placement(cfg)
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
    # Zygote trick: move every object alive now out of the collector's reach, so that a
    # collection in a child does not walk (and so copy-on-write copy) the inherited heap.
    gc.collect()
    gc.freeze()
    _send(proto_out, {"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]})
    while True:
        req = _recv(proto_in)
        if req is None:
            return
        try:
            reply = run_test(cfg, req["code"], req["test"], req["nonce"])
        except Exception as exc:  # a server-side failure is reported, never mistaken for a verdict
            reply = {"status": "server_error", "detail": f"{type(exc).__name__}: {exc}"}
        _send(proto_out, reply)


if __name__ == "__main__":
    main()
