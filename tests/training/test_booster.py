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


def test_subsets_grow_as_on_the_raw_rows_without_copying_them() -> None:
    """A subset of a subset holds the right rows (labels now, the matrix when an engine asks),
    the binned Dataset frees its raw matrix, and a booster grown on the subset is the one
    LightGBM grows on a subset of a Dataset that kept its raw rows, byte for byte."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, 1))
    y = (rng.random(600) < 1 / (1 + np.exp(-2 * X[:, 0]))).astype(np.float64)
    trainer = LocalTrainer(CATALOG, PARAMS)
    rows = trainer.rows(X, y)
    first = np.flatnonzero(X[:, 0] > -1.0)
    second = np.arange(0, first.size, 3)
    sub = rows.subset(first).subset(second)
    grown = trainer.train(sub, rounds=5).booster
    kept = lgb.Dataset(X, y, feature_name=["x"], params=PARAMS, free_raw_data=False)
    expected = lgb.train(PARAMS, kept.subset(first.tolist()).subset(second.tolist()), 5)
    assert grown.model_to_string() == expected.model_to_string()
    assert rows.dataset is not None and rows.dataset.data is None  # freed once binned
    np.testing.assert_array_equal(sub.y, y[first][second])
    np.testing.assert_array_equal(sub.X, X[first][second])
