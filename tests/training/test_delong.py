"""DeLong's AUC variance and the Herfindahl index against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training import metrics as m


def _scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(float)
    a = y + rng.normal(size=n)
    b = y * 0.2 + rng.normal(size=n) + 0.3 * a  # correlated with a, weaker
    return y, np.round(a, 1), b  # rounding makes ties, which midranks must handle


def test_delong_auc_equals_sklearn_and_its_variance_matches_a_bootstrap() -> None:
    y, a, b = _scores()
    aucs, cov = m.delong(y, [a, b])
    assert aucs[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert aucs[1] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    rng = np.random.default_rng(1)
    boot = []
    for _ in range(400):
        i = rng.integers(0, len(y), len(y))
        boot.append((roc_auc_score(y[i], a[i]), roc_auc_score(y[i], b[i])))
    bc = np.cov(np.array(boot).T)
    assert cov[0, 0] == pytest.approx(bc[0, 0], rel=0.3)
    assert cov[1, 1] == pytest.approx(bc[1, 1], rel=0.3)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert var_diff == pytest.approx(bc[0, 0] + bc[1, 1] - 2 * bc[0, 1], rel=0.3)


def test_auc_intervals() -> None:
    y, a, b = _scores()
    auc, low, high = m.auc_ci(y, a)
    assert low < auc < high and high - low < 0.2
    diff, d_low, d_high, p = m.auc_difference(y, a, b)
    assert diff == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert d_low < diff < d_high and p < 0.05  # a is clearly stronger on 400 rows
    same = m.auc_difference(y, a, a)
    assert same[0] == 0.0 and same[3] == 1.0
    assert np.isnan(m.auc_ci(np.zeros(5), np.arange(5.0))[0])


def test_herfindahl() -> None:
    assert m.herfindahl(np.array([5, 5, 5, 5])) == pytest.approx(0.25)
    assert m.herfindahl(np.array([0, 9, 0])) == 1.0
    assert np.isnan(m.herfindahl(np.zeros(3)))
