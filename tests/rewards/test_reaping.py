"""No sandbox outlives `klear reward score` or the pool: on normal exit, and within 2 s of SIGTERM/SIGINT.

Processes are tracked by the pids (and start times) this test saw below the CLI it started,
read from /proc children files, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import klear
import klear.rewards.sandbox as sandbox_mod
from klear.config import RewardConfig, SandboxConfig
from klear.rewards.lifecycle import descendants, identity, running
from klear.rewards.pool import RewardPool

pytestmark = pytest.mark.skipif(sandbox_mod.shutil.which("bwrap") is None, reason="bubblewrap not installed")

SRC = str(Path(klear.__file__).resolve().parents[1])
SLOW = "<think>ok</think>\n```python\nimport time\ntime.sleep(60)\nprint(1)\n```"
FAST = "<think>ok</think>\n```python\nprint(int(input()) + 1)\n```"


def code_row(response: str) -> dict:
    return {
        "data_source": "codecontests",
        "ability": "code",
        "prompt": [{"role": "user", "content": "add one"}],
        "reward_model": {"style": "rule", "ground_truth": {"inputs": ["1\n"], "outputs": ["2\n"]}},
        "response": response,
    }


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_reaps_every_sandbox_within_two_seconds(tmp_path, sig):
    src = tmp_path / "in.jsonl"
    # four different programs: the pool runs a repeated response once (klear.rewards.pool_inline)
    slow = [SLOW.replace("print(1)", f"print({i})") for i in range(4)]
    src.write_text("".join(json.dumps(code_row(s)) + "\n" for s in slow))
    cmd = [sys.executable, "-m", "klear", "reward", "score", "--input", str(src), "--output"]
    cmd += [str(tmp_path / "out.jsonl"), "--no-progress", "reward.num_workers=2", "reward.item_timeout_s=120"]
    cmd += ["reward.sandbox.test_timeout_s=60", "reward.sandbox.cpu_time_s=60"]
    env = {**os.environ, "PYTHONPATH": SRC}
    cli = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # wait until both workers run a test: two sandboxes, each with its server's test child asleep
        deadline = time.monotonic() + 90
        seen: set[tuple[int, str]] = set()
        while time.monotonic() < deadline:
            tree = descendants(cli.pid)
            seen |= {i for i in map(identity, tree) if i is not None}
            if sum(_comm(p) == "bwrap" for p in tree) >= 4:  # two sandboxes: bwrap and its init each
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the sandboxes never started: {[_comm(p) for p in descendants(cli.pid)]}")
        time.sleep(1.0)  # the servers start and fork each its first (sleeping) test
        seen |= {i for i in map(identity, descendants(cli.pid)) if i is not None}
        t0 = time.monotonic()
        cli.send_signal(sig)
        cli.wait(timeout=5)
        left = [i for i in seen if running(i)]
        while left and time.monotonic() - t0 < 2.0:
            time.sleep(0.02)
            left = [i for i in left if running(i)]
        elapsed = time.monotonic() - t0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert left == [], f"still running {elapsed:.2f} s after {sig.name}: {[(p, _comm(p)) for p, _ in left]}"
    assert cli.returncode == (143 if sig == signal.SIGTERM else 130)
    assert len(seen) >= 10


def test_pool_close_reaps_sandboxes_before_returning():
    cfg = RewardConfig(num_workers=1, sandbox=SandboxConfig(test_timeout_s=5.0))
    pool = RewardPool(cfg)
    try:
        results = pool.score([code_row(FAST)] * 2, [FAST] * 2)
        assert [r.score for r in results] == [1.0, 1.0]
        tree = [i for p in pool.worker_pids for i in map(identity, [p, *descendants(p)]) if i is not None]
        assert sum(_comm(p) == "bwrap" for p, _ in tree) == 2  # the worker's sandbox is up
    finally:
        pool.close()
    assert [i for i in tree if running(i)] == []  # nothing lives on once close() returned


def test_pool_reports_the_memory_bound_at_start_up(caplog):
    caplog.set_level("INFO", logger="klear.rewards.lifecycle")
    with RewardPool(RewardConfig(num_workers=1)) as pool:
        assert pool.memory_bound == "memory_guard"
    assert "aggregate memory bound per test by memory_guard (1024 MiB" in caplog.text


def test_signals_exit_raises_once_then_ignores_until_the_block_is_left():
    from klear.rewards.lifecycle import signals_exit

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc, signals_exit():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        finally:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the reaping cannot be interrupted
            os.kill(os.getpid(), signal.SIGINT)  # ignored
    assert exc.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == before
