"""The runner's bookkeeping without a model or a reward pool: resume, run directory checks, rows, prompts.

A scripted backend answers each problem with a fixed text and a scripted pool
marks a response correct when it contains the reference answer, so every
number here is known by hand and the tests run in milliseconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from klear.config import ConfigError
from klear.eval.benchmarks import Problem, load_benchmark
from klear.eval.generations import read_generations
from klear.eval.runner import (
    DEFAULT_MATH_INSTRUCTION,
    EvalError,
    GenerationSettings,
    eval_reward_config,
    problem_prompt,
    problem_row,
    problem_seed,
    run_eval,
)
from klear.types import RewardResult, Rollout

PROBLEMS = [
    Problem(id=f"p{i}", index=i, question=f"q{i}?", answer=str(i), data_source="toy") for i in range(4)
]


class ScriptedBackend:
    """Answers problem i right on even samples and wrong on odd ones; records each call's groups and seed."""

    tokenizer = None

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int | None]] = []

    def generate(self, prompts, sampling, groups=None):
        self.calls.append((list(groups), sampling.seed))
        out = []
        for group in groups:
            answer = group.removeprefix("p")
            for j in range(sampling.n):
                text = f"<think></think>\\boxed{{{answer if j % 2 == 0 else 'x'}}}"
                out.append(Rollout([1], [2, 3], [-0.1, -0.2], text, False, group, j))
        return out

    def close(self) -> None:
        pass


class ScriptedPool:
    """Correct when the boxed text is the ground truth."""

    def __init__(self) -> None:
        self.scored = 0

    def score(self, rows, responses, progress=None):
        self.scored += len(responses)
        results = []
        for row, response in zip(rows, responses, strict=True):
            answer = response.rsplit("{", 1)[1].rstrip("}")
            ok = answer == row["reward_model"]["ground_truth"]
            results.append(RewardResult(score=1.0 if ok else -1.0, correct=ok, answer=answer))
        return results


SETTINGS = GenerationSettings(n=2, max_new_tokens=4, seed=7)


def evaluate(out: Path, backend: ScriptedBackend, settings: GenerationSettings = SETTINGS, **kw):
    return run_eval(PROBLEMS, backend, ScriptedPool(), out, settings, benchmark="toy", n_boot=200, **kw)


def test_hand_counted_summary(tmp_path):
    outcome = evaluate(tmp_path, ScriptedBackend())
    metrics = outcome.summary.metrics
    assert list(metrics) == ["avg@2", "pass@1", "pass@2", "maj@2"]
    assert metrics["avg@2"].value == 0.5 and metrics["pass@2"].value == 1.0
    assert metrics["maj@2"].value == 0.5  # one right, one wrong: a tie counts 1/2
    assert outcome.summary.per_problem == {f"p{i}": 0.5 for i in range(4)}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stats"]["samples"] == 8 and summary["stats"]["mean_response_tokens"] == 2


def test_seeds_depend_on_the_problem_not_on_the_order(tmp_path):
    backend = ScriptedBackend()
    evaluate(tmp_path, backend)
    assert [seed for _, seed in backend.calls] == [problem_seed(7, p.id) for p in PROBLEMS]
    assert len({seed for _, seed in backend.calls}) == 4
    assert problem_seed(7, "p1") != problem_seed(8, "p1")


def test_resume_drops_partial_problems_and_torn_lines(tmp_path):
    evaluate(tmp_path, ScriptedBackend())
    path = tmp_path / "samples.jsonl"
    full = path.read_text()
    lines = full.splitlines(keepends=True)
    # p1 lost its second sample (an interrupted run never writes half a problem, but a hand edit can);
    # p3 is gone, and a write was torn mid-line
    damaged = [line for line in lines if '"p1", "index": 1, "sample": 1' not in line and '"p3"' not in line]
    assert len(damaged) == 5
    path.write_text("".join(damaged) + '{"problem_id": "p3", "sam')
    backend = ScriptedBackend()
    outcome = evaluate(tmp_path, backend)
    assert [groups for groups, _ in backend.calls] == [["p1"], ["p3"]]
    assert outcome.generated == ["p1", "p3"] and outcome.resumed == ["p0", "p2"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["problem_id"], r["sample"]) for r in records) == [
        (f"p{i}", j) for i in range(4) for j in range(2)
    ]
    assert outcome.summary.metrics["avg@2"].value == 0.5
    # complete: nothing is generated again
    backend = ScriptedBackend()
    evaluate(tmp_path, backend)
    assert backend.calls == []


def test_problems_per_call_batches_and_a_limit_can_grow(tmp_path):
    backend = ScriptedBackend()
    settings = GenerationSettings(n=2, max_new_tokens=4, seed=7, problems_per_call=3)
    run_eval(PROBLEMS[:2], backend, ScriptedPool(), tmp_path, settings, benchmark="toy", n_boot=50)
    assert [groups for groups, _ in backend.calls] == [["p0", "p1"]]
    outcome = run_eval(PROBLEMS, backend, ScriptedPool(), tmp_path, settings, benchmark="toy", n_boot=50)
    assert [groups for groups, _ in backend.calls][1:] == [["p2", "p3"]]
    assert outcome.summary.n_problems == 4


