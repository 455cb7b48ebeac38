"""The served model: loaded once, swapped atomically on reload, shared by the workers.

`ModelHolder.current` is one reference to an immutable `ServedModel`; a request takes it once and
keeps it to the end, so a reload (which builds the new one completely, checks it, then replaces
the reference) never fails a request in flight. A failed load keeps the old model and says why.

Several uvicorn workers are separate processes: the worker that reloads bumps a generation counter
in the audit database (``serving_state``); the others poll it and reload the configured model URI
(the registry's champion), verified by the bundle's checksums. The row only signals "reload": it
never names what to load, so a database writer cannot make the workers serve an unpromoted
version. Every change of the served model is an audit record (`AuditStore.record_model_change`).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.exceptions import ScfRiskError
from serving.audit.store import AuditStore
from serving.exceptions import AuditUnavailable, ModelLoadFailed, ModelNotReady
from serving.schemas import ScoreRequestBase, request_models

if TYPE_CHECKING:
    from pydantic import RootModel

    from training.bundle import LoadedModel
    from training.model import ScoringModel

log = logging.getLogger("scf_risk.serving")

Loader = Callable[[str, str], "LoadedModel"]
"""How a worker loads a model URI: `training.bundle.load_model`, the one loader (tests pass their
own to serve in-memory models)."""
STATE_KEY = "served_model"
ADDITIVITY_TOLERANCE = 1e-6


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


def build_served(loaded: LoadedModel, explain_method: str, *, threads: int = 1) -> ServedModel:
    """Derive the request models and check the model explains additively before serving it.
    ``threads`` > 1: the compiled kernels that split a large batch over threads are compiled
    (or loaded from numba's cache) now, not by the first batch."""
    model = loaded.model
    probe = model.explain(pd.DataFrame(index=pd.RangeIndex(1)), method=explain_method)
    if threads > 1:
        model.treeshap().with_threads(threads).warm_up()
    gap = float(np.abs(probe.base_points + probe.points.sum(axis=1).to_numpy() - probe.score).max())
    if not gap <= ADDITIVITY_TOLERANCE:
        raise ModelLoadFailed(
            f"model {loaded.uri}: base points + feature points differ from the score by {gap:g}"
        )
    single, batch = request_models(model.catalog, model.categories)
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
        self,
        loader: Loader,
        *,
        model_uri: str,
        tracking_uri: str,
        explain_method: str,
        threads: int = 1,
    ) -> None:
        self.loader = loader
        self.threads = threads
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
                served = build_served(loaded, self.explain_method, threads=self.threads)
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
        """Tell the other workers to reload the configured model (a new generation; no URI)."""
        generation = uuid.uuid4().hex
        store.set_state(STATE_KEY, json.dumps({"generation": generation}))
        self.generation = generation

    def adopt_generation(self, store: AuditStore) -> None:
        """At start: take the shared generation as seen (start-up already loaded the champion)."""
        state = _read_state(store)
        self.generation = state.get("generation") if state else None

    def follow(self, store: AuditStore) -> None:
        """One poll: load the model if none is loaded yet, or reload the configured one when
        another worker signalled a new generation (anything else in the row is ignored).
        Failures are logged (once per distinct reason) and retried next time."""
        if self._lock.locked():
            return  # a load is under way (start-up or reload)
        try:
            state = _read_state(store)
        except AuditUnavailable:
            state = None
        if self.current is not None and not (state and state.get("generation") != self.generation):
            return
        previous = self.last_error
        try:
            self.load()
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
