"""The decomposition of the OOT calibration miss (`bench.bench_quality.decompose`): a level miss
is removed by the level fix, a slope miss only by the affine map, and the worst month is read
per month."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from bench.bench_quality import decompose
from training.metrics import ece


def _rows(pd_model: np.ndarray, y: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    months = pd.date_range("2025-01-31", periods=6, freq="ME")
    as_of = np.resize(months.to_numpy(), y.size)
    return pd.DataFrame({"as_of": as_of, "default_12m": y, "pd": pd_model, "pd_true": truth})


@pytest.fixture(scope="module")
def truth_and_labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    q = expit(rng.normal(-3.5, 1.2, 200_000))
    return q, (rng.random(q.size) < q).astype(np.int64)


def test_a_level_miss_is_removed_by_the_level_fix(
    truth_and_labels: tuple[np.ndarray, np.ndarray],
) -> None:
    q, y = truth_and_labels
    shifted = expit(logit(q) + 0.5)  # the right ranking and slope, the level too high
    out = decompose(_rows(shifted, y, q), 10)
    floor = ece(y, q)
    assert ece(y, shifted) > 5 * floor
    assert out["ece_oot_level_fixed"] < 2 * floor
    assert out["ece_oot_best_affine"] < 2 * floor
    assert out["mean_pd_oracle_oot"] == pytest.approx(q.mean())
    assert out["level_miss_worst_month_oot"] > 0.01 > out["level_miss_worst_month_oracle_oot"]


def test_a_slope_miss_survives_the_level_fix_not_the_affine_map(
    truth_and_labels: tuple[np.ndarray, np.ndarray],
) -> None:
    q, y = truth_and_labels
    flat = expit(0.6 * (logit(q) - logit(q.mean())) + logit(q.mean()))  # too compressed
    out = decompose(_rows(flat, y, q), 10)
    floor = ece(y, q)
    assert out["ece_oot_level_fixed"] > 3 * floor
    assert out["ece_oot_best_affine"] < 2 * floor


def test_the_worst_month_is_the_month_with_the_largest_level_miss() -> None:
    y = np.zeros(600, dtype=np.int64)
    y[::120] = 1  # rows cycle through the 6 months: month 1 holds the 5 defaults, rate 0.05
    p = np.full(600, 0.01)
    frame = _rows(p, y, p.copy())
    frame.loc[frame["as_of"] == frame["as_of"].iloc[2], "pd"] = 0.05  # month 3: rate 0
    out = decompose(frame, 10)
    assert out["level_miss_worst_month_oot"] == pytest.approx(0.05)  # month 3: 0.05 against 0
    assert out["level_miss_worst_month_oracle_oot"] == pytest.approx(0.04)  # month 1
    frame.loc[frame["as_of"] == frame["as_of"].iloc[2], "pd"] = 0.02
    assert decompose(frame, 10)["level_miss_worst_month_oot"] == pytest.approx(0.04)  # month 1
