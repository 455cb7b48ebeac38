"""Out-of-time split, the optional embargo, and the SME-grouped splits of the training months.

- OOT: the last ``oot_months`` as-of months among the matured rows.
- Embargo (``embargo_days``, default 0 = none): training rows must satisfy
  ``as_of + embargo_days <= first OOT as-of date``; rows in between are left out. With
  ``embargo_days = horizon`` every training label is observed before the OOT period starts, so
  the model cannot learn an SME's OOT outcome from its own training labels (label windows of the
  last training months otherwise overlap the OOT months' outcomes).
- Training months: SMEs (not rows) are shuffled with a seeded generator; ``val_fraction`` of them
  form the validation set (early stopping, tuning), the rest fit the booster. The fit SMEs are
  also cut into ``folds`` groups for cross-fitted calibration: fold k's margins come from a
  booster grown without fold k's SMEs. No SME is in two of these sets. OOT rows may belong to
  any SME: OOT tests the model on a later period, as it will be used.
- Calibration months: the last ``calibration_months`` training months (at most half of them)
  are held out in time, mirroring the OOT split inside the training months: a booster grown on
  the fit rows of the earlier months (``cal_grow``, with the same embargo before the held-out
  months) scores every training row of the held-out months (``cal``). Those rows then stand to
  their booster as the OOT rows stand to the model: a later period, SMEs mostly seen before,
  with the same overlap of label windows. When the training months cannot hold that mirror (too
  few months for the embargo, or a set without both classes) ``calibration_months`` is empty
  and calibration falls back to the cross-fitted margins of the fit SMEs; so it does when either
  set holds fewer than `MIN_CALIBRATION_DEFAULTS` defaults, or when the calibration booster's
  rows are fewer than `MIN_CALIBRATION_GROW_SHARE` of the fit rows. ``calibration_note`` says
  which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import months_needed
from training.exceptions import TrainingError

MIN_SPLIT_TRAIN_MONTHS = 3
"""Fewest training months a split accepts (below it the figures mean nothing)."""
MIN_CALIBRATION_DEFAULTS = 20
"""The calibration mirror needs this many defaults in its booster's rows and in its held-out
rows; with fewer (small data, or an embargo that leaves little to grow on) the booster cannot
rank and calibration falls back to the cross-fitted margins."""
CROSS_FITTED = ": calibrated on the cross-fitted margins of the fit SMEs instead"
"""How `Split.calibration_note` ends when the calibration falls back to cross-fitting."""
MIN_CALIBRATION_GROW_SHARE = 1 / 3
"""The calibration booster must grow on at least this share of the fit rows to stand for the
model: the booster's regularisation is set in rows (`min_data_in_leaf`, an absolute L2 penalty),
so one grown on far fewer rows is a shrunken model whose margins are narrower than the model's,
and the calibration slope fitted to them stretches the model's margins. Seen: 800 SMEs over 48
months, embargo 365 days, the booster on 2 months = 11 % of the fit rows; its margins' sd 0.11
against the model's 0.66, slope 8.7, OOT mean PD 0.23 against a default rate of 0.035. The
cross-fitted boosters grow on (folds − 1)/folds of the fit rows; the 2,000-SME demo's
calibration booster on 46 %."""


@dataclass(frozen=True)
class Split:
    """Positional row indices into the matured panel, and the months of each period."""

    fit: np.ndarray  # rows of the fit SMEs in the training months
    val: np.ndarray  # rows of the validation SMEs in the training months
    oot: np.ndarray
    fold: np.ndarray  # fold (0..folds-1) of each `fit` row, aligned with `fit`
    train_months: tuple[str, ...]
    oot_months: tuple[str, ...]
    embargoed_months: tuple[str, ...]  # months left out between training and OOT
    cal_grow: np.ndarray  # fit rows before the calibration months (the calibration booster)
    cal: np.ndarray  # training rows of the calibration months (the calibration set)
    calibration_months: tuple[str, ...]  # empty: calibrate on cross-fitted margins instead
    val_smes: int  # SMEs of the validation rows (`training.train.cross_fit_for` counts them)
    calibration_note: str = ""  # how the calibration set was chosen, and why, for the record

    @property
    def train(self) -> np.ndarray:
        return np.sort(np.concatenate([self.fit, self.val]))

    @property
    def folds(self) -> int:
        return int(self.fold.max()) + 1 if self.fold.size else 0


def months(as_of: pd.Series) -> np.ndarray:
    """The as-of month of each row, as "YYYY-MM" (NaN for a missing date). Each distinct date
    is formatted once: a panel holds a few dozen as-of dates over hundreds of thousands of rows
    (formatting every row cost 0.4 s CPU on 230,000 rows, three calls per `fit`)."""
    codes, dates = pd.factorize(pd.to_datetime(as_of), use_na_sentinel=False)
    labels = np.asarray(pd.DatetimeIndex(dates).strftime("%Y-%m"), dtype=object)
    return labels[codes]


def out_of_time(
    as_of: pd.Series, oot_months: int, embargo_days: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, oot): OOT = the last `oot_months` distinct as-of months; train =
    earlier rows with ``as_of + embargo_days <= first OOT as-of``."""
    if oot_months < 1:
        raise TrainingError(f"--oot-months must be at least 1, got {oot_months}")
    if embargo_days < 0:
        raise TrainingError(f"the embargo must be >= 0 days, got {embargo_days}")
    m = months(as_of)
    distinct = sorted(set(m))
    if len(distinct) < oot_months + 1:
        raise TrainingError(
            f"the matured rows span {len(distinct)} as-of month(s) ({', '.join(distinct)}); "
            f"an out-of-time split of {oot_months} month(s) needs at least {oot_months + 1}"
        )
    oot_set = set(distinct[-oot_months:])
    oot = np.fromiter((x in oot_set for x in m), dtype=bool, count=len(m))
    dates = pd.to_datetime(as_of).to_numpy()
    first_oot = dates[oot].min()
    train = ~oot & (dates + np.timedelta64(embargo_days, "D") <= first_oot)
    left = len(set(m[train]))
    if left < MIN_SPLIT_TRAIN_MONTHS:
        raise TrainingError(
            f"{left} training month(s) left before the {oot_months} OOT month(s) with an "
            f"embargo of {embargo_days} days (at least {MIN_SPLIT_TRAIN_MONTHS} needed): the "
            f"data spans {len(distinct)} matured month(s); a "
            f"leak-free split with a {embargo_days}-day label horizon needs about "
            f"{months_needed(embargo_days, oot_months)} months of data (or give --embargo-days 0 "
            "for a plain, leaky split)"
        )
    return train, oot


