"""Red team: attacks on the verdict itself (not on the host), each run through the real sandbox.

A reward that can be forged gets forged by RL. Every attack here is a response a policy
could emit; each asserts the secure outcome (the attack does not pass) and that an honest
solution still passes afterwards in the same worker (the control). Classes:

- leaks: reading another test's reply, the verdict channel's secret or the check code
  from frames, the collector, raw memory or /proc;
- values: return values that lie when compared (``__eq__``, int subclasses, cycles, depth);
- the harness: patched builtins and modules, trace hooks, exits and swallowed exceptions.

Honest runs go first where the attack needs something to steal (the pool sends a
prompt's samples to one worker back to back).
"""

from __future__ import annotations

import os

import pytest

import klear.rewards.sandbox as sandbox_mod
from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
from klear.rewards.code import code_reward, judge, parse_tests
from klear.rewards.sandbox import Sandbox, SandboxUnavailable, TestRun, close_all, get_sandbox
from klear.rewards.sandbox._harness import MAX_DEPTH, check_plain

needs_bwrap = pytest.mark.skipif(sandbox_mod.shutil.which("bwrap") is None, reason="bubblewrap not installed")

# One test each, with answers nobody guesses: an attack only passes by stealing them.
STDIN_GT = {"inputs": ["123456 654321\n"], "outputs": ["777777\n"]}
STDIN_OK = "a, b = map(int, input().split())\nprint(a + b)\n"
CALL_GT = {"inputs": [[123456, 654321]], "outputs": [777777], "fn_name": "add"}
CALL_OK = "def add(a, b):\n    return a + b\n"
CHECK_GT = {
    "test": (
        "def check(candidate):\n"
        "    assert candidate(2) == 4\n"
        "    assert candidate(-3) == 9\n"
        "    assert candidate(1234) == 1522756\n"
        "    return None\n"
    ),
    "entry_point": "square",
}
CHECK_LOOP_GT = {
    "test": (
        "def check(candidate):\n"
        "    for x, want in [(2, 4), (-3, 9), (1234, 1522756)]:\n"
        "        assert candidate(x) == want\n"
    ),
    "entry_point": "square",
}
CHECK_ABS_GT = {
    "test": "def check(candidate):\n    assert abs(candidate(1234) - 1522756) < 1e-6\n",
    "entry_point": "square",
}
CHECK_MATH_GT = {
    "test": "import math\n\ndef check(candidate):\n    assert math.isclose(candidate(1234), 1522756)\n",
    "entry_point": "square",
}
# The check uses the prompt's import of math, as some HumanEval-style checks do.
CHECK_PROMPT_MATH_GT = {
    "test": "def check(candidate):\n    assert math.isclose(candidate(1234), 1522756)\n",
    "entry_point": "square",
}
CHECK_OK = "def square(x):\n    return x * x\n"
WRONG_SQUARE = "def square(x):\n    return 0\n"

# Reusable attack pieces. Each searches generically (not for one variable name), so that a
# refactor that merely renames what it holds would still be caught.
WALK_FRAMES = (
    "import sys\n"
    "def _walk(obj, seen, depth=0):\n"
    "    if id(obj) in seen or depth > 6:\n"
    "        return\n"
    "    seen.add(id(obj))\n"
    "    yield obj\n"
    "    if isinstance(obj, dict):\n"
    "        for v in list(obj.values()):\n"
    "            yield from _walk(v, seen, depth + 1)\n"
    "    elif isinstance(obj, (list, tuple)):\n"
    "        for v in obj:\n"
    "            yield from _walk(v, seen, depth + 1)\n"
    "def frame_strings():\n"
    "    seen, f = set(), sys._getframe()\n"
    "    while f is not None:\n"
    "        for v in _walk(dict(f.f_locals), seen):\n"
    "            if isinstance(v, str):\n"
    "                yield v\n"
    "        f = f.f_back\n"
)
GC_STRINGS = (
    "import gc\n"
    "def gc_strings():\n"
    "    for o in gc.get_objects():\n"
    "        vals = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()\n"
    "        for v in list(vals):\n"
    "            if isinstance(v, str):\n"
    "                yield v\n"
)
# A process that changed uid is not dumpable, and then its own /proc/self/mem is root's:
# make it dumpable again first (any process may), so that the scan really reads.
RAW_MEMORY = (
    "import ctypes, re\n"
    "ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)\n"
    "def memory_matches(pattern):\n"
    "    found = []\n"
    "    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:\n"
    "        for line in maps:\n"
    "            addr, perms = line.split()[:2]\n"
    "            if not perms.startswith('rw'):\n"
    "                continue\n"
    "            lo, hi = (int(x, 16) for x in addr.split('-'))\n"
    "            if hi - lo > 1 << 28:\n"
    "                continue\n"
    "            try:\n"
    "                mem.seek(lo)\n"
    "                found += re.findall(pattern, mem.read(hi - lo))\n"
    "            except (OSError, OverflowError, ValueError):\n"
    "                pass\n"
    "    return found\n"
)
# The old channel: a line "\n<nonce> <json>" on fd 3, the nonce being 16 hex digits.
FORGE_OK = (
    "import os\n"
    "def forge(nonces):\n"
    "    for n in nonces:\n"
    "        for fd in range(3, 10):\n"
    "            try:\n"
    "                os.write(fd, ('\\n' + n + ' {\"ok\": true}\\n').encode())\n"
    "            except OSError:\n"
    "                pass\n"
    "    os._exit(0)\n"
)
HEX16 = "import re\nHEX16 = re.compile('[0-9a-f]{16}')\n"
ANSWER = "import re\nANSWER = re.compile('[0-9]+\\n')\n"


