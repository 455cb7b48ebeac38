"""The model bundle and its one loader.

A trained model travels as one bundle: the folder `ScoringModel.save` writes (booster, calibration,
catalog, score and master scales, reference data, drift profile, label horizon, training and OOT
months, thresholds; every file under a sha256 checksum) inside the MLflow pyfunc model of its
training run. `load_model` is the one way to read it back, for the scoring service, batch
scoring, monitoring, backtests, replay and promotion alike: resolve the URI through the MLflow
registry, check the booster in a throwaway process (`probe_artifact`), then load and verify it.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from training.exceptions import ModelLoadError
from training.model import ScoringModel

MODEL_NAME = "sme-default-pd"
MODEL_PATH = "model"  # the pyfunc model's folder in a training run's artifacts
ARTIFACT_KEY = "scoring_model"  # the bundle's folder inside the pyfunc model's artifacts


@dataclass(frozen=True)
class LoadedModel:
    """A scoring model and where it came from."""

    model: ScoringModel
    name: str
    version: str | None
    run_id: str | None
    uri: str


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's bundle is (a local folder) and which version it is."""

    folder: Path
    name: str
    version: str | None
    run_id: str | None


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient on the tracking store, which is also the registry."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def load_model(model_uri: str, tracking_uri: str, *, probe: bool = True) -> LoadedModel:
    """Load the bundle of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/model``
    or a local MLflow model folder, after checking its booster in a child process (`probe`)."""
    with tempfile.TemporaryDirectory(prefix="scf-risk-model-") as tmp:
        found = locate_model(model_uri, tracking_uri, Path(tmp))
        if probe:
            probe_artifact(found.folder)
        model = ScoringModel.load(found.folder)
    return LoadedModel(model, found.name, found.version, found.run_id, model_uri)


def resolve_version(client: Any, model_uri: str) -> Any:
    """The ModelVersion of ``models:/name@alias`` or ``models:/name/version``."""
    from mlflow.exceptions import MlflowException

    spec = model_uri.removeprefix("models:/")
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = spec.partition("/")
        if not version:
            raise ModelLoadError(
                f"model URI {model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ModelLoadError(f"model URI {model_uri!r} does not resolve: {exc.message}") from None


def locate_model(model_uri: str, tracking_uri: str, tmp: Path) -> ModelFiles:
    """The local folder of a model URI's bundle (read in place for local artifact stores, else
    downloaded into `tmp`)."""
    from mlflow.exceptions import MlflowException

    name, version, run_id = MODEL_NAME, None, None
    try:
        if model_uri.startswith("models:/"):
            client = client_for(tracking_uri)
            mv = resolve_version(client, model_uri)
            name, version = str(mv.name), str(mv.version)
            run_id = mv.run_id
            source = client.get_model_version_download_uri(name, version)
            root = local_artifacts(source, tmp)
        elif model_uri.startswith("runs:/"):
            run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
            client = client_for(tracking_uri)
            base = client.get_run(run_id).info.artifact_uri.rstrip("/")
            root = local_artifacts(f"{base}/{path or MODEL_PATH}", tmp)
        else:
            root = Path(model_uri)
    except MlflowException as exc:
        raise ModelLoadError(f"model URI {model_uri!r}: {exc.message}") from None
    folder = root / "artifacts" / ARTIFACT_KEY
    if not folder.is_dir():
        raise ModelLoadError(f"model URI {model_uri!r} holds no scf-risk scoring model ({folder})")
    return ModelFiles(folder, name, version, run_id)


def local_artifacts(source: str, tmp: Path) -> Path:
    """A local folder holding the artifacts at `source`: the folder itself for file URIs (read
    in place, no copy), else a download into `tmp`."""
    parts = urlsplit(source)
    if parts.scheme == "file" or (parts.scheme == "" and Path(source).exists()):
        local = Path(url2pathname(parts.path) if parts.scheme == "file" else source)
        if not local.exists():
            raise ModelLoadError(f"artifact location {source} does not exist")
        return local
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))


PROBE_TIMEOUT_SECONDS = 120.0
_PROBE_CODE = """
import ctypes, pathlib, sys
lib = ctypes.cdll.LoadLibrary(sys.argv[1])
lib.LGBM_GetLastError.restype = ctypes.c_char_p
handle, iterations = ctypes.c_void_p(), ctypes.c_int()
text = ctypes.c_char_p(pathlib.Path(sys.argv[2]).read_bytes())
if lib.LGBM_BoosterLoadModelFromString(text, ctypes.byref(iterations), ctypes.byref(handle)):
    sys.exit("LightGBMError: " + lib.LGBM_GetLastError().decode("utf-8", "replace"))
lib.LGBM_BoosterFree(handle)
"""


def lightgbm_library() -> Path:
    """The LightGBM shared library the `lightgbm` package loads (found as its libpath does)."""
    import lightgbm

    suffix = {"Windows": "dll", "Darwin": "dylib"}.get(platform.system(), "so")
    package = Path(lightgbm.__file__).resolve().parent
    for folder in (package.parent, package / "bin", package / "lib"):
        if (folder / f"lib_lightgbm.{suffix}").is_file():
            return folder / f"lib_lightgbm.{suffix}"
    raise ModelLoadError(f"LightGBM's library lib_lightgbm.{suffix} not found near {package}")


def probe_artifact(folder: Path, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Parse a model's ``booster.txt`` with LightGBM in a throwaway child process first.

    LightGBM's native model parser does not raise on a damaged file: a truncated booster, a
    missing tree or an inconsistent count aborts or crashes the whole process (SIGABRT,
    SIGSEGV). Parsed here first, a corrupt champion would take down the worker that reloads it
    and, through the alias, every worker the supervisor restarts. The child calls LightGBM's C
    API directly (``LGBM_BoosterLoadModelFromString``, what `lightgbm.Booster` calls), so it
    costs tens of milliseconds. A child that fails or dies means `ModelLoadError`, naming the
    file and the parser's last words. (No booster file: the load itself says so.)
    """
    booster = folder / "booster.txt"
    if not booster.is_file():
        return
    cmd = [sys.executable, "-c", _PROBE_CODE, str(lightgbm_library()), str(booster)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"model file {booster}: parsing took more than {timeout:.0f} s"
        ) from None
    if done.returncode == 0:
        return
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    if done.returncode < 0:
        said = [ln for ln in lines if ln.startswith("[LightGBM]")]
        last = said[-1] if said else (lines[-1] if lines else "no message")
        last = re.sub(r"^(\[LightGBM\] )?(\[\w+\] )?", "", last).split(" met ", 1)[0]
        name = signal.Signals(-done.returncode).name
        raise ModelLoadError(
            f"model file {booster} is corrupt: it crashed LightGBM's parser ({name}): {last[:200]}"
        )
    last = lines[-1][:300] if lines else "no message"
    raise ModelLoadError(f"model file {booster} is corrupt: {last}")
