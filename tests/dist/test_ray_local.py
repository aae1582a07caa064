"""`klear rl ... dist.backend=ray` with no cluster running: a local one is started for the run and
stopped after it, and its actors import what the driver imports (a custom reward from the cwd)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from klear.train.metrics import read_metrics
from tests.train.test_rl import rl_config

pytest.importorskip("ray", reason="klear[ray] is not installed")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_cli_starts_and_stops_a_local_cluster(tmp_path):
    cfg = rl_config(
        tmp_path / "run",
        trainer={"total_steps": 1},
        dist={"backend": "ray", "rollout_workers": 2, "reward_workers": 1, "learner_ranks": 2},
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # only src on the path: `tests.train.fixture_rewards` reaches the reward actors through the cwd
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-m", "klear", "rl", str(recipe)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Started a local Ray instance" in done.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1]
    assert rows[0]["reward/flag/error"] == 0.0  # the custom reward was importable in the actors
    assert (tmp_path / "run" / "checkpoints" / "step_000001" / "model" / "model.safetensors").is_file()
