"""The benchmark scorecard: monotone bins in the catalog's direction, a fitted-state contract,
and its figures beside the model's in the training metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.catalog import get_feature
from training.scorecard import Scorecard, fit_binning


def test_bins_are_monotone_in_the_risk_direction() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-(-3 + 1.2 * x)))).astype(float)
    x[:200] = np.nan
    up = fit_binning(get_feature("ap_days_beyond_terms_90d"), pd.Series(x), y)  # direction +1
    assert len(up.woe) >= 3 and np.all(np.diff(up.woe) >= 0)
    assert up.iv > 0.1 and up.edges[-1] == np.inf
    # a feature declared the other way is forced monotone the other way: few, flat bins
    down = fit_binning(get_feature("payment_index_365d"), pd.Series(x), y)  # direction -1
    assert np.all(np.diff(down.woe) <= 0) and len(down.woe) < len(up.woe)
    # transform: missing values get the missing bin's WoE, others their bin's
    woe = up.transform(pd.Series([np.nan, -10.0, 10.0]))
    assert woe[0] == up.woe_missing and woe[1] == up.woe[0] and woe[2] == up.woe[-1]


def test_scorecard_contract() -> None:
    card = Scorecard([get_feature("dso_90d")])
    assert card.max_bins == 20 and not hasattr(card, "model_")
    with pytest.raises(RuntimeError, match="not fitted"):
        card.predict(pd.DataFrame({"dso_90d": [1.0]}))


def test_benchmark_beside_the_model(trained) -> None:
    mt = trained.metrics
    assert 0.6 < mt["auc_oot_benchmark_scorecard"] < 1.0
    assert mt["benchmark_scorecard_features"] >= 2
    lo, hi = mt["auc_oot_minus_benchmark_low"], mt["auc_oot_minus_benchmark_high"]
    assert lo < mt["auc_oot_minus_benchmark"] < hi
    assert mt["auc_oot_ci_low"] < mt["auc_oot"] < mt["auc_oot_ci_high"]
    assert mt["herfindahl_grades_oot_even"] <= mt["herfindahl_grades_oot"] <= 1.0
    assert "pd_benchmark_scorecard" in trained.oot


def test_report_numbers_are_for_people_and_failed_tests_are_flagged(trained) -> None:
    import dataclasses

    from training.validation_report import failed_tests, human

    assert human(1.735e-18) == "< 0.0001" and human(0.83456) == "0.8346"
    assert human(12345.6) == "12,346" and human(float("nan")) == "n/a" and human(0.0) == "0"
    assert failed_tests(trained) == [
        t for t in failed_tests(trained) if t.startswith(("Jeffreys", "binomial", "calib"))
    ]  # the synthetic model fails no structural test
    # a PD far too low in every grade: Jeffreys and binomial tests fail, each grade named
    grades = trained.grades.copy()
    busy = grades["n"] > 0
    grades.loc[busy, "jeffreys_pass"] = False
    grades.loc[busy, "within_ci"] = False
    leaky = dataclasses.replace(
        trained, grades=grades, config=dataclasses.replace(trained.config, embargo_days=0)
    )
    flagged = failed_tests(leaky)
    assert sum(t.startswith("Jeffreys test, grade") for t in flagged) == int(busy.sum())
    assert sum(t.startswith("binomial test, grade") for t in flagged) == int(busy.sum())
    assert any(t.startswith("protocol: the OOT figures carry label leakage") for t in flagged)


def test_the_regression_runs_on_one_blas_thread(monkeypatch) -> None:
    """One BLAS thread: a third of the CPU of two on a busy machine, and coefficients that do
    not depend on the core count (module docstring of `training.scorecard`)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    seen: list[int] = []
    fit, proba = LogisticRegression.fit, LogisticRegression.predict_proba

    def blas_threads() -> int:
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    def fit_spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(blas_threads())
        return fit(self, *args, **kwargs)

    def proba_spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(blas_threads())
        return proba(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", fit_spy)
    monkeypatch.setattr(LogisticRegression, "predict_proba", proba_spy)
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-(-2 + x)))).astype(float)
    frame = pd.DataFrame({"ap_days_beyond_terms_90d": x})
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine
        assert blas_threads() == 2 or pytest.skip("one BLAS thread only on this machine")
        Scorecard([get_feature("ap_days_beyond_terms_90d")]).fit(frame, y).predict(frame)
    assert seen == [1, 1]