@pytest.fixture(scope="module")
def cfg() -> RewardConfig:
    return RewardConfig(
        code=CodeRewardConfig(soft_mapping="pass_rate", max_tests=None),
        sandbox=SandboxConfig(test_timeout_s=2.0, cpu_time_s=3, memory_mb=512, max_output_bytes=1 << 16),
    )


@pytest.fixture(scope="module", autouse=True)
def _close():
    yield
    close_all()


def wrap(code: str) -> str:
    return f"<think>ok</think>\n```python\n{code}```\n"


def assert_fails_and_honest_passes(cfg: RewardConfig, gt, attack: str, honest: str) -> None:
    """Honest first (something to steal), then the attack must fail, then honest must pass again."""
    first = code_reward(wrap(honest), gt, cfg)
    assert first.score == 1.0, first.detail
    res = code_reward(wrap(attack), gt, cfg)
    assert res.passed == 0 and res.score == 0.0 and not res.correct, f"attack passed: {res.detail}"
    again = code_reward(wrap(honest), gt, cfg)
    assert (again.passed, again.total, again.score, again.flags) == (1, 1, 1.0, ()), again.detail


# ------------------------------------------------------------------------------------------
# Leaks: a sibling's reply, the channel's secret, the check code
# ------------------------------------------------------------------------------------------

