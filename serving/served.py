"""The served model: loaded once, swapped atomically on reload, shared by the workers.

`ModelHolder.current` is one reference to an immutable `ServedModel`; a request takes it once and
keeps it to the end, so a reload (which builds the new one completely, checks it, then replaces
the reference) never fails a request in flight. A failed load keeps the old model and says why.

Several uvicorn workers are separate processes: the worker that reloads writes the exact model
version it loaded into the audit database (``serving_state``); the others poll it and follow.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from features.exceptions import ScfRiskError
from serving.audit.store import AuditStore
from serving.exceptions import AuditUnavailable, ModelLoadFailed, ModelNotReady
from serving.schemas import ScoreRequestBase, request_models

if TYPE_CHECKING:
    from pydantic import RootModel

    from training.model import ScoringModel
    from training.registry import LoadedModel

log = logging.getLogger("scf_risk.serving")

Loader = Callable[[str, str], "LoadedModel"]
STATE_KEY = "served_model"
ADDITIVITY_TOLERANCE = 1e-6


def default_loader(model_uri: str, tracking_uri: str) -> LoadedModel:
    """Resolve a ``models:/name@alias`` (or ``/version``, ``runs:/ID/model``, a local model
    folder) through the MLflow registry, check its files in a throwaway process
    (`probe_artifact`), then load it here."""
    from training.model import ScoringModel
    from training.registry import LoadedModel

    with tempfile.TemporaryDirectory(prefix="scf-risk-model-") as tmp:
        found = locate_model(model_uri, tracking_uri, Path(tmp))
        probe_artifact(found.folder)
        model = ScoringModel.load(found.folder)
    return LoadedModel(model, found.name, found.version, found.run_id, model_uri)


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's scoring files are (a local folder) and which version they are."""

    folder: Path
    name: str
    version: str | None
    run_id: str | None


def locate_model(model_uri: str, tracking_uri: str, tmp: Path) -> ModelFiles:
    """The local folder of a model URI's scoring files (read in place for local artifact
    stores, else downloaded into `tmp`), as `training.registry.load_scoring_model` finds it."""
    from mlflow.exceptions import MlflowException

    from training.exceptions import ModelLoadError
    from training.pyfunc import ARTIFACT_KEY
    from training.registry import MODEL_NAME, MODEL_PATH, client_for, resolve_version

    name, version, run_id = MODEL_NAME, None, None
    try:
        if model_uri.startswith("models:/"):
            client = client_for(tracking_uri)
            mv = resolve_version(client, model_uri)
            name, version, run_id = str(mv.name), str(mv.version), mv.run_id
            root = _local(client.get_model_version_download_uri(mv.name, mv.version), tmp)
        elif model_uri.startswith("runs:/"):
            run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
            base = client_for(tracking_uri).get_run(run_id).info.artifact_uri.rstrip("/")
            root = _local(f"{base}/{path or MODEL_PATH}", tmp)
        else:
            root = Path(model_uri)
    except MlflowException as exc:
        raise ModelLoadError(f"model URI {model_uri!r}: {exc.message}") from None
    folder = root / "artifacts" / ARTIFACT_KEY
    if not folder.is_dir():
        raise ModelLoadError(f"model URI {model_uri!r} holds no scf-risk scoring model ({folder})")
    return ModelFiles(folder, name, version, run_id)


def _local(source: str, tmp: Path) -> Path:
    parts = urlsplit(source)
    if parts.scheme == "file" or (parts.scheme == "" and Path(source).exists()):
        return Path(url2pathname(parts.path) if parts.scheme == "file" else source)
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
    raise ModelLoadFailed(f"LightGBM's library lib_lightgbm.{suffix} not found near {package}")


