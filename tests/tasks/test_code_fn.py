"""The built-in code task, judged by the real code reward in the sandbox.

Expected scores are hand counts: every problem has 16 tests, eight on each piece of the
function, so a program right on one piece passes 8/16 (soft 0.5, signed 0.0, hard 0).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass

import pytest

from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
from klear.rewards.code import code_reward, extract_code, parse_tests
from klear.rewards.registry import reward_path
from klear.rewards.sandbox import close_all
from klear.rollout import SamplingParams
from klear.tasks import generate_problems, split_of, task_rows
from klear.tasks.code_fn import HALF, SHOWN, CodeFnTask, PiecewiseFn, format_code_solution, solution_steps
from klear.tasks.evaluate import exact_match_accuracy

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def _cfg(mode: str = "soft", mapping: str = "pass_rate") -> RewardConfig:
    return RewardConfig(
        code=CodeRewardConfig(mode=mode, soft_mapping=mapping),  # default max_tests 16: all of them
        sandbox=SandboxConfig(test_timeout_s=2.0, cpu_time_s=3, memory_mb=512),
    )


@pytest.fixture(scope="module", autouse=True)
def _close():
    yield
    close_all()


def _fn(meta: dict[str, int]) -> PiecewiseFn:
    return PiecewiseFn(**meta)


def _reply(program: str) -> str:
    return format_code_solution(["thinking"], program)


def test_the_worked_example_by_hand():
    f = PiecewiseFn(a=2, b=3, c=4, e=2, d=6)
    assert [f(x) for x in SHOWN] == [3, 5, 7, 9, 6, 8, 10, 12]
    assert solution_steps(f) == [
        "b=3",
        "a=5-3=2",
        "2:7 5+2=7 ok",
        "3:9 7+2=9 ok",
        "4:6 9+2=11 no",
        "c=4 d=6",
        "e=8-6=2",
    ]
    assert f.program() == "x=int(input())\nprint(2*x+3 if x<4 else 2*(x-4)+6)\n"
    # negative slope: the check line subtracts
    g = PiecewiseFn(a=-1, b=6, c=3, e=1, d=6)
    assert solution_steps(g)[1:4] == ["a=5-6=-1", "2:4 5-1=4 ok", "3:6 4-1=3 no"]
    assert g.test_inputs() == list(range(-5, 11))


def test_problems_are_consistent():
    """The prompt shows f(0..7); the trace's figures follow from it; 16 tests, half per piece."""
    for p in generate_problems("code-fn", "train", 300, seed=3):
        f = _fn(p.meta)
        shown = dict(pair.split(":") for pair in p.question.split("\n")[1].split())
        assert {int(k): int(v) for k, v in shown.items()} == {x: f(x) for x in SHOWN}
        assert all(0 <= f(x) <= 19 for x in SHOWN)
        assert f.d != f.a * f.c + f.b  # the kink shows in the values
        lines = p.solution.split("</think>")[0].removeprefix("<think>\n").strip().split("\n")
        assert lines[0] == f"b={f(0)}" and lines[1].endswith(f"={f.a}")
        checks = lines[2:-2]
        assert len(checks) == f.c - 1  # x = 2..c, the last one breaks
        assert all(line.endswith(" ok") for line in checks[:-1]) and checks[-1].endswith(" no")
        assert lines[-2] == f"c={f.c} d={f.d}" and lines[-1] == f"e={f(f.c + 1)}-{f.d}={f.e}"
        assert extract_code(p.solution) == f.program()
        spec = parse_tests(p.answer)
        xs = [int(t.stdin) for t in spec.tests]
        assert xs == list(range(f.c - HALF, f.c + HALF))
        assert [int(t.expected) for t in spec.tests] == [f(x) for x in xs]
        assert sum(x < f.c for x in xs) == HALF


def test_rows_go_to_the_code_reward_and_are_deterministic():
    rows = task_rows("code-fn", "test", 20, seed=0)
    assert rows == task_rows("code-fn", "test", 20, seed=0)
    assert rows != task_rows("code-fn", "test", 20, seed=1)
    r = rows[0]
    assert r["ability"] == "code" and r["data_source"] == "klear/code-fn"
    assert reward_path(r, _cfg()) == "klear.rewards.code:code_reward"
    assert all(split_of("code-fn", x["prompt"][0]["content"]) == "test" for x in rows)
    train = {x["prompt"][0]["content"] for x in task_rows("code-fn", "train", 3000, seed=0)}
    assert not train & {x["prompt"][0]["content"] for x in rows}
    # the task's own knobs: a narrower family is still drawn only from its ranges
    narrow = CodeFnTask(slopes=(1,), max_c=2)
    for i in range(50):
        m = narrow.sample(random.Random(i)).meta
        assert m["a"] == m["e"] == 1 and m["c"] == 2


