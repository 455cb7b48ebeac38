"""The Dask engine (LightGBM's DaskLGBMClassifier on a 2-worker LocalCluster) matches pandas."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.support.panels import CATALOG, make_panel
from training.booster import best_iteration_by_patience
from training.train import TrainConfig, fit


def test_early_stopping_rule() -> None:
    losses = np.array([5, 4, 3, 3.5, 3.2, 3.1, 2.9, 3.0, 3.0, 3.0, 3.0])
    assert best_iteration_by_patience(losses, patience=3) == 3  # stops before the later dip
    assert best_iteration_by_patience(losses, patience=5) == 7
    assert best_iteration_by_patience(np.array([1.0, 2.0]), patience=10) == 1


def test_dask_engine_matches_pandas_auc() -> None:
    panel, _ = make_panel(n_smes=300, n_months=18, seed=21)
    common: dict[str, Any] = {
        "seed": 4,
        "calibration_folds": 2,
        "max_rounds": 250,
        "early_stopping_rounds": 30,
        "embargo_days": 0,  # engine parity on a short panel, not the protocol
    }
    local = fit(panel, CATALOG, TrainConfig(engine="pandas", **common))
    distributed = fit(panel, CATALOG, TrainConfig(engine="dask", dask_workers=2, **common))
    assert abs(distributed.metrics["auc_oot"] - local.metrics["auc_oot"]) < 0.01
    assert distributed.monotonicity.ok
    assert distributed.model.params["train"]["engine"] == "dask"
