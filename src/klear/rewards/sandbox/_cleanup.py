"""What the sandbox server does after each test: kill whatever the test left running, wipe what it
left behind (scratch files, SysV IPC objects), collect zombies.

Like ``_server.py`` and ``_harness.py``, this file is never imported by Klear: the client sends its
text in the server's config and the server loads it as a module, inside bubblewrap. Standard
library only, any Python >= 3.9.
"""

import contextlib
import ctypes
import os
import signal
import time

#: Pids the per-test cleanup must never kill (the server adds its zygote).
KEEP = set()

_libc = ctypes.CDLL(None, use_errno=True)


def other_pids(live_only=False):
    """Pids in this pid namespace other than init, this server and its zygote (cheap: the namespace is tiny).

    live_only skips zombies: they run nothing, and reap_all collects them after each test.
    """
    keep = {1, os.getpid(), *KEEP}
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


def kill_leftovers(cfg):
    """Kill every process a test left behind, then wipe what it left: scratch files and IPC objects.

    With a separate uid: a short-lived helper becomes that uid and sends SIGKILL to -1,
    which inside this pid namespace reaches exactly the test's processes, then empties
    the scratch directories and removes the SysV IPC objects as that uid (their owner);
    it is only forked when something is left over. Without one (unprivileged bubblewrap):
    every pid in the namespace but init and this server, then the same wipe. Without a
    sandbox: nothing beyond the process group, and only the work directory is emptied.
    """
    if cfg["isolation"] == "uid":
        if not other_pids(live_only=True) and not _has_leftovers(cfg):
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
    for pid in other_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _until_dead(kill_again, tries=400):
    """Wait (up to ~2 s) until no leftover process is running (zombies run nothing), killing again."""
    for _ in range(tries):
        if not other_pids(live_only=True):
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


def reap_all():
    """Collect zombies re-parented to this server (a subreaper); they count against RLIMIT_NPROC."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
