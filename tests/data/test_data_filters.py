"""filter-tests and filter-math: hand-counted kept/dropped, reasons, resumption, the --model path."""

from __future__ import annotations

import json
import shutil

import pytest

from klear.data.filters import decide_code, decide_math, filter_shard, load_generations, pass_stats
from klear.data.schema import DataError, iter_rows, load_rl_rows
from klear.data.shards import run_sharded
from klear.types import RewardResult

from .conftest import FIXTURES, read_jsonl, write_jsonl

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def wrap(code: str) -> str:
    return f"<think>ok</think>\n```python\n{code}```\n"


ADD_OK = wrap("a, b = map(int, input().split())\nprint(a + b)\n")
ADD_BAD = wrap("a, b = map(int, input().split())\nprint(a - b)\n")
MAX_OK = wrap("a, b = map(int, input().split())\nprint(max(a, b))\n")
MAX_BAD = wrap("a, b = map(int, input().split())\nprint(min(a, b))\n")
DBL_OK = wrap("def double(x):\n    return 2 * x\n")
DBL_BAD = wrap("def double(x):\n    return x + 2\n")
#: the four TACO fixture problems: 16, 16, 16 and 3 tests.
#: sum: 3 of 4 right -> 0.75 kept; max: 1 of 4 -> 0.25 dropped; double: 2 of 4 -> 0.5, not > 0.5,
#: dropped; negation: 3 tests < 16, dropped without scoring (it has no generations at all).
CODE_GENERATIONS = [
    {"prompt": "Read two integers a and b and print a + b.", "responses": [ADD_OK, ADD_OK, ADD_OK, ADD_BAD]},
    {
        "prompt": "Read two integers a and b and print the larger one.",
        "responses": [MAX_OK, MAX_BAD, MAX_BAD, MAX_BAD],
    },
    {"prompt": "Write double(x) returning 2*x.", "responses": [DBL_OK, DBL_OK, DBL_BAD, "no code at all"]},
]


@pytest.fixture
def code_rows(tmp_path, klear):
    out = tmp_path / "code.jsonl"
    assert klear("convert", FIXTURES / "code_taco.jsonl", "--output", out, "--shape", "code")[0] == 0
    return out


def test_decisions_by_hand():
    def res(*correct):
        return [RewardResult(score=float(c), correct=c) for c in correct]

    s = pass_stats(res(True, True, False))
    assert s["k"] == 3 and s["solved"] == 2 and s["pass_rate"] == pytest.approx(2 / 3)
    assert decide_code(16, s, 0.5, 16) is None
    assert decide_code(15, s, 0.5, 16) == "too_few_tests"
    assert decide_code(16, pass_stats(res(True, False)), 0.5, 16) == "low_pass_rate"  # 0.5 is not > 0.5
    assert decide_math(pass_stats(res(True, True, False, False)), 0.5) == "not_majority_solved"
    assert decide_math(pass_stats(res(True, True, True, False)), 0.5) is None
    assert decide_math(pass_stats(res(True, False, False, False)), 0.2) is None  # configurable majority


