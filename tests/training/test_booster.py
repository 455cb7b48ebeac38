"""The engines' training rows: binned once, shared by the boosters grown on their subsets; the
bag of boosters grown on small data."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from features.catalog import Feature
from training import booster
from training.booster import (
    BAG,
    SMALL_DATA_ROWS,
    LocalTrainer,
    bag_seeds,
    bag_size,
    best_iteration_by_patience,
    regrown_rounds,
    regrows,
    start_margin,
)
from training.metrics import log_loss

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


def _bag_data(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(1_500, 1))
    y = (rng.random(1_500) < 1 / (1 + np.exp(-1.5 * X[:, 0]))).astype(np.float64)
    return X, y


BAGGED = {**PARAMS, "num_leaves": 4, "bagging_fraction": 0.7, "bagging_freq": 1, "seed": 5}


def test_small_data_is_grown_as_a_bag_by_fit_rows() -> None:
    assert bag_size(SMALL_DATA_ROWS - 1) == BAG > 1
    assert bag_size(SMALL_DATA_ROWS) == 1
    seeds = bag_seeds(5, BAG)
    assert seeds == bag_seeds(5, BAG) and len(set(seeds)) == BAG
    assert not set(seeds) & set(bag_seeds(6, BAG))  # bags of other seeds share no booster
    with pytest.raises(ValueError, match="at least one booster"):
        LocalTrainer(CATALOG, PARAMS, bag=0)


def test_a_bag_is_the_mean_of_its_boosters_and_reproducible() -> None:
    """One booster whose margin is the mean of the bag's boosters (grown with `bag_seeds`), whose
    contributions add up to it, the same when grown again."""
    X, y = _bag_data()
    trainer = LocalTrainer(CATALOG, BAGGED, bag=3)
    fit = trainer.train(trainer.rows(X, y), rounds=20)
    members = [
        lgb.train({**BAGGED, "seed": s}, lgb.Dataset(X, y, params=BAGGED), 20)
        for s in bag_seeds(5, 3)
    ]
    mean = np.mean([b.predict(X, raw_score=True) for b in members], axis=0)
    margin = fit.booster.predict(X, raw_score=True)
    np.testing.assert_allclose(margin, mean, rtol=0, atol=1e-12)
    assert np.ptp(mean - members[0].predict(X, raw_score=True)) > 1e-3  # the seeds differ
    assert fit.best_iteration == 20 and fit.booster.num_trees() == 60
    contributions = np.asarray(fit.booster.predict(X, pred_contrib=True))
    np.testing.assert_allclose(contributions.sum(axis=1), margin, rtol=0, atol=1e-12)
    again = LocalTrainer(CATALOG, BAGGED, bag=3)
    assert again.train(again.rows(X, y), rounds=20).booster.model_to_string() == (
        fit.booster.model_to_string()
    )


def test_a_bag_stops_early_on_the_loss_of_its_mean() -> None:
    """The rounds of a bag with a validation set: the best iteration of the mean margin's
    validation loss (by `patience`), recomputed here one iteration at a time."""
    X, y = _bag_data()
    Xv, yv = _bag_data(seed=4)
    params = {**BAGGED, "learning_rate": 0.3}
    trainer = LocalTrainer(CATALOG, params, bag=3)
    fit = trainer.train(trainer.rows(X, y), rounds=400, X_val=Xv, y_val=yv, patience=15)
    members = []
    for s in bag_seeds(5, 3):
        data = lgb.Dataset(X, y, params=params)
        valid = lgb.Dataset(Xv, yv, reference=data)
        stop = lgb.early_stopping(15, verbose=False)
        members.append(
            lgb.train(
                {**params, "seed": s},
                data,
                400,
                valid_sets=[valid],
                callbacks=[stop],
                keep_training_booster=True,
            )
        )
    n = min(b.current_iteration() for b in members)
    losses = []
    for i in range(1, n + 1):
        mean = np.mean([b.predict(Xv, raw_score=True, num_iteration=i) for b in members], 0)
        losses.append(log_loss(yv, 1 / (1 + np.exp(-mean))))
    best = best_iteration_by_patience(np.array(losses), 15)
    assert 1 < best < n  # it stopped early
    assert fit.best_iteration == best
    assert fit.val_loss == pytest.approx(losses[best - 1], abs=1e-12)
    mean = np.mean([b.predict(Xv, raw_score=True, num_iteration=best) for b in members], 0)
    np.testing.assert_allclose(fit.booster.predict(Xv, raw_score=True), mean, atol=1e-12)


def test_rows_binned_with_other_rows_bins() -> None:
    """Rows given `bins` split where a booster grown on those rows can: x takes 11 values on the
    rows, only 1 and 2 on the rows whose bins they take, so the one split is midway (1.5)."""
    X = np.repeat(np.linspace(1.0, 2.0, 11), 20)[:, None]
    y = (X[:, 0] > 1.55).astype(np.float64)
    ends = np.flatnonzero((X[:, 0] == 1.0) | (X[:, 0] == 2.0))
    trainer = LocalTrainer(CATALOG, PARAMS)

    def threshold(rows) -> float:  # type: ignore[no-untyped-def]
        booster = trainer.train(rows, rounds=1).booster
        return float(booster.dump_model()["tree_info"][0]["tree_structure"]["threshold"])

    assert threshold(trainer.rows(X, y)) == pytest.approx(1.55)  # its own bins
    assert threshold(trainer.rows(X, y, bins=trainer.rows(X[ends], y[ends]))) == pytest.approx(1.5)


def test_regrowing_is_for_small_data() -> None:
    assert regrows(SMALL_DATA_ROWS - 1) and not regrows(SMALL_DATA_ROWS)
    assert regrown_rounds(200, 850, 1000) == (235 if booster.REGROW_SCALES_ROUNDS else 200)