def probe_artifact(folder: Path, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Parse a model's ``booster.txt`` with LightGBM in a throwaway child process first.

    LightGBM's native model parser does not raise on a damaged file: a truncated booster, a
    missing tree or an inconsistent count aborts or crashes the whole process (SIGABRT,
    SIGSEGV). Parsed here first, a corrupt champion would take down the worker that reloads it
    and, through the alias, every worker the supervisor restarts. The child calls LightGBM's C
    API directly (``LGBM_BoosterLoadModelFromString``, what `lightgbm.Booster` calls), so it
    costs tens of milliseconds. A child that fails or dies means `ModelLoadFailed`, naming the
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
        raise ModelLoadFailed(
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
        raise ModelLoadFailed(
            f"model file {booster} is corrupt: it crashed LightGBM's parser ({name}): {last[:200]}"
        )
    last = lines[-1][:300] if lines else "no message"
    raise ModelLoadFailed(f"model file {booster} is corrupt: {last}")


def _load_errors() -> tuple[type[BaseException], ...]:
    """The failures a model load can end in (registry down, missing or corrupt artifact)."""
    # TypeError, AttributeError: a model card of the wrong shape (valid JSON, wrong structure).
    errors: list[type[BaseException]] = [
        ScfRiskError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ]
    try:
        from mlflow.exceptions import MlflowException

        errors.append(MlflowException)
    except ImportError:  # pragma: no cover - mlflow is a dependency
        pass
    from lightgbm.basic import LightGBMError

    errors.append(LightGBMError)
    return tuple(errors)


@dataclass(frozen=True)
class ServedModel:
    """A loaded model with everything derived from it (request models), immutable."""

    loaded: LoadedModel
    request_model: type[ScoreRequestBase]
    batch_model: type[RootModel[Any]]
    loaded_at: str
    explain_method: str

    @property
    def model(self) -> ScoringModel:
        return self.loaded.model

    @property
    def info(self) -> dict[str, str | None]:
        """name, version and run_id (recorded with every decision)."""
        return {
            "name": self.loaded.name,
            "version": None if self.loaded.version is None else str(self.loaded.version),
            "run_id": self.loaded.run_id,
        }

    @property
    def exact_uri(self) -> str:
        """A URI that loads exactly this version again (``models:/name/version``)."""
        if self.loaded.version is not None:
            return f"models:/{self.loaded.name}/{self.loaded.version}"
        return str(self.loaded.uri)


def build_served(loaded: LoadedModel, explain_method: str) -> ServedModel:
    """Derive the request models and check the model explains additively before serving it."""
    model = loaded.model
    probe = model.explain(pd.DataFrame(index=pd.RangeIndex(1)), method=explain_method)
    gap = float(np.abs(probe.base_points + probe.points.sum(axis=1).to_numpy() - probe.score).max())
    if not gap <= ADDITIVITY_TOLERANCE:
        raise ModelLoadFailed(
            f"model {loaded.uri}: base points + feature points differ from the score by {gap:g}"
        )
    single, batch = request_models(model.catalog)
    return ServedModel(
        loaded=loaded,
        request_model=single,
        batch_model=batch,
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        explain_method=explain_method,
    )


class ModelHolder:
    """The current model of this worker, its last load error, and the shared reload generation."""

    def __init__(
        self, loader: Loader, *, model_uri: str, tracking_uri: str, explain_method: str
    ) -> None:
        self.loader = loader
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.explain_method = explain_method
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.generation: str | None = None
        self._lock = threading.Lock()
        self._errors = _load_errors()

    def get(self) -> ServedModel:
        """The model to use for one request (taken once per request)."""
        served = self.current
        if served is None:
            raise ModelNotReady(
                "no model is loaded" + (f": {self.last_error}" if self.last_error else "")
            )
        return served

    def load(self, uri: str | None = None) -> ServedModel:
        """Load `uri` (default the configured one, e.g. the champion alias) and swap it in.

        On failure the current model stays and `ModelLoadFailed` says why.
        """
        target = uri or self.model_uri
        with self._lock:
            try:
                loaded = self.loader(target, self.tracking_uri)
                served = build_served(loaded, self.explain_method)
            except ModelLoadFailed as exc:
                self.last_error = str(exc)
                raise
            except self._errors as exc:
                self.last_error = f"{target}: {type(exc).__name__}: {exc}".strip()
                raise ModelLoadFailed(f"could not load model {self.last_error}") from exc
            self.current = served
            self.last_error = None
        log.info(
            "serving model %s version %s (run %s) from %s",
            served.loaded.name,
            served.loaded.version,
            served.loaded.run_id,
            target,
        )
        return served

    # -- keeping the workers in step ------------------------------------------------------------
    def publish(self, store: AuditStore, served: ServedModel) -> None:
        """Tell the other workers which exact version to serve now."""
        generation = uuid.uuid4().hex
        store.set_state(STATE_KEY, json.dumps({"generation": generation, "uri": served.exact_uri}))
        self.generation = generation

    def adopt_generation(self, store: AuditStore) -> None:
        """At start: take the shared generation as seen (start-up already loaded the champion)."""
        state = _read_state(store)
        self.generation = state.get("generation") if state else None

    def follow(self, store: AuditStore) -> None:
        """One poll: load the model if none is loaded yet, or the version another worker
        published. Failures are logged (once per distinct reason) and retried next time."""
        if self._lock.locked():
            return  # a load is under way (start-up or reload)
        try:
            state = _read_state(store)
        except AuditUnavailable:
            state = None
        if self.current is not None and not (state and state.get("generation") != self.generation):
            return
        uri = state.get("uri") if state and self.current is not None else None
        previous = self.last_error
        try:
            self.load(uri)
        except ModelLoadFailed as exc:
            if str(exc) != previous:
                log.error("model still not loaded: %s", exc)
            return
        if state:
            self.generation = state.get("generation")


def _read_state(store: AuditStore) -> dict[str, Any] | None:
    raw = store.get_state(STATE_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class Watcher:
    """A daemon thread that calls `poll` every `interval` seconds until stopped."""

    def __init__(self, poll: Callable[[], None], interval: float) -> None:
        self.poll = poll
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scf-risk-model-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