@needs_bwrap
def test_filter_tests_counts_reasons_and_outputs_load_back(tmp_path, klear, code_rows):
    gens = write_jsonl(tmp_path / "gens.jsonl", CODE_GENERATIONS)
    kept, dropped = tmp_path / "kept.jsonl", tmp_path / "dropped.parquet"
    code, stdout, err = klear(
        "filter-tests",
        code_rows,
        "--kept",
        kept,
        "--dropped",
        dropped,
        "--generations",
        gens,
        "--save-generations",
        tmp_path / "scored.jsonl",
        "--set",
        "reward.sandbox.test_timeout_s=2",
    )
    assert code == 0, err
    assert "kept 1" in stdout and "dropped 3" in stdout
    (k,) = load_rl_rows(kept)
    assert k.prompt[0].content.endswith("print a + b.")
    assert k.extra_info["filter"]["solved"] == 3 and k.extra_info["pass_rate"] == 0.75
    drops = {r.prompt[0].content[:22]: r.extra_info["filter"] for r in load_rl_rows(dropped)}
    assert {p: f["reason"] for p, f in drops.items()} == {
        "Read two integers a an": "low_pass_rate",
        "Write double(x) return": "low_pass_rate",
        "Read an integer and pr": "too_few_tests",
    }
    assert drops["Write double(x) return"]["pass_rate"] == 0.5
    assert drops["Read an integer and pr"]["num_tests"] == 3
    assert (
        drops["Read an integer and pr"].get("pass_rate") is None
    )  # not scored (parquet adds the key as null)
    report = json.loads((tmp_path / "kept.report.json").read_text())
    assert report["reasons"] == {"low_pass_rate": 2, "too_few_tests": 1}
    assert report["response_flags"] == {"format": 1, "no_answer": 1}  # the "no code at all" response
    scored = read_jsonl(tmp_path / "scored.jsonl")
    assert [sum(r["correct"] for r in g["rewards"]) for g in scored] == [3, 1, 2]


def math_response(answer: str) -> str:
    return f"<think>work</think>The answer is \\boxed{{{answer}}}."


@pytest.fixture
def math_rows(tmp_path, klear):
    out = tmp_path / "math.jsonl"
    assert klear("convert", FIXTURES / "math_qa.jsonl", "--output", out)[0] == 0
    return out


MATH_GENERATIONS = [  # answers 2, 5, 6
    {"prompt": "What is 1+1?", "responses": [math_response("2")] * 3 + [math_response("3")]},  # 3/4 kept
    {
        "prompt": "What is 2+3?",
        "responses": [math_response("5"), math_response("4"), "no answer", "x"],
    },  # 1/4
    {"prompt": "What is 10-4?", "response": math_response("6")},  # one record per response
    {"prompt": "What is 10-4?", "response": math_response("7")},  # 1/2: not a majority
]


def test_filter_math_majority_and_difficulty_tags(tmp_path, klear, math_rows):
    gens = write_jsonl(tmp_path / "g.jsonl", MATH_GENERATIONS)
    kept, dropped = tmp_path / "k.jsonl", tmp_path / "d.jsonl"
    code, _stdout, err = klear(
        "filter-math", math_rows, "--kept", kept, "--dropped", dropped, "--generations", gens
    )
    assert code == 0, err
    assert [r.reward_model.ground_truth for r in load_rl_rows(kept)] == ["2"]
    d = load_rl_rows(dropped)
    assert [(r.reward_model.ground_truth, r.extra_info["difficulty"]) for r in d] == [("5", 0.25), ("6", 0.5)]
    assert load_rl_rows(kept)[0].extra_info["difficulty"] == 0.75
    assert {r.extra_info["filter"]["reason"] for r in d} == {"not_majority_solved"}


def fake_math_score(rows, responses):
    """A stand-in for the reward pool: right when the response boxes the ground truth."""
    return [
        RewardResult(score=1.0, correct="\\boxed{" + r["reward_model"]["ground_truth"] + "}" in t)
        for r, t in zip(rows, responses, strict=True)
    ]


def test_majority_and_k_settings(tmp_path, math_rows):
    rows = [(f"{math_rows}: {w}", r) for w, r in iter_rows(math_rows, "rl")]
    gens = load_generations(write_jsonl(tmp_path / "g.jsonl", MATH_GENERATIONS))

    def kept(**kw):
        out = filter_shard(rows, mode="math", score=fake_math_score, seed=0, generations=gens, **kw)
        return [r["reward_model"]["ground_truth"] for d, r in out if d == "kept"]

    assert kept() == ["2"]  # 3/4, 1/4, 1/2 against > 0.5
    assert kept(majority=0.3) == ["2", "6"]  # a lower bar keeps the 1/2 prompt too
    assert kept(k=1) == ["2", "5", "6"]  # only the first response of each: all right
    with pytest.raises(DataError, match=r"line 3: --k 3 but the generations hold 2 response"):
        kept(k=3)  # the third prompt has two responses: a report saying k=3 would be false


