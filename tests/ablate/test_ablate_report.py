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
