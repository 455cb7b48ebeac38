"""The typed values of training: the configuration that decides a model besides the data,
and what each step of `training.train.fit` hands to the next (`Prepared` -> `Grown` ->
`Calibrated`), so that `training.evaluate` can take them without importing the trainer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.catalog import Feature
from features.contract import DEFAULT_HORIZON_DAYS
from training.calibration import LogOddsCalibrator
from training.model import MasterScale, ScoreScale
from training.split import Split

Engine = Literal["pandas", "dask"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a model besides the data. Logged as the run's parameters."""

    oot_months: int = 6
    seed: int = 0
    engine: Engine = "pandas"
    scheduler: str | None = None  # dask.distributed scheduler address; None = a LocalCluster
    dask_workers: int = 2  # workers of the LocalCluster
    tune_trials: int = 0
    tune_minutes: float = 0.0  # a time budget for the search on the calibration months instead
    num_threads: int = 1  # fixed: the model depends on it; 1 is fastest on a busy machine
    boosters_at_once: int = 1  # cross-fitting and calibration boosters grown at the same time
    # (threads, pandas engine); each is grown alone all the same: no effect on the model
    max_rounds: int = 3000
    early_stopping_rounds: int = 200
    bag: int | None = None  # boosters the model averages, differing in their seed; None = by
    # the fit rows (`training.booster.bag_size`: 5 below 20,000, else 1)
    regrow: bool | None = None  # grow the model again on fit and validation SMEs with the
    # rounds early stopping chose; None = by the fit rows (`training.booster.regrows`: below
    # 20,000); True / False: always / never
    params: Mapping[str, Any] = field(default_factory=dict)  # overrides of DEFAULT_PARAMS
    scale_params: bool = True  # tree size from the fit rows and defaults (booster.scaled_params)
    benchmark: bool = True  # train the benchmark scorecard on the same split (training.scorecard)
    val_fraction: float = 0.15  # share of training SMEs for early stopping and tuning
    calibration_folds: int = 5  # cross-fitting folds of the fit SMEs (unseen-SME metrics)
    cross_fit: bool | None = None  # grow the `calibration_folds` cross-fitting boosters; None =
    # by the data (`training.train.cross_fit_for`: fewer validation SMEs than
    # `MIN_UNSEEN_VALIDATION_SMES`, no calibration months, or a regrown model); True / False:
    # always / never (False needs calibration months). No effect on the served model.
    calibration_months: int = 6  # last training months held out to calibrate (training.split)
    embargo_days: int | None = None  # training rows need as_of + embargo <= first OOT as-of;
    # None = the label horizon (leak-free: no training label window reaches the OOT period)
    horizon_days: int = DEFAULT_HORIZON_DAYS  # the panel's label horizon (stored in the bundle)
    ece_bins: int = 10
    scale: ScoreScale = field(default_factory=ScoreScale)
    master_scale: MasterScale = field(default_factory=MasterScale)
    monotonicity_rows: int = 200
    monotonicity_grid: int = 25
    explain_rows: int = 2000  # OOT rows explained for the SHAP summary and top drivers

    def __post_init__(self) -> None:
        if self.bag is not None and self.bag < 1:
            raise ValueError(f"bag must be at least 1 (or None: by the fit rows), got {self.bag}")

    @property
    def embargo(self) -> int:
        """The embargo in days: `embargo_days`, or the label horizon when not given."""
        return self.horizon_days if self.embargo_days is None else self.embargo_days

    @property
    def protocol(self) -> str:
        """One sentence saying how the OOT figures were obtained."""
        if self.embargo >= self.horizon_days:
            return (
                f"leak-free out-of-time validation: the last {self.oot_months} matured months "
                f"are OOT and every training row's {self.horizon_days}-day label window ends on "
                f"or before the first OOT as-of date (embargo {self.embargo} days)"
            )
        return (
            f"out-of-time validation WITH LABEL LEAKAGE: the last {self.oot_months} matured "
            f"months are OOT but the embargo ({self.embargo} days) is shorter than the "
            f"{self.horizon_days}-day label horizon, so training labels can record OOT outcomes"
        )

    def as_params(self) -> dict[str, Any]:
        return {
            "oot_months": self.oot_months,
            "seed": self.seed,
            "engine": self.engine,
            "tune_trials": self.tune_trials,
            "tune_minutes": self.tune_minutes,
            "scale_params": self.scale_params,
            "benchmark": self.benchmark,
            "num_threads": self.num_threads,
            "max_rounds": self.max_rounds,
            "early_stopping_rounds": self.early_stopping_rounds,
            "bag": "by fit rows" if self.bag is None else self.bag,
            "regrow": "by fit rows" if self.regrow is None else self.regrow,
            "val_fraction": self.val_fraction,
            "calibration_folds": self.calibration_folds,
            "cross_fit": "by the data" if self.cross_fit is None else self.cross_fit,
            "calibration_months": self.calibration_months,
            "embargo_days": self.embargo,
            "horizon_days": self.horizon_days,
            "ece_bins": self.ece_bins,
            "pdo": self.scale.pdo,
            "base_score": self.scale.base_score,
            "base_odds": self.scale.base_odds,
            "grades": len(self.master_scale.grades),
        }