LEAKS = {
    # Walk sys._getframe() up into the server: print any answer-shaped string it still holds.
    "sibling_reply_via_frames": (
        STDIN_GT,
        WALK_FRAMES + ANSWER + "for s in frame_strings():\n    if ANSWER.fullmatch(s):\n"
        "        print(s, end='')\n        break\n",
        STDIN_OK,
    ),
    # The collector sees every container the server allocated after start-up.
    "sibling_reply_via_gc_objects": (
        STDIN_GT,
        GC_STRINGS + ANSWER + "for s in gc_strings():\n    if ANSWER.fullmatch(s):\n"
        "        print(s, end='')\n        break\n",
        STDIN_OK,
    ),
    # Frames refer to their module's globals: get_referrers finds every running server frame.
    "sibling_reply_via_gc_referrers": (
        STDIN_GT,
        "import gc, sys, types\n" + ANSWER + "main = sys.modules['__main__'].__dict__\n"
        "f = sys._getframe()\nwhile f is not None:  # materialise every frame object\n    f = f.f_back\n"
        "for fr in gc.get_referrers(main):\n"
        "    if isinstance(fr, types.FrameType):\n"
        "        for v in fr.f_locals.values():\n"
        "            if isinstance(v, dict):\n"
        "                for s in v.values():\n"
        "                    if isinstance(s, str) and ANSWER.fullmatch(s):\n"
        "                        print(s, end='')\n"
        "                        raise SystemExit\n",
        STDIN_OK,
    ),
    # Freed memory keeps the previous reply's serialised frame: read it back through /proc/self/mem.
    "sibling_reply_in_raw_memory": (
        STDIN_GT,
        RAW_MEMORY + "key = b'\"std' + b'out\": \"'\n"
        "for m in memory_matches(re.escape(key) + rb'([0-9]+)\\\\n\"'):\n"
        "    print(m.decode())\n    break\n",
        STDIN_OK,
    ),
    # A call-based sibling: its reply carries the returned value; return the same.
    "sibling_call_value_via_frames": (
        CALL_GT,
        WALK_FRAMES + "import re\n"
        "def add(a, b):\n"
        "    for s in frame_strings():\n"
        "        m = re.search(r'\"value\": (-?[0-9]+)', s)\n"
        "        if m:\n"
        "            return int(m.group(1))\n"
        "    return 0\n",
        CALL_OK,
    ),
    "sibling_call_value_via_gc": (
        CALL_GT,
        GC_STRINGS + "import re\n"
        "def add(a, b):\n"
        "    for s in gc_strings():\n"
        "        m = re.search(r'\"value\": (-?[0-9]+)', s)\n"
        "        if m:\n"
        "            return int(m.group(1))\n"
        "    return 0\n",
        CALL_OK,
    ),
    # The result channel's secret, from frames, then a forged pass and an exit before the check.
    "channel_secret_via_frames": (
        CHECK_GT,
        WALK_FRAMES + HEX16 + FORGE_OK + "forge([s for s in frame_strings() if HEX16.fullmatch(s)])\n",
        CHECK_OK,
    ),
    "channel_secret_via_gc": (
        CHECK_GT,
        GC_STRINGS + HEX16 + FORGE_OK + "forge([s for s in gc_strings() if HEX16.fullmatch(s)])\n",
        CHECK_OK,
    ),
    # ... from everything /proc/self offers: open descriptors and raw memory.
    "channel_secret_via_proc_self": (
        CHECK_GT,
        RAW_MEMORY + HEX16 + FORGE_OK + "import os\nfound = []\n"
        "for name in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        with open(f'/proc/self/fd/{name}', 'rb') as f:\n"
        "            found += HEX16.findall(f.read(1 << 20).decode('latin-1'))\n"
        "    except OSError:\n"
        "        pass\n"
        'found += [m.decode() for m in memory_matches(rb\'"nonce": "([0-9a-f]{16})"\')]\n'
        "forge(found)\n",
        CHECK_OK,
    ),
    # The check code itself, found in the harness's frames: answer from its asserts.
    "check_code_lookup_table": (
        CHECK_GT,
        WALK_FRAMES + "import ast\n"
        "def square(x):\n"
        "    for s in frame_strings():\n"
        "        if 'def check(candidate)' not in s or 'ast.walk' in s:\n"
        "            continue\n"
        "        for node in ast.walk(ast.parse(s)):\n"
        "            try:\n"
        "                if ast.literal_eval(node.left.args[0]) == x:\n"
        "                    return ast.literal_eval(node.comparators[0])\n"
        "            except Exception:\n"
        "                continue\n"
        "    return 0\n",
        CHECK_OK,
    ),
    # The caller's frame is the check: its locals hold the expected value.
    "caller_frame_peek": (
        CHECK_LOOP_GT,
        "import sys\ndef square(x):\n    return sys._getframe(1).f_locals.get('want', 0)\n",
        CHECK_OK,
    ),
}


@needs_bwrap
@pytest.mark.parametrize(("gt", "attack", "honest"), list(LEAKS.values()), ids=list(LEAKS))
def test_leak_attacks_fail(cfg, gt, attack, honest):
    assert_fails_and_honest_passes(cfg, gt, attack, honest)


# ------------------------------------------------------------------------------------------
# Values that lie when compared, and values no comparison should see
# ------------------------------------------------------------------------------------------

