"""Performance before labels mature: confidence-based performance estimation (CBPE).

A cohort's 12-month default labels are known a year after its date, yet the risk team wants to
know every month what the default rate, AUC and calibration of the cohort scored today will be.
If the calibrated PDs are right, each SME's label is a Bernoulli(pd) draw, so the metrics the
labels will show have a distribution that the PDs alone determine (NannyML's CBPE rests on the same
assumption). `estimate` samples `draws` label vectors Y ~ Bernoulli(pd) (seeded) and reports,
per metric, the mean over draws (the estimate) and the equal-tailed `level` interval of the
sampling distribution:

- ``default_rate``: the share of defaults (the estimate is the mean PD);
- ``auc``: ROC AUC of the PDs against the sampled labels (rank formula, ties averaged);
- ``ece``: `training.metrics.ece` of the PDs against the sampled labels: what a perfectly
  calibrated model would show by chance alone (its interval is the noise band of calibration).

When the labels mature `performance_by_month` sets the realised values beside the estimates; a
realised value outside the interval means the PDs were wrong (or the cohort's defaults were
correlated beyond what independent draws allow, e.g. an industry downturn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from training.metrics import auc, ece

if TYPE_CHECKING:
    from features.contract import Tables
    from serving.portfolio.batch import Progress
    from training.bundle import LoadedModel

METRICS: tuple[str, ...] = ("default_rate", "auc", "ece")
DRAWS = 1000
LEVEL = 0.95
ECE_DRAWS = 200  # ECE per draw costs a binning; its noise band needs fewer draws


def sampled_auc(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUC of scores `p` against each row of label matrix `y` (draws x n); NaN for a row
    without both classes. The rank formula: (sum of positives' ranks - n1(n1+1)/2) / (n1 n0)."""
    ranks = rankdata(p)
    n1 = y.sum(axis=1).astype(np.float64)
    n0 = y.shape[1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (y.astype(np.float64) @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), out, np.nan)


def estimate(
    pd_: Sequence[float] | np.ndarray,
    *,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The expected default rate, AUC and ECE of a cohort with PDs `pd_`, each with the `level`
    interval of its sampling distribution (module docstring): ``{metric: {estimate, low,
    high}}``."""
    p = np.asarray(pd_, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError("expected a non-empty vector of PDs")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("PDs must lie in [0, 1]")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    y = rng.random((draws, len(p))) < p
    alpha = (1 - level) / 2
    rates = y.mean(axis=1)
    aucs = sampled_auc(p, y)
    eces = np.array([ece(row.astype(np.float64), p) for row in y[:ECE_DRAWS]])
    out: dict[str, dict[str, float]] = {}
    for name, values, centre in (
        ("default_rate", rates, float(p.mean())),
        ("auc", aucs, float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")),
        ("ece", eces, float(eces.mean())),
    ):
        finite = values[np.isfinite(values)]
        low, high = (
            (float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha)))
            if len(finite)
            else (float("nan"), float("nan"))
        )
        out[name] = {"estimate": centre, "low": low, "high": high}
    return out


def realised(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The realised default rate, AUC and ECE of matured labels `y`."""
    yy = np.asarray(y, dtype=np.float64)
    return {"default_rate": float(yy.mean()), "auc": auc(yy, p), "ece": ece(yy, p)}


def performance_table(
    scores: pd.DataFrame,
    labels: pd.Series,
    *,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per as-of date of `scores` (``as_of``, ``pd``): n, each metric's estimate, low,
    high and, where every label of the month is known (`labels`, aligned with `scores`, NA when
    immature), the realised value and whether it lies in the interval (``<metric>_within``)."""
    rows: list[dict[str, Any]] = []
    frame = scores[["as_of", "pd"]].assign(label=labels.to_numpy())
    for when, month in frame.groupby("as_of", sort=True):
        p = month["pd"].to_numpy(dtype=np.float64)
        est = estimate(p, draws=draws, level=level, seed=seed)
        row: dict[str, Any] = {"as_of": pd.Timestamp(when), "n": len(p)}  # type: ignore[arg-type]
        label = month["label"]
        mature = bool(label.notna().all())
        row["mature"] = mature
        real = realised(label.to_numpy(dtype=np.float64), p) if mature else None
        for metric in METRICS:
            for key in ("estimate", "low", "high"):
                row[f"{metric}_{key}"] = est[metric][key]
            value = real[metric] if real is not None else float("nan")
            row[f"{metric}_realised"] = value
            row[f"{metric}_within"] = (
                bool(est[metric]["low"] <= value <= est[metric]["high"])
                if real is not None and np.isfinite(value)
                else None
            )
        rows.append(row)
    return pd.DataFrame(rows)


def performance_by_month(
    tables: Tables,
    loaded: LoadedModel,
    dates: Sequence[object],
    as_of: object,
    *,
    draws: int = DRAWS,
    level: float = LEVEL,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """`performance_table` of the populations at month ends `dates`, scored by `loaded`, with
    the labels known at `as_of` (a month is realised once its whole label window has passed)."""
    from serving.portfolio.batch import score_population

    scored = score_population(
        tables, dates, loaded, explain=False, data_end=as_of, progress=progress
    )
    return performance_table(
        scored.scores, scored.features["default_12m"], draws=draws, level=level
    )


def coverage(table: pd.DataFrame, metric: str) -> tuple[int, int]:
    """(months whose realised `metric` lies in its interval, months realised)."""
    known = table[f"{metric}_within"].dropna()
    return int(known.astype(bool).sum()), len(known)


def performance_doc(table: pd.DataFrame, *, level: float = LEVEL) -> dict[str, Any]:
    """`performance_table` as the JSON summary (and the report) shows it: per month, each
    metric's estimate, interval and, once mature, realised value and whether it lies inside."""

    def value(v: Any) -> float | None:
        return float(v) if v is not None and pd.notna(v) else None

    return {
        "level": level,
        "note": f"estimated from the calibrated PDs alone (the {level:.0%} interval of the metric "
        "over label draws Y ~ Bernoulli(PD)); realised once every label of the month is known",
        "months": [
            {
                "as_of": pd.Timestamp(r["as_of"]).date().isoformat(),
                "n": int(r["n"]),
                "mature": bool(r["mature"]),
                **{
                    metric: {
                        "estimate": value(r[f"{metric}_estimate"]),
                        "low": value(r[f"{metric}_low"]),
                        "high": value(r[f"{metric}_high"]),
                        "realised": value(r[f"{metric}_realised"]),
                        "within": None
                        if r[f"{metric}_within"] is None or pd.isna(r[f"{metric}_within"])
                        else bool(r[f"{metric}_within"]),
                    }
                    for metric in METRICS
                },
            }
            for r in table.to_dict("records")
        ],
    }
