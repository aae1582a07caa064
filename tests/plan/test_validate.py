"""The learner formula against measured peak RSS of tiny random Qwen3 models on CPU (within 25%)."""

from __future__ import annotations

import pytest

from klear.plan.validate import Case, compare


@pytest.mark.slow
def test_learner_formula_within_25_percent_of_measured_peaks():
    # 3 lengths x 2 vocabularies, and checkpointing at the longest; the increment of peak RSS
    # over a warm process, measured in one subprocess (see klear.plan.validate)
    cases = [Case(v, n) for v in (32000, 151936) for n in (512, 1024, 2048)] + [Case(32000, 2048, True)]
    rows = compare(cases, hidden=128, layers=4, chunk_tokens=1024)
    assert len(rows) == len(cases)
    for r in rows:
        assert 0.75 <= r["ratio"] <= 1.25, r
    # the measurement sees what the formula claims: chunked logits stop growing past the chunk,
    # and checkpointing saves memory at 2,048 tokens
    by = {(r["vocab"], r["tokens"], r["checkpointing"]): r["measured"] for r in rows}
    assert by[(151936, 1024, False)] > 1.5 * by[(151936, 512, False)]
    assert by[(32000, 2048, True)] < by[(32000, 2048, False)]
