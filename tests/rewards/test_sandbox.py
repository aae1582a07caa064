"""The sandbox under attack: every attack fails safely, and a correct solution scored right
after it is still scored correct (the sandbox is not left damaged or poisoned).

Attacks run as model-generated code inside the sandbox; the only processes these tests
kill from outside are ones they started themselves (a sandbox's bwrap, a helper python).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import klear
import klear.rewards.sandbox as sandbox_mod
from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
from klear.rewards.code import code_reward
from klear.rewards.sandbox import Sandbox, SandboxUnavailable, close_all, get_sandbox

pytestmark = pytest.mark.skipif(sandbox_mod.shutil.which("bwrap") is None, reason="bubblewrap not installed")

IS_ROOT = os.geteuid() == 0
REPO = Path(klear.__file__).resolve().parents[2]
ONE_GT = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
SUM_GT = {"inputs": ["1 2\n", "3 4\n", "10 -5\n", "0 0\n"], "outputs": ["3\n", "7\n", "5\n", "0\n"]}
SUM_OK = "a, b = map(int, input().split())\nprint(a + b)\n"


def wrap(code: str) -> str:
    return f"<think>ok</think>\n```python\n{code}```\n"


@pytest.fixture(scope="module")
def cfg() -> RewardConfig:
    return RewardConfig(
        code=CodeRewardConfig(soft_mapping="pass_rate", max_tests=None),
        sandbox=SandboxConfig(test_timeout_s=1.0, cpu_time_s=3, memory_mb=512, max_output_bytes=1 << 16),
    )


@pytest.fixture(scope="module", autouse=True)
def _close():
    yield
    close_all()


@pytest.fixture
def box(cfg) -> Sandbox:
    b = get_sandbox(cfg.sandbox)
    b.start()
    return b


def pids_of_uid(uid: int) -> list[int]:
    """Host pids whose real uid is ``uid``, read from the host's /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def assert_still_correct(cfg: RewardConfig, box: Sandbox | None = None) -> None:
    """The aftermath check: a correct solution still scores 1.0 on four tests, nothing left over."""
    res = code_reward(wrap(SUM_OK), SUM_GT, cfg)
    assert (res.passed, res.total, res.score, res.flags) == (4, 4, 1.0, ()), res.detail
    if box is not None and box.uid is not None:
        assert pids_of_uid(box.uid) == [], "a test process outlived its test"


def run(box: Sandbox, code: str, stdin: str = ""):
    return box.run(code, {"kind": "stdin", "stdin": stdin}, "nonce0")


# ------------------------------------------------------------------------------------------
# Time
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        "while True:\n    pass\n",
        "import time\ntime.sleep(60)\n",
        "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n",  # closes stdout, then hangs
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n",
    ],
    ids=["infinite_loop", "sleep", "close_stdout_then_hang", "ignore_sigterm"],
)
def test_hang_is_a_flagged_timeout_within_the_bound(cfg, box, attack):
    t0 = time.monotonic()
    res = code_reward(wrap(attack), ONE_GT, cfg)
    elapsed = time.monotonic() - t0
    assert (res.passed, res.score, res.flags) == (0, 0.0, ("timeout",))
    assert 1.0 <= elapsed < 4.0  # the 1 s limit plus start-up and clean-up, on a busy machine
    assert_still_correct(cfg, box)


def test_cpu_rlimit_stops_a_loop_before_the_wall_clock(cfg):
    tight = cfg.model_copy(update={"sandbox": SandboxConfig(test_timeout_s=30.0, cpu_time_s=1)})
    out = run(get_sandbox(tight.sandbox), "while True:\n    pass\n")
    assert (out.status, out.signal) == ("exited", signal.SIGXCPU)  # the rlimit, not the wall clock
    res = code_reward(wrap("while True:\n    pass\n"), ONE_GT, tight)
    assert res.flags == ("timeout",) and res.passed == 0
    assert_still_correct(tight)


# ------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------


def test_fork_bomb_is_bounded_and_cleaned_up(cfg, box):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = code_reward(wrap(bomb), ONE_GT, cfg)
    assert res.passed == 0 and "timeout" in res.flags
    assert_still_correct(cfg, box)


def test_process_limit_holds(cfg, box):
    counter = (
        "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    n += 1\nprint(n)\n"
    )
    out = run(box, counter)
    assert out.status == "exited" and out.exit_code == 0
    assert 0 < int(out.stdout) < cfg.sandbox.max_processes
    assert_still_correct(cfg, box)