VALUES = {
    "always_true_eq_check": (
        CHECK_GT,
        "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def square(x):\n    return Yes()\n",
        CHECK_OK,
    ),
    "int_subclass_eq_check": (
        CHECK_GT,
        "class I(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def square(x):\n    return I(0)\n",
        CHECK_OK,
    ),
    "int_subclass_call": (
        CALL_GT,
        "class I(int):\n    def __eq__(self, other):\n        return True\n"
        "    def __repr__(self):\n        return '777777'\n    __str__ = __repr__\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return I(0)\n",
        CALL_OK,
    ),
    "str_subclass_call": (
        {"inputs": [["ab", "cd"]], "outputs": ["abcd"], "fn_name": "add"},
        "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def add(a, b):\n    return S('nope')\n",
        "def add(a, b):\n    return a + b\n",
    ),
    "self_referencing_list_check": (
        {"test": "def check(candidate):\n    assert candidate(1) != [0]\n", "entry_point": "f"},
        "def f(x):\n    a = []\n    a.append(a)\n    return a\n",
        "def f(x):\n    return [x]\n",
    ),
    "deep_nesting_call": (
        {"inputs": [[1]], "outputs": [[[1]]], "fn_name": "f"},
        "import sys\nsys.setrecursionlimit(10**6)\n"
        "def f(x):\n    v = x\n    for _ in range(100000):\n        v = [v]\n    return v\n",
        "def f(x):\n    return [[x]]\n",
    ),
    # JSON's true is not the integer 1, though Python says True == 1.
    "bool_for_int_call": (
        {"inputs": [[1]], "outputs": [1], "fn_name": "f"},
        "def f(x):\n    return True\n",
        "def f(x):\n    return x\n",
    ),
}


@needs_bwrap
@pytest.mark.parametrize(("gt", "attack", "honest"), list(VALUES.values()), ids=list(VALUES))
def test_lying_values_fail(cfg, gt, attack, honest):
    assert_fails_and_honest_passes(cfg, gt, attack, honest)


# ------------------------------------------------------------------------------------------
# The harness: builtins, modules, tracing, exits, swallowed exceptions
# ------------------------------------------------------------------------------------------

HARNESS = {
    # The harness compiles the check with the builtin compile: make it compile a no-op check.
    "patched_builtins_compile": (
        CHECK_GT,
        "import builtins\n_real = builtins.compile\n"
        "def fake(src, *a, **k):\n"
        "    if 'def check' in str(src):\n"
        "        src = 'def check(candidate):\\n    return None\\n'\n"
        "    return _real(src, *a, **k)\n"
        "builtins.compile = fake\n" + WRONG_SQUARE,
        CHECK_OK,
    ),
    # The check imports math: hand it a fake one.
    "patched_builtins_import": (
        CHECK_MATH_GT,
        "import builtins, types\n_real = builtins.__import__\n"
        "fake = types.SimpleNamespace(isclose=lambda *a, **k: True)\n"
        "def imp(name, *a, **k):\n"
        "    return fake if name == 'math' else _real(name, *a, **k)\n"
        "builtins.__import__ = imp\n" + WRONG_SQUARE,
        CHECK_OK,
    ),
    "patched_builtins_abs": (
        CHECK_ABS_GT,
        "import builtins\nbuiltins.abs = lambda x: 0\n" + WRONG_SQUARE,
        CHECK_OK,
    ),
    # Modules are shared by the whole interpreter: patch the one the check uses.
    "patched_shared_module": (
        CHECK_MATH_GT,
        "import math\nmath.isclose = lambda *a, **k: True\n" + WRONG_SQUARE,
        CHECK_OK,
    ),
    # A trace function may move a frame's line: jump the check over its asserts.
    "settrace_jumps_over_asserts": (
        CHECK_GT,
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name != 'check':\n"
        "        return None\n"
        "    def local(frame, event, arg):\n"
        "        last = frame.f_code.co_firstlineno + 4\n"
        "        if event == 'line' and frame.f_lineno < last:\n"
        "            frame.f_lineno = last\n"
        "        return local\n"
        "    return local\n"
        "sys.settrace(tracer)\n" + WRONG_SQUARE,
        CHECK_OK,
    ),
    # The check takes math from the solution's globals: hand it a fake module named math.
    "fake_module_under_a_stdlib_name": (
        CHECK_PROMPT_MATH_GT,
        "import types\nmath = types.ModuleType('math')\nmath.isclose = lambda *a, **k: True\n" + WRONG_SQUARE,
        "import math\n" + CHECK_OK,
    ),
    "exit_zero_before_the_check": (CHECK_GT, "import os\n" + WRONG_SQUARE + "os._exit(0)\n", CHECK_OK),
    "sys_exit_zero_inside_the_candidate": (
        CHECK_GT,
        "import sys\ndef square(x):\n    sys.exit(0)\n",
        CHECK_OK,
    ),
    "exit_zero_inside_a_call": (CALL_GT, "import os\ndef add(a, b):\n    os._exit(0)\n", CALL_OK),
    # The failure is an exception in the harness: swallow everything, ignore signals, keep going.
    "swallow_base_exception_and_signals": (
        CHECK_GT,
        "import signal, time\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "def square(x):\n"
        "    while True:\n"
        "        try:\n"
        "            time.sleep(10)\n"
        "        except BaseException:\n"
        "            pass\n",
        CHECK_OK,
    ),
    # Every failure reaches the harness's except clause: make it report success instead.
    "patched_traceback_exits_zero": (
        CHECK_GT,
        "import os, traceback\ntraceback.print_exc = lambda *a, **k: os._exit(0)\n"
        "traceback.print_exception = traceback.print_exc\n" + WRONG_SQUARE,
        CHECK_OK,
    ),
    # Pass markers and a result line on stdout, flushed, then a clean exit.
    "stdout_markers_flushed_then_exit": (
        CHECK_GT,
        "import os, sys\nsys.stdout.write('\\nOK\\n{\"ok\": true}\\nPASSED\\n')\nsys.stdout.flush()\n"
        "os.dup2(1, 3)\nos.dup2(1, 4)\n" + WRONG_SQUARE,
        CHECK_OK,
    ),
    # Point every descriptor the harness might report on at stdout, and let a wrong answer run.
    "result_fd_hijack": (
        CALL_GT,
        "import os\nfor fd in range(3, 10):\n    try:\n        os.dup2(1, fd)\n    except OSError:\n"
        "        pass\nprint('{\"value\": 777777}')\ndef add(a, b):\n    return 0\n",
        CALL_OK,
    ),
}


