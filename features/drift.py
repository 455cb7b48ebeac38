"""Population stability: the training profile of a model and the PSI of a population against it.

The **training profile** is built once, from the training panel, and stored with the model: for
every feature (and for the score) the bins and the share of training rows in each bin. Monitoring
later puts a scored population into the same bins and compares the shares with the population
stability index

    PSI = Σ_bins (actual_share − expected_share) · ln(actual_share / expected_share)

read in the usual bands: PSI < 0.1 stable, 0.1 ≤ PSI ≤ 0.25 watch, PSI > 0.25 act.

Binning (documented, deterministic):
- numeric features and the score: the training deciles are the bin edges (the 10 %, 20 %, …, 90 %
  quantiles of the non-missing training values, ``inverted_cdf``, so every edge is a value that
  occurs); bins are right-closed, ``(-inf, e1], (e1, e2], …, (e9, +inf)``; duplicate edges (a
  value that fills more than a decile, e.g. many zeros) collapse, so such a feature has fewer bins;
- categorical features: one bin per category seen in training (sorted), one bin ``other`` for
  categories training never saw;
- every feature has a separate **missing** bin (NaN / missing category), always last;
- an empty bin would make the logarithm infinite: a share of 0 (expected or actual) is replaced by
  ``EPSILON`` = 0.0001 before the sum (shares are not renormalised; the effect is below 1e-3).

PSI alone alarms on features that move with the calendar by construction (ages: declared in
`features.catalog.TIME_LIKE`) and on features the model barely uses. `rank_drift` therefore reads
each feature's PSI together with its share of the model's attributions (mean |score points| over
the population, `attribution_shares`) and gives each a signal: ``time-like`` (listed, never
counted), ``filled-in`` (drifted only because fewer values are missing than in training, the
present values distributed as in training: data that arrived, e.g. statements now published for
SMEs that had none in the first months of the history; listed, never counted), ``negligible``
(drifted, but under `MIN_SHARE` of the attributions), else the PSI band. A rise of the missing
share is never excused: a feed that stops delivering is drift to act on.

Pure functions on NumPy/pandas; nothing here imports training or serving, so training can build
the profile and serving can read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.catalog import Feature
from features.exceptions import FeatureError

__all__ = [
    "BANDS",
    "EPSILON",
    "PROFILE_ARTIFACT",
    "SCORE",
    "Bins",
    "TrainingProfile",
    "attribution_shares",
    "bin_shares",
    "build_bins",
    "build_profile",
    "psi",
    "psi_band",
    "psi_table",
    "rank_drift",
]

EPSILON = 1e-4
"""Share used in place of 0 for an empty bin (expected or actual)."""
N_BINS = 10
"""Deciles: the edges are the 10 %, …, 90 % training quantiles."""
STABLE_BELOW = 0.1
ACT_ABOVE = 0.25
BANDS: tuple[str, ...] = ("stable", "watch", "act")
MIN_SHARE = 0.02
"""A drifted feature carrying less than this share of the model's mean |points| is negligible."""
TIME_LIKE_SIGNAL = "time-like"
NEGLIGIBLE = "negligible"
FILLED_IN = "filled-in"
SCORE = "score"
"""The name of the score's bins in a profile (not a feature name)."""
PROFILE_ARTIFACT = "drift_profile.json"
"""The file name a profile is stored under (beside the model / in its training run)."""
PROFILE_VERSION = 1
OTHER = "other"
MISSING = "missing"

