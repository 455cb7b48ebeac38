"""The monotonicity check catches violations."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np

from features.catalog import get_feature
from training.monotone import check_monotonicity, monotone_constraints

UP = get_feature("dso_90d")  # direction +1
DOWN = get_feature("payment_index_365d")  # direction -1
FREE = get_feature("sales_amount_90d")  # direction 0
CAT = get_feature("industry")  # categorical
CATALOG = (UP, DOWN, FREE, CAT)


def _rows(n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(0)
    X = np.column_stack(
        [rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), rng.normal(size=n), rng.integers(0, 3, n)]
    ).astype(float)
    X[rng.random(n) < 0.1, 0] = np.nan
    return X


def test_constraints_follow_the_catalog() -> None:
    assert monotone_constraints(CATALOG) == [1, -1, 0, 0]


def test_a_monotone_function_passes() -> None:
    report = check_monotonicity(lambda M: 2 * M[:, 0] - M[:, 1] + M[:, 2] ** 2, _rows(), CATALOG)
    assert report.ok and report.violations() == []
    assert [c.feature for c in report.checks] == [UP.name, DOWN.name]  # constrained ones only
    assert all(c.grid > 2 and c.rows == 200 for c in report.checks)


def test_a_constructed_violation_is_caught() -> None:
    # U-shaped in the +1 feature: falls on [-1, 0], so it moves against the direction
    report = check_monotonicity(lambda M: M[:, 0] ** 2 - M[:, 1], _rows(), CATALOG)
    assert not report.ok
    (bad,) = [c for c in report.checks if c.violating_rows]
    assert bad.feature == UP.name and bad.violating_rows == bad.rows
    assert bad.max_violation > 0.1
    assert "dso_90d (direction +1)" in report.violations()[0]
    # a tiny bump below the tolerance is not a violation; above it, it is
    bump = lambda M: -1e-12 * (M[:, 0] > 0.5)  # noqa: E731
    assert check_monotonicity(bump, _rows(), CATALOG, tolerance=1e-9).ok
    assert not check_monotonicity(bump, _rows(), CATALOG, tolerance=1e-13).ok


def test_an_unconstrained_booster_on_a_u_shape_is_caught() -> None:
    rng = np.random.default_rng(1)
    X = _rows(4000)
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-(4 * np.nan_to_num(X[:, 0]) ** 2 - 2)))).astype(
        float
    )
    params = {"objective": "binary", "verbose": -1, "seed": 0, "num_threads": 1}
    free = lgb.train(params, lgb.Dataset(X, y), num_boost_round=30)
    constrained = lgb.train(
        {**params, "monotone_constraints": monotone_constraints(CATALOG)}, lgb.Dataset(X, y), 30
    )
    margin = lambda b: lambda M: np.asarray(b.predict(M, raw_score=True))  # noqa: E731
    assert not check_monotonicity(margin(free), X, CATALOG).ok
    assert check_monotonicity(margin(constrained), X, CATALOG).ok
    # the probes scored without building them out (what `training.evaluate` does): the same
    # report, violations and their sizes included
    from training.treeshap import TreeShap

    for booster in (free, constrained):
        engine = TreeShap.from_booster(booster)
        built = check_monotonicity(margin(booster), X, CATALOG)
        varied = check_monotonicity(margin(booster), X, CATALOG, margin_varied=engine.margin_varied)
        assert varied == built


def test_declared_fin_directions_reach_lightgbm() -> None:
    from features.catalog import catalog_for

    fin = tuple(f for f in catalog_for(["net_margin", "revenue"]) if f.name.startswith("fin_"))
    assert [f.name for f in fin] == ["fin_net_margin", "fin_revenue"]
    assert monotone_constraints(fin) == [-1, 0]
