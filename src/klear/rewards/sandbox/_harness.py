"""What runs for one test inside the sandbox: the child that runs the solution, and the judge.

Like ``_server.py`` this uses the standard library only (Python >= 3.9): the server
executes this text as a module inside the sandbox, where the Klear checkout is not
visible. It is importable on the host too, for tests.

Both processes are forked from the server's zygote, a process that never receives a
request or a reply, so neither inherits anything of another test. Descriptors are
their only inputs.

- The child becomes the test's uid, limits itself and runs the solution. A stdin test
  ends there: the client compares its stdout. A call test writes the return value as
  JSON on fd 3; the client, which alone knows the expected value, decodes and compares
  it, so nothing the solution writes there can be more than its own answer. A check
  test serves calls: it reads ``(op, name, args, kwargs)`` frames from fd 3 and answers
  each on fd 4 with the return value as marshal data.
- The judge runs check-based tests (HumanEval ``check(candidate)``, whose asserts hold
  the expected values). It never runs solution code: it holds the check, calls the
  solution through proxies that go over the pipes, admits only plain data back
  (:func:`check_plain`; marshal cannot even express a subclass or a custom ``__eq__``)
  and decides in its own pristine interpreter, whose builtins and modules the solution
  cannot reach. Its verdict goes to the server on a pipe the solution never holds; no
  secret is needed.
"""

import builtins
import contextlib
import ctypes
import fcntl
import importlib
import json
import marshal
import os
import resource
import signal
import struct
import sys
import traceback

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
RESULT_FD = 3  # in a call test's child: the return value, as JSON
CALLS_FD = 3  # in a check test's child: calls from the judge
ANSWERS_FD = 4  # in a check test's child: answers to the judge
#: Plain data nests at most this deep (a cycle or a 10^5-deep list is not an answer).
MAX_DEPTH = 100
_ATOMS = (type(None), bool, int, float, str, bytes)
_SEQUENCES = (list, tuple, set, frozenset)
_FRAME = struct.Struct(">I")
#: Standard modules a check may take from the solution's globals (``import math as m`` in the
#: prompt): the judge imports its own copy, by the module's name; nothing else is imported.
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ("math", "random", "re", "string", "collections")))

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option, arg):
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


# ------------------------------------------------------------------------------------------
# Plumbing shared by the child and the judge
# ------------------------------------------------------------------------------------------


def _read_all(fd):
    """Everything in a memfd the server filled (from offset 0), then close it."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _place_fds(fds):
    """Put ``fds[i]`` at descriptor i and close every other descriptor (the zygote's socket too)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 256) for fd in fds]
    for i, fd in enumerate(high):
        os.dup2(fd, i)
    os.closerange(len(fds), 1 << 16)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf.extend(chunk)
    return bytes(buf)


def send_frame(fd, data):
    write_all(fd, _FRAME.pack(len(data)) + data)


def recv_frame(fd, cap):
    """One length-prefixed frame; None at EOF; ValueError if it announces more than ``cap`` bytes."""
    head = _read_exact(fd, _FRAME.size)
    if head is None:
        return None
    (n,) = _FRAME.unpack(head)
    if n > cap:
        raise ValueError(f"an answer of {n} bytes is over the {cap}-byte cap")
    return _read_exact(fd, n)


def check_plain(value, budget):
    """Raise ValueError unless ``value`` is plain data: None, bool, int, float, str, bytes, and
    list, tuple, set, frozenset, dict of plain data, exactly those types (no subclass), nested
    at most MAX_DEPTH deep, about ``budget`` bytes in all (each element counts, so shared
    references and cycles cannot multiply a small message into a large value)."""
    stack = [(value, 0)]
    cost = 0
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if depth > MAX_DEPTH:
            raise ValueError(f"the value nests deeper than {MAX_DEPTH}")
        if t in _ATOMS:
            cost += 8 + (len(v) if t in (str, bytes) else v.bit_length() // 8 if t is int else 0)
        elif t in _SEQUENCES:
            cost += 8
            stack.extend((x, depth + 1) for x in v)
        elif t is dict:
            cost += 8
            for k, x in v.items():
                stack.append((k, depth + 1))
                stack.append((x, depth + 1))
        else:
            raise ValueError(f"a {t.__name__} is not plain data")
        if cost > budget:
            raise ValueError(f"the value is larger than {budget} bytes")


def warm_up():
    """Do once in the zygote what every test does, so that its forks find it initialised.

    Measured: the first ``compile`` in a process costs ~2 ms of CPU more than later ones,
    and a forked child pays it again for every test unless its parent already did.
    """
    code = compile(
        "def f(x):\n    return [x * i for i in range(3)]\nassert f(2) == [0, 2, 4]\n", "<warm>", "exec"
    )
    exec(marshal.loads(marshal.dumps(code)), {"__builtins__": builtins})
    json.loads(json.dumps({"code": "", "args": [[1, 2.5], {"k": None}], "ok": True}))


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


def _limit(cfg):
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["as_bytes"], cfg["as_bytes"]))


