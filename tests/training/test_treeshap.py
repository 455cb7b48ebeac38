"""The numba TreeSHAP engine equals LightGBM's pred_contrib (and raw margin) to 1e-9.

Many small random boosters (seeded): numerical and categorical splits, NaN / zero / None missing
types, default-left either way, deep and shallow trees, one tree, single-leaf trees; rows with
NaN, zeros, values on the thresholds, tiny values, infinities, negative, fractional and unseen
category codes."""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from training.model import ScoringModel
from training.treeshap import PARALLEL_TURN, TreeShap

TOL = 1e-9
N_FEATURES = 8
CATEGORICAL = (0, 1)  # 6 and 40 levels: one-hot and many-vs-many categorical splits


def _training_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, N_FEATURES))
    X[:, 0] = rng.integers(0, 6, n)
    X[:, 1] = rng.integers(0, 40, n)
    X[:, 2] = np.round(X[:, 2], 1)  # ties and repeated values
    X[:, 3][rng.random(n) < 0.4] = 0.0  # many zeros (zero_as_missing)
    X[rng.random(X.shape) < rng.uniform(0.0, 0.25)] = np.nan
    signal = (
        np.nan_to_num(X[:, 2:6]) @ rng.normal(size=4)
        + np.where(np.isnan(X[:, 4]), 1.0, 0.0)
        + 0.8 * (np.nan_to_num(X[:, 1]) % 3)
        + 0.5 * (X[:, 0] == 2)
    )
    y = (signal + rng.normal(size=n) > np.median(signal)).astype(np.float64)
    return X, y


