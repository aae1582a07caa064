"""``klear plan``'s weight-sync time: collective broadcast vs object store at a stated link bandwidth."""

from __future__ import annotations

import pytest

from klear.cli import main
from klear.config import load_recipe
from klear.plan.memory import SYNC_LINK_GB_PER_S, weight_sync_seconds
from klear.plan.planner import Cluster, plan
from klear.plan.shapes import PlanError

MATH = "recipes/klear-8b-math-rl.yaml"


def test_seconds_by_hand():
    # 10 GB to 4 engines at 20 GB/s: one broadcast 0.5 s; four copies through one link 2 s
    assert weight_sync_seconds(10 * 10**9, 4, 20.0) == {"collective": 0.5, "object_store": 2.0}


def test_8b_plan_gives_the_time_per_sync_at_the_assumed_bandwidth(capsys):
    cfg = load_recipe(MATH)
    ws = plan(cfg, Cluster(), arch="qwen3-8b")["rollout"]["weight_sync"]
    per_engine = ws["bytes_per_engine"]  # 8.19B parameters in bf16
    assert ws["link_gb_per_s"] == SYNC_LINK_GB_PER_S == 25.0 and ws["mode"] == "object_store"
    assert ws["seconds"]["collective"] == pytest.approx(per_engine / 25e9)  # ~0.66 s
    assert ws["seconds"]["object_store"] == pytest.approx(64 * per_engine / 25e9)  # 64 engines
    assert 0.6 < ws["seconds"]["collective"] < 0.7
    fast = plan(cfg, Cluster(link_gb_per_s=50.0), arch="qwen3-8b")["rollout"]["weight_sync"]
    assert fast["seconds"]["collective"] == pytest.approx(ws["seconds"]["collective"] / 2)
    assert main(["plan", MATH, "--arch", "qwen3-8b", "--link-gb-per-s", "50"]) == 0
    out = capsys.readouterr().out
    assert "time per sync at 50 GB/s per link: collective broadcast 0.33 s, object store 21.0 s" in out


@pytest.mark.parametrize("bad", [0.0, -3.0, float("inf"), float("nan")])
def test_bad_bandwidth_is_refused(bad, capsys):
    with pytest.raises(PlanError, match="link-gb-per-s"):
        Cluster(link_gb_per_s=bad)
    assert main(["plan", MATH, "--arch", "qwen3-8b", "--link-gb-per-s", str(bad)]) == 2
    assert "klear: error: --link-gb-per-s" in capsys.readouterr().err
