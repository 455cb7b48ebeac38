"""Discrimination and calibration metrics of a PD model, plus binomial intervals.

ECE (expected calibration error) uses equal-count bins: rows sorted by predicted PD are cut into
``n_bins`` groups of (nearly) equal size, and ECE = Σ_b (n_b / n) · |observed rate_b − mean PD_b|.
Equal-count bins keep every bin's observed rate estimable when PDs crowd near zero, which
equal-width bins do not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import beta, norm, rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from features import drift
from features.drift import bin_shares, build_bins
from training.model import MasterScale

EPS = 1e-15


def _arrays(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y, dtype=np.float64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"labels ({yy.size}) and predictions ({pp.size}) differ in length")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return yy, pp


def both_classes(y: np.ndarray) -> bool:
    yy = np.asarray(y)
    return yy.size > 0 and 0 < yy.sum() < yy.size


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of a risk score (higher = riskier); NaN when a class is missing."""
    yy, ss = _arrays(y, score)
    return float(roc_auc_score(yy, ss)) if both_classes(yy) else float("nan")


def ks(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov–Smirnov statistic: max distance between the score CDFs of goods and bads."""
    yy, ss = _arrays(y, score)
    if not both_classes(yy):
        return float("nan")
    fpr, tpr, _ = roc_curve(yy, ss)
    return float(np.max(np.abs(tpr - fpr)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    yy, pp = _arrays(y, p)
    return float(np.mean((pp - yy) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    yy, pp = _arrays(y, p)
    q = np.clip(pp, EPS, 1.0 - EPS)
    return float(-np.mean(yy * np.log(q) + (1.0 - yy) * np.log(1.0 - q)))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision)."""
    yy, pp = _arrays(y, p)
    return float(average_precision_score(yy, pp)) if both_classes(yy) else float("nan")


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of predicted PD: n, mean PD, observed rate per bin (ties stay in order
    of a stable sort, so bins are deterministic)."""
    yy, pp = _arrays(y, p)
    if yy.size == 0:
        raise ValueError("no rows to bin")
    order = np.argsort(pp, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, min(n_bins, yy.size))):
        rows.append(
            {
                "bin": i + 1,
                "n": int(idx.size),
                "mean_pd": float(pp[idx].mean()),
                "observed_rate": float(yy[idx].mean()),
            }
        )
    return pd.DataFrame(rows)


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error over equal-count bins (module docstring)."""
    bins = calibration_bins(y, p, n_bins)
    weights = bins["n"] / bins["n"].sum()
    return float((weights * (bins["observed_rate"] - bins["mean_pd"]).abs()).sum())


def delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several scores on the same rows and their covariance matrix (DeLong, DeLong and
    Clarke-Pearson 1988, in the fast midrank form of Sun and Xu 2014). Raises ValueError
    without both classes."""
    yy = np.asarray(y, dtype=np.float64).ravel()
    if not both_classes(yy):
        raise ValueError("DeLong's AUC variance needs defaults and non-defaults")
    pos = yy == 1
    m, n = int(pos.sum()), int((~pos).sum())
    aucs = np.empty(len(scores))
    v10 = np.empty((len(scores), m))  # per default: share of non-defaults scored below it
    v01 = np.empty((len(scores), n))  # per non-default: share of defaults scored above it
    for i, score in enumerate(scores):
        _, ss = _arrays(yy, score)
        x, z = ss[pos], ss[~pos]
        tx, tz, txz = rankdata(x), rankdata(z), rankdata(np.concatenate([x, z]))
        aucs[i] = (txz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10[i] = (txz[:m] - tx) / n
        v01[i] = 1.0 - (txz[m:] - tz) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def auc_ci(y: np.ndarray, score: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high): the AUC with its DeLong confidence interval (NaNs without both
    classes)."""
    if not both_classes(np.asarray(y)):
        return float("nan"), float("nan"), float("nan")
    aucs, cov = delong(y, [score])
    half = float(norm.ppf(0.5 + level / 2)) * float(np.sqrt(max(cov[0, 0], 0.0)))
    a = float(aucs[0])
    return a, max(0.0, a - half), min(1.0, a + half)


def auc_difference(
    y: np.ndarray, first: np.ndarray, second: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, float]:
    """(AUC of `first` - AUC of `second`, low, high, two-sided p-value) on the same rows, with
    DeLong's paired variance (the two scores' AUCs are correlated)."""
    aucs, cov = delong(y, [first, second])
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    sd = float(np.sqrt(max(var, 0.0)))
    half = float(norm.ppf(0.5 + level / 2)) * sd
    p = float(2 * norm.sf(abs(diff) / sd)) if sd > 0 else (1.0 if diff == 0 else 0.0)
    return diff, diff - half, diff + half, p


def herfindahl(counts: np.ndarray) -> float:
    """Herfindahl-Hirschman index of a distribution over grades: the sum of squared shares, from
    1/k (rows spread evenly over k grades) to 1 (every row in one grade). NaN without rows."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return float(((c / total) ** 2).sum()) if total > 0 else float("nan")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for k successes out of n."""
    if n <= 0:
        return float("nan"), float("nan")
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n."""
    if n <= 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + level / 2))
    phat = k / n
    denom = 1.0 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


JEFFREYS_ALPHA = 0.05
"""Significance of the per-grade Jeffreys test (ECB instructions for IRB validation: 5 %)."""


def jeffreys_test(k: int, n: int, pd_: float, level: float = 0.95) -> tuple[float, float, float]:
    """The Jeffreys test of a grade's PD (ECB, instructions for reporting the validation results
    of IRB models, section 2.5.3.1): with ``k`` defaults among ``n`` obligors the posterior of the
    default rate under the Jeffreys prior is Beta(k + 1/2, n - k + 1/2); the one-sided p-value of
    "the PD is not underestimated" is its distribution function at ``pd_``, i.e. the posterior
    probability that the true rate is at most the PD. A p-value below `JEFFREYS_ALPHA` rejects
    the PD as too low. Returns (p_value, interval low, interval high) with the equal-tailed
    `level` interval of the posterior; NaNs when n = 0."""
    if n <= 0 or not np.isfinite(pd_):
        return float("nan"), float("nan"), float("nan")
    a, b = k + 0.5, n - k + 0.5
    alpha = 1.0 - level
    p_value = float(beta.cdf(pd_, a, b))
    return p_value, float(beta.ppf(alpha / 2, a, b)), float(beta.ppf(1 - alpha / 2, a, b))


def summary(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """The headline metrics of predicted PDs ``p`` against labels ``y``."""
    a = auc(y, p)
    return {
        "auc": a,
        "gini": 2.0 * a - 1.0,
        "ks": ks(y, p),
        "brier": brier(y, p),
        "log_loss": log_loss(y, p),
        "ece": ece(y, p, n_bins),
        "pr_auc": pr_auc(y, p),
        "n": float(len(p)),
        "defaults": float(np.sum(y)),
        "default_rate": float(np.mean(y)),
        "mean_pd": float(np.mean(p)),
    }


def by_grade(y: np.ndarray, p: np.ndarray, scale: MasterScale, level: float = 0.95) -> pd.DataFrame:
    """Per grade of the master scale: PD band, n, defaults, observed default rate with its
    Clopper–Pearson and Wilson intervals, mean PD, whether the mean PD lies in the exact
    interval, and the Jeffreys test of the mean PD (`jeffreys_test`: p-value, interval, and
    ``jeffreys_pass`` = the PD is not rejected as too low). Grades without rows are listed with
    n = 0 (and pass)."""
    yy, pp = _arrays(y, p)
    grades = scale.grade(pp)
    rows = []
    for g, low, high in zip(scale.grades, scale.lower_pd(), scale.upper_pd, strict=True):
        mask = grades == g
        n = int(mask.sum())
        k = int(yy[mask].sum())
        cp_low, cp_high = clopper_pearson(k, n, level)
        w_low, w_high = wilson(k, n, level)
        mean_pd = float(pp[mask].mean()) if n else float("nan")
        j_p, j_low, j_high = jeffreys_test(k, n, mean_pd, level)
        rows.append(
            {
                "grade": g,
                "pd_low": low,
                "pd_high": high,
                "n": n,
                "defaults": k,
                "observed_rate": k / n if n else float("nan"),
                "mean_pd": mean_pd,
                "ci_low": cp_low,
                "ci_high": cp_high,
                "wilson_low": w_low,
                "wilson_high": w_high,
                "within_ci": bool(n and cp_low <= mean_pd <= cp_high),
                "jeffreys_p_value": j_p,
                "jeffreys_low": j_low,
                "jeffreys_high": j_high,
                "jeffreys_pass": bool(not n or j_p >= JEFFREYS_ALPHA),
            }
        )
    return pd.DataFrame(rows)


def psi_of_values(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of raw values ``actual`` against raw values ``expected``
    (`features.drift.psi` compares bin shares), binned as the drift
    monitor bins (`features.drift`: training deciles, a missing bin, empty-bin epsilon)."""
    return psi_of_groups(expected, [actual])[0]


def psi_of_groups(expected: np.ndarray, actuals: Sequence[np.ndarray]) -> list[float]:
    """`psi_of_values` of each of `actuals` against the same ``expected``, binned once."""
    bins = build_bins("pd", np.asarray(expected, dtype=np.float64))
    return [
        drift.psi(bins.expected, bin_shares(bins, np.asarray(a, dtype=np.float64))) for a in actuals
    ]
