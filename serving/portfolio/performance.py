"""Performance before labels mature: confidence-based performance estimation (CBPE), on PDs
recalibrated out of time.

A cohort's 12-month default labels are known a year after its date, yet the risk team wants to
know every month what the default rate, AUC and calibration of the cohort scored today will be.

**The sampling estimate (CBPE).** If the calibrated PDs are right, each SME's label is a
Bernoulli(pd) draw, so the metrics the labels will show have a distribution that the PDs alone
determine (NannyML's CBPE rests on the same assumption). `estimate` samples `draws` label
vectors Y ~ Bernoulli(pd) (seeded) and reports, per metric, the mean over draws and the
equal-tailed `level` interval of the sampling distribution:

- ``default_rate``: the share of defaults;
- ``auc``: ROC AUC of the model's PDs against the sampled labels (rank formula, ties averaged);
- ``ece``: `training.metrics.ece` of the model's PDs against the sampled labels.

**Why that band alone fails.** It holds only the Bernoulli noise of a model whose PDs are right
SME by SME. A model's PDs are calibrated on average, not conditionally: on the 2,000-SME demo
(README) the model's log-odds are too compressed (sd 1.0 against the simulator's true 1.8; a
logistic refit of the labels on them has slope 1.2 out of time, 1.5-1.8 in its training months),
so the realised AUC lies *above* the CBPE estimate (by 0.04-0.06 out of time, 0.10 in sample)
and the realised ECE above CBPE's noise floor; and the defaults of one month may share shocks (a
core in stress, an industry downturn) that independent draws do not. Measured there: the realised
value fell inside the sampling band in 45/46 matured months for the default rate, 9/46 for AUC
and 23/46 for ECE.

**The fix: recalibrate on months the model never trained on, then sample.** The *reference
months* are the matured months after the model's training window (as-of month after its last
training month; the bundle records them): the OOT months and the embargo months before them,
and every later month once its labels mature. On their rows a logistic recalibration
``logit PD' = a + b logit PD`` is fitted (`Recalibration`), with the covariance of (a, b)
clustered by SME (an SME's rows in several months are not independent), and how the
recalibration moves from month to month: each month's own fit (a_m, b_m), centred at the
reference rows' mean log-odds, and their between-month covariance beyond sampling noise
(`month_variation`: intercept *and* slope, method of moments). The sampling noise subtracted
there is estimated with the months' shared noise counted once: adjacent months hold the same
SMEs and, their 12-month label windows overlapping, largely the same default events, so their
fits move together; subtracting each month's own sampling variance as if independent read the
demo's real month-to-month variation as none (a fitted shock sd of 0.00) and the ECE interval
was too narrow. `estimate` then draws, per label draw, (a, b) from their estimated distribution
and a month effect (intercept and slope) from N(0, between + between / M), labels Y ~
Bernoulli(PD') and scores the *model's* PDs against them: the expected AUC and ECE of the model
as it is (its ranking and its miscalibration), with intervals that carry the sampling noise, the
recalibration's own uncertainty and the month-to-month variation of the miscalibration. ECE is
computed for every draw (`sampled_ece`, the bins depend on the PDs alone), so the interval's
ends are quantiles of all the draws. This is CBPE with the calibration assumption replaced by
one learned out of time, not a new estimator; the plain CBPE estimate and band stay in the table
(``<metric>_cbpe``, ``_cbpe_low``, ``_cbpe_high``).

**A trend over time.** A portfolio ages, and the model's miscalibration moves with it: on the
bench's simulations the spread of the true log-odds grows from about 1.8 to 2.6 over seven years
while the model's stays near 1, so the slope b drifts upward and a recalibration averaged over
the reference months understates the AUC and ECE of the later months. When the (unseen) reference
months span at least `TREND_MIN_SPAN` months, the recalibration carries a linear time trend
(`TrendRecalibration`): ``logit PD' = a + b x + c tau + d tau x``, x = logit PD, tau = months
from the reference rows' mean date, fitted the same way (Newton, the covariance of (a, b, c, d)
clustered by SME); the month effects are the months' own fits' variation *around* the trend
(their residuals on [1, tau_m], less their shared sampling noise through the hat matrix H:
``sum_mn (I - H)_mn C_mn / (M - 2)``, which is the formula above when H averages), and the
months' share of the trend's uncertainty at tau is ``between [1, tau] (T'T)^-1 [1, tau]'`` (T:
the months' [1, tau_m]; between / M at their mean). A month is estimated with the trend read at
its own tau, but at most `TREND_AHEAD` months past the newest reference month: per label draw
(a + c tau, b + d tau) from their covariance, which grows with the distance by itself, and a
month effect. Carried the full year that separates a judged month from its newest matured
reference month, a trend fitted on one or two years overshoots where the drift is not linear
(`python -m bench cbpe`, forward in time, pooled over four simulations: default rate, AUC and
ECE inside 110, 114 and 103 of 128 months, against 112, 115 and 109 without a trend; seed 21's
concept drift throws it furthest); read at most 3 months ahead, the recalibration follows the
newest matured months rather than their average: 120, 115 and 118 of 128, at median widths 14,
20 and 5 % wider (README). Read at the newest month itself (0 ahead) gives 119, 115 and 115; 6
ahead less than 3 (at 300 draws 117, 114, 116 against 119, 118, 117); a span of 8 to 24 months
before the trend is fitted moves the counts by a month or two, and 12 (a year: a trend is not
read off a season) is kept.

The trend rests on the *unseen* reference months only (`TREND_UNSEEN_ONLY`: on or after the
first date no training label overlaps), never on the embargo months before them, and is fitted
once those span `TREND_MIN_SPAN` months; until then the plain fit on every reference month is
kept. In the embargo months a model still remembers the training labels whose windows overlap
theirs, less each month, so its ranking there falls towards its out-of-time level whatever the
portfolio does: a trend fitted across them reads that fall as a drift and carries it on. A model
that saw more of its SMEs' outcomes remembers more: on the acceptance test's simulation (600
SMEs, data seed 5) the model regrown on every training SME (`TrainConfig.regrow`) ranked above
the simulator's own PDs in the first embargo months (AUC 0.876 and 0.882 against their 0.845 and
0.856; not regrown 0.837 and 0.843), and the months' recalibration slope fell from 1.41 to 0.67
(1.33 to 0.76 not regrown); the trend fitted across them said 0.38-0.45 for 2022-02 to 2022-10,
where the months' own fits gave 1.00-1.33, and the AUC intervals lay below the realised AUC in 7
of 32 months. Over training seeds 0-4 that test's AUC coverage was 31, 27, 26, 32 and 25 of 32
months not regrown and 25, 29, 29, 26 and 24 regrown (failing with either model); with the trend
on the unseen months only 32 of 32 for all ten models (default rate and ECE too). `python -m bench
cbpe` (four simulations, 1,000 draws, pooled default rate / AUC / ECE of 128): 119/120/115
against 120/115/118 with the trend across the embargo months (seed 5's AUC 24 -> 27, seed 1's
28 -> 30; seed 21, concept drift, which gains from an early trend, 25/32/26 -> 23/32/23). Only
waiting until the unseen months span a year, the trend still fitted across the embargo months,
gave 118/115/114: leaving the embargo months out is what gains the AUC. On the three seeds the
trend's settings were not chosen on (2, 8, 17) it loses: 89/94/89 of 96 against 96/94/94 (seed
17, a drift of the level, 27/32/26 against 32/32/32), so over all seven seeds the default rate
and ECE lose 8 months each of 224 and AUC gains 5 (README).

The recalibration is never learned from the month it is applied to, nor from the model's training
months: an immature month uses every reference month (all matured before it); a reference month is
judged *forward in time*, as its estimate was made at its own date: with a recalibration fitted on
the reference months whose labels had matured by then (as-of + horizon <= its date,
`TrainingWindow.judged_by`), never its own nor a later month's. That is exactly how the estimate is
used on an immature month, so its coverage of the reference months is the coverage a risk team gets.
(Leaving out only the months less than half a horizon away, the previous rule, let label windows
6-11 months apart share default events with the judged month and so its outcome weigh in its
recalibration: pooled over four 84-month simulations it covered 92-93 % of months on each metric
where forward in time covered 85-90 % (before the time trend; `python -m bench cbpe` and README).) A
reference month with fewer than `MIN_REFERENCE_MONTHS` such months before it shows plain CBPE, as do
months inside the training window (the model is in sample there). With fewer than
`MIN_REFERENCE_MONTHS` reference months or `MIN_REFERENCE_DEFAULTS` defaults or non-defaults in them
(a model trained on all matured data, a young portfolio), or a fit that does not converge, every
month falls back, visibly, to the plain sampling band: the per-month ``interval`` and ``fallback``
columns (`Fallback`: which reason, on how many months and defaults) and the summary's ``method`` say
which, and on how many months and defaults the recalibration rests. The embargo months' labels
overlap the last training labels' windows, a mild optimism the validator can check: coverage is
reported per role.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import rankdata

from features.own import DAYS_PER_MONTH
from training.metrics import auc, ece

if TYPE_CHECKING:
    from features.contract import Tables
    from serving.portfolio.batch import Progress
    from training.bundle import LoadedModel
    from training.model import ScoringModel

METRICS: tuple[str, ...] = ("default_rate", "auc", "ece")
DRAWS = 1000
LEVEL = 0.95
MIN_REFERENCE_MONTHS = 4
"""Fewest reference months a recalibration rests on (the month shocks' spread needs several)."""
MIN_REFERENCE_DEFAULTS = 20
"""Fewest defaults (and non-defaults) in the reference rows: fewer cannot fit a slope."""
MIN_MONTH_DEFAULTS = 10
"""Fewest defaults (and non-defaults) of a month whose own fit enters `month_variation`: fits on
a handful of defaults swing far beyond what their estimated sampling noise allows, and that
spread would read as month-to-month variation (measured: 150 SMEs a month at a 2-3 % PD, no true
month effect, gave an intercept sd of 0.2 to 2.9)."""
TREND_MIN_SPAN = 12
"""Fewest months (first to last, inclusive) the unseen reference months span for the recalibration
to carry a time trend; fewer fit the plain ``a + b logit PD`` (module docstring)."""
TREND_AHEAD = 3
"""Furthest the trend is extrapolated, in months past the newest reference month: further, the
estimate is the trend's value there (measured, `python -m bench cbpe`: read 0 to 3 months ahead
the trend gains coverage over none, 6 ahead gains less, a full year ahead loses: module
docstring)."""
TREND_UNSEEN_ONLY = True
"""The time trend is fitted on the unseen reference months only (on or after the first date no
training label overlaps), never on the embargo months, whose fading memory of the training labels
reads as a drift (module docstring); False: on every reference month, the rule before (kept to
compare)."""
PD_CLIP = 1e-9  # PDs of exactly 0 or 1 have no log-odds; they are read as 1e-9 and 1 - 1e-9

TRAINED, OVERLAP, UNSEEN, UNKNOWN = "trained", "overlap", "unseen", "unknown"
"""A month's relation to the model: inside its training window (a training month or an earlier
one); after it but before the first date no training label overlaps (the embargo months); on or
after that date (OOT and later); the model records no training months."""
SAMPLING, RECALIBRATED, LEAVE_OUT = "sampling", "recalibrated", "recalibrated-leave-out"
"""How a month's estimate and interval were made (module docstring)."""
INTERVALS: dict[str, str] = {
    SAMPLING: "plain CBPE: labels drawn Y ~ Bernoulli(PD)",
    RECALIBRATED: "CBPE on PDs recalibrated on the reference months",
    LEAVE_OUT: "CBPE on PDs recalibrated on the reference months that judge the month (its "
    "`judged_by`; by default those whose labels had matured by the month's own date, as the "
    "estimate was made then: its own labels and every later month's left out)",
}
FORWARD, HORIZON, HALF = "forward", "horizon", "half-horizon"
JUDGES: dict[str, str] = {
    FORWARD: "the reference months whose labels had matured by the judged month's own date",
    HORIZON: "the reference months at least a label horizon away (no label window overlaps)",
    HALF: "the reference months at least half a label horizon away (windows overlap by up to half)",
}
"""Which reference months judge a reference month (`judged_by`). `FORWARD`, the default, is
how the estimate is used on an immature month; the others are kept for the bench's comparison
(`python -m bench cbpe`)."""
IN_SAMPLE, NO_WINDOW, FEW_MONTHS, FEW_DEFAULTS, NOT_CONVERGED = (
    "in-sample",
    "no-training-window",
    "few-reference-months",
    "few-reference-defaults",
    "not-converged",
)
"""Why a month shows plain CBPE (`Fallback`): inside the model's training window; the model
records no training months; fewer than `MIN_REFERENCE_MONTHS` reference months; fewer than
`MIN_REFERENCE_DEFAULTS` defaults or non-defaults in them; the recalibration's fit did not
converge."""


def sampled_auc(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUC of scores `p` against each row of label matrix `y` (draws x n); NaN for a row
    without both classes. The rank formula: (sum of positives' ranks - n1(n1+1)/2) / (n1 n0)."""
    ranks = rankdata(p)
    n1 = y.sum(axis=1).astype(np.float64)
    n0 = y.shape[1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (y.astype(np.float64) @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), out, np.nan)


def sampled_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """`training.metrics.ece` of scores `p` against each row of label matrix `y` (draws x n),
    at once: the equal-count bins depend on `p` alone (the same stable sort), so each bin's
    observed rate per draw is a column mean."""
    order = np.argsort(p, kind="stable")
    out = np.zeros(y.shape[0])
    for idx in np.array_split(order, min(n_bins, len(p))):
        observed = y[:, idx].mean(axis=1)
        out += len(idx) / len(p) * np.abs(observed - p[idx].mean())
    return out


def log_odds(p: np.ndarray) -> np.ndarray:
    return np.asarray(logit(np.clip(p, PD_CLIP, 1 - PD_CLIP)), dtype=np.float64)


@dataclass(frozen=True)
class Fallback:
    """Why a month shows plain CBPE: `reason` (`IN_SAMPLE`, `NO_WINDOW`, `FEW_MONTHS`,
    `FEW_DEFAULTS`, `NOT_CONVERGED`) and the reference rows a recalibration would have rested
    on (months, rows, defaults)."""

    reason: str
    months: int = 0
    rows: int = 0
    defaults: int = 0

    def describe(self) -> str:
        if self.reason == IN_SAMPLE:
            return "a month inside the model's training window (in sample)"
        if self.reason == NO_WINDOW:
            return "the model records no training months, so no month is known to be out of sample"
        if self.reason == FEW_MONTHS:
            return (
                f"{self.months} matured reference month(s) to recalibrate on, at least "
                f"{MIN_REFERENCE_MONTHS} needed"
            )
        if self.reason == FEW_DEFAULTS:
            return (
                f"{self.defaults} default and {self.rows - self.defaults} non-default labels in "
                f"the {self.months} reference months, at least {MIN_REFERENCE_DEFAULTS} of each "
                "needed"
            )
        return (
            f"the recalibration on {self.months} reference months ({self.defaults} default "
            "labels) did not converge"
        )


@dataclass(frozen=True)
class Recalibration:
    """``logit PD' = a + b logit PD`` fitted on the reference months' rows (module docstring):
    `coef` (a, b) and their covariance clustered by SME (`cov`); the month-to-month variation of
    the recalibration in the centred form ``a_m + b_m (logit PD - centre)``: `between`, the
    covariance of (a_m, b_m) across months beyond their within-month sampling noise, and
    `mean_cov`, the covariance of their mean over the reference months; `centre`, the mean
    log-odds of the reference rows; the months, rows and defaults it rests on."""

    coef: tuple[float, float]
    cov: tuple[tuple[float, float], tuple[float, float]]
    between: tuple[tuple[float, float], tuple[float, float]]
    mean_cov: tuple[tuple[float, float], tuple[float, float]]
    centre: float
    months: int
    rows: int
    defaults: int
    varied_months: int = 0  # months with their own fit in `month_variation` (0: not estimated)
    trend_ahead: float | None = None
    """Months past the newest reference month at which a `TrendRecalibration` was read (None:
    no trend)."""

    @property
    def shock_sd(self) -> float:
        """Between-month sd of the intercept at the reference rows' mean log-odds."""
        return float(np.sqrt(self.between[0][0]))

    @property
    def slope_sd(self) -> float:
        """Between-month sd of the slope."""
        return float(np.sqrt(self.between[1][1]))

    @classmethod
    def fit(
        cls, pd_: np.ndarray, y: np.ndarray, month: np.ndarray, sme: np.ndarray
    ) -> Recalibration | Fallback:
        """From aligned PDs, matured labels (0/1), as-of months and SME ids of the reference
        rows; a `Fallback` saying why not when they hold fewer than `MIN_REFERENCE_MONTHS`
        months (`FEW_MONTHS`) or `MIN_REFERENCE_DEFAULTS` defaults or non-defaults
        (`FEW_DEFAULTS`), or the fit does not converge (`NOT_CONVERGED`)."""
        x = log_odds(np.asarray(pd_, dtype=np.float64))
        yy = np.asarray(y, dtype=np.float64)
        months = pd.unique(np.asarray(month))
        defaults = int(yy.sum())
        counts = {"months": len(months), "rows": len(yy), "defaults": defaults}
        if len(months) < MIN_REFERENCE_MONTHS:
            return Fallback(FEW_MONTHS, **counts)
        if min(defaults, len(yy) - defaults) < MIN_REFERENCE_DEFAULTS:
            return Fallback(FEW_DEFAULTS, **counts)
        design = np.column_stack([np.ones_like(x), x])
        coef = _newton(design, yy, np.array([0.0, 1.0]))
        if coef is None:
            return Fallback(NOT_CONVERGED, **counts)
        cov = _clustered_cov(design, yy, coef, sme)
        centre = float(x.mean())
        between, mean_cov, varied = month_variation(
            x - centre, yy, np.asarray(month), np.asarray(sme), coef, centre
        )
        return cls(
            _pair(coef),
            _matrix(cov),
            _matrix(between),
            _matrix(mean_cov),
            centre,
            len(months),
            len(yy),
            defaults,
            varied,
        )

    def draw(self, pd_: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
        """`draws` vectors of recalibrated PDs (draws x n), each with its own (a, b), drawn
        from the pooled fit's distribution, and its own month deviation (intercept and slope),
        drawn from the between-month covariance plus that of the months' mean."""
        ab = rng.multivariate_normal(np.array(self.coef), np.array(self.cov), size=draws)
        spread = np.array(self.between) + np.array(self.mean_cov)
        dev = rng.multivariate_normal(np.zeros(2), spread, size=draws)
        x = log_odds(pd_)
        logits = (ab[:, [0]] + dev[:, [0]]) + ab[:, [1]] * x[None, :]
        return np.asarray(expit(logits + dev[:, [1]] * (x - self.centre)[None, :]))


@dataclass(frozen=True)
class TrendRecalibration:
    """``logit PD' = a + b x + c tau + d tau x`` (x = logit PD, tau = months from the reference
    rows' mean date `origin`), fitted on the reference rows with the SME-clustered covariance of
    (a, b, c, d); the month-to-month variation of the recalibration around that trend
    (`between`, centred form as `Recalibration`) and the inverse of the months' trend design
    [1, tau_m] (`design_inv`: the months' effects enter the trend at tau with variance
    ``between * [1, tau] design_inv [1, tau]``). `at` gives the `Recalibration` at a month."""

    coef: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    between: tuple[tuple[float, float], tuple[float, float]]
    design_inv: tuple[tuple[float, float], tuple[float, float]]
    centre: float
    origin: float  # mean month index (year * 12 + month) of the reference rows
    last: float  # tau of the last reference month
    months: int
    rows: int
    defaults: int
    varied_months: int = 0  # as `Recalibration`

    @classmethod
    def fit(
        cls, pd_: np.ndarray, y: np.ndarray, month: np.ndarray, sme: np.ndarray
    ) -> TrendRecalibration | None:
        """As `Recalibration.fit` (whose checks the caller has made) with the trend terms; None
        when the fit does not converge."""
        x = log_odds(np.asarray(pd_, dtype=np.float64))
        yy = np.asarray(y, dtype=np.float64)
        stamps = pd.DatetimeIndex(np.asarray(month))
        index = np.asarray(stamps.year * 12 + stamps.month, dtype=np.float64)
        origin = float(index.mean())
        tau = index - origin
        design = np.column_stack([np.ones_like(x), x, tau, tau * x])
        coef = _newton(design, yy, np.array([0.0, 1.0, 0.0, 0.0]))
        if coef is None:
            return None
        cov = _clustered_cov(design, yy, coef, sme)
        centre = float(x.mean())
        between, design_inv, varied = month_variation(
            x - centre, yy, np.asarray(month), np.asarray(sme), coef[:2], centre, tau
        )
        if varied < MIN_REFERENCE_MONTHS:
            design_inv = np.zeros((2, 2))
        return cls(
            tuple(float(v) for v in coef),
            tuple(tuple(float(v) for v in row) for row in cov),
            _matrix(between),
            _matrix(design_inv),
            centre,
            origin,
            float(tau.max()),
            len(pd.unique(np.asarray(month))),
            len(yy),
            int(yy.sum()),
            varied,
        )

    def tau_of(self, when: pd.Timestamp) -> float:
        return float(when.year * 12 + when.month - self.origin)

    def at(self, tau: float) -> Recalibration:
        """The recalibration at `tau`: (a + c tau, b + d tau) with their covariance, the month
        effect's spread `between`, and the months' share of the trend's uncertainty there."""
        lift = np.array([[1.0, 0.0, tau, 0.0], [0.0, 1.0, 0.0, tau]])
        coef = lift @ np.array(self.coef)
        cov = lift @ np.array(self.cov) @ lift.T
        point = np.array([1.0, tau])
        mean_cov = np.array(self.between) * float(point @ np.array(self.design_inv) @ point)
        return Recalibration(
            _pair(coef), _matrix(cov), self.between, _matrix(mean_cov), self.centre,
            self.months, self.rows, self.defaults, self.varied_months, tau - self.last,
        )  # fmt: skip


def month_variation(
    xc: np.ndarray,
    y: np.ndarray,
    month: np.ndarray,
    sme: np.ndarray,
    coef: np.ndarray,
    centre: float,
    tau: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """How the recalibration varies from month to month, in the centred form ``a_m + b_m xc``
    (`xc`: log-odds minus `centre`; `coef`: the pooled, uncentred (a, b)): the between-month
    covariance of the months' true (a_m, b_m), and the covariance of their mean.

    Each month gets its own logistic fit f_m = (a_m, b_m). Their sample covariance S holds the
    true month-to-month variation and the fits' sampling noise. The noise's share of S is
    estimated from the fits' influence functions summed by SME (C_mk: the clustered covariance
    of months m and k's sampling errors), ``(sum_m C_mm - sum_mk C_mk / M) / (M - 1)``: months
    sharing SMEs (and, through the overlapping label windows, default events) share noise,
    which moves their fits together and so adds less to S than independent noise would;
    subtracting the mean within-month variance instead would take too much and read real month
    variation as none. The between-month covariance is S less that share (method of moments),
    projected onto the positive semi-definite matrices (a negative variance read as none); the
    covariance of the months' mean effect is it over M (the mean's sampling part is already in
    the pooled fit's clustered covariance). Months whose own fit does not converge (no
    defaults: the intercept is unbounded) are left out; with fewer than two fitted months both
    are zero.

    With `tau` (each row's months from the reference rows' mean date: `TrendRecalibration`) the
    variation is that around a linear trend in the months' tau, and the second matrix returned
    is (T'T)^-1 of the months' trend design T = [1, tau_m] instead of the mean's covariance."""
    design = np.column_stack([np.ones_like(xc), xc])
    start = np.array([coef[0] + coef[1] * centre, coef[1]])
    ids, codes = np.unique(sme, return_inverse=True)
    fits, influence, used = [], [], []
    for m in pd.unique(month):
        rows = month == m
        events = int(y[rows].sum())
        if min(events, int(rows.sum()) - events) < MIN_MONTH_DEFAULTS:
            continue
        one = _newton(design[rows], y[rows], start)
        if one is None:
            continue
        q = expit(design[rows] @ one)
        information = design[rows].T @ (design[rows] * (q * (1 - q))[:, None])
        per_row = (design[rows] * (y[rows] - q)[:, None]) @ np.linalg.inv(information)
        per_sme = np.zeros((len(ids), 2))
        np.add.at(per_sme, codes[rows], per_row)
        fits.append(one)
        influence.append(per_sme)
        used.append(m)
    k = len(fits)
    if k < MIN_REFERENCE_MONTHS:
        return np.zeros((2, 2)), np.zeros((2, 2)), k
    if tau is None:
        spread = np.cov(np.array(fits), rowvar=False, ddof=1)
        own = sum((e.T @ e for e in influence), np.zeros((2, 2)))
        total = np.sum(influence, axis=0)
        noise = (own - total.T @ total / k) / (k - 1)
        between = _psd(spread - noise)
        return between, between / k, k
    # around a linear trend in the months' tau: residuals of the fits on [1, tau_m]; their
    # noise share sum_mn (I - H)_mn C_mn / (k - 2), H the hat matrix (k - 1 and 1/k above)
    taus = np.array([tau[month == m][0] for m in used])
    trend = np.column_stack([np.ones(k), taus])
    hat = trend @ np.linalg.solve(trend.T @ trend, trend.T)
    resid = (np.eye(k) - hat) @ np.array(fits)
    spread = resid.T @ resid / (k - 2)
    noise = np.einsum("mn,msi,nsj->ij", np.eye(k) - hat, np.array(influence),
                      np.array(influence)) / (k - 2)  # fmt: skip
    between = _psd(spread - noise)
    return between, np.linalg.inv(trend.T @ trend), k


def _clustered_cov(
    design: np.ndarray, y: np.ndarray, coef: np.ndarray, sme: np.ndarray
) -> np.ndarray:
    """The covariance of a logistic fit's coefficients, clustered by SME (sandwich: the
    inverse information around the SMEs' summed scores)."""
    p = expit(design @ coef)
    bread = np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))
    scores = pd.DataFrame(design * (y - p)[:, None]).groupby(np.asarray(sme)).sum().to_numpy()
    return np.asarray(bread @ (scores.T @ scores) @ bread)


def _psd(m: np.ndarray) -> np.ndarray:
    """`m` symmetrised, its negative eigenvalues set to 0."""
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return np.asarray((vectors * np.clip(values, 0.0, None)) @ vectors.T)


def _pair(v: np.ndarray) -> tuple[float, float]:
    return float(v[0]), float(v[1])


def _matrix(m: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    return _pair(m[0]), _pair(m[1])


def _newton(
    design: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    *,
    iterations: int = 100,
) -> np.ndarray | None:
    """Maximum-likelihood coefficients of a logistic regression of `y` on `design`, by Newton's
    method; None when it does not converge."""
    beta = start.astype(np.float64)
    for _ in range(iterations):
        p = expit(design @ beta)
        hessian = design.T @ (design * (p * (1 - p))[:, None])
        try:
            step = np.linalg.solve(hessian, design.T @ (y - p))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.isfinite(beta).all() or np.abs(beta).max() > 50:
            return None
        if np.abs(step).max() < 1e-10:
            return beta
    return None


def estimate(
    pd_: Sequence[float] | np.ndarray,
    *,
    recalibration: Recalibration | None = None,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The expected default rate, AUC and ECE of a cohort with PDs `pd_`, each with the `level`
    interval of its distribution over label draws (module docstring): ``{metric: {estimate,
    low, high}}``. Labels are drawn from the PDs themselves, or from PDs recalibrated by
    `recalibration`; the metrics are always those of `pd_`."""
    p = np.asarray(pd_, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError("expected a non-empty vector of PDs")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("PDs must lie in [0, 1]")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    truth = p if recalibration is None else recalibration.draw(p, draws, rng)
    y = rng.random((draws, len(p))) < truth
    alpha = (1 - level) / 2
    rates = y.mean(axis=1)
    aucs = sampled_auc(p, y)
    eces = sampled_ece(p, y)
    out: dict[str, dict[str, float]] = {}
    for name, values, centre in (
        ("default_rate", rates, float(p.mean()) if recalibration is None else rates.mean()),
        ("auc", aucs, float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")),
        ("ece", eces, float(eces.mean())),
    ):
        finite = values[np.isfinite(values)]
        low, high = (
            (float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha)))
            if len(finite)
            else (float("nan"), float("nan"))
        )
        out[name] = {"estimate": float(centre), "low": low, "high": high}
    return out


def realised(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The realised default rate, AUC and ECE of matured labels `y`."""
    yy = np.asarray(y, dtype=np.float64)
    return {"default_rate": float(yy.mean()), "auc": auc(yy, p), "ece": ece(yy, p)}


@dataclass(frozen=True)
class TrainingWindow:
    """What a model trained on: its training months (YYYY-MM), the first as-of date no training
    label overlaps (`training.compare.unseen_from`) and its label horizon."""

    months: frozenset[str]
    unseen_from: pd.Timestamp
    horizon_days: int

    @classmethod
    def of(cls, model: ScoringModel) -> TrainingWindow | None:
        """The model's window; None when the bundle does not record its training months."""
        from training.compare import Contender, unseen_from

        if not model.train_months:
            return None
        return cls(
            frozenset(model.train_months),
            unseen_from(Contender("model", "", model)),
            int(model.horizon_days),
        )

    def role(self, when: pd.Timestamp) -> str:
        if when.strftime("%Y-%m") <= max(self.months):
            return TRAINED
        return UNSEEN if when >= self.unseen_from else OVERLAP

    def judged_by(
        self, when: pd.Timestamp, reference: Sequence[pd.Timestamp], judge: str = FORWARD
    ) -> list[pd.Timestamp]:
        """The `reference` months whose recalibration judges reference month `when` (`JUDGES`):
        `FORWARD`, those whose whole label window had passed by `when` (as-of + horizon <=
        `when`: the recalibration the estimate made at `when` rested on); `HORIZON`, those at
        least the horizon in months away on either side (`months_apart`), whose label windows
        do not overlap its own; `HALF`, at least half that (windows 6 to 11 months apart on a
        365-day horizon share default events: kept to measure that optimism)."""
        if judge == FORWARD:
            lag = pd.Timedelta(days=self.horizon_days)
            return [d for d in reference if d + lag <= when]
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {sorted(JUDGES)}, got {judge!r}")
        months = self.horizon_days / DAYS_PER_MONTH / (1 if judge == HORIZON else 2)
        gap = max(1, round(months))
        return [d for d in reference if months_apart(d, when) >= gap]


def months_apart(a: pd.Timestamp, b: pd.Timestamp) -> int:
    return abs((a.year - b.year) * 12 + a.month - b.month)


def performance_table(
    scores: pd.DataFrame,
    labels: pd.Series,
    *,
    window: TrainingWindow | None = None,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
    judge: str = FORWARD,
    trend: bool = True,
) -> pd.DataFrame:
    """One row per as-of date of `scores` (``as_of``, ``pd``, and ``sme_id`` when there is a
    `window`): n, the month's ``role`` against the model's training `window` (None: ``unknown``,
    plain CBPE), ``mature`` (every label of the month known: `labels`, aligned with `scores`, NA
    when immature), how the estimate was made (``interval``: a key of `INTERVALS`; for plain
    CBPE, why: ``fallback``, a `Fallback` reason, and ``fallback_reason`` in words; the
    recalibration's ``reference_months``, ``reference_defaults``, ``intercept``, ``slope``,
    ``shock_sd`` and ``slope_shock_sd``: the month-to-month sds of intercept and slope) and per
    metric: the plain CBPE estimate and band (``<metric>_cbpe``, ``_cbpe_low``,
    ``_cbpe_high``), the shown ``_estimate``, ``_low``, ``_high`` and, once
    mature, ``_realised`` and ``_within`` (realised inside the shown interval). A reference
    month is judged by the reference months `judge` picks (`TrainingWindow.judged_by`). `trend`:
    a recalibration whose unseen reference months span `TREND_MIN_SPAN` months or more carries
    a time trend fitted on them (`TREND_UNSEEN_ONLY`), read at the month (at most `TREND_AHEAD`
    months past the newest reference month; ``trend_ahead``: how far; NaN: no trend); False
    (the bench's comparison) never."""
    columns = ["as_of", "pd", *(["sme_id"] if "sme_id" in scores.columns else [])]
    frame = scores[columns].assign(label=labels.to_numpy())
    frame["as_of"] = pd.to_datetime(frame["as_of"])
    if "sme_id" not in frame.columns:
        frame["sme_id"] = np.arange(len(frame))  # no ids: each row its own cluster
    groups: dict[pd.Timestamp, pd.DataFrame] = {
        pd.Timestamp(when): month  # type: ignore[arg-type]
        for when, month in frame.groupby("as_of", sort=True)
    }
    dates = list(groups)
    role = {d: window.role(d) if window is not None else UNKNOWN for d in dates}
    mature = {d: bool(groups[d]["label"].notna().all()) for d in dates}
    reference = [d for d in dates if mature[d] and role[d] in (OVERLAP, UNSEEN)]

    if judge not in JUDGES:
        raise ValueError(f"judge must be one of {sorted(JUDGES)}, got {judge!r}")

    def rows_of(used: list[pd.Timestamp]) -> tuple[np.ndarray, ...]:
        rows = pd.concat([groups[d] for d in used])
        return (
            rows["pd"].to_numpy(dtype=np.float64),
            rows["label"].to_numpy(dtype=np.float64),
            rows["as_of"].to_numpy(),
            rows["sme_id"].astype(str).to_numpy(),
        )

    def recalibrate(used: list[pd.Timestamp]) -> Recalibration | TrendRecalibration | Fallback:
        if not used:
            return Fallback(FEW_MONTHS)
        plain = Recalibration.fit(*rows_of(used))
        if not trend or not isinstance(plain, Recalibration):
            return plain
        if TREND_UNSEEN_ONLY:  # the embargo months' fading memory of training labels is no drift
            used = [d for d in used if role[d] == UNSEEN]
        if not used or months_apart(min(used), max(used)) + 1 < TREND_MIN_SPAN:
            return plain
        args = rows_of(used)
        if not isinstance(Recalibration.fit(*args), Recalibration):
            return plain  # too few defaults in the unseen months for a fit (TrendRecalibration.fit)
        return TrendRecalibration.fit(*args) or plain

    def project(
        outcome: Recalibration | TrendRecalibration | Fallback, when: pd.Timestamp
    ) -> Recalibration | Fallback:
        if not isinstance(outcome, TrendRecalibration):
            return outcome
        return outcome.at(min(outcome.tau_of(when), outcome.last + TREND_AHEAD))

    everything = recalibrate(reference)
    out: list[dict[str, Any]] = []
    for when in dates:
        month = groups[when]
        p = month["pd"].to_numpy(dtype=np.float64)
        outcome: Recalibration | TrendRecalibration | Fallback
        if role[when] in (TRAINED, UNKNOWN):
            outcome, how = Fallback(IN_SAMPLE if role[when] == TRAINED else NO_WINDOW), SAMPLING
        elif when in reference and window is not None:
            outcome, how = recalibrate(window.judged_by(when, reference, judge)), LEAVE_OUT
        else:
            outcome, how = everything, RECALIBRATED
        shown_by = project(outcome, when)
        fitted = shown_by if isinstance(shown_by, Recalibration) else None
        plain = estimate(p, draws=draws, level=level, seed=seed)
        shown = plain if fitted is None else estimate(p, recalibration=fitted, draws=draws,
                                                      level=level, seed=seed)  # fmt: skip
        real = realised(month["label"].to_numpy(dtype=np.float64), p) if mature[when] else None
        row: dict[str, Any] = {
            "as_of": when,
            "n": len(p),
            "role": role[when],
            "mature": mature[when],
            "interval": how if fitted is not None else SAMPLING,
            "judged_by": JUDGES[judge] if how == LEAVE_OUT else None,
            "fallback": outcome.reason if isinstance(outcome, Fallback) else None,
            "fallback_reason": outcome.describe() if isinstance(outcome, Fallback) else None,
            "reference_months": fitted.months if fitted is not None else 0,
            "reference_defaults": fitted.defaults if fitted is not None else 0,
            "intercept": fitted.coef[0] if fitted is not None else float("nan"),
            "slope": fitted.coef[1] if fitted is not None else float("nan"),
            "shock_sd": fitted.shock_sd if fitted is not None else float("nan"),
            "slope_shock_sd": fitted.slope_sd if fitted is not None else float("nan"),
            "varied_months": fitted.varied_months if fitted is not None else 0,
            "trend_ahead": (
                fitted.trend_ahead
                if fitted is not None and fitted.trend_ahead is not None
                else float("nan")
            ),
        }
        for metric in METRICS:
            row[f"{metric}_cbpe"] = plain[metric]["estimate"]
            row[f"{metric}_cbpe_low"] = plain[metric]["low"]
            row[f"{metric}_cbpe_high"] = plain[metric]["high"]
            for key in ("estimate", "low", "high"):
                row[f"{metric}_{key}"] = shown[metric][key]
            value = real[metric] if real is not None else float("nan")
            row[f"{metric}_realised"] = value
            row[f"{metric}_within"] = (
                bool(shown[metric]["low"] <= value <= shown[metric]["high"])
                if real is not None and np.isfinite(value)
                else None
            )
        out.append(row)
    return pd.DataFrame(out)


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
    the labels known at `as_of` (a month is realised once its whole label window has passed) and
    the model's own training window."""
    from serving.portfolio.batch import score_population

    scored = score_population(
        tables, dates, loaded, explain=False, data_end=as_of, progress=progress
    )
    return performance_table(
        scored.scores,
        scored.features["default_12m"],
        window=TrainingWindow.of(loaded.model),
        draws=draws,
        level=level,
    )


def coverage(
    table: pd.DataFrame, metric: str, roles: Collection[str] | None = None
) -> tuple[int, int]:
    """(months whose realised `metric` lies in its interval, months realised), over the months
    whose role is in `roles` (None: all)."""
    rows = table if roles is None else table[table["role"].isin(list(roles))]
    known = rows[f"{metric}_within"].dropna()
    return int(known.astype(bool).sum()), len(known)


def judged_by(table: pd.DataFrame) -> str:
    """Which reference months judged the reference months of `table` (`JUDGES`; a table made
    before the column existed, or with no judged month, was judged forward in time)."""
    named: list[str] = (
        [str(v) for v in table["judged_by"].dropna().unique()] if "judged_by" in table else []
    )
    return named[0] if named else JUDGES[FORWARD]


def performance_doc(table: pd.DataFrame, *, level: float = LEVEL) -> dict[str, Any]:
    """`performance_table` as the JSON summary (and the report) shows it: how the newest month's
    estimate was made (``method``), the reference months, the coverage so far per role, and per
    month each metric's estimate, interval, plain CBPE estimate and band and, once mature,
    realised value and whether it lies inside."""

    def value(v: Any) -> float | None:
        return float(v) if v is not None and pd.notna(v) else None

    def within(v: Any) -> bool | None:
        return None if v is None or pd.isna(v) else bool(v)

    reference = table[table["role"].isin([OVERLAP, UNSEEN]) & table["mature"]]
    newest = table.iloc[-1] if len(table) else None
    how = str(newest["interval"]) if newest is not None else SAMPLING
    if how == SAMPLING:
        reason = str(newest["fallback_reason"]) if newest is not None else "no month to estimate"
        note = (
            f"plain CBPE: the {level:.0%} interval of each metric over label draws Y ~ "
            "Bernoulli(PD), which assumes the PDs right SME by SME; NOT corrected for the "
            f"model's own miscalibration ({reason}; {len(reference)} matured month(s) after "
            "the model's training window), so the interval holds sampling noise only"
        )
    else:
        assert newest is not None
        months_varied = int(newest["varied_months"])
        varied = (
            f"month-to-month sd {newest['shock_sd']:.2f} of the intercept and "
            f"{newest['slope_shock_sd']:.2f} of the slope, from {months_varied} months with at "
            f"least {MIN_MONTH_DEFAULTS} defaults"
            if months_varied >= MIN_REFERENCE_MONTHS
            else f"month-to-month variation NOT estimated: {months_varied} month(s) with at least "
            f"{MIN_MONTH_DEFAULTS} defaults, {MIN_REFERENCE_MONTHS} needed"
        )
        ahead = newest.get("trend_ahead")
        trended = (
            f", read on its linear time trend {float(ahead):.0f} month(s) past the newest of "
            f"them (a trend on the unseen months, not the embargo months, once they span "
            f"{TREND_MIN_SPAN} months, read at most {TREND_AHEAD} months ahead)"
            if ahead is not None and pd.notna(ahead)
            else f" (no time trend: the unseen reference months span fewer than "
            f"{TREND_MIN_SPAN} "
            "months, hold too few defaults for a fit, or the trend's fit did not converge)"
        )
        note = (
            f"CBPE on recalibrated PDs: labels drawn from logit PD' = "
            f"{newest['intercept']:.2f} + {newest['slope']:.2f} logit PD, fitted on "
            f"{int(newest['reference_months'])} matured months after the model's training window "
            f"({int(newest['reference_defaults'])} default labels; {varied}){trended}, the "
            f"{level:.0%} interval carrying the sampling noise, the "
            "recalibration's uncertainty and its month-to-month variation; each of those "
            f"months is judged with a recalibration on {judged_by(table)} (plain CBPE where "
            f"fewer than {MIN_REFERENCE_MONTHS} were); months inside the training window show "
            "plain CBPE"
        )
    method: dict[str, Any] = {"interval": how, "description": INTERVALS[how]}
    if newest is not None and how == SAMPLING:
        method["fallback"] = str(newest["fallback"])
        method["reason"] = str(newest["fallback_reason"])
    if newest is not None and how != SAMPLING:
        method["reference_months"] = int(newest["reference_months"])
        method["reference_defaults"] = int(newest["reference_defaults"])
        method |= {
            key: value(newest[key]) for key in ("intercept", "slope", "shock_sd", "slope_shock_sd")
        }
        method["varied_months"] = int(newest["varied_months"])
        ahead = newest.get("trend_ahead")
        method["trend_ahead"] = value(ahead) if ahead is not None else None
    return {
        "level": level,
        "note": f"{note}; realised once every label of the month is known",
        "method": method,
        "reference_months": [pd.Timestamp(d).date().isoformat() for d in reference["as_of"]],
        "coverage": {
            metric: {
                role: list(coverage(table, metric, [role]))
                for role in (TRAINED, OVERLAP, UNSEEN, UNKNOWN)
                if (table["role"] == role).any()
            }
            for metric in METRICS
        },
        "months": [
            {
                "as_of": pd.Timestamp(r["as_of"]).date().isoformat(),
                "n": int(r["n"]),
                "role": str(r["role"]),
                "mature": bool(r["mature"]),
                "interval": str(r["interval"]),
                "fallback": None if pd.isna(r["fallback"]) else str(r["fallback"]),
                "reference_months": int(r["reference_months"]),
                **{
                    metric: {
                        "estimate": value(r[f"{metric}_estimate"]),
                        "low": value(r[f"{metric}_low"]),
                        "high": value(r[f"{metric}_high"]),
                        "cbpe": {
                            "estimate": value(r[f"{metric}_cbpe"]),
                            "low": value(r[f"{metric}_cbpe_low"]),
                            "high": value(r[f"{metric}_cbpe_high"]),
                        },
                        "realised": value(r[f"{metric}_realised"]),
                        "within": within(r[f"{metric}_within"]),
                    }
                    for metric in METRICS
                },
            }
            for r in table.to_dict("records")
        ],
    }