@needs_bwrap
@pytest.mark.parametrize(("gt", "attack", "honest"), list(HARNESS.values()), ids=list(HARNESS))
def test_harness_attacks_fail(cfg, gt, attack, honest):
    assert_fails_and_honest_passes(cfg, gt, attack, honest)


# ------------------------------------------------------------------------------------------
# The judge and the zygote, attacked from the child: each attack answers correctly only if
# it got the capability, so "the attack fails" proves the capability is not there
# ------------------------------------------------------------------------------------------

# Search every other process's cmdline, environment, descriptors and memory for a marker.
OTHERS_HOLD = (
    "import os, re\n"
    "def others_hold(marker):\n"
    "    me = os.getpid()\n"
    "    for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != me]:\n"
    "        base = f'/proc/{pid}'\n"
    "        paths = [f'{base}/cmdline', f'{base}/environ']\n"
    "        try:\n"
    "            paths += [f'{base}/fd/{n}' for n in os.listdir(f'{base}/fd')]\n"
    "        except OSError:\n"
    "            pass\n"
    "        for path in paths:\n"
    "            try:\n"
    "                with open(path, 'rb') as f:\n"
    "                    if marker in f.read(1 << 22):\n"
    "                        return True\n"
    "            except OSError:\n"
    "                pass\n"
    "        try:\n"
    "            with open(f'{base}/maps') as maps, open(f'{base}/mem', 'rb', 0) as mem:\n"
    "                for line in maps:\n"
    "                    lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
    "                    try:\n"
    "                        mem.seek(lo)\n"
    "                        if marker in mem.read(hi - lo):\n"
    "                            return True\n"
    "                    except (OSError, OverflowError, ValueError):\n"
    "                        pass\n"
    "        except OSError:\n"
    "            pass\n"
    "    return False\n"
)
CAPABILITIES = {
    # The judge holds the check, hence 1522756: nothing of it may be readable from the child.
    "judge_memory_fds_and_environment": (
        CHECK_GT,
        OTHERS_HOLD + "def square(x):\n    return x * x if others_hold(b'1522756') else 0\n",
        CHECK_OK,
    ),
    # ptrace any other process (the judge, the zygote, the server).
    "ptrace_another_process": (
        CHECK_GT,
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def attached():\n"
        "    for p in os.listdir('/proc'):\n"
        "        if p.isdigit() and int(p) != os.getpid() and libc.ptrace(16, int(p), 0, 0) == 0:\n"
        "            return True\n"
        "    return False\n"
        "def square(x):\n    return x * x if attached() else 0\n",
        CHECK_OK,
    ),
    # Only stdin/stdout/stderr and the two call pipes: no socket of the zygote, no verdict pipe.
    "inherited_descriptors": (
        CHECK_GT,
        "import os\nextra = [int(n) for n in os.listdir('/proc/self/fd') if int(n) > 4]\n"
        "extra = [n for n in extra if not os.readlink(f'/proc/self/fd/{n}').startswith('/proc')]\n"
        "def square(x):\n    return x * x if extra else 0\n",
        CHECK_OK,
    ),
    # Stop or kill every other process it can reach: the judge must not answer for it.
    "signal_every_other_process": (
        CHECK_GT,
        "import os, signal\n"
        "def square(x):\n"
        "    for p in os.listdir('/proc'):\n"
        "        if p.isdigit() and int(p) not in (1, os.getpid()):\n"
        "            for sig in (signal.SIGSTOP, signal.SIGKILL):\n"
        "                try:\n"
        "                    os.kill(int(p), sig)\n"
        "                except OSError:\n"
        "                    pass\n"
        "    return 0\n",
        CHECK_OK,
    ),
}


