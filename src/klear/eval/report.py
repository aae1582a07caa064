"""The markdown report: each benchmark's avg@k with its CI next to the paper's Klear-Reasoner-8B number.

Numbers are shown in percent with one decimal, like the paper's tables. The
interval is printed as [low, high] rather than ± a half-width: a bootstrap
interval near 0 or 100% is asymmetric, and a symmetric ± would misstate it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from klear.eval.metrics import BenchmarkSummary, MetricValue


@dataclass(frozen=True)
class PaperReference:
    """A number reported for Klear-Reasoner-8B (arXiv 2508.07629), in percent."""

    value: float
    metric: str  # the paper's metric for it, e.g. "avg@64"
    setting: str = "64K, YaRN 2.5"


#: Klear-Reasoner-8B's reported results (64K budget with YaRN), keyed by normalised benchmark name.
PAPER_REFERENCES: dict[str, PaperReference] = {
    "aime24": PaperReference(90.5, "avg@64"),
    "aime25": PaperReference(83.2, "avg@64"),
    "hmmt25": PaperReference(70.8, "avg@64"),
    "lcbv5": PaperReference(66.0, "avg@8"),
    "lcbv6": PaperReference(58.1, "avg@8"),
}

_ALIASES = {"livecodebenchv5": "lcbv5", "livecodebenchv6": "lcbv6"}


def paper_reference(benchmark: str) -> PaperReference | None:
    """The paper's number for a benchmark name, matching loosely ("AIME24", "lcb_v5", "livecodebench-v6")."""
    key = re.sub(r"[^a-z0-9]", "", benchmark.lower())
    return PAPER_REFERENCES.get(_ALIASES.get(key, key))


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}"


def _with_ci(metric: MetricValue) -> str:
    return f"{_pct(metric.value)} [{_pct(metric.ci_low)}, {_pct(metric.ci_high)}]"


def default_pass_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: enough to see the curve without n columns."""
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks


def render_markdown(
    summaries: Sequence[BenchmarkSummary],
    *,
    pass_ks: Sequence[int] | None = None,
    title: str | None = "Evaluation",
) -> str:
    """Markdown: a headline table (avg@k [CI], maj@k, pass@k at k = n, the paper's number) and a pass@k table.

    pass_ks: the k shown in the pass@k table; default 1, 2, 4, ... up to the
    largest n. A cell is blank where a benchmark has fewer samples than k.
    Every pass@k for k = 1..n, with intervals, is in summary.json.
    """
    if not summaries:
        raise ValueError("nothing to report")
    confidence = {s.confidence for s in summaries}
    level = f"{100 * next(iter(confidence)):g}%" if len(confidence) == 1 else "CI"
    lines: list[str] = []
    if title:
        lines += [f"# {title}", ""]
    lines += [
        f"| benchmark | problems | k | avg@k [{level} CI] | maj@k | pass@k | Klear-Reasoner-8B (paper) |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for s in summaries:
        n = s.n_samples
        maj = s.metrics.get(f"maj@{n}")
        reference = paper_reference(s.benchmark)
        paper = (
            "—" if reference is None else f"{reference.value:.1f} ({reference.metric}, {reference.setting})"
        )
        lines.append(
            f"| {s.benchmark} | {s.n_problems} | {n} | {_with_ci(s.metrics[f'avg@{n}'])} | "
            f"{'—' if maj is None else _pct(maj.value)} | {_pct(s.metrics[f'pass@{n}'].value)} | {paper} |"
        )
    ks = list(pass_ks) if pass_ks is not None else default_pass_ks(max(s.n_samples for s in summaries))
    lines += [
        "",
        "| benchmark | " + " | ".join(f"pass@{k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for s in summaries:
        cells = [_pct(s.metrics[f"pass@{k}"].value) if f"pass@{k}" in s.metrics else "" for k in ks]
        lines.append(f"| {s.benchmark} | " + " | ".join(cells) + " |")
    seeds = sorted({s.seed for s in summaries})
    boots = sorted({s.n_boot for s in summaries})
    lines += [
        "",
        f"Percent. avg@k: mean per-sample accuracy over k samples per problem (= pass@1); "
        f"pass@k: unbiased estimator; maj@k: majority vote, ties counted fractionally. "
        f"Intervals: percentile bootstrap over problems ({', '.join(map(str, boots))} resamples, "
        f"seed {', '.join(map(str, seeds))}). Paper numbers use a 64K budget with YaRN factor 2.5 "
        "over 32768 positions at temperature 0.6, top_p 0.95.",
        "",
    ]
    return "\n".join(lines)
