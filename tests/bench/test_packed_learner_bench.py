"""bench/packed_learner.py in a tiny mode: both layouts run, the ratio and its JSON line are printed."""

from __future__ import annotations

import json

import pytest

from tests.bench.scripts import load_script


def load_bench():
    return load_script("packed_learner")


@pytest.mark.timeout(120)
def test_packed_learner_bench_prints_the_ratio_and_json(capsys):
    bench = load_bench()
    res = bench.main(["--sequences", "6", "--rounds", "1", "--max-response", "24", "--budget", "128"])
    out = capsys.readouterr().out
    assert res["tokens_per_s"]["padded"] > 0 and res["tokens_per_s"]["packed"] > 0
    assert len(res["ratio_per_round"]) == 1
    assert res["ratio"] == pytest.approx(res["tokens_per_s"]["packed"] / res["tokens_per_s"]["padded"])
    # every layout computes at least the real tokens; packing never computes more than padding here
    assert res["real_tokens"] <= res["packed_tokens"] <= res["padded_tokens"]
    assert "ratio packed/padded tokens/s" in out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(res))


def test_odd_sequence_count_is_refused():
    with pytest.raises(SystemExit, match="even"):
        load_bench().main(["--sequences", "3"])
