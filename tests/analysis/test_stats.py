"""Paired statistics, the exact sign test and Holm, checked against scipy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from qat_lab.analysis import stats


def test_paired_t_matches_scipy_ttest_rel():
    rng = np.random.default_rng(1)
    a, b = rng.normal(2.0, 0.1, 7), rng.normal(1.95, 0.1, 7)
    p = stats.paired(a - b)
    ref = sps.ttest_rel(a, b)
    assert p.t == pytest.approx(ref.statistic, rel=1e-12)
    assert p.p_t == pytest.approx(ref.pvalue, rel=1e-10)
    assert p.df == 6 and p.n == 7
    assert p.z == p.t  # same statistic...
    assert p.p_z == pytest.approx(2 * sps.norm.sf(abs(p.t)), rel=1e-12)  # ...read against the normal
    assert p.p_z < p.p_t  # the normal is the more optimistic reading with few seeds


def test_wins_ties_and_the_exact_sign_test():
    d = np.array([0.01, 0.02, 0.0, -0.01, 0.03, 0.01])
    p = stats.paired(d)
    assert (p.wins, p.ties, p.n) == (4, 1, 6)
    # Ties are dropped: 4 wins out of 5 informative seeds.
    assert p.p_sign == pytest.approx(sps.binomtest(4, 5, 0.5).pvalue, rel=1e-12)


@pytest.mark.parametrize("wins,losses", [(10, 0), (0, 10), (5, 0), (7, 3), (3, 3), (1, 0), (12, 5)])
def test_sign_test_equals_scipy_binomtest(wins, losses):
    assert stats.sign_test_p(wins, losses) == pytest.approx(sps.binomtest(wins, wins + losses, 0.5).pvalue, rel=1e-12)


def test_ten_of_ten_gives_0_002_and_five_seeds_can_never_be_significant():
    assert stats.sign_test_p(10, 0) == pytest.approx(0.001953125)
    assert stats.sign_test_p(5, 0) == pytest.approx(0.0625)


def test_one_seed_has_no_t_and_identical_differences_are_infinitely_sure():
    one = stats.paired(np.array([0.01]))
    assert math.isnan(one.t) and math.isnan(one.p_t) and math.isnan(one.sd)
    assert one.wins == 1 and one.p_sign == 1.0
    same = stats.paired(np.array([0.01, 0.01, 0.01]))
    assert same.t == math.inf and same.p_t == 0.0


def test_holm_matches_statsmodels_and_skips_nan():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, 12)
    ref = multipletests(p, method="holm")[1]
    np.testing.assert_allclose(stats.holm(p), ref, rtol=1e-12)
    with_nan = np.array([0.01, np.nan, 0.04, 0.03])
    out = stats.holm(with_nan)
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], multipletests([0.01, 0.04, 0.03], method="holm")[1], rtol=1e-12)
