"""bench/async_rollouts.py end to end with tiny settings: both loops run, the JSON line has the figures."""

from __future__ import annotations

import json

import pytest

from tests.bench.scripts import load_script

TINY_RL = [
    "trainer.train_batch_size=2",
    "trainer.ppo_mini_batch_size=1",
    "rollout.n=2",
    "rollout.max_new_tokens=8",
    "dynamic_sampling.enable=false",
    "data.val_size=4",
]


def load_bench():
    return load_script("async_rollouts")


@pytest.mark.timeout(300)
def test_async_bench_runs_both_loops_and_prints_the_json_line(tmp_path, capsys):
    from klear.config import ModelConfig
    from klear.models.loading import resolve_model_dir

    bench = load_bench()
    model = resolve_model_dir(
        ModelConfig(tiny=True), tmp_path, 0
    )  # no SFT stage: the JSON shape is the point
    argv = ["--steps", "1", "--rounds", "1", "--init-model", str(model), "--rl", *TINY_RL]
    res = bench.main(argv)
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["speedup"] == pytest.approx(line["steps_per_s"]["async"] / line["steps_per_s"]["sync"])
    assert (
        line["timed_steps"] == {"sync": 1, "async": 1, "sync-par": 1} and len(line["speedup_per_round"]) == 1
    )
    assert line["samplers"] == 2
    assert line["speedup_vs_sync_par"] == pytest.approx(
        line["steps_per_s"]["async"] / line["steps_per_s"]["sync-par"]
    )
    assert set(line["phase_seconds"]["async"]) == set(bench.PHASES)
    assert line["phase_seconds"]["sync"]["wait"] == 0.0  # the synchronous loop never waits for a producer
    assert (
        "speedup async-1 / sync" in out and "async-1 / sync-par" in out and res["speedup"] == line["speedup"]
    )
    cpu = line["cpu_seconds_per_step"]
    assert cpu["sync"]["learner"] > 0 and cpu["sync"]["sampler"] == 0.0  # sync: no sampler process
    assert cpu["async"]["learner"] > 0 and cpu["async"]["sampler"] >= 0  # clock ticks: a tiny step may read 0
    a = cpu["async"]
    busiest = max(a["learner"], a["sampler"] / 2, (a["learner"] + a["sampler"]) / 2)
    assert line["cpu_bound_ceiling"] == pytest.approx(cpu["sync"]["learner"] / busiest)


def test_accuracy_part_reports_means_intervals_and_the_paired_difference(tmp_path, monkeypatch, capsys):
    bench = load_bench()
    finals = {("sync", 0): 0.5, ("async", 0): 0.75, ("sync", 1): 0.25, ("async", 1): 0.25}
    monkeypatch.setattr(bench, "sft_model", lambda args, root, seed: root / f"sft{seed}")

    def fake_rl(args, model, out, seed, extra):  # what run_rl returns: metrics rows with validations
        name = "async" if "trainer.async_rollouts=1" in extra else "sync"
        return [{"step": 0, "val/greedy_acc": 0.1 * seed}, {"step": 24, "val/greedy_acc": finals[name, seed]}]

    monkeypatch.setattr(bench, "run_rl", fake_rl)
    res = bench.main(["--no-speed", "--accuracy", "--seeds", "2", "--out", str(tmp_path)])
    acc = res["accuracy"]
    assert acc["final"] == {"sft": [0.0, 0.1], "sync": [0.5, 0.25], "async": [0.75, 0.25]}
    assert acc["ci"]["sync"]["mean"] == pytest.approx(0.375) and acc["ci"]["sync"]["n"] == 2
    assert acc["async_minus_sync"]["mean"] == pytest.approx(0.125)
    # 2 seeds: t(0.975, 1) = 12.706; stdev of the differences (0.25, 0) = 0.1768
    half = 12.706 * 0.1767767 / 2**0.5
    assert acc["async_minus_sync"]["high"] == pytest.approx(0.125 + half, rel=1e-4)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "speedup" not in line and line["accuracy"]["seeds"] == 2
