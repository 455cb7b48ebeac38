"""Helpers of the stress tests (load, faults, security) and of `bench/bench_serve.py`.

- `LoadGenerator`: N threads, each one keep-alive `http.client` connection, posting bodies in a
  loop and recording every single outcome (status, time, decision ids of a 200, transport error).
  Nothing is sampled: the set of acknowledged decisions is exact, to compare with the audit store.
- `StressServer`: `scf-risk serve` as a real uvicorn subprocess, with its worker processes.
- the audit store as seen from outside (decision ids, SQLite integrity check), and a throwaway
  PostgreSQL database with the faults a database can have (refusing connections, read-only).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import sqlalchemy as sa

from features.catalog import CATALOG
from serving.api.keys import ROLES, add_key
from serving.audit.signing import new_signing_key
from serving.audit.store import MODEL_CHANGE_SME, AuditStore
from tests.support.server import Server

POSTGRES_ENV = "SCF_RISK_TEST_POSTGRES_URL"
TRANSPORT = 0  # the status recorded for a request that got no HTTP response at all


# -- request bodies ------------------------------------------------------------------------------
def feature_rows(panel: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    """`n` scoring requests (``features`` mode) from the last month of a feature panel."""
    names = [f.name for f in CATALOG if f.name in panel.columns]
    latest = panel[panel["as_of"] == panel["as_of"].max()].head(n)
    rows: list[dict[str, Any]] = []
    for rec in latest.to_dict(orient="records"):
        feats: dict[str, Any] = {}
        for name in names:
            value = rec[name]
            if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                continue
            feats[name] = value if isinstance(value, str) else float(value)
        rows.append(
            {
                "sme_id": str(rec["sme_id"]),
                "as_of": pd.Timestamp(rec["as_of"]).date().isoformat(),
                "features": feats,
            }
        )
    if len(rows) < n:
        raise ValueError(f"the panel's last month has {len(rows)} rows, {n} wanted")
    return rows


def decision_ids(doc: Any) -> tuple[str, ...]:
    """The decision ids of a 200 answer: one score, or a batch (`results`, one per item; an item
    that failed has none). KeyError/TypeError for a body of neither shape."""
    if "results" in doc:
        if doc["failed"]:
            raise ValueError(f"{doc['failed']} batch item(s) failed: {doc['errors'][:1]}")
        return tuple(d["decision_id"] for d in doc["results"])
    return (doc["decision_id"],)


def error_text(data: bytes) -> str:
    """An error answer in words: a problem details object's title and detail, else the start of
    the raw body."""
    try:
        doc = json.loads(data)
        text = f"{doc['title']}: {doc['detail']}"
    except (ValueError, KeyError, TypeError):
        return data[:300].decode("utf-8", "replace")
    return text[:300]


def mixed_bodies(
    rows: list[dict[str, Any]], *, batch_every: int = 10, batch_size: int = 4
) -> list[tuple[str, bytes]]:
    """(path, body) pairs: single scores, with a batch of `batch_size` every `batch_every`."""
    out: list[tuple[str, bytes]] = []
    for i, row in enumerate(rows):
        if batch_every and i % batch_every == batch_every - 1:
            items = [rows[(i + k) % len(rows)] for k in range(batch_size)]
            out.append(("/v1/scores/batch", json.dumps(items).encode()))
        else:
            out.append(("/v1/scores", json.dumps(row).encode()))
    return out


def decisions_asked(body: bytes) -> int:
    """How many decisions a request body asks for: a batch's length, else 1."""
    doc = json.loads(body)
    return len(doc) if isinstance(doc, list) else 1


