"""MLflow for real (a temporary SQLite store): logging, registry round trip, promotion gates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.panels import CATALOG
from tests.support.tracking import TrackingStores
from training.bundle import MODEL_NAME, client_for, load_model
from training.exceptions import ModelLoadError, PromotionRejectedError
from training.model import LogOddsCalibration
from training.promote import evaluate_gates, promote
from training.registry import (
    CHALLENGER,
    CHAMPION,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PROMOTIONS_EXPERIMENT,
    artifact_root,
    ensure_experiment,
    load_oot_rows,
    log_training,
)
from training.train import TrainConfig, fit


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tracking_stores: TrackingStores) -> str:
    return tracking_stores.new(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def first(trained, store: str):
    return log_training(trained, tracking_uri=store, info={"panel_sha256": "abc123"})


def test_logged_run_holds_the_evidence(trained, store: str, first) -> None:
    client = client_for(store)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["auc_oot"] == pytest.approx(trained.metrics["auc_oot"])
    assert run.data.params["lgb.monotone_constraints_method"] == "basic"
    assert run.data.params["seed"] == "1"
    assert run.data.tags["scf_risk.panel_sha256"] == "abc123"
    assert run.data.tags["scf_risk.monotonicity"] == "passed"
    root = Path(run.info.artifact_uri.removeprefix("file://"))
    assert root.is_relative_to(artifact_root(store))
    for name in (
        "validation_report.html",
        "catalog.json",
        "metrics.json",
        "plots/roc.png",
        "plots/calibration_by_grade.png",
        "plots/shap_summary.png",
        "plots/importance.png",
        "tables/calibration_by_grade.csv",
        "model/MLmodel",
        "model/artifacts/scoring_model/booster.txt",
        "oot/oot_rows.parquet",
    ):
        assert (root / name).is_file(), name
    report = (root / "validation_report.html").read_text(encoding="utf-8")
    for section in ("Data and population", "Calibration", "Stability", "Top drivers", "Monoton"):
        assert section in report
    # the 36-month synthetic panel is too short for the calibration mirror; the report says why
    assert "is fitted on cross-fitted margins of the fit SMEs" in report
    assert "the calibration booster would grow on" in report
    assert "Protocol:</b> leak-free out-of-time validation" in report
    catalog = json.loads((root / "catalog.json").read_text(encoding="utf-8"))
    assert [f["name"] for f in catalog] == [f.name for f in CATALOG]
    mlmodel = (root / "model/MLmodel").read_text(encoding="utf-8")
    assert "signature" in mlmodel and "saved_input_example_info" in mlmodel


def test_experiments_open_on_runs_in_the_mlflow_ui(
    store: str, first, tmp_path: Path, tracking_stores: TrackingStores
) -> None:
    """Every experiment the project makes is tagged as model development (so MLflow's UI opens
    it on its runs, not on the GenAI traces page); one made without the tag gets it."""
    client = client_for(store)
    trained_in = client.get_experiment(client.get_run(first.run_id).info.experiment_id)
    assert trained_in.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    other = tracking_stores.new(tmp_path)
    fresh = client_for(other)
    made = fresh.get_experiment(ensure_experiment(fresh, "fresh", other))
    assert made.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    old_id = fresh.create_experiment("old", artifact_location=(tmp_path / "old").as_uri())
    assert EXPERIMENT_KIND_TAG not in fresh.get_experiment(old_id).tags
    assert ensure_experiment(fresh, "old", other) == old_id
    assert fresh.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_registry_round_trip(trained, store: str, first) -> None:
    import mlflow.pyfunc

    loaded = load_model(f"models:/{MODEL_NAME}@{CHALLENGER}", store)
    assert (loaded.name, loaded.version, loaded.run_id) == (MODEL_NAME, "1", first.run_id)
    X = trained.oot[trained.model.feature_names]
    assert np.array_equal(loaded.model.predict(X), trained.model.predict(X))
    by_version = load_model(f"models:/{MODEL_NAME}/1", store)
    assert np.array_equal(by_version.model.predict(X), trained.model.predict(X))
    by_run = load_model(f"runs:/{first.run_id}/model", store)
    assert by_run.run_id == first.run_id
    source = client_for(store).get_model_version_download_uri(MODEL_NAME, "1")
    out = mlflow.pyfunc.load_model(source).predict(X.head(50))
    np.testing.assert_array_equal(out["pd"].to_numpy(), trained.model.predict(X.head(50)))
    assert list(out.columns) == ["pd", "score", "grade"]
    rows = load_oot_rows(client_for(store), first.run_id)
    assert len(rows) == len(trained.oot) and {"sme_id", "as_of", "default_12m"} <= set(rows)
    with pytest.raises(ModelLoadError, match="does not resolve"):
        load_model(f"models:/{MODEL_NAME}@nobody", store)


def test_gates_as_a_function() -> None:
    ok = evaluate_gates(0.80, 0.803, 0.01, True)
    assert all(g.passed for g in ok)
    auc_fail = evaluate_gates(0.79, 0.80, 0.01, True)
    assert [g.name for g in auc_fail if not g.passed] == ["auc"]
    ece_fail = evaluate_gates(0.80, None, 0.03, True)
    assert [g.name for g in ece_fail if not g.passed] == ["ece"]
    mono_fail = evaluate_gates(0.80, None, 0.01, False, monotonic_detail="dso_90d")
    assert [g.name for g in mono_fail if not g.passed] == ["monotonicity"]
    assert "dso_90d" in mono_fail[2].detail


def _decisions(store: str) -> pd.DataFrame:
    client = client_for(store)
    exp = client.get_experiment_by_name(PROMOTIONS_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return pd.DataFrame(
        [
            {
                "version": r.data.params["candidate_version"],
                "decision": r.data.tags["decision"],
                "reasons": r.data.tags["reasons"],
            }
            for r in runs
        ]
    )


def test_promotion_lifecycle(trained, synthetic, store: str, first) -> None:
    client = client_for(store)
    # 1. the first model passes on its own gates
    # (the ECE gate is given 0.03: the synthetic panel's leak-free ECE is near 0.027)
    decision = promote(store, max_ece=0.03)
    assert decision.promoted and decision.version == "1" and decision.champion_version is None
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
    assert client.get_model_version(MODEL_NAME, "1").tags["promotion_decision"] == "promoted"

    # 2. a weaker model (a handful of stumps) fails the AUC gate on the same OOT rows
    panel, truth = synthetic
    config = TrainConfig(seed=1, max_rounds=3, params={"num_leaves": 2}, calibration_folds=3)
    weak = fit(panel, CATALOG, config, truth=truth)
    assert weak.metrics["auc_oot"] < trained.metrics["auc_oot"] - 0.02
    second = log_training(weak, tracking_uri=store)
    assert second.version == "2"
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == "2"
    with pytest.raises(PromotionRejectedError, match="auc") as info:
        promote(store, max_ece=0.03)
    assert "auc" in [r.split(":")[0] for r in info.value.reasons]
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
    assert client.get_model_version(MODEL_NAME, "2").tags["promotion_decision"] == "rejected"

    # 3. the champion's booster with a broken calibration: same ranking, fails the ECE gate
    cal = trained.model.calibration
    skewed = dataclasses.replace(trained.model, calibration=LogOddsCalibration(cal.a + 1.0, cal.b))
    third = log_training(dataclasses.replace(trained, model=skewed), tracking_uri=store)
    with pytest.raises(PromotionRejectedError) as info:
        promote(store, third.version, max_ece=0.03)
    assert [r.split(":")[0] for r in info.value.reasons] == ["ece"]

    # 4. every decision is on record, with its reasons
    log = _decisions(store)
    assert log["version"].tolist() == ["1", "2", "3"]
    assert log["decision"].tolist() == ["promoted", "rejected", "rejected"]
    assert "champion" in log["reasons"][1] and "ECE" in log["reasons"][2]
    # promoting the champion is a no-op: nothing recorded, its tags still describe it
    noop = promote(store, 1)
    assert noop.noop and not noop.promoted and noop.gates == ()
    assert _decisions(store)["version"].tolist() == ["1", "2", "3"]
    assert client.get_model_version(MODEL_NAME, "1").tags["promotion_decision"] == "promoted"
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
