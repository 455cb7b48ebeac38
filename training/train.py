"""Training core: a labelled feature panel -> a calibrated, monotone LightGBM scoring model and its
out-of-time evaluation. Plain functions, no MLflow (see `training.registry` for tracking).

Steps of `fit`: validate the panel against the catalog; keep matured rows; split out of time and
by SME (`training.split`); grow the booster on the fit SMEs with monotone constraints and early
stopping on the validation SMEs (optionally after an Optuna search), and on small data grow the
model again on fit and validation SMEs with the rounds so chosen (`grow`); calibrate the log-odds on
held-out training months (`training.split`: the last training months scored by a booster grown
with the same settings and rounds on the earlier months, so the calibration rows stand to their
booster as the OOT rows stand to the model); evaluate on the OOT months; verify monotonicity on
real OOT rows. Cross-fitted margins (fold k of the fit SMEs scored by a booster grown without
fold k) give the unseen-SME metrics below and the ``*_oof`` metrics, and the calibration when the
training months are too few for the held-out months. They cost K boosters (1.4 models' CPU at
K = 5), so they are grown only where they are needed (`cross_fit_for`): without them the
unseen-SME figure stands on the OOT rows of the validation SMEs and of SMEs new in the OOT
months, which the model never saw, and is read on them when these are many.

Why months and not cross-fitted SMEs: an OOT row's SME was mostly seen in training, and with no
embargo its earlier rows' label windows reach into the OOT period, so the model's OOT margins are
sharper than a cross-fitted booster's margins on unseen SMEs. On the 2,000-SME demo the
cross-fitted slope was 0.75 where the OOT called for 1.14, and the OOT ECE was 0.015; calibrated
on held-out months it was 0.0045-0.0061 over three seeds.

Besides the headline OOT metrics (the registered model on every OOT row), ``*_oot_unseen_sme``
scores each OOT row with a booster that never saw its SME (the cross-fitting boosters for fit
SMEs, whose OOT rows are left out when there are none; for validation SMEs the model, or when the
model was regrown on them the early-stopping booster, grown on the fit SMEs only; the model for
SMEs new in the OOT months; ``unseen_sme_rows`` and ``unseen_sme_smes`` say how many rows and
SMEs it stands on, ``unseen_sme_cross_fitted`` whether the fit SMEs are among them): the gap between
the two shows how much the model gains from having seen an SME's earlier rows, whose label
windows can reach into the OOT period unless an embargo (`TrainConfig.embargo_days`) separates
training and OOT. ``oot_defaults_revealed_share`` says how much of the OOT there is to gain that
way: the share of OOT default rows whose SME has a training row labelled 1, i.e. whose OOT
default the training labels already record (with the default 6 OOT months and no embargo, most
of them: every default within a year of the last training month is in a training label). The
``*_val`` figures likewise score the validation SMEs with a booster that never saw them (the
early-stopping booster when the model was regrown on them).

Products (metrics by product): an OOT row (SME, t) belongs to product P when the SME has a loan of
product P outstanding at t: ``disbursed_date <= t < maturity_date`` and not defaulted by t. A row
may belong to several products; rows with no outstanding loan form the group ``no_loan``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.catalog import FIN_PREFIX, Feature, catalog_for
from features.drift import build_profile
from features.pipeline import LABEL
from training import booster as boosting
from training.calibration import LogOddsCalibrator
from training.config import Calibrated, Grown, Prepared, Progress, TrainConfig
from training.exceptions import TrainingError
from training.model import (
    Explanation,
    ScoringModel,
    prepare_frame,
    to_matrix,
)
from training.monotone import MonotonicityReport
from training.split import CROSS_FITTED, Split, make_split
from training.thresholds import MODEL_THRESHOLDS

if TYPE_CHECKING:
    from features.contract import Tables
    from features.reference import Reference

KEYS: tuple[str, str] = ("sme_id", "as_of")
MAX_BUDGET_TRIALS = 1000
"""Most Optuna trials of a budgeted search (`TrainConfig.tune_minutes`)."""
MIN_UNSEEN_VALIDATION_SMES = 2_000
"""Validation SMEs from which the unseen-SME figure is read without cross-fitting
(`cross_fit_for`): on the validation SMEs (which the model, grown on the fit SMEs, never saw)
and on SMEs new in the OOT months. Below it the figure would rest on few SMEs (the 2,000-SME
demo has about 300 validation SMEs) and the K cross-fitting boosters add every fit SME to it; at
20,000 SMEs there are about 3,000 validation SMEs."""


@dataclass(frozen=True)
class CrossFit:
    """Whether `grow` grows the cross-fitting boosters, and why (said in the progress messages
    and the validation report)."""

    on: bool
    why: str


def cross_fit_for(cfg: TrainConfig, split: Split) -> CrossFit:
    """`TrainConfig.cross_fit`, or by the data: cross-fit when the validation SMEs are fewer than
    `MIN_UNSEEN_VALIDATION_SMES`, when there are no calibration months (the calibration then
    needs the cross-fitted margins) or when the model is regrown (small data: it saw the
    validation SMEs, so the unseen-SME figure needs the folds for the fit SMEs; they are cheap
    there). The served model does not depend on it. Raises `TrainingError` for
    ``cross_fit=False`` without calibration months (nothing else to calibrate on)."""
    folds = f"{split.folds} cross-fitting boosters"
    if not split.calibration_months:
        if cfg.cross_fit is False:
            raise TrainingError(
                "cross_fit=False needs calibration months to calibrate on, and there are none "
                f"({split.calibration_note.removesuffix(CROSS_FITTED)}): leave cross_fit unset "
                "or give more training months"
            )
        return CrossFit(True, f"{folds}: no calibration months, the calibration needs them")
    if cfg.cross_fit is not None:
        if cfg.cross_fit:
            return CrossFit(True, f"{folds}: asked for (TrainConfig.cross_fit)")
        return CrossFit(False, "no cross-fitting: asked for (TrainConfig.cross_fit=False)")
    if regrow_for(cfg, len(split.fit)):
        return CrossFit(True, f"{folds}: the model is regrown on the validation SMEs")
    if split.val_smes < MIN_UNSEEN_VALIDATION_SMES:
        return CrossFit(
            True,
            f"{folds}: {split.val_smes:,} validation SMEs, fewer than "
            f"{MIN_UNSEEN_VALIDATION_SMES:,}",
        )
    return CrossFit(
        False,
        f"no cross-fitting: {split.val_smes:,} validation SMEs (at least "
        f"{MIN_UNSEEN_VALIDATION_SMES:,}), which the model never saw",
    )


@dataclass
class TrainResult:
    """A trained model and the evidence a validator reads."""

    model: ScoringModel
    metrics: dict[str, float]
    config: TrainConfig
    split: Split
    panel: pd.DataFrame  # the matured rows (labels as 0/1), positional index
    oot: pd.DataFrame  # OOT rows: sme_id, as_of, default_12m, features, pd, score, grade (+ truth)
    grades: pd.DataFrame  # calibration by grade on OOT
    products: pd.DataFrame  # metrics by product on OOT (empty when loans are unknown)
    stability: pd.DataFrame  # per as-of month: n, default rate, mean PD, AUC, PSI
    monotonicity: MonotonicityReport
    explanation: Explanation  # a seeded sample of OOT rows
    importance: pd.DataFrame  # feature, gain, splits, mean |points| on the sample
    tuning: list[dict[str, Any]]
    lgb_params: dict[str, Any]
    panel_rows: int  # rows of the input panel, matured or not


def panel_catalog(columns: Sequence[str]) -> tuple[Feature, ...]:
    """The catalog of a panel: the static catalog plus its `fin_*` columns, restricted to the
    features present in the panel (catalog order)."""
    fin = [c[len(FIN_PREFIX) :] for c in columns if str(c).startswith(FIN_PREFIX)]
    present = set(columns)
    return tuple(f for f in catalog_for(fin) if f.name in present)


def validate_panel(
    panel: pd.DataFrame, catalog: Sequence[Feature] | None = None
) -> tuple[pd.DataFrame, tuple[Feature, ...]]:
    """Check a feature panel for training; return its matured rows (label 0/1, positional index,
    `as_of` as datetime64) and the catalog of its features. Raises `TrainingError`."""
    missing = [c for c in (*KEYS, LABEL) if c not in panel.columns]
    if LABEL in missing:
        raise TrainingError(
            f"the feature panel has no {LABEL} column: training needs labels (build the panel "
            "with `scf-risk features`, which adds them)"
        )
    if missing:
        raise TrainingError(f"the feature panel lacks the column(s) {missing}")
    if catalog is None:
        catalog = panel_catalog([str(c) for c in panel.columns])
    cat = tuple(catalog)
    known = {f.name for f in cat}
    unknown = [str(c) for c in panel.columns if c not in known and c not in (*KEYS, LABEL)]
    if unknown:
        raise TrainingError(
            f"the feature panel has column(s) the feature catalog does not know: {unknown}"
        )
    cat = tuple(f for f in cat if f.name in panel.columns)
    if not cat:
        raise TrainingError("the feature panel has no catalog feature columns")
    for f in cat:
        col = panel[f.name]
        if f.kind == "numeric" and not (pd.api.types.is_numeric_dtype(col) or col.isna().all()):
            raise TrainingError(
                f"feature {f.name}: expected a numeric column, got dtype {col.dtype}"
            )
    as_of = pd.to_datetime(panel["as_of"], errors="coerce")
    if as_of.isna().any():
        row = int(np.flatnonzero(as_of.isna().to_numpy())[0]) + 1
        raise TrainingError(f"feature panel row {row}, column as_of: not a date")
    if panel["sme_id"].isna().any():
        row = int(np.flatnonzero(panel["sme_id"].isna().to_numpy())[0]) + 1
        raise TrainingError(f"feature panel row {row}, column sme_id: empty")
    keys = pd.DataFrame({"sme_id": panel["sme_id"].astype("str"), "as_of": as_of})
    dup = keys.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0]) + 1
        raise TrainingError(
            f"feature panel row {row}: duplicate (sme_id, as_of) = "
            f"({keys['sme_id'].iloc[row - 1]}, {keys['as_of'].iloc[row - 1].date()})"
        )
    label = pd.to_numeric(panel[LABEL], errors="coerce")
    bad = label.notna() & ~label.isin([0, 1]) | (label.isna() & panel[LABEL].notna())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise TrainingError(
            f"feature panel row {row}, column {LABEL}: expected 0, 1 or empty (immature), "
            f"got {panel[LABEL].iloc[row - 1]!r}"
        )
    matured = label.notna().to_numpy()
    if not matured.any():
        raise TrainingError(
            f"the feature panel has no matured rows ({len(panel)} rows, every {LABEL} empty): "
            "the data does not reach a full horizon after any as-of date"
        )
    data = panel.loc[matured].copy()
    data["as_of"] = as_of[matured]
    data["sme_id"] = data["sme_id"].astype("str")
    data[LABEL] = label[matured].astype("int64")
    classes = sorted(set(data[LABEL]))
    if len(classes) < 2:
        raise TrainingError(
            f"the matured rows hold one class only ({LABEL} = {classes[0]} on all "
            f"{len(data)} rows): a default model needs defaults and non-defaults"
        )
    data = data.sort_values(["as_of", "sme_id"], kind="stable").reset_index(drop=True)
    return data, cat


def trained_categories(
    data: pd.DataFrame, catalog: tuple[Feature, ...]
) -> dict[str, tuple[str, ...]]:
    """The categories of each categorical feature: the sorted distinct values seen in `data`."""
    out: dict[str, tuple[str, ...]] = {}
    for f in catalog:
        if f.kind == "categorical":
            values = data[f.name].dropna().astype("str").unique()  # hashed, not iterated
            out[f.name] = tuple(sorted(str(v) for v in values))
    return out


class Steps:
    """What `fit` reports while it works. `plan(total)` is called once, as soon as the number of
    steps is known (after the split), then `say(message)` once per step: the count is declared
    here, by `fit` itself, so a progress bar never ends short or long."""

    def __init__(
        self,
        say: Progress | None = None,
        plan: Callable[[int], None] | None = None,
    ) -> None:
        self.say = say or (lambda _msg: None)
        self.plan = plan or (lambda _n: None)

    @staticmethod
    def count(cfg: TrainConfig, split: Split) -> int:
        """The messages `fit` sends: tuning (1 + one per trial), growing, regrowing on all
        training SMEs (small data: `regrow_for`), one per cross-fitting fold (or one saying
        there are none: `cross_fit_for`), the calibration booster (when there are calibration
        months), calibrating, evaluating, monotonicity, explaining."""
        tuning = cfg.tune_trials + 1 if cfg.tune_trials > 0 else int(cfg.tune_minutes > 0)
        regrow = regrow_for(cfg, len(split.fit))
        folds = split.folds if cross_fit_for(cfg, split).on else 1
        return tuning + 1 + regrow + folds + bool(split.calibration_months) + 4


def fit(
    panel: pd.DataFrame,
    catalog: Sequence[Feature] | None = None,
    config: TrainConfig | None = None,
    *,
    reference: Reference | None = None,
    truth: pd.DataFrame | None = None,
    tables: Tables | None = None,
    progress: Progress | Steps | None = None,
) -> TrainResult:
    """Train and evaluate a scoring model on a labelled panel (module docstring): prepare, choose
    the parameters, grow, calibrate, assemble the bundle, evaluate (`training.evaluate`).

    `truth` (sme_id, as_of, pd_true) adds the oracle AUC; `tables` adds metrics by product and,
    when the panel has no `static_rating_ordinal`, the static rating from `external_rating`."""
    cfg = config or TrainConfig()
    if cfg.tune_trials > 0 and cfg.tune_minutes > 0:
        raise TrainingError("give a number of tuning trials or a tuning budget, not both")
    steps = progress if isinstance(progress, Steps) else Steps(progress)
    if cfg.engine not in ("pandas", "dask"):
        raise TrainingError(f"engine must be pandas or dask, got {cfg.engine!r}")
    prep = prepare(panel, catalog, cfg)
    steps.plan(Steps.count(cfg, prep.split))
    params, search = choose_params(prep, cfg, steps)
    grown = grow(prep, params, cfg, steps, model_fit=_model_fit(search, cfg))
    calibrated = calibrate(prep, grown, steps)
    model = assemble(prep, grown, calibrated, params, cfg, reference)
    from training.evaluate import evaluate

    ev = evaluate(model, prep, grown, calibrated, cfg, truth=truth, tables=tables, say=steps.say)
    ev.metrics["bag_boosters"] = float(len(model.params["bag_seeds"]))  # logged with the run
    model.metrics = dict(ev.metrics)
    train = prep.split.train
    model.drift_profile = build_profile(prep.data.iloc[train], ev.score[train], model.catalog)
    return TrainResult(
        model=model,
        metrics=ev.metrics,
        config=cfg,
        split=prep.split,
        panel=prep.data,
        oot=ev.oot,
        grades=ev.grades,
        products=ev.products,
        stability=ev.stability,
        monotonicity=ev.monotonicity,
        explanation=ev.explanation,
        importance=ev.importance,
        tuning=search.trials if search is not None else [],
        lgb_params=params,
        panel_rows=len(panel),
    )


def prepare(panel: pd.DataFrame, catalog: Sequence[Feature] | None, cfg: TrainConfig) -> Prepared:
    """Validate the panel, split it out of time, and build LightGBM's matrix."""
    data, cat = validate_panel(panel, catalog)
    split = make_split(
        data,
        cfg.oot_months,
        cfg.seed,
        val_fraction=cfg.val_fraction,
        folds=cfg.calibration_folds,
        embargo_days=cfg.embargo,
        calibration_months=cfg.calibration_months,
    )
    categories = trained_categories(data.iloc[split.train], cat)
    X = to_matrix(prepare_frame(data[[f.name for f in cat]], cat, categories), cat)
    y = data[LABEL].to_numpy(dtype=np.float64)
    return Prepared(data, cat, categories, X, y, split)