# -- the load generator --------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One request: when it ended (s since the load started), its status (0: no response), how
    long it took, the decision ids of a 200, what went wrong otherwise, and how many decisions it
    asked for (1, or the size of a batch)."""

    start: float
    end: float
    status: int
    ids: tuple[str, ...] = ()
    error: str = ""
    asked: int = 1

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class LoadResult:
    """Every outcome of one load run."""

    outcomes: list[Outcome]
    seconds: float
    connections: int

    @property
    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes)

    @property
    def acknowledged(self) -> list[str]:
        """The decision ids of every 200 response (a batch gives several), in order."""
        return [i for o in self.outcomes if o.status == 200 for i in o.ids]

    @property
    def ok(self) -> int:
        return sum(o.status == 200 for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    @property
    def rps(self) -> float:
        return len(self.outcomes) / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """A latency percentile of the 200 responses, in ms (nearest rank)."""
        lat = sorted(o.latency for o in self.outcomes if o.status == 200)
        if not lat:
            return float("nan")
        return 1000 * lat[min(len(lat) - 1, max(0, math.ceil(q / 100 * len(lat)) - 1))]

    def window(self, t0: float, t1: float) -> list[Outcome]:
        """The outcomes of requests that started at or after `t0` and ended before `t1`."""
        return [o for o in self.outcomes if o.start >= t0 and o.end <= t1]

    def summary(self) -> str:
        bad = Counter((o.status, o.error[:120]) for o in self.failures)
        return (
            f"{len(self.outcomes)} requests in {self.seconds:.1f} s, statuses "
            f"{dict(self.statuses)}; failures: {dict(bad.most_common(5))}"
        )


class LoadGenerator:
    """`connections` threads, each with one keep-alive HTTP/1.1 connection to `url`, sending the
    (path, body) pairs round-robin until stopped, each waiting `pause` seconds after a response
    (0: none). Every response is read and recorded."""

    def __init__(
        self,
        url: str,
        requests: Sequence[tuple[str, bytes]],
        headers: dict[str, str],
        *,
        connections: int = 16,
        timeout: float = 120.0,
        pause: float = 0.0,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.requests = list(requests)
        self.asked = [decisions_asked(body) for _, body in self.requests]
        self.headers = {"Content-Type": "application/json", **headers}
        self.connections = connections
        self.timeout = timeout
        self.pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads: list[threading.Thread] = []
        self._crashes: list[str] = []
        self._t0 = 0.0

    def now(self) -> float:
        """Seconds since the load started (the clock of `Outcome`)."""
        return time.perf_counter() - self._t0

    def start(self) -> LoadGenerator:
        self._t0 = time.perf_counter()
        self._threads = [
            threading.Thread(target=self._run, args=(k,), name=f"load-{k}", daemon=True)
            for k in range(self.connections)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadResult:
        """Stop sending; wait for the requests in flight; all outcomes."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"load threads still running: {alive}")
        if self._crashes:
            raise RuntimeError(f"load threads failed: {self._crashes}")
        with self._lock:
            outcomes = sorted(self._outcomes, key=lambda o: o.start)
        return LoadResult(outcomes, self.now(), self.connections)

    def run(self, seconds: float) -> LoadResult:
        """Load for `seconds`, then stop."""
        self.start()
        time.sleep(seconds)
        return self.stop()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _run(self, k: int) -> None:
        local: list[Outcome] = []
        try:
            self._loop(k, local)
        except BaseException as exc:  # a bug of the generator itself: reported by stop()
            self._crashes.append(f"{threading.current_thread().name}: {exc!r}")
            raise
        finally:
            with self._lock:
                self._outcomes.extend(local)

    def _loop(self, k: int, local: list[Outcome]) -> None:
        conn = self._connect()
        i = k
        while not self._stop.is_set():
            path, body = self.requests[i % len(self.requests)]
            asked = self.asked[i % len(self.requests)]
            i += self.connections
            start = self.now()
            try:
                conn.request("POST", path, body=body, headers=self.headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                local.append(Outcome(start, self.now(), TRANSPORT, error=repr(exc), asked=asked))
                conn.close()
                conn = self._connect()
                time.sleep(0.02)  # the server may be down: do not spin
                continue
            end = self.now()
            if resp.status == 200:
                try:
                    doc = json.loads(data)
                    ids = decision_ids(doc)
                except (ValueError, KeyError, TypeError) as exc:
                    local.append(
                        Outcome(start, end, -1, error=f"200 with a bad body: {exc!r}", asked=asked)
                    )
                    continue
                local.append(Outcome(start, end, 200, ids, asked=asked))
            else:
                local.append(Outcome(start, end, resp.status, error=error_text(data), asked=asked))
            if resp.will_close:
                conn.close()
                conn = self._connect()
            if self.pause:
                self._stop.wait(self.pause)
        conn.close()


# -- the server ----------------------------------------------------------------------------------
def make_keys(path: Path) -> dict[str, str]:
    """One fresh key per role in the keys file at `path`, and an audit signing key beside it."""
    make_signing_key(path.parent)
    return {role: add_key(path, role)[1] for role in ROLES}


def make_signing_key(folder: Path) -> None:
    """The audit signing key and public keys file at their default places in `folder` (the test
    settings are not development: the service never creates them there)."""
    private = folder / "audit-signing-key.pem"
    if not private.exists():
        new_signing_key(private, folder / "audit-public-keys.json")


def server_env(workdir: Path, tracking_uri: str, audit_db: str, **extra: str) -> dict[str, str]:
    """The environment of a `scf-risk serve` subprocess (test settings, the given stores)."""
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "SCF_RISK_AUDIT_DB": audit_db,
        "SCF_RISK_API_KEYS": str(workdir / "keys.json"),
        "SCF_RISK_ENV": "test",
        "SCF_RISK_RELOAD_POLL_SECONDS": "0.5",
        **extra,
    }


