"""The scoring model: score math, master scale, explanations, inputs, persistence."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from features.catalog import get_feature
from tests.support.panels import CATALOG, INDUSTRY_EFFECT
from training.exceptions import ModelInputError, ModelLoadError
from training.model import (
    LogOddsCalibration,
    MasterScale,
    ScoreScale,
    ScoringModel,
)


def test_score_scale_anchors_and_pdo() -> None:
    s = ScoreScale()
    assert s.factor == pytest.approx(20 / math.log(2))
    # 600 points at odds of good 50:1, i.e. log-odds of default -ln 50
    assert s.score(-math.log(50.0)) == pytest.approx(600.0)
    # doubling the odds of good adds PDO points
    assert s.score(-math.log(100.0)) - s.score(-math.log(50.0)) == pytest.approx(20.0)
    custom = ScoreScale(pdo=40, base_score=500, base_odds=20)
    assert custom.score(-math.log(20.0)) == pytest.approx(500.0)
    assert custom.score(-math.log(40.0)) == pytest.approx(540.0)
    with pytest.raises(ValueError):
        ScoreScale(pdo=0)


def test_master_scale_bands() -> None:
    ms = MasterScale()
    assert len(ms.grades) >= 10
    upper = np.asarray(ms.upper_pd)
    # a PD on a band's upper edge belongs to that band; just above it to the next one
    assert list(ms.grade(upper)) == list(ms.grades)
    assert list(ms.grade(upper[:-1] * (1 + 1e-9))) == list(ms.grades[1:])
    assert ms.grade(np.array([0.0]))[0] == ms.grades[0]
    with pytest.raises(ValueError):
        ms.grade(np.array([np.nan]))
    with pytest.raises(ValueError, match=">= 10"):
        MasterScale(("A", "B"), (0.5, 1.0))
    with pytest.raises(ValueError, match="increase"):
        MasterScale(tuple("ABCDEFGHIJ"), (0.1, 0.05, *np.linspace(0.2, 1.0, 8)))
    with pytest.raises(ValueError, match=r"end at 1\.0"):
        MasterScale(tuple("ABCDEFGHIJ"), tuple(np.linspace(0.01, 0.9, 10)))


def _random_rows(n: int, seed: int) -> pd.DataFrame:
    """Feature rows far and wide, with missing values and unseen categories."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "ap_days_beyond_terms_90d": rng.normal(10, 20, n),
            "payment_index_365d": rng.uniform(1, 100, n),
            "dso_90d": rng.normal(45, 30, n),
            "sales_amount_90d": rng.lognormal(10, 2, n),
            "static_rating_ordinal": rng.integers(0, 22, n).astype(float),
            "industry": rng.choice([*INDUSTRY_EFFECT, "unseen"], n),
        }
    )
    for col in frame.columns:
        frame.loc[rng.random(n) < 0.1, col] = np.nan if col != "industry" else None
    return frame


@pytest.mark.parametrize("method", ["pred_contrib", "tree_shap", "fast"])
def test_points_add_up_to_the_score_exactly(trained, method: str) -> None:
    model: ScoringModel = trained.model
    X = _random_rows(3000, seed=7)
    e = model.explain(X, method=method)
    total = e.base_points + e.points.sum(axis=1).to_numpy()
    assert np.abs(total - e.score).max() < 1e-6
    assert list(e.points.columns) == model.feature_names
    assert np.all(e.base_points == e.base_points[0])
    # score, PD and grade agree with each other and with predict()
    np.testing.assert_allclose(e.pd, model.predict(X), rtol=0, atol=1e-15)
    np.testing.assert_allclose(e.score, model.scale.score(logit(e.pd)), atol=1e-6)
    assert list(e.grade) == list(model.master_scale.grade(e.pd))


def test_both_explain_methods_agree(trained) -> None:
    X = _random_rows(1000, seed=8)
    a = trained.model.explain(X, method="pred_contrib")
    b = trained.model.explain(X, method="tree_shap")
    assert np.abs(a.points.to_numpy() - b.points.to_numpy()).max() < 1e-9
    assert np.abs(a.base_points - b.base_points).max() < 1e-9
    with pytest.raises(ValueError, match="explain method"):
        trained.model.explain(X, method="kernel")


def _path_dependent_value(node: dict, x: np.ndarray, known: set[int]) -> float:
    """E[tree(x) | x_S] under the tree's own cover weights (tree-path-dependent SHAP)."""
    if "leaf_value" in node:
        return float(node["leaf_value"])
    left, right = node["left_child"], node["right_child"]
    f = node["split_feature"]
    if f in known:
        return _path_dependent_value(left if x[f] <= node["threshold"] else right, x, known)

    def count(n: dict) -> float:
        return float(n["leaf_count"] if "leaf_value" in n else n["internal_count"])

    wl, wr = count(left), count(right)
    return (
        wl * _path_dependent_value(left, x, known) + wr * _path_dependent_value(right, x, known)
    ) / (wl + wr)