@needs_bwrap
def test_sft_traces_score_one():
    rows = task_rows("code-fn", "train", 40, seed=5)
    for row in rows:
        res = code_reward(row["extra_info"]["solution"], row["reward_model"]["ground_truth"], _cfg("hard"))
        assert (res.score, res.correct, res.passed, res.total) == (1.0, True, 16, 16), res.detail


@dataclass
class _Case:
    program: str
    soft: float
    signed: float
    hard: float


def _cases(f: PiecewiseFn) -> dict[str, _Case]:
    first = f"{f.a}*x+{f.b}"
    second = f"{f.e}*(x-{f.c})+{f.d}"
    return {
        "correct": _Case(f.program(), 1.0, 1.0, 1.0),
        # one piece right, the other off by one everywhere: 8 of 16 tests
        "first piece only": _Case(
            f"x=int(input())\nprint({first} if x<{f.c} else {second}+1)\n", 0.5, 0.0, 0.0
        ),
        "second piece only": _Case(
            f"x=int(input())\nprint({first}+1 if x<{f.c} else {second})\n", 0.5, 0.0, 0.0
        ),
        # the kink one place late: only x = c fails, 15 of 16
        "kink off by one": _Case(
            f"x=int(input())\nprint({first} if x<{f.c + 1} else {second})\n", 15 / 16, 7 / 8, 0.0
        ),
        "wrong": _Case("x=int(input())\nprint(x*1000+777)\n", 0.0, -1.0, 0.0),
        "crash": _Case("x=int(input())\nprint(1//0)\n", 0.0, -1.0, 0.0),
    }


@needs_bwrap
def test_partly_right_programs_get_partial_soft_reward_and_no_hard_reward():
    p = generate_problems("code-fn", "test", 1, seed=0)[0]
    f = _fn(p.meta)
    for name, case in _cases(f).items():
        got = {
            "soft": code_reward(_reply(case.program), p.answer, _cfg("soft")),
            "signed": code_reward(_reply(case.program), p.answer, _cfg("soft", "signed")),
            "hard": code_reward(_reply(case.program), p.answer, _cfg("hard")),
        }
        assert got["soft"].score == pytest.approx(case.soft), (name, got["soft"].detail)
        assert got["signed"].score == pytest.approx(case.signed), name
        assert got["hard"].score == case.hard, name
        assert got["soft"].total == 16
        if name == "crash":
            assert "runtime_error 16" in got["soft"].detail
    # no program, or no </think>: nothing to run
    assert code_reward("<think>x</think> 42", p.answer, _cfg()).flags == ("no_answer",)
    assert code_reward("```python\nprint(1)\n```", p.answer, _cfg()).score == 0.0


@dataclass
class _Out:
    text: str
    response_ids: list[int]
    truncated: bool = False


class _Backend:
    """Answers each prompt with a fixed reply per prompt text."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies

    def generate(self, prompts, sampling):
        return [_Out(self.replies[p[-1]["content"]], [0] * 5) for p in prompts for _ in range(sampling.n)]


@needs_bwrap
def test_heldout_evaluation_runs_code_rows_in_the_sandbox():
    rows = task_rows("code-fn", "test", 4, seed=0)
    qs = [r["prompt"][0]["content"] for r in rows]
    right = {q: r["extra_info"]["solution"] for q, r in zip(qs, rows, strict=True)}
    # two right, one half right, one with no program
    half = _cases(_fn(generate_problems("code-fn", "test", 4, seed=0)[2].meta))["first piece only"].program
    replies = {qs[0]: right[qs[0]], qs[1]: right[qs[1]], qs[2]: _reply(half), qs[3]: "no idea"}
    res = exact_match_accuracy(_Backend(replies), rows, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert res["accuracy"] == 0.5
    assert res["pass_rate"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    # math rows keep the boxed exact match and report no pass rate
    math_rows = task_rows("addition-2to3", "test", 2, seed=0)
    replies = {r["prompt"][0]["content"]: r["extra_info"]["solution"] for r in math_rows}
    res = exact_match_accuracy(
        _Backend(replies), math_rows, SamplingParams(temperature=0.0, max_new_tokens=8)
    )
    assert res["accuracy"] == 1.0 and "pass_rate" not in res


def test_ground_truth_is_apps_json():
    p = generate_problems("code-fn", "train", 1, seed=0)[0]
    gt = json.loads(p.answer)
    assert set(gt) == {"inputs", "outputs"} and len(gt["inputs"]) == 2 * HALF
    assert all(re.fullmatch(r"-?\d+\n", s) for s in gt["inputs"] + gt["outputs"])


def test_the_tiny_tokenizer_covers_prompts_and_programs():
    """Character-level: every character of a prompt and a worked solution is its own known token."""
    from klear.models.tiny import build_tokenizer

    tok = build_tokenizer()
    for row in task_rows("code-fn", "train", 50, seed=2):
        for text in (row["prompt"][0]["content"], row["extra_info"]["solution"]):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
