"""Segment drift: did one industry, or the suppliers and dealers of one core enterprise, move
against the rest of the portfolio?

Whole-portfolio PSI dilutes a shock to one segment: an industry of 15 % of the SMEs whose risk
doubles moves the portfolio's score distribution by a PSI of a few hundredths. A monitor that
finds it has to compare the segment with the rest. `segment_drift` does so on the SMEs scored at
both a baseline date (default `LOOKBACK_MONTHS` before the as-of date, so a shock that began
between the baseline and the 3-month comparison date is not already in the reference) and the
as-of date, per SME (paired: each SME is its own control, so firm habits cancel out), as a
difference in differences:

- **features**: for every feature with a risk direction (catalog `direction` != 0, not
  time-like), ``effect = (mean change in the segment - mean change in the rest) / sd of the
  change over all paired SMEs``, signed so that a positive effect is *riskier*; Welch's one-sided
  t-test of the two mean changes. A feature has moved adversely in a segment when its effect is at
  least `MIN_EFFECT` and its Benjamini-Hochberg q-value, over every (segment, feature) test of the
  run, is below `FDR`;
- **score**: the same one-sided test of the score's change (a fall is riskier), its BH q over
  the run's segments, and the change written as the segment's odds of default relative to the
  rest (``exp(-Δpoints / factor)``); the relative change of the score decomposes exactly into the
  features' relative point changes, which name what drove it.

A segment's data moved when at least `MIN_FEATURES` distinct measures moved adversely. Moves
that are one fact seen several times count once: the windows of one measure (``dio_90d`` and
``dio_180d``: the longer window contains the shorter; `features.catalog.stem`), and, in a core's
segment, the features that describe the core itself (`features.catalog.MAIN_CORE_FACTS`: its
rating, its payment stress, its other SMEs' defaults), which take one value repeated for every
SME of the core: a single observation of the core, not `n` independent ones. The data moved
*strongly* when, counted the same way, at least `MIN_FEATURES` of those moves are large (at least
`LARGE_EFFECT` sd; `MIN_EFFECT` and `LARGE_EFFECT` are Cohen's medium and large).

A segment's signal:

- ``act`` when its data moved and its score fell significantly by at least `MIN_ODDS_RATIO`
  (the model carries the move: review the segment's limits), or when its data moved strongly
  whatever the score did (the model lags what its own features show: its grades there are too
  good; review the limits, and retrain or override);
- ``watch`` when only one of "data moved" and "score moved" holds;
- ``stable`` otherwise. Segments with fewer than `MIN_SMES` paired SMEs are not tested.

Measured on the 800-SME twins of `tests/serving/test_segments.py`, 6 months after the shock
(paired difference in differences against the rest, as above): the industry downturn raised its
SMEs' true odds of default (the simulator's `pd_true`) x2.1 and the model's odds x1.44; the core
held in stress raised them x1.75 and the model's x1.03, while 5 of its SMEs' measures moved, 4 by
a large effect. The model carries a segment's deterioration only in part, and sometimes not at
all: strong data alone is enough to act. Not every shock is found six months on: with seed 11 the
same downturn (true x2.06) moved its SMEs' features by at most 0.43 sd and the model's odds
x1.16, so neither test flags it, while the core held in stress (true x1.92) is at act.

Plain functions over frames; nothing here scores or reads files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind

from features.catalog import Feature, stem

LOOKBACK_MONTHS = 6
"""Baseline of segment drift: this many months before the as-of date."""
MIN_SMES = 20
"""Segments with fewer SMEs scored at both dates are not tested."""
FDR = 0.01
"""Benjamini-Hochberg false discovery rate of the run's tests."""
MIN_EFFECT = 0.5
"""A feature moved adversely in a segment by at least this many standard deviations."""
LARGE_EFFECT = 0.8
"""A feature moved adversely by a large effect: at least this many standard deviations."""
MIN_FEATURES = 3
"""A segment's data moved when at least this many distinct measures moved adversely (strongly:
by a large effect); the windows of one measure, and a core's own features in its segment, count
once."""
MIN_ODDS_RATIO = 1.25
"""A segment's score moved when its odds of default rose at least this much against the rest."""
DRIVERS = 4
"""Features listed per segment (adverse moves; largest point falls)."""

