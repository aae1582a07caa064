"""Paired statistics of `klear ablate` against hand computations."""

import math

import pytest

from klear.ablate.stats import Interval, mean_ci, paired_diff, t_cdf, t_quantile, verdict


@pytest.mark.parametrize(
    ("df", "q"),
    # two-sided 95% Student t critical values (any printed t table)
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (1000, 1.9623)],
)
def test_t_quantile_matches_the_table(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=1e-4)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-5)


def test_t_cdf_closed_form_for_one_and_two_degrees_of_freedom():
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-10)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-10)


def test_mean_ci_by_hand():
    # values 0.2, 0.4, 0.6: mean 0.4, s = 0.2, half = 4.3027 * 0.2 / sqrt(3) = 0.49683
    iv = mean_ci([0.2, 0.4, 0.6])
    assert iv.mean == pytest.approx(0.4)
    assert iv.high - iv.mean == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-6)
    assert iv.mean - iv.low == pytest.approx(iv.high - iv.mean)
    assert iv.n == 3
    single = mean_ci([0.3])
    assert (single.low, single.mean, single.high) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_difference_is_taken_per_seed_first():
    # the seed moves both arms a lot; the treatment is always 2-4 points better
    base = [0.10, 0.50, 0.80, 0.30, 0.60]
    treat = [0.13, 0.52, 0.84, 0.32, 0.63]
    d = [0.03, 0.02, 0.04, 0.02, 0.03]  # mean 0.028, s = 0.008367
    iv = paired_diff(treat, base)
    assert iv.mean == pytest.approx(0.028)
    half = 2.776445 * 0.0083666 / math.sqrt(5)
    assert iv.low == pytest.approx(0.028 - half, abs=1e-6) and iv.high == pytest.approx(
        0.028 + half, abs=1e-6
    )
    assert iv.low > 0  # paired: clearly positive
    unpaired = mean_ci(treat).low - mean_ci(base).high
    assert unpaired < 0  # while the two per-arm intervals overlap widely
    assert verdict(iv) == "reproduced"
    assert sum(d) / 5 == pytest.approx(iv.mean)
    with pytest.raises(ValueError, match="pair up"):
        paired_diff([0.1, 0.2], [0.1])


def test_verdict_rules():
    assert verdict(Interval(0.05, 0.01, 0.09, 5)) == "reproduced"
    assert verdict(Interval(-0.05, -0.09, -0.01, 5)) == "reversed"
    assert verdict(Interval(0.05, -0.01, 0.11, 5)) == "not distinguishable at this scale"
    assert (
        verdict(Interval(0.0, 0.0, 0.0, 5)) == "not distinguishable at this scale"
    )  # touching 0 is not above
    assert verdict(Interval(0.3, 0.3, 0.3, 1)) == "not distinguishable at this scale"  # one seed: no interval


def test_interval_points_format():
    assert Interval(0.031, -0.004, 0.066, 5).points(signed=True) == "+3.1 [-0.4, +6.6]"
    assert Interval(0.62, 0.59, 0.649, 3).points() == "62.0 [59.0, 64.9]"
