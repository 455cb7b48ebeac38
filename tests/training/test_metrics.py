"""Metrics on hand-made vectors."""

from __future__ import annotations

import numpy as np
import pytest

from training import metrics as m
from training.model import MasterScale


def test_ece_equal_count_bins_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.9])
    # bins {0.1, 0.2}: observed 0, mean 0.15; {0.7, 0.9}: observed 1, mean 0.8
    assert m.ece(y, p, n_bins=2) == pytest.approx(0.5 * 0.15 + 0.5 * 0.2)
    # one bin: |0.5 - 0.475|
    assert m.ece(y, p, n_bins=1) == pytest.approx(0.025)
    # bins are equal-count on the sorted predictions, whatever the input order
    order = np.array([3, 0, 2, 1])
    assert m.ece(y[order], p[order], n_bins=2) == pytest.approx(0.175)
    # perfect calibration within bins: zero
    assert m.ece(np.array([0, 1, 0, 1]), np.full(4, 0.5), n_bins=2) == pytest.approx(0.0)
    bins = m.calibration_bins(y, p, n_bins=2)
    assert bins["n"].tolist() == [2, 2]


def test_ks_auc_and_friends_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert m.auc(y, s) == pytest.approx(0.75)  # 3 of 4 (bad, good) pairs ranked right
    assert m.ks(y, s) == pytest.approx(0.5)
    assert m.ks(y, np.array([0.1, 0.2, 0.7, 0.9])) == pytest.approx(1.0)
    assert m.brier(y, np.array([0.0, 0.5, 0.5, 1.0])) == pytest.approx((0 + 0.25 + 0.25 + 0) / 4)
    assert m.log_loss(np.array([1]), np.array([0.5])) == pytest.approx(np.log(2))
    assert m.pr_auc(y, np.array([0.1, 0.2, 0.7, 0.9])) == pytest.approx(1.0)
    assert np.isnan(m.auc(np.zeros(3), np.arange(3.0)))
    s2 = m.summary(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert s2["gini"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in length"):
        m.auc(y, s[:3])
    with pytest.raises(ValueError, match="0 or 1"):
        m.ece(np.array([0, 2]), np.array([0.1, 0.2]))


def test_binomial_intervals() -> None:
    low, high = m.clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))
    low, high = m.clopper_pearson(5, 10)
    assert (low, high) == (pytest.approx(0.187086, abs=1e-6), pytest.approx(0.812914, abs=1e-6))
    low, high = m.wilson(5, 10)
    assert (low, high) == (pytest.approx(0.236593, abs=1e-6), pytest.approx(0.763407, abs=1e-6))
    assert m.clopper_pearson(10, 10)[1] == 1.0
    assert all(np.isnan(m.wilson(0, 0)))


def test_by_grade_counts_every_row_once() -> None:
    rng = np.random.default_rng(0)
    p = rng.beta(1, 20, 5000)
    y = (rng.random(5000) < p).astype(int)
    table = m.by_grade(y, p, MasterScale())
    assert table["n"].sum() == 5000 and table["defaults"].sum() == y.sum()
    full = table[table["n"] > 100]
    assert (full["ci_low"] <= full["observed_rate"]).all()
    assert (full["observed_rate"] <= full["ci_high"]).all()
    assert full["within_ci"].mean() > 0.7  # calibrated by construction


def test_psi() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=20000)
    assert m.psi_of_values(a, rng.normal(size=20000)) < 0.01
    assert m.psi_of_values(a, rng.normal(1.0, 1.0, size=20000)) > 0.25


def test_jeffreys_test_against_the_beta_posterior_worked_by_hand() -> None:
    # 10 defaults in 200 obligors: posterior Beta(10.5, 190.5); PD 2 % is too low, 6 % is fine
    p_low, lo, hi = m.jeffreys_test(10, 200, 0.02)
    p_ok, _, _ = m.jeffreys_test(10, 200, 0.06)
    assert p_low < m.JEFFREYS_ALPHA < p_ok
    from scipy.stats import beta as beta_dist

    assert p_low == pytest.approx(beta_dist.cdf(0.02, 10.5, 190.5), rel=1e-12)
    assert lo < 10 / 200 < hi
    assert all(np.isnan(v) for v in m.jeffreys_test(0, 0, 0.01))


def test_by_grade_flags_a_grade_whose_pd_is_too_low() -> None:
    scale = MasterScale()
    p = np.r_[np.full(1000, 0.01), np.full(100, 0.5)]
    y = np.r_[np.zeros(950), np.ones(50), np.ones(50), np.zeros(50)]  # 1 % PD: 5 % realised
    table = m.by_grade(y, p, scale).set_index("grade")
    low, high = scale.grade(np.array([0.01, 0.5]))
    assert not table.loc[low, "jeffreys_pass"] and table.loc[high, "jeffreys_pass"]
    assert table.loc[[g for g in table.index if g not in (low, high)], "jeffreys_pass"].all()
