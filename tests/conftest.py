"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest

from tests.support.tracking import TrackingStores


@pytest.fixture(scope="session")
def tracking_stores(tmp_path_factory: pytest.TempPathFactory) -> TrackingStores:
    """New empty MLflow tracking stores, migrated once per session (tests/support/tracking.py)."""
    return TrackingStores(tmp_path_factory.mktemp("mlflow-template"))