def choose_params(
    prep: Prepared, cfg: TrainConfig, steps: Steps
) -> tuple[dict[str, Any], boosting.Search | None]:
    """LightGBM's parameters: the defaults, the tree size scaled to the fit rows and defaults
    (`scale_params`), the config's overrides, after an Optuna search on the validation SMEs
    when `tune_trials` > 0, or a search within `tune_minutes` that grows on the months before
    the calibration months and judges on them (time-respecting; the number of trials depends on
    the machine, so a budgeted model is reproducible only from its logged parameters).
    Returns (params, the search or None)."""
    X, y, split, cat = prep.X, prep.y, prep.split, prep.catalog
    search: boosting.Search | None = None
    overrides: dict[str, Any] = {}
    if cfg.scale_params:
        overrides.update(boosting.scaled_params(len(split.fit), int(y[split.fit].sum())))
    overrides.update(cfg.params)  # explicit overrides win
    base = boosting.make_params(cat, cfg.seed, cfg.num_threads, overrides)
    if cfg.tune_trials > 0:
        steps.say(f"tuning: {cfg.tune_trials} Optuna trials")
        search = boosting.tune(
            X[split.fit],
            y[split.fit],
            X[split.val],
            y[split.val],
            cat,
            base,
            n_trials=cfg.tune_trials,
            seed=cfg.seed,
            max_rounds=cfg.max_rounds,
            early_stopping_rounds=cfg.early_stopping_rounds,
            on_trial=lambda i: steps.say(f"tuning: trial {i}/{cfg.tune_trials}"),
        )
        overrides.update(search.best)
    elif cfg.tune_minutes > 0:
        # time-respecting: grow on the months before the calibration months (embargoed), judge
        # on the calibration months, as the model will be judged on the OOT months
        by_months = bool(split.calibration_months)
        grow_rows, judge_rows = (split.cal_grow, split.cal) if by_months else (split.fit, split.val)
        where = "the calibration months" if by_months else "the validation SMEs"
        steps.say(f"tuning: {cfg.tune_minutes:g} minutes of Optuna trials on {where}")
        search = boosting.tune(
            X[grow_rows],
            y[grow_rows],
            X[judge_rows],
            y[judge_rows],
            cat,
            base,
            n_trials=MAX_BUDGET_TRIALS,
            seed=cfg.seed,
            max_rounds=cfg.max_rounds,
            early_stopping_rounds=cfg.early_stopping_rounds,
            timeout_seconds=60.0 * cfg.tune_minutes,
        )
        overrides.update(search.best)
    return boosting.make_params(cat, cfg.seed, cfg.num_threads, overrides), search


