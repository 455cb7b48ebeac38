"""MLflow tracking and the model registry: log a training run, register its model, load a model
by URI (``models:/sme-default-pd@champion``, ``models:/sme-default-pd/3``, ``runs:/<id>/model``
or a local model folder).

Everything goes through an explicit `MlflowClient(tracking_uri)`; MLflow's process-wide tracking
URI is never changed. Artifacts land under an absolute ``mlartifacts`` folder: beside the SQLite
file for ``sqlite:///`` URIs (``models/mlartifacts`` for the default), else ``models/mlartifacts``
of the working directory. Registry aliases, never stages.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from features.drift import PROFILE_ARTIFACT
from training.bundle import MODEL_NAME, MODEL_PATH, client_for, local_artifacts
from training.exceptions import ModelLoadError, TrackingUnavailableError
from training.model import ScoringModel

CHALLENGER = "challenger"
CHAMPION = "champion"
DEFAULT_EXPERIMENT = "sme-default-pd"
PROMOTIONS_EXPERIMENT = "promotions"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""The tag (and value) MLflow's UI reads to open an experiment on its runs rather than on the
GenAI traces page (the UI's own constant in the pinned MLflow 3.17)."""
OOT_PATH = "oot"
OOT_FILE = "oot_rows.parquet"
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "oracle")
CONNECT_TIMEOUT_SECONDS = 5
REQUIREMENTS = ("mlflow", "lightgbm", "pandas", "numpy", "scipy", "scikit-learn", "shap", "pyarrow")


@dataclass(frozen=True)
class RegisteredRun:
    """A finished training run and the model version it registered."""

    run_id: str
    experiment_id: str
    name: str
    version: str
    model_uri: str  # models:/name/version


