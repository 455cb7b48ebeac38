"""The case for dynamic assessment: how early each defaulter was flagged, dynamic versus static.

Every SME in the population at every month end of the period is scored by the model (its PD at
that date, from point-in-time features). Two alert rules flag SME-months:

- **static**: the SME's static rating (``external_rating`` of the enterprises table: the rating
  the bank assigned at onboarding) is at or below a cutoff (default ``B+``, i.e. single-B or
  worse). It never changes. Unrated SMEs are not flagged.
- **dynamic**: the model's PD at that month end is at or above a threshold chosen so that the
  dynamic rule flags the same share of SME-months as the static rule: with ``N`` SME-months and
  static alert rate ``r``, the threshold is the ``k``-th highest PD, ``k = round(r·N)`` (ties at
  the threshold may flag a few more; both realised rates are reported).

**Lead time** of a defaulter (an SME whose first loan default date ``D`` falls after the first
month end and at most one month end after the last):
among its scored month ends in the ``lookback`` months before ``D`` (default 12, the model's
horizon) take the last one; if the rule does not flag it there, the lead time is 0 (not flagged);
otherwise go back over the uninterrupted run of flagged month ends and take its first one ``t``:
the lead time is the number of whole calendar months from ``t`` to ``D`` (the largest ``k`` with
``t + k months ≤ D``). A defaulter with no scored month end in the lookback is not counted. The
headline is the share of defaulters flagged at least 3 months ahead, per rule, at the same alert
rate.

**Censoring by the window.** A defaulter can show ``L`` months of warning only if the window
holds a scored month end at least ``L`` whole months before its default: one defaulting in the
window's second month can show at most one. `observable` counts, per lead time, the defaulters
that could show it; the counts by lead time are read against it.

**In-sample months.** The bundle records the as-of months it was trained on
(``ScoringModel.train_months``); where the window's month ends fall in them, the dynamic side is
in-sample and the summary names those months (`in_sample`). Run the backtest on data the model has
not seen (e.g. a simulation with another seed) or on its out-of-time months (``--from``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.contract import RATING_SCALE
from features.exceptions import FeatureError
from features.own import rating_ordinal
from serving.portfolio.batch import Progress, model_info, score_population
from serving.portfolio.monitor import to_date

if TYPE_CHECKING:
    from features.contract import Tables
    from training.bundle import LoadedModel

DEFAULT_STATIC_CUTOFF = "B+"
LOOKBACK_MONTHS = 12
AHEAD_MONTHS = 3


def static_flags(sme_ids: pd.Series, enterprises: pd.DataFrame, cutoff: str) -> np.ndarray:
    """Whether each SME's static rating is `cutoff` or worse (unrated: False)."""
    if cutoff not in RATING_SCALE:
        raise FeatureError(
            f"static rating cutoff {cutoff!r} is not on the rating scale {', '.join(RATING_SCALE)}"
        )
    ent = enterprises.drop_duplicates("enterprise_id", keep="last")
    if "external_rating" in ent.columns:
        notch = pd.Series(rating_ordinal(ent["external_rating"]), index=ent["enterprise_id"])
    else:
        notch = pd.Series(dtype=float)
    ordinal = notch.reindex(sme_ids.astype(str).to_numpy()).to_numpy(dtype=np.float64)
    return np.nan_to_num(ordinal, nan=-1.0) >= RATING_SCALE.index(cutoff)


def matched_threshold(pd_: np.ndarray, rate: float) -> float:
    """The PD threshold flagging the share `rate` of the rows: the k-th highest PD with
    k = round(rate·n); +inf when k = 0 (nothing flagged)."""
    p = np.asarray(pd_, dtype=np.float64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"alert rate must lie in [0, 1], got {rate}")
    k = round(rate * len(p))
    if k == 0:
        return math.inf
    return float(np.sort(p)[::-1][k - 1])


def whole_months(start: pd.Timestamp, end: pd.Timestamp) -> int:
    """The largest k >= 0 with ``start + k calendar months <= end`` (0 when end < start)."""
    if end < start:
        return 0
    k = (end.year - start.year) * 12 + (end.month - start.month)
    while k > 0 and start + pd.DateOffset(months=k) > end:
        k -= 1
    return k


def first_defaults(tables: Tables) -> pd.Series:
    """Each defaulting SME's first loan default date (index sme_id)."""
    loans = tables.loans
    if loans.empty:
        return pd.Series(dtype="datetime64[ns]")
    d = loans.dropna(subset=["default_date"])
    return d.groupby(d["sme_id"].astype(str))["default_date"].min().sort_index()