def run_child(cfg, fds):
    """fds: request memfd, stdin memfd, stdout, stderr, then a call test's result pipe or a
    check test's pipes from and to the judge."""
    request = json.loads(_read_all(fds[0]))
    os.setsid()  # own process group: the server kills the whole group afterwards
    _place_fds(fds[1:])  # 0 stdin, 1 stdout, 2 stderr, 3 result or 3 calls and 4 answers
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    _limit(cfg)
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
    kind = request["kind"]
    ns = {"__name__": "__main__" if kind == "stdin" else "solution", "__builtins__": builtins}
    code = request.pop("code")
    exit_ = os._exit  # the solution may replace os._exit; nothing here trusts the child anyway
    status = 0
    try:
        exec(compile(code, "<solution>", "exec"), ns)
        if kind == "call":
            _report_call(ns, request, cfg["max_output"])
        elif kind == "check":
            _serve_calls(ns)
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
    exit_(status)


def _report_call(ns, request, budget):
    """A call test: the return value as JSON on the result pipe; the client compares it.

    No judge is needed here: the expected value never enters the sandbox and the client
    compares JSON it decodes itself (plain by construction), so whatever the solution
    writes on this pipe is simply its answer. The plain-data check only makes the error
    message clear.
    """
    value = _find_callable(ns, request["fn_name"])(*request["args"])
    check_plain(value, budget)
    write_all(RESULT_FD, json.dumps({"value": value}).encode())


def _serve_calls(ns):
    """A check test: answer the judge's calls until it hangs up. Answers are whatever the solution returns."""
    while True:
        data = recv_frame(CALLS_FD, 1 << 30)
        if data is None:
            return
        op, name, args, kwargs = marshal.loads(data)
        if op == "get":  # a helper the check uses (HumanEval: one the prompt defined)
            if name not in ns:
                answer = ("missing",)
            elif isinstance(ns[name], type(sys)):
                answer = ("module", getattr(ns[name], "__name__", ""))
            elif callable(ns[name]):
                answer = ("callable",)
            else:
                answer = ("value", ns[name])
        else:
            try:
                fn = ns.get(name)
                if not callable(fn):
                    raise NameError(f"name {name!r} is not defined by the solution")
                answer = ("value", fn(*args, **kwargs))
            except Exception as exc:
                traceback.print_exc()
                answer = ("raise", type(exc).__name__, _text(exc))
        try:
            out = marshal.dumps(answer)
        except (ValueError, TypeError):  # a subclass, a custom object, a cycle: not data
            out = marshal.dumps(("unsendable", type(answer[-1]).__name__))
        send_frame(ANSWERS_FD, out)


def _text(exc):
    try:
        return str(exc)[:500]
    except Exception:
        return ""


# ------------------------------------------------------------------------------------------
# The judge: runs the test's side of a call or check test, in an interpreter the solution never touched
# ------------------------------------------------------------------------------------------


class SolutionFailed(BaseException):
    """The solution gave no usable answer (exited, hung up, sent no plain data).

    A BaseException, so that a check's ``except Exception`` does not swallow it.
    """


class _Channel:
    def __init__(self, calls_fd, answers_fd, budget):
        self.calls_fd, self.answers_fd, self.budget = calls_fd, answers_fd, budget
        self.raised = None  # the last exception re-raised on the solution's behalf
        self.failed = None  # the first SolutionFailed: the verdict is a fail even if a check swallowed it

    def fail(self, text):
        if self.failed is None:
            self.failed = SolutionFailed(text)
        return self.failed

    def ask(self, op, name, args=(), kwargs=None):
        try:
            send_frame(self.calls_fd, marshal.dumps((op, name, tuple(args), dict(kwargs or {}))))
        except BrokenPipeError:
            raise self.fail("the solution exited before answering") from None
        try:
            data = recv_frame(self.answers_fd, self.budget)
            if data is None:
                raise self.fail("the solution exited before answering")
            answer = marshal.loads(data)
        except (ValueError, EOFError, TypeError) as exc:
            raise self.fail(f"unreadable answer: {exc}") from None
        if type(answer) is not tuple or not answer or type(answer[0]) is not str:
            raise self.fail("malformed answer")
        return answer