def _model_fit(search: boosting.Search | None, cfg: TrainConfig) -> boosting.BoosterFit | None:
    """The model's booster when the search already grew it: a search by trials grows on the fit
    SMEs with early stopping on the validation SMEs, as `grow` does, so its best trial is the
    model (in process; the Dask engine grows its own)."""
    if search is None or cfg.tune_trials == 0 or cfg.engine != "pandas":
        return None
    return search.best_fit


def calibrate(prep: Prepared, grown: Grown, steps: Steps) -> Calibrated:
    """Fit the log-odds calibration on the held-out training months' margins (or the
    cross-fitted margins of the fit SMEs when there are no calibration months)."""
    steps.say(f"calibrating the log-odds: {prep.split.calibration_note}")
    split, y = prep.split, prep.y
    by_months = bool(split.calibration_months)
    if not by_months and not grown.cross_fitted:  # cross_fit_for never lets this happen
        raise TrainingError("no calibration months and no cross-fitted margins to calibrate on")
    cal_x, cal_y = (grown.cal_margin, y[split.cal]) if by_months else (grown.oof, y[split.fit])
    calibrator = LogOddsCalibrator().fit(cal_x, cal_y)
    if by_months:
        calibrator.shift_intercept(grown.cal_drift)
    if not calibrator.b_ > 0:
        raise TrainingError(
            f"calibration slope {calibrator.b_:.3g} is not positive: the model does not rank "
            "held-out SMEs (too little signal or data)"
        )
    return Calibrated(calibrator, by_months, len(cal_y))


