"""Prometheus metrics of the service: requests, latency, decisions by grade, served model.

Each app gets its own registry (no global state at import). Under several uvicorn workers,
`scf-risk serve` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start; the metrics are then
kept in per-process files there and `/metrics` aggregates every worker's (prometheus-client's
multiprocess mode).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess() -> bool:
    """True when metrics are shared between worker processes."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = None if multiprocess() else self.registry
        self.requests = Counter(
            "scf_risk_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "scf_risk_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.decisions = Counter(
            "scf_risk_decisions",
            "Stored scoring decisions by grade.",
            ["grade"],
            registry=reg,
        )
        self.model_info = Gauge(
            "scf_risk_model_info",
            "The served model (1 = served by this process now).",
            ["name", "version", "run_id"],
            registry=reg,
            multiprocess_mode="liveall",
        )
        self._model: tuple[str, str, str] | None = None
        # Each label set's child, looked up once: `labels()` takes the metric's lock and
        # rebuilds the label tuple on every call (children are never removed here).
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}
        self._decisions: dict[str, Any] = {}

    def count_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """One HTTP request answered: counted by method, route template and status; timed."""
        key = (method, route, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(method, route, status)
        counter.inc()
        timer = self._latency.get(key[:2])
        if timer is None:
            timer = self._latency[key[:2]] = self.latency.labels(method, route)
        timer.observe(seconds)

    def count_decision(self, grade: str) -> None:
        """One decision stored, by grade."""
        counter = self._decisions.get(grade)
        if counter is None:
            counter = self._decisions[grade] = self.decisions.labels(grade)
        counter.inc()

    def set_model(self, name: str, version: str | None, run_id: str | None) -> None:
        """Mark the served model (the previous one goes to 0)."""
        labels = (name, version or "", run_id or "")
        if self._model is not None and self._model != labels:
            self.model_info.labels(*self._model).set(0)
        self.model_info.labels(*labels).set(1)
        self._model = labels

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric (of every worker in multiprocess mode)."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts requests and times them, labelled by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.count_request(
                method, template, str(status["code"]), time.perf_counter() - start
            )
