"""Run untrusted code: one fork server per reward worker, inside one long-lived bubblewrap sandbox.

Why this shape (measured, see DESIGN.md and bench/rewards_code.py): a sandbox plus a
fresh interpreter per test (firejail, the reference's way) costs ~100 ms of CPU per
test; forking a warm interpreter that already lives inside a sandbox costs a few ms,
with the same isolation.

The sandbox (bubblewrap): no network, a read-only view of the system directories
only (no project checkout, no /root, no /home, no /etc/shadow), a private /tmp, a
fresh /proc of its own pid namespace, an empty environment (bwrap itself is started
with none, since its pid 1 keeps it). Each child gets CPU, address-space, file-size,
open-file and process rlimits, a float wall-clock timeout and an output cap; after
each test every process it left behind is killed and the scratch directories are
emptied. The server is non-dumpable, so a child cannot read its memory or /proc files.

Verdicts (see _server.py and _harness.py): tests are forked from a zygote that never
holds a request or reply, so no test process can find another test's output in its
memory; stdin and call tests are compared here, outside, against expected values the
sandbox never sees; HumanEval check tests run in a separate judge process that calls
the solution over pipes, admits only plain data back and reports on a pipe the
solution never holds.

Two modes, chosen by whether we are root:

- root: no user namespace (its processes would count as root's, which is exempt from
  RLIMIT_NPROC); children switch to a uid of their own, one per live server on the
  machine (so concurrent servers never share RLIMIT_NPROC counts), and cannot signal
  the server at all.
- unprivileged: a user namespace per server maps the caller's uid; children share the
  server's uid, so a child can kill the server: the client restarts it.

Lifecycle: :func:`get_sandbox` starts a server lazily in the calling process (by
exec of ``bwrap``, never by forking this possibly large process) and reuses it;
:func:`close_all` stops every server of this process. ``bwrap --die-with-parent``
ties the sandbox to the thread that started it: when a pool kills a stuck worker,
its sandbox dies with it. A server that dies mid-test is restarted and that test is
reported as ``sandbox_restart``; one found dead between tests is replaced silently.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import select
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klear.config import SandboxConfig
from klear.rewards.sandbox import guard, seccomp

log = logging.getLogger(__name__)

_SERVER_SOURCE = (Path(__file__).with_name("_server.py")).read_text()
#: The child and the judge (see _harness.py); the server loads it from its config.
_HARNESS_SOURCE = (Path(__file__).with_name("_harness.py")).read_text()
#: The cleanup after each test (see _cleanup.py); the server loads it from its config too.
_CLEANUP_SOURCE = (Path(__file__).with_name("_cleanup.py")).read_text()
INSTALL_HINT = (
    "install bubblewrap: `apt-get install -y bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap`"
)
#: Extra seconds the client waits past the per-test timeout before declaring the server hung.
CLIENT_SLACK_S = 5.0


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be started here at all (bubblewrap missing or refused); the message says how to fix it."""


class SandboxError(RuntimeError):
    """A running sandbox failed in a way that is not the solution's verdict (e.g. a restart failed)."""


@dataclass(frozen=True)
class TestRun:
    """What happened to one test inside the sandbox; the verdict is decided by the caller.

    status: ``exited`` (ran to the end; see exit_code/signal), ``timeout`` (wall clock),
    ``output_limit`` (stdout past the cap), ``sandbox_restart`` (the server died and was
    restarted), ``server_error`` (the server failed to run it).
    result: one JSON record, empty for stdin tests. Call tests: ``{"value": ...}``
    written by the child (its own answer, compared by the caller). Check tests: the
    judge's verdict, written by a process that never runs solution code, on a pipe the
    solution never holds.
    """

    __test__ = False  # not a pytest class, despite the name

    status: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    result: str = ""
    seconds: float = 0.0
    detail: str | None = None


# ---------------------------------------------------------------------------------------------
# Launch: the bubblewrap command line
# ---------------------------------------------------------------------------------------------


def _choose_python(cfg: SandboxConfig) -> str:
    """The interpreter the server runs: a system one under /usr when possible.

    A system interpreter needs nothing mounted beyond /usr; an interpreter living in a
    home directory (pyenv, conda, a venv) would need its prefix mounted into the sandbox.
    """
    if cfg.python != "auto":
        return cfg.python
    exe = os.path.realpath(sys.executable)
    if exe.startswith("/usr/"):
        return exe
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand):
            return cand
    return exe