def test_daemonised_grandchild_cannot_outlive_its_test(cfg, box):
    # The grandchild leaves the process group and then SIGKILLs everything it may, forever.
    attack = (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            try:\n"
        "                os.kill(-1, signal.SIGKILL)\n"
        "            except OSError:\n"
        "                pass\n"
        "            time.sleep(0.001)\n"
        "    os._exit(0)\n"
        "print(3)\n"
    )
    res = code_reward(wrap(attack), ONE_GT, cfg)
    assert res.total == 1  # it may pass (it printed 3); what matters is what happens next
    assert_still_correct(cfg, box)


def test_killing_the_server_parent_and_everyone_fails_safely(cfg, box):
    restarts, pid = box.restarts, box.pid
    attack = (
        "import os, signal\n"
        "for target in (os.getppid(), 1, -1):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)\n"
    )
    res = code_reward(wrap(attack), ONE_GT, cfg)
    assert res.passed == 0
    if IS_ROOT:  # children run under their own uid: the server is out of their reach
        assert (box.restarts, box.pid) == (restarts, pid)
        out = run(box, attack)
        assert out.stdout.split() == ["PermissionError", "PermissionError"]  # kill(-1) finds no one
    assert_still_correct(cfg, box)


def test_dead_server_is_restarted_and_the_test_flagged(cfg, box):
    old_pid, restarts = box.pid, box.restarts
    # Kill our own child (bwrap) mid-test, as a solution that brought the server down would.
    timer = threading.Timer(0.3, os.kill, (old_pid, signal.SIGKILL))
    timer.start()
    res = code_reward(wrap("import time\ntime.sleep(0.9)\nprint(3)\n"), ONE_GT, cfg)
    timer.join()
    assert res.flags == ("sandbox_restart",) and res.passed == 0 and res.score == 0.0
    assert box.restarts == restarts + 1 and box.pid != old_pid
    assert wait_until(lambda: not pid_alive(old_pid))
    assert_still_correct(cfg, box)


# ------------------------------------------------------------------------------------------
# Memory and output
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    ["x = bytearray(8 * 1024**3)\nprint(3)\n", "xs = []\nwhile True:\n    xs.append(' ' * 10**7)\n"],
    ids=["one_big_allocation", "growing_list"],
)
def test_memory_bomb_fails_with_memory_error(cfg, attack):
    # A longer wall clock than elsewhere: filling 512 MB can take a while on a busy machine,
    # and this test is about the address-space limit, not the timeout.
    roomy = cfg.model_copy(update={"sandbox": cfg.sandbox.model_copy(update={"test_timeout_s": 8.0})})
    res = code_reward(wrap(attack), ONE_GT, roomy)
    assert res.passed == 0 and "MemoryError" in res.detail
    assert_still_correct(roomy, get_sandbox(roomy.sandbox))


@pytest.mark.parametrize(
    "attack",
    ["while True:\n    print('x' * 100000)\n", "print('3' * 10**7)\n"],
    ids=["endless", "single_huge_write"],
)
def test_huge_output_is_capped(cfg, box, attack):
    out = run(box, attack)
    assert out.status == "output_limit"  # stopped at the cap, not at the timeout
    assert len(out.stdout) <= cfg.sandbox.max_output_bytes
    assert code_reward(wrap(attack), ONE_GT, cfg).passed == 0
    assert_still_correct(cfg, box)


def test_writing_files_is_bounded_by_the_size_limits(cfg, box):
    out = run(box, "with open('big', 'wb') as f:\n    f.write(b'0' * (200 << 20))\n")
    assert out.exit_code != 0 and "File too large" in out.stderr
    assert_still_correct(cfg, box)


# ------------------------------------------------------------------------------------------
# Isolation: network, files, environment, the server's memory
# ------------------------------------------------------------------------------------------


def test_no_network(cfg, box):
    with socket.socket() as listener:  # a host service on loopback the sandbox must not reach
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        attack = (
            "import socket\nreached = []\n"
            f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
            "    try:\n"
            "        socket.create_connection(addr, timeout=0.3).close()\n"
            "        reached.append(addr)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(3 if reached else 0)\n"
        )
        res = code_reward(wrap(attack), ONE_GT, cfg)
    assert res.passed == 0
    assert_still_correct(cfg, box)


