"""Red-team: state that outlives a test, kernel surface, aggregate resources (issue 12, items 4, 5, 8).

Each attack runs as a submission through the real sandbox; then an honest submission runs
in the same server and must find a clean slate: empty /tmp, /dev/shm and /dev/mqueue, no
SysV IPC object, no key, no process of the test uid but itself, a working ``tempfile``,
and the right answer. The attack's own outcome is asserted too (EPERM, killed, bounded).
Capabilities are shown with marker files and harmless objects, never by damaging anything;
a key an attack manages to add expires after a few seconds.

Run against main (before this work; also after verdict's merge), 13 of the 22 attack tests
failed (each run in a fresh pytest): mode-000 and 1,200-deep trees, 150k files, SysV
shm/msg/sem, POSIX mq, add_key, the session keyring, unshare and clone of a user namespace,
aggregate memory, and the unprivileged mode.
"""

from __future__ import annotations

import json
import os

import pytest

import klear.rewards.sandbox as sandbox_mod
from klear.config import SandboxConfig
from klear.rewards.sandbox import Sandbox

pytestmark = pytest.mark.skipif(sandbox_mod.shutil.which("bwrap") is None, reason="bubblewrap not installed")

TMPFS_MB = 32

HONEST = r"""
import json, os, tempfile, ctypes
state = {}
state["tmp"] = sorted(os.listdir("/tmp"))
state["shm"] = sorted(os.listdir("/dev/shm"))
state["mq"] = sorted(os.listdir("/dev/mqueue")) if os.path.isdir("/dev/mqueue") else []
state["ipc"] = sum(len(open("/proc/sysvipc/" + k).read().splitlines()) - 1 for k in ("shm", "sem", "msg"))
libc = ctypes.CDLL(None, use_errno=True)
q = libc.mq_open(b"/klear_leak", os.O_RDONLY)
state["mq_leak"] = q >= 0
try:
    state["key_leak"] = "klear_leak" in open("/proc/keys").read()
except OSError:
    state["key_leak"] = False
me, others = os.getuid(), 0
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():
        try:
            st = open("/proc/%s/status" % p).read()
        except OSError:
            continue
        if int(st.split("Uid:")[1].split()[0]) == me and st.split("State:")[1].split()[0] != "Z":
            others += 1
state["procs"] = others if os.environ.get("CHECK_PROCS", "1") == "1" else 0
d = tempfile.mkdtemp()
with open(d + "/f", "w") as f:
    f.write("x")
state["tempfile"] = open(d + "/f").read()
if os.access("/dev/shm", os.W_OK):  # multiprocessing's semaphores live there
    with open("/dev/shm/h", "w") as f:
        f.write("y")
a, b = map(int, input().split())
print(json.dumps(state, sort_keys=True))
print(a + b)
"""
CLEAN = {
    "tmp": [],
    "shm": [],
    "mq": [],
    "ipc": 0,
    "mq_leak": False,
    "key_leak": False,
    "procs": 0,
    "tempfile": "x",
}


def _cfg(**kw) -> SandboxConfig:
    base = {"test_timeout_s": 3.0, "cpu_time_s": 3, "memory_mb": 512, "tmpfs_mb": TMPFS_MB}
    return SandboxConfig(**{**base, **kw})


@pytest.fixture
def box():  # one server per attack: an attack that gets through cannot fail the next one's test
    b = Sandbox(_cfg())
    b.start()
    yield b
    b.close()


def run(box: Sandbox, code: str, stdin: str = ""):
    return box.run(code, {"kind": "stdin", "stdin": stdin}, "nonce0")


def assert_clean_slate(box: Sandbox, restarts: int) -> None:
    out = run(box, HONEST, "1 2\n")
    assert (out.status, out.exit_code) == ("exited", 0), out.stderr
    state_line, answer = out.stdout.split("\n")[:2]
    assert json.loads(state_line) == CLEAN
    assert answer == "3"
    assert box.restarts == restarts, "the server had to be restarted"


# Each attack: (code, check of the attack's own run). A check gets the TestRun.
def _exited(out) -> bool:
    return out.status == "exited"


def _killed_or_limited(out) -> bool:
    return out.status in ("timeout", "exited") and (out.signal is not None or out.status == "timeout")


