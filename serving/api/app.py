"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan loads the model.

Nothing happens at import. `scf-risk serve` runs ``serving.api.app:app_from_env`` under uvicorn
(a factory, so each worker builds its own app from the environment).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from serving.api import errors
from serving.api.errors import error_schemas
from serving.api.examples import add_examples
from serving.api.keys import redact
from serving.api.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from serving.api.pages import routes as pages
from serving.api.prometheus import MetricsMiddleware
from serving.api.routes import admin, decisions, docs, health, model, reason_codes, scores
from serving.api.service import Service
from serving.audit.store import AuditStore
from serving.served import Loader
from serving.settings import Settings

log = logging.getLogger("scf_risk.serving")


def create_app(
    settings: Settings | None = None,
    *,
    loader: Loader | None = None,
    store: AuditStore | None = None,
    tune_gc: bool = False,
) -> FastAPI:
    """Build the scoring service. `loader(model_uri, tracking_uri)` loads a model (default: the
    MLflow registry); `store` overrides the audit store built from ``settings.audit_db``.
    `tune_gc`: the app owns its process (`app_from_env`, a uvicorn worker): it sets the
    collector's thresholds and freezes the heap after start-up and each model load
    (`serving.api.service.settle_heap`); never in a process shared with other work (a test
    run), where frozen cycles would stay."""
    settings = settings if settings is not None else Settings()
    service = Service(settings, loader=loader, store=store, tune_gc=tune_gc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(
        title="scf-risk scoring service",
        description=(
            "Explained credit scores for SMEs in supply chains: PD, score, grade and SHAP reason "
            "points; every decision stored in a hash-chained audit trail."
        ),
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by routes/docs.py
        redoc_url=None,
    )
    app.state.service = service
    for module in (scores, decisions, model, reason_codes, admin, health, pages, docs):
        app.include_router(module.router)
    app.mount(docs.ASSETS, docs.assets(), name="docs-assets")
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.openapi = _openapi_of(app, service)  # type: ignore[method-assign]
    return app


def _openapi_of(app: FastAPI, service: Service) -> Any:
    """OpenAPI with the request schemas of the model being served (rebuilt when it changes)."""
    cache: dict[int, tuple[Any, dict[str, Any]]] = {}

    def openapi() -> dict[str, Any]:
        served = service.holder.current
        key = id(served)
        if key not in cache:
            cache.clear()
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                models_for_openapi(service)
            )
            add_examples(schema)
            cache[key] = (served, schema)
        return cache[key][1]

    return openapi


def models_for_openapi(svc: Service) -> dict[str, Any]:
    """The current request schemas, for the OpenAPI document's components."""
    single, batch = svc.request_models()
    schemas: dict[str, Any] = error_schemas()
    for request_model in (single, batch):
        schema = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[request_model.__name__] = schema
    return schemas


class RedactKeys(logging.Filter):
    """Masks API keys in log records: a client that puts its key in a URL (``?api_key=...``)
    would otherwise leave it in the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


LOGGERS_WITH_HANDLERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


def redact_logs() -> None:
    """Put `RedactKeys` on every handler of the root and uvicorn loggers (once each)."""
    for name in LOGGERS_WITH_HANDLERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactKeys) for f in handler.filters):
                handler.addFilter(RedactKeys())


def app_from_env() -> FastAPI:
    """The uvicorn factory: settings from the environment, logs without keys."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact_logs()
    return create_app(Settings(), tune_gc=True)