@dataclass(frozen=True)
class Prepared:
    """The matured panel as LightGBM sees it: rows, catalog, trained categories, matrix, labels."""

    data: pd.DataFrame
    catalog: tuple[Feature, ...]
    categories: dict[str, tuple[str, ...]]
    X: np.ndarray
    y: np.ndarray
    split: Split


@dataclass(frozen=True)
class Grown:
    """The boosters' output: the model's booster and the held-out margins the other steps use."""

    booster: Any  # lightgbm.Booster: the model
    best_iteration: int  # rounds early stopping on the validation SMEs chose (fit SMEs' booster)
    val_loss: float  # that booster's validation log loss at `best_iteration`
    margin: np.ndarray  # the model's margins of every matured row (positions of `data`)
    oof: np.ndarray  # cross-fitted margins of the fit rows (empty when not cross-fitted)
    unseen: np.ndarray  # OOT margins from boosters that never saw the row's SME; NaN where
    # no such booster was grown (not cross-fitted: OOT rows of fit SMEs)
    val_margin: np.ndarray  # validation rows' margins from a booster that never saw them (the
    # early-stopping booster when the model was regrown, else the model), on the model's scale
    cal_margin: np.ndarray  # calibration rows' margins on the model's scale (empty without
    # calibration months): the calibration booster's margins plus `cal_drift`
    cal_drift: float = 0.0  # the model's start margin minus the calibration booster's: added back
    # to the fitted intercept, so the calibration carries the drift of the default rate from the
    # booster's months to the held-out months, as the model's from its months to the OOT months
    regrown: bool = False  # the model was grown again on fit and validation SMEs
    # (`training.booster.regrows`); False: the model is the early-stopping booster itself
    rounds: int = 0  # rounds of the model's booster(s): `best_iteration`, or when regrown
    # `training.booster.regrown_rounds` of it
    rows: int = 0  # rows the model grew on (fit rows, or when regrown fit and validation rows)

    @property
    def cross_fitted(self) -> bool:
        """Whether the cross-fitting boosters were grown (`oof` holds every fit row)."""
        return bool(self.oof.size)

    @property
    def unseen_rows(self) -> np.ndarray:
        """OOT rows (positions of `Split.oot`) whose SME a booster never saw: the rows the
        unseen-SME figure stands on (every OOT row when cross-fitted)."""
        return ~np.isnan(self.unseen)


@dataclass(frozen=True)
class Calibrated:
    """The log-odds calibration and what it was fitted on."""

    calibrator: LogOddsCalibrator
    by_months: bool  # False: cross-fitted SMEs (too few training months)
    rows: int
