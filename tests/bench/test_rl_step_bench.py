"""bench/rl_step.py end to end with tiny settings: both sides run, tokens/s are positive, the ratio is printed."""

from __future__ import annotations

import json

import pytest

from tests.bench.scripts import load_script

pytest.importorskip("trl", reason="TRL is a benchmark-only dependency: `pip install trl`")
pytest.importorskip("datasets")


def load_bench():
    return load_script("rl_step")


@pytest.mark.timeout(180)
def test_rl_step_bench_runs_both_sides_and_prints_the_ratio(capsys):
    bench = load_bench()
    argv = ["--steps", "1", "--rounds", "1", "--prompts", "4", "--n", "2", "--mini-batches", "2"]
    res = bench.main([*argv, "--max-new-tokens", "4", "--train-size", "16", "--reward-workers", "1"])
    out = capsys.readouterr().out
    assert res["tokens_per_s"]["ours"] > 0 and res["tokens_per_s"]["trl"] > 0
    assert res["ratio"] == pytest.approx(res["tokens_per_s"]["ours"] / res["tokens_per_s"]["trl"], rel=0.01)
    assert res["timed_steps"] == {"ours": 1, "trl": 1} and len(res["ratio_per_round"]) == 1
    # the same batch on both sides: 4 prompts x 2 samples, at most 4 response tokens each
    assert 0 < res["completion_len_mean"]["ours"] <= 4 and 0 < res["completion_len_mean"]["trl"] <= 4
    tokens = res["tokens_per_step"]
    assert 0.75 < tokens["ours"] / tokens["trl"] < 1.33  # prompts differ (drawn in another order)
    assert "ratio ours/TRL" in out
    assert json.loads(out.strip().splitlines()[-1])["ratio"] == res["ratio"]


def test_missing_trl_message_says_how_to_install():
    bench = load_bench()
    assert "pip install trl" in bench.TRL_INSTALL_HINT and "torch==2.13.0" in bench.TRL_INSTALL_HINT