def test_generation_file_errors_name_file_line_field(tmp_path, klear, math_rows):
    bad = write_jsonl(
        tmp_path / "g.jsonl", [MATH_GENERATIONS[0], {"prompt": "What is 2+3?", "responses": "x"}]
    )
    code, _, err = klear(
        "filter-math",
        math_rows,
        "--kept",
        tmp_path / "k.jsonl",
        "--dropped",
        tmp_path / "d.jsonl",
        "--generations",
        bad,
    )
    assert code == 2 and f"{bad}: line 2: field 'responses': expected a list of strings" in err
    partial = write_jsonl(tmp_path / "p.jsonl", MATH_GENERATIONS[:1])
    code, _, err = klear(
        "filter-math",
        math_rows,
        "--kept",
        tmp_path / "k.jsonl",
        "--dropped",
        tmp_path / "d.jsonl",
        "--generations",
        partial,
    )
    assert code == 2 and f"{math_rows}: line 2: field 'prompt': no generations for this prompt" in err
    assert not (tmp_path / "k.jsonl").exists() and not (tmp_path / "d.jsonl").exists()
    with pytest.raises(DataError, match=r"line 1: field 'prompt'"):
        load_generations(write_jsonl(tmp_path / "q.jsonl", [{"responses": ["a"]}]))


def test_interrupted_run_resumes_without_redoing_finished_shards(tmp_path, math_rows):
    """Shard size 1: the scorer dies on the 3rd shard; the rerun scores only that shard."""
    rows = [(f"{math_rows}: {w}", r) for w, r in iter_rows(math_rows, "rl")]
    gens = load_generations(write_jsonl(tmp_path / "g.jsonl", MATH_GENERATIONS))
    calls: list[str] = []

    def scorer(fail_on: int | None):
        def score(batch_rows, responses):
            calls.append(batch_rows[0]["reward_model"]["ground_truth"])
            if len(calls) == fail_on:
                raise KeyboardInterrupt
            return [
                RewardResult(score=1.0, correct="\\boxed{" + r["reward_model"]["ground_truth"] + "}" in t)
                for r, t in zip(batch_rows, responses, strict=True)
            ]

        return score

    def run(fail_on: int | None) -> list:
        return [
            routed
            for routed in run_sharded(
                rows,
                lambda chunk, i: filter_shard(
                    chunk, mode="math", score=scorer(fail_on), seed=i, generations=gens
                ),
                work_dir=tmp_path / "work",
                params=["t"],
                shard_size=1,
                key_of=lambda it: it[1].to_dict(),
            )
        ]

    with pytest.raises(KeyboardInterrupt):
        run(fail_on=3)
    assert calls == ["2", "5", "6"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").iterdir()}
    assert sorted(mtimes) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    calls.clear()
    resumed = run(fail_on=None)
    assert calls == ["6"]  # only the unfinished shard was scored
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").iterdir() if p.name in mtimes} == mtimes
    calls.clear()
    assert run(fail_on=None) == resumed and calls == []  # a finished run is pure reuse
    assert [dest for shard in resumed for dest, _ in shard if dest != "generations"] == [
        "kept",
        "dropped",
        "dropped",
    ]


def test_cli_rerun_reuses_shards_and_changed_settings_recompute(tmp_path, klear, math_rows):
    gens = write_jsonl(tmp_path / "g.jsonl", MATH_GENERATIONS)
    args = [
        "filter-math",
        math_rows,
        "--kept",
        tmp_path / "k.jsonl",
        "--dropped",
        tmp_path / "d.jsonl",
        "--generations",
        gens,
        "--shard-size",
        "2",
        "--keep-work",
    ]
    code, stdout, _ = klear(*args)
    assert code == 0 and "shards: 2 computed, 0 reused" in stdout
    work = tmp_path / "k.jsonl.work"
    before = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
    first = (tmp_path / "k.jsonl").read_text()
    code, _, err = klear(*args)  # the outputs exist now: replaced only with --force
    assert code == 2 and "k.jsonl, " in err and "already exists; pass --force" in err
    code, stdout, _ = klear(*args, "--force")
    assert code == 0 and "shards: 0 computed, 2 reused" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()} == before
    assert (tmp_path / "k.jsonl").read_text() == first
    code, stdout, _ = klear(*args[:-1], "--force")  # without --keep-work the work dir goes after success
    assert code == 0 and "shards: 0 computed, 2 reused" in stdout and not work.exists()