def _thresholds(booster: lgb.Booster) -> dict[int, list[float]]:
    found: dict[int, list[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_index" in node:
            if node["decision_type"] == "<=":
                found.setdefault(int(node["split_feature"]), []).append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return found


def _rows(rng: np.random.Generator, booster: lgb.Booster, n: int) -> np.ndarray:
    """Rows far and wide: also exactly on (and next to) the split thresholds, tiny values,
    infinities, negative / fractional / unseen category codes, NaN."""
    X = rng.normal(scale=1.5, size=(n, N_FEATURES))
    X[:, 0] = rng.integers(-2, 9, n) + np.where(rng.random(n) < 0.2, rng.uniform(-0.9, 0.9, n), 0)
    X[:, 1] = rng.integers(-3, 70, n).astype(float)
    X[rng.random(n) < 0.02, 1] = 3e9  # beyond int32
    for j, values in _thresholds(booster).items():
        pick = rng.random(n) < 0.3
        on = rng.choice(values, size=n)
        X[pick, j] = np.where(rng.random(pick.sum()) < 0.5, on[pick], np.nextafter(on[pick], 9))
    special = np.array([0.0, -0.0, 1e-40, -1e-40, 1e-30, np.inf, -np.inf, np.nan])
    where = rng.random(X.shape) < 0.08
    X[where] = rng.choice(special, size=where.sum())
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


def _params(rng: np.random.Generator, case: int) -> tuple[dict[str, Any], int]:
    params: dict[str, Any] = {
        "objective": "binary",
        "verbose": -1,
        "num_threads": 1,
        "seed": case,
        "deterministic": True,
        "num_leaves": int(rng.choice([2, 3, 7, 15, 31, 63, 65, 80])),
        "max_depth": int(rng.choice([-1, -1, 2, 4, 8])),
        "learning_rate": float(rng.choice([0.03, 0.1, 0.5, 1.0])),
        "min_data_in_leaf": int(rng.choice([1, 5, 20])),
        "min_data_per_group": int(rng.choice([1, 10])),
        "cat_smooth": float(rng.choice([0.1, 10.0])),
        "max_cat_to_onehot": int(rng.choice([4, 64])),
        "zero_as_missing": bool(case % 3 == 1),
        "use_missing": bool(case % 5 != 4),
        "feature_fraction": float(rng.choice([0.5, 1.0])),
        "bagging_fraction": float(rng.choice([0.7, 1.0])),
        "bagging_freq": 1,
        "min_sum_hessian_in_leaf": 1e-3,
    }
    rounds = int(rng.choice([1, 2, 10, 30]))
    return params, rounds


def _dump_stats(booster: lgb.Booster, seen: Counter[str]) -> None:
    def walk(node: dict[str, Any]) -> None:
        if "split_index" not in node:
            return
        if node["decision_type"] == "==":
            cats = str(node["threshold"]).split("||")
            seen["categorical one" if len(cats) == 1 else "categorical many"] += 1
        else:
            seen[f"missing {node['missing_type']}"] += 1
            seen[f"default_left {node['default_left']}"] += 1
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        if "split_index" not in tree["tree_structure"]:
            seen["single-leaf tree"] += 1
        walk(tree["tree_structure"])


def _assert_exact(booster: lgb.Booster, engine: TreeShap, X: np.ndarray) -> None:
    k = booster.num_feature()
    ref = booster.predict(X, pred_contrib=True)
    phi, phi0 = engine.shap_values(X)
    assert phi.shape == (len(X), k) and phi0.shape == (len(X),)
    np.testing.assert_allclose(phi, ref[:, :k], rtol=0, atol=TOL)
    np.testing.assert_allclose(phi0, ref[:, k], rtol=0, atol=TOL)
    margin = booster.predict(X, raw_score=True)
    np.testing.assert_allclose(engine.margin(X), margin, rtol=0, atol=TOL)
    np.testing.assert_allclose(phi.sum(axis=1) + phi0, margin, rtol=0, atol=TOL)
    _assert_one_pass_exact(engine, X)
    _assert_varied_exact(engine, X)


def _assert_one_pass_exact(engine: TreeShap, X: np.ndarray) -> None:
    """`explain` (SHAP values, margin and leaf values in one pass) gives bit for bit what
    `shap_values` and `margin` give, and leaf values whose sum in tree order is that margin."""
    phi, phi0, margin, leaves = engine.explain(X, leaves=True)
    alone = engine.shap_values(X)
    assert phi.tobytes() == alone[0].tobytes() and phi0.tobytes() == alone[1].tobytes()
    assert margin.tobytes() == engine.margin(X).tobytes()
    assert leaves is not None and leaves.shape == (len(X), engine.num_trees)
    summed = np.zeros(len(X))
    for t in range(engine.num_trees):
        summed += leaves[:, t]
    assert summed.tobytes() == margin.tobytes()
    assert engine.explain(X)[3] is None
    assert engine.explain(X)[2].tobytes() == margin.tobytes()


def _assert_varied_exact(engine: TreeShap, X: np.ndarray) -> None:
    """`margin_varied` is bit for bit `margin` of the rows built out: probes in runs of one row
    and alone, each column, in runs of one column (1 to 6 probes: summed side by side up to
    4) and not, values taken from other rows (NaN, zeros, thresholds, infinities, unseen
    categories)."""
    rng = np.random.default_rng(len(X))
    n = 4 * len(X)
    rows = np.sort(rng.integers(0, len(X), n))
    rows[::7] = rng.integers(0, len(X), len(rows[::7]))  # some probes out of their run
    cols = rng.integers(0, X.shape[1], n)
    runs = np.repeat(rng.integers(0, X.shape[1], n), rng.integers(1, 7, n))[: n // 2]
    cols[: len(runs)] = runs  # the first half in runs of one column
    values = X[rng.integers(0, len(X), n), cols]
    built = X[rows].copy()
    built[np.arange(n), cols] = values
    varied = engine.margin_varied(X, rows, cols, values)
    np.testing.assert_array_equal(varied, engine.margin(built))
    leaves = engine.explain(X, leaves=True)[3]
    given = engine.margin_varied(X, rows, cols, values, leaves=leaves)
    assert given.tobytes() == varied.tobytes()  # the base read from `explain`'s leaves


def test_equals_pred_contrib_on_many_random_models() -> None:
    rng = np.random.default_rng(20261129)
    seen: Counter[str] = Counter()
    cases = 60
    for case in range(cases):
        params, rounds = _params(rng, case)
        X, y = _training_data(rng, int(rng.choice([200, 800])))
        data = lgb.Dataset(X, y, categorical_feature=list(CATEGORICAL), free_raw_data=False)
        booster = lgb.train(params, data, num_boost_round=rounds)
        _dump_stats(booster, seen)
        # precomputed tables: none (every leaf's weights per row), all, or as many as fit
        budget = (0, 4_000_000, 5_000)[case % 3]
        engine = TreeShap.from_booster(booster, table_budget=budget)
        trees = engine._f.trees
        grouped = trees[:, 5] > trees[:, 4]  # group end > group start: tabulated leaf groups
        seen["grouped tree"] += int(grouped.sum())
        seen["per-leaf tree"] += int((~grouped & (trees[:, 1] > trees[:, 0])).sum())
        _assert_exact(booster, engine, _rows(rng, booster, 300))
    # the cases really exercised what they are meant to
    for kind in (
        "missing None",
        "missing Zero",
        "missing NaN",
        "default_left True",
        "default_left False",
        "categorical one",
        "categorical many",
        "grouped tree",
        "per-leaf tree",
    ):
        assert seen[kind] > 0, (kind, seen)


def test_single_leaf_trees_and_one_tree() -> None:
    rng = np.random.default_rng(3)
    X, y = _training_data(rng, 300)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 20}
    # no split is possible on 15 rows: a single-leaf tree (holding the init score)
    big = lgb.Dataset(X, y, categorical_feature=list(CATEGORICAL), free_raw_data=False)
    small = lgb.Dataset(X[:15], y[:15], reference=big)
    constant = lgb.train(params, small, num_boost_round=3)
    seen: Counter[str] = Counter()
    _dump_stats(constant, seen)
    assert constant.num_trees() == 1 and seen["single-leaf tree"] == 1
    engine = TreeShap.from_booster(constant)
    phi, _ = engine.shap_values(_rows(rng, constant, 50))
    assert not phi.any()
    _assert_exact(constant, engine, _rows(rng, constant, 50))

    # a single-leaf first tree followed by split trees (training resumed on more rows)
    mixed = lgb.Booster(params, small)
    mixed.update()
    mixed.update(train_set=big)
    mixed.update(train_set=big)
    seen.clear()
    _dump_stats(mixed, seen)
    assert mixed.num_trees() == 3 and seen["single-leaf tree"] == 1
    _assert_exact(mixed, TreeShap.from_booster(mixed), _rows(rng, mixed, 200))

    one = lgb.train({**params, "min_data_in_leaf": 5}, big, num_boost_round=1)
    assert one.num_trees() == 1
    _assert_exact(one, TreeShap.from_booster(one), _rows(rng, one, 200))


def test_uses_the_best_iteration_as_predict_does() -> None:
    rng = np.random.default_rng(4)
    X, y = _training_data(rng, 600)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "learning_rate": 0.5}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=list(CATEGORICAL)), 12)
    booster.best_iteration = 5  # as early stopping leaves it: predict uses 5 trees by default
    rows = _rows(rng, booster, 200)
    full = booster.predict(rows, raw_score=True, num_iteration=12)
    assert np.abs(full - booster.predict(rows, raw_score=True)).max() > 1e-3
    engine = TreeShap.from_booster(booster)
    assert engine.num_trees == 5
    _assert_exact(booster, engine, rows)


