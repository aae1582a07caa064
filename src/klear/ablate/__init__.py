"""``klear ablate``: the paper's ablations at laptop scale, with paired seeds and honest intervals.

- :mod:`klear.ablate.registry`: what an ablation is (claim, baseline, variants) and ``ABLATIONS``;
- :mod:`klear.ablate.builtin`: the shipped entries (loss, filter, rl-vs-sft, sft-sources, sft-correctness, reward);
- :mod:`klear.ablate.sft_data`: synthetic SFT traces with injected slips, selected by sft-select;
- :mod:`klear.ablate.stats`: Student-t intervals, paired differences, verdicts;
- :mod:`klear.ablate.runner`: one seed's runs: shared SFT checkpoints, matched budgets, the estimate;
- :mod:`klear.ablate.schedule`: one queue of (ablation, seed) units over worker processes;
- :mod:`klear.ablate.report`: ``ablation.md``, ``ablation.json``, ``ablation.png``.
"""

from klear.ablate.registry import (
    ABLATIONS,
    Ablation,
    AblationError,
    Claim,
    Variant,
    all_ablations,
    get_ablation,
    register,
)

__all__ = [
    "ABLATIONS",
    "Ablation",
    "AblationError",
    "Claim",
    "Variant",
    "all_ablations",
    "get_ablation",
    "register",
]
