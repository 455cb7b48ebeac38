"""Portfolio monitoring at a date: drift, grades, migration, early warning, realised defaults.

`monitor(...)` scores the population at the as-of date (explained) and at a comparison date
(default: 3 months earlier, month end to month end), then computes:

- **PSI** of every feature and of the score against the training profile stored with the model
  (`features.drift`: training-decile bins, a missing bin, ε = 0.0001 for empty bins; bands
  < 0.1 stable, 0.1–0.25 watch, > 0.25 act); a drifted windowed feature whose training windows
  were mostly partial is also compared **on like coverage** (`like_coverage_shares`: the
  population's features recomputed from the data cut at the training rows' history lengths, every
  SME of the population in every cut);
- the **grade distribution** at both dates;
- the **rating migration matrix** from the comparison date to the as-of date: rows are grades at
  the comparison date plus ``(new)`` (SMEs that entered the population), columns grades at the
  as-of date plus ``(defaulted)`` (a loan default in between) and ``(left)`` (no longer in the
  population: no invoice in the last 365 days);
- the **early-warning list**: SMEs down `min_notches` (2) or more grades since the comparison date,
  or whose PD is at or above `pd_threshold` now while it was below it (or the SME was not scored)
  at the comparison date; each with its reasons (top 4 risk drivers, as the service gives them);
- **realised default rate by grade against predicted PD** for the latest cohort whose labels have
  matured by the as-of date: the latest month end ``c`` with ``c + horizon ≤ as_of`` (the labels
  use only defaults up to the as-of date); `training.metrics.by_grade` gives n, defaults, observed
  rate with Clopper–Pearson and Wilson 95 % intervals, and the mean PD of each grade;
- **data freshness** (`freshness`): per feed (invoices sold and bought, payments received and
  made, inventory snapshots: `FEEDS`), for the population, each industry and, for the invoice
  feeds, each core enterprise's SMEs, the share of SMEs expected in the feed with no record in
  the last 7 / 14 / 30 days, against the same share at reference dates (the comparison date and
  the two month ends before it, the median: the training profile records no freshness); a feed
  that stopped is an action whatever the drift statistics say. An outage younger than the
  shortest like-coverage cut (30 days) moves no feature's distribution; it shows here. While a
  feed is silent across the population (`feeds_silent`), no drift is excused as window filling:
  the windowed features keep their raw signal. What it could not test is said, never called
  stable: a group with too few SMEs is ``untested``; a feed without records, a skipped window or
  data without a reference date is listed (`freshness_gaps`) in an ``UNCHECKED data`` action, and
  "no data feed fell silent" is said only when every feed was tested.

Plain functions over frames; `monitor` assembles them, `summary` makes the JSON the report is
rendered from, `log_to_mlflow` records a run in the ``monitoring`` experiment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.catalog import MAIN_CORE_FACTS, TIME_LIKE
from features.contract import DEFAULT_HORIZON_DAYS
from features.drift import (
    FULL_COVERAGE_MIN,
    MIN_SHARE,
    MISSING_MIN_RISE,
    MISSING_RISE_P,
    PROFILE_ARTIFACT,
    SCORE,
    WINDOW_FILLING,
    TrainingProfile,
    attribution_shares,
    bin_shares,
    coverage_candidates,
    psi,
    psi_table,
    rank_drift,
)
from features.exceptions import FeatureError
from features.own import day_of, to_days
from serving.exceptions import ModelLoadFailed
from serving.portfolio.batch import Progress, Scored, model_info, reasons_of, score_population
from serving.portfolio.segments import FDR as SEGMENT_FDR
from serving.portfolio.segments import LARGE_EFFECT as SEGMENT_LARGE_EFFECT
from serving.portfolio.segments import LOOKBACK_MONTHS as SEGMENT_LOOKBACK
from serving.portfolio.segments import MIN_EFFECT as SEGMENT_MIN_EFFECT
from serving.portfolio.segments import MIN_FEATURES as SEGMENT_MIN_FEATURES
from serving.portfolio.segments import MIN_ODDS_RATIO as SEGMENT_MIN_ODDS
from serving.portfolio.segments import SEGMENT_COLUMNS, pair, segment_drift
from serving.portfolio.segments import bh as SEGMENT_BH
from training.model import DEFAULT_EXPLAIN_METHOD

if TYPE_CHECKING:
    from features.contract import Tables
    from training.bundle import LoadedModel

MONITORING_EXPERIMENT = "monitoring"
DOWNGRADE_NOTCHES = 2
COMPARE_MONTHS = 3
NEW = "(new)"
DEFAULTED = "(defaulted)"
LEFT = "(left)"
DRIVERS = 3
"""Features listed per early warning: those whose points fell most between the two dates."""


# -- dates ---------------------------------------------------------------------------------------
def to_date(value: object) -> pd.Timestamp:
    """A date as a midnight Timestamp (ns)."""
    return pd.Timestamp(value).normalize().as_unit("ns")  # type: ignore[arg-type]


def months_before(as_of: object, months: int = COMPARE_MONTHS) -> pd.Timestamp:
    """The date `months` calendar months earlier; a month end maps to the month end."""
    t = to_date(as_of)
    earlier = t - pd.DateOffset(months=months)
    if t.is_month_end:
        earlier = earlier + pd.offsets.MonthEnd(0)
    return to_date(earlier)


def matured_cohort(
    as_of: object, first: object, horizon_days: int = DEFAULT_HORIZON_DAYS
) -> pd.Timestamp | None:
    """The latest month end ``c`` with ``first <= c`` and ``c + horizon_days <= as_of``: the
    latest cohort whose default labels are known at `as_of`; None when there is none yet."""
    last = to_date(as_of) - pd.Timedelta(days=horizon_days)
    cohort = to_date(pd.offsets.MonthEnd().rollback(last))
    return cohort if cohort >= to_date(first) else None


# -- grades --------------------------------------------------------------------------------------
def grade_position(grades: pd.Series | Sequence[str], scale: Sequence[str]) -> np.ndarray:
    """Each grade's position on the scale (0 = best); ValueError for a grade not on it."""
    lookup = {g: i for i, g in enumerate(scale)}
    values = list(grades)
    unknown = sorted({str(g) for g in values if g not in lookup})
    if unknown:
        raise ValueError(f"grade(s) {unknown} not on the master scale {list(scale)}")
    return np.array([lookup[g] for g in values], dtype=np.int64)


def grade_distribution(grades: pd.Series, scale: Sequence[str]) -> pd.DataFrame:
    """Count and share of each grade of the scale (every grade listed, best first)."""
    grade_position(grades, scale)
    counts = pd.Series(list(grades), dtype="object").value_counts()
    n = int(counts.sum())
    count = [int(counts.get(g, 0)) for g in scale]
    return pd.DataFrame(
        {
            "grade": list(scale),
            "count": count,
            "share": [c / n if n else 0.0 for c in count],
        }
    )


def migration_matrix(
    before: pd.DataFrame,
    after: pd.DataFrame,
    scale: Sequence[str],
    *,
    defaulted: Iterable[str] = (),
) -> pd.DataFrame:
    """SME counts from the grade in `before` (rows) to the grade in `after` (columns).

    `before` / `after`: columns ``sme_id``, ``grade`` (one row per SME). Rows: the scale's grades,
    then ``(new)`` for SMEs only in `after`. Columns: the scale's grades, then ``(defaulted)`` and
    ``(left)`` for SMEs only in `before` (defaulted: in `defaulted`)."""
    for name, frame in (("before", before), ("after", after)):
        if frame["sme_id"].duplicated().any():
            dup = frame.loc[frame["sme_id"].duplicated(), "sme_id"].iloc[0]
            raise ValueError(f"{name}: SME {dup} appears twice")
        grade_position(frame["grade"], scale)
    rows = [*scale, NEW]
    cols = [*scale, DEFAULTED, LEFT]
    row_of = {g: i for i, g in enumerate(scale)}
    col_of = {c: j for j, c in enumerate(cols)}
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    b = dict(zip(before["sme_id"].astype(str), before["grade"].astype(str), strict=True))
    a = dict(zip(after["sme_id"].astype(str), after["grade"].astype(str), strict=True))
    gone = {str(s) for s in defaulted}
    for sme, grade in b.items():
        to = a.get(sme, DEFAULTED if sme in gone else LEFT)
        counts[row_of[grade], col_of[to]] += 1
    for sme, grade in a.items():
        if sme not in b:
            counts[len(scale), col_of[grade]] += 1
    return pd.DataFrame(
        counts, index=pd.Index(rows, name="from"), columns=pd.Index(cols, name="to")
    )


