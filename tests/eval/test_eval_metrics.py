"""avg@k, pass@k, maj@k and the bootstrap against counts done by hand."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from klear.eval.metrics import (
    BenchmarkSummary,
    ScoredSample,
    bootstrap_ci,
    group_samples,
    majority_vote,
    pass_at_k,
    pass_at_k_table,
    summarize,
    summarize_samples,
)

# ----------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_example_n5_c2():
    # 5 samples, 2 right. pass@k = 1 - C(3, k) / C(5, k):
    # k=1: 1 - 3/5 = 0.4; k=2: 1 - 3/10 = 0.7; k=3: 1 - 1/10 = 0.9; k=4, 5: no all-wrong subset -> 1.
    assert [pass_at_k(5, 2, k) for k in range(1, 6)] == pytest.approx([0.4, 0.7, 0.9, 1.0, 1.0], abs=1e-15)


def test_pass_at_k_all_right_and_all_wrong():
    for n in (1, 4, 64):
        for k in range(1, n + 1):
            assert pass_at_k(n, n, k) == 1.0
            assert pass_at_k(n, 0, k) == 0.0


def test_pass_at_k_with_k_equal_n_is_any_correct():
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0


def test_pass_at_1_is_fraction_correct():
    for n in (3, 16, 64):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-15)


def test_pass_at_k_stable_for_large_n_small_c():
    # n = 1000, c = 1, k = 10: 1 - C(999,10)/C(1000,10) = 1 - 990/1000 = 0.01 exactly.
    assert pass_at_k(1000, 1, 10) == pytest.approx(0.01, rel=1e-12)
    table = pass_at_k_table(64)
    assert table.shape == (65, 64)
    assert np.all(np.diff(table, axis=1) >= -1e-15)  # more tries never hurt
    assert np.all(np.diff(table, axis=0) >= -1e-15)  # more correct samples never hurt


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 0)


# ----------------------------------------------------------------------------- maj@k


def test_majority_vote_clear_winner():
    assert majority_vote([True, True, False], ["5", "5", "7"]) == 1.0
    assert majority_vote([True, False, False], ["5", "7", "7"]) == 0.0


def test_majority_vote_pools_correct_answers_across_spellings():
    # "1/2" and "\frac{1}{2}" are both right, so they vote together: 2 votes beat "3" x 1.
    assert majority_vote([True, True, False], ["1/2", "\\frac{1}{2}", "3"]) == 1.0
    # By string alone they would be three 1-vote groups (a 1/3 tie).


def test_majority_vote_ties_count_fractionally():
    # Two groups of two votes: correct vs "7" -> a coin flip -> 1/2.
    assert majority_vote([True, True, False, False], ["5", "5", "7", "7"]) == 0.5
    # Three groups of one: correct, "7", "8" -> 1/3.
    assert majority_vote([True, False, False], ["5", "7", "8"]) == pytest.approx(1 / 3)
    # A tie between two wrong groups above the correct one -> 0.
    assert majority_vote([True, False, False, False, False], ["5", "7", "7", "8", "8"]) == 0.0


def test_majority_vote_whitespace_and_missing_answers():
    # "1 0" and "10" are one wrong group of two: beats the single correct vote.
    assert majority_vote([True, False, False], ["5", "1 0", "10"]) == 0.0
    # Unextracted answers (None or blank) are one "no answer" group, which can win...
    assert majority_vote([True, False, False], ["5", None, "  "]) == 0.0
    # ...or tie...
    assert majority_vote([True, False], ["5", None]) == 0.5
    # ...or lose.
    assert majority_vote([True, True, False], ["5", "5", None]) == 1.0
    assert majority_vote([False, False], [None, None]) == 0.0


def test_majority_vote_length_mismatch():
    with pytest.raises(ValueError):
        majority_vote([True], ["1", "2"])


# ----------------------------------------------------------------------------- summary


def test_summary_hand_counts():
    # 3 problems x 4 samples: 4/4, 1/4, 0/4 right.
    correct = [[True] * 4, [False, True, False, False], [False] * 4]
    answers = [["1"] * 4, ["2", "9", "2", "3"], ["x", "y", "z", None]]
    s = summarize("toy", correct, answers, problem_ids=["a", "b", "c"], n_boot=500)
    assert s.n_problems == 3 and s.n_samples == 4
    assert list(s.metrics) == ["avg@4", "pass@1", "pass@2", "pass@3", "pass@4", "maj@4"]
    assert s.per_problem == {"a": 1.0, "b": 0.25, "c": 0.0}
    assert s.metrics["avg@4"].value == pytest.approx((1 + 0.25 + 0) / 3)
    assert s.metrics["pass@1"].value == pytest.approx(s.metrics["avg@4"].value)
    # problem b, c=1 of 4: pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@3 = 3/4, pass@4 = 1.
    assert s.metrics["pass@2"].value == pytest.approx((1 + 0.5 + 0) / 3)
    assert s.metrics["pass@3"].value == pytest.approx((1 + 0.75 + 0) / 3)
    assert s.metrics["pass@4"].value == pytest.approx(2 / 3)
    # maj: a right; b: "2" x2 beats the correct "9" x1 -> wrong; c: three 1-vote wrong groups -> 0.
    assert s.metrics["maj@4"].value == pytest.approx(1 / 3)


def test_summary_keys_spell_the_actual_k():
    rng = np.random.default_rng(1)
    correct = (rng.random((30, 64)) < 0.5).tolist()
    answers = [["7"] * 64 for _ in range(30)]
    s = summarize("aime24", correct, answers, n_boot=200)
    assert "avg@64" in s.metrics and "maj@64" in s.metrics
    assert [f"pass@{k}" for k in range(1, 65)] == [k for k in s.metrics if k.startswith("pass@")]


def test_summary_every_sample_right_or_wrong():
    right = summarize("r", [[True] * 8] * 5, [["1"] * 8] * 5, n_boot=100)
    wrong = summarize("w", [[False] * 8] * 5, [["1"] * 8] * 5, n_boot=100)
    for key, metric in right.metrics.items():
        assert (metric.value, metric.ci_low, metric.ci_high) == (1.0, 1.0, 1.0), key
    for key, metric in wrong.metrics.items():
        assert (metric.value, metric.ci_low, metric.ci_high) == (0.0, 0.0, 0.0), key


def test_summary_without_answers_has_no_maj():
    s = summarize("x", [[True, False]], n_boot=10)
    assert not any(k.startswith("maj@") for k in s.metrics)


def test_summary_rejects_ragged_and_non_bool():
    with pytest.raises(ValueError, match="same n"):
        summarize("x", [[True, False], [True]], problem_ids=["p", "q"])
    with pytest.raises(ValueError, match="bool"):
        summarize("x", [[True, 0.5]])
    with pytest.raises(ValueError, match="no problems"):
        summarize("x", [])


def test_summary_roundtrips_through_dict():
    s = summarize("x", [[True, False], [False, False]], [["1", "2"], ["3", "3"]], n_boot=50)
    again = BenchmarkSummary.from_dict(s.to_dict())
    assert again == s
    assert s.to_dict()["metrics"]["avg@2"] == {"value": 0.25, "ci": [s.metrics["avg@2"].ci_low, 0.5]}


def test_summarize_samples_groups_and_orders_by_sample_index():
    samples = [
        ScoredSample("q", 1, False, "3"),
        ScoredSample("p", 0, True, "1"),
        ScoredSample("q", 0, True, "1"),
        ScoredSample("p", 1, True, "1"),
    ]
    ids, correct, answers = group_samples(samples, ["p", "q"])
    assert ids == ["p", "q"] and correct == [[True, True], [True, False]] and answers[1] == ["1", "3"]
    s = summarize_samples("x", samples, problem_ids=["p", "q"], maj_ks=(1, 2), n_boot=20)
    assert s.metrics["maj@1"].value == 1.0  # first sample of each problem is right
    assert s.metrics["maj@2"].value == pytest.approx((1 + 0.5) / 2)  # q ties 1-1


def test_group_samples_refuses_missing_unknown_and_duplicate():
    with pytest.raises(ValueError, match="no samples"):
        group_samples([ScoredSample("p", 0, True)], ["p", "q"])
    with pytest.raises(ValueError, match="unknown"):
        group_samples([ScoredSample("p", 0, True), ScoredSample("z", 0, True)], ["p"])
    with pytest.raises(ValueError, match="twice"):
        group_samples([ScoredSample("p", 0, True), ScoredSample("p", 0, False)])


def test_scored_sample_roundtrip():
    sample = ScoredSample("p", 3, True, "42", 1.0, ("timeout",))
    assert ScoredSample.from_dict(sample.to_dict()) == sample


# ----------------------------------------------------------------------------- bootstrap


def test_ci_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    correct = (rng.random((30, 16)) < rng.random((30, 1))).tolist()
    answers = [[str(a) for a in rng.integers(0, 3, 16)] for _ in range(30)]
    s1 = summarize("x", correct, answers, seed=7)
    s2 = summarize("x", correct, answers, seed=7)
    assert s1 == s2
    for key, m in s1.metrics.items():
        assert m.ci_low <= m.value <= m.ci_high, key
    assert s1.metrics["avg@16"].ci_high - s1.metrics["avg@16"].ci_low > 0.05


def test_ci_narrows_with_more_problems():
    rng = np.random.default_rng(0)
    p = rng.random((1000, 1))
    big = rng.random((1000, 8)) < p
    small = big[:30]

    def width(matrix):
        m = summarize("x", matrix.tolist(), n_boot=1000).metrics["avg@8"]
        return m.ci_high - m.ci_low

    assert width(big) < 0.4 * width(small)


def test_ci_narrows_with_more_samples_per_problem():
    # Every problem is a coin flip: the spread across problems is pure sampling noise, which shrinks as 1/sqrt(n).
    rng = np.random.default_rng(0)

    def width(n):
        m = summarize("x", (rng.random((30, n)) < 0.5).tolist(), n_boot=1000).metrics[f"avg@{n}"]
        return m.ci_high - m.ci_low

    assert width(256) < 0.3 * width(4)


def test_bootstrap_matches_standard_error_of_mean():
    # For the mean of P values the bootstrap sd is about sd/sqrt(P): a 95% interval spans ~3.92 of it.
    rng = np.random.default_rng(3)
    values = rng.random(400)
    low, high = bootstrap_ci(values, n_boot=4000, seed=1)
    expected = 2 * 1.96 * values.std() / math.sqrt(len(values))
    assert high - low == pytest.approx(expected, rel=0.1)


def test_bootstrap_single_problem_and_bad_args():
    low, high = bootstrap_ci(np.array([0.25]))
    assert low == high == 0.25
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([1.0]), confidence=1.0)


def test_summary_is_fast_for_1000_problems_x_64_samples():
    rng = np.random.default_rng(0)
    correct = (rng.random((1000, 64)) < rng.random((1000, 1))).tolist()
    answers = [[str(a) for a in row] for row in rng.integers(0, 4, (1000, 64))]
    start = time.perf_counter()
    s = summarize("big", correct, answers)
    assert time.perf_counter() - start < 5.0
    assert s.metrics["pass@64"].value >= s.metrics["pass@1"].value