ATTACKS = {
    "chmod000_dir_in_tmp": (
        "import os\nos.makedirs('/tmp/a/b/c')\nopen('/tmp/a/b/c/f', 'w').write('x')\n"
        "os.chmod('/tmp/a/b', 0)\nos.chmod('/tmp/a', 0)\nprint('planted')\n",
        lambda out: out.stdout == "planted\n",
    ),
    "chmod000_tmp_itself": (
        "import os\ntry:\n    os.chmod('/tmp', 0)\n    print('chmod ok')\nexcept OSError as e:\n    print(e.errno)\n",
        _exited,
    ),
    "tree_1200_deep": (
        "import os\nos.chdir('/tmp')\nfor i in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\n"
        "open('f', 'w').write('x')\nos.chmod('.', 0)\nprint('planted')\n",
        lambda out: out.stdout == "planted\n",
    ),
    "tree_past_path_max": (  # 40 levels of 250-character names: paths of 10,000 characters
        "import os\nos.chdir('/tmp')\nn = 'x' * 250\nfor i in range(40):\n    os.mkdir(n)\n    os.chdir(n)\n"
        "open('f', 'w').write('x')\nprint('planted')\n",
        lambda out: out.stdout == "planted\n",
    ),
    "files_150k_inodes": (  # prints how many exist, every 1,000: never far past sandbox.tmpfs_inodes
        "import sys\nfor i in range(150000):\n    open('/tmp/f%d' % i, 'w').close()\n"
        "    if i % 1000 == 0:\n        print(i, flush=True)\nprint('made all')\n",
        lambda out: "made all" not in out.stdout and int(out.stdout.split()[-1]) <= 12_000,
    ),
    "sysv_shm": (
        "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.shmget(0x4b4c, 1 << 20, 0o1666))\n",
        lambda out: out.stdout.strip().isdigit(),
    ),
    "sysv_msg_queue": (
        "import ctypes\nlibc = ctypes.CDLL(None)\nq = libc.msgget(0x4b4c, 0o1666)\n"
        "msg = ctypes.create_string_buffer(b'\\x01\\0\\0\\0\\0\\0\\0\\0secret', 14)\n"
        "print(q, libc.msgsnd(q, msg, 6, 0))\n",
        lambda out: out.stdout.split()[1:] == ["0"],
    ),
    "sysv_semaphore": (
        "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.semget(0x4b4c, 4, 0o1666))\n",
        lambda out: out.stdout.strip().isdigit(),
    ),
    "posix_mqueue": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.mq_open(b'/klear_leak', os.O_CREAT | os.O_RDWR, 0o666, None))\n",
        lambda out: int(out.stdout) >= 0,
    ),
    "keyring_add_key": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "k = libc.syscall(248, b'user', b'klear_leak', b'secret', 6, -4)  # add_key to the user keyring\n"
        "if k > 0:\n    libc.syscall(250, 15, k, 2)  # KEYCTL_SET_TIMEOUT: gone in 2 s whatever happens\n"
        "print(k, ctypes.get_errno())\n",
        lambda out: out.stdout.split() == ["-1", "1"],  # EPERM
    ),
    "keyctl_join_session": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.syscall(250, 1, b'klear_leak_session'), ctypes.get_errno())  # KEYCTL_JOIN_SESSION_KEYRING\n",
        lambda out: out.stdout.split() == ["-1", "1"],
    ),
    "unshare_newuser": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x10000000), ctypes.get_errno())\n",
        lambda out: out.stdout.split() == ["-1", "1"],
    ),
    "clone_newuser": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "r = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\nif r == 0:\n    os._exit(0)\n"
        "print(r, ctypes.get_errno())\n",
        lambda out: out.stdout.split() == ["-1", "1"],
    ),
    "unshare_newns_newnet": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x40020000), ctypes.get_errno())\n",
        lambda out: out.stdout.split() == ["-1", "1"],
    ),
    "ptrace_the_server": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())  # PTRACE_ATTACH\n",
        lambda out: out.stdout.split() == ["-1", "1"],
    ),
    "fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        _killed_or_limited,
    ),
    "background_process": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(0.3)\n        open('/tmp/late', 'w').write('x')\n        time.sleep(30)\n"
        "    os._exit(0)\nprint('left')\n",
        lambda out: out.stdout == "left\n",
    ),
    "signal_the_server": (
        "import os, signal\nfor pid in (1, os.getppid()):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as e:\n        print(e.errno)\nos.kill(-1, signal.SIGKILL)  # all of the uid but itself\n",
        lambda out: out.stdout.split() == ["1", "1"],  # EPERM for bwrap's init and the server
    ),
    "dev_shm_fill": (
        "import os\nn = 0\ntry:\n    for i in range(100):\n        with open('/dev/shm/f%d' % i, 'wb') as f:\n"
        "            f.write(b'x' * (8 << 20))\n        n += 8\nexcept OSError:\n    pass\n"
        "print(n)\n",
        lambda out: int(out.stdout) <= TMPFS_MB,
    ),
    "tmp_fill": (
        "import os\nn = 0\ntry:\n    for i in range(100):\n        with open('/tmp/f%d' % i, 'wb') as f:\n"
        "            f.write(b'x' * (8 << 20))\n        n += 8\nexcept OSError:\n    pass\nprint(n)\n",
        lambda out: int(out.stdout) <= TMPFS_MB,
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_leaves_a_clean_slate(box, name):
    code, ok = ATTACKS[name]
    restarts = box.restarts
    out = run(box, code)
    assert ok(out), (out.status, out.signal, out.stdout[-300:], out.stderr[-500:])
    assert_clean_slate(box, restarts)


def test_aggregate_memory_is_bounded_across_processes():
    """Six 80 MB processes under memory_mb=128: RLIMIT_AS lets each live; the guard kills the test."""
    b = Sandbox(_cfg(memory_mb=128, test_timeout_s=5.0))
    try:
        b.start()
        code = (
            "import os, time\npids = []\nfor i in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
            "        b = bytearray(80 << 20)\n        for j in range(0, len(b), 4096):\n            b[j] = 1\n"
            "        open('/tmp/m%d' % i, 'w').write('x')\n        time.sleep(2)\n        os._exit(0)\n"
            "    pids.append(pid)\nfor p in pids:\n    os.waitpid(p, 0)\nprint(len(os.listdir('/tmp')))\n"
        )
        out = run(b, code)
        assert out.signal == 9 and out.stdout == "", (out.status, out.stdout, out.stderr[-300:])
        assert b.guard_kills == 1
        assert_clean_slate(b, 0)
        # a single process within the bound is not touched
        out = run(b, "b = bytearray(60 << 20)\nprint(len(b))\n")
        assert (out.status, out.exit_code, out.stdout) == ("exited", 0, f"{60 << 20}\n")
        # nor are three processes of 20 MB each (the interpreter's shared pages counted in each)
        honest = (
            "import os, time\nb = bytearray(20 << 20)\nkids = []\nfor i in range(2):\n    pid = os.fork()\n"
            "    if pid == 0:\n        c = bytearray(20 << 20)\n        time.sleep(0.3)\n        os._exit(0)\n"
            "    kids.append(pid)\nprint(sum(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids))\n"
        )
        out = run(b, honest)
        assert (out.status, out.exit_code, out.stdout) == ("exited", 0, "0\n"), out.stderr
        assert b.guard_kills == 1
    finally:
        b.close()


def test_unprivileged_mode_also_gets_a_clean_slate():
    """The mode without a uid switch (Klear not run as root): /tmp is the server's, the wipe must restore it."""
    if os.geteuid() != 0 or sandbox_mod.shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to start a sandbox as an unprivileged user")
    launcher = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    b = Sandbox(_cfg(), privileged=False, launcher=launcher)
    try:
        try:
            b.start()
        except sandbox_mod.SandboxUnavailable as exc:
            pytest.skip(f"unprivileged user namespaces are not available here: {exc}")
        honest = "import os\nos.environ['CHECK_PROCS'] = '0'\n" + HONEST  # children share the server's uid
        for name in (
            "chmod000_tmp_itself",
            "chmod000_dir_in_tmp",
            "tree_1200_deep",
            "sysv_shm",
            "keyring_add_key",
        ):
            out = run(b, ATTACKS[name][0])
            assert ATTACKS[name][1](out) or name == "chmod000_tmp_itself", (name, out)
            out = run(b, honest, "1 2\n")
            assert (out.status, out.exit_code) == ("exited", 0), (name, out.stderr)
            assert json.loads(out.stdout.split("\n")[0]) == CLEAN, name
    finally:
        b.close()


def test_seccomp_program_is_built_for_both_arches_and_refuses_others(monkeypatch):
    from klear.rewards.sandbox import seccomp

    for machine, (audit_arch, deny, *_rest) in seccomp.ARCHES.items():
        prog = seccomp.build(machine)
        assert len(prog) % 8 == 0 and len(prog) // 8 == len(set(deny.values())) + 12 - (machine == "aarch64")
        # first instruction loads the arch, the second compares it with this table's AUDIT_ARCH
        assert struct_unpack(prog, 0)[3] == 4 and struct_unpack(prog, 1)[3] == audit_arch
    with pytest.raises(seccomp.SeccompUnsupported, match="riscv64"):
        seccomp.build("riscv64")
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    with pytest.raises(sandbox_mod.SandboxUnavailable, match="no seccomp filter"):
        Sandbox(_cfg()).start()


def struct_unpack(prog: bytes, i: int) -> tuple[int, int, int, int]:
    import struct

    return struct.unpack_from("=HBBI", prog, 8 * i)


def test_tmpfs_inodes_must_be_sane():
    from pydantic import ValidationError

    assert SandboxConfig(tmpfs_inodes=64).tmpfs_inodes == 64
    with pytest.raises(ValidationError, match="tmpfs_inodes"):
        SandboxConfig(tmpfs_inodes=10)


def test_a_correct_huge_output_is_not_an_output_limit():
    """Expected output of 3 MiB with sandbox.max_output_bytes at 1 MiB: the cap rises to fit it."""
    from klear.config import CodeRewardConfig, RewardConfig
    from klear.rewards.code import code_reward, output_floor

    assert output_floor("YES\n") == output_floor("NO\n") == output_floor("x" * 32_000) == 128 << 10
    assert output_floor("x" * (3 << 20)) == (6 << 20) + (64 << 10)
    cfg = RewardConfig(
        code=CodeRewardConfig(soft_mapping="pass_rate"), sandbox=_cfg(max_output_bytes=1 << 20)
    )
    expected = "7" * (3 << 20) + "\n"
    gt = {"inputs": ["3\n"], "outputs": [expected]}
    ok = code_reward("<think>ok</think>\n```python\nprint('7' * (int(input()) << 20))\n```\n", gt, cfg)
    assert (ok.passed, ok.total, ok.score) == (1, 1, 1.0), ok.detail
    flood = code_reward("<think>ok</think>\n```python\nwhile True:\n    print('7' * 65536)\n```\n", gt, cfg)
    assert flood.passed == 0
