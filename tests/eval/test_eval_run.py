"""``klear eval run`` end to end on the tiny model: outputs, keys with the actual k, resume, YaRN.

The tiny model has random weights, so every answer is wrong; what is tested is
the plumbing: prompts through the HF backend, responses through the reward
pool, one line per sample appended per problem, a summary keyed avg@2 /
pass@1 / pass@2 / maj@2, and a resume that regenerates exactly the problems
whose samples are missing (counted by wrapping the backend's ``generate``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klear.cli import main
from klear.rollout.hf import HFRolloutBackend

pytestmark = pytest.mark.slow  # loads a model and starts a reward pool per command (~5 s each)

N = 2
PROBLEMS = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from klear.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "sums.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PROBLEMS), encoding="utf-8")
    return path


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every generate call of the HF backend: the prompts asked for and the backend's model config."""
    seen: list[dict] = []
    original = HFRolloutBackend.generate

    def counting(self, prompts, sampling, groups=None):
        seen.append({"groups": list(groups or []), "n": sampling.n, "config": self.model.config})
        return original(self, prompts, sampling, groups)

    monkeypatch.setattr(HFRolloutBackend, "generate", counting)
    return seen


def run(model: Path, bench: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "eval",
            "run",
            "--model",
            str(model),
            "--benchmark",
            str(bench),
            "--n",
            str(N),
            "--max-new-tokens",
            "6",
            "--out",
            str(out),
            "--no-progress",
            *extra,
            "reward.num_workers=1",
        ]
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_samples_summary_report_then_resumes_only_what_is_missing(
    tiny_model, bench, tmp_path, calls
):
    out = tmp_path / "run"
    # 1. A fresh run generates every problem, once each.
    assert run(tiny_model, bench, out) == 0
    assert [c["groups"] for c in calls] == [["q0"], ["q1"], ["q2"]]
    assert all(c["n"] == N for c in calls)
    samples = lines(out / "samples.jsonl")
    assert [(s["problem_id"], s["sample"]) for s in samples] == [
        (f"q{i}", j) for i in range(3) for j in range(N)
    ]
    for s in samples:
        assert {"response", "answer", "correct", "score", "flags", "truncated", "response_tokens"} <= set(s)
        assert isinstance(s["response"], str) and s["response_tokens"] <= 6
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == ["avg@2", "pass@1", "pass@2", "maj@2"]
    for value in summary["metrics"].values():
        assert set(value) == {"value", "ci"} and len(value["ci"]) == 2
    assert summary["n_problems"] == 3 and summary["n_samples"] == N
    assert summary["settings"]["temperature"] == 0.6 and summary["settings"]["top_p"] == 0.95
    assert summary["model"]["path"] == str(tiny_model.resolve())
    assert summary["seconds"]["total"] > 0 and summary["seconds"]["generation"] > 0
    assert summary["config"]["reward"]["code"]["max_tests"] is None
    assert summary["generated_problems"] == 3 and summary["resumed_problems"] == 0
    report = (out / "report.md").read_text()
    assert "| sums | 3 | 2 |" in report and "pass@2" in report
    first = (out / "samples.jsonl").read_text()

    # 2. Interrupted: the last problem lost one sample and a write was torn mid-line.
    kept = [line for line in first.splitlines(keepends=True) if '"problem_id": "q2"' not in line]
    q2 = [line for line in first.splitlines(keepends=True) if '"problem_id": "q2"' in line]
    (out / "samples.jsonl").write_text("".join(kept) + q2[0] + q2[1][:25])
    calls.clear()
    assert run(tiny_model, bench, out) == 0
    assert [c["groups"] for c in calls] == [["q2"]]  # only the unfinished problem
    # per-problem seeds: the regenerated problem's samples are the ones the first run drew
    assert (out / "samples.jsonl").read_text() == first
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["generated_problems"] == 1 and resumed["resumed_problems"] == 2
    assert resumed["metrics"] == summary["metrics"]

    # 3. A complete run is not regenerated, and its outputs are rewritten the same.
    calls.clear()
    assert run(tiny_model, bench, out) == 0
    assert calls == []
    assert (out / "samples.jsonl").read_text() == first
    assert json.loads((out / "summary.json").read_text())["metrics"] == summary["metrics"]

    # 4. Re-scoring the run's own samples.jsonl reproduces its summary.
    rescored = tmp_path / "rescored"
    argv = ["eval", "score", "--benchmark", str(bench), "--generations", str(out / "samples.jsonl")]
    assert main([*argv, "--out", str(rescored), "--no-progress", "reward.num_workers=1"]) == 0
    again = json.loads((rescored / "summary.json").read_text())
    assert again["metrics"] == summary["metrics"] and again["per_problem"] == summary["per_problem"]
    assert [s["correct"] for s in lines(rescored / "samples.jsonl")] == [s["correct"] for s in samples]


def test_resume_with_other_settings_is_refused_before_loading(tiny_model, bench, tmp_path, calls, capsys):
    out = tmp_path / "run"
    assert run(tiny_model, bench, out, "--limit", "1") == 0
    capsys.readouterr()
    assert run(tiny_model, bench, out, "--limit", "1", "--temperature", "1.0") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "temperature: 0.6 then, 1.0 now" in err
    assert len(calls) == 1  # the refused run generated nothing
    # --restart discards the old samples and starts over with the new settings
    assert run(tiny_model, bench, out, "--limit", "1", "--temperature", "1.0", "--restart") == 0
    assert len(calls) == 2
    assert json.loads((out / "summary.json").read_text())["settings"]["temperature"] == 1.0


def test_yarn_flags_reach_the_model_config(tiny_model, bench, tmp_path, calls):
    out = tmp_path / "yarn"
    assert run(tiny_model, bench, out, "--limit", "1", "--yarn-factor", "2", "--yarn-original", "512") == 0
    config = calls[0]["config"]  # the config of the model that generated
    rope = config.rope_parameters
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0
    assert rope["original_max_position_embeddings"] == 512
    assert config.max_position_embeddings == 1024
    model = json.loads((out / "summary.json").read_text())["model"]
    assert model["rope"]["rope_type"] == "yarn" and model["max_position_embeddings"] == 1024
    # without the flags the model runs with its own plain rope
    calls.clear()
    assert run(tiny_model, bench, tmp_path / "plain", "--limit", "1") == 0
    assert calls[0]["config"].rope_parameters.get("rope_type", "default") == "default"
    assert calls[0]["config"].max_position_embeddings == 512


def test_yarn_flags_must_come_together(tiny_model, bench, tmp_path, capsys):
    assert run(tiny_model, bench, tmp_path / "o", "--yarn-factor", "2.5") == 2
    assert "--yarn-factor and --yarn-original go together" in capsys.readouterr().err