@needs_bwrap
@pytest.mark.parametrize(("gt", "attack", "honest"), list(CAPABILITIES.values()), ids=list(CAPABILITIES))
def test_the_judge_and_the_zygote_are_out_of_reach(cfg, gt, attack, honest):
    assert_fails_and_honest_passes(cfg, gt, attack, honest)


def verdicts(box: Sandbox, code: str, gt) -> list[bool]:
    return [judge(t, box.run(code, t.payload()), 1e-6)[0] for t in parse_tests(gt).tests]


@pytest.fixture(scope="module")
def unpriv(cfg):
    """A sandbox whose children share the server's uid (the unprivileged mode): only the
    judge's and the zygote's non-dumpable state protects them, not a uid boundary."""
    if os.geteuid() != 0 or sandbox_mod.shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to start a sandbox as an unprivileged user")
    launcher = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    box = Sandbox(cfg.sandbox, privileged=False, launcher=launcher)
    try:
        box.start()
    except SandboxUnavailable as exc:
        pytest.skip(f"unprivileged user namespaces are not available here: {exc}")
    yield box
    box.close()


UNPRIV = ["sibling_reply_via_frames", "sibling_call_value_via_frames", "check_code_lookup_table"]
UNPRIV += ["always_true_eq_check", "patched_builtins_compile", "settrace_jumps_over_asserts", *CAPABILITIES]
ALL = {**LEAKS, **VALUES, **HARNESS, **CAPABILITIES}


@needs_bwrap
@pytest.mark.parametrize("name", UNPRIV)
def test_unprivileged_mode_holds_too(unpriv, name):
    gt, attack, honest = ALL[name]
    assert verdicts(unpriv, honest, gt) == [True]
    assert verdicts(unpriv, attack, gt) == [False]
    assert verdicts(unpriv, honest, gt) == [True]


# ------------------------------------------------------------------------------------------
# Plain data, and the verdict from the judge's record (no sandbox needed)
# ------------------------------------------------------------------------------------------


class _Int(int):
    pass


_cycle: list = []
_cycle.append(_cycle)
_deep: list = []
for _ in range(MAX_DEPTH + 5):
    _deep = [_deep]


@pytest.mark.parametrize(
    "value",
    [None, True, -(10**40), 1.5, float("nan"), "s", b"b", [1, (2, {3}), frozenset({4})], {"k": [1], 2: None}],
)
def test_plain_data_is_admitted(value):
    check_plain(value, 1 << 20)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (_Int(3), "_Int is not plain"),
        ([1, [2, _Int(3)]], "_Int is not plain"),
        ({"k": object()}, "object is not plain"),
        (1j, "complex is not plain"),
        (_cycle, "deeper than"),
        (_deep, "deeper than"),
        (["x" * 1000] * 2000, "larger than"),  # one string, referenced 2000 times
        (1 << (9 << 20), "larger than"),  # 1.1 MiB of digits
    ],
    ids=["int_subclass", "nested_subclass", "object", "complex", "cycle", "deep", "shared_refs", "huge_int"],
)
def test_non_plain_data_is_refused(value, why):
    with pytest.raises(ValueError, match=why):
        check_plain(value, 1 << 20)