def group_split(
    groups: np.ndarray, seed: int, val_fraction: float = 0.15, folds: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit mask, val mask, fold of each row: -1 for val rows), each group (SME) in one set and,
    within fit, in one fold."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if folds < 2:
        raise ValueError(f"cross-fitted calibration needs at least 2 folds, got {folds}")
    g = np.asarray(groups, dtype=object)
    distinct = np.array(sorted(set(g)), dtype=object)
    if distinct.size < folds + 1:
        raise TrainingError(
            f"the training months hold {distinct.size} SME(s); splitting them by SME into a "
            f"validation set and {folds} calibration folds needs at least {folds + 1}"
        )
    rng = np.random.default_rng(seed)
    shuffled = distinct[rng.permutation(distinct.size)]
    n_val = min(max(1, round(val_fraction * distinct.size)), distinct.size - folds)
    fold_of = {s: -1 for s in shuffled[:n_val]}
    for i, s in enumerate(shuffled[n_val:]):
        fold_of[s] = i % folds
    fold = np.fromiter((fold_of[x] for x in g), dtype=np.int64, count=g.size)
    return fold >= 0, fold < 0, fold


def make_split(
    panel: pd.DataFrame,
    oot_months: int,
    seed: int,
    *,
    val_fraction: float = 0.15,
    folds: int = 5,
    embargo_days: int = 0,
    calibration_months: int = 6,
) -> Split:
    """Split a matured panel (every row labelled) out of time, then the training months by SME,
    and hold out the last training months for calibration (module docstring)."""
    train_mask, oot_mask = out_of_time(panel["as_of"], oot_months, embargo_days)
    train_idx = np.flatnonzero(train_mask)
    fit, val, fold = group_split(panel["sme_id"].to_numpy()[train_idx], seed, val_fraction, folds)
    y = panel["default_12m"].to_numpy(dtype=np.float64)
    m = months(panel["as_of"])
    gap = ~train_mask & ~oot_mask
    cal_grow, cal, cal_months, cal_note = _calibration_months(
        m, panel["as_of"], train_idx[fit], train_idx, y, calibration_months, embargo_days
    )
    split = Split(
        fit=train_idx[fit],
        val=train_idx[val],
        oot=np.flatnonzero(oot_mask),
        fold=fold[fit],
        train_months=tuple(sorted(set(m[train_mask]))),
        oot_months=tuple(sorted(set(m[oot_mask]))),
        embargoed_months=tuple(sorted(set(m[gap]))),
        cal_grow=cal_grow,
        cal=cal,
        calibration_months=cal_months,
        val_smes=len(set(panel["sme_id"].to_numpy()[train_idx[val]])),
        calibration_note=cal_note,
    )
    for name in ("fit", "val", "oot"):
        labels = y[getattr(split, name)]
        if not (0 < labels.sum() < labels.size):
            raise TrainingError(
                f"the {name} set ({labels.size} rows, {int(labels.sum())} defaults) needs both "
                "defaults and non-defaults: too few matured rows or defaults to train and evaluate"
            )
    return split