class Candidate:
    """Stands in for a solution's function inside the judge: each call goes to the child."""

    def __init__(self, channel, name):
        self._channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        answer = self._channel.ask("call", self.__name__, args, kwargs)
        if answer[0] == "value" and len(answer) == 2:
            try:
                check_plain(answer[1], self._channel.budget)
            except ValueError as exc:
                raise self._channel.fail(f"{self.__name__} returned no plain data: {exc}") from None
            return answer[1]
        if answer[0] == "raise" and len(answer) == 3:
            name, text = str(answer[1]), str(answer[2])
            cls = getattr(builtins, name, None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = RuntimeError
                text = f"{name}: {text}"
            exc = cls(text)  # the same builtin type, so a check expecting it still works
            self._channel.raised = exc
            raise exc
        if answer[0] == "unsendable":
            raise self._channel.fail(f"{self.__name__} returned a {answer[-1]}, which is not plain data")
        raise self._channel.fail("malformed answer")


def _global_names(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _global_names(const)
    return names


def prepare_check(source, entry_point):
    """A check test's task for the judge, as marshal bytes: the check compiled once by the
    server (which caches it: every sample of a problem has the same check) and the global
    names it uses. A check that does not compile becomes its own error message."""
    try:
        code = compile(source, "<test>", "exec")
    except (SyntaxError, ValueError) as exc:
        return marshal.dumps((entry_point, None, f"{type(exc).__name__}: {exc}", ()))
    return marshal.dumps((entry_point, code, "", tuple(sorted(_global_names(code)))))


def _check_test(task, channel):
    """HumanEval: run ``check(candidate)``; names the check uses but neither defines nor finds in
    builtins (helpers from the prompt) come from the solution, callables as proxies."""
    entry_point, code, error, names = task
    if code is None:
        raise SyntaxError(f"the check does not compile: {error}")
    ns = {"__name__": "__main__", "__builtins__": builtins}
    exec(code, ns)
    builtin_names = builtins.__dict__
    for name in [n for n in names if n not in ns and n not in builtin_names]:
        answer = channel.ask("get", name)
        if answer[0] == "callable":
            ns[name] = Candidate(channel, name)
        elif answer[0] == "module" and len(answer) == 2 and answer[1] in _STDLIB:
            ns[name] = importlib.import_module(answer[1])  # our own copy of what the prompt imported
        elif answer[0] == "value" and len(answer) == 2:
            try:
                check_plain(answer[1], channel.budget)
            except ValueError:
                continue
            ns[name] = answer[1]
    ns["check"](Candidate(channel, entry_point))
    return {"ok": True}


def judge(task, channel):
    """The verdict record: ``{"ok": true}``, or ``{"ok": false, "by": "solution"|"check", "error": "..."}``."""
    try:
        record = _check_test(task, channel)
    except SolutionFailed as exc:
        record = {"ok": False, "by": "solution", "error": str(exc)}
    except BaseException as exc:  # the check failed (or raised what the solution raised)
        by = "solution" if exc is channel.raised else "check"
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        record = {"ok": False, "by": by, "error": text[-500:]}
    if channel.failed is not None:  # even if the check caught it
        record = {"ok": False, "by": "solution", "error": str(channel.failed)}
    return record


def run_judge(cfg, fds):
    """A check test's judge. fds: task memfd, answers from the child, calls to the child, verdict to the server."""
    task = marshal.loads(_read_all(fds[0]))  # from prepare_check, in the server
    null = os.open(os.devnull, os.O_RDWR)
    _place_fds([null, null, null, *fds[1:]])  # 3 answers, 4 calls, 5 verdict
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _limit(cfg)
    os.chdir("/")
    record = judge(task, _Channel(4, 3, cfg["max_output"]))
    with contextlib.suppress(OSError):
        write_all(5, json.dumps(record).encode())
    os._exit(0)