def _run(
    result: str, exit_code: int | None = 0, signal: int | None = None, status: str = "exited"
) -> TestRun:
    return TestRun(status=status, exit_code=exit_code, signal=signal, result=result)


CALL = parse_tests(CALL_GT).tests[0]
CHECK = parse_tests(CHECK_GT).tests[0]


@pytest.mark.parametrize(
    ("test", "run", "verdict"),
    [
        (CHECK, _run('{"ok": true}'), (True, "ok")),
        (CHECK, _run('{"ok": true}', exit_code=1), (True, "ok")),  # what the child did afterwards is moot
        (CHECK, _run('{"ok": true}', status="timeout"), (False, "timeout")),
        (CHECK, _run('{"ok": false, "by": "check", "error": "AssertionError"}'), (False, "wrong")),
        (CHECK, _run('{"ok": false, "by": "solution", "error": "exited"}'), (False, "runtime_error")),
        (CHECK, _run(""), (False, "runtime_error")),  # no record: the judge died
        (CHECK, _run("", exit_code=None, signal=24), (False, "timeout")),
        (CHECK, _run('{"value": 4}'), (False, "runtime_error")),  # a call record on a check test
        (CALL, _run('{"value": 777777}'), (True, "ok")),
        (CALL, _run('{"value": 777777}', exit_code=1), (False, "runtime_error")),
        (CALL, _run('{"value": 777777}', exit_code=None, signal=9), (False, "runtime_error")),
        (CALL, _run('{"value": 777777}{"value": 777777}'), (False, "wrong")),  # one record, not two
        (CALL, _run('{"value": [777777]}'), (False, "wrong")),
        (CALL, _run('{"ok": true}'), (False, "wrong")),  # a check's record on a call test
        (CALL, _run('{"value": ' + "9" * 5000 + "}"), (False, "wrong")),  # over json's digit limit
        (CALL, _run("[777777]"), (False, "wrong")),
    ],
)
def test_the_verdict_comes_from_the_record(test, run, verdict):
    assert judge(test, run, 1e-6) == verdict


@needs_bwrap
def test_a_check_gets_the_prompts_helpers_and_modules(cfg):
    """HumanEval checks call helpers the prompt defined (poly, encode_cyclic) and use its imports."""
    gt = {
        "test": "def check(candidate):\n    assert m.isclose(candidate(3), helper(3) + SHIFT)\n",
        "entry_point": "f",
    }
    ok = "import math as m\nSHIFT = 1\ndef helper(x):\n    return x * x\ndef f(x):\n    return helper(x) + SHIFT\n"
    assert code_reward(wrap(ok), gt, cfg).score == 1.0
    res = code_reward(wrap(ok.replace("SHIFT\n", "SHIFT + 1\n")), gt, cfg)
    assert (res.score, res.detail.endswith("AssertionError")) == (0.0, True), res.detail
    missing = code_reward(wrap("def f(x):\n    return x\n"), gt, cfg)
    assert missing.score == 0.0 and "NameError" in missing.detail, missing.detail


@needs_bwrap
def test_no_trace_of_a_previous_test_in_raw_memory(cfg):
    """The strongest form of the sibling leak: after an honest run of test A, a run of test B
    scans every writable page of its own memory for A's input and output. The control: the
    same scan finds B's own input. The patterns are regexes, so the attack's own text does
    not contain what it looks for."""
    gt_a = {"inputs": ["111111 222222\n"], "outputs": ["333333\n"]}
    assert code_reward(wrap(STDIN_OK), gt_a, cfg).score == 1.0
    attack = RAW_MEMORY + (
        "input()\n"
        "control = bool(memory_matches(rb'(?<![0-9])40{5} 50{5}(?![0-9])'))\n"
        "leak = bool(memory_matches(rb'(?<![0-9])(?:3{6}|1{6} 2{6})(?![0-9])'))\n"
        "print(f'control={control} leak={leak}')\n"
    )
    slow = cfg.sandbox.model_copy(update={"test_timeout_s": 20.0, "cpu_time_s": 20})  # a loaded CI machine
    out = get_sandbox(slow).run(attack, {"kind": "stdin", "stdin": "400000 500000\n"})
    assert out.stdout.split() == ["control=True", "leak=False"], out