def assemble(
    prep: Prepared,
    grown: Grown,
    calibrated: Calibrated,
    params: dict[str, Any],
    cfg: TrainConfig,
    reference: Reference | None,
) -> ScoringModel:
    """The model bundle (metrics and drift profile are added once evaluated)."""
    return ScoringModel(
        booster=grown.booster,
        catalog=prep.catalog,
        categories=prep.categories,
        calibration=calibrated.calibrator.calibration_,
        scale=cfg.scale,
        master_scale=cfg.master_scale,
        reference=reference,
        horizon_days=cfg.horizon_days,
        train_months=prep.split.train_months,
        oot_months=prep.split.oot_months,
        thresholds=dict(MODEL_THRESHOLDS),
        params={
            "lightgbm": {k: v for k, v in params.items()},
            "best_iteration": grown.best_iteration,
            "bag_seeds": _bag_seeds(params, bag_for(cfg, len(prep.split.fit))),
            "final_model": {  # what the served booster grew on, and for how many rounds
                "grown_on": "fit and validation SMEs" if grown.regrown else "fit SMEs",
                "regrown": grown.regrown,
                "rows": grown.rows,
                "rounds": grown.rounds,
            },
            "train": cfg.as_params(),
        },
    )


def bag_for(cfg: TrainConfig, fit_rows: int) -> int:
    """How many boosters the model averages: `TrainConfig.bag`, or by the fit rows
    (`training.booster.bag_size`)."""
    return boosting.bag_size(fit_rows) if cfg.bag is None else cfg.bag


