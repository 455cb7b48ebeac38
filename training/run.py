"""`scf-risk train` as a function: check the tracking store, read the inputs, train, log and
register. The command line (`training.cli`) is a thin edge over `train_and_register`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from training.exceptions import TrainingError
from training.registry import DEFAULT_EXPERIMENT, RegisteredRun, check_tracking, log_training
from training.train import (
    Progress,
    Steps,
    TrainConfig,
    TrainResult,
    fingerprint_files,
    fingerprint_frame,
    fit,
)

if TYPE_CHECKING:
    from features.contract import Tables
    from features.reference import Reference

TRUTH_FILE = "truth.parquet"
SUMMARY_KEYS = (
    "auc_oot",
    "gini_oot",
    "ks_oot",
    "brier_oot",
    "log_loss_oot",
    "ece_oot",
    "pr_auc_oot",
    "auc_static_rating_oot",
    "auc_oracle_oot",
    "auc_oot_benchmark_scorecard",
    "auc_oot_ci_low",
    "auc_oot_ci_high",
    "auc_oot_unseen_sme",
    "oot_defaults_revealed_share",
    "n_oot",
    "best_iteration",
)


@dataclass
class TrainingInputs:
    panel: pd.DataFrame
    tables: Tables | None
    reference: Reference | None
    truth: pd.DataFrame | None
    info: dict[str, str]  # source and sha256 fingerprints, logged as tags
    horizon_days: int  # the panel's label horizon (stored in the model's bundle)


def _table_files(folder: Path) -> list[Path]:
    from features.contract import TABLES

    names = {t.name for t in TABLES}
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in (".csv", ".parquet")
        and p.stem in names
    )  # fmt: skip


def read_parquet(path: Path, what: str) -> pd.DataFrame:
    """A Parquet file, or a `TrainingError` naming it."""
    import pyarrow

    if not path.is_file():
        raise TrainingError(f"{what} {path}: no such file")
    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        raise TrainingError(f"{what} {path}: not a readable Parquet file ({exc})") from None


def load_inputs(
    data: Path | None,
    features: Path | None,
    truth: Path | None = None,
    *,
    horizon_days: int | None = None,
    engine: str = "pandas",
    scheduler: str | None = None,
    on_dates: Callable[[int], Callable[[], object]] | None = None,
) -> TrainingInputs:
    """The panel (read from `features`, or built from the tables in `data`), the tables and
    their reference data (when `data` is given) and the truth (`truth`, else
    `data/truth.parquet` when present). `horizon_days`: the label horizon to build the panel
    with (default `DEFAULT_HORIZON_DAYS`); a panel file's recorded horizon must agree with it."""
    from features.contract import DEFAULT_HORIZON_DAYS, HORIZON_ATTR

    if data is None and features is None:
        raise TrainingError("give --data DIR or --features FILE.parquet")
    info: dict[str, str] = {}
    tables = reference = None
    if data is not None:
        from features.io import load_tables
        from features.reference import build_reference

        if not data.is_dir():
            raise TrainingError(f"--data {data}: no such folder")
        tables = load_tables(data)
        reference = build_reference(tables)
        info["data"] = str(data)
        info["data_sha256"] = fingerprint_files(_table_files(data))
    if features is not None:
        panel = read_parquet(features, "features file")
        recorded = panel.attrs.get(HORIZON_ATTR)
        if recorded is None and horizon_days is None:
            raise TrainingError(
                f"features file {features} does not record its label horizon (written by an "
                "earlier release): give --horizon-days"
            )
        if recorded is not None and horizon_days is not None and int(recorded) != horizon_days:
            raise TrainingError(
                f"features file {features} was built with a {recorded}-day label horizon, "
                f"not --horizon-days {horizon_days}"
            )
        horizon = int(recorded) if recorded is not None else int(horizon_days or 0)
        info["features"] = str(features)
        info["features_sha256"] = fingerprint_files([features])
    else:
        assert tables is not None
        from features.engines import build_panel
        from features.pipeline import data_range, month_ends

        horizon = DEFAULT_HORIZON_DAYS if horizon_days is None else horizon_days
        start, end = data_range(tables)
        panel = build_panel(
            tables,
            month_ends(start, end),
            engine="dask" if engine == "dask" else "pandas",
            scheduler=scheduler,
            horizon_days=horizon,
            reference=reference,
            progress=on_dates,
        )
    info["panel_sha256"] = fingerprint_frame(panel)
    truth_path = truth if truth is not None else (data / TRUTH_FILE if data is not None else None)
    truth_frame = None
    if truth_path is not None and (truth is not None or truth_path.is_file()):
        truth_frame = read_parquet(truth_path, "truth file")
        info["truth"] = str(truth_path)
        info["truth_sha256"] = fingerprint_files([truth_path])
    return TrainingInputs(panel, tables, reference, truth_frame, info, horizon)


def train_and_register(
    inputs: TrainingInputs,
    config: TrainConfig,
    *,
    tracking_uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    progress: Progress | Steps | None = None,
    client: Any = None,
) -> tuple[RegisteredRun, TrainResult]:
    """Train on the inputs and log + register the model (alias `challenger`). The tracking
    store is checked first (pass `client` from an earlier `check_tracking` to skip that)."""
    if config.horizon_days != inputs.horizon_days:
        raise TrainingError(
            f"the training configuration says a {config.horizon_days}-day label horizon, the "
            f"panel was built with {inputs.horizon_days} days"
        )
    client = client or check_tracking(tracking_uri)
    steps = progress if isinstance(progress, Steps) else Steps(progress)
    outer = steps.plan
    steps = Steps(steps.say, lambda n: outer(n + 1))  # + logging and registering
    result = fit(
        inputs.panel,
        config=config,
        reference=inputs.reference,
        truth=inputs.truth,
        tables=inputs.tables,
        progress=steps,
    )
    steps.say("logging to MLflow and registering")
    registered = log_training(
        result, tracking_uri=tracking_uri, experiment=experiment, info=inputs.info, client=client
    )
    return registered, result


def summary(registered: RegisteredRun, result: TrainResult) -> dict[str, Any]:
    """The JSON line `scf-risk train` prints (interfaces.md); NaN/absent metrics omitted."""
    out: dict[str, Any] = {
        "run_id": registered.run_id,
        "model_name": registered.name,
        "model_version": registered.version,
        "model_uri": registered.model_uri,
        "alias": "challenger",
    }
    for key in SUMMARY_KEYS:
        value = result.metrics.get(key)
        if value is not None and math.isfinite(value):
            out[key] = int(value) if key in ("n_oot", "best_iteration") else round(value, 6)
    out["monotonicity"] = "passed" if result.monotonicity.ok else "failed"
    out["oot_months"] = f"{result.split.oot_months[0]}..{result.split.oot_months[-1]}"
    return out