# -- the tracking store -------------------------------------------------------------------------
def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a sqlite URI (None for in-memory)."""
    rest = tracking_uri.split(":///", 1)[1] if ":///" in tracking_uri else ""
    rest = rest.split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def artifact_root(tracking_uri: str) -> Path:
    """The absolute artifact folder of a tracking store (module docstring)."""
    scheme = urlsplit(tracking_uri).scheme.split("+", 1)[0]
    if scheme == "sqlite":
        db = _sqlite_path(tracking_uri)
        if db is not None:
            return (db.parent / "mlartifacts").resolve()
    return Path("models/mlartifacts").resolve()


def redact(uri: str) -> str:
    """A URI with its password replaced by ***, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def check_tracking(tracking_uri: str, *, create: bool = True) -> Any:
    """Fail fast (before any training) when the tracking store cannot be reached or created;
    return a client on it. MLflow itself retries an unreachable database for minutes, so the
    database is first tried once directly, with a short timeout. Read commands (promote,
    compare) pass ``create=False``: a SQLite store that does not exist is then an error, not a
    new empty store."""
    import sqlalchemy
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    parts = urlsplit(tracking_uri)
    scheme = parts.scheme.split("+", 1)[0]
    where = f"MLflow tracking URI {redact(tracking_uri)!r}"
    if scheme == "sqlite":
        db = _sqlite_path(tracking_uri)
        if db is None:
            raise TrackingUnavailableError(
                f"{where}: an in-memory database keeps nothing; give a file, e.g. "
                "sqlite:///models/mlflow.db"
            )
        if not db.parent.is_dir():
            raise TrackingUnavailableError(
                f"{where}: folder {db.parent} does not exist (create it, or set "
                "MLFLOW_TRACKING_URI)"
            )
        if not create and not db.is_file():
            raise TrackingUnavailableError(
                f"{where}: no tracking store at {db} (train and register a model first with "
                "`scf-risk train`, or set MLFLOW_TRACKING_URI)"
            )
    if scheme in DATABASE_SCHEMES:
        args = (
            {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
            if scheme in ("postgresql", "mysql")
            else {}
        )
        try:
            engine = sqlalchemy.create_engine(tracking_uri, connect_args=args)
            with engine.connect():
                pass
            engine.dispose()
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingUnavailableError(f"{where}: cannot connect: {first}") from None
    elif scheme in ("http", "https"):
        import requests

        try:
            requests.get(
                f"{tracking_uri.rstrip('/')}/health", timeout=CONNECT_TIMEOUT_SECONDS
            ).raise_for_status()
        except requests.RequestException as exc:
            raise TrackingUnavailableError(f"{where}: server not reachable: {exc}") from None
    elif scheme in ("", "file"):
        path = Path(parts.path if scheme == "file" else tracking_uri)
        if not path.parent.is_dir():
            raise TrackingUnavailableError(f"{where}: folder {path.parent} does not exist")
    client = client_for(tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except (MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingUnavailableError(f"{where}: {first}") from None
    return client


def ensure_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created with its artifacts under `artifact_root`, tagged as
    model development (`EXPERIMENT_KIND_TAG`; an older experiment without the tag gets it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            client.restore_experiment(found.experiment_id)
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return str(found.experiment_id)
    root = artifact_root(tracking_uri)
    root.mkdir(parents=True, exist_ok=True)
    return str(
        client.create_experiment(
            name,
            artifact_location=(root / name).as_uri(),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    )


@contextmanager
def recorded_run(
    client: Any, experiment: str, tracking_uri: str, *, name: str, kind: str
) -> Iterator[Any]:
    """A new run of `experiment` (created if needed) named `name` and tagged
    ``scf_risk.kind=kind``: FINISHED when the block completes, FAILED if it raises."""
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    run = client.create_run(experiment_id, run_name=name, tags={"scf_risk.kind": kind})
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)


# -- logging a training run ---------------------------------------------------------------------
def _flat_params(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(f"{key}.", v))
        elif isinstance(v, list | tuple):
            out[key] = ",".join(str(x) for x in v)
        else:
            out[key] = str(v)
    return out


def _requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def _signature_and_example(result: Any) -> tuple[Any, pd.DataFrame]:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    model: ScoringModel = result.model
    inputs = Schema(
        [
            ColSpec("string" if f.kind == "categorical" else "double", f.name, required=False)
            for f in model.catalog
        ]
    )
    outputs = Schema(
        [ColSpec("double", "pd"), ColSpec("double", "score"), ColSpec("string", "grade")]
    )
    names = model.feature_names
    example = result.oot[names].head(5).copy()
    for f in model.catalog:
        if f.kind == "categorical":
            example[f.name] = example[f.name].astype("object").where(example[f.name].notna(), None)
        else:
            example[f.name] = example[f.name].astype("float64")
    return ModelSignature(inputs=inputs, outputs=outputs), example.reset_index(drop=True)


def oot_frame(result: Any) -> pd.DataFrame:
    """The OOT rows promote compares models on: keys, label, every feature, the challenger's
    PD/score/grade and (when known) the true PD."""
    keep = ["sme_id", "as_of", "default_12m", *result.model.feature_names, "pd", "score", "grade"]
    if "pd_true" in result.oot:
        keep.append("pd_true")
    frame = result.oot[keep].copy()
    frame["grade"] = frame["grade"].astype("str")
    return frame


def log_training(
    result: Any,
    *,
    tracking_uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    info: dict[str, str] | None = None,
    client: Any = None,
    model_name: str = MODEL_NAME,
) -> RegisteredRun:
    """Log a `training.train.TrainResult` as an MLflow run (params, metrics, tags, artifacts,
    the pyfunc model), register the model as a new version of `model_name` and point the alias
    `challenger` at it. The run is marked FAILED, and nothing registered, if a step fails."""
    import mlflow.pyfunc
    from mlflow.entities import Metric, Param, RunTag

    from training.bundle import ARTIFACT_KEY
    from training.pyfunc import MODEL_CODE
    from training.validation_report import write_artifacts

    client = client or check_tracking(tracking_uri)
    facts = dict(info or {})
    name = f"train-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%SZ}"
    with recorded_run(client, experiment, tracking_uri, name=name, kind="training") as run:
        experiment_id = str(run.info.experiment_id)
        run_id = run.info.run_id
        params = _flat_params("", result.config.as_params())
        params.update(_flat_params("lgb.", result.lgb_params))
        params["features"] = str(len(result.model.catalog))
        now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
        metrics = [
            Metric(k, float(v), now, 0) for k, v in sorted(result.metrics.items()) if np.isfinite(v)
        ]
        tags = {
            **{f"scf_risk.{k}": str(v) for k, v in facts.items()},
            "scf_risk.monotonicity": "passed" if result.monotonicity.ok else "failed",
            "scf_risk.oot_months": ",".join(result.split.oot_months),
        }
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, v) for k, v in sorted(params.items())],
            tags=[RunTag(k, v) for k, v in sorted(tags.items())],
        )
        with tempfile.TemporaryDirectory(prefix="scf-risk-run-") as tmp:
            folder = Path(tmp)
            write_artifacts(result, folder / "evidence", {"run_id": run_id, **facts})
            client.log_artifacts(run_id, str(folder / "evidence"))
            profile = result.model.drift_profile
            (folder / PROFILE_ARTIFACT).write_text(profile.to_json(), encoding="utf-8")
            client.log_artifact(run_id, str(folder / PROFILE_ARTIFACT))
            (folder / OOT_PATH).mkdir()
            oot_frame(result).to_parquet(folder / OOT_PATH / OOT_FILE, index=False)
            client.log_artifacts(run_id, str(folder / OOT_PATH), OOT_PATH)
            result.model.save(folder / ARTIFACT_KEY)
            signature, example = _signature_and_example(result)
            code = folder / "scoring_pyfunc.py"
            code.write_text(MODEL_CODE, encoding="utf-8")
            mlflow.pyfunc.save_model(
                str(folder / MODEL_PATH),
                python_model=str(code),
                artifacts={ARTIFACT_KEY: str(folder / ARTIFACT_KEY)},
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
                metadata={"scf_risk_run_id": run_id, "model_name": model_name},
            )
            client.log_artifacts(run_id, str(folder / MODEL_PATH), MODEL_PATH)
        version = _register(client, model_name, run, result, facts)
    return RegisteredRun(
        run_id=run_id,
        experiment_id=experiment_id,
        name=model_name,
        version=version,
        model_uri=f"models:/{model_name}/{version}",
    )


def _register(client: Any, name: str, run: Any, result: Any, facts: dict[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description="Probability of default within 12 months of an SME in supply-chain "
            "finance: calibrated, monotone LightGBM on point-in-time trade features.",
        )
    mt = result.metrics
    tags = {
        "auc_oot": f"{mt['auc_oot']:.6f}",
        "ece_oot": f"{mt['ece_oot']:.6f}",
        "monotonicity": "passed" if result.monotonicity.ok else "failed",
        **{k: v for k, v in facts.items() if k.endswith("sha256")},
    }
    mv = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri.rstrip('/')}/{MODEL_PATH}",
        run_id=run.info.run_id,
        tags=tags,
        description=f"OOT AUC {mt['auc_oot']:.4f}, ECE {mt['ece_oot']:.4f}, "
        f"OOT months {result.split.oot_months[0]}..{result.split.oot_months[-1]}",
    )
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


def load_oot_rows(client: Any, run_id: str) -> pd.DataFrame:
    """The OOT rows logged by a training run."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="scf-risk-oot-") as tmp:
        try:
            root = client.get_run(run_id).info.artifact_uri.rstrip("/")
            path = local_artifacts(f"{root}/{OOT_PATH}", Path(tmp)) / OOT_FILE
            return pd.read_parquet(path)
        except (MlflowException, OSError, ModelLoadError) as exc:
            raise ModelLoadError(f"run {run_id} has no OOT rows artifact: {exc}") from None
