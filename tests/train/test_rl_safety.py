"""The RL trainer's safety rails on the tiny model: prompt limits, the think prefix, no-signal stop,
infrastructure failures masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from klear.cli import main
from klear.config import ModelConfig, RLConfig, build_config
from klear.models.loading import resolve_model_dir
from klear.train.metrics import read_metrics
from klear.train.rl import train_rl

from .test_rl import rl_config

FIX = "tests.train.fixture_safety_rewards"


def run_cli(recipe: Path, capsys) -> tuple[int, str]:
    code = main(["rl", str(recipe)])
    return code, capsys.readouterr().err


def test_no_signal_stops_the_run_naming_causes(tmp_path, capsys):
    """A Qwen3-style template opens <think>: the reward sees it (every response scores 1), so no
    group has signal, and after trainer.max_idle_steps steps the run stops with exit code 2."""
    from tests.rewards.test_think import qwen3_tokenizer

    model = resolve_model_dir(ModelConfig(tiny=True), tmp_path / "m", seed=0)
    qwen3_tokenizer().save_pretrained(model)
    cfg = rl_config(
        tmp_path / "run",
        model={"tiny": False, "path": str(model)},
        reward={"custom": {"klear/addition": f"{FIX}:opens_think"}},
        dynamic_sampling={"max_num_gen_batches": 1},
        trainer={"total_steps": 4, "save_every": 0, "max_idle_steps": 2},
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "rl", **cfg}))
    code, err = run_cli(recipe, capsys)
    assert code == 2
    assert "klear: error: no group had signal for 2 consecutive steps" in err
    assert "format penalty" in err and "reward function" in err and "the data" in err
    assert "think prefix from the chat template: '<think>\\n'" in err
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # stopped after the second idle step, both logged
    assert all(r["reward/mean"] == 1.0 and r["batch/kept_groups"] == 0 for r in rows)


def test_max_idle_steps_must_be_non_negative():
    from klear.config import ConfigError

    with pytest.raises(ConfigError, match="max_idle_steps"):
        build_config(RLConfig, {"trainer": {"max_idle_steps": -1}}, "test")
    assert build_config(RLConfig, {}, "test").trainer.max_idle_steps == 5


def _prompt_rows(path: Path, long_text: str) -> Path:
    rows = [
        {
            "data_source": "toy",
            "ability": "math",
            "prompt": [{"role": "user", "content": text}],
            "reward_model": {"style": "rule", "ground_truth": "1"},
        }
        for text in ["1+1?", "2+2?", "3+3?", long_text]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_long_prompts_truncated_left_and_counted(tmp_path):
    data = _prompt_rows(tmp_path / "p.jsonl", "9" * 80)  # 99 tokens with the template
    cfg = rl_config(
        tmp_path / "run",
        data={"task": None, "train_files": [str(data)], "max_prompt_length": 40, "truncation": "left"},
        reward={"custom": {"toy": "tests.train.fixture_rewards:parity"}},
        dynamic_sampling={"enable": False},
        trainer={"total_steps": 1, "save_every": 0},
    )
    (row,) = train_rl(build_config(RLConfig, cfg)).history
    assert row["data/prompts_truncated"] == 1 and row["data/prompts_dropped_too_long"] == 0
    assert row["batch/kept_groups"] == 4  # the truncated prompt (as token ids) was sampled and trained on


def test_long_prompt_error_names_file_line_and_length(tmp_path, capsys):
    data = _prompt_rows(tmp_path / "p.jsonl", "9" * 80)
    cfg = rl_config(
        tmp_path / "run",
        data={"task": None, "train_files": [str(data)], "max_prompt_length": 40, "truncation": "error"},
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "rl", **cfg}))
    code, err = run_cli(recipe, capsys)
    assert code == 2
    assert f"klear: error: {data}: line 4: prompt is 99 tokens, over data.max_prompt_length = 40" in err
    cfg["data"].update(max_prompt_length=10, truncation="drop")
    recipe.write_text(yaml.safe_dump({"kind": "rl", **cfg}))
    code, err = run_cli(recipe, capsys)
    assert code == 2
    assert (
        "klear: error: no training prompt fits data.max_prompt_length = 10 tokens (4 dropped, longest 99)"
        in err
    )


@pytest.mark.parametrize("mask", [True, False])
def test_infra_failures_are_masked_and_counted(tmp_path, mask):
    cfg = rl_config(
        tmp_path / "run",
        reward={"custom": {"klear/addition": f"{FIX}:parity_with_infra"}, "mask_failures": mask},
        dynamic_sampling={"enable": False},
        trainer={"total_steps": 1, "save_every": 0, "train_batch_size": 6, "ppo_mini_batch_size": 6},
    )
    (row,) = train_rl(build_config(RLConfig, cfg)).history
    assert row["reward/infra_failures"] >= 1  # this seed's responses include lengths 1 mod 4
    if mask:
        assert row["batch/masked_samples"] == row["reward/infra_failures"]
        assert row["batch/kept_samples"] == 24 - row["batch/masked_samples"]
    else:
        assert row["batch/masked_samples"] == 0 and row["batch/kept_samples"] == 24