BinKind = Literal["numeric", "categorical"]


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """The population stability index of two share vectors over the same bins.

    Shares of 0 are replaced by `EPSILON`. Both vectors must have the same length and hold
    finite, non-negative shares."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"expected two share vectors of one length, got {e.shape} and {a.shape}")
    if not (np.isfinite(e).all() and np.isfinite(a).all() and (e >= 0).all() and (a >= 0).all()):
        raise ValueError("shares must be finite and non-negative")
    e = np.where(e > 0, e, EPSILON)
    a = np.where(a > 0, a, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_band(value: float) -> str:
    """``stable`` below 0.1, ``watch`` from 0.1 to 0.25, ``act`` above 0.25."""
    if not math.isfinite(value):
        raise ValueError(f"PSI must be finite, got {value}")
    if value < STABLE_BELOW:
        return "stable"
    return "watch" if value <= ACT_ABOVE else "act"


@dataclass(frozen=True)
class Bins:
    """The bins of one feature (or of the score) and the training shares in them.

    Numeric: ``edges`` e1 < … < ek give k + 1 right-closed value bins. Categorical:
    ``categories`` give one bin each, then ``other``. Always last: the missing bin.
    ``expected`` has one share per bin (summing to 1); ``n`` is the training rows counted."""

    name: str
    kind: BinKind
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    expected: tuple[float, ...] = ()
    n: int = 0

    def labels(self) -> list[str]:
        """A readable label per bin, in order (the missing bin last)."""
        if self.kind == "categorical":
            return [*self.categories, OTHER, MISSING]
        if not self.edges:
            return ["any value", MISSING]
        e = [_fmt(x) for x in self.edges]
        inner = [f"({e[i - 1]}, {e[i]}]" for i in range(1, len(e))]
        return [f"<= {e[0]}", *inner, f"> {e[-1]}", MISSING]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "edges": list(self.edges),
            "categories": list(self.categories),
            "expected": list(self.expected),
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bins:
        kind = data["kind"]
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"bins of {data.get('name')!r}: unknown kind {kind!r}")
        bins = cls(
            name=str(data["name"]),
            kind=kind,
            edges=tuple(float(x) for x in data.get("edges", ())),
            categories=tuple(str(x) for x in data.get("categories", ())),
            expected=tuple(float(x) for x in data["expected"]),
            n=int(data["n"]),
        )
        if len(bins.expected) != len(bins.labels()):
            raise ValueError(
                f"bins of {bins.name!r}: {len(bins.expected)} expected shares for "
                f"{len(bins.labels())} bins"
            )
        return bins


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _is_missing(values: pd.Series) -> np.ndarray:
    return np.asarray(values.isna(), dtype=bool)


def _bin_index(bins: Bins, values: pd.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """The bin of each value (0-based; the missing bin is the last one)."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    missing = _is_missing(series)
    if bins.kind == "categorical":
        n_cat = len(bins.categories)
        text = series.astype("object").where(~missing, None).map(_text)
        codes = (
            pd.Index(list(bins.categories), dtype=object)
            .get_indexer(pd.Index(text, dtype=object))
            .astype(np.int64)
        )
        return np.where(missing, n_cat + 1, np.where(codes < 0, n_cat, codes))
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~missing & np.isnan(numbers)
    if bad.any():
        first = series[bad].iloc[0]
        raise FeatureError(f"feature {bins.name}: expected numbers, got {first!r}")
    idx = np.searchsorted(np.asarray(bins.edges, dtype=np.float64), numbers, side="left")
    return np.where(np.isnan(numbers), len(bins.edges) + 1, idx).astype(np.int64)


