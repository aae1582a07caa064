"""bench/rollout_decode.py with tiny settings: both sides run, the same responses, the JSON line."""

from __future__ import annotations

import json

import pytest

from tests.bench.scripts import load_script


def test_decode_bench_compares_both_sides_on_the_same_responses(capsys):
    res = load_script("rollout_decode").main(
        ["--rounds", "2", "--max-new-tokens", "6", "--prompts", "2", "1"]
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line["batches"]) == {"2x8", "1x8"} and line["speedup"] == res["batches"]["2x8"]["speedup"]
    for b in line["batches"].values():
        assert b["identical_responses"] == b["rows"]
        assert len(b["ratios"]) == 2 and b["speedup"] == pytest.approx(
            sorted(b["ratios"])[0] / 2 + sorted(b["ratios"])[1] / 2
        )
        assert b["lean_tokens_per_s"] > 0 and b["hf_tokens_per_s"] > 0