def _calibration_months(
    m: np.ndarray,
    as_of: pd.Series,
    fit: np.ndarray,
    train: np.ndarray,
    y: np.ndarray,
    calibration_months: int,
    embargo_days: int,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    """(calibration booster rows, calibration rows, calibration months, note); the first three
    empty when the training months cannot hold the time mirror of the OOT split (module
    docstring), and the note says why. `m`: the as-of month of each row (`months`)."""

    def none(why: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
        return np.empty(0, np.int64), np.empty(0, np.int64), (), why + CROSS_FITTED

    if calibration_months < 1:
        return none("no calibration months asked for")
    distinct = sorted(set(m[train]))
    k = min(calibration_months, len(distinct) // 2)
    if k < 1:
        return none(f"{len(distinct)} training month(s) cannot hold calibration months")
    held = set(distinct[-k:])
    dates = pd.to_datetime(as_of).to_numpy()
    in_held = np.fromiter((x in held for x in m), dtype=bool, count=len(m))
    cal = train[in_held[train]]
    first = dates[cal].min()
    grow = fit[~in_held[fit] & (dates[fit] + np.timedelta64(embargo_days, "D") <= first)]
    for name, rows in (("booster's", grow), ("held-out", cal)):
        labels = y[rows]
        if not (MIN_CALIBRATION_DEFAULTS <= labels.sum() < labels.size):
            return none(
                f"the calibration {name} rows hold {int(labels.sum())} defaults in "
                f"{labels.size} rows (at least {MIN_CALIBRATION_DEFAULTS} and some "
                "non-defaults needed)"
            )
    share = grow.size / max(fit.size, 1)
    if share < MIN_CALIBRATION_GROW_SHARE:
        return none(
            f"the calibration booster would grow on {grow.size:,} rows, {share:.0%} of the "
            f"{fit.size:,} fit rows (at least {MIN_CALIBRATION_GROW_SHARE:.0%} needed to stand "
            "for the model)"
        )
    months_held = sorted(held)
    note = (
        f"calibrated on the held-out months {months_held[0]}..{months_held[-1]} "
        f"({cal.size:,} rows), scored by a booster grown on {grow.size:,} earlier fit rows "
        f"({share:.0%} of the fit rows)"
    )
    return grow, cal, tuple(months_held), note