def _python_mounts(python: str) -> list[str]:
    """Read-only binds for an interpreter outside /usr (its install prefix, at the same path)."""
    real = os.path.realpath(python)
    if real.startswith("/usr/"):
        return []
    prefix = os.path.dirname(os.path.dirname(real))  # <prefix>/bin/python3.X -> <prefix>
    # Create the parents ourselves, world-traversable: bubblewrap would copy their host modes
    # (a 0700 /root), and children under their own uid could then not import from the prefix.
    args: list[str] = []
    parents = Path(prefix).parents
    for parent in reversed(parents[:-1]):  # outermost first, skipping "/"
        args += ["--perms", "0755", "--dir", str(parent)]
    return [*args, "--ro-bind", prefix, prefix]


def _system_mounts() -> list[str]:
    """/usr read-only, the merged-/usr symlinks (or real dirs) and the few /etc files Python needs."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def bwrap_argv(
    cfg: SandboxConfig,
    python: str,
    server_cfg: dict[str, Any],
    privileged: bool,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The full command that starts the server inside bubblewrap.

    privileged (we are root): bubblewrap makes no user namespace, keeps only
    CAP_SETUID/SETGID for the server (to drop children to their own uid) and drops every
    other capability. Why not a user namespace as root: its processes would count as
    root's outside, and root is exempt from RLIMIT_NPROC. Unprivileged: bubblewrap maps
    the caller's uid in a user namespace of its own, which also gives the namespace its
    own RLIMIT_NPROC count; children then share the server's uid.

    Scratch space a test can write: /tmp and /dev/shm (each a tmpfs of ``tmpfs_mb``) and
    /dev/mqueue (POSIX message queues of the sandbox's own IPC namespace, mounted so that
    the per-test cleanup can see and remove them). seccomp_fd: a descriptor holding the
    filter of :mod:`.seccomp`, which bubblewrap loads just before it runs the server.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            f"the code sandbox needs bubblewrap (`bwrap`), which is not installed; {INSTALL_HINT}"
        )
    argv = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    argv += ["--unshare-uts", "--hostname", "sandbox", "--unshare-cgroup-try"]
    if privileged:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user"]
    argv += _system_mounts() + _python_mounts(python)
    argv += ["--proc", "/proc", "--dev", "/dev", "--mqueue", "/dev/mqueue"]
    for path in ("/tmp", "/dev/shm"):
        argv += ["--size", str(cfg.tmpfs_mb << 20), "--perms", "1777", "--tmpfs", path]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    argv += ["--setenv", "HOME", "/tmp", "--setenv", "PYTHONHASHSEED", "0", "--chdir", "/tmp"]
    argv += ["--", python, "-I", "-B", "-c", _SERVER_SOURCE, json.dumps(server_cfg)]
    return argv


# ---------------------------------------------------------------------------------------------
# uid allocation: one unprivileged uid per live server on this machine
# ---------------------------------------------------------------------------------------------


def _lock_uid(cfg: SandboxConfig) -> tuple[int, int]:
    """Claim a uid from the configured range with an advisory lock held for the server's life.

    The lock dies with this process, so a killed worker's uid becomes free again.
    Returns (uid, lock fd).
    """
    # Root only gets here: prefer /run (root's own) over a world-writable /tmp, and refuse a
    # lock directory someone else planted (a symlink, or not ours).
    base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    lock_dir = Path(base) / "klear-sandbox-uids"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(lock_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SandboxUnavailable(f"{lock_dir} is not a directory owned by us; remove it")
    start = os.getpid() % cfg.uid_count
    for k in range(cfg.uid_count):
        uid = cfg.uid_base + (start + k) % cfg.uid_count
        fd = os.open(lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return uid, fd
    raise SandboxUnavailable(
        f"all {cfg.uid_count} sandbox uids from {cfg.uid_base} are in use; raise sandbox.uid_count"
    )


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def _read_frame(fd: int, deadline: float) -> dict[str, Any] | None:
    """One length-prefixed JSON frame, or None on EOF or when the deadline passes."""
    buf = bytearray()
    need = 4
    length: int | None = None
    while True:
        while len(buf) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, need - len(buf))
            if not chunk:
                return None
            buf.extend(chunk)
        if length is None:
            (length,) = struct.unpack(">I", buf[:4])
            need = 4 + length
            continue
        return json.loads(buf[4:])


class Sandbox:
    """A client of one fork server; a lock serialises calls from several threads.

    privileged: start as root (children get a uid of their own); default: whether we are
    root. launcher: a command prefix for bwrap (e.g. ``setpriv --reuid=...`` to run the
    sandbox as an unprivileged user from a root process, as the tests of that mode do).
    """

    def __init__(self, cfg: SandboxConfig, *, privileged: bool | None = None, launcher: Sequence[str] = ()):
        self.cfg = cfg
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.launcher = list(launcher)
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._uid_fd: int | None = None
        self._uid: int | None = None
        self._workdir: str | None = None
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._watched_all: list[guard.Watched] = []  # one per server started, for guard_kills
        self.python_version: str | None = None  # of the interpreter inside, once started

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the process this client started (bwrap, or the bare server with mode none)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def uid(self) -> int | None:
        """The uid test children run under (None when no uid switch is done)."""
        return self._uid

    def _server_cfg(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.mode == "none":
            isolation, workdir = "none", self._workdir
        elif self._uid is not None:
            isolation, workdir = "uid", "/tmp"
        else:
            isolation, workdir = "pidns", "/tmp"
        return {
            "isolation": isolation,
            "uid": self._uid,
            "workdir": workdir,
            "timeout_s": cfg.test_timeout_s,
            "cpu_s": cfg.cpu_time_s,
            "as_bytes": cfg.memory_mb << 20,
            "fsize_bytes": cfg.file_size_mb << 20,
            "nofile": cfg.max_open_files,
            "nproc": cfg.max_processes,
            "max_output": cfg.max_output_bytes,
            "harness": _HARNESS_SOURCE,
            "cleanup": _CLEANUP_SOURCE,
        }

    def start(self) -> None:
        """Start the server (idempotent); raise SandboxUnavailable when it cannot run here."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            # It died between tests (e.g. bwrap's --die-with-parent fired because the thread
            # that started it exited): start a new one without blaming the next test.
            log.warning("code sandbox server exited between tests; starting a new one")
            self._kill()
        python = _choose_python(self.cfg)
        pass_fds: tuple[int, ...] = ()
        if self.cfg.mode == "none":
            log.warning(
                "sandbox.mode=none: running model-generated code WITHOUT isolation "
                "(no namespaces, no separate uid); only for trusted code"
            )
            if self._workdir is None:
                self._workdir = tempfile.mkdtemp(prefix="klear-nosandbox-")
            argv = [python, "-I", "-B", "-c", _SERVER_SOURCE, json.dumps(self._server_cfg())]
        else:
            if self.privileged and self._uid is None:
                self._uid, self._uid_fd = _lock_uid(self.cfg)
            try:
                program = seccomp.build()
            except seccomp.SeccompUnsupported as exc:
                raise SandboxUnavailable(str(exc)) from exc
            seccomp_fd = os.memfd_create("klear-seccomp", os.MFD_CLOEXEC)
            os.write(seccomp_fd, program)
            os.lseek(seccomp_fd, 0, os.SEEK_SET)
            pass_fds = (seccomp_fd,)
            argv = self.launcher + bwrap_argv(
                self.cfg, python, self._server_cfg(), self.privileged, seccomp_fd
            )
        try:
            self._spawn(argv, pass_fds)
        finally:
            if pass_fds:
                os.close(pass_fds[0])
        if self.cfg.mode != "none" and self._proc is not None:
            try:
                self._watched_all.append(
                    guard.watch(self._proc.pid, self.cfg.memory_mb << 20, self.cfg.tmpfs_inodes)
                )
            except guard.GuardUnavailable as exc:
                self._kill()
                raise SandboxUnavailable(f"the code sandbox cannot bound a test's memory: {exc}") from exc

    def _spawn(self, argv: list[str], pass_fds: tuple[int, ...]) -> None:
        with tempfile.TemporaryFile() as err:
            # close_fds (default) keeps our uid lock and every other fd out of the sandbox.
            # An empty environment for bwrap itself too: its pid-1 reaper inside the sandbox
            # keeps bwrap's environment, which a child could read from /proc/1/environ.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
                env={},
                pass_fds=pass_fds,
            )
            hello = _read_frame(self._proc.stdout.fileno(), time.monotonic() + self.cfg.startup_timeout_s)
            if hello is None or not hello.get("ready"):
                self._kill()
                err.seek(0)
                msg = err.read().decode(errors="replace").strip()[-2000:]
                raise SandboxUnavailable(
                    f"the code sandbox failed to start ({' '.join(argv[:3])} ...): {msg or 'no output'}. "
                    "bubblewrap needs user or mount namespaces: in Docker, run with "
                    "`--security-opt seccomp=unconfined --cap-add SYS_ADMIN` or enable unprivileged user "
                    f"namespaces; {INSTALL_HINT}"
                )
        self.python_version = hello.get("python")

    @property
    def guard_kills(self) -> int:
        """Tests whose processes the memory guard killed (aggregate memory or inodes over the bound)."""
        return sum(w.kills for w in self._watched_all)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        guard.unwatch(proc.pid)
        if proc.poll() is None:
            proc.kill()  # bwrap (our own child); --die-with-parent takes the sandbox down with it
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def close(self) -> None:
        """Stop the server and release its uid. Safe to call twice."""
        if os.getpid() != self._owner_pid:  # a forked copy: the server belongs to the parent
            self._proc = None
            return
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # EOF: the server exits on its own
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        self._kill()
        if self._uid_fd is not None:
            os.close(self._uid_fd)
            self._uid_fd = self._uid = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- running --------------------------------------------------------------------------

    def run(self, code: str, test: dict[str, Any], nonce: str | None = None) -> TestRun:
        """Run ``code`` against one test (``{"kind": "stdin"|"call"|"check", ...}``).

        If the server dies or hangs, it is restarted and the test is reported as
        ``sandbox_restart`` (the caller scores it as failed); a failed restart raises
        SandboxError. ``nonce`` is ignored: the verdict channel no longer needs a secret
        (kept so that older callers still work).
        """
        with self._lock:
            self.start()
            assert self._proc is not None
            payload = json.dumps({"code": code, "test": test}).encode()
            deadline = time.monotonic() + self.cfg.test_timeout_s + CLIENT_SLACK_S
            reply = None
            try:
                self._proc.stdin.write(struct.pack(">I", len(payload)) + payload)
                reply = _read_frame(self._proc.stdout.fileno(), deadline)
            except (BrokenPipeError, ConnectionResetError, OSError):
                reply = None
            if reply is None:
                died = self._proc.poll() is not None
                self._kill()
                self.restarts += 1
                log.warning("code sandbox server %s; restarting it", "died" if died else "hung")
                try:
                    self.start()
                except SandboxUnavailable as exc:
                    raise SandboxError(f"sandbox restart failed: {exc}") from exc
                return TestRun(status="sandbox_restart", detail="the sandbox server died during this test")
            return TestRun(
                status=reply["status"],
                exit_code=reply.get("exit_code"),
                signal=reply.get("signal"),
                stdout=reply.get("stdout", ""),
                stderr=reply.get("stderr", ""),
                result=reply.get("result", ""),
                seconds=float(reply.get("seconds", 0.0)),
                detail=reply.get("detail"),
            )


_SANDBOXES: dict[str, Sandbox] = {}
_REGISTRY_LOCK = threading.Lock()


def get_sandbox(cfg: SandboxConfig) -> Sandbox:
    """The sandbox of this process for ``cfg``: created on first use, then reused.

    A forked child (a pool worker forked after a sandbox existed) gets its own server,
    never its parent's.
    """
    key = cfg.model_dump_json()
    with _REGISTRY_LOCK:
        box = _SANDBOXES.get(key)
        if box is None or box._owner_pid != os.getpid():
            box = Sandbox(cfg)
            _SANDBOXES[key] = box
        return box


def close_all() -> None:
    """Stop every sandbox server started by this process (also run at interpreter exit)."""
    with _REGISTRY_LOCK:
        boxes = list(_SANDBOXES.values())
        _SANDBOXES.clear()
    for box in boxes:
        box.close()


atexit.register(close_all)
