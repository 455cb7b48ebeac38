"""Fixtures of the serving tests: a small real model, keys, an audit store, an app.

`scoring_model` is a real `training.model.ScoringModel`: a monotone LightGBM booster trained with
the training package's own functions on seeded synthetic rows over the real feature catalog.
`registry_model` (in test_registry.py) goes through MLflow as well.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.api.keys import ROLES, add_key
from serving.audit.store import AuditStore
from serving.settings import Settings
from tests.support.load import make_keys, make_signing_key, require_postgres
from tests.support.models import Registered, Registry, register_simulated, train_small_model
from tests.support.portfolio import Profiled, profiled_version
from tests.support.tracking import TrackingStores
from training.model import ScoringModel


@pytest.fixture(scope="session")
def scoring_model() -> ScoringModel:
    return train_small_model(seed=3)


@pytest.fixture(scope="session")
def scoring_model_v2() -> ScoringModel:
    return train_small_model(seed=11, rounds=25)


@pytest.fixture
def registry(scoring_model: ScoringModel) -> Registry:
    reg = Registry()
    reg.add(scoring_model)
    return reg


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    make_signing_key(tmp_path)
    return Settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        audit_db=f"sqlite:///{tmp_path}/audit.db",
        api_keys=tmp_path / "keys.json",
        env="test",
        reload_poll_seconds=0.2,
        keys_recheck_seconds=0.0,  # keys added or revoked count from the next request (the
        # interval itself: test_keys)
        ready_probe_reuse_seconds=0.0,  # every /readyz probes (the reuse itself: test_hardening)
        model_load_wait_seconds=600.0,  # start-up waits for the model however loaded the machine
        # (parallel test workers compiling the TreeSHAP kernels took over 30 s once)
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


# -- real servers: a folder and a key per role for each test module ------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A folder for the module's servers, keys and stores."""
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def server_keys(workdir: Path) -> dict[str, str]:
    """One API key per role, in the module's keys file (role -> secret)."""
    return make_keys(workdir / "keys.json")


# -- a real registered model: simulator -> pipeline -> training -> MLflow registry -------------
@pytest.fixture(scope="session")
def registered(
    tmp_path_factory: pytest.TempPathFactory, tracking_stores: TrackingStores
) -> Registered:
    """Simulate 400 SMEs over 24 months, build the panel, train, register and promote."""
    from training.train import TrainConfig

    config = TrainConfig(
        oot_months=4,
        embargo_days=0,  # 24 months cannot hold the leak-free split; serving is tested here
        calibration_folds=2,  # fewer cross-fitted boosters: the fixture is about serving
        max_rounds=80,
        early_stopping_rounds=20,
        monotonicity_rows=40,
        explain_rows=100,
        bag=1,  # one booster, as on large data (the small-data bag is tested in training)
    )
    root = tmp_path_factory.mktemp("registry")
    return register_simulated(root, config, tracking_stores.new(root))[0]


@pytest.fixture(scope="session")
def profiled(registered: Registered) -> Profiled:
    """A registered copy of the model whose training run carries the drift profile (monitor,
    backtest and portfolio tests)."""
    return profiled_version(registered)