def test_threads_and_input_checks() -> None:
    rng = np.random.default_rng(5)
    X, y = _training_data(rng, 800)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 15}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[0, 1]), 20)
    serial = TreeShap.from_booster(booster)
    parallel = TreeShap.from_booster(booster, threads=2)
    rows = _rows(rng, booster, 600)  # above PARALLEL_MIN_ROWS
    a, b = serial.shap_values(rows), parallel.shap_values(rows)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(serial.margin(rows), parallel.margin(rows))
    probes = np.arange(len(rows))
    cols = probes % N_FEATURES
    np.testing.assert_array_equal(
        serial.margin_varied(rows, probes, cols, rows[::-1, 0]),
        parallel.margin_varied(rows, probes, cols, rows[::-1, 0]),
    )
    _assert_exact(booster, parallel, rows)
    # non-contiguous and float32 input are read as LightGBM reads them
    _assert_exact(booster, serial, np.asfortranarray(rows))
    empty = serial.shap_values(np.empty((0, N_FEATURES)))
    assert empty[0].shape == (0, N_FEATURES) and empty[1].shape == (0,)
    with pytest.raises(ValueError, match="feature columns"):
        serial.shap_values(np.zeros((2, N_FEATURES + 1)))
    with pytest.raises(ValueError, match="threads"):
        TreeShap.from_booster(booster, threads=0)
    with pytest.raises(ValueError, match="outside the matrix"):
        serial.margin_varied(rows, np.array([len(rows)]), np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="one length"):
        serial.margin_varied(rows, np.array([0, 1]), np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="leaves must be"):
        serial.margin_varied(rows, probes, cols, rows[:, 0], leaves=np.zeros((2, 20)))
    np.testing.assert_array_equal(
        serial.explain(rows, leaves=True)[3], parallel.explain(rows, leaves=True)[3]
    )
    assert serial.warm_up() >= 0