class StressServer(Server):
    """`Server` (tests/support/server.py) with its uvicorn worker processes made visible."""

    STARTED = re.compile(r"Application startup complete")

    def __enter__(self) -> StressServer:
        super().__enter__()
        return self

    def workers_started(self) -> int:
        """How many worker processes finished start-up so far (restarted ones included)."""
        return len(self.STARTED.findall(self.output()))

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.workers_started() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers not started after {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (multiprocessing spawn children of the supervisor)."""
        import psutil

        assert self.proc is not None
        out = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    out.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return sorted(out)


# -- the audit store from outside ------------------------------------------------------------------
def stored_ids(url: str) -> list[str]:
    """Every decision id in the audit store at `url` (model_change records left out)."""
    table = AuditStore(url).decisions
    engine = sa.create_engine(url)
    stmt = sa.select(table.c.decision_id).where(table.c.sme_id != MODEL_CHANGE_SME)
    try:
        with engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(stmt)]
    finally:
        engine.dispose()


def sqlite_integrity(path: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of a database file ("ok" when sound)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


# -- PostgreSQL ----------------------------------------------------------------------------------
def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def require_postgres() -> str:
    """The test server's URL; without one, a skip on a laptop and a failure in CI."""
    import pytest

    url = postgres_url()
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"{POSTGRES_ENV} must be set in CI (.ci/run sets it)")
    pytest.skip(f"{POSTGRES_ENV} not set (no PostgreSQL on this machine)")


