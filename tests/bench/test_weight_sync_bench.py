"""bench/weight_sync.py in a tiny mode: both ways sync bit-identical weights; the ratio and JSON are printed."""

from __future__ import annotations

import json

import pytest

from tests.bench.scripts import load_script

pytest.importorskip("ray", reason="klear[ray] is not installed")


def load_bench():
    return load_script("weight_sync")


def test_the_shape_has_about_the_asked_parameter_count():
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    bench = load_bench()
    for target in (1e6, 100e6, 300e6):
        with torch.device("meta"):  # shapes only, no memory
            model = Qwen3ForCausalLM(Qwen3Config(**bench.qwen3_config(target)))
        assert abs(sum(p.numel() for p in model.parameters()) / target - 1) < 0.1, target


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_weight_sync_bench_prints_the_ratio_and_json(capsys):
    bench = load_bench()
    res = bench.main(["--params", "1e6", "--rounds", "1", "--bucket-mb", "0.05", "--receivers", "1"])
    out = capsys.readouterr().out
    assert res["bit_identical"] == {"collective": True, "object_store": True}
    assert res["seconds_per_sync"]["collective"] > 0 and res["seconds_per_sync"]["object_store"] > 0
    assert res["ratio"] == pytest.approx(
        res["seconds_per_sync"]["object_store"] / res["seconds_per_sync"]["collective"]
    )
    assert res["bytes"] > 0.05 * 2**20  # several buckets
    assert "ratio object store / collective" in out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(res))
