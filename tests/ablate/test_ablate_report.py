"""The report of an ablation from known per-seed results (no training): statistics, table, verdicts, plot."""

import json
import math

import pytest

from klear.ablate import Ablation, Claim, Variant
from klear.ablate.report import markdown, summarise, verdict_lines, write_report
from klear.ablate.runner import RunResult, Settings

AB = Ablation(
    name="toy",
    claim="b beats a",
    baseline="a",
    variants=(Variant("a"), Variant("b"), Variant("c")),
    claims=(Claim("b beats a", better="b", worse="a"), Claim("c beats a", better="c", worse="a")),
)


def _run(name, seed, start, final, clip=(0.01, 0.02)):
    return RunResult(
        name,
        seed,
        final,
        start,
        [(0.0, start), (4.0, (start + final) / 2), (8.0, final)],
        30.0,
        "x",
        clip_high=clip[0],
        clip_low=clip[1],
        generated_samples=1024,
    )


def _results():
    starts = [0.2, 0.5, 0.7]
    a = [0.30, 0.60, 0.75]
    b = [0.35, 0.64, 0.81]  # +5, +4, +6 over a
    c = [0.20, 0.50, 0.70]  # -10, -10, -5 under a
    return [
        _run(name, k, starts[k], vals[k]) for name, vals in (("a", a), ("b", b), ("c", c)) for k in range(3)
    ]


def test_summary_statistics_by_hand(tmp_path):
    s = summarise(AB, _results(), Settings(out=tmp_path, seeds=3), seconds=90.0, estimate={"total": 80.0})
    t2 = 4.302653  # t_{0.975, 2}
    b = s["variants"]["b"]
    assert b["final"]["mean"] == pytest.approx(0.6)
    # paired diff b - a: 0.05, 0.04, 0.06 -> mean 0.05, s 0.01
    assert b["diff_to_baseline"]["mean"] == pytest.approx(0.05)
    assert b["diff_to_baseline"]["high"] - 0.05 == pytest.approx(t2 * 0.01 / math.sqrt(3), rel=1e-5)
    # gain over start: 0.15, 0.14, 0.11
    assert b["gain"]["mean"] == pytest.approx(0.4 / 3)
    assert s["variants"]["a"]["diff_to_baseline"] is None
    assert b["clip_frac"] == pytest.approx(0.03) and b["generated_samples"] == 1024
    verdicts = {c["text"]: c["verdict"] for c in s["claims"]}
    assert verdicts == {"b beats a": "reproduced", "c beats a": "reversed"}


def test_markdown_json_and_plot(tmp_path):
    s = summarise(AB, _results(), Settings(out=tmp_path, seeds=3), seconds=90.0, estimate={"total": 80.0})
    md = markdown(s)
    assert "| a (baseline) | 55.0 [" in md
    assert "| b | 60.0 [" in md and "+5.0 [" in md
    assert "- b beats a: b - a = +5.0 [+2.5, +7.5] points -> **reproduced**" in md
    assert "**reversed**" in md and "1.00 / 2.00" in md
    assert verdict_lines(s)[1].startswith("c beats a: -8.3 [")
    write_report(s, tmp_path)
    assert json.loads((tmp_path / "ablation.json").read_text())["claims"][0]["verdict"] == "reproduced"
    assert (tmp_path / "ablation.png").stat().st_size > 5000


def test_run_line_reports_short_batches_only_when_short():
    from klear.ablate.schedule import run_line

    res = _run("gppo", 3, 0.5, 0.25, clip=(0.01, 0.0275))
    res.extra = {"kept_groups_mean": 2.5, "groups_per_step": 16}
    assert run_line(res) == (
        "gppo, seed 3: accuracy 25.0% (-25.0 over its start), clip 3.75%, kept 2.5/16 groups a step in 30 s"
    )
    res.extra["kept_groups_mean"] = 16.0
    assert "kept" not in run_line(res)
    sft = RunResult("top-1 source", 0, 0.4, None, [(100.0, 0.4)], 12.0, "x")
    assert run_line(sft) == "top-1 source, seed 0: accuracy 40.0% in 12 s"


def test_short_batch_warnings_quiet_inside_an_ablation_only():
    import logging

    from klear.ablate.runner import quiet_short_batches
    from klear.train.rollouts import short_batch_log

    assert short_batch_log.isEnabledFor(logging.WARNING)
    with quiet_short_batches():
        assert not short_batch_log.isEnabledFor(logging.WARNING)
        assert logging.getLogger("klear.rl").isEnabledFor(logging.WARNING)  # other warnings still show
    assert short_batch_log.isEnabledFor(logging.WARNING)