SEGMENT_COLUMNS = [
    "kind", "segment", "n", "score_change", "odds_ratio", "score_q",
    "adverse_features", "large_features", "score_moved", "signal", "moved", "drivers",
]  # fmt: skip


@dataclass(frozen=True)
class Paired:
    """One population at two dates, per SME (same index, sme_id): feature values and score
    points (one column per feature) at the baseline and at the as-of date."""

    before: pd.DataFrame
    now: pd.DataFrame
    points_before: pd.DataFrame
    points_now: pd.DataFrame


def pair(
    now: pd.DataFrame,
    before: pd.DataFrame,
    points_now: pd.DataFrame,
    points_before: pd.DataFrame,
) -> Paired:
    """The SMEs present at both dates. `now` / `before`: feature rows with ``sme_id``;
    `points_*`: score points indexed by sme_id."""
    a = now.set_index(now["sme_id"].astype(str))
    b = before.set_index(before["sme_id"].astype(str))
    common = (
        a.index.intersection(b.index)
        .intersection(points_now.index)
        .intersection(points_before.index)
    )
    common = common.sort_values()
    return Paired(
        before=b.loc[common],
        now=a.loc[common],
        points_before=points_before.loc[common],
        points_now=points_now.loc[common],
    )


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok) == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(ok)
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q


def _one_sided(x: np.ndarray, y: np.ndarray, greater: bool) -> float:
    """Welch's one-sided p-value that mean(x) > mean(y) (or <); NaN when untestable."""
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if len(x) < 2 or len(y) < 2 or (np.var(x) == 0 and np.var(y) == 0):
        return math.nan
    return float(
        ttest_ind(x, y, equal_var=False, alternative="greater" if greater else "less").pvalue
    )


def _count(features: pd.Series, once: frozenset[str]) -> int:
    """How many distinct measures moved: the windows of one stem count once, and so do all the
    features in `once` together."""
    names = {str(f) for f in features}
    return len({stem(n) for n in names - once}) + int(bool(names & once))


