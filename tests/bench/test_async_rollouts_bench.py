"""bench/async_rollouts.py end to end with tiny settings: both loops run, the JSON line has the figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "async_rollouts.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("klear_bench_async_rollouts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_async_bench_runs_both_loops_and_prints_the_json_line(capsys):
    bench = load_bench()
    tiny_rl = [
        "trainer.train_batch_size=2",
        "trainer.ppo_mini_batch_size=1",
        "rollout.n=2",
        "rollout.max_new_tokens=8",
        "dynamic_sampling.enable=false",
        "data.val_size=4",
    ]
    argv = ["--steps", "1", "--rounds", "1", "--sft", "trainer.max_steps=2", "--rl", *tiny_rl]
    res = bench.main([*argv, "trainer.total_steps=2", "--accuracy", "--seeds", "1"])
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["speedup"] == pytest.approx(line["steps_per_s"]["async"] / line["steps_per_s"]["sync"])
    assert line["timed_steps"] == {"sync": 1, "async": 1} and len(line["speedup_per_round"]) == 1
    assert set(line["phase_seconds"]["async"]) == set(bench.PHASES)
    assert line["phase_seconds"]["sync"]["wait"] == 0.0  # the synchronous loop never waits for a producer
    acc = line["accuracy"]
    assert acc["seeds"] == 1 and set(acc["final"]) == {"sft", "sync", "async"}
    assert all(0.0 <= v[0] <= 1.0 for v in acc["final"].values())
    assert "speedup async-1 / sync" in out and res["speedup"] == line["speedup"]
