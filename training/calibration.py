"""Platt scaling on the log-odds: ``z = a + b·margin``, fitted by maximum likelihood.

Calibrating the log-odds with an affine map (not isotonic regression) keeps the calibrated model a
sum of per-feature terms, so SHAP contributions convert exactly into score points.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_expit
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from training.model import LogOddsCalibration


class LogOddsCalibrator(BaseEstimator):
    """Unpenalised logistic regression of the label on the booster's margin (Newton's method).

    After `fit`: ``a_``, ``b_``, ``n_iter_`` and ``calibration_`` (a `LogOddsCalibration`).
    """

    def __init__(self, max_iter: int = 100, tol: float = 1e-10) -> None:
        self.max_iter = max_iter
        self.tol = tol

    def fit(
        self, margin: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> LogOddsCalibrator:
        x = np.asarray(margin, dtype=np.float64).ravel()
        t = np.asarray(y, dtype=np.float64).ravel()
        w = np.ones_like(x) if sample_weight is None else np.asarray(sample_weight, np.float64)
        if not (x.shape == t.shape == w.shape):
            raise ValueError("margin, y and sample_weight must have the same length")
        if not np.isfinite(x).all():
            raise ValueError("margins must be finite")
        if not np.isin(t, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1")
        if t.min() == t.max():
            raise ValueError("calibration needs both classes")
        mean = float(np.average(t, weights=w))
        theta = np.array([np.log(mean / (1.0 - mean)), 0.0])  # start: the base rate, no slope
        X = np.column_stack([np.ones_like(x), x])

        def loglik(th: np.ndarray) -> float:
            z = X @ th
            return float(np.sum(w * (t * log_expit(z) + (1.0 - t) * log_expit(-z))))

        current = loglik(theta)
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - n_iter is reported
            p = expit(X @ theta)
            grad = X.T @ (w * (t - p))
            hess = (X * (w * p * (1.0 - p))[:, None]).T @ X
            step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
            scale = 1.0
            while True:  # step halving keeps every iteration an ascent step
                candidate = theta + scale * step
                value = loglik(candidate)
                if value >= current - 1e-12 or scale < 1e-8:
                    break
                scale /= 2.0
            theta, previous, current = candidate, current, value
            if np.max(np.abs(scale * step)) < self.tol or abs(current - previous) < self.tol:
                break
        self.a_ = float(theta[0])
        self.b_ = float(theta[1])
        self.n_iter_ = n_iter
        self.calibration_ = LogOddsCalibration(self.a_, self.b_)
        return self

    def shift_intercept(self, delta: float) -> LogOddsCalibrator:
        """Add `delta` to the fitted intercept (``z = a + delta + b·margin``): the calibration
        read relative to another starting margin (`training.train.calibrate`)."""
        check_is_fitted(self, "calibration_")
        self.a_ = self.a_ + float(delta)
        self.calibration_ = LogOddsCalibration(self.a_, self.b_)
        return self

    def predict_logodds(self, margin: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "calibration_")
        return self.calibration_.logodds(margin)

    def predict_proba(self, margin: np.ndarray) -> np.ndarray:
        """Probabilities of (no default, default), scikit-learn style."""
        p = np.asarray(expit(self.predict_logodds(margin)), dtype=np.float64)
        return np.column_stack([1.0 - p, p])
