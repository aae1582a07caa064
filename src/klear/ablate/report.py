"""An ablation's results: statistics per variant and per claim, ``ablation.md``, ``ablation.json``, a plot.

Per variant: mean and 95% Student-t interval of the final held-out accuracy over seeds, of the
gain over the checkpoint it started from (RL and continued-SFT variants), and of the paired
difference to the baseline; the mean clip fractions (RL variants) and the samples generated.
Per claim: the paired interval of ``better - worse`` and its verdict (:func:`klear.ablate.stats.verdict`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from klear.ablate.registry import Ablation
from klear.ablate.runner import RunResult, Settings, result_dict
from klear.ablate.stats import Interval, mean_ci, paired_diff, verdict
from klear.io import write_atomic


def summarise(
    ab: Ablation, results: list[RunResult], s: Settings, seconds: float, estimate: dict[str, float]
) -> dict[str, Any]:
    """The statistics of ``results`` (every variant on the same seeds) as plain data."""
    by = {
        v.name: sorted((r for r in results if r.variant == v.name), key=lambda r: r.seed) for v in ab.variants
    }
    base = [r.final for r in by[ab.baseline]]
    variants: dict[str, Any] = {}
    for name, rs in by.items():
        finals = [r.final for r in rs]
        gains = [r.gain for r in rs]
        row: dict[str, Any] = {"final": mean_ci(finals).to_dict(), "seeds": [r.seed for r in rs]}
        row["gain"] = mean_ci(gains).to_dict() if all(g is not None for g in gains) else None  # type: ignore[arg-type]
        row["diff_to_baseline"] = None if name == ab.baseline else paired_diff(finals, base).to_dict()
        if rs[0].clip_high is not None:
            row["clip_frac_high"] = statistics.fmean(r.clip_high for r in rs)  # type: ignore[misc]
            row["clip_frac_low"] = statistics.fmean(r.clip_low for r in rs)  # type: ignore[misc]
            row["clip_frac"] = row["clip_frac_high"] + row["clip_frac_low"]
        if rs[0].generated_samples is not None:
            row["generated_samples"] = statistics.fmean(r.generated_samples for r in rs)  # type: ignore[misc]
        row["seconds"] = statistics.fmean(r.seconds for r in rs)
        variants[name] = row
    claims = []
    for c in ab.claims:
        diff = paired_diff([r.final for r in by[c.better]], [r.final for r in by[c.worse]])
        claims.append(
            {
                "text": c.text,
                "better": c.better,
                "worse": c.worse,
                "diff": diff.to_dict(),
                "verdict": verdict(diff),
            }
        )
    return {
        "ablation": ab.name,
        "claim": ab.claim,
        "baseline": ab.baseline,
        "metric": ab.metric_label,
        "notes": ab.notes,
        "recipes": {"rl": ab.rl_recipe, "sft": ab.sft_recipe},
        "seeds": s.seeds,
        "base_seed": s.base_seed,
        "variants": variants,
        "claims": claims,
        "seconds": seconds,
        "estimate_seconds": estimate["total"],
        "settings": {
            "user_rl": list(s.rl_overrides),
            "user_sft": list(s.sft_overrides),
            "rl": list(ab.rl),
            "sft": list(ab.sft),
            "variants": {
                v.name: {
                    "rl": list(v.rl),
                    "sft": list(v.sft),
                    "sft_data": v.sft_data,
                    "stage": v.stage,
                    "match": v.match,
                }
                for v in ab.variants
            },
        },
        "runs": [result_dict(r) for r in results],
    }


def _iv(d: dict[str, float] | None, signed: bool = False) -> str:
    if d is None:
        return "--"
    return Interval(d["mean"], d["low"], d["high"], int(d["n"])).points(signed=signed)


def markdown(summary: dict[str, Any]) -> str:
    """``ablation.md``: the claim, the table, the verdicts, the settings."""
    v0 = next(iter(summary["variants"].values()))
    has_clip = "clip_frac" in v0
    has_gen = "generated_samples" in v0
    head = [
        "variant",
        f"final {summary['metric']} (%, mean [95% CI])",
        "gain over start (points)",
        "paired diff to baseline (points)",
    ]
    if has_clip:
        head += ["clip frac high / low (%)"]
    if has_gen:
        head += ["samples generated"]
    lines = [
        f"# ablation `{summary['ablation']}`",
        "",
        f"**Paper's claim:** {summary['claim']}",
        "",
        f"{summary['seeds']} paired seeds ({_pairing(summary)}); "
        f"baseline: {summary['baseline']}; {summary['seconds'] / 60:.1f} min (estimated {summary['estimate_seconds'] / 60:.1f}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, row in summary["variants"].items():
        cells = [
            name + (" (baseline)" if name == summary["baseline"] else ""),
            _iv(row["final"]),
            _iv(row["gain"], signed=True),
            _iv(row["diff_to_baseline"], signed=True),
        ]
        if has_clip:
            cells.append(
                f"{100 * row['clip_frac_high']:.2f} / {100 * row['clip_frac_low']:.2f}"
                if "clip_frac" in row
                else "--"
            )
        if has_gen:
            cells.append(f"{row['generated_samples']:.0f}" if "generated_samples" in row else "--")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts", ""]
    for c in summary["claims"]:
        lines.append(
            f"- {c['text']}: {c['better']} - {c['worse']} = {_iv(c['diff'], signed=True)} points -> **{c['verdict']}**"
        )
    if summary["notes"]:
        lines += ["", summary["notes"]]
    lines += [
        "",
        f"Settings (overrides of recipes/{summary['recipes']['rl']} and recipes/{summary['recipes']['sft']}):",
        "",
    ]
    st = summary["settings"]
    lines.append(f"- every variant: RL `{' '.join(st['rl']) or '-'}`; SFT `{' '.join(st['sft']) or '-'}`")
    if st.get("user_rl") or st.get("user_sft"):
        lines.append(
            f"- given on the command line: RL `{' '.join(st['user_rl']) or '-'}`; SFT `{' '.join(st['user_sft']) or '-'}`"
        )
    for name, vs in st["variants"].items():
        parts = [f"stage {vs['stage']}"]
        for key in ("rl", "sft"):
            if vs[key]:
                parts.append(f"{key.upper()} `{' '.join(vs[key])}`")
        if vs["sft_data"]:
            parts.append(f"SFT data `{vs['sft_data']}`")
        if vs["match"]:
            parts.append(f"matches {vs['match'][0]!r} in {vs['match'][1]}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def _pairing(summary: dict[str, Any]) -> str:
    stages = {v["stage"] for v in summary["settings"]["variants"].values()}
    if stages == {"sft"}:
        return (
            "seed k of every variant starts from the same freshly built model and seeds its data order alike"
        )
    return "seed k of every variant starts from the same SFT checkpoint"


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    return [f"{c['text']}: {_iv(c['diff'], signed=True)} points -> {c['verdict']}" for c in summary["claims"]]


def plot(summary: dict[str, Any], png: Path) -> None:
    """Mean accuracy vs step per variant with its 95% t-band over seeds (runs share their x points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in summary["variants"]:
        runs = [r for r in summary["runs"] if r["variant"] == name]
        xs = sorted({round(p[0], 6) for p in runs[0]["curve"]})
        mean, low, high, used = [], [], [], []
        for x in xs:
            vals = [p[1] for r in runs for p in r["curve"] if round(p[0], 6) == x]
            if len(vals) < len(runs):
                continue  # a point not every seed has (an early stop) is left out of the band
            iv = mean_ci(vals)
            used.append(x)
            mean.append(100 * iv.mean)
            low.append(100 * iv.low)
            high.append(100 * iv.high)
        (line,) = ax.plot(used, mean, marker="o", ms=3, label=name)
        ax.fill_between(used, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{summary['metric']} (%)")
    ax.set_title(f"klear ablate {summary['ablation']} ({summary['seeds']} seeds, 95% CI bands)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def write_report(summary: dict[str, Any], out: Path) -> None:
    write_atomic(out / "ablation.json", json.dumps(summary, indent=2))
    write_atomic(out / "ablation.md", markdown(summary))
    plot(summary, out / "ablation.png")