def test_secrets_on_the_host_are_not_visible(cfg, box):
    probe = (
        "import os, json\nseen = {}\n"
        f"for p in [{str(REPO)!r}, {str(REPO / 'pyproject.toml')!r}, '/root', '/home', '/etc/shadow', "
        "'/etc/passwd', '/work', '/proc/1/root/root']:\n"
        "    seen[p] = os.path.exists(p)\n"
        "print(json.dumps({'seen': seen, 'root': sorted(os.listdir('/'))}))\n"
    )
    out = run(box, probe)
    report = json.loads(out.stdout)
    python_home = str(Path(sandbox_mod._choose_python(box.cfg)).resolve())
    for path, exists in report["seen"].items():
        if python_home.startswith(path.rstrip("/") + "/"):
            continue  # only the interpreter's own install prefix is mounted there
        assert not exists, f"{path} is visible inside the sandbox"
    assert set(report["root"]) <= {
        "usr",
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "etc",
        "proc",
        "dev",
        "tmp",
    }
    assert_still_correct(cfg, box)


def test_environment_is_minimal_even_through_proc(cfg, monkeypatch):
    monkeypatch.setenv("KLEAR_CANARY_SECRET", "s3cr3t-canary")
    fresh = Sandbox(cfg.sandbox)  # started now, with the canary in our environment
    try:
        probe = (
            "import os\nparts = [repr(dict(os.environ))]\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit():\n"
            "        try:\n"
            "            parts.append(open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1'))\n"
            "        except OSError:\n"
            "            pass\n"
            "print('\\n'.join(parts))\n"
        )
        out = run(fresh, probe)
        assert out.exit_code == 0
        assert "s3cr3t-canary" not in out.stdout
        env = eval(out.stdout.splitlines()[0])  # the repr of a dict of strings
        assert set(env) <= {"PATH", "LANG", "HOME", "PYTHONHASHSEED", "PWD"}
    finally:
        fresh.close()


def test_server_memory_and_proc_files_are_out_of_reach(cfg, box):
    attack = (
        "import os\nppid = os.getppid()\nleaks = []\n"
        "for name in ['environ', 'mem', 'maps', 'fd', 'stack', 'syscall']:\n"
        "    path = f'/proc/{ppid}/{name}'\n"
        "    try:\n"
        "        if name == 'fd':\n"
        "            os.listdir(path)\n"
        "        else:\n"
        "            with open(path, 'rb') as f:\n"
        "                f.read(16)\n"
        "        leaks.append(name)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(leaks)\n"
    )
    out = run(box, attack)
    assert out.exit_code == 0 and out.stdout.strip() == "[]"
    assert_still_correct(cfg, box)


def test_writes_outside_fail_and_tmp_does_not_persist(cfg, box, tmp_path):
    host_target = tmp_path / "written_from_sandbox"
    targets = ["/usr/klear_x", "/etc/klear_x", "/klear_x", str(REPO / "klear_x"), str(host_target)]
    attack = (
        "wrote = []\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        with open(p, 'w') as f:\n"
        "            f.write('x')\n"
        "        wrote.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "open('/tmp/leftover', 'w').write('poison')\n"
        "print(wrote)\n"
    )
    out = run(box, attack)
    assert out.exit_code == 0
    assert not host_target.exists() and not (REPO / "klear_x").exists() and not Path("/klear_x").exists()
    assert out.stdout.strip() in ("[]", repr([str(host_target)]))  # at most the sandbox's own /tmp
    later = run(box, "import os\nprint(sorted(os.listdir('/tmp')))\n")
    assert later.stdout.strip() == "[]"  # the next test starts from an empty /tmp
    assert_still_correct(cfg, box)


# ------------------------------------------------------------------------------------------
# Forged verdicts
# ------------------------------------------------------------------------------------------


def test_fake_pass_markers_do_not_pass(cfg, box):
    stdin_fake = "print('PASSED')\nprint('All tests passed')\nprint('OK')\n"
    assert code_reward(wrap(stdin_fake), ONE_GT, cfg).passed == 0
    call_gt = {"inputs": [[1, 2]], "outputs": [3], "fn_name": "add"}
    call_fake = (
        "import os\n"
        'os.write(3, b\'\\nnonce0 {"value": 3}\\n{"value": 3}\\n\')\n'
        "def add(a, b):\n    return 0\n"
    )
    assert code_reward(wrap(call_fake), call_gt, cfg).passed == 0
    he_gt = {"test": "def check(candidate):\n    assert candidate(2) == 4\n", "entry_point": "square"}
    he_fake = "import os\nprint('OK')\nos.write(3, b'\\nx {\"ok\": true}\\n')\ndef square(x):\n    return 0\n"
    assert code_reward(wrap(he_fake), he_gt, cfg).passed == 0
    assert_still_correct(cfg, box)


