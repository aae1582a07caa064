"""Code reward: extraction, the three ground-truth formats, comparison and the score table.

Every expected score here is hand-computed from the pass count: pass_rate p = passed/total,
signed 2p - 1, hard all-or-nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest

from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
from klear.rewards.code import (
    TestCase,
    code_reward,
    extract_code,
    parse_tests,
    select_tests,
)
from klear.rewards.sandbox import close_all

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

SUM_GT = {"inputs": ["1 2\n", "3 4\n", "10 -5\n", "0 0\n"], "outputs": ["3\n", "7\n", "5\n", "0\n"]}
SUM_OK = "a, b = map(int, input().split())\nprint(a + b)\n"


def wrap(code: str) -> str:
    return f"<think>\nlet me think\n</think>\nHere it is:\n```python\n{code}```\n"


@pytest.fixture(scope="module")
def cfg() -> RewardConfig:
    return RewardConfig(
        code=CodeRewardConfig(soft_mapping="pass_rate", max_tests=None),
        sandbox=SandboxConfig(test_timeout_s=1.0, cpu_time_s=3, memory_mb=512),
    )


@pytest.fixture(scope="module", autouse=True)
def _close():
    yield
    close_all()


# ------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------


def test_extract_last_block_after_last_think_end():
    resp = (
        "<think>```python\nprint('draft')\n```</think>"
        "```python\nprint(1)\n```\ntext\n```python\nprint(2)\n```"
    )
    assert extract_code(resp) == "print(2)\n"


def test_extract_ignores_blocks_inside_think_and_other_languages():
    assert extract_code("<think>```python\nprint(1)\n```</think> no code") is None
    assert extract_code("</think>```cpp\nint main(){}\n```") is None
    assert extract_code("</think>```py\nprint(3)\n```") == "print(3)\n"


def test_extract_without_think_end_is_none():
    assert extract_code("```python\nprint(1)\n```") is None


def test_extract_uses_last_think_end():
    assert extract_code("</think>```python\na\n```</think>```python\nb\n```") == "b\n"


# ------------------------------------------------------------------------------------------
# Ground-truth formats
# ------------------------------------------------------------------------------------------


def test_parse_apps_stdin_and_json_string():
    spec = parse_tests(json.dumps(SUM_GT))
    assert spec.source_format == "apps"
    assert [t.kind for t in spec.tests] == ["stdin"] * 4
    assert spec.tests[1].stdin == "3 4\n" and spec.tests[1].expected == "7\n"


def test_parse_apps_list_of_lines_is_joined():
    spec = parse_tests({"inputs": [["1", "2"]], "outputs": [["3", "4"]]})
    assert spec.tests[0].stdin == "1\n2" and spec.tests[0].expected == "3\n4"


def test_parse_apps_call_based():
    spec = parse_tests({"inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]], "fn_name": "add"})
    assert spec.tests[0] == TestCase(kind="call", fn_name="add", args=(1, 2), expected=[3])


def test_parse_livecodebench_both_testtypes():
    gt = [
        {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
        {"input": "[1, 2]\n3", "output": "[4, 5]", "testtype": "functional", "fn_name": "shift"},
    ]
    spec = parse_tests(gt)
    assert spec.source_format == "livecodebench"
    assert spec.tests[0].kind == "stdin"
    assert spec.tests[1] == TestCase(kind="call", fn_name="shift", args=([1, 2], 3), expected=[4, 5])
    wrapped = parse_tests({"tests": [gt[1] | {"fn_name": None}], "fn_name": "shift"})
    assert wrapped.tests[0].fn_name == "shift"


def test_parse_humaneval():
    spec = parse_tests(
        {"test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "inc"}
    )
    assert spec.source_format == "humaneval"
    assert spec.tests[0].kind == "check" and spec.tests[0].entry_point == "inc"


@pytest.mark.parametrize(
    ("gt", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"inputs": ["1"], "outputs": []}, "'inputs' has 1 items but 'outputs' has 0"),
        ({"inputs": [], "outputs": []}, "has no tests"),
        ({"inputs": [[1]], "outputs": [1], "fn_name": "no good"}, "must be a Python identifier"),
        ([{"input": "1"}], "test [0] must be an object with 'input' and 'output'"),
        ([{"input": "1", "output": "1", "testtype": "magic"}], "testtype 'magic'"),
        ([{"input": "1", "output": "1", "testtype": "functional"}], "names no function"),
        ([{"input": "{", "output": "1", "testtype": "functional", "fn_name": "f"}], "must be JSON lines"),
        ({"test": "assert True", "entry_point": "f"}, "defining check(candidate)"),
        ({"question": "?"}, "not understood (got ['question'])"),
        ({"inputs": [1], "outputs": ["1"]}, "inputs[0] must be a string"),
    ],
)
def test_parse_errors_are_precise(gt, message):
    with pytest.raises(ValueError, match=None) as info:
        parse_tests(gt)
    assert message in str(info.value)


# ------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------


# tokens_match / values_match: tests/rewards/test_compare.py


# ------------------------------------------------------------------------------------------
# Test selection
# ------------------------------------------------------------------------------------------


def test_select_random_is_seeded_per_problem_and_stable():
    gt = {"inputs": [str(i) for i in range(40)], "outputs": [str(i) for i in range(40)]}
    spec = parse_tests(gt)
    ccfg = CodeRewardConfig(max_tests=16, seed=3)
    a, b = select_tests(spec, ccfg), select_tests(parse_tests(json.dumps(gt)), ccfg)
    assert a == b and len(a) == 16 and len(set(a)) == 16
    other = select_tests(spec, CodeRewardConfig(max_tests=16, seed=4))
    assert other != a


def test_select_shortest_first():
    gt = {"inputs": ["x" * n for n in (5, 1, 9, 3)], "outputs": ["", "", "", ""]}
    chosen = select_tests(parse_tests(gt), CodeRewardConfig(max_tests=2, test_selection="shortest"))
    assert [t.stdin for t in chosen] == ["x", "xxx"]


# ------------------------------------------------------------------------------------------
# The score table (runs code in the sandbox)
# ------------------------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize(
    ("code", "passed", "flags"),
    [
        (SUM_OK, 4, ()),  # correct
        ("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n", 3, ()),  # partial: 10 -5 fails
        ("print(42)\n", 0, ()),  # wrong
        ("a, b = map(int, input().split())\nprint(a // b)\n", 0, ()),  # 1//2=0, 3//4=0, -2, div by 0
        ("a, b = map(int, input().split())\nwhile a > 5:\n    pass\nprint(a + b)\n", 3, ("timeout",)),
        ("def main(:\n    pass\n", 0, ()),  # syntax error
        ("import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\nsys.exit(0)\n", 4, ()),
        ("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)\n", 0, ()),  # nonzero exit
    ],
)
def test_stdin_score_table(cfg, code, passed, flags):
    res = code_reward(wrap(code), SUM_GT, cfg)
    assert (res.passed, res.total) == (passed, 4), res.detail
    assert res.score == pytest.approx(passed / 4)
    assert res.correct is (passed == 4)
    assert res.flags == flags
    assert res.answer == code


@needs_bwrap
def test_runtime_error_detail_names_the_exception(cfg):
    res = code_reward(wrap("print(1 / 0)\n"), SUM_GT, cfg)
    assert res.passed == 0 and "ZeroDivisionError" in res.detail and "runtime_error 4" in res.detail


@needs_bwrap
def test_runtime_error_is_named_even_after_a_flood_of_stderr(cfg):
    res = code_reward(wrap("import sys\nsys.stderr.write('noise ' * 100000)\nprint(1 / 0)\n"), SUM_GT, cfg)
    assert res.passed == 0 and "ZeroDivisionError" in res.detail


@needs_bwrap
def test_signed_and_hard_mappings(cfg):
    partial = wrap("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n")
    signed = cfg.model_copy(update={"code": CodeRewardConfig(soft_mapping="signed", max_tests=None)})
    assert code_reward(partial, SUM_GT, signed).score == pytest.approx(2 * 0.75 - 1)
    hard = cfg.model_copy(update={"code": CodeRewardConfig(mode="hard", soft_mapping="pass_rate")})
    res = code_reward(partial, SUM_GT, hard)
    assert res.score == 0.0 and not res.correct
    hard_signed = cfg.model_copy(update={"code": CodeRewardConfig(mode="hard", soft_mapping="signed")})
    assert code_reward(partial, SUM_GT, hard_signed).score == -1.0
    assert code_reward(wrap(SUM_OK), SUM_GT, hard_signed).score == 1.0


@needs_bwrap
def test_soft_runs_every_selected_test(cfg):
    first_fails = wrap("a, b = map(int, input().split())\nprint(0 if a == 1 else a + b)\n")
    res = code_reward(first_fails, SUM_GT, cfg)
    assert (res.passed, res.total) == (3, 4)


@needs_bwrap
def test_max_tests_limits_the_run(cfg):
    gt = {"inputs": [f"{i} {i}\n" for i in range(30)], "outputs": [f"{2 * i}\n" for i in range(30)]}
    small = cfg.model_copy(update={"code": CodeRewardConfig(soft_mapping="pass_rate", max_tests=5)})
    res = code_reward(wrap(SUM_OK), gt, small)
    assert (res.passed, res.total, res.score) == (5, 5, 1.0)


@needs_bwrap
def test_float_tolerance_end_to_end(cfg):
    gt = {"inputs": ["1 3\n", "2 3\n"], "outputs": ["0.333333333\n", "0.666666667\n"]}
    assert code_reward(wrap("a, b = map(int, input().split())\nprint(a / b)\n"), gt, cfg).score == 1.0
    assert (
        code_reward(wrap("a, b = map(int, input().split())\nprint(round(a / b, 3))\n"), gt, cfg).score == 0.0
    )


@needs_bwrap
def test_call_based_apps_format(cfg):
    gt = {"inputs": [[1, 2], [3, 4], [-1, 1]], "outputs": [[3], [7], [0]], "fn_name": "add"}
    ok = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert code_reward(wrap(ok), gt, cfg).score == 1.0
    assert code_reward(wrap("def add(a, b):\n    return a + b\n"), gt, cfg).score == 1.0
    partial = code_reward(wrap("def add(a, b):\n    return a + b if a > 0 else 5\n"), gt, cfg)
    assert (partial.passed, partial.total) == (2, 3)
    missing = code_reward(wrap("def plus(a, b):\n    return a + b\n"), gt, cfg)
    assert missing.passed == 0 and "NameError" in missing.detail
    unserialisable = code_reward(wrap("def add(a, b):\n    return {a + b}\n"), gt, cfg)
    assert unserialisable.passed == 0


@needs_bwrap
def test_call_based_livecodebench_format_with_float_tolerance(cfg):
    gt = [
        {"input": "[1, 2, 3]\n2", "output": "[0.5, 1.0, 1.5]", "testtype": "functional", "fn_name": "scale"},
        {"input": "[]\n4", "output": "[]", "testtype": "functional", "fn_name": "scale"},
    ]
    ok = "class Solution:\n    def scale(self, xs, k):\n        return [x / k + 1e-9 for x in xs]\n"
    assert code_reward(wrap(ok), gt, cfg).score == 1.0
    off = "def scale(xs, k):\n    return [x / k + 1e-3 for x in xs]\n"
    assert code_reward(wrap(off), gt, cfg).passed == 1  # only the empty list still matches


@needs_bwrap
def test_humaneval_format(cfg):
    gt = {
        "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-3) == 9\n",
        "entry_point": "square",
    }
    assert code_reward(wrap("def square(x):\n    return x * x\n"), gt, cfg).score == 1.0
    wrong = code_reward(wrap("def square(x):\n    return 2 * x\n"), gt, cfg)
    assert (wrong.passed, wrong.total, wrong.score) == (0, 1, 0.0)
    assert "AssertionError" in wrong.detail


def test_missing_think_end_is_flagged_format(cfg):
    res = code_reward("```python\nprint(3)\n```", SUM_GT, cfg)
    assert res.flags == ("format", "no_answer") and res.score == 0.0 and res.total == 0


def test_missing_code_block_is_flagged_no_answer(cfg):
    res = code_reward("<think>hmm</think> the answer is 3", SUM_GT, cfg)
    assert res.flags == ("no_answer",) and res.score == 0.0


def test_missing_answer_scores_the_mapping_minimum(cfg):
    signed = cfg.model_copy(update={"code": CodeRewardConfig(soft_mapping="signed")})
    assert code_reward("no answer", SUM_GT, signed).score == -1.0


def test_bad_ground_truth_is_flagged_error(cfg):
    res = code_reward(wrap(SUM_OK), "{broken", cfg)
    assert res.flags == ("error",) and "bad ground truth" in res.detail and res.score == 0.0


@needs_bwrap
def test_tests_that_cannot_finish_within_the_item_bound_are_not_started(cfg):
    # 1 s per test, item bound 3.5 s: the budget for starting a test is 3.5 - 1 - 1 = 1.5 s.
    tight = cfg.model_copy(update={"item_timeout_s": 3.5})
    gt = {"inputs": [f"{i}\n" for i in range(6)], "outputs": ["0\n"] * 6}
    res = code_reward(wrap("while True:\n    pass\n"), gt, tight)
    assert (res.passed, res.total, res.flags) == (0, 6, ("timeout",))
    assert "not_run" in res.detail and res.seconds < 3.5  # inside the item bound