def test_changed_settings_or_input_never_reuse_a_shard(tmp_path):
    def run(params, items):
        calls = []

        def process(chunk, i):
            calls.append(i)
            return [("out", {"x": x}) for x in chunk]

        out = [
            r
            for shard in run_sharded(items, process, work_dir=tmp_path, params=params, shard_size=2)
            for r in shard
        ]
        return out, calls

    assert run(["a"], [1, 2, 3, 4])[1] == [0, 1]
    assert run(["a"], [1, 2, 3, 4])[1] == []
    assert run(["b"], [1, 2, 3, 4])[1] == [0, 1]  # another setting
    out, calls = run(["b"], [1, 2, 3, 5])  # one input item changed: only its shard
    assert calls == [1] and [r["x"] for _, r in out] == [1, 2, 3, 5]


@pytest.mark.slow
def test_filter_math_samples_from_a_model_directory(tmp_path, klear, math_rows):
    from klear.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=0)
    kept, dropped, gens = tmp_path / "k.jsonl", tmp_path / "d.jsonl", tmp_path / "g.jsonl"
    args = [
        "filter-math",
        math_rows,
        "--kept",
        kept,
        "--dropped",
        dropped,
        "--model",
        model,
        "--k",
        "2",
        "--max-new-tokens",
        "3",
        "--save-generations",
        gens,
        "--seed",
        "1",
    ]
    code, _stdout, err = klear(*args)
    assert code == 0, err
    saved = read_jsonl(gens)
    assert [len(g["responses"]) for g in saved] == [2, 2, 2]
    # a random tiny model writes no \boxed answer: every prompt is unsolved, dropped, pass rate 0
    assert len(load_rl_rows(dropped)) == 3 and all(
        r.extra_info["pass_rate"] == 0.0 for r in load_rl_rows(dropped)
    )


def test_setting_errors_fail_before_any_work(tmp_path, klear, math_rows):
    gens = write_jsonl(tmp_path / "g.jsonl", MATH_GENERATIONS)
    k = tmp_path / "k.jsonl"
    code, _, err = klear("filter-math", math_rows, "--kept", k, "--dropped", k, "--generations", gens)
    assert code == 2 and "the same file is named for two outputs" in err
    code, _, err = klear(
        "filter-math", math_rows, "--kept", k, "--dropped", tmp_path / "d.csv", "--generations", gens
    )
    assert code == 2 and "d.csv: unsupported output type '.csv'" in err
    code, _, err = klear(
        "filter-math",
        math_rows,
        "--kept",
        k,
        "--dropped",
        tmp_path / "d.jsonl",
        "--model",
        tmp_path,
        "--temperature",
        "-1",
    )
    assert code == 2 and "temperature = -1.0: must be >= 0" in err
    code, _, err = klear(
        "filter-tests", math_rows, "--kept", k, "--dropped", tmp_path / "d.jsonl", "--generations", gens
    )
    assert (
        code == 2 and f"{math_rows}: line 1: field 'ability': filter-tests needs code rows, got 'math'" in err
    )
    assert not k.exists()
