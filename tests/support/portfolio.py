"""The registered model with its drift profile, data folders with faults, and the CLI runner
that the portfolio, monitor and backtest tests share."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.drift import PROFILE_ARTIFACT, TrainingProfile
from serving.cli import build_app
from tests.support.models import Registered, train_small_model
from training.bundle import MODEL_NAME, client_for


@dataclass(frozen=True)
class Profiled:
    """A registered model version whose training run carries the drift profile."""

    tracking_uri: str
    data: Path
    uri: str
    run_id: str
    profile: TrainingProfile


_PROFILED: dict[str, Profiled] = {}


def profiled_version(reg: Registered) -> Profiled:
    """The `registered` model with the drift profile its training run logged."""
    if reg.tracking_uri in _PROFILED:
        return _PROFILED[reg.tracking_uri]
    client = client_for(reg.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(reg.run_id, PROFILE_ARTIFACT, tmp)
        profile = TrainingProfile.from_json(Path(path).read_text(encoding="utf-8"))
    found = Profiled(
        reg.tracking_uri, reg.data, f"models:/{MODEL_NAME}/{reg.version}", reg.run_id, profile
    )
    _PROFILED[reg.tracking_uri] = found
    return found


def write_csv_folder(folder: Path, tables: dict[str, list[dict[str, object]]]) -> Path:
    folder.mkdir(parents=True)
    for name, rows in tables.items():
        pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)
    return folder


def _one_invoice_folder(
    folder: Path, issued: str, due: str, amount: float, **extra: object
) -> Path:
    """A core C1 and an SME S1 with one invoice S1 -> C1, plus any `extra` tables."""
    tables: dict[str, list[dict[str, object]]] = {
        "enterprises": [
            {"enterprise_id": "C1", "role": "core"},
            {"enterprise_id": "S1", "role": "sme"},
        ],
        "invoices": [
            {
                "invoice_id": "I1",
                "seller_id": "S1",
                "buyer_id": "C1",
                "issue_date": issued,
                "due_date": due,
                "amount": amount,
            }
        ],
    }
    tables.update(extra)  # type: ignore[arg-type]
    return write_csv_folder(folder, tables)


def empty_population_folder(folder: Path) -> Path:
    """Trade in 2020 only; a loan disbursed in 2022 stretches the data to 2022: at 2021-12-31
    nobody has an invoice in the last 365 days."""
    loan = {
        "loan_id": "L1",
        "sme_id": "S1",
        "product": "receivable_financing",
        "disbursed_date": "2022-01-01",
        "maturity_date": "2022-12-31",
        "amount": 50.0,
    }
    return _one_invoice_folder(folder, "2020-01-10", "2020-02-10", 100.0, loans=[loan])


def broken_folder(folder: Path) -> Path:
    """An invoice with a negative amount: breaks the data contract."""
    return _one_invoice_folder(folder, "2023-01-10", "2023-02-10", -5.0)


def model_without_reference(folder: Path) -> Path:
    """A local MLflow-style model folder holding a real scoring model but no drift profile."""
    from training.bundle import ARTIFACT_KEY

    train_small_model(seed=5, rounds=10).save(folder / "artifacts" / ARTIFACT_KEY)
    return folder


def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str, *args: str):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("SCF_RISK_AUDIT_DB", f"sqlite:///{tmp_path}/audit.db")
    return CliRunner().invoke(build_app(), list(args))


# -- the core ------------------------------------------------------------------------------------