def segment_drift(
    paired: Paired,
    labels: Mapping[str, pd.Series],
    catalog: Sequence[Feature],
    *,
    factor: float,
    time_like: frozenset[str] = frozenset(),
    core_facts: frozenset[str] = frozenset(),
    min_smes: int = MIN_SMES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment drift (module docstring).

    `labels`: per kind of segment (``industry``, ``core``), each paired SME's segment (a Series
    indexed by sme_id; missing = in no segment of that kind). `factor`: the score scale's points
    per unit of log-odds. `core_facts`: features describing the main core itself, counted as one
    in a ``core`` segment (``adverse_features`` and ``large_features`` count distinct measures,
    module docstring). Returns (segments, moves): one row per tested segment
    (`SEGMENT_COLUMNS`; ordered act, watch, stable, then by odds ratio) and one row per (segment,
    feature) test (kind, segment, feature, effect, p, q, adverse)."""
    directions = {
        f.name: f.direction
        for f in catalog
        if f.kind == "numeric" and f.direction != 0 and f.name not in time_like
    }
    names = [n for n in directions if n in paired.now.columns and n in paired.before.columns]
    change = (
        paired.now[names].astype("float64") - paired.before[names].astype("float64")
    ).to_numpy()
    sd = np.nanstd(change, axis=0, ddof=1) if len(change) > 1 else np.full(len(names), np.nan)
    sign = np.array([directions[n] for n in names], dtype=np.float64)
    points = paired.points_now.to_numpy() - paired.points_before.to_numpy()
    score = points.sum(axis=1)
    point_names = [str(c) for c in paired.points_now.columns]

    tests: list[dict[str, object]] = []
    rows: list[dict[str, object]] = []
    for kind, series in labels.items():
        segment_of = series.reindex(paired.now.index).astype("object")
        for seg in sorted({str(s) for s in segment_of.dropna()}):
            inside = (segment_of == seg).to_numpy()
            n = int(inside.sum())
            if n < min_smes or n == len(inside):
                continue
            for j, name in enumerate(names):
                x, y = change[inside, j], change[~inside, j]
                diff = np.nanmean(x) - np.nanmean(y) if len(x) and len(y) else math.nan
                effect = sign[j] * diff / sd[j] if sd[j] > 0 else math.nan
                tests.append(
                    {
                        "kind": kind,
                        "segment": seg,
                        "feature": name,
                        "effect": effect,
                        "p": _one_sided(x, y, greater=sign[j] > 0),
                    }
                )
            relative = points[inside].mean(axis=0) - points[~inside].mean(axis=0)
            fall = np.argsort(relative, kind="stable")[:DRIVERS]
            delta = float(score[inside].mean() - score[~inside].mean())
            rows.append(
                {
                    "kind": kind,
                    "segment": seg,
                    "n": n,
                    "score_change": delta,
                    "odds_ratio": math.exp(-delta / factor),
                    "score_p": _one_sided(score[inside], score[~inside], greater=False),
                    "drivers": [
                        {"feature": point_names[k], "points_change": float(relative[k])}
                        for k in fall
                        if relative[k] < 0
                    ],
                }
            )
    moves = pd.DataFrame(tests, columns=["kind", "segment", "feature", "effect", "p"])
    moves["q"] = bh(moves["p"].to_numpy(dtype=np.float64))
    moves["adverse"] = (moves["q"] < FDR) & (moves["effect"] >= MIN_EFFECT)
    segments = pd.DataFrame(rows, columns=[*SEGMENT_COLUMNS[:5], "score_p", "drivers"])
    segments["score_q"] = bh(segments["score_p"].to_numpy(dtype=np.float64))
    moved: list[list[dict[str, float | str]]] = []
    counts: list[int] = []
    large: list[int] = []
    for r in segments.itertuples(index=False):
        mine = moves[(moves["kind"] == r.kind) & (moves["segment"] == r.segment) & moves["adverse"]]
        mine = mine.sort_values(["effect", "feature"], ascending=[False, True])
        once = core_facts if r.kind == "core" else frozenset()
        counts.append(_count(mine["feature"], once))
        large.append(_count(mine.loc[mine["effect"] >= LARGE_EFFECT, "feature"], once))
        moved.append(
            [
                {"feature": str(f), "effect": float(e), "q": float(q)}
                for f, e, q in mine[["feature", "effect", "q"]].head(DRIVERS).to_numpy()
            ]
        )
    segments["adverse_features"] = pd.Series(counts, dtype="int64")
    segments["large_features"] = pd.Series(large, dtype="int64")
    segments["moved"] = pd.Series(moved, dtype=object)
    data_moved = segments["adverse_features"] >= MIN_FEATURES
    data_strong = segments["large_features"] >= MIN_FEATURES
    score_moved = (segments["score_q"] < FDR) & (segments["odds_ratio"] >= MIN_ODDS_RATIO)
    segments["score_moved"] = score_moved.astype(bool)
    act = data_moved & (score_moved | data_strong)
    segments["signal"] = np.where(act, "act", np.where(data_moved | score_moved, "watch", "stable"))
    rank = segments["signal"].map({"act": 0, "watch": 1, "stable": 2})
    segments = segments.assign(_rank=rank).sort_values(
        ["_rank", "odds_ratio", "kind", "segment"], ascending=[True, False, True, True]
    )
    return segments[SEGMENT_COLUMNS].reset_index(drop=True), moves