def lead_times(
    rows: pd.DataFrame, defaults: pd.Series, *, lookback_months: int = LOOKBACK_MONTHS
) -> pd.DataFrame:
    """Lead time of each defaulter (module docstring).

    `rows`: ``sme_id``, ``as_of``, ``flagged`` (bool), one row per scored SME-month; `defaults`:
    first default date per SME (index sme_id). Columns: sme_id, default_date, last_scored,
    first_alert (NaT when not flagged), lead_months; only defaulters with a scored month end in
    the lookback."""
    out: list[dict[str, Any]] = []
    by_sme = {str(k): g for k, g in rows.groupby(rows["sme_id"].astype(str), sort=True)}
    for sme, when in defaults.items():
        d = to_date(when)
        group = by_sme.get(str(sme))
        if group is None:
            continue
        start = d - pd.DateOffset(months=lookback_months)
        window = group[(group["as_of"] >= start) & (group["as_of"] < d)].sort_values("as_of")
        if window.empty:
            continue
        flags = window["flagged"].to_numpy(dtype=bool)
        dates = list(window["as_of"])
        first: pd.Timestamp | None = None
        if flags[-1]:
            i = len(flags) - 1
            while i > 0 and flags[i - 1]:
                i -= 1
            first = to_date(dates[i])
        out.append(
            {
                "sme_id": str(sme),
                "default_date": d,
                "last_scored": to_date(dates[-1]),
                "first_alert": first if first is not None else pd.NaT,
                "lead_months": whole_months(first, d) if first is not None else 0,
                "max_lead": whole_months(to_date(dates[0]), d),
            }
        )
    frame = pd.DataFrame(
        out,
        columns=["sme_id", "default_date", "last_scored", "first_alert", "lead_months", "max_lead"],
    )
    return frame.astype({"lead_months": np.int64, "max_lead": np.int64})


def observable(leads: pd.DataFrame, *, lookback_months: int = LOOKBACK_MONTHS) -> list[int]:
    """Per lead time 0 .. lookback, how many defaulters of `leads` could show it (``max_lead``
    at least that): the ceiling of the counts by lead time that the window imposes."""
    most = np.minimum(leads["max_lead"].to_numpy(dtype=np.int64), lookback_months)
    return [int((most >= k).sum()) for k in range(lookback_months + 1)]


def in_sample(dates: Sequence[pd.Timestamp], train_months: Sequence[str]) -> list[str]:
    """The months (YYYY-MM) of month ends `dates` that the model was trained on."""
    trained = set(train_months)
    return sorted({f"{d:%Y-%m}" for d in dates} & trained)


def in_sample_note(overlap: Sequence[str], recorded: bool) -> str | None:
    """The warning of a backtest whose window overlaps the training months (None without
    overlap); when the bundle does not record its months, a warning saying it cannot tell."""
    if not recorded:
        return (
            "The model's bundle does not record its training months: if it was trained on these "
            "months, the dynamic side is in-sample; prefer data the model has not seen."
        )
    if not overlap:
        return None
    return (
        f"The model was trained on {len(overlap)} of these months ({', '.join(overlap)}): there "
        "the dynamic side is in-sample. Prefer data the model has not seen, or --from after "
        "its training months."
    )


def lead_summary(
    leads: pd.DataFrame,
    *,
    alert_rate: float,
    lookback_months: int = LOOKBACK_MONTHS,
    ahead_months: int = AHEAD_MONTHS,
) -> dict[str, Any]:
    """Counts by months of warning (0 .. lookback), shares flagged at all and at least
    `ahead_months` ahead, median lead time."""
    lead = leads["lead_months"].to_numpy(dtype=np.int64)
    n = len(lead)
    counts = np.bincount(np.minimum(lead, lookback_months), minlength=lookback_months + 1)
    return {
        "alert_rate": float(alert_rate),
        "defaulters": n,
        "lead_counts": [int(c) for c in counts],
        "share_flagged": float((lead > 0).mean()) if n else None,
        "share_ahead": float((lead >= ahead_months).mean()) if n else None,
        "median_lead_months": float(np.median(lead)) if n else None,
    }


@dataclass(frozen=True)
class BacktestResult:
    """The scored SME-months with both rules' flags, the lead times, the summary numbers."""

    rows: pd.DataFrame  # sme_id, as_of, pd, grade, static_rating, static, dynamic
    leads: pd.DataFrame  # sme_id, default_date, static_rating, lead_dynamic, max_lead,
    # lead_static (by default date)
    threshold: float
    threshold_grade: str | None
    doc: dict[str, Any]


