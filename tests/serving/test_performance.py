"""Performance before labels mature (`serving.portfolio.performance`): the sampled metrics, and
the estimates against the labels the simulator realises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from features.simulate import SimConfig, simulate
from serving.portfolio.performance import (
    METRICS,
    coverage,
    estimate,
    performance_table,
    sampled_auc,
)


def test_sampled_auc_is_roc_auc_per_draw() -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.random(60), 1)  # ties
    y = rng.random((5, 60)) < p
    expected = [roc_auc_score(row, p) for row in y]
    assert np.allclose(sampled_auc(p, y), expected)
    assert np.isnan(sampled_auc(p, np.zeros((1, 60), dtype=bool)))[0]


def test_estimate_centres_and_brackets() -> None:
    p = np.full(1000, 0.05)
    est = estimate(p, draws=400, seed=1)
    assert est["default_rate"]["estimate"] == pytest.approx(0.05)
    assert est["default_rate"]["low"] < 0.05 < est["default_rate"]["high"]
    # constant PDs rank nobody: the expected AUC is one half
    assert est["auc"]["estimate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        estimate([0.5, 1.5])


@pytest.fixture(scope="module")
def oracle_months() -> pd.DataFrame:
    """Two small simulations; the oracle's PDs (truth) against the realised 12-month labels."""
    tables = []
    for seed in (3, 11):
        result = simulate(SimConfig(n_smes=500, n_cores=10, months=30, seed=seed, progress=False))
        rows = result.labelled_truth().rename(columns={"pd_true": "pd"})
        labels = rows["default_12m"].astype("Float64")
        tables.append(performance_table(rows, labels, draws=500))
    return pd.concat(tables, ignore_index=True)


def test_estimates_of_calibrated_pds_cover_the_realised_months(
    oracle_months: pd.DataFrame,
) -> None:
    """With right PDs (the simulator's own), each month's realised default rate, AUC and ECE lie
    within the estimate's 95 % interval in at least 90 % of the months."""
    assert len(oracle_months) == 36
    for metric in METRICS:
        inside, months = coverage(oracle_months, metric)
        assert months == 36
        assert inside / months >= 0.9, (metric, inside, months)


def test_estimates_of_wrong_pds_miss_the_realised_months() -> None:
    """The same check fails for PDs twice too high: the test can tell."""
    result = simulate(SimConfig(n_smes=500, n_cores=10, months=24, seed=3, progress=False))
    rows = result.labelled_truth().rename(columns={"pd_true": "pd"})
    rows["pd"] = np.minimum(2 * rows["pd"], 1.0)
    table = performance_table(rows, rows["default_12m"].astype("Float64"), draws=300)
    inside, months = coverage(table, "default_rate")
    assert months == 12
    assert inside / months < 0.5


def test_immature_months_have_estimates_only() -> None:
    scores = pd.DataFrame(
        {
            "as_of": pd.to_datetime(["2024-01-31"] * 3 + ["2024-02-29"] * 3),
            "pd": [0.1, 0.2, 0.3] * 2,
        }
    )
    labels = pd.Series([0, 1, 0, pd.NA, 0, 1], dtype="Float64")
    table = performance_table(scores, labels, draws=50)
    assert table["mature"].tolist() == [True, False]
    assert table.loc[0, "default_rate_realised"] == pytest.approx(1 / 3)
    assert np.isnan(table.loc[1, "auc_realised"]) and table.loc[1, "auc_within"] is None
