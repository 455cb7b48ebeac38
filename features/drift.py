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
(drifted, but under `MIN_SHARE` of the attributions), ``window-filling`` (below), else the PSI
band. A rise of the missing share is never excused: a feed that stops delivering is drift to act
on.

**Window coverage.** A windowed feature (``_90d``, ``_180d``, ``_365d``) is computed over the days
of its window the SME's invoice history covers, ``min(W, t - start + 1)`` (`features.own`). When
the data begin shortly before the training months, the training rows' windows are only partly
covered: a share over few payments is more extreme than over a full year of them, so once the
history fills the window the feature drifts from its training profile although no SME changed.
The profile therefore records each training row's history length (from
``months_since_first_invoice``, the same start `features.own` divides by) as a `Coverage`: per
windowed feature the share of training rows whose history covered the whole window and the median
covered days, and `LIKE_COVERAGE_POINTS` history lengths (the training quantiles at
(i + 1/2) / K, i = 0 … K-1). Monitoring then compares such a feature **on like coverage**: the
current population's features recomputed from its data cut at each of those history lengths (the
data as if they had begun that many days before the as-of date), binned against the same training
bins, each length's bin shares weighing 1/K as each length stands for 1/K of the training rows: the
comparison's history lengths are distributed as training's. Every SME of the population is in
every cut: one without an invoice in a short cut has the values of no activity there (missing, or
0 for an amount or a count), so SMEs whose feed stopped or whose trade collapsed weeks ago do not
drop out of the shorter cuts and leave them looking like training.
A windowed feature whose training rows mostly had partial windows (fewer than `FULL_COVERAGE_MIN`
of them full), that drifted (watch / act) and counts otherwise, is judged by the smaller of its
two bands: ``window-filling`` (listed, never counted; the action is to retrain once the training
history covers the window) when the like-coverage PSI is stable, else the smaller band. A feature
that really moved moves on like coverage too and still counts, and one whose missing share rose
is never excused, on the full windows or on like coverage (by at least `MISSING_MIN_RISE` and
beyond chance: `MISSING_RISE_P`; a feed that stops delivering is not window filling). A profile
without the record (one stored before it existed: ``profile_version`` 1) has unknown coverage:
the feature is judged on its PSI alone, the old behaviour, and the monitor says so.

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
from features.own import DAYS_PER_MONTH