@pytest.mark.parametrize(
    ("gt", "attack"),
    [
        (
            {"test": "def check(candidate):\n    assert candidate(2) == 4\n", "entry_point": "square"},
            "import os\ndef square(x):\n    return 0\nos._exit(0)\n",
        ),
        ({"inputs": [[1, 2]], "outputs": [3], "fn_name": "add"}, "import os\nos._exit(0)\n"),
        ({"inputs": [[1, 2]], "outputs": [3], "fn_name": "add"}, "import sys\nsys.exit(0)\n"),
        (ONE_GT, "import os\nprint(3)\nos._exit(0)\n"),  # unflushed output is lost: not a pass
    ],
    ids=["humaneval", "call", "call_sys_exit", "stdin"],
)
def test_exiting_early_with_status_zero_does_not_pass(cfg, box, gt, attack):
    res = code_reward(wrap(attack), gt, cfg)
    assert res.passed == 0 and res.score == 0.0
    assert_still_correct(cfg, box)


# ------------------------------------------------------------------------------------------
# Lifecycle
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="uids are only switched when running as root")
def test_concurrent_servers_get_distinct_uids(cfg):
    a, b = Sandbox(cfg.sandbox), Sandbox(cfg.sandbox)
    try:
        a.start()
        b.start()
        assert a.uid != b.uid and a.uid >= cfg.sandbox.uid_base and b.uid >= cfg.sandbox.uid_base
        assert run(a, "import os\nprint(os.getuid())\n").stdout.strip() == str(a.uid)
    finally:
        a.close()
        b.close()


def test_sandbox_dies_with_its_parent(cfg):
    script = (
        "import json, sys, time\n"
        "from klear.config import SandboxConfig\n"
        "from klear.rewards.sandbox import get_sandbox\n"
        "box = get_sandbox(SandboxConfig())\n"
        "box.start()\n"
        "print(json.dumps({'pid': box.pid, 'uid': box.uid}), flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(klear.__file__).resolve().parents[1]))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        info = json.loads(parent.stdout.readline())
        assert pid_alive(info["pid"])
    finally:
        parent.kill()  # the process we started, by its pid
        parent.wait()
    assert wait_until(lambda: not pid_alive(info["pid"]))
    if info["uid"] is not None:
        assert wait_until(lambda: pids_of_uid(info["uid"]) == [])


def test_close_all_stops_the_servers(cfg):
    box = get_sandbox(cfg.sandbox)
    box.start()
    pid = box.pid
    close_all()
    assert wait_until(lambda: not pid_alive(pid))
    assert_still_correct(cfg)  # and the next use starts a fresh one


def test_missing_bwrap_refuses_with_install_hint(cfg, monkeypatch):
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match=r"apt-get install -y bubblewrap"):
        Sandbox(cfg.sandbox).start()