def bin_shares(bins: Bins, values: pd.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """The share of `values` in each of the bins (the missing bin last); zeros for no values."""
    k = len(bins.labels())
    idx = _bin_index(bins, values)
    counts = np.bincount(idx, minlength=k).astype(np.float64)
    return counts / counts.sum() if counts.sum() > 0 else counts


def build_bins(
    name: str, values: pd.Series | np.ndarray | Sequence[Any], kind: BinKind = "numeric"
) -> Bins:
    """The bins of one training column (module docstring) with its training shares."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    if len(series) == 0:
        raise FeatureError(f"feature {name}: no training rows to build its drift bins from")
    missing = _is_missing(series)
    if kind == "categorical":
        present = series[~missing].astype("object").map(str)
        shell = Bins(name, kind, categories=tuple(sorted(set(present))))
    else:
        numbers = pd.to_numeric(series[~missing], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        if np.isnan(numbers).any():
            first = series[~missing][np.isnan(numbers)].iloc[0]
            raise FeatureError(f"feature {name}: expected numbers, got {first!r}")
        edges: tuple[float, ...] = ()
        if len(numbers):
            q = np.quantile(numbers, np.arange(1, N_BINS) / N_BINS, method="inverted_cdf")
            edges = tuple(float(x) for x in np.unique(q))
        shell = Bins(name, kind, edges=edges)
    shares = bin_shares(shell, series)
    return Bins(
        name,
        kind,
        edges=shell.edges,
        categories=shell.categories,
        expected=tuple(float(s) for s in shares),
        n=len(series),
    )


@dataclass(frozen=True)
class TrainingProfile:
    """The training reference of drift monitoring: bins and training shares per feature (model
    order) and for the score; `rows` training rows from `as_of_from` to `as_of_to`."""

    features: tuple[Bins, ...]
    score: Bins
    rows: int
    as_of_from: str | None = None
    as_of_to: str | None = None

    @property
    def feature_names(self) -> list[str]:
        return [b.name for b in self.features]

    def bins(self, name: str) -> Bins:
        """The bins of a feature, or of the score (`SCORE`)."""
        if name == SCORE:
            return self.score
        for b in self.features:
            if b.name == name:
                return b
        raise FeatureError(f"the training profile has no bins for {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile_version": PROFILE_VERSION,
            "binning": f"training deciles, right-closed; missing bin; epsilon {EPSILON}",
            "rows": self.rows,
            "as_of_from": self.as_of_from,
            "as_of_to": self.as_of_to,
            "score": self.score.to_dict(),
            "features": [b.to_dict() for b in self.features],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingProfile:
        version = data.get("profile_version")
        if version != PROFILE_VERSION:
            raise ValueError(f"training profile version {version!r}, expected {PROFILE_VERSION}")
        return cls(
            features=tuple(Bins.from_dict(b) for b in data["features"]),
            score=Bins.from_dict(data["score"]),
            rows=int(data["rows"]),
            as_of_from=data.get("as_of_from"),
            as_of_to=data.get("as_of_to"),
        )

    def to_json(self) -> str:
        """JSON text (floats written exactly: `json` round-trips every float)."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TrainingProfile:
        return cls.from_dict(json.loads(text))


def build_profile(
    features: pd.DataFrame,
    score: Sequence[float] | np.ndarray,
    catalog: Sequence[Feature],
) -> TrainingProfile:
    """The training profile of a model: bins per catalog feature from the training rows'
    `features` (a panel: catalog columns, optionally `as_of`) and bins of their `score`.

    A catalog feature absent from `features` is an error (the profile must cover the model)."""
    scores = np.asarray(score, dtype=np.float64)
    if len(scores) != len(features):
        raise FeatureError(
            f"training profile: {len(scores)} scores for {len(features)} feature rows"
        )
    if len(features) == 0:
        raise FeatureError("training profile: no training rows")
    if not np.isfinite(scores).all():
        raise FeatureError("training profile: the training scores must be finite")
    absent = [f.name for f in catalog if f.name not in features.columns]
    if absent:
        raise FeatureError(f"training profile: feature column(s) missing: {absent[:10]}")
    bins = tuple(
        build_bins(
            f.name, features[f.name], "categorical" if f.kind == "categorical" else "numeric"
        )
        for f in catalog
    )
    span: tuple[str | None, str | None] = (None, None)
    if "as_of" in features.columns and len(features):
        dates = pd.to_datetime(features["as_of"])
        span = (dates.min().date().isoformat(), dates.max().date().isoformat())
    return TrainingProfile(
        features=bins,
        score=build_bins(SCORE, scores, "numeric"),
        rows=len(features),
        as_of_from=span[0],
        as_of_to=span[1],
    )


def psi_table(
    profile: TrainingProfile,
    features: pd.DataFrame,
    score: Sequence[float] | np.ndarray | None = None,
) -> pd.DataFrame:
    """PSI of every profiled feature (and of the score, when given; first row) for a population.

    Columns: ``name``, ``kind`` (numeric / categorical / score), ``psi``, ``band``, ``rows``,
    ``expected_missing`` and ``actual_missing`` (shares), ``psi_present`` (the PSI of the present
    values alone, both sides renormalised; NaN when a side has none), ``bins`` (count). A
    feature column the population lacks counts as all missing. Rows ordered: the score, then PSI
    descending."""
    rows: list[dict[str, Any]] = []
    n = len(features)
    if n == 0:
        raise FeatureError("PSI: the population is empty")

    def add(bins: Bins, values: pd.Series | np.ndarray, kind: str) -> None:
        shares = bin_shares(bins, values)
        value = psi(bins.expected, shares)
        rows.append(
            {
                "name": bins.name,
                "kind": kind,
                "psi": value,
                "band": psi_band(value),
                "rows": len(values),
                "expected_missing": bins.expected[-1],
                "actual_missing": float(shares[-1]),
                "psi_present": _psi_present(bins.expected, shares),
                "bins": len(shares),
            }
        )

    if score is not None:
        scores = np.asarray(score, dtype=np.float64)
        if len(scores) != n:
            raise FeatureError(f"PSI: {len(scores)} scores for {n} feature rows")
        add(profile.score, scores, SCORE)
    for bins in profile.features:
        values = (
            features[bins.name]
            if bins.name in features.columns
            else pd.Series(np.full(n, np.nan), index=features.index)
        )
        add(bins, values, bins.kind)
    table = pd.DataFrame(rows)
    head = table[table["kind"] == SCORE]
    rest = table[table["kind"] != SCORE].sort_values(
        ["psi", "name"], ascending=[False, True], kind="stable"
    )
    return pd.concat([head, rest], ignore_index=True)


def _psi_present(expected: Sequence[float] | np.ndarray, actual: np.ndarray) -> float:
    """PSI of the value bins (all but the last, missing one), each side renormalised to 1."""
    e = np.asarray(expected, dtype=np.float64)[:-1]
    a = np.asarray(actual, dtype=np.float64)[:-1]
    if len(e) == 0 or e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    return psi(e / e.sum(), a / a.sum())


def attribution_shares(points: pd.DataFrame) -> pd.Series:
    """Each feature's share of the model's attributions over a population: mean |score points|
    per column, divided by their sum (all zeros when every point is 0)."""
    if points.empty:
        raise FeatureError("attribution shares: no explained rows")
    mean_abs = points.abs().mean(axis=0)
    total = float(mean_abs.sum())
    return mean_abs / total if total > 0 else mean_abs * 0.0


def _only_filled_in(r: Mapping[Any, Any]) -> bool:
    present = r.get("psi_present", float("nan"))
    fewer_missing = r.get("actual_missing", 1.0) < r.get("expected_missing", 0.0)
    return bool(fewer_missing and math.isfinite(present) and psi_band(present) == "stable")


def rank_drift(
    psi: pd.DataFrame,
    shares: Mapping[Any, float],
    *,
    time_like: frozenset[str] | set[str] = frozenset(),
    points_change: Mapping[Any, float] | None = None,
    min_share: float = MIN_SHARE,
) -> pd.DataFrame:
    """The feature rows of a `psi_table`, ranked by what their drift does to the score.

    Adds ``attribution_share`` (from `shares`; 0 for a feature without one), ``impact`` = PSI x
    share, ``points_change`` (the change of the feature's mean points between two dates, when
    given; they sum to the change of the mean score), ``time_like`` and ``signal``:
    ``time-like`` for `time_like` features, ``stable`` in the stable band, ``filled-in`` for a
    drift that is only a fall of the missing share (``psi_present`` stable, when `psi` has it),
    ``negligible`` for a drifted feature under `min_share` of the attributions, else the band
    (watch / act). Rows: counted signals first (act, watch), by impact descending."""
    rows = psi[psi["kind"] != SCORE].copy()
    rows["attribution_share"] = [float(shares.get(n, 0.0)) for n in rows["name"]]
    rows["impact"] = rows["psi"] * rows["attribution_share"]
    rows["points_change"] = [
        float(points_change.get(n, float("nan"))) if points_change is not None else float("nan")
        for n in rows["name"]
    ]
    rows["time_like"] = [n in time_like for n in rows["name"]]

    def signal(r: Mapping[Any, Any]) -> str:
        if r["time_like"]:
            return TIME_LIKE_SIGNAL
        if r["band"] == "stable":
            return "stable"
        if _only_filled_in(r):
            return FILLED_IN
        return NEGLIGIBLE if r["attribution_share"] < min_share else str(r["band"])

    rows["signal"] = [signal(r) for r in rows.to_dict("records")]
    order = {"act": 0, "watch": 1}
    rows["_rank"] = [order.get(s, 2) for s in rows["signal"]]
    rows = rows.sort_values(
        ["_rank", "impact", "name"], ascending=[True, False, True], kind="stable"
    )
    return rows.drop(columns="_rank").reset_index(drop=True)