__all__ = [
    "BANDS",
    "EPSILON",
    "FULL_COVERAGE_MIN",
    "HISTORY",
    "LIKE_COVERAGE_POINTS",
    "MISSING_MIN_RISE",
    "MISSING_RISE_P",
    "PROFILE_ARTIFACT",
    "SCORE",
    "WINDOW_FILLING",
    "Bins",
    "Coverage",
    "TrainingProfile",
    "WindowCoverage",
    "attribution_shares",
    "bin_shares",
    "build_bins",
    "build_coverage",
    "build_profile",
    "coverage_candidates",
    "history_days",
    "missing_rose",
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
WINDOW_FILLING = "window-filling"
HISTORY = "months_since_first_invoice"
"""The feature giving each row's invoice history: days = months x `DAYS_PER_MONTH` + 1."""
LIKE_COVERAGE_POINTS = 8
"""History lengths (training quantiles) the like-coverage comparison recomputes features at."""
FULL_COVERAGE_MIN = 0.5
"""Compare a windowed feature on like coverage when fewer training rows than this had it full."""
SCORE = "score"
"""The name of the score's bins in a profile (not a feature name)."""
PROFILE_ARTIFACT = "drift_profile.json"
"""The file name a profile is stored under (beside the model / in its training run)."""
PROFILE_VERSION = 2
"""2: with the window coverage of the training rows (`Coverage`); 1: without (still read)."""
PROFILE_VERSIONS = (1, 2)
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
class WindowCoverage:
    """How much of one windowed feature's window the training rows' histories covered."""

    name: str
    window_days: int
    full_share: float  # share of training rows whose history covered the whole window
    median_days: float  # median covered days, min(W, history days)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "window_days": self.window_days,
            "full_share": self.full_share,
            "median_days": self.median_days,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowCoverage:
        return cls(
            name=str(data["name"]),
            window_days=int(data["window_days"]),
            full_share=float(data["full_share"]),
            median_days=float(data["median_days"]),
        )


@dataclass(frozen=True)
class Coverage:
    """The window coverage of the training rows (module docstring): `rows` rows with a known
    history; `history_days`, the `LIKE_COVERAGE_POINTS` training quantiles of their history
    length in days (ascending) the like-coverage comparison cuts the data at; per windowed feature
    the share of rows with a full window and the median covered days."""

    rows: int
    history_days: tuple[int, ...]
    windows: tuple[WindowCoverage, ...]

    def of(self, name: str) -> WindowCoverage | None:
        return next((w for w in self.windows if w.name == name), None)

    def partial(self, name: str) -> bool:
        """Whether the training rows mostly had partial windows of feature `name`."""
        found = self.of(name)
        return found is not None and found.full_share < FULL_COVERAGE_MIN

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": f"{HISTORY} x {DAYS_PER_MONTH} + 1 days",
            "rows": self.rows,
            "history_days": list(self.history_days),
            "windows": [w.to_dict() for w in self.windows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Coverage:
        return cls(
            rows=int(data["rows"]),
            history_days=tuple(int(x) for x in data["history_days"]),
            windows=tuple(WindowCoverage.from_dict(w) for w in data["windows"]),
        )


def history_days(months: pd.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """Days of invoice history, t - start + 1, from `HISTORY` (months since the first invoice,
    (t - start) / `DAYS_PER_MONTH`); NaN where it is missing."""
    m = pd.to_numeric(pd.Series(months), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    return np.where(np.isnan(m), np.nan, np.round(m * DAYS_PER_MONTH) + 1.0)


def build_coverage(features: pd.DataFrame, catalog: Sequence[Feature]) -> Coverage | None:
    """The window coverage of training rows `features` (module docstring); None when they carry
    no `HISTORY` column or no row has a history (unknown coverage)."""
    if HISTORY not in features.columns:
        return None
    days = history_days(features[HISTORY])
    days = days[~np.isnan(days)]
    if len(days) == 0:
        return None
    points = (np.arange(LIKE_COVERAGE_POINTS) + 0.5) / LIKE_COVERAGE_POINTS
    quantiles = np.quantile(days, points, method="inverted_cdf")
    windows = tuple(
        WindowCoverage(
            name=f.name,
            window_days=int(f.window_days),
            full_share=float(np.mean(days >= f.window_days)),
            median_days=float(np.median(np.minimum(days, f.window_days))),
        )
        for f in catalog
        if f.window_days is not None
    )
    return Coverage(rows=len(days), history_days=tuple(int(x) for x in quantiles), windows=windows)


@dataclass(frozen=True)
class TrainingProfile:
    """The training reference of drift monitoring: bins and training shares per feature (model
    order) and for the score; `rows` training rows from `as_of_from` to `as_of_to`; their window
    `coverage` (None: unknown, a version-1 profile or training rows without a history)."""

    features: tuple[Bins, ...]
    score: Bins
    rows: int
    as_of_from: str | None = None
    as_of_to: str | None = None
    coverage: Coverage | None = None

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
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingProfile:
        version = data.get("profile_version")
        if version not in PROFILE_VERSIONS:
            raise ValueError(
                f"training profile version {version!r}, expected one of {list(PROFILE_VERSIONS)}"
            )
        coverage = data.get("coverage") if version >= 2 else None
        return cls(
            features=tuple(Bins.from_dict(b) for b in data["features"]),
            score=Bins.from_dict(data["score"]),
            rows=int(data["rows"]),
            as_of_from=data.get("as_of_from"),
            as_of_to=data.get("as_of_to"),
            coverage=None if coverage is None else Coverage.from_dict(coverage),
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
    `features` (a panel: catalog columns, optionally `as_of`), bins of their `score` and their
    window coverage (`build_coverage`, from the `HISTORY` column when the panel has it).

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
        coverage=build_coverage(features, catalog),
    )


def psi_table(
    profile: TrainingProfile,
    features: pd.DataFrame,
    score: Sequence[float] | np.ndarray | None = None,
) -> pd.DataFrame:
    """PSI of every profiled feature (and of the score, when given; first row) for a population.

    Columns: ``name``, ``kind`` (numeric / categorical / score), ``psi``, ``band``, ``rows``,
    ``expected_rows`` (the training rows of the bins), ``expected_missing`` and
    ``actual_missing`` (shares), ``psi_present`` (the PSI of the present values alone, both sides
    renormalised; NaN when a side has none), ``bins`` (count). A feature column the population
    lacks counts as all missing. Rows ordered: the score, then PSI descending."""
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
                "expected_rows": bins.n,
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


MISSING_RISE_P = 0.01
"""Level of the one-sided test by which a missing share has risen against training."""
MISSING_MIN_RISE = 0.02
"""A missing share rises materially by at least this much (2 points of the population): with
the significance test alone a small structural difference becomes a rise on a bank-size
portfolio (the unshocked twin's 6.1 % on like coverage against 5.0 % in training: p = 0.11 at its
752 SMEs / 6,335 training rows, 3.4e-05 at ten times both, which blocked window filling on stable
data). The outages it must catch rise 3.8 to 6.5 points (a fifth of the SMEs silenced 30 to 100
days: 8.8 to 11.5 % against 5.0 %); like the freshness check's minimum rise (5 points of a
group's SMEs), it asks a rise a risk team would act on, not only one beyond chance."""


def missing_rose(expected: float, actual: float, n: int, training_rows: int | None = None) -> bool:
    """Whether a missing share `actual` among `n` rows rose above the training share `expected`
    by at least `MISSING_MIN_RISE` and beyond chance, at `MISSING_RISE_P` (a share a few SMEs
    above training's is not a rise, nor on a large portfolio one a point above it).

    With the `training_rows` the training share was counted over: one-sided Fisher exact test of
    the two missing counts (the training share is an estimate too: 0 missing of some thousand
    training rows does not make one missing SME a rise). Without: one-sided binomial test of the
    missing count against `expected`, where any missing value rises above a training share of
    0."""
    from scipy.stats import binomtest, fisher_exact

    if not actual - expected >= MISSING_MIN_RISE - 1e-12:  # the 1e-12: float rounding
        return False
    if n <= 0:
        return True
    k = round(actual * n)
    if training_rows:
        k0 = round(expected * training_rows)
        table = [[k, n - k], [k0, training_rows - k0]]
        return bool(fisher_exact(table, alternative="greater").pvalue < MISSING_RISE_P)
    if expected <= 0.0:
        return True
    return bool(binomtest(k, n, expected, alternative="greater").pvalue < MISSING_RISE_P)


def _more_missing(r: Mapping[Any, Any]) -> bool:
    """Whether the feature's missing share rose against training materially and beyond chance
    (`missing_rose`, with the training rows when the row gives them: ``expected_rows``) on the
    full windows or on like coverage: such a rise is never excused, not even as window filling
    (a feed that stops delivering is drift to act on).

    On like coverage the share is the mean over the K cuts of the missing share among the same
    ``rows`` SMEs (every SME of the population is in every cut), tested as one sample of ``rows``:
    conservative, as a mean of K shares of the same SMEs varies no more than one share of them. It
    sees an outage the full windows hide: SMEs whose feed stopped some weeks ago still have
    365-day values, computed over the year before the outage, but no activity in the cuts shorter
    than it."""
    expected = float(r.get("expected_missing", 0.0))
    n = int(r.get("rows", 0) or 0)
    found = r.get("expected_rows")
    training = int(found) if found is not None and math.isfinite(float(found)) else None
    like = float(r.get("missing_like_coverage", float("nan")))
    return missing_rose(expected, float(r.get("actual_missing", 0.0)), n, training) or (
        math.isfinite(like) and missing_rose(expected, like, n, training)
    )


def coverage_candidates(drift: pd.DataFrame, coverage: Coverage | None) -> list[str]:
    """The features of a `rank_drift` frame to compare on like coverage: counted (watch / act)
    windowed features whose training rows mostly had partial windows (`Coverage.partial`);
    none when the coverage is unknown."""
    if coverage is None:
        return []
    counted = drift[drift["signal"].isin(["watch", "act"])]
    return [str(n) for n in counted["name"] if coverage.partial(str(n))]


def _lower_band(a: str, b: str) -> str:
    return min(a, b, key=BANDS.index)


def rank_drift(
    psi: pd.DataFrame,
    shares: Mapping[Any, float],
    *,
    time_like: frozenset[str] | set[str] = frozenset(),
    points_change: Mapping[Any, float] | None = None,
    min_share: float = MIN_SHARE,
    coverage: Coverage | None = None,
    like_coverage: Mapping[Any, float] | None = None,
    like_missing: Mapping[Any, float] | None = None,
    excuse: bool = True,
) -> pd.DataFrame:
    """The feature rows of a `psi_table`, ranked by what their drift does to the score.

    Adds ``attribution_share`` (from `shares`; 0 for a feature without one), ``impact`` = PSI x
    share, ``points_change`` (the change of the feature's mean points between two dates, when
    given; they sum to the change of the mean score), ``time_like``, the training window
    coverage ``full_share`` and ``median_days`` (NaN when unknown or not windowed),
    ``psi_like_coverage`` (from `like_coverage`, the PSI on like coverage: NaN where not
    compared), ``missing_like_coverage`` (from `like_missing`, the missing share on like
    coverage: NaN where not given) and ``signal``: ``time-like`` for `time_like` features,
    ``stable`` in the stable band, ``filled-in`` for a drift that is only a fall of the missing
    share (``psi_present`` stable, when `psi` has it), ``negligible`` for a drifted feature under
    `min_share` of the attributions; for a feature compared on like coverage whose training
    windows were mostly partial (`Coverage.partial`) and whose missing share did not rise beyond
    chance, on the full windows nor on like coverage (`_more_missing`), the smaller of its band
    and its like-coverage band, named ``window-filling`` when that is stable; else the band
    (watch / act); with `excuse` False (a data feed is silent) the like-coverage comparison is
    reported but lowers no band. Rows: counted signals first (act, watch), by impact
    descending."""
    rows = psi[psi["kind"] != SCORE].copy()
    rows["attribution_share"] = [float(shares.get(n, 0.0)) for n in rows["name"]]
    rows["impact"] = rows["psi"] * rows["attribution_share"]
    rows["points_change"] = [
        float(points_change.get(n, float("nan"))) if points_change is not None else float("nan")
        for n in rows["name"]
    ]
    rows["time_like"] = [n in time_like for n in rows["name"]]
    found = [coverage.of(str(n)) if coverage is not None else None for n in rows["name"]]
    rows["full_share"] = [w.full_share if w is not None else float("nan") for w in found]
    rows["median_days"] = [w.median_days if w is not None else float("nan") for w in found]
    like = like_coverage or {}
    rows["psi_like_coverage"] = [float(like.get(n, float("nan"))) for n in rows["name"]]
    missing = like_missing or {}
    rows["missing_like_coverage"] = [float(missing.get(n, float("nan"))) for n in rows["name"]]

    def signal(r: Mapping[Any, Any]) -> str:
        if r["time_like"]:
            return TIME_LIKE_SIGNAL
        if r["band"] == "stable":
            return "stable"
        if _only_filled_in(r):
            return FILLED_IN
        if r["attribution_share"] < min_share:
            return NEGLIGIBLE
        band = str(r["band"])
        compared = r["psi_like_coverage"]
        if (
            excuse
            and coverage is not None
            and coverage.partial(str(r["name"]))
            and math.isfinite(compared)
            and not _more_missing(r)
        ):
            band = _lower_band(band, psi_band(compared))
            return WINDOW_FILLING if band == "stable" else band
        return band

    rows["signal"] = [signal(r) for r in rows.to_dict("records")]
    order = {"act": 0, "watch": 1}
    rows["_rank"] = [order.get(s, 2) for s in rows["signal"]]
    rows = rows.sort_values(
        ["_rank", "impact", "name"], ascending=[True, False, True], kind="stable"
    )
    return rows.drop(columns="_rank").reset_index(drop=True)
