"""Seeded synthetic panels for the training tests (catalog feature names, known effects)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.support.panels import CATALOG, FAST, make_panel


@pytest.fixture(scope="session")
def synthetic() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_panel(n_months=36)  # enough months for the leak-free split


@pytest.fixture(scope="session")
def trained(synthetic: tuple[pd.DataFrame, pd.DataFrame]):
    """One model trained on the synthetic panel (session-wide: training is the slow part)."""
    from training.train import TrainConfig, fit

    panel, truth = synthetic
    return fit(panel, CATALOG, TrainConfig(seed=1, **FAST), truth=truth)
