"""`klear demo` end to end with a short budget (accuracy belongs to the benchmark; `--compare` is
`klear ablate loss`: tests/ablate)."""

import json

import pytest

from klear.cli import main

SFT = ["trainer.max_steps=3", "data.train_size=40", "data.val_size=4", "trainer.eval_max_new_tokens=16"]
RL = [
    "trainer.total_steps=2",
    "trainer.train_batch_size=2",
    "trainer.ppo_mini_batch_size=1",
    "data.train_size=16",
    "data.val_size=4",
    "rollout.n=2",
    "rollout.max_new_tokens=16",
    "reward.num_workers=1",
    "dynamic_sampling.enable=false",
    "validation.every=1",
    "validation.n=2",
    "logging.progress=false",
]


@pytest.mark.slow
def test_demo_writes_summary_metrics_and_curves(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--sft", *SFT, "--rl", *RL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("sft_accuracy", "rl_accuracy", "gain_points", "seconds", "config", "accuracy_curve"):
        assert key in summary
    assert 0.0 <= summary["sft_accuracy"] <= 1.0 and 0.0 <= summary["rl_accuracy"] <= 1.0
    assert [p["step"] for p in summary["accuracy_curve"]] == [0, 1, 2]
    assert summary["config"]["rl"]["loss"]["type"] == "gppo"
    assert summary["config"]["sft"]["trainer"]["max_steps"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert (out / "curves.png").is_file() and (out / "sft" / "curves.png").is_file()
    assert (out / "config.yaml").is_file() and (out / "sft" / "config.yaml").is_file()


@pytest.mark.slow
def test_demo_on_the_code_task_scores_programs_in_the_sandbox(tmp_path):
    """`klear demo --task code-fn`: its own recipes, rows scored by the code reward, pass rates reported."""
    out = tmp_path / "demo"
    sft = [*SFT, "trainer.eval_max_new_tokens=24"]
    rl = [*RL, "rollout.max_new_tokens=24", "trainer.total_steps=1", "validation.n=1"]
    assert main(["demo", "--task", "code-fn", "--out", str(out), "--sft", *sft, "--rl", *rl]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "code-fn"
    assert summary["config"]["sft"]["data"]["task"] == "code-fn"
    assert summary["config"]["rl"]["reward"]["code"]["mode"] == "soft"
    # 24 tokens cannot hold a program: every held-out response is judged and fails all its tests
    assert summary["sft_pass_rate"] == summary["rl_pass_rate"] == 0.0 == summary["rl_accuracy"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["val/greedy_pass_rate"] == 0.0 and rows[-1]["reward/flag/no_answer"] > 0


def test_demo_rejects_an_unknown_task(capsys):
    assert main(["demo", "--task", "nope", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "klear: error:" in err and "code-fn" in err and "addition-2to3" in err


def test_demo_compare_refuses_another_task(capsys):
    assert main(["demo", "--compare", "--task", "code-fn", "--out", "/nonexistent/x"]) == 2
    assert "klear ablate reward" in capsys.readouterr().err