@dataclass
class PostgresDatabase:
    """A database of its own on the test server, with the faults a database can have."""

    admin_url: str
    name: str
    url: str
    _admin: sa.Engine | None = field(default=None, repr=False)

    def _exec(self, *statements: str) -> None:
        if self._admin is None:
            self._admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            for stmt in statements:
                conn.execute(sa.text(stmt), {"db": self.name})

    def _terminate(self) -> str:
        return (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :db AND pid <> pg_backend_pid()"
        )

    def refuse_connections(self) -> None:
        """Unreachable: no new connection is accepted and every open one is cut."""
        self._exec(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false', self._terminate())

    def accept_connections(self) -> None:
        self._exec(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true')

    def read_only(self) -> None:
        """Read-only: every new session defaults to read-only transactions; open ones are cut."""
        self._exec(
            f'ALTER DATABASE "{self.name}" SET default_transaction_read_only = on',
            self._terminate(),
        )

    def read_write(self) -> None:
        """Writable again (sessions opened while read-only keep their setting: the service
        must not keep using them)."""
        self._exec(f'ALTER DATABASE "{self.name}" RESET default_transaction_read_only')

    def drop(self) -> None:
        self._exec(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if self._admin is not None:
            self._admin.dispose()


@contextmanager
def postgres_database(admin_url: str) -> Iterator[PostgresDatabase]:
    """A fresh database on the server of `admin_url` (dropped afterwards, whatever happens)."""
    name = f"scf_stress_{uuid.uuid4().hex[:12]}"
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    db = PostgresDatabase(admin_url, name, url)
    db._exec(f'CREATE DATABASE "{name}"')
    try:
        yield db
    finally:
        db.drop()


# -- the load scenario (tests: bounded; bench: 60 s) ---------------------------------------------
@dataclass
class LoadScenario:
    """What one load run against a running service showed. `stored`, `chain_records` and
    `metrics_decisions` count what the run added (the store and the counters may hold earlier
    decisions of the same server); the chain is verified whole."""

    result: LoadResult
    stored: list[str]
    chain_ok: bool
    chain_records: int
    metrics_decisions: float
    log: str = field(repr=False)

    @property
    def errors(self) -> int:
        return len(self.result.failures)

    @property
    def missing(self) -> set[str]:
        """Acknowledged (200) decisions the audit store does not hold."""
        return set(self.result.acknowledged) - set(self.stored)

    @property
    def unacknowledged(self) -> set[str]:
        """Stored decisions no 200 response carried."""
        return set(self.stored) - set(self.result.acknowledged)


def decisions_in_metrics(text: str) -> float:
    """The sum of ``scf_risk_decisions_total`` over grades (every worker's, aggregated)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("scf_risk_decisions_total{")
    )


def chain_decisions(audit_url: str) -> tuple[bool, int]:
    """(the chain verifies, how many decisions it holds) of the audit store at `audit_url`."""
    store = AuditStore(audit_url)
    try:
        report = store.verify()
    finally:
        store.dispose()
    return report.ok, report.decisions


def run_load(
    srv: StressServer,
    scorer_key: str,
    audit_url: str,
    rows: list[dict[str, Any]],
    *,
    seconds: float,
    connections: int = 16,
) -> LoadScenario:
    """Load the running server `srv` (audit store at `audit_url`) for `seconds` at
    `connections` keep-alive connections, then compare every 200 with what the store and the
    metrics gained meanwhile, and verify the whole chain."""
    import httpx

    def metrics() -> float:
        return decisions_in_metrics(httpx.get(f"{srv.url}/metrics", timeout=30).text)

    before_ids = set(stored_ids(audit_url))
    _, before_chain = chain_decisions(audit_url)
    before_metrics = metrics()
    load = LoadGenerator(
        srv.url, mixed_bodies(rows), {"X-API-Key": scorer_key}, connections=connections
    )
    result = load.run(seconds)
    after_metrics = metrics()
    chain_ok, chain_records = chain_decisions(audit_url)
    return LoadScenario(
        result=result,
        stored=[i for i in stored_ids(audit_url) if i not in before_ids],
        chain_ok=chain_ok,
        chain_records=chain_records - before_chain,
        metrics_decisions=after_metrics - before_metrics,
        log=srv.output(),
    )


def load_scenario(
    workdir: Path,
    tracking_uri: str,
    audit_url: str,
    rows: list[dict[str, Any]],
    *,
    seconds: float,
    connections: int = 16,
    workers: int = 2,
) -> LoadScenario:
    """Serve with `workers` workers on a fresh audit store and `run_load` against it."""
    keys = make_keys(workdir / "keys.json")
    env = server_env(workdir, tracking_uri, audit_url)
    with StressServer(workdir, env, workers=workers) as srv:
        srv.wait_workers(workers)
        scenario = run_load(
            srv, keys["scorer"], audit_url, rows, seconds=seconds, connections=connections
        )
    scenario.log = srv.output()
    return scenario
