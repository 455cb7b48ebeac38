"""Fixtures of the serving tests: a small real model, keys, an audit store, an app.

`scoring_model` is a real `training.model.ScoringModel`: a monotone LightGBM booster trained with
the training package's own functions on seeded synthetic rows over the real feature catalog.
`registry_model` (in test_registry.py) goes through MLflow as well.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.catalog import CATALOG, monotone_constraints
from serving.api.app import create_app
from serving.api.keys import ROLES, add_key
from serving.audit.store import AuditStore
from serving.settings import Settings
from tests.serving.stress import require_postgres
from training.bundle import LoadedModel
from training.exceptions import ModelLoadError
from training.model import LogOddsCalibration, ScoringModel, prepare_frame, to_matrix

MODEL_NAME = "sme-default-pd"
CHAMPION = f"models:/{MODEL_NAME}@champion"


def synthetic_rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Seeded feature rows over the catalog and a default label driven by a few features."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for f in CATALOG:
        if f.kind == "categorical":
            cols[f.name] = rng.choice(["metals", "food", "textiles", "chemicals"], size=n)
        else:
            x = rng.gamma(2.0, 10.0, size=n)
            x[rng.random(n) < 0.1] = np.nan
            cols[f.name] = x
    frame = pd.DataFrame(cols)
    risky = [f.name for f in CATALOG if f.direction == 1][:4]
    safe = [f.name for f in CATALOG if f.direction == -1][:3]
    z = -3.0 + sum(frame[c].fillna(20).to_numpy() / 20 for c in risky)
    z = z - sum(frame[c].fillna(20).to_numpy() / 25 for c in safe)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return frame, y


def train_small_model(seed: int = 3, rounds: int = 40) -> ScoringModel:
    """A small real scoring model: a monotone LightGBM booster over the catalog, seeded."""
    catalog = CATALOG
    categories: dict[str, tuple[str, ...]] = {
        f.name: ("chemicals", "food", "metals", "textiles")
        for f in catalog
        if f.kind == "categorical"
    }
    frame, y = synthetic_rows(3000, seed)
    X = to_matrix(prepare_frame(frame, catalog, categories), catalog)
    params = {
        "objective": "binary",
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_data_in_leaf": 40,
        "monotone_constraints": monotone_constraints([f.name for f in catalog], catalog),
        "seed": seed,
        "num_threads": 1,
        "deterministic": True,
        "verbose": -1,
    }
    names = [f.name for f in catalog]
    cats = [j for j, f in enumerate(catalog) if f.kind == "categorical"]
    data = lgb.Dataset(X, y, feature_name=names, categorical_feature=cats)
    booster = lgb.train(params, data, num_boost_round=rounds)
    return ScoringModel(
        booster=booster,
        catalog=catalog,
        categories=categories,
        calibration=LogOddsCalibration(a=-0.2, b=0.9),
        metrics={"auc_oot": 0.75},
    )


@pytest.fixture(scope="session")
def scoring_model() -> ScoringModel:
    return train_small_model(seed=3)


@pytest.fixture(scope="session")
def scoring_model_v2() -> ScoringModel:
    return train_small_model(seed=11, rounds=25)


class Registry:
    """An in-memory stand-in for the model registry, at the loader boundary serving takes."""

    def __init__(self) -> None:
        self.versions: dict[str, ScoringModel] = {}
        self.champion: str | None = None
        self.fail: str | None = None
        self.calls = 0

    def add(self, model: ScoringModel, *, champion: bool = True) -> str:
        version = str(len(self.versions) + 1)
        self.versions[version] = model
        if champion:
            self.champion = version
        return version

    def __call__(self, uri: str, tracking_uri: str) -> LoadedModel:
        self.calls += 1
        if self.fail:
            raise ModelLoadError(self.fail)
        if uri == CHAMPION:
            version = self.champion
        else:
            version = uri.rsplit("/", 1)[-1] if uri.startswith(f"models:/{MODEL_NAME}/") else None
        if version is None or version not in self.versions:
            raise ModelLoadError(f"{uri}: no such model version")
        return LoadedModel(
            self.versions[version],
            MODEL_NAME,
            version,
            f"run{version}",
            f"models:/{MODEL_NAME}/{version}",
        )


@pytest.fixture
def registry(scoring_model: ScoringModel) -> Registry:
    reg = Registry()
    reg.add(scoring_model)
    return reg


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        audit_db=f"sqlite:///{tmp_path}/audit.db",
        api_keys=tmp_path / "keys.json",
        env="test",
        reload_poll_seconds=0.2,
    )


@pytest.fixture
def keys(settings: Settings) -> dict[str, str]:
    """One key per role in the settings' keys file (not development keys)."""
    return {role: add_key(settings.api_keys, role)[1] for role in ROLES}


@pytest.fixture
def client(settings: Settings, keys: dict[str, str], registry: Registry) -> Iterator[TestClient]:
    app = create_app(settings, loader=registry)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def headers(keys: dict[str, str]) -> Callable[[str], dict[str, str]]:
    return lambda role: {"X-API-Key": keys[role]}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    """An empty audit store on SQLite, and on PostgreSQL when SCF_RISK_TEST_POSTGRES_URL is set
    (fresh table names per test, dropped afterwards)."""
    if request.param == "sqlite":
        s = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    else:
        s = AuditStore(require_postgres(), prefix=f"t{uuid.uuid4().hex[:10]}_")
    yield s
    if request.param == "postgres":
        s.drop_all()
    s.dispose()


# -- a real registered model: simulator -> pipeline -> training -> MLflow registry -------------
@dataclass(frozen=True)
class Registered:
    """A small model trained and registered (alias champion) with the project's own code."""

    tracking_uri: str
    data: Path
    run_id: str
    version: str
    panel: pd.DataFrame


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """Simulate 400 SMEs over 24 months, build the panel, train, register and promote."""
    from datetime import date

    from features.simulate import SimConfig, generate_to_folder
    from training.promote import promote
    from training.run import load_inputs, train_and_register
    from training.train import TrainConfig

    root = tmp_path_factory.mktemp("registry")
    data = root / "data"
    generate_to_folder(
        SimConfig(n_smes=400, n_cores=8, months=24, start=date(2022, 1, 1), seed=7, progress=False),
        data,
    )
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    inputs = load_inputs(data, None)
    config = TrainConfig(
        oot_months=4,
        calibration_folds=2,  # fewer cross-fitted boosters: the fixture is about serving
        max_rounds=80,
        early_stopping_rounds=20,
        monotonicity_rows=40,
        explain_rows=100,
    )
    run, _ = train_and_register(inputs, config, tracking_uri=tracking_uri)
    promote(tracking_uri, run.version, max_ece=1.0)  # tiny data: the gates are not tested here
    return Registered(tracking_uri, data, run.run_id, run.version, inputs.panel)


def register_copy(reg: Registered) -> str:
    """Register the champion's artifacts again as a new version and make it champion."""
    from training.bundle import MODEL_NAME, client_for
    from training.registry import CHAMPION

    client = client_for(reg.tracking_uri)
    source = client.get_model_version_download_uri(MODEL_NAME, reg.version)
    mv = client.create_model_version(MODEL_NAME, source, run_id=reg.run_id)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, mv.version)
    return str(mv.version)