def migration_counts(matrix: pd.DataFrame, scale: Sequence[str]) -> dict[str, int]:
    """SMEs scored at both dates that moved up (better), down (worse) or stayed."""
    core = matrix.loc[list(scale), list(scale)].to_numpy()
    i, j = np.indices(core.shape)
    return {
        "upgraded": int(core[j < i].sum()),
        "unchanged": int(core[j == i].sum()),
        "downgraded": int(core[j > i].sum()),
    }


def early_warnings(
    now: pd.DataFrame,
    before: pd.DataFrame,
    scale: Sequence[str],
    *,
    pd_threshold: float,
    min_notches: int = DOWNGRADE_NOTCHES,
) -> pd.DataFrame:
    """The early-warning list (module docstring).

    `now`: ``sme_id``, ``pd``, ``grade`` (and ``reasons`` when known); `before`: ``sme_id``,
    ``pd``, ``grade``. Columns: sme_id, rule, grade_before, grade_now, notches_down, pd_before,
    pd_now, reasons; ordered by PD now, highest first."""
    if not 0.0 < pd_threshold < 1.0:
        raise ValueError(f"the PD threshold must lie strictly between 0 and 1, got {pd_threshold}")
    if min_notches < 1:
        raise ValueError(f"min_notches must be at least 1, got {min_notches}")
    merged = now.merge(
        before[["sme_id", "pd", "grade"]],
        on="sme_id",
        how="left",
        suffixes=("", "_before"),
        validate="one_to_one",
    )
    pos_now = grade_position(merged["grade"], scale)
    seen = merged["grade_before"].notna().to_numpy()
    pos_before = np.full(len(merged), -1, dtype=np.int64)
    if seen.any():
        pos_before[seen] = grade_position(merged.loc[seen, "grade_before"], scale)
    notches = np.where(seen, pos_now - pos_before, 0)
    pd_now = merged["pd"].to_numpy(dtype=np.float64)
    pd_before = merged["pd_before"].to_numpy(dtype=np.float64, na_value=np.nan)
    down = seen & (notches >= min_notches)
    crossed = (pd_now >= pd_threshold) & ~(pd_before >= pd_threshold)
    flagged = down | crossed
    rules = [
        "; ".join(
            r
            for r, on in (
                (f"down {n} grades", d),
                (f"PD crossed {pd_threshold:.2%}", c),
            )
            if on
        )
        for n, d, c in zip(notches, down, crossed, strict=True)
    ]
    reasons = (
        reasons_of(merged) if "reasons" in merged.columns else [[] for _ in range(len(merged))]
    )
    out = pd.DataFrame(
        {
            "sme_id": merged["sme_id"].astype("str"),
            "rule": pd.Series(rules, dtype="str"),
            "grade_before": merged["grade_before"].astype("str"),
            "grade_now": merged["grade"].astype("str"),
            "notches_down": notches.astype(np.int64),
            "pd_before": pd_before,
            "pd_now": pd_now,
            "reasons": pd.Series(reasons, dtype=object),
        }
    )[flagged]
    return out.sort_values(
        ["pd_now", "sme_id"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)


def points_of(
    model: Any, features: pd.DataFrame, method: str = DEFAULT_EXPLAIN_METHOD
) -> pd.DataFrame:
    """Every feature's score points per SME (index sme_id, the model's feature order)."""
    names = list(model.feature_names)
    points = model.explain(features[names].reset_index(drop=True), method).points
    points.index = pd.Index(features["sme_id"].astype(str).to_numpy(), name="sme_id")
    return points


def warning_drivers(
    sme_ids: Iterable[str],
    points_now: pd.DataFrame,
    points_before: pd.DataFrame,
    top: int = DRIVERS,
) -> list[list[dict[str, Any]]]:
    """Per SME, the `top` features whose points fell most between the two dates (what drove the
    downgrade): feature, points_before, points_now, change (negative = riskier); only falls, and
    none for an SME not scored at the earlier date."""
    out: list[list[dict[str, Any]]] = []
    names = [str(c) for c in points_now.columns]
    row_now = {str(k): i for i, k in enumerate(points_now.index)}
    row_before = {str(k): i for i, k in enumerate(points_before.index)}
    now_m = points_now.to_numpy(dtype=np.float64)
    before_m = points_before[points_now.columns].to_numpy(dtype=np.float64)
    for sme in sme_ids:
        i, j = row_now.get(str(sme)), row_before.get(str(sme))
        if i is None or j is None:
            out.append([])
            continue
        change = now_m[i] - before_m[j]
        order = [k for k in np.argsort(change, kind="stable")[:top] if change[k] < 0]
        out.append(
            [
                {
                    "feature": names[k],
                    "points_before": float(before_m[j, k]),
                    "points_now": float(now_m[i, k]),
                    "change": float(change[k]),
                }
                for k in order
            ]
        )
    return out


def segment_labels(scored: Scored, kind: str) -> pd.Series:
    """Each scored SME's segment of a kind (``industry``: its industry; ``core``: its main core
    enterprise), indexed by sme_id; missing where it has none."""
    values = scored.main_core if kind == "core" else scored.features[kind]
    index = pd.Index(scored.features["sme_id"].astype(str).to_numpy(), name="sme_id")
    return pd.Series(values.astype("object").to_numpy(), index=index, name=kind)


def defaulted_between(tables: Tables, start: object, end: object) -> set[str]:
    """SMEs with a loan default date in ``(start, end]``."""
    loans = tables.loans
    if loans.empty:
        return set()
    d = pd.to_datetime(loans["default_date"])
    mask = (d > to_date(start)) & (d <= to_date(end))
    return set(loans.loc[mask, "sme_id"].astype(str))


# -- the training reference ------------------------------------------------------------------------
def drift_profile(loaded: LoadedModel) -> TrainingProfile:
    """The drift reference carried by a model's bundle (training-decile bins of every feature
    and of the score). ModelLoadFailed for a bundle without one."""
    found = loaded.model.drift_profile
    if found is None:
        version = f" (version {loaded.version})" if loaded.version is not None else ""
        raise ModelLoadFailed(
            f"model {loaded.uri}{version} carries no training reference for drift monitoring "
            f"({PROFILE_ARTIFACT}: training-decile bins of every feature and of the score); "
            "monitor a model trained with it"
        )
    return found


@dataclass(frozen=True)
class MonitorResult:
    """Everything the monitoring report shows (see `summary`)."""

    as_of: pd.Timestamp
    compare: pd.Timestamp
    model: dict[str, str | None]
    grades: tuple[str, ...]
    pd_threshold: float
    min_notches: int
    profile: TrainingProfile
    now: Scored
    before: Scored
    psi: pd.DataFrame
    drift: pd.DataFrame  # features.drift.rank_drift: PSI with attribution shares and signals
    segments: pd.DataFrame  # serving.portfolio.segments.segment_drift by industry and core
    baseline: pd.Timestamp | None  # the segment drift's baseline date (None: too early)
    segments_note: str
    distribution: pd.DataFrame  # grade, count_as_of, share_as_of, count_compare, share_compare
    migration: pd.DataFrame
    warnings: pd.DataFrame
    cohort: pd.Timestamp | None
    realised: pd.DataFrame | None  # training.metrics.by_grade of the matured cohort
    realised_note: str
    freshness: Freshness  # the feeds' silences at the as-of date against the reference dates


def monitor(
    tables: Tables,
    loaded: LoadedModel,
    profile: TrainingProfile,
    as_of: object,
    *,
    compare: object | None = None,
    pd_threshold: float | None = None,
    min_notches: int = DOWNGRADE_NOTCHES,
    method: str = DEFAULT_EXPLAIN_METHOD,
    progress: Progress | None = None,
) -> MonitorResult:
    """Score the population at `as_of` and `compare` (default: 3 months earlier) and compute the
    monitoring view (module docstring). FeatureError for dates without population or out of the
    data's range, or a comparison date not before the as-of date. The label horizon and (unless
    `pd_threshold` is given) the early-warning PD come from the model's bundle."""
    from features.pipeline import data_range
    from training.metrics import by_grade

    horizon_days = loaded.model.horizon_days
    if pd_threshold is None:
        pd_threshold = loaded.model.thresholds["monitor_early_warning_pd"]
    as_of_t = to_date(as_of)
    compare_t = months_before(as_of_t) if compare is None else to_date(compare)
    if compare_t >= as_of_t:
        raise FeatureError(
            f"the comparison date {compare_t.date()} must be before the as-of date {as_of_t.date()}"
        )
    if not 0.0 < pd_threshold < 1.0:
        raise FeatureError(
            f"the PD threshold must lie strictly between 0 and 1, got {pd_threshold}"
        )
    model = loaded.model
    missing = [n for n in model.feature_names if n not in profile.feature_names]
    if missing:
        raise ModelLoadFailed(
            f"model {loaded.uri}: its training reference lacks feature(s) {missing[:10]}"
        )
    scale = tuple(model.master_scale.grades)
    start, _ = data_range(tables)

    now = _scored(tables, loaded, as_of_t, "as-of", explain=True, method=method, progress=progress)
    before = _scored(tables, loaded, compare_t, "comparison", explain=False, method=method)
    psi = psi_table(
        profile,
        now.features[[c for c in now.features.columns if c in profile.feature_names]],
        now.scores["score"].to_numpy(),
    )
    points_now = points_of(model, now.features, method)
    points_before = points_of(model, before.features, method)
    shares = attribution_shares(points_now).to_dict()
    points_change = (points_now.mean() - points_before.mean()).to_dict()
    ranked = partial(
        rank_drift, psi, shares, time_like=TIME_LIKE, points_change=points_change,
        coverage=profile.coverage,
    )  # fmt: skip
    drift = ranked()
    fresh = freshness(tables, as_of_t, freshness_references(as_of_t, compare_t))
    compare_like = coverage_candidates(drift, profile.coverage)
    if compare_like:
        # ranked again, with those features' PSI and missing share on like coverage; while a
        # feed is silent across the population they excuse no drift as windows filling (the
        # shortest like-coverage cut cannot see an outage younger than it)
        like = like_coverage_shares(
            tables, profile, as_of_t, now.features["sme_id"], compare_like, horizon_days
        )
        drift = ranked(
            like_coverage=psi_of_shares(profile, like),
            like_missing={n: float(s[-1]) for n, s in like.items()},
            excuse=not feeds_silent(fresh),
        )
    windows = {f.name: f.window_days for f in model.catalog}
    drift["window_days"] = [windows.get(str(n)) for n in drift["name"]]
    baseline_t = months_before(as_of_t, SEGMENT_LOOKBACK)
    segments = pd.DataFrame(columns=SEGMENT_COLUMNS)
    if baseline_t < to_date(pd.offsets.MonthEnd().rollforward(start)):
        baseline: pd.Timestamp | None = None
        segments_note = (
            f"no segment drift: its baseline, {SEGMENT_LOOKBACK} months before the as-of date "
            f"({baseline_t.date()}), is before the data's first month end"
        )
    else:
        baseline = baseline_t
        base = _scored(tables, loaded, baseline_t, "baseline", explain=False, method=method)
        paired = pair(
            now.features, base.features, points_now, points_of(model, base.features, method)
        )
        segments, _ = segment_drift(
            paired,
            {"industry": segment_labels(now, "industry"), "core": segment_labels(now, "core")},
            model.catalog,
            factor=model.scale.factor,
            time_like=TIME_LIKE,
            core_facts=MAIN_CORE_FACTS,
        )
        segments_note = (
            f"{len(paired.now)} SMEs scored on {baseline_t.date()} and {as_of_t.date()}; each "
            "industry and each main core's SMEs against the rest"
        )
    dist_now = grade_distribution(now.scores["grade"], scale)
    dist_before = grade_distribution(before.scores["grade"], scale)
    distribution = pd.DataFrame(
        {
            "grade": list(scale),
            "count_as_of": dist_now["count"],
            "share_as_of": dist_now["share"],
            "count_compare": dist_before["count"],
            "share_compare": dist_before["share"],
        }
    )
    matrix = migration_matrix(
        before.scores[["sme_id", "grade"]],
        now.scores[["sme_id", "grade"]],
        scale,
        defaulted=defaulted_between(tables, compare_t, as_of_t),
    )
    warnings = early_warnings(
        now.scores, before.scores, scale, pd_threshold=pd_threshold, min_notches=min_notches
    )
    warnings["drivers"] = pd.Series(
        warning_drivers(warnings["sme_id"], points_now, points_before), dtype=object
    )
    cohort = matured_cohort(as_of_t, start, horizon_days)
    realised: pd.DataFrame | None = None
    if cohort is None:
        note = (
            f"no cohort has matured labels yet: a cohort's {horizon_days}-day default labels are "
            f"known {horizon_days} days after its date, and the data starts on {start.date()}"
        )
    else:
        old = _scored(
            tables,
            loaded,
            cohort,
            "cohort",
            explain=False,
            method=method,
            horizon_days=horizon_days,
            data_end=as_of_t,
        )
        y = old.features["default_12m"].astype("float64").to_numpy()
        realised = by_grade(y, old.scores["pd"].to_numpy(), model.master_scale)
        note = (
            f"cohort {cohort.date()}: {len(y)} SMEs, defaults within {horizon_days} days known "
            f"by {as_of_t.date()}"
        )
    return MonitorResult(
        as_of=as_of_t,
        compare=compare_t,
        model={**model_info(loaded), "uri": loaded.uri},
        grades=scale,
        pd_threshold=float(pd_threshold),
        min_notches=min_notches,
        profile=profile,
        now=now,
        before=before,
        psi=psi,
        drift=drift,
        segments=segments,
        baseline=baseline,
        segments_note=segments_note,
        distribution=distribution,
        migration=matrix,
        warnings=warnings,
        cohort=cohort,
        realised=realised,
        realised_note=note,
        freshness=fresh,
    )


def feeds_silent(found: Freshness) -> bool:
    """Whether a feed fell silent across the population (a freshness test of the whole
    population at act): the monitor then excuses no drift as window filling."""
    tests = found.tests
    return bool(((tests["kind"] == "population") & (tests["signal"] == "act")).any())


def cut_history(tables: Tables, start: pd.Timestamp) -> Tables:
    """The tables as if the data had begun on `start`: invoices issued and inventory snapshots
    taken before it dropped, the two histories that start the windows of `features.own`
    (loans and statements kept: they decide who is in the population, not window coverage)."""
    invoices = tables.invoices
    inventory = tables.inventory
    return replace(
        tables,
        invoices=invoices[invoices["issue_date"] >= start].reset_index(drop=True),
        inventory=inventory[inventory["snapshot_date"] >= start].reset_index(drop=True),
    )


def like_coverage_shares(
    tables: Tables,
    profile: TrainingProfile,
    as_of: pd.Timestamp,
    population: Iterable[str],
    names: Sequence[str],
    horizon_days: int,
) -> dict[str, np.ndarray]:
    """The bin shares of features `names` on like coverage (`features.drift`, module docstring):
    the `population`'s features at `as_of` recomputed from the data cut (`cut_history`) at each
    of the profile's training history lengths, binned against the training bins; each length's
    bin shares weigh equally (each is a 1/K quantile of the training rows). The last share is the
    missing one.

    Every SME of the population is in every cut, with the features its data in the cut give it:
    one without an invoice in a short cut has the values of no activity there (missing, or 0 for
    an amount or a count), as the feature defines them. Keeping only the SMEs active in the cut
    would hide an outage: SMEs whose feed stopped (or whose trade collapsed) some days ago would
    drop out of the shorter cuts, and those cuts would compare with training as if nothing had
    happened. Empty when the profile records no coverage or the population is empty."""
    from features.reference import build_reference, feature_rows

    coverage = profile.coverage
    if coverage is None or not names:
        return {}
    day = day_of(as_of)
    ids = sorted({str(s) for s in population})
    shares: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for days in coverage.history_days:
        cut = cut_history(tables, as_of - pd.Timedelta(days=days - 1))
        rows = feature_rows(
            cut,
            [day],
            build_reference(cut),
            sme_ids=ids,
            horizon_days=horizon_days,
            population_only=False,  # the population's SMEs, active in the cut or not
        )
        if rows.empty:
            continue
        for name in names:
            shares[name].append(bin_shares(profile.bins(name), rows[name]))
    return {name: np.mean(found, axis=0) for name, found in shares.items() if found}


def like_coverage_psi(
    tables: Tables,
    profile: TrainingProfile,
    as_of: pd.Timestamp,
    population: Iterable[str],
    names: Sequence[str],
    horizon_days: int,
) -> dict[str, float]:
    """The PSI of features `names` on like coverage: of their `like_coverage_shares` against
    the training shares."""
    return psi_of_shares(
        profile, like_coverage_shares(tables, profile, as_of, population, names, horizon_days)
    )


def psi_of_shares(profile: TrainingProfile, shares: dict[str, np.ndarray]) -> dict[str, float]:
    """The PSI of each feature's bin `shares` against its training shares."""
    return {name: psi(profile.bins(name).expected, found) for name, found in shares.items()}


# -- data freshness --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Feed:
    """One stream of records the data contract delivers per SME: `text` names it ("invoices
    sold"), `counterparty` the word before a core's id when the stream is per counterparty
    ("to": invoices sold to C03) and empty when it is not (inventory snapshots)."""

    name: str
    text: str
    counterparty: str


FEEDS: tuple[Feed, ...] = (
    Feed("invoices_sold", "invoices sold", "to"),
    Feed("invoices_bought", "invoices bought", "from"),
    Feed("payments_received", "payments received", "from"),
    Feed("payments_made", "payments made", "to"),
    Feed("inventory", "inventory snapshots", ""),
)
"""The feeds whose freshness the monitor checks: the invoices an SME issued and received (by
issue date), the payments recorded on them (by paid date: the invoices table's updates) and its
inventory snapshots (by snapshot date). Loans and statements are events of their own cadence
(a disbursement, a yearly statement), not a stream an SME's silence can be read from."""
FEED_ORDER = {f.name: i for i, f in enumerate(FEEDS)}
FRESHNESS_WINDOWS: tuple[int, ...] = (7, 14, 30)
"""The last N days in which an SME is looked for a record of a feed."""
FRESHNESS_LOOKBACK_DAYS = 365
"""An SME is expected in a feed (with a core) when it had a record there in this many days."""
FRESHNESS_Q = 0.01
"""Benjamini-Hochberg level, over all the run's freshness tests, of a rise of the silent share."""
FRESHNESS_MIN_RISE = 0.05
"""A silent share rises materially by at least this much (5 % of the group's SMEs fell silent)."""
FRESHNESS_MIN_SMES = 10
"""Groups with fewer SMEs expected in the feed at either date are not tested (``untested``)."""
UNTESTED = "untested"
"""The signal of a freshness test that could not be made (too few SMEs at either date)."""
FRESHNESS_REFERENCES = 3
"""Reference dates: the comparison date and the months before it (`freshness_references`)."""
FRESHNESS_COLUMNS = (
    "feed", "kind", "group", "window_days", "n_as_of", "active_as_of", "reference", "n_compare",
    "active_compare", "silent_as_of", "silent_compare", "rise", "p", "q", "signal",
)  # fmt: skip


@dataclass(frozen=True)
class FeedData:
    """The tables as integer arrays for the freshness check: SMEs and cores by position in
    `smes` / `cores` (sorted ids), dates as days since the epoch. `records[feed]`: per record of
    the feed the SME, the core it was with (-1: not a core, or no counterparty) and its day.
    `default_day`: each SME's first loan default (a large number for none)."""

    smes: pd.Index
    cores: pd.Index
    industry: np.ndarray  # per SME, its industry (None when not given)
    records: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    trade: tuple[np.ndarray, np.ndarray, np.ndarray]  # seller, buyer (SME positions), issue day
    default_day: np.ndarray

    @classmethod
    def of(cls, tables: Tables) -> FeedData:
        ent = tables.enterprises
        role = ent["role"].astype(str).to_numpy()
        ids = ent["enterprise_id"].astype(str).to_numpy()
        smes = pd.Index(np.sort(ids[role == "sme"]))
        cores = pd.Index(np.sort(ids[role == "core"]))
        industry = np.full(len(smes), None, dtype=object)
        if "industry" in ent.columns:
            known = ent[role == "sme"]
            where = smes.get_indexer(known["enterprise_id"].astype(str))
            # None where not given (a NaN would be read as an industry named "nan")
            industry[where] = (
                known["industry"].astype("object").where(known["industry"].notna(), None)
            )
        inv = tables.invoices
        # each party looked up once, then as an SME / core position (the last entry, -1, for an
        # id the enterprises do not hold: the lookup's -1 lands on it)
        every = pd.Index(ids)
        as_sme = np.append(smes.get_indexer(every), -1)
        as_core = np.append(cores.get_indexer(every), -1)
        seller_at = every.get_indexer(pd.Index(inv["seller_id"]))
        buyer_at = every.get_indexer(pd.Index(inv["buyer_id"]))
        seller, buyer = as_sme[seller_at], as_sme[buyer_at]
        seller_core, buyer_core = as_core[seller_at], as_core[buyer_at]
        issued = to_days(inv["issue_date"])
        paid_at = inv["paid_date"]
        paid = paid_at.notna().to_numpy()
        paid_day = np.where(paid, to_days(paid_at.fillna(inv["issue_date"])), 0)
        records: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for feed in FEEDS:
            if feed.name == "inventory":
                stock = tables.inventory
                sme = smes.get_indexer(stock["sme_id"].astype(str))
                records[feed.name] = (sme, np.full(len(sme), -1), to_days(stock["snapshot_date"]))
                continue
            sold = feed.name.endswith(("sold", "received"))
            own, core = (seller, buyer_core) if sold else (buyer, seller_core)
            day = issued if feed.name.startswith("invoices") else paid_day
            keep = (own >= 0) & (paid if feed.name.startswith("payments") else True)
            records[feed.name] = (own[keep], core[keep], day[keep])
        never = np.iinfo(np.int64).max
        default_day = np.full(len(smes), never, dtype=np.int64)
        loans = tables.loans
        if not loans.empty:
            hit = loans["default_date"].notna().to_numpy()
            sme = smes.get_indexer(loans["sme_id"].astype(str))[hit]
            ok = sme >= 0
            np.minimum.at(default_day, sme[ok], to_days(loans["default_date"][hit])[ok])
        return cls(smes, cores, industry, records, (seller, buyer, issued), default_day)

    def population(self, when: pd.Timestamp) -> np.ndarray:
        """The population at `when` (data contract) as a mask over `smes`: an invoice, sold or
        bought, issued in ``(when - 365 d, when]`` and no loan default on or before `when`."""
        t = day_of(when)
        seller, buyer, issued = self.trade
        year = (issued <= t) & (issued > t - 365)
        active = np.zeros(len(self.smes), dtype=bool)
        for side in (seller, buyer):
            picked = side[year]
            active[picked[picked >= 0]] = True
        return active & (self.default_day > t)


def population_at(tables: Tables, when: object) -> list[str]:
    """The population at `when` (data contract): SMEs with an invoice, sold or bought, issued in
    ``(when - 365 d, when]`` and no loan default on or before `when`; sorted ids."""
    data = FeedData.of(tables)
    return [str(s) for s in data.smes[data.population(to_date(when))]]


def feed_cadence(data: FeedData, feed: str, when: pd.Timestamp) -> float:
    """The feed's typical gap in days: the median over SMEs of the median gap between the
    distinct dates of an SME's records in the `FRESHNESS_LOOKBACK_DAYS` up to `when` (NaN when
    no SME has two)."""
    sme, _, day = data.records[feed]
    t = day_of(when)
    keep = (day <= t) & (day > t - FRESHNESS_LOOKBACK_DAYS) & (sme >= 0)
    key = np.unique(sme[keep].astype(np.int64) * (1 << 32) + day[keep])
    who, days = key >> 32, key & ((1 << 32) - 1)
    same = who[1:] == who[:-1]
    if not same.any():
        return math.nan
    gaps = pd.Series(np.diff(days)[same], index=who[1:][same])
    return float(gaps.groupby(level=0).median().median())


def silent_counts(
    data: FeedData,
    feed: Feed,
    when: pd.Timestamp,
    windows: Sequence[int] = FRESHNESS_WINDOWS,
) -> pd.DataFrame:
    """At `when`, per group and window N: ``n`` SMEs of the population (`FeedData.population`)
    expected in the feed (a record in the `FRESHNESS_LOOKBACK_DAYS` up to `when`) and ``active``
    those with a record in the last N days, ``(when - N, when]``; only records dated on or
    before `when` (the point-in-time rule). Groups: ``population`` (all), each ``industry`` and,
    for a feed per counterparty, each ``core``: the SMEs with a record with that core in the
    lookback, active with a record with it in the window."""
    t = day_of(when)
    sme, core, day = data.records[feed.name]
    keep = (sme >= 0) & (day <= t) & (day > t - FRESHNESS_LOOKBACK_DAYS)
    keep[keep] = data.population(when)[sme[keep]]
    sme, core, day = sme[keep], core[keep], day[keep]
    out: list[tuple[str, str, int, int, int]] = []

    def count(kind: str, group: str, last: np.ndarray) -> None:
        if not len(last):  # nobody expected in the feed: nothing to test
            return
        for n_days in windows:
            out.append((kind, group, n_days, len(last), int((last > t - n_days).sum())))

    last = np.full(len(data.smes), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, sme, day)
    seen = last > np.iinfo(np.int64).min
    count("population", "all", last[seen])
    industry = data.industry
    for name in sorted({str(i) for i in industry[seen] if i is not None}):
        count("industry", name, last[seen & (industry == name)])
    with_core = core >= 0
    if feed.counterparty and with_core.any():  # no record with a core: no core to test
        n = len(data.smes)
        key = core[with_core].astype(np.int64) * n + sme[with_core]
        pair = pd.Series(day[with_core]).groupby(key, sort=True).max()
        pair_core = pair.index.to_numpy() // n
        cores, start = np.unique(pair_core, return_index=True)
        for c, lasts in zip(cores, np.split(pair.to_numpy(), start[1:]), strict=True):
            count("core", str(data.cores[c]), lasts)
    return pd.DataFrame(out, columns=["kind", "group", "window_days", "n", "active"])


def freshness_references(as_of: pd.Timestamp, compare: pd.Timestamp) -> list[pd.Timestamp]:
    """The dates the as-of date's silences are compared with: the comparison date and the
    `FRESHNESS_REFERENCES` - 1 months before it (month end to month end)."""
    return [compare, *(months_before(compare, k) for k in range(1, FRESHNESS_REFERENCES))]


def _same_phase(a: pd.Timestamp, b: pd.Timestamp) -> bool:
    """Whether two dates sit at the same place in their months (same day, or both month ends):
    a feed delivered on fixed days of the month (inventory at month ends) is then due as often
    in their windows."""
    return a.day == b.day or (a.is_month_end and b.is_month_end)


@dataclass(frozen=True)
class Freshness:
    """What the freshness check found (`freshness`)."""

    tests: pd.DataFrame  # FRESHNESS_COLUMNS, one row per feed, group and window
    references: tuple[pd.Timestamp, ...]  # the reference dates with a population
    cadence: dict[str, float]  # per feed, its typical gap in days (NaN: unknown)
    skipped: tuple[str, ...]  # windows not tested, and why
    windows: dict[str, tuple[int, ...]]  # per feed, the windows compared (none skipped)


def freshness(
    tables: Tables,
    as_of: pd.Timestamp,
    references: Sequence[pd.Timestamp],
) -> Freshness:
    """The data freshness check: per feed (`FEEDS`), group and window, the share of the group's
    SMEs silent (no record in the last N days) at `as_of` against the same share at the
    `references` (`freshness_references`), each among that date's population (`population_at`,
    `silent_counts`). The as-of date is compared with the reference of median silent share (of
    two, the more silent): one reference date whose feed happened to be unusually busy (a core
    paying a backlog as it leaves stress) does not make an ordinary month look silent; an outage
    is compared with dates before it as long as the median reference predates it. One-sided
    Fisher exact test that the silent share rose, Benjamini-Hochberg over all the run's tests:
    ``act`` when q < `FRESHNESS_Q` and the share rose by `FRESHNESS_MIN_RISE` or more,
    ``untested`` when the group has fewer than `FRESHNESS_MIN_SMES` SMEs expected in the feed at
    either date (p and q NaN: nothing was tested, so nothing is called stable), else ``stable``.
    A feed no SME of the population is expected in, and every feed when no reference date has
    a population, has no test at all (`freshness_gaps` says what was not checked).

    Fisher's test treats the two dates as independent samples; they hold largely the same SMEs,
    whose silences are positively correlated, so it overstates the noise of the difference:
    conservative. Windows shorter than 1.5 times a feed's cadence (`feed_cadence` at the
    comparison date) are not tested when a reference sits at another place in its month than
    the as-of date (`_same_phase`): a monthly snapshot can be due in one window and not in the
    other."""
    from scipy.stats import hypergeom

    data = FeedData.of(tables)
    refs = [t for t in references if data.population(t).any()]  # none before the data began
    aligned = all(_same_phase(as_of, t) for t in refs)
    keys = ["kind", "group", "window_days"]
    frames: list[pd.DataFrame] = []
    cadence: dict[str, float] = {}
    skipped: list[str] = []
    compared: dict[str, tuple[int, ...]] = {}
    for feed in FEEDS:
        cadence[feed.name] = feed_cadence(data, feed.name, refs[0]) if refs else math.nan
        windows = list(FRESHNESS_WINDOWS)
        if not aligned and math.isfinite(cadence[feed.name]):
            short = [w for w in windows if w < 1.5 * cadence[feed.name]]
            windows = [w for w in windows if w not in short]
            if short:
                skipped.append(
                    f"{feed.text}: the {'/'.join(map(str, short))}-day windows (a record every "
                    f"{cadence[feed.name]:.0f} days, and the reference dates sit at other "
                    f"places in their months than {as_of.date()})"
                )
        compared[feed.name] = tuple(windows) if refs else ()
        if not windows or not refs:
            continue
        now = silent_counts(data, feed, as_of, windows)
        before = pd.concat(
            [silent_counts(data, feed, t, windows).assign(reference=t) for t in refs],
            ignore_index=True,
        )
        before["silent"] = (before["n"] - before["active"]) / before["n"].where(before["n"] > 0)
        # the reference of median silent share (of an even number, the upper one), per test
        before = before.sort_values([*keys, "silent", "reference"], na_position="first")
        rank = before.groupby(keys).cumcount()
        size = before.groupby(keys)["n"].transform("size")
        chosen = before[rank == size // 2]
        both = now.merge(chosen, on=keys, suffixes=("_as_of", "_compare"))
        frames.append(both.assign(feed=feed.name))
    if not frames:
        empty = pd.DataFrame(columns=list(FRESHNESS_COLUMNS))
        return Freshness(empty, tuple(refs), cadence, tuple(skipped), compared)
    tests = pd.concat(frames, ignore_index=True)
    n1 = tests["n_as_of"].to_numpy(dtype=np.int64)
    n0 = tests["n_compare"].to_numpy(dtype=np.int64)
    k1 = n1 - tests["active_as_of"].to_numpy(dtype=np.int64)
    k0 = n0 - tests["active_compare"].to_numpy(dtype=np.int64)
    testable = (n1 >= FRESHNESS_MIN_SMES) & (n0 >= FRESHNESS_MIN_SMES)
    s1 = k1 / np.maximum(n1, 1)
    s0 = k0 / np.maximum(n0, 1)
    # one-sided Fisher exact: P(X >= k1), X hypergeometric (n1 + n0 SMEs, k1 + k0 silent, n1 drawn)
    p = np.where(testable, hypergeom.sf(k1 - 1, n1 + n0, k1 + k0, n1), np.nan)
    q = SEGMENT_BH(p)
    rise = s1 - s0
    act = (q < FRESHNESS_Q) & (rise >= FRESHNESS_MIN_RISE)
    tests = tests.assign(
        reference=[t.date().isoformat() for t in tests["reference"]],
        silent_as_of=s1,
        silent_compare=s0,
        rise=rise,
        p=p,
        q=q,
        signal=np.where(testable, np.where(act, "act", "stable"), UNTESTED),
    )
    tests = tests[list(FRESHNESS_COLUMNS)].reset_index(drop=True)
    return Freshness(tests, tuple(refs), cadence, tuple(skipped), compared)


def _scored(
    tables: Tables,
    loaded: LoadedModel,
    when: pd.Timestamp,
    what: str,
    *,
    explain: bool,
    method: str,
    horizon_days: int | None = None,
    data_end: object | None = None,
    progress: Progress | None = None,
) -> Scored:
    try:
        return score_population(
            tables,
            [when],
            loaded,
            explain=explain,
            method=method,
            horizon_days=horizon_days,
            data_end=data_end,
            progress=progress,
        )
    except FeatureError as exc:
        raise FeatureError(f"{what} date {when.date()}: {exc}") from None


# -- the JSON summary ------------------------------------------------------------------------------
def _num(value: Any) -> float | int | None:
    """A JSON number (None for NaN / missing)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    f = float(value)
    return f if math.isfinite(f) else None


SIGNALS: tuple[str, ...] = (
    "stable",
    "watch",
    "act",
    "time-like",
    "filled-in",
    WINDOW_FILLING,
    "negligible",
)
"""Every feature signal of `features.drift.rank_drift`, in the order the summary counts them."""


def coverage_note(profile: TrainingProfile) -> str:
    """What the summary says of the training rows' window coverage (unknown for old profiles)."""
    coverage = profile.coverage
    if coverage is None:
        return (
            "unknown: this model's training profile records no window coverage (stored before "
            "it did); windowed features are judged on their PSI alone"
        )
    partial = [w for w in coverage.windows if w.full_share < FULL_COVERAGE_MIN]
    by_window = sorted({(w.window_days, w.full_share, w.median_days) for w in partial})
    said = "; ".join(
        f"{days}-day windows {full:.0%} full, median {median:.0f} days covered"
        for days, full, median in by_window
    )
    return (
        f"{coverage.rows:,} training rows; invoice history lengths compared at "
        f"{', '.join(str(d) for d in coverage.history_days)} days (training quantiles); "
        + (f"mostly partial: {said}" if partial else "every window mostly full in training")
    )


def summary(result: MonitorResult) -> dict[str, Any]:
    """The JSON summary of a monitoring run (the report is rendered from it)."""
    psi = result.psi
    score_row = psi[psi["kind"] == SCORE].iloc[0]
    features = result.drift
    signals = features["signal"].value_counts()
    m = result.migration
    change = features.set_index("name")["points_change"]
    movers = change.reindex(change.abs().sort_values(ascending=False).index).head(5)
    realised: list[dict[str, Any]] = []
    if result.realised is not None:
        for row in result.realised.to_dict("records"):
            realised.append(
                {
                    "grade": str(row["grade"]),
                    "n": int(row["n"]),
                    "defaults": int(row["defaults"]),
                    "mean_pd": _num(row["mean_pd"]),
                    "observed_rate": _num(row["observed_rate"]),
                    "ci_low": _num(row["ci_low"]),
                    "ci_high": _num(row["ci_high"]),
                    "within_ci": bool(row["within_ci"]),
                    "jeffreys_p_value": _num(row["jeffreys_p_value"]),
                    "jeffreys_pass": bool(row["jeffreys_pass"]),
                }
            )
    doc: dict[str, Any] = {
        "kind": "monitoring",
        "as_of": result.as_of.date().isoformat(),
        "compare": result.compare.date().isoformat(),
        "model": dict(result.model),
        "population": {"as_of": len(result.now.scores), "compare": len(result.before.scores)},
        "mean_pd": {
            "as_of": float(result.now.scores["pd"].mean()),
            "compare": float(result.before.scores["pd"].mean()),
        },
        "psi": {
            "binning": "training deciles (right-closed), a separate missing bin, categories seen "
            "in training plus 'other'; empty bins take the share 0.0001",
            "bands": {"stable": "< 0.1", "watch": "0.1 - 0.25", "act": "> 0.25"},
            "training_rows": result.profile.rows,
            "training_as_of": [result.profile.as_of_from, result.profile.as_of_to],
            "score": {"psi": float(score_row["psi"]), "band": str(score_row["band"])},
            "signals": "a feature counts (watch / act, its PSI band) only if it is not time-like "
            f"(ages: {', '.join(sorted(TIME_LIKE))}), its drift is not only a fall of its "
            "missing share with the present values as in training (filled-in), and it carries "
            f"at least {MIN_SHARE:.0%} of the model's mean |points|; a windowed feature whose "
            f"training windows were mostly partial (under {FULL_COVERAGE_MIN:.0%} of the training "
            "rows' histories covered the whole window) counts at the lower of its band and its "
            "band on like coverage (the population's features recomputed from the data cut at "
            "the training rows' history lengths, every SME of the population in every cut), "
            "and is window-filling when that is stable, unless its missing share rose by at "
            f"least {MISSING_MIN_RISE:.0%} of the SMEs and beyond chance on the full windows or "
            "on like coverage (one-sided Fisher exact test against the training rows at "
            f"{MISSING_RISE_P:g}); ranked by impact = PSI x "
            "attribution share",
            "coverage": coverage_note(result.profile),
            "band_counts": {b: int(signals.get(b, 0)) for b in SIGNALS},
            "features": [
                {
                    "name": str(r["name"]),
                    "kind": str(r["kind"]),
                    "psi": float(r["psi"]),
                    "band": str(r["band"]),
                    "signal": str(r["signal"]),
                    "attribution_share": float(r["attribution_share"]),
                    "impact": float(r["impact"]),
                    "points_change": _num(r["points_change"]),
                    "time_like": bool(r["time_like"]),
                    "expected_missing": float(r["expected_missing"]),
                    "actual_missing": float(r["actual_missing"]),
                    "psi_present": _num(r["psi_present"]),
                    "window_days": _num(r["window_days"]),
                    "training_full_share": _num(r["full_share"]),
                    "training_median_days": _num(r["median_days"]),
                    "psi_like_coverage": _num(r["psi_like_coverage"]),
                    "missing_like_coverage": _num(r["missing_like_coverage"]),
                }
                for r in features.to_dict("records")
            ],
        },
        "score_shift": {
            "mean_score_as_of": float(result.now.scores["score"].mean()),
            "mean_score_compare": float(result.before.scores["score"].mean()),
            "change": float(change.sum()),
            "note": "the change of the mean score since the comparison date is the sum of the "
            "features' mean point changes (base points are constant); largest first",
            "by_feature": [{"name": str(k), "points_change": float(v)} for k, v in movers.items()],
        },
        "segments": {
            "baseline": None if result.baseline is None else result.baseline.date().isoformat(),
            "note": result.segments_note,
            "method": "paired difference in differences of each segment (industry, main core) "
            "against the rest since the baseline; Welch one-sided tests, Benjamini-Hochberg "
            f"q < {SEGMENT_FDR:g} over the run; a feature moved adversely by >= "
            f"{SEGMENT_MIN_EFFECT:g} sd (large: >= {SEGMENT_LARGE_EFFECT:g} sd); moves count "
            "per measure (the windows of one measure once; in a core's segment its own features "
            f"{', '.join(sorted(MAIN_CORE_FACTS))} once); the data moved: >= "
            f"{SEGMENT_MIN_FEATURES} measures; act: the data moved and "
            f"the score's odds of default rose significantly >= {SEGMENT_MIN_ODDS:g}x (the model "
            f"carries it), or >= {SEGMENT_MIN_FEATURES} measures moved by a large effect (the "
            "model lags its data); watch: the data or the score moved",
            "segments": [
                {
                    "kind": str(r["kind"]),
                    "segment": str(r["segment"]),
                    "n": int(r["n"]),
                    "signal": str(r["signal"]),
                    "score_change": float(r["score_change"]),
                    "odds_ratio": float(r["odds_ratio"]),
                    "score_q": _num(r["score_q"]),
                    "adverse_features": int(r["adverse_features"]),
                    "large_features": int(r["large_features"]),
                    "score_moved": bool(r["score_moved"]),
                    "moved": list(r["moved"]),
                    "drivers": list(r["drivers"]),
                }
                for r in result.segments.to_dict("records")
            ],
        },
        "grade_distribution": [
            {
                "grade": str(r["grade"]),
                "count_as_of": int(r["count_as_of"]),
                "share_as_of": float(r["share_as_of"]),
                "count_compare": int(r["count_compare"]),
                "share_compare": float(r["share_compare"]),
            }
            for r in result.distribution.to_dict("records")
        ],
        "migration": {
            "from": [str(i) for i in m.index],
            "to": [str(c) for c in m.columns],
            "counts": [[int(v) for v in row] for row in m.to_numpy()],
            **migration_counts(m, result.grades),
        },
        "early_warning": {
            "pd_threshold": result.pd_threshold,
            "min_notches": result.min_notches,
            "count": len(result.warnings),
            "smes": [
                {
                    "sme_id": str(r["sme_id"]),
                    "rule": str(r["rule"]),
                    "grade_before": None if pd.isna(r["grade_before"]) else str(r["grade_before"]),
                    "grade_now": str(r["grade_now"]),
                    "notches_down": int(r["notches_down"]),
                    "pd_before": _num(r["pd_before"]),
                    "pd_now": float(r["pd_now"]),
                    "reasons": [
                        {k: (_num(v) if k in ("value", "points") else v) for k, v in reason.items()}
                        for reason in r["reasons"]
                    ],
                    "drivers": list(r.get("drivers") or []),
                }
                for r in result.warnings.to_dict("records")
            ],
        },
        "realised_by_grade": {
            "cohort": None if result.cohort is None else result.cohort.date().isoformat(),
            "note": result.realised_note,
            "grades": realised,
        },
    }
    doc["freshness"] = freshness_doc(result.freshness, result.as_of)
    doc["actions"] = actions(doc)
    return doc


def freshness_gaps(found: Freshness, as_of: pd.Timestamp) -> tuple[list[str], list[str]]:
    """What the freshness check could not check, in words: (feeds, groups). Feeds: all of them
    when no reference date has a population; else the windows skipped (`Freshness.skipped`), the
    feeds without a test of the whole population (no SME of the population expected in them at
    the as-of or the reference date) and the windows whose test of the whole population is
    ``untested``. Groups: the industries and cores with an ``untested`` test (too few SMEs), with
    their feeds. A feed that stopped there would not show, so the monitor says that no data feed
    fell silent only when the first list is empty (`actions`)."""
    if not found.references:
        return [
            "every feed: no reference date has a population (the data begin after the "
            f"comparison date and the {FRESHNESS_REFERENCES - 1} month ends before it), so no "
            f"silence at {as_of.date()} could be compared"
        ], []
    tests = found.tests
    feeds = list(found.skipped)
    for feed in FEEDS:
        windows = found.windows.get(feed.name, ())
        if not windows:
            continue  # every window skipped: said
        whole = tests[(tests["feed"] == feed.name) & (tests["kind"] == "population")]
        if whole.empty:
            feeds.append(
                f"{feed.text}: no SME of the population had one in the {FRESHNESS_LOOKBACK_DAYS} "
                f"days up to {as_of.date()} or up to the reference date, so none was expected"
            )
            continue
        small = whole[whole["signal"] == UNTESTED]
        if not small.empty:
            r = small.iloc[0]
            feeds.append(
                f"{feed.text}: the {'/'.join(str(w) for w in small['window_days'])}-day windows "
                f"({r['n_as_of']} SMEs expected in it at {as_of.date()}, {r['n_compare']} on "
                f"{r['reference']}: fewer than {FRESHNESS_MIN_SMES})"
            )
    untested = tests[(tests["signal"] == UNTESTED) & (tests["kind"] != "population")]
    groups = []
    for (kind, group), rows in untested.groupby(["kind", "group"], sort=True):
        said = ", ".join(f.text for f in FEEDS if f.name in set(rows["feed"]))
        groups.append(f"{kind} {group} ({said})")
    return feeds, groups


def freshness_doc(found: Freshness, as_of: pd.Timestamp) -> dict[str, Any]:
    """The freshness check's part of the JSON summary. ``tested`` / ``untested``: the tests
    made and those that could not be (too few SMEs); ``not_checked``: the feeds and windows not
    checked, ``untested_groups`` the groups with an untested feed (`freshness_gaps`);
    ``complete``: every feed's whole population checked in every window."""
    texts = {f.name: f for f in FEEDS}
    refs = [t.date().isoformat() for t in found.references]
    not_checked, untested_groups = freshness_gaps(found, as_of)
    signals = found.tests["signal"]
    return {
        "as_of": as_of.date().isoformat(),
        "references": refs,
        "reference_note": "the training profile records no feed freshness, so each share is "
        f"compared with the same share at the reference dates ({', '.join(refs) or 'none'}: the "
        f"comparison date and the {FRESHNESS_REFERENCES - 1} month ends before it), the one of "
        "median silent share, each among the population at its date",
        "method": "per feed, the SMEs of the population expected in it (a record in the "
        f"{FRESHNESS_LOOKBACK_DAYS} days up to the date; for a core, a record with that core) "
        f"and those with none in the last {'/'.join(map(str, FRESHNESS_WINDOWS))} days, records "
        "dated on or before the date only; one-sided Fisher exact test that the silent share "
        f"rose, Benjamini-Hochberg q < {FRESHNESS_Q:g} over all the tests, and a rise of at "
        f"least {FRESHNESS_MIN_RISE:.0%} of the group: act; a group with fewer than "
        f"{FRESHNESS_MIN_SMES} SMEs expected in the feed at either date: untested",
        "windows": list(FRESHNESS_WINDOWS),
        "feeds": [
            {
                "feed": f.name,
                "text": f.text,
                "per_core": bool(f.counterparty),
                "cadence_days": _num(found.cadence.get(f.name)),
            }
            for f in FEEDS
        ],
        "skipped": list(found.skipped),
        "act": int((signals == "act").sum()),
        "tested": int((signals != UNTESTED).sum()),
        "untested": int((signals == UNTESTED).sum()),
        "not_checked": not_checked,
        "untested_groups": untested_groups,
        "complete": not not_checked,
        "blocks_window_filling": feeds_silent(found),
        "tests": [
            {
                "feed": str(r["feed"]),
                "text": texts[str(r["feed"])].text,
                "counterparty": texts[str(r["feed"])].counterparty,
                "kind": str(r["kind"]),
                "group": str(r["group"]),
                "window_days": int(r["window_days"]),
                "n_as_of": int(r["n_as_of"]),
                "active_as_of": int(r["active_as_of"]),
                "reference": str(r["reference"]),
                "n_compare": int(r["n_compare"]),
                "active_compare": int(r["active_compare"]),
                "silent_as_of": float(r["silent_as_of"]),
                "silent_compare": float(r["silent_compare"]),
                "rise": float(r["rise"]),
                "p": _num(r["p"]),
                "q": _num(r["q"]),
                "signal": str(r["signal"]),
            }
            for r in found.tests.to_dict("records")
        ],
    }


def _feed_said(t: dict[str, Any]) -> str:
    """One freshness test in words: "invoices sold to C03: 0 of 57 SMEs with one in the last
    14 days, 52 of 55 on 2023-09-30"."""
    name = t["text"]
    if t["kind"] == "core":
        name += f" {t['counterparty']} {t['group']}"
    return (
        f"{name}: {t['active_as_of']} of {t['n_as_of']} SMEs with one in the last "
        f"{t['window_days']} days, {t['active_compare']} of {t['n_compare']} on {t['reference']}"
    )


def freshness_actions(fresh: dict[str, Any]) -> list[str]:
    """The freshness check's action lines (`actions`): one for the population, then one per
    core and per industry whose silence is its own: the population's same feed is not flagged,
    or the group's silent share rose by `FRESHNESS_MIN_RISE` more than the population's. Each
    names, per flagged feed, its test of smallest q."""
    acted = [t for t in fresh.get("tests", []) if t["signal"] == "act"]
    if not acted:
        return []
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for t in sorted(acted, key=lambda t: (t["q"], -t["rise"])):
        best.setdefault((t["kind"], t["group"], t["feed"]), t)
    whole = {feed: t for (kind, _, feed), t in best.items() if kind == "population"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (kind, group, feed), t in best.items():
        if kind != "population":
            same = whole.get(feed)
            if same is not None and t["rise"] < same["rise"] + FRESHNESS_MIN_RISE:
                continue  # the population's silence, seen in this group too
        groups.setdefault((kind, group), []).append(t)
    order = {"population": 0, "core": 1, "industry": 2}
    out: list[str] = []
    for (kind, group), found in sorted(groups.items(), key=lambda g: (order[g[0][0]], g[0][1])):
        found.sort(key=lambda t: FEED_ORDER[t["feed"]])
        stopped = all(t["active_as_of"] == 0 for t in found)
        feeds = "; ".join(_feed_said(t) for t in found)
        payments = [t for t in found if t["feed"].startswith("payments")]
        if kind == "core":
            who = f"core {group}'s feeds {'stopped' if stopped else 'fell silent'}"
        elif kind == "industry":
            who = f"the SMEs of industry {group} fell silent"
        elif stopped:
            who = "the feeds stopped for the whole population"
        else:
            who = "SMEs of the population fell silent"
        why = "a feed that stopped (or their trade stopped)"
        if payments and len(payments) == len(found) and kind == "core":
            why = (
                f"either the payments feed stopped or {group} stopped paying its suppliers "
                "(a core in distress delays its payments)"
            )
        out.append(
            f"ACT data: {who}: {feeds}. Likely {why}: check the feeds (which SMEs, since when) "
            "before reading this month's drift and scores; a silent SME's features describe the "
            "weeks before its silence."
        )
    return out


def actions(doc: dict[str, Any]) -> list[str]:
    """The summary as a short list of what to do, most urgent first (a single line saying so
    when there is nothing to act on)."""
    fresh = doc.get("freshness")
    out: list[str] = freshness_actions(fresh or {})
    unchecked = _unchecked(fresh)
    if unchecked:
        out.append(unchecked)
    psi = doc["psi"]
    counted = [f for f in psi["features"] if f["signal"] in ("act", "watch")]
    if psi["score"]["band"] != "stable":
        movers = ", ".join(
            f"{m['name']} ({m['points_change']:+.1f} pts)"
            for m in doc["score_shift"]["by_feature"][:3]
        )
        out.append(
            f"{psi['score']['band'].upper()}: the score's PSI against training is "
            f"{psi['score']['psi']:.2f}; the mean score moved {doc['score_shift']['change']:+.1f} "
            f"points since {doc['compare']}, mostly {movers}. Review whether the shift is risk "
            "(keep) or data (fix the feed)."
        )
    unknown = psi["coverage"].startswith("unknown")
    for f in counted:
        like = f.get("psi_like_coverage")
        said = "" if like is None else f", {like:.2f} on like window coverage"
        missing = f.get("missing_like_coverage")
        if missing is not None and missing > f["expected_missing"]:
            said += (
                f"; missing for {missing:.1%} of the SMEs on like coverage against "
                f"{f['expected_missing']:.1%} in training: SMEs without data in the latest "
                "weeks, a stopped feed or a collapse of their trade"
            )
        caveat = (
            " Its training window coverage is unknown (a profile stored before it was recorded): "
            "if the model trained on months just after the data began, part of this drift may "
            "be window filling; retraining records it."
            if unknown and f.get("window_days") is not None
            else ""
        )
        out.append(
            f"{f['signal'].upper()}: {f['name']} drifted (PSI {f['psi']:.2f}{said}) and carries "
            f"{f['attribution_share']:.0%} of the model's attributions; check the data feed and "
            f"whether the model still ranks well.{caveat}"
        )
    filling = [f for f in psi["features"] if f["signal"] == WINDOW_FILLING]
    if filling:
        said = "; ".join(
            f"{f['name']} PSI {f['psi']:.2f}, {f['psi_like_coverage']:.2f} on like coverage, "
            f"trained on windows {f['training_full_share']:.0%} full, median "
            f"{f['training_median_days']:.0f} days covered"
            for f in filling
        )
        out.append(
            "RETRAIN when the history covers the window: the model trained on rows whose windows "
            "were mostly partly covered by the data, and these features drifted only because "
            f"today's windows are full ({said}). Compared on like coverage they are stable; "
            "their drift is not counted, and retraining on months whose histories cover the "
            "windows removes it."
            + (
                " Read while a core's or an industry's feeds are silent (ACT data above): "
                "recheck once they deliver."
                if doc.get("freshness", {}).get("act")
                else ""
            )
        )
    segments = doc["segments"]
    for seg in segments["segments"]:
        if seg["signal"] == "stable":
            continue
        moved = (
            ", ".join(f"{m['feature']} ({m['effect']:+.1f} sd)" for m in seg["moved"])
            or "no feature beyond its threshold"
        )
        who = "industry" if seg["kind"] == "industry" else "the SMEs of core"
        todo = "Review limits and exposures in this segment."
        if seg["signal"] == "act" and not seg["score_moved"]:
            todo = (
                f"The model's odds moved only x{seg['odds_ratio']:.2f} (not a significant rise "
                f"of x{SEGMENT_MIN_ODDS:g} or more): its grades here lag what its features show. "
                "Review limits and exposures in this segment, and retrain or override its grades."
            )
        out.append(
            f"{seg['signal'].upper()}: {who} {seg['segment']} ({seg['n']} SMEs) moved against "
            f"the rest since {segments['baseline']}: odds of default x{seg['odds_ratio']:.2f}, "
            f"{seg['adverse_features']} measure(s) riskier ({seg['large_features']} by a large "
            f"effect), most {moved}. {todo}"
        )
    failed = [g for g in doc["realised_by_grade"]["grades"] if not g["jeffreys_pass"]]
    for g in failed:
        out.append(
            f"ACT: grade {g['grade']} under-predicts: {g['defaults']} defaults in {g['n']} "
            f"({g['observed_rate']:.2%}) against a mean PD of {g['mean_pd']:.2%} (Jeffreys "
            f"p = {g['jeffreys_p_value']:.3f}); recalibrate or review the grade."
        )
    ew = doc["early_warning"]
    if ew["count"]:
        out.append(
            f"WORKOUT: {ew['count']} early warning(s) (down {ew['min_notches']}+ grades or PD "
            f"crossed {ew['pd_threshold']:.0%}); review them with the workout team."
        )
    if not out or all(a.startswith(("WORKOUT", "RETRAIN", UNCHECKED)) for a in out):
        out.insert(
            0,
            f"Nothing to act on in the model: the score is {psi['score']['band']} (PSI "
            f"{psi['score']['psi']:.2f}), no counted feature drifted, no industry or core's "
            "SMEs moved against the rest, no grade failed its Jeffreys test" + _silence_said(fresh),
        )
    return out


UNCHECKED = "UNCHECKED data"
"""The action line of what the freshness check could not test (`freshness_gaps`)."""


def _unchecked(fresh: dict[str, Any] | None) -> str:
    """The action line of the feeds and windows the freshness check could not test (empty when
    it tested them all)."""
    if fresh is None or fresh.get("complete", True):
        return ""
    return (
        f"{UNCHECKED}: the freshness check could not test {'; '.join(fresh['not_checked'])}. "
        "A feed that stopped there would not show: check these feeds' latest records before "
        "reading this month's drift and scores."
    )


def _silence_said(fresh: dict[str, Any] | None) -> str:
    """The end of the nothing-to-act-on line: that no data feed fell silent only when every
    feed was tested; the groups too small to test named."""
    if fresh is None:
        return "."
    groups = fresh.get("untested_groups") or []
    small = f" (too few SMEs to test the feeds of {'; '.join(groups)})" if groups else ""
    if not fresh.get("complete", False):
        return (
            f"; the data feeds it tested did not fall silent{small}, but not every feed could "
            f"be tested ({UNCHECKED})."
        )
    return f", no data feed fell silent{small}."


def metrics_of(doc: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a summary, as MLflow metrics."""
    feats = doc["psi"]["features"]
    return {
        "psi_score": float(doc["psi"]["score"]["psi"]),
        "psi_feature_max": max((float(f["psi"]) for f in feats), default=0.0),
        "features_watch": float(doc["psi"]["band_counts"]["watch"]),
        "features_act": float(doc["psi"]["band_counts"]["act"]),
        "features_window_filling": float(doc["psi"]["band_counts"].get(WINDOW_FILLING, 0)),
        "population": float(doc["population"]["as_of"]),
        "mean_pd": float(doc["mean_pd"]["as_of"]),
        "early_warnings": float(doc["early_warning"]["count"]),
        "freshness_act": float(doc.get("freshness", {}).get("act", 0)),
        **{
            f"segments_{signal}": float(
                sum(g["signal"] == signal for g in doc["segments"]["segments"])
            )
            for signal in ("act", "watch")
        },
        "upgraded": float(doc["migration"]["upgraded"]),
        "downgraded": float(doc["migration"]["downgraded"]),
    }


def log_to_mlflow(
    doc: dict[str, Any],
    files: Sequence[Path],
    *,
    tracking_uri: str,
    experiment: str = MONITORING_EXPERIMENT,
    client: Any = None,
) -> str:
    """Record a monitoring run (params, metrics, the report files) in `experiment`; its id.
    The run is marked FAILED if a step fails."""
    from mlflow.entities import Metric, Param, RunTag

    from training.registry import check_tracking, recorded_run

    client = client or check_tracking(tracking_uri)
    name = f"{doc['kind']}-{doc.get('as_of', 'all')}"
    with recorded_run(client, experiment, tracking_uri, name=name, kind=str(doc["kind"])) as run:
        run_id = str(run.info.run_id)
        model = doc.get("model", {})
        params = {
            "as_of": doc.get("as_of"),
            "compare": doc.get("compare"),
            "pd_threshold": doc.get("early_warning", {}).get("pd_threshold"),
            "model_uri": model.get("uri"),
            "model_name": model.get("name"),
            "model_version": model.get("version"),
            "model_run_id": model.get("run_id"),
        }
        now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics_of(doc).items())],
            params=[Param(k, str(v)) for k, v in sorted(params.items()) if v is not None],
            tags=[RunTag("scf_risk.summary", json.dumps(metrics_of(doc))[:5000])],
        )
        for path in files:
            client.log_artifact(run_id, str(path))
    return run_id
