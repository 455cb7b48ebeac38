"""Batch scoring (`serving.portfolio.batch`, `scf-risk score`) with a real registered model.

The model is the serving tests' `registered` one (simulator -> pipeline -> training -> MLflow).
The `profiled` fixture (conftest) registers a copy of it whose training run also carries the drift
profile (`features.drift`), as a training run that stores it does; monitor and backtest tests too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.exceptions import FeatureError
from features.io import load_tables
from features.pipeline import build_features
from serving.audit.store import AuditStore
from serving.online import OnlineFeatures
from serving.portfolio.batch import REASONS_TYPE, reasons_of, score_population
from serving.scoring import reason
from tests.support.contract_folder import read_rows, set_cell, write_folder, write_rows
from tests.support.portfolio import (
    Profiled,
    broken_folder,
    cli,
    empty_population_folder,
    model_without_reference,
)
from training.bundle import MODEL_NAME, LoadedModel, load_model

AS_OF = "2023-11-30"


@pytest.fixture(scope="module")
def loaded(profiled: Profiled) -> LoadedModel:
    return load_model(profiled.uri, profiled.tracking_uri)


@pytest.fixture(scope="module")
def tables(profiled: Profiled):
    return load_tables(profiled.data)


def test_scores_are_the_pipeline_features_explained_by_the_model(tables, loaded) -> None:
    scored = score_population(tables, [AS_OF], loaded)
    panel = build_features(tables, [AS_OF])
    pd.testing.assert_frame_equal(scored.features, panel)
    model = loaded.model
    expl = model.explain(panel[model.feature_names])
    scores = scored.scores
    assert list(scores.columns) == [
        "sme_id", "as_of", "pd", "score", "grade", "base_points", "reasons",
        "model_name", "model_version", "model_run_id",
    ]  # fmt: skip
    assert list(scores["sme_id"]) == list(panel["sme_id"])
    np.testing.assert_array_equal(scores["pd"].to_numpy(), expl.pd)
    np.testing.assert_array_equal(scores["score"].to_numpy(), expl.score)
    np.testing.assert_array_equal(scores["base_points"].to_numpy(), expl.base_points)
    assert list(scores["grade"]) == [str(g) for g in expl.grade]
    assert set(scores["model_version"]) == {loaded.version}
    points = expl.points[model.feature_names].to_numpy()
    for i, reasons in enumerate(reasons_of(scores)):
        # the top 4 risk-increasing features: the most negative points, most negative first
        order = [j for j in np.argsort(points[i], kind="stable")[:4] if points[i, j] < 0]
        assert [r["feature"] for r in reasons] == [model.feature_names[j] for j in order]
        for r in reasons:
            j = model.feature_names.index(r["feature"])
            assert r["points"] == points[i, j] < 0
            row = panel.iloc[i][model.feature_names].to_dict()
            assert r["text"] == reason(model, r["feature"], row, r["points"]).text
            value = panel[r["feature"]].iloc[i]
            if r["value"] is None:
                assert r["value_text"] == (None if pd.isna(value) else str(value))
            else:
                assert r["value"] == value and r["value_text"] == repr(float(value))


def test_without_explanations_the_pd_score_and_grade_are_the_same(tables, loaded) -> None:
    full = score_population(tables, [AS_OF], loaded).scores
    fast = score_population(tables, [AS_OF], loaded, explain=False).scores
    np.testing.assert_allclose(fast["pd"], full["pd"], rtol=1e-12)
    np.testing.assert_allclose(fast["score"], full["score"], rtol=1e-12)
    assert list(fast["grade"]) == list(full["grade"])
    assert all(len(r) == 0 for r in reasons_of(fast))


def test_dask_on_two_workers_equals_pandas(tables, loaded) -> None:
    dates = ["2023-08-31", AS_OF]
    pandas = score_population(tables, dates, loaded)
    dask = score_population(tables, dates, loaded, engine="dask", n_workers=2, partitions=5)
    pd.testing.assert_frame_equal(dask.scores, pandas.scores)
    pd.testing.assert_frame_equal(dask.features, pandas.features)
    assert pandas.scores["as_of"].nunique() == 2


def test_two_threads_score_the_frame_one_thread_scores(tables, loaded) -> None:
    """`scf-risk score` explains on both cores by default (`default_threads`): the frame is
    exactly the one thread's, every value and every reason (enough rows that the pandas
    engine splits them into pieces over the threads)."""
    from serving.portfolio.batch import PIPELINE_ROWS, default_threads

    dates = ["2023-06-30", "2023-07-31", "2023-08-31", "2023-09-30", "2023-10-31", AS_OF]
    one = score_population(tables, dates, loaded, threads=1)
    two = score_population(tables, dates, loaded, threads=2)
    assert len(one.scores) >= 2 * PIPELINE_ROWS
    pd.testing.assert_frame_equal(two.scores, one.scores, check_exact=True)
    assert default_threads() == min(2, os.cpu_count() or 1)  # both cores where there are 2
    pd.testing.assert_frame_equal(score_population(tables, dates, loaded).scores, one.scores)


def test_a_date_without_population_or_out_of_range_is_named(tmp_path, loaded) -> None:
    empty = load_tables(empty_population_folder(tmp_path / "empty"))
    with pytest.raises(FeatureError, match="no SME is in the population at 2021-12-31"):
        score_population(empty, ["2021-12-31"], loaded)
    with pytest.raises(FeatureError, match="outside the data's range"):
        score_population(empty, ["2030-01-31"], loaded)


# -- the command ---------------------------------------------------------------------------------
def score_cli(tmp_path: Path, monkeypatch: Any, profiled: Profiled, out: Path) -> Any:
    """`scf-risk score` of the profiled model's data as of AS_OF into ``out``."""
    return cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "score", "--data", str(profiled.data), "--as-of", AS_OF, "--out", str(out),
        "--model", profiled.uri,
    )  # fmt: skip