def test_a_damaged_line_inside_the_file_is_an_error_naming_it(tmp_path):
    evaluate(tmp_path, ScriptedBackend())
    path = tmp_path / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "garbage\n"
    path.write_text("".join(lines))
    with pytest.raises(EvalError, match=re.escape(f"{path}:3: not a valid sample record")):
        evaluate(tmp_path, ScriptedBackend())


def test_run_directory_checks(tmp_path):
    evaluate(tmp_path, ScriptedBackend())
    with pytest.raises(EvalError, match=r"other settings \(n: 2 then, 3 now\)"):
        evaluate(tmp_path, ScriptedBackend(), GenerationSettings(n=3, max_new_tokens=4, seed=7))
    with pytest.raises(EvalError, match="model: 'a' then, 'b' now"):
        evaluate(tmp_path / "m", ScriptedBackend(), identity={"model": "a"})
        evaluate(tmp_path / "m", ScriptedBackend(), identity={"model": "b"})
    (tmp_path / "run.json").unlink()
    with pytest.raises(EvalError, match="settings are unknown"):
        evaluate(tmp_path, ScriptedBackend())
    backend = ScriptedBackend()
    evaluate(tmp_path, backend, restart=True)
    assert len(backend.calls) == 4


def test_prompts_and_rows():
    math = PROBLEMS[0]
    assert problem_prompt(math) == [{"role": "user", "content": "q0?\n\n" + DEFAULT_MATH_INSTRUCTION}]
    assert problem_prompt(math, "") == [{"role": "user", "content": "q0?"}]
    row = problem_row(math)
    assert row["ability"] == "math" and row["reward_model"]["ground_truth"] == "0"
    code = Problem(id="c", index=0, question="write it", tests={"tests": [], "fn_name": None}, ability="code")
    assert problem_prompt(code) == [{"role": "user", "content": "write it"}]
    with pytest.raises(EvalError, match="without tests"):
        problem_row(Problem(id="c", index=0, question="q", ability="code"))


def test_code_rows_parse_with_the_code_reward(tmp_path):
    """benchmarks.py's {"tests": [...], "fn_name"} spec and HumanEval's spec are what parse_tests reads."""
    from klear.rewards.code import parse_tests

    path = tmp_path / "lcb.jsonl"
    path.write_text(
        json.dumps(
            {
                "question_content": "double",
                "public_test_cases": [
                    {"input": "3", "output": "6", "testtype": "functional"},
                    {"input": "1\n", "output": "2\n", "testtype": "stdin"},
                ],
                "metadata": {"func_name": "double"},
            }
        )
        + "\n"
    )
    (problem,) = load_benchmark(path)
    spec = parse_tests(problem_row(problem)["reward_model"]["ground_truth"])
    assert [t.kind for t in spec.tests] == ["call", "stdin"]
    assert spec.tests[0].fn_name == "double" and spec.tests[0].args == (3,) and spec.tests[0].expected == 6


def test_reward_config_defaults_and_overrides():
    cfg = eval_reward_config()
    assert cfg.code.max_tests is None and cfg.code.mode == "hard" and cfg.math.no_think_start_score is None
    cfg = eval_reward_config(["reward.num_workers=3", "reward.code.max_tests=16"])
    assert cfg.num_workers == 3 and cfg.code.max_tests == 16
    with pytest.raises(ConfigError, match=r"reward\.KEY=VALUE"):
        eval_reward_config(["num_workers=3"])
    with pytest.raises(ConfigError, match="num_wrokers"):
        eval_reward_config(["reward.num_wrokers=3"])


def test_generations_accumulate_by_sample_index(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [
        {"problem_id": "p0", "sample": 1, "response": "b"},
        {"id": "p0", "sample": 0, "response": "a"},
        {"index": 1, "responses": ["c", "d"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gens = read_generations(path, PROBLEMS[:2])
    assert gens.responses == {"p0": ["a", "b"], "p1": ["c", "d"]}
    rows[1]["sample"] = 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalError, match=re.escape(f"{path}:2: problem 'p0' sample 1 given twice")):
        read_generations(path, PROBLEMS[:2])
    rows[1]["sample"] = 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalError, match=r"problem 'p0' \(lines 1, 2\) is missing sample\(s\) \[0, 2\]"):
        read_generations(path, PROBLEMS[:2])


def test_unknown_backend_and_missing_model_are_clear_errors(tmp_path):
    from klear.eval.backend import load_backend

    with pytest.raises(EvalError, match="--backend nope: rollout backend 'nope' is not available"):
        load_backend("nope", tmp_path)
    with pytest.raises(EvalError, match="does not exist"):
        load_backend("hf", tmp_path / "missing")
