"""`scf-risk train` / `scf-risk promote` end to end: simulated data, bad input, bad stores."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner, Result

from features.contract import HORIZON_ATTR
from tests.support.panels import make_panel
from tests.support.tracking import TrackingStores
from training.bundle import MODEL_NAME, client_for, load_model
from training.cli import app as training_app


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return training_app


def _run(app: typer.Typer, *args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _versions(uri: str) -> list[str]:
    return [str(v.version) for v in client_for(uri).search_model_versions(f"name='{MODEL_NAME}'")]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from features.simulate import SimConfig, generate_to_folder

    out = tmp_path_factory.mktemp("sim") / "data"
    generate_to_folder(
        SimConfig(n_smes=300, n_cores=6, months=30, seed=5, mc_paths=32, progress=False), out
    )
    return out


def test_train_and_promote_on_simulated_data(app, simulated: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # 30 months cannot hold the default, leak-free split: the message says how many can
    short = _run(app, "train", "--data", simulated, "--tracking-uri", uri, "--seed", "3")
    assert short.exit_code == 1 and "needs about 48 months" in short.stderr
    assert _versions(uri) == []
    result = _run(
        app, "train", "--data", simulated, "--tracking-uri", uri, "--seed", "3",
        "--embargo-days", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (only_line,) = result.stdout.strip().splitlines()  # stdout holds the JSON line alone
    line = json.loads(only_line)
    for key in ("run_id", "model_version", "auc_oot", "ks_oot", "brier_oot", "ece_oot"):
        assert key in line
    assert line["model_version"] == "1"
    # the simulator's truth.parquet and static ratings give the two baselines
    assert 0.5 < line["auc_static_rating_oot"] < 1 and 0.5 < line["auc_oracle_oot"] < 1
    # the model carries the reference data of the single-SME path
    loaded = load_model(f"models:/{MODEL_NAME}@challenger", uri)
    assert loaded.model.reference is not None
    assert len(loaded.model.reference.enterprises) == 306
    run = client_for(uri).get_run(line["run_id"])
    assert len(run.data.tags["scf_risk.data_sha256"]) == 64
    assert any(k.startswith("auc_oot_") for k in run.data.metrics)  # metrics by product

    # a model trained on a plain (leaky) split has no OOT row it did not learn from: promote
    # refuses to judge it on them, and records nothing
    refused = _run(app, "promote", "--tracking-uri", uri, "--max-ece", "1.0")
    assert refused.exit_code == 1 and "no matured rows unseen by both" in refused.stderr
    tags = client_for(uri).get_model_version(MODEL_NAME, "1").tags
    assert "promotion_decision" not in tags


def test_the_panels_label_horizon_travels_into_the_bundle(
    app, tmp_path: Path, tracking_stores: TrackingStores
) -> None:
    uri = tracking_stores.new(tmp_path)
    panel, _ = make_panel(n_smes=200, n_months=14, seed=4)
    panel.attrs[HORIZON_ATTR] = 180
    path = tmp_path / "panel-180.parquet"
    panel.to_parquet(path, index=False)
    clash = _run(app, "train", "--features", path, "--tracking-uri", uri, "--horizon-days", 365)
    assert clash.exit_code == 1 and "built with a 180-day label horizon" in clash.stderr
    assert _versions(uri) == []
    done = _run(app, "train", "--features", path, "--tracking-uri", uri, "--max-rounds", 50)
    assert done.exit_code == 0, done.output
    assert load_model(f"models:/{MODEL_NAME}@challenger", uri).model.horizon_days == 180
    del panel.attrs[HORIZON_ATTR]  # a panel file of an earlier release: the horizon is asked for
    panel.to_parquet(path, index=False)
    unknown = _run(app, "train", "--features", path, "--tracking-uri", uri)
    assert unknown.exit_code == 1 and "give --horizon-days" in unknown.stderr


def test_bad_features_files_register_nothing(
    app, tmp_path: Path, tracking_stores: TrackingStores
) -> None:
    uri = tracking_stores.new(tmp_path)
    panel, _ = make_panel(n_smes=60, n_months=10, seed=2)
    cases = {
        "no labels": (panel.drop(columns="default_12m"), "no default_12m column"),
        "immature": (
            panel.assign(default_12m=pd.array([pd.NA] * len(panel), "Int8")),
            "no matured rows",
        ),
        "one class": (panel.assign(default_12m=0), "one class only"),
        "unknown column": (panel.assign(shoe_size=42.0), "does not know: ['shoe_size']"),
    }
    for name, (frame, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        result = _run(app, "train", "--features", path, "--tracking-uri", uri)
        assert result.exit_code == 1, name
        assert message in result.stderr, (name, result.stderr)
    missing = _run(app, "train", "--features", tmp_path / "nope.parquet", "--tracking-uri", uri)
    assert missing.exit_code == 1 and "no such file" in missing.stderr
    (tmp_path / "junk.parquet").write_text("not parquet", encoding="utf-8")
    junk = _run(app, "train", "--features", tmp_path / "junk.parquet", "--tracking-uri", uri)
    assert junk.exit_code == 1 and "not a readable Parquet file" in junk.stderr
    assert _versions(uri) == []
    assert _run(app, "train", "--tracking-uri", uri).exit_code == 2  # neither --data nor --features
    no_challenger = _run(app, "promote", "--tracking-uri", uri)
    assert no_challenger.exit_code == 1 and "challenger" in no_challenger.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_tracking_store_fails_before_training(app, tmp_path: Path) -> None:
    panel, _ = make_panel(n_smes=60, n_months=10, seed=2)
    features = tmp_path / "panel.parquet"
    panel.to_parquet(features, index=False)
    missing_dir = tmp_path / "no" / "such" / "dir"
    result = _run(
        app, "train", "--features", features, "--tracking-uri", f"sqlite:///{missing_dir}/m.db"
    )
    assert result.exit_code == 1
    assert "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()

    start = time.perf_counter()
    url = f"postgresql://scf:secret@127.0.0.1:{_closed_port()}/mlflow"
    result = _run(app, "train", "--features", features, "--tracking-uri", url)
    assert result.exit_code == 1
    assert "cannot connect" in result.stderr
    assert "secret" not in result.stderr and "scf:***@" in result.stderr
    assert time.perf_counter() - start < 30  # MLflow alone would retry for minutes
    promote = _run(app, "promote", "--tracking-uri", url)
    assert promote.exit_code == 1 and "cannot connect" in promote.stderr