def test_score_command_writes_parquet_and_materializes_features(
    tmp_path, monkeypatch, profiled, tables
) -> None:
    out = tmp_path / "out" / "scores.parquet"
    result = score_cli(tmp_path, monkeypatch, profiled, out)
    assert result.exit_code == 0, result.output
    assert "SMEs scored as of 2023-11-30" in result.output
    schema = pq.read_schema(out)
    assert schema.field("reasons").type == REASONS_TYPE
    frame = pd.read_parquet(out)
    panel = build_features(tables, [AS_OF])
    assert list(frame["sme_id"]) == list(panel["sme_id"])
    assert frame["reasons"].map(len).max() == 4
    assert [p.name for p in out.parent.iterdir()] == ["scores.parquet"]
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    try:
        for i in (0, len(panel) - 1):
            as_of, values = OnlineFeatures(store).latest(str(panel["sme_id"].iloc[i]))  # type: ignore[misc]
            assert as_of.isoformat() == AS_OF
            row = panel.iloc[i]
            assert values["dso_90d"] == (None if pd.isna(row["dso_90d"]) else row["dso_90d"])
            assert values["industry"] == row["industry"]
    finally:
        store.dispose()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "no SME is in the population at 2021-12-31"),
        ("broken", "invoices, line 2 (data row 1), column amount"),
        ("date", "expected a date YYYY-MM-DD"),
        ("model", "does not resolve"),
    ],
)
def test_score_bad_input_exits_nonzero_and_writes_nothing(
    tmp_path, monkeypatch, profiled, case, message
) -> None:
    data = {
        "empty": lambda: empty_population_folder(tmp_path / "data"),
        "broken": lambda: broken_folder(tmp_path / "data"),
    }.get(case, lambda: profiled.data)()
    as_of = {"date": "2021-13-45"}.get(case, "2021-12-31" if case == "empty" else AS_OF)
    model = f"models:/{MODEL_NAME}/999" if case == "model" else profiled.uri
    out = tmp_path / "out" / "scores.parquet"
    result = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "score", "--data", str(data), "--as-of", as_of, "--out", str(out), "--model", model,
    )  # fmt: skip
    assert result.exit_code == (2 if case == "date" else 1), result.output
    assert message in result.output
    assert not out.parent.exists()
    assert not (tmp_path / "audit.db").exists()


def test_score_names_the_file_line_and_data_row_as_validate_does(tmp_path, monkeypatch) -> None:
    """A value with a line break shifts the file's lines against its data rows: `score` names
    both, as `validate` does, and stops before loading a model or writing anything."""
    folder = write_folder(tmp_path)
    rows = read_rows(folder / "enterprises.csv")
    rows[2][2] = "multi\nline"  # data row 2 spans lines 3 and 4
    write_rows(folder / "enterprises.csv", rows)
    set_cell(folder, "enterprises", 4, "founded_date", "2015-13-01")  # data row 4: line 6
    out = tmp_path / "out" / "scores.parquet"
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    scored = cli(tmp_path, monkeypatch, tracking, "score", "--data", str(folder),
                 "--as-of", "2024-06-30", "--out", str(out))  # fmt: skip
    validated = cli(tmp_path, monkeypatch, tracking, "validate", str(folder))
    for result in (scored, validated):
        assert result.exit_code == 1, result.output
        assert "enterprises, line 3 (data row 2), column industry: line break" in result.output
        assert (
            "enterprises, line 6 (data row 4), column founded_date: not a date in the form "
            "YYYY-MM-DD: '2015-13-01'" in result.output
        )
    assert not out.parent.exists() and not (tmp_path / "audit.db").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_model_without_a_training_reference_is_still_scored(tmp_path, monkeypatch, profiled):
    """Scoring needs no drift profile (only monitoring does)."""
    folder = model_without_reference(tmp_path / "model")
    out = tmp_path / "scores.parquet"
    result = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "score", "--data", str(profiled.data), "--as-of", AS_OF, "--out", str(out),
        "--model", str(folder),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out)) > 0


def test_the_service_scores_materialized_smes_by_id_alone(
    tmp_path, monkeypatch, profiled, loaded, settings, headers
) -> None:
    """After `scf-risk score`, the service's sme_id-only mode scores from the materialised
    features exactly as the batch did."""
    from fastapi.testclient import TestClient

    from serving.api.app import create_app
    from tests.support.models import Registry

    assert settings.audit_db == f"sqlite:///{tmp_path}/audit.db"
    out = tmp_path / "scores.parquet"
    result = score_cli(tmp_path, monkeypatch, profiled, out)
    assert result.exit_code == 0, result.output
    batch = pd.read_parquet(out).set_index("sme_id")
    registry = Registry()
    registry.add(loaded.model)
    with TestClient(create_app(settings, loader=registry)) as client:
        for sme in (batch.index[0], batch.index[len(batch) // 2]):
            r = client.post(
                "/v1/scores", json={"sme_id": sme, "as_of": AS_OF}, headers=headers("scorer")
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["as_of"] == AS_OF
            assert body["pd"] == batch.loc[sme, "pd"]
            assert body["score"] == batch.loc[sme, "score"]
            assert body["grade"] == batch.loc[sme, "grade"]
            assert [(x["feature"], x["points"]) for x in body["reasons"]] == [
                (x["feature"], x["points"]) for x in batch.loc[sme, "reasons"]
            ]