def test_shap_values_match_brute_force_shapley_values() -> None:
    """An independent check of the explanations: exact Shapley values by enumeration."""
    rng = np.random.default_rng(3)
    n, k = 4000, 3
    X = rng.normal(size=(n, k))
    y = rng.random(n) < expit(-2 + 1.2 * X[:, 0] - 0.8 * X[:, 1] + 0.5 * X[:, 0] * X[:, 2])
    catalog = (
        get_feature("ap_days_beyond_terms_90d"),
        get_feature("payment_index_365d"),
        get_feature("sales_amount_90d"),
    )
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 1, "num_threads": 1}
    ds = lgb.Dataset(X, y.astype(float), feature_name=[f.name for f in catalog])
    booster = lgb.train(params, ds, num_boost_round=15)
    model = ScoringModel(booster, catalog, {}, LogOddsCalibration(-0.3, 0.9))
    rows = pd.DataFrame(X[:25], columns=[f.name for f in catalog])
    trees = booster.dump_model()["tree_info"]

    def v(x: np.ndarray, known: set[int]) -> float:
        return sum(_path_dependent_value(t["tree_structure"], x, known) for t in trees)

    phi = np.zeros((len(rows), k))
    for r, x in enumerate(rows.to_numpy()):
        for i in range(k):
            others = [j for j in range(k) if j != i]
            for size in range(k):
                for subset in itertools.combinations(others, size):
                    w = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
                    phi[r, i] += w * (v(x, {*subset, i}) - v(x, set(subset)))
    for method in ("pred_contrib", "tree_shap", "fast"):
        e = model.explain(rows, method=method)
        np.testing.assert_allclose(e.shap.to_numpy(), phi, atol=1e-9)
        factor, b = model.scale.factor, model.calibration.b
        np.testing.assert_allclose(e.points.to_numpy(), -factor * b * phi, atol=1e-7)


def test_prepare_fills_orders_and_checks(trained) -> None:
    model: ScoringModel = trained.model
    X = pd.DataFrame({"industry": ["agri", "nowhere", None], "dso_90d": [10, 20, 30]})
    P = model.prepare(X)
    assert list(P.columns) == model.feature_names
    assert P["ap_days_beyond_terms_90d"].isna().all()
    assert P["industry"].tolist()[0] == "agri" and P["industry"].isna().tolist()[1:] == [True, True]
    assert list(P["industry"].cat.categories) == sorted(INDUSTRY_EFFECT)
    assert P["dso_90d"].dtype == np.float64
    pd.testing.assert_frame_equal(model.prepare(P), P)  # idempotent
    keyed = X.assign(sme_id="S1", as_of=pd.Timestamp("2022-01-31"), default_12m=0)
    pd.testing.assert_frame_equal(model.prepare(keyed), P)
    with pytest.raises(ModelInputError, match="unknown feature column"):
        model.prepare(X.assign(dso_days=1.0))
    with pytest.raises(ModelInputError, match="dso_90d: expected numbers, got 'abc'"):
        model.prepare(pd.DataFrame({"dso_90d": ["1", "abc"]}))
    with pytest.raises(ModelInputError, match="infinite"):
        model.prepare(pd.DataFrame({"dso_90d": [1.0, np.inf]}))
    # an empty frame of one row: every feature missing, still a valid explanation
    e = model.explain(pd.DataFrame(index=pd.RangeIndex(1)))
    assert abs(e.base_points[0] + e.points.to_numpy().sum() - e.score[0]) < 1e-6


def test_save_and_load_round_trip(trained, tmp_path: Path) -> None:
    model: ScoringModel = trained.model
    model.save(tmp_path / "m")
    back = ScoringModel.load(tmp_path / "m")
    X = _random_rows(500, seed=9)
    assert np.array_equal(back.predict(X), model.predict(X))
    pd.testing.assert_frame_equal(back.explain(X).points, model.explain(X).points)
    assert back.catalog == model.catalog
    assert back.categories == model.categories
    assert back.calibration == model.calibration
    assert back.scale == model.scale and back.master_scale == model.master_scale
    assert back.metrics == model.metrics
    with pytest.raises(ModelLoadError):
        ScoringModel.load(tmp_path / "nothing")


def test_model_checks_its_parts(trained) -> None:
    model: ScoringModel = trained.model
    with pytest.raises(ValueError, match="booster's features"):
        ScoringModel(model.booster, tuple(reversed(CATALOG)), model.categories, model.calibration)
    with pytest.raises(ValueError, match="categories"):
        ScoringModel(model.booster, CATALOG, {}, model.calibration)
