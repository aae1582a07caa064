"""Reward pool: order, hard per-item bound, crash recovery, dispatch through REWARDS, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from klear.config import RewardConfig
from klear.rewards.pool import RewardPool, _Queue, reward_metrics, score_batch
from klear.rewards.registry import REWARDS, RowError, failure_score, reward_path
from klear.types import RewardResult

BOUND = 3.0  # item_timeout_s for these tests
VERIFY = 1.0  # math.verify_timeout_s: ~10x a slow legitimate verification, well below BOUND
SLACK = 1.5  # kill + bookkeeping + a loaded 2-core machine

# User reward functions live in a real module so the workers can import them by dotted path.
USER_MODULE = textwrap.dedent(
    """
    import os, subprocess, time
    from klear.types import RewardResult

    def toy(response, ground_truth, cfg):
        kind, _, arg = response.partition(":")
        if kind == "sleep":
            time.sleep(float(arg))
        elif kind == "hang":
            child = subprocess.Popen(["sleep", "1000"])  # a grandchild the kill must reach too
            with open(arg, "w") as f:
                f.write(f"{os.getpid()} {child.pid}")
            while True:
                time.sleep(0.1)
        elif kind == "crash":
            os._exit(7)
        elif kind == "raise":
            raise ValueError("user function exploded")
        elif kind == "pid":
            return RewardResult(score=float(os.getpid()), correct=True)
        elif kind == "bool":
            return arg == ground_truth
        ok = arg == str(ground_truth)
        return RewardResult(score=1.0 if ok else 0.0, correct=ok, answer=arg)
    """
)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("userfns")
    (root / "klear_test_user_rewards.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root))  # workers receive the parent's sys.path
    yield "klear_test_user_rewards:toy"
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def cfg(user_module: str) -> RewardConfig:
    return RewardConfig(
        num_workers=2,
        item_timeout_s=BOUND,
        custom={"toy": user_module},
        math={"verify_timeout_s": VERIFY},
    )


@pytest.fixture(scope="module")
def pool(cfg: RewardConfig):
    with RewardPool(cfg) as p:
        yield p


def toy_row(truth: str = "a") -> dict:
    return {
        "data_source": "toy",
        "ability": "puzzle",
        "reward_model": {"style": "rule", "ground_truth": truth},
    }


def math_row(truth: str) -> dict:
    return {
        "data_source": "aime",
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": truth},
    }


def solved(answer: str) -> str:
    return f"<think>...</think> \\boxed{{{answer}}}"


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ---------------------------------------------------------------------------------------------


def test_results_in_input_order_with_mixed_durations(pool: RewardPool) -> None:
    rows = [toy_row("a"), math_row("1/2"), toy_row("b"), math_row("x+1"), toy_row("c"), math_row("3")]
    responses = ["sleep:0.4", solved("0.5"), "ok:b", solved("1+x"), "sleep:0.1", solved("4")]
    results = pool.score(rows, responses)
    assert [r.correct for r in results] == [False, True, True, True, False, False]
    assert [r.answer for r in results] == ["0.4", "0.5", "b", "1+x", "0.1", "4"]
    assert pool.last_metrics["items"] == 6
    assert pool.last_metrics["accuracy"] == pytest.approx(3 / 6)


def test_stuck_user_function_is_killed_within_bound_and_rest_completes(
    pool: RewardPool, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    # 16 items of one prompt: chunks of 4, so the hang is mid-chunk and the rest of its chunk
    # must be handed to another worker after the kill
    rows = [toy_row("a")] * 16
    responses = ["ok:a", f"hang:{pid_file}", "ok:a", "ok:x", "sleep:0.2"] + ["ok:a"] * 11
    start = time.monotonic()
    results = pool.score(rows, responses)
    elapsed = time.monotonic() - start
    assert elapsed < BOUND + SLACK, elapsed
    assert results[1].flags == ("timeout",)
    assert (results[1].score, results[1].correct) == (0.0, False)
    assert "item_timeout_s" in (results[1].detail or "")
    others = [r for i, r in enumerate(results) if i != 1]
    assert [r.correct for r in others] == [True, True, False, False] + [True] * 11
    assert all(r.flags == () for r in others)
    assert pool.last_metrics["flag/timeout"] == 1
    assert pool.last_metrics["worker_restarts"] == 1
    worker_pid, grandchild_pid = map(int, pid_file.read_text().split())
    deadline = time.monotonic() + 5
    while not (gone(worker_pid) and gone(grandchild_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(worker_pid) and gone(grandchild_pid)  # the whole process group was killed


def test_crashing_user_function_is_flagged_error_and_pool_keeps_working(pool: RewardPool) -> None:
    results = pool.score([toy_row("a")] * 12, ["ok:a", "crash:", "ok:a", "raise:"] + ["ok:a"] * 8)
    assert results[1].flags == ("error",)
    assert "exit code 7" in (results[1].detail or "")
    assert results[3].flags == ("error",)
    assert "user function exploded" in (results[3].detail or "")
    assert all(r.correct and r.flags == () for i, r in enumerate(results) if i not in (1, 3))
    assert pool.last_metrics["flag/error"] == 2
    assert pool.last_metrics["worker_restarts"] == 1  # os._exit kills a worker; an exception does not
    again = pool.score([toy_row("a")] * 3, ["ok:a"] * 3)
    assert all(r.correct for r in again)
    assert pool.last_metrics["worker_restarts"] == 0


def test_work_is_spread_over_workers(pool: RewardPool) -> None:
    results = pool.score([toy_row()] * 6, ["sleep:0.15"] * 5 + ["pid:"])
    assert all(r.flags == () for r in results)
    pids = {int(r.score) for r in pool.score([toy_row()] * 2, ["pid:"] * 2)}
    assert os.getpid() not in pids


def test_pathological_math_flagged_timeout_within_bound(pool: RewardPool) -> None:
    # the tower and the factorial are screened at once (klear.rewards.math_screen), the nested
    # fraction is decided exactly (it is 2), the nested braces go to math_verify and time out
    answers = [
        "9^{9^{9}}",
        "1000000!",
        "\\frac{1}{" * 300 + "2" + "}" * 300,
        "{" * 200 + "x" + "}" * 200,
        "5",
    ]
    start = time.monotonic()
    results = pool.score([math_row("5")] * 5, [solved(a) for a in answers])
    elapsed = time.monotonic() - start
    assert [r.flags for r in results] == [("timeout",), ("timeout",), (), ("timeout",), ()]
    assert [r.score for r in results] == [-1.0, -1.0, -1.0, -1.0, 1.0]
    assert elapsed < BOUND + SLACK, elapsed  # one inner timeout of VERIFY s


def test_score_from_a_thread(pool: RewardPool) -> None:
    out: list[object] = []

    def target() -> None:
        try:
            out.append(pool.score([math_row("x+1"), toy_row("a")], [solved("1+x"), "ok:a"]))
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive()
    results = out[0]
    assert isinstance(results, list), results
    assert [r.correct for r in results] == [True, True]


def test_number_and_bool_returns_are_wrapped(pool: RewardPool) -> None:
    results = pool.score([toy_row("a"), toy_row("a")], ["bool:a", "bool:b"])
    assert [(r.score, r.correct) for r in results] == [(1.0, True), (0.0, False)]


def test_unknown_row_raises_naming_the_row(pool: RewardPool) -> None:
    rows = [
        math_row("1"),
        {"data_source": "poems", "ability": "poetry", "reward_model": {"ground_truth": "x"}},
    ]
    with pytest.raises(RowError, match=r"row 1: .*data_source='poems', ability='poetry'") as info:
        pool.score(rows, ["a", "b"])
    assert info.value.index == 1
    with pytest.raises(RowError, match=r"row 0: missing 'reward_model.ground_truth'"):
        pool.score([{"ability": "math", "reward_model": {"style": "rule"}}], ["a"])
    with pytest.raises(ValueError, match="2 rows but 1 responses"):
        pool.score([math_row("1")] * 2, ["a"])


def test_dispatch_order_custom_then_ability_then_data_source(cfg: RewardConfig) -> None:
    assert reward_path(toy_row(), cfg) == cfg.custom["toy"]
    assert reward_path({"data_source": "toy", "ability": "math"}, cfg) == cfg.custom["toy"]
    assert reward_path({"data_source": "aime", "ability": "math"}, cfg) == REWARDS["math"]
    assert reward_path({"data_source": "code"}, cfg) == REWARDS["code"]
    assert reward_path({"data_source": "x", "ability": "code"}, cfg) == "klear.rewards.code:code_reward"


def test_failure_scores() -> None:
    cfg = RewardConfig()
    assert failure_score(REWARDS["math"], cfg) == -1.0
    assert failure_score(REWARDS["math"], RewardConfig(math={"negative": 0.0})) == 0.0
    assert failure_score(REWARDS["code"], cfg) == -1.0
    assert failure_score(REWARDS["code"], RewardConfig(code={"soft_mapping": "pass_rate"})) == 0.0
    assert failure_score("pkg.mod:fn", cfg) == 0.0
    assert failure_score(REWARDS["math"], RewardConfig(failure_score=-3.0)) == -3.0


def test_custom_paths_are_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="dotted path"):
        RewardConfig(custom={"toy": "not a path"})
    with pytest.raises(ValidationError, match=r"verify_timeout_s = 3\.0 must be below"):
        RewardConfig(item_timeout_s=2.0)


def test_reward_metrics_counts() -> None:
    results = [
        RewardResult(score=1.0, correct=True),
        RewardResult(score=-1.0, correct=False, flags=("timeout",)),
        RewardResult(score=-0.5, correct=False, flags=("format", "no_answer")),
    ]
    m = reward_metrics(results)
    assert m["mean_score"] == pytest.approx(-0.5 / 3)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert (m["flag/timeout"], m["flag/format"], m["flag/no_answer"], m["flag/error"]) == (1, 1, 1, 0)


def test_score_batch_one_shot_and_closed_pool(cfg: RewardConfig) -> None:
    one = cfg.model_copy(update={"num_workers": 1})
    assert [r.correct for r in score_batch([math_row("2"), toy_row("a")], [solved("2"), "ok:b"], one)] == [
        True,
        False,
    ]
    pool = RewardPool(one)
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.score([math_row("1")], ["x"])


def test_interrupted_batch_leaves_no_stale_work_behind(pool: RewardPool) -> None:
    class Stop(Exception):
        pass

    def stop_at_first(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        pool.score([toy_row("a")] * 3, ["sleep:1.0", "ok:a", "ok:a"], progress=stop_at_first)
    # the abandoned 1 s item must neither answer for this batch's item 0 nor delay item 1
    results = pool.score([toy_row("1.5"), toy_row("b")], ["sleep:1.5", "ok:b"])
    assert [(r.answer, r.correct, r.flags) for r in results] == [("1.5", True, ()), ("b", True, ())]
    assert pool.last_metrics["flag/timeout"] == 0


def test_queue_keeps_a_workers_group_and_never_idles() -> None:
    q = _Queue(["a", "a", "a", "b", "b", "c"])
    assert q.take(None, set()) == 0  # oldest group
    assert q.take(None, {"a"}) == 3  # another worker: the oldest group nobody is on
    assert q.take("a", {"a", "b"}) == 1  # stays on its group
    q.put_back(1)  # e.g. its worker died before receiving it
    assert q.take("b", {"a", "b"}) == 4
    assert q.take("b", {"a"}) == 5  # its group is done: next free group
    assert q.take(None, {"a"}) == 1  # every group busy or done: help with what is left
    assert q.take(None, set()) == 2
    assert len(q) == 0


def test_first_pool_of_a_process_created_inside_a_thread() -> None:
    script = textwrap.dedent(
        """
        import threading
        from klear.config import RewardConfig
        from klear.rewards.pool import score_batch
        row = {"ability": "math", "reward_model": {"ground_truth": "x+1"}}
        out = []
        t = threading.Thread(target=lambda: out.append(score_batch([row], ["<think>.</think>\\\\boxed{1+x}"],
                             RewardConfig(num_workers=1))))
        t.start(); t.join(60)
        print(out[0][0].correct, out[0][0].flags)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True ()"
