"""A synthetic labelled feature panel for the training tests, with a known true PD."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from features.catalog import get_feature
from features.contract import DEFAULT_HORIZON_DAYS, HORIZON_ATTR

FEATURES = (
    "ap_days_beyond_terms_90d",  # +1: grows with the SME's current stress
    "payment_index_365d",  # -1: falls with stress and weak quality
    "dso_90d",  # +1: grows with weak quality
    "sales_amount_90d",  # 0: noise
    "static_rating_ordinal",  # +1: a stale, noisy view of quality
    "industry",  # categorical with an effect
)
CATALOG = tuple(get_feature(name) for name in FEATURES)
INDUSTRY_EFFECT = {"agri": 0.4, "retail": 0.0, "textiles": -0.3}


def make_panel(
    n_smes: int = 500, n_months: int = 24, immature_months: int = 3, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(panel, truth): SMEs × month ends; label ~ Bernoulli(true PD); last months immature."""
    rng = np.random.default_rng(seed)
    total = n_months + immature_months
    as_of = pd.date_range("2021-01-31", periods=total, freq="ME")
    quality = rng.normal(size=n_smes)
    industry = rng.choice(list(INDUSTRY_EFFECT), size=n_smes)
    state = np.zeros((n_smes, total))
    state[:, 0] = rng.normal(size=n_smes)
    for t in range(1, total):
        state[:, t] = 0.8 * state[:, t - 1] + 0.6 * rng.normal(size=n_smes)
    ids = np.array([f"S{i:05d}" for i in range(n_smes)], dtype=object)
    frames = []
    for t in range(total):
        s = state[:, t]
        logit = -3.0 + 0.9 * quality + 1.0 * s + np.vectorize(INDUSTRY_EFFECT.get)(industry)
        p = expit(logit)
        dbt = 10.0 + 8.0 * s + rng.normal(scale=3.0, size=n_smes)
        dbt[rng.random(n_smes) < 0.05] = np.nan
        frame = pd.DataFrame(
            {
                "sme_id": ids,
                "as_of": as_of[t],
                "ap_days_beyond_terms_90d": dbt,
                "payment_index_365d": 80.0
                - 5.0 * quality
                - 3.0 * s
                + rng.normal(scale=2.0, size=n_smes),
                "dso_90d": 45.0 + 10.0 * quality + rng.normal(scale=8.0, size=n_smes),
                "sales_amount_90d": rng.lognormal(10, 1, size=n_smes),
                "static_rating_ordinal": np.clip(
                    np.round(9 + 2.0 * quality + rng.normal(scale=1.5, size=n_smes)), 0, 21
                ),
                "industry": pd.array(industry, dtype="str"),
                "default_12m": pd.array(
                    (rng.random(n_smes) < p).astype(int) if t < n_months else [pd.NA] * n_smes,
                    dtype="Int8",
                ),
                "pd_true": p,
            }
        )
        frames.append(frame)
    full = pd.concat(frames, ignore_index=True)
    truth = full[["sme_id", "as_of", "pd_true"]].copy()
    panel = full.drop(columns="pd_true")
    panel.attrs[HORIZON_ATTR] = DEFAULT_HORIZON_DAYS  # as `scf-risk features` records it
    return panel, truth


FAST: dict[str, Any] = {
    "calibration_folds": 3,
    "max_rounds": 400,
    "early_stopping_rounds": 50,
    "bag": 1,  # one booster, as on large data: the small-data bag has its own tests
}
"""TrainConfig settings that keep the tests fast (the defaults are for real data)."""