def test_mode_none_runs_but_warns_loudly(cfg, caplog):
    unsafe = cfg.model_copy(update={"sandbox": SandboxConfig(mode="none", test_timeout_s=1.0)})
    with caplog.at_level(logging.WARNING, logger="klear.rewards.sandbox"):
        res = code_reward(wrap(SUM_OK), SUM_GT, unsafe)
    assert res.score == 1.0
    assert any("WITHOUT isolation" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------
# The unprivileged mode (Klear not run as root): one uid, a user namespace per server.
# Run from root through setpriv as 'nobody', so CI (root) covers it too.
# ------------------------------------------------------------------------------------------

NOBODY = 65534


def _tree_comms(root_pid: int) -> list[str]:
    """Command names of ``root_pid``'s live descendants (host view)."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm, rest = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            state, ppid = rest.split()[:2]
            if state != "Z":
                procs[int(entry.name)] = (int(ppid), comm.split("(", 1)[1])
    tree, frontier, names = {root_pid}, [root_pid], []
    while frontier:
        p = frontier.pop()
        for child, (ppid, comm) in procs.items():
            if ppid == p and child not in tree:
                tree.add(child)
                frontier.append(child)
                names.append(comm)
    return sorted(names)


@pytest.fixture(scope="module")
def unpriv(cfg):
    if not IS_ROOT or sandbox_mod.shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to start a sandbox as an unprivileged user")
    launcher = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    box = Sandbox(cfg.sandbox, privileged=False, launcher=launcher)
    try:
        box.start()
    except SandboxUnavailable as exc:
        pytest.skip(f"unprivileged user namespaces are not available here: {exc}")
    yield box
    box.close()


def _sum_ok(box: Sandbox) -> None:
    for stdin, want in (("1 2\n", "3"), ("10 -5\n", "5")):
        out = run(box, SUM_OK, stdin)
        assert (out.status, out.exit_code, out.stdout.strip()) == ("exited", 0, want)
    # The server and its zygote; any other python3 is a test process that outlived its test.
    assert _tree_comms(box.pid).count("python3") == 2, "a test process outlived its test"


def test_unprivileged_runs_as_the_callers_uid_without_capabilities(unpriv):
    out = run(
        unpriv,
        "import os\nprint(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n",
    )
    assert out.stdout.split() == [str(NOBODY), "0000000000000000"]
    _sum_ok(unpriv)


@pytest.mark.parametrize(
    ("attack", "status"),
    [
        ("while True:\n    pass\n", "timeout"),
        (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            "timeout",
        ),
        ("x = bytearray(8 * 1024**3)\n", "exited"),
        ("while True:\n    print('x' * 100000)\n", "output_limit"),
    ],
    ids=["infinite_loop", "fork_bomb", "memory_bomb", "huge_output"],
)
def test_unprivileged_limits_hold(unpriv, attack, status):
    out = run(unpriv, attack)
    assert out.status == status and (status != "exited" or out.exit_code == 1)
    _sum_ok(unpriv)


def test_unprivileged_daemonised_grandchild_is_killed(unpriv):
    attack = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(60)\n    os._exit(0)\nprint(3)\n"
    )
    run(unpriv, attack)
    _sum_ok(unpriv)


def test_unprivileged_server_proc_files_and_environment_are_private(unpriv, monkeypatch):
    attack = (
        "import os\nppid = os.getppid()\nleaks = []\n"
        "for name in ['environ', 'mem', 'maps', 'fd']:\n"
        "    try:\n"
        "        os.listdir(f'/proc/{ppid}/fd') if name == 'fd' else open(f'/proc/{ppid}/{name}', 'rb').read(16)\n"
        "        leaks.append(name)\n"
        "    except OSError:\n"
        "        pass\n"
        "envs = []\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            envs.append(open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1'))\n"
        "        except OSError:\n"
        "            pass\n"
        "print(leaks, 'HOME=/root' in ''.join(envs) or 'KLEAR_' in ''.join(envs))\n"
    )
    out = run(unpriv, attack)
    assert out.stdout.strip() == "[] False"
    _sum_ok(unpriv)


def test_unprivileged_a_solution_killing_the_server_gets_a_flagged_restart(unpriv, cfg):
    before = unpriv.restarts
    out = run(
        unpriv, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(5)\n"
    )
    assert out.status == "sandbox_restart" and unpriv.restarts == before + 1
    _sum_ok(unpriv)


def test_a_server_dead_between_tests_is_replaced_without_blame(cfg):
    box = Sandbox(cfg.sandbox)
    try:
        box.start()
        old = box.pid
        os.kill(old, signal.SIGKILL)  # our own child (bwrap)
        assert wait_until(lambda: box._proc.poll() is not None)
        out = run(box, SUM_OK, "1 2\n")
        assert (out.status, out.stdout.strip(), box.restarts) == ("exited", "3", 0) and box.pid != old
    finally:
        box.close()


def test_an_interpreter_outside_usr_is_mounted_alone_and_read_only(cfg):
    exe = Path(sys.executable).resolve()
    if str(exe).startswith("/usr/"):
        pytest.skip("the test interpreter is a system one")
    box = Sandbox(cfg.sandbox.model_copy(update={"python": str(exe)}))
    try:
        prefix = exe.parent.parent
        probe = (
            "import os, sys\nprint(sys.version.split()[0])\n"
            f"print(sorted(os.listdir({str(prefix.parent)!r})))\n"
            "try:\n"
            f"    open({str(prefix / 'klear_x')!r}, 'w')\n"
            "    print('wrote')\n"
            "except OSError:\n"
            "    print('read-only')\n"
            "import decimal\nprint(decimal.Decimal(1) / 4)\n"  # a module the server did not preload
        )
        out = run(box, probe)
        assert out.stdout.split() == [sys.version.split()[0], repr([prefix.name]), "read-only", "0.25"], (
            out.stderr
        )
    finally:
        box.close()


def test_unprivileged_scratch_files_do_not_reach_the_next_test(unpriv):
    attack = (
        "for p in ['/tmp/poison', '/dev/shm/poison']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    run(unpriv, attack)
    out = run(unpriv, "import os\nprint([os.listdir(d) for d in ('/tmp', '/dev/shm') if os.path.isdir(d)])\n")
    assert out.stdout.strip() in ("[[], []]", "[[]]")
    _sum_ok(unpriv)


def test_a_sandbox_that_cannot_start_says_why(cfg):
    broken = Sandbox(cfg.sandbox.model_copy(update={"python": "/usr/bin/no-such-python3"}))
    with pytest.raises(SandboxUnavailable, match=r"failed to start .*no-such-python3"):
        broken.start()
    broken.close()
