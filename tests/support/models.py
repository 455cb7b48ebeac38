"""Small real models for the serving tests: a catalog-wide monotone booster trained on seeded
rows, and the registered model (simulator -> pipeline -> training -> MLflow) it is compared to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.catalog import CATALOG, domain_of, monotone_constraints
from training.bundle import MODEL_NAME, LoadedModel
from training.exceptions import ModelLoadError
from training.model import LogOddsCalibration, ScoringModel, prepare_frame, to_matrix

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.train import TrainResult

CHAMPION = f"models:/{MODEL_NAME}@champion"
"""The champion's model URI, as the service asks for it by default."""


def synthetic_rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Seeded feature rows over the catalog and a default label driven by a few features.

    Values lie in each feature's catalog domain: raw draws scaled (monotonically) into the
    domain when it is narrower than the draws, after the label is drawn from the raw values."""
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
    for f in CATALOG:
        if f.kind != "categorical":
            d = domain_of(f)
            scale = 1.0 if d.high >= 100 else d.high / 100
            frame[f.name] = (frame[f.name] * scale).clip(d.low, d.high)
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


def with_reference(model: ScoringModel, root: Path) -> ScoringModel:
    """`model` carrying the reference data of the small contract folder (written under `root`):
    cores C1, C2 and SMEs S1-S3, whose industries and regions the small model never saw."""
    import dataclasses

    from features.io import load_tables
    from features.reference import build_reference
    from tests.support.contract_folder import TODAY, write_folder

    tables = load_tables(write_folder(root), today=TODAY)
    return dataclasses.replace(model, reference=build_reference(tables))


@dataclass(frozen=True)
class Registered:
    """A small model trained and registered (alias champion) with the project's own code."""

    tracking_uri: str
    data: Path
    run_id: str
    version: str
    panel: pd.DataFrame


def register_simulated(
    root: Path, config: TrainConfig, tracking_uri: str | None = None
) -> tuple[Registered, TrainResult]:
    """Simulate 400 SMEs over 24 months into ``root``/data, train with ``config``, register in
    `tracking_uri` (default: a new store ``root``/mlflow.db) and make the version champion. The
    data are small (a plain, leaky split): the gates are not the point here, so the alias is set
    directly."""
    from datetime import date

    from features.simulate import SimConfig, generate_to_folder
    from training.bundle import client_for
    from training.run import load_inputs, train_and_register

    data = root / "data"
    generate_to_folder(
        SimConfig(n_smes=400, n_cores=8, months=24, start=date(2022, 1, 1), seed=7, progress=False),
        data,
    )
    tracking_uri = tracking_uri or f"sqlite:///{root}/mlflow.db"
    inputs = load_inputs(data, None)
    run, result = train_and_register(inputs, config, tracking_uri=tracking_uri)
    client_for(tracking_uri).set_registered_model_alias(MODEL_NAME, "champion", run.version)
    return Registered(tracking_uri, data, run.run_id, run.version, inputs.panel), result


def register_copy(reg: Registered) -> str:
    """Register the champion's artifacts again as a new version and make it champion."""
    from training.bundle import client_for
    from training.registry import CHAMPION as CHAMPION_ALIAS

    client = client_for(reg.tracking_uri)
    source = client.get_model_version_download_uri(MODEL_NAME, reg.version)
    mv = client.create_model_version(MODEL_NAME, source, run_id=reg.run_id)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, mv.version)
    return str(mv.version)


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


@contextmanager
def demo_history_decision(
    reg: Registered, folder: Path
) -> Iterator[tuple[Any, str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """An app serving `reg`'s model (audit store, keys and signing key in `folder`) that has just
    scored the demo history request: (client, scorer key, request body, response, stored)."""
    from fastapi.testclient import TestClient

    from serving.api.app import create_app
    from serving.api.keys import add_key
    from serving.demo import demo_request
    from serving.settings import Settings
    from tests.support.load import make_signing_key

    settings = Settings(
        mlflow_tracking_uri=reg.tracking_uri,
        audit_db=f"sqlite:///{folder}/audit.db",
        api_keys=folder / "keys.json",
        env="test",
    )
    key = add_key(settings.api_keys, "scorer")[1]
    make_signing_key(folder)
    body = demo_request(reg.data)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/scores", json=body, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        stored = client.app.state.service.store.get(r.json()["decision_id"])  # type: ignore[attr-defined]
        yield client, key, body, r.json(), stored
