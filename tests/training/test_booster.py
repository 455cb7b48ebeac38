"""The engines' training rows: binned once, shared by the boosters grown on their subsets."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from features.catalog import Feature
from training.booster import LocalTrainer, start_margin

PARAMS = {
    "objective": "binary",
    "num_leaves": 2,
    "min_data_in_leaf": 5,
    "min_data_in_bin": 1,
    "verbose": -1,
    "seed": 0,
    "num_threads": 1,
}
CATALOG = (Feature("x", "test", "a numeric feature", "", 1),)


def _threshold(X: np.ndarray, y: np.ndarray, part: np.ndarray) -> float:
    """The one split of a stump grown on the rows `part` of (X, y)."""
    trainer = LocalTrainer(CATALOG, PARAMS)
    rows = trainer.rows(X, y).subset(part)
    booster = trainer.train(rows, rounds=1).booster
    return float(booster.dump_model()["tree_info"][0]["tree_structure"]["threshold"])


def test_a_subset_grows_with_the_bins_of_its_rows() -> None:
    """x takes the 11 values 1, 1.1, ..., 2 over all rows, only 1 and 2 on the subset: with the
    rows' bins the split lies midway between two neighbouring values of all rows (1.05, 1.15,
    ..., 1.95), with bins of its own midway between 1 and 2."""
    X = np.repeat(np.linspace(1.0, 2.0, 11), 20)[:, None]
    y = (X[:, 0] > 1.5).astype(np.float64)
    part = np.flatnonzero((X[:, 0] == 1.0) | (X[:, 0] == 2.0))
    shared = _threshold(X, y, part)
    assert shared == pytest.approx(round(shared - 0.05, 1) + 0.05)
    assert _threshold(X[part], y[part], np.arange(part.size)) == pytest.approx(1.5)


def test_start_margin_is_where_a_binary_booster_starts() -> None:
    """A booster whose trees add (almost) nothing predicts its start margin on every row."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2_000, 3))
    for rate in (0.02, 0.3):
        y = (rng.random(2_000) < rate).astype(float)
        params = {"objective": "binary", "learning_rate": 1e-12, "verbose": -1, "seed": 1}
        booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=3)
        margin = booster.predict(X, raw_score=True)
        np.testing.assert_allclose(margin, start_margin(y, params), atol=1e-9)
    assert start_margin(y, {"boost_from_average": False}) == 0.0