def regrow_for(cfg: TrainConfig, fit_rows: int) -> bool:
    """Whether the model is grown again on fit and validation SMEs once early stopping has
    chosen its rounds: `TrainConfig.regrow`, or by the fit rows (`training.booster.regrows`)."""
    return boosting.regrows(fit_rows) if cfg.regrow is None else cfg.regrow


def _bag_seeds(params: dict[str, Any], bag: int) -> list[int]:
    """The seeds of the boosters the model averages (`bag_for`); one booster: its seed."""
    return boosting.bag_seeds(int(params["seed"]), bag) if bag > 1 else [int(params["seed"])]


def grow(
    prep: Prepared,
    params: dict[str, Any],
    cfg: TrainConfig,
    steps: Steps,
    model_fit: boosting.BoosterFit | None = None,
) -> Grown:
    """The model's booster (fit SMEs, early stopping on the validation SMEs; `model_fit` when
    already grown with `params`), the cross-fitted margins of the fit rows, OOT margins from
    boosters that never saw the row's SME, and the margins of the calibration rows from the
    calibration booster (empty without calibration months). The cross-fitting boosters only
    when `cross_fit_for` says so: without them `oof` is empty and the OOT rows of fit SMEs have
    no unseen margin (NaN). The fit rows are binned once; the
    other boosters grow on subsets of them, with the same bins. On small data each of these
    boosters is a bag (`training.booster.bag_size`: the mean of 5 differing in their seed, below
    20,000 fit rows), so that the calibration and cross-fitted margins stand for the model.

    On small data (`regrow_for`) the model is then grown again on all training rows, fit and
    validation SMEs (binned with the fit rows' bins), with the rounds early stopping chose
    (`training.booster.regrown_rounds`); the early-stopping booster is kept only to read the
    validation SMEs, which the model now holds: their margins (`Grown.val_margin`, the
    validation metrics) and the OOT margins of their SMEs (the unseen-SME figure) come from it,
    read on the model's scale (the model starts from all training rows' log-odds). The
    cross-fitting and calibration boosters are the same either way (fit SMEs only, never a
    validation SME), and their margins are read on the model's scale too."""
    X, y, split, catalog = prep.X, prep.y, prep.split, prep.catalog
    sme = prep.data["sme_id"].to_numpy()
    say = steps.say
    bag = bag_for(cfg, len(split.fit))  # every booster below is a bag of this many
    trainer: boosting.Trainer = (
        boosting.DaskTrainer(catalog, params, cfg.scheduler, cfg.dask_workers, bag)
        if cfg.engine == "dask"
        else boosting.LocalTrainer(catalog, params, bag)
    )
    if bag > 1:
        model_fit = None  # the search grew one booster; the model is a bag
    regrow = regrow_for(cfg, len(split.fit))
    cross = cross_fit_for(cfg, split)
    with trainer:
        grown_by = "the best trial of the search" if model_fit else f"{cfg.engine} engine"
        if bag > 1:
            grown_by += (
                f", the mean of {bag} boosters differing in their seed: fewer than "
                f"{boosting.SMALL_DATA_ROWS:,} fit rows"
            )
        say(f"training LightGBM ({grown_by}) on {len(split.fit):,} rows")
        fit_rows = trainer.rows(X[split.fit], y[split.fit])  # binned once: the folds share it
        grown = model_fit or trainer.train(
            fit_rows,
            rounds=cfg.max_rounds,
            X_val=X[split.val],
            y_val=y[split.val],
            patience=cfg.early_stopping_rounds,
        )
        model, rounds, model_rows = grown.booster, grown.best_iteration, split.fit
        if regrow:
            model_rows = split.train
            rounds = boosting.regrown_rounds(grown.best_iteration, len(split.fit), len(model_rows))
            say(
                f"regrowing the model on all {len(model_rows):,} training rows (fit and "
                f"validation SMEs): {rounds} rounds, chosen by early stopping on the validation "
                f"SMEs ({grown.best_iteration}; fewer than {boosting.SMALL_DATA_ROWS:,} fit rows)"
            )
            every = trainer.rows(X[model_rows], y[model_rows], bins=fit_rows)
            model = trainer.train(every, rounds=rounds).booster
        margin = _margins(model, X)  # every row, once: `evaluate` scores them from it
        unseen = margin[split.oot]  # a copy: the folds overwrite the rows of their SMEs
        y_fit = y[split.fit]
        start = boosting.start_margin(y[model_rows], params)  # the model's start margin
        val_margin = margin[split.val]
        oot_sme = pd.Series(sme[split.oot])  # pandas' hash-based isin (numpy's: all pairs)
        if regrow:  # the validation SMEs are in the model: read them on the booster that is not
            held_out = start - boosting.start_margin(y_fit, params)
            val_margin = _margins(grown.booster, X[split.val]) + held_out
            in_val = oot_sme.isin(set(sme[split.val])).to_numpy()
            unseen[in_val] = _margins(grown.booster, X[split.oot[in_val]]) + held_out
        if not cross.on:  # the model saw the fit SMEs: their OOT rows have no unseen margin
            say(f"unseen-SME figure: {cross.why}; on the OOT rows of the other SMEs")
            unseen[oot_sme.isin(set(sme[split.fit])).to_numpy()] = np.nan
        # the folds' boosters, then the calibration booster: subsets of the fit rows (cal_grow
        # is a subset of fit, both ascending: training.split), grown with the model's rounds
        folds = split.folds if cross.on else 0
        parts = [np.flatnonzero(split.fold != k) for k in range(folds)]
        if split.calibration_months:
            parts.append(np.searchsorted(split.fit, split.cal_grow))
        # Each booster starts from its own rows' log-odds (boost_from_average); its margins
        # are read on the model's scale by adding the difference of the starts, so that the
        # calibration slope b scales what the trees learned, not the difference of the starts
        # (which `calibrate` adds back to the intercept once, as the drift of the default rate).
        # Unshifted, a slope of 8.7 turned a start difference of 0.16 into 1.4 log-odds.
        shift = [start - boosting.start_margin(y_fit[rows], params) for rows in parts]
        boosters = trainer.train_each(
            [fit_rows.subset(rows) for rows in parts],
            rounds=grown.best_iteration,
            at_once=cfg.boosters_at_once,
        )
        oof = np.empty(len(split.fit) if cross.on else 0)
        for k, fold_fit in zip(range(folds), boosters, strict=False):  # then calibration
            why = f" ({cross.why})" if k == 0 else ""
            say(f"cross-fitting: fold {k + 1}/{split.folds}{why}")
            held = split.fold == k
            oof[held] = _margins(fold_fit.booster, X[split.fit[held]]) + shift[k]
            in_fold = oot_sme.isin(set(sme[split.fit[held]])).to_numpy()
            unseen[in_fold] = _margins(fold_fit.booster, X[split.oot[in_fold]]) + shift[k]
        cal_margin = np.empty(0)
        if split.calibration_months:
            say(f"calibration booster: months before {split.calibration_months[0]}")
            cal_booster = next(boosters).booster
            cal_margin = _margins(cal_booster, X[split.cal]) + shift[-1]
    return Grown(
        booster=model,
        best_iteration=grown.best_iteration,
        val_loss=grown.val_loss,
        margin=margin,
        oof=oof,
        unseen=unseen,
        val_margin=val_margin,
        cal_margin=cal_margin,
        cal_drift=shift[-1] if split.calibration_months else 0.0,
        regrown=regrow,
        rounds=rounds,
        rows=len(model_rows),
    )


def _margins(booster: Any, X: np.ndarray) -> np.ndarray:
    """A booster's raw margins (log-odds before calibration) of the rows of X: bit for bit
    ``booster.predict(X, raw_score=True)``, about 3 times faster (`training.margins`)."""
    from training.margins import margins  # numba: imported when first used

    return margins(booster, X)


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """sha256 of a frame's column names, dtypes and values (row order matters)."""
    h = hashlib.sha256()
    h.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def fingerprint_files(paths: Sequence[Path]) -> str:
    """sha256 over files' names and bytes, in name order."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()
