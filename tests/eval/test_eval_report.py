"""The markdown report shows our numbers with intervals next to the paper's."""

from __future__ import annotations

import pytest

from klear.eval.metrics import summarize
from klear.eval.report import default_pass_ks, paper_reference, render_markdown


def test_report_renders_with_paper_reference():
    aime = summarize("aime24", [[True, True, False, True]] * 2 + [[False] * 4], [["1"] * 4] * 3, n_boot=200)
    custom = summarize("my_set", [[True, False]], [["1", "2"]], n_boot=50)
    text = render_markdown([aime, custom])
    lines = text.splitlines()
    assert lines[0] == "# Evaluation"
    aime_row = next(line for line in lines if line.startswith("| aime24 | 3 | 4 |"))
    m = aime.metrics["avg@4"]
    assert f"{100 * m.value:.1f} [{100 * m.ci_low:.1f}, {100 * m.ci_high:.1f}]" in aime_row
    assert "50.0 [" in aime_row  # 6 of 12 samples right
    assert "90.5 (avg@64, 64K, YaRN 2.5)" in aime_row
    custom_row = next(line for line in lines if line.startswith("| my_set |"))
    assert custom_row.endswith("| — |")
    assert "| benchmark | pass@1 | pass@2 | pass@4 |" in text
    # my_set has n = 2: its pass@4 cell is blank rather than invented.
    assert next(line for line in lines if line.startswith("| my_set | 50.0")).endswith("|  |")


def test_paper_reference_names():
    assert paper_reference("AIME25").value == 83.2
    assert paper_reference("hmmt25").value == 70.8
    assert paper_reference("lcb_v5").value == 66.0 and paper_reference("lcb_v5").metric == "avg@8"
    assert paper_reference("LiveCodeBench-v6").value == 58.1
    assert paper_reference("humaneval") is None


def test_default_pass_ks():
    assert default_pass_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_pass_ks(5) == [1, 2, 4, 5]
    assert default_pass_ks(1) == [1]


def test_empty_report_is_an_error():
    with pytest.raises(ValueError):
        render_markdown([])
