"""`training.margins.Margins` gives booster.predict's raw margins bit for bit."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from training.margins import MAX_LEAVES, Margins, margins


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Numeric columns with NaN, exact zeros and values within 1e-35 of zero, a column of
    ties, and a categorical column (codes 0-39, NaN)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.uniform(-1, 1, n),
            rng.integers(0, 5, n).astype(float),  # ties: thresholds between integers
            rng.integers(0, 40, n).astype(float),  # categorical codes
            rng.exponential(size=n),
        ]
    )
    X[rng.random(n) < 0.15, 0] = np.nan
    X[rng.random(n) < 0.2, 1] = 0.0
    X[rng.random(n) < 0.05, 1] = 1e-36  # read as 0 by LightGBM
    X[rng.random(n) < 0.1, 3] = np.nan
    X[rng.random(n) < 0.1, 4] = np.nan
    logit = (
        np.nan_to_num(X[:, 0]) - 2 * X[:, 1] + 0.3 * X[:, 2] + np.sin(X[:, 3]) - np.isnan(X[:, 4])
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return X, y


def _probes(X: np.ndarray, booster: lgb.Booster) -> np.ndarray:
    """The rows, then rows with a column set to NaN, 0, 1e-36, -1e-36, -0.0, a negative or a
    huge categorical code, and to every numeric threshold of the booster, one ulp either side,
    and its float32 rounding (a split's own value: the side a row on it takes)."""
    out = [X]
    for value in (np.nan, 0.0, 1e-36, -1e-36, -0.0, -1.0, -0.5, 3e9, 1e300, -np.inf, np.inf):
        for j in range(X.shape[1]):
            moved = X[:200].copy()
            moved[:, j] = value
            out.append(moved)
    for j, t in _thresholds(booster):
        with np.errstate(over="ignore"):  # a threshold beyond float32's range rounds to inf
            rounded = float(np.float32(t))
        for value in {t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf), rounded}:
            moved = X[:8].copy()
            moved[:, j] = value
            out.append(moved)
    return np.vstack(out)


def _thresholds(booster: lgb.Booster) -> set[tuple[int, float]]:
    """(feature, threshold) of every numeric split in the booster's model text."""
    found: set[tuple[int, float]] = set()
    for tree in booster.dump_model()["tree_info"]:
        nodes = [tree["tree_structure"]]
        while nodes:
            node = nodes.pop()
            if "split_feature" in node:
                if node["decision_type"] != "==":
                    found.add((node["split_feature"], float(node["threshold"])))
                nodes += [node["left_child"], node["right_child"]]
    return found


def _split_kinds(booster: lgb.Booster) -> set[str]:
    """The kinds of split in a booster: categorical, and numeric by missing type."""
    kinds = set()
    for line in booster.model_to_string().splitlines():
        if line.startswith("decision_type="):
            for d in map(int, line.split("=")[1].split()):
                kinds.add("categorical" if d & 1 else ("None", "Zero", "NaN")[(d >> 2) & 3])
    return kinds


@pytest.mark.parametrize(
    ("extra", "kinds"),
    [
        ({}, {"categorical", "None", "NaN"}),  # missing values as NaN (the project's setting)
        ({"zero_as_missing": True}, {"categorical", "Zero"}),
        ({"use_missing": False}, {"categorical", "None"}),
        ({"num_leaves": MAX_LEAVES, "min_data_in_leaf": 5}, {"categorical"}),  # a full mask
        ({"max_depth": 2, "num_leaves": 3}, set()),
    ],
)
def test_margins_equal_predict_bit_for_bit(extra: dict[str, object], kinds: set[str]) -> None:
    X, y = _data()
    params = {"objective": "binary", "verbose": -1, "seed": 0, "num_threads": 1, **extra}
    data = lgb.Dataset(X, y, categorical_feature=[3])
    booster = lgb.train(params, data, num_boost_round=40)
    assert kinds <= _split_kinds(booster)  # the rules under test are in the trees
    probes = _probes(X, booster)
    assert len(probes) > len(X) + 11 * 200 * X.shape[1]  # the thresholds are probed
    expected = np.asarray(booster.predict(probes, raw_score=True), np.float64)
    got = Margins.from_booster(booster).margin(probes)
    assert got.tobytes() == expected.tobytes()
    assert margins(booster, probes).tobytes() == expected.tobytes()


def test_truncated_and_single_leaf_trees() -> None:
    """A booster cut at an iteration (its model text keeps only those trees) and trees of one
    leaf (no split: a constant label)."""
    X, y = _data(500)
    params = {"objective": "binary", "verbose": -1, "seed": 0, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=30)
    cut = lgb.Booster(model_str=booster.model_to_string(num_iteration=7))
    expected = np.asarray(cut.predict(X, raw_score=True), np.float64)
    assert Margins.from_booster(cut).margin(X).tobytes() == expected.tobytes()
    flat = lgb.train(
        {"objective": "regression", "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, np.full(len(X), 0.25)),
        num_boost_round=3,
    )
    expected = np.asarray(flat.predict(X, raw_score=True), np.float64)
    assert Margins.from_booster(flat).margin(X).tobytes() == expected.tobytes()


def test_a_tree_too_large_for_a_mask_falls_back_to_lightgbm() -> None:
    X, y = _data(6000)
    params = {
        "objective": "binary",
        "verbose": -1,
        "num_threads": 1,
        "num_leaves": MAX_LEAVES + 16,
        "min_data_in_leaf": 2,
    }
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=2)
    assert max(t["num_leaves"] for t in booster.dump_model()["tree_info"]) > MAX_LEAVES
    with pytest.raises(ValueError, match="more than 64 leaves"):
        Margins.from_booster(booster)
    expected = np.asarray(booster.predict(X, raw_score=True), np.float64)
    assert margins(booster, X).tobytes() == expected.tobytes()


def test_the_matrix_width_is_checked() -> None:
    X, y = _data(500)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 3)
    with pytest.raises(ValueError, match="5 feature columns"):
        Margins.from_booster(booster).margin(X[:, :4])