@pytest.mark.parametrize("call", ["shap_values", "margin", "margin_varied", "warm_up"])
def test_parallel_launches_take_turns_across_the_process(call: str) -> None:
    """Every parallel kernel launch, of any `TreeShap` in the process (a reload's warm-up
    included), waits while another thread holds `PARALLEL_TURN`: numba's workqueue layer
    aborts on concurrent launches. Serial calls do not wait."""
    rng = np.random.default_rng(7)
    X, y = _training_data(rng, 400)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 7}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[0, 1]), 5)
    parallel, serial = TreeShap.from_booster(booster, threads=2), TreeShap.from_booster(booster)
    parallel.warm_up()
    rows = _rows(rng, booster, 300)  # above PARALLEL_MIN_ROWS
    probes = np.arange(len(rows))
    calls = {
        "shap_values": lambda e: e.shap_values(rows),
        "margin": lambda e: e.margin(rows),
        "margin_varied": lambda e: e.margin_varied(rows, probes, probes % N_FEATURES, rows[:, 2]),
        "warm_up": lambda e: e.warm_up(),
    }
    done = threading.Event()
    launch = threading.Thread(target=lambda: (calls[call](parallel), done.set()))
    with PARALLEL_TURN:
        launch.start()
        assert not done.wait(0.5)  # it waits for the turn ...
        calls[call](serial)  # ... which a serial call does not need
        assert not done.is_set()
    assert done.wait(60)  # ... and runs once the turn is free
    launch.join()


def test_rejects_multiclass_and_linear_trees() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 3))
    y = rng.integers(0, 3, 300)
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y), 2)
    with pytest.raises(ValueError, match="single-output"):
        TreeShap.from_booster(booster)
    linear = {"objective": "binary", "linear_tree": True, "verbose": -1, "num_threads": 1}
    booster = lgb.train(linear, lgb.Dataset(X, (y > 0).astype(float)), 2)
    with pytest.raises(ValueError, match="linear trees"):
        TreeShap.from_booster(booster)


def test_scoring_model_fast_method(trained) -> None:
    from .test_model import _random_rows

    model: ScoringModel = trained.model
    X = _random_rows(2000, seed=11)
    a = model.explain(X, method="pred_contrib")
    b = model.explain(X, method="fast")
    assert np.abs(a.shap_values - b.shap_values).max() < TOL
    assert np.abs(a.point_values - b.point_values).max() < 1e-6
    assert np.abs(a.base_points - b.base_points).max() < 1e-6
    assert np.abs(a.score - b.score).max() < 1e-6
    assert list(a.grade) == list(b.grade)
    total = b.base_points + b.point_values.sum(axis=1)
    assert np.abs(total - b.score).max() < 1e-6
    records = X.head(3).to_dict("records")
    c = model.explain_records(records, method="fast")
    np.testing.assert_allclose(c.point_values, b.point_values[:3], rtol=0, atol=1e-9)
    # built once, and not pickled
    engine = model.treeshap()
    assert model.treeshap() is engine
    back = pickle.loads(pickle.dumps(model))
    assert back._treeshap is None
    d = back.explain(X, method="fast")
    np.testing.assert_array_equal(d.shap_values, b.shap_values)
