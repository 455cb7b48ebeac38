"""Platt scaling on the log-odds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from training.calibration import LogOddsCalibrator


def test_recovers_a_known_affine_map() -> None:
    rng = np.random.default_rng(0)
    margin = rng.normal(-1.0, 1.5, 200_000)
    y = (rng.random(margin.size) < expit(-2.0 + 0.7 * margin)).astype(int)
    cal = LogOddsCalibrator().fit(margin, y)
    assert cal.a_ == pytest.approx(-2.0, abs=0.03)
    assert cal.b_ == pytest.approx(0.7, abs=0.02)
    assert cal.calibration_.a == cal.a_ and cal.calibration_.b == cal.b_
    proba = cal.predict_proba(margin[:5])
    np.testing.assert_allclose(proba[:, 1], expit(cal.a_ + cal.b_ * margin[:5]))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_matches_the_maximum_likelihood_optimum() -> None:
    rng = np.random.default_rng(1)
    margin = rng.normal(size=3000)
    y = (rng.random(3000) < expit(0.3 + 1.4 * margin)).astype(int)
    cal = LogOddsCalibrator().fit(margin, y)
    z = cal.a_ + cal.b_ * margin
    grad = np.array([np.sum(y - expit(z)), np.sum((y - expit(z)) * margin)])
    assert np.abs(grad).max() < 1e-6  # the score equations hold at the fit


def test_estimator_contract() -> None:
    cal = LogOddsCalibrator(max_iter=50)
    assert cal.get_params() == {"max_iter": 50, "tol": 1e-10}
    assert clone(cal).get_params() == cal.get_params()
    with pytest.raises(NotFittedError):
        cal.predict_logodds(np.zeros(2))
    with pytest.raises(ValueError, match="both classes"):
        cal.fit(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="same length"):
        cal.fit(np.zeros(3), np.array([0, 1]))