def backtest(
    tables: Tables,
    loaded: LoadedModel,
    as_of_dates: Iterable[object],
    *,
    static_cutoff: str = DEFAULT_STATIC_CUTOFF,
    lookback_months: int = LOOKBACK_MONTHS,
    ahead_months: int = AHEAD_MONTHS,
    progress: Progress | None = None,
) -> BacktestResult:
    """Score every SME-month at `as_of_dates` and compare the two rules (module docstring)."""
    dates = sorted({to_date(d) for d in as_of_dates})
    if len(dates) < 2:
        raise FeatureError("the backtest needs at least two month ends")
    if lookback_months < 1 or not 0 < ahead_months <= lookback_months:
        raise FeatureError(
            f"need lookback >= 1 and 0 < ahead <= lookback months, got {lookback_months}, "
            f"{ahead_months}"
        )
    scored = score_population(tables, dates, loaded, explain=False, progress=progress)
    rows = scored.scores[["sme_id", "as_of", "pd", "grade"]].copy()
    ent = tables.enterprises.drop_duplicates("enterprise_id", keep="last")
    rating = (
        ent.set_index(ent["enterprise_id"].astype(str))["external_rating"]
        if "external_rating" in ent.columns
        else pd.Series(dtype="str")
    )
    rows["static_rating"] = rows["sme_id"].map(rating).astype("str")
    rows["static"] = static_flags(rows["sme_id"], tables.enterprises, static_cutoff)
    rate = float(rows["static"].mean())
    if rate == 0.0:
        raise FeatureError(
            f"no SME-month is flagged by the static rule (rating {static_cutoff} or worse): "
            "choose another cutoff"
        )
    threshold = matched_threshold(rows["pd"].to_numpy(), rate)
    rows["dynamic"] = rows["pd"].to_numpy() >= threshold
    model = loaded.model
    threshold_grade = (
        str(model.master_scale.grade(np.array([threshold]))[0])
        if math.isfinite(threshold)
        else None
    )

    defaults = first_defaults(tables)
    defaults = defaults[(defaults > dates[0]) & (defaults <= dates[-1] + pd.offsets.MonthEnd(1))]
    per_rule = {}
    for rule in ("static", "dynamic"):
        per_rule[rule] = lead_times(
            rows.rename(columns={rule: "flagged"})[["sme_id", "as_of", "flagged"]],
            defaults,
            lookback_months=lookback_months,
        )
    leads = (
        per_rule["dynamic"][["sme_id", "default_date", "lead_months", "max_lead"]]
        .rename(columns={"lead_months": "lead_dynamic"})
        .merge(
            per_rule["static"][["sme_id", "lead_months"]].rename(
                columns={"lead_months": "lead_static"}
            ),
            on="sme_id",
            validate="one_to_one",
        )
    )
    leads.insert(2, "static_rating", leads["sme_id"].map(rating).astype("str"))
    leads = leads.sort_values(["default_date", "sme_id"], ignore_index=True)

    dyn_rate = float(rows["dynamic"].mean())
    overlap = in_sample(dates, model.train_months)
    doc: dict[str, Any] = {
        "kind": "backtest",
        "from": dates[0].date().isoformat(),
        "to": dates[-1].date().isoformat(),
        "model": {**model_info(loaded), "uri": loaded.uri},
        "sme_months": len(rows),
        "smes": int(rows["sme_id"].nunique()),
        "defaulters": len(leads),
        "lookback_months": lookback_months,
        "ahead_months": ahead_months,
        "lead_months": list(range(lookback_months + 1)),
        "observable": observable(leads, lookback_months=lookback_months),
        "censoring": "a defaulter can show L months of warning only if the window holds a scored "
        "month end L months before its default; 'observable' counts, per L, the defaulters that "
        "could show it",
        "rules": {
            "static": f"static rating {static_cutoff} or worse (unrated SMEs not flagged)",
            "dynamic": f"PD at the month end >= {threshold:.4%} (grade {threshold_grade}), the "
            "threshold that flags the static rule's share of SME-months",
            "lead_time": f"whole months from the first month end of the uninterrupted run of "
            f"alerts up to the last scored month end before default, within the "
            f"{lookback_months} months before default; 0 = not flagged at the last scored month "
            "end",
        },
        "static_cutoff": static_cutoff,
        "pd_threshold": threshold if math.isfinite(threshold) else None,
        "threshold_grade": threshold_grade,
        "static": lead_summary(
            per_rule["static"],
            alert_rate=rate,
            lookback_months=lookback_months,
            ahead_months=ahead_months,
        ),
        "dynamic": lead_summary(
            per_rule["dynamic"],
            alert_rate=dyn_rate,
            lookback_months=lookback_months,
            ahead_months=ahead_months,
        ),
        "defaulter_rows": [
            {
                "sme_id": str(r["sme_id"]),
                "default_date": to_date(r["default_date"]).date().isoformat(),
                "static_rating": None if pd.isna(r["static_rating"]) else str(r["static_rating"]),
                "lead_static": int(r["lead_static"]),
                "lead_dynamic": int(r["lead_dynamic"]),
                "max_lead": int(r["max_lead"]),
            }
            for r in leads.to_dict("records")
        ],
        "in_sample": {
            "train_months": list(model.train_months),
            "oot_months": list(model.oot_months),
            "overlap": overlap,
        },
        "note": in_sample_note(overlap, bool(model.train_months)),
    }
    return BacktestResult(rows, leads, threshold, threshold_grade, doc)


def defaulters_csv(doc: dict[str, Any]) -> str:
    """Every defaulter of a backtest summary as CSV (the report shows the first rows only)."""
    return pd.DataFrame(doc["defaulter_rows"]).to_csv(index=False)
