"""Hardening of the service: a bounded readiness probe, generic 503 bodies, JSON-only bodies,
metrics behind a key, key listing and revocation, a deadline on request heads."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from serving.api.app import create_app
from serving.api.keys import KeyStore
from serving.audit.store import AuditStore
from serving.commands import app as cli
from serving.settings import Settings
from tests.support.models import Registry
from tests.support.tracking import TrackingStores

Headers = Callable[[str], dict[str, str]]
ONE = {
    "sme_id": "S1",
    "as_of": "2024-06-30",
    "allow_sparse": True,
    "features": {"dso_90d": 42.5, "industry": "food"},
}


def _db_path(settings: Settings) -> str:
    return settings.audit_db.removeprefix("sqlite:///")


def test_readyz_answers_not_ready_within_seconds_while_the_database_is_locked(
    client: TestClient, settings: Settings, headers: Headers
) -> None:
    assert client.get("/readyz").status_code == 200
    holder = sqlite3.connect(_db_path(settings), isolation_level=None, timeout=1)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        start = time.monotonic()
        r = client.get("/readyz")
        took = time.monotonic() - start
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.status_code == 503 and r.json()["audit_store_writable"] is False, r.text
    # the probe's own 2 s bound, not the decisions' 30 s lock timeout (slack for a loaded machine)
    assert took < 10.0, f"readyz took {took:.1f} s"
    assert client.get("/readyz").status_code == 200  # and ready again once released


def test_readyz_probe_really_writes(client: TestClient, settings: Settings) -> None:
    """The probe commits a row (a full disk fails it), not only opens a transaction."""
    assert client.get("/readyz").status_code == 200
    svc = client.app.state.service  # type: ignore[attr-defined]
    before = svc.store.get_state("readiness_probe")
    time.sleep(0.01)
    client.get("/readyz")
    assert svc.store.get_state("readiness_probe") != before


def _counting_probe(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch, answers: list[bool] | None = None
) -> list[bool]:
    """Count `store.probe_writable` calls (each one writes); `answers` replaces their results."""
    calls: list[bool] = []
    real = store.probe_writable

    def probe(timeout: float = 2.0) -> bool:
        ok = answers.pop(0) if answers else real(timeout)
        calls.append(ok)
        return ok

    monkeypatch.setattr(store, "probe_writable", probe)
    return calls


def test_a_flood_of_readyz_calls_writes_once_per_interval(
    settings: Settings, keys: dict[str, str], registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = settings.model_copy(update={"ready_probe_reuse_seconds": 60.0})
    with TestClient(create_app(conf, loader=registry)) as c:
        calls = _counting_probe(c.app.state.service.store, monkeypatch)  # type: ignore[attr-defined]
        answers = [c.get("/readyz").status_code for _ in range(25)]
    assert answers == [200] * 25
    assert calls == [True]


def test_a_failed_readiness_probe_is_never_reused(
    settings: Settings, keys: dict[str, str], registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = settings.model_copy(update={"ready_probe_reuse_seconds": 60.0})
    with TestClient(create_app(conf, loader=registry)) as c:
        store = c.app.state.service.store  # type: ignore[attr-defined]
        calls = _counting_probe(store, monkeypatch, answers=[False, False, True])
        codes = [c.get("/readyz").status_code for _ in range(4)]
    assert codes == [503, 503, 200, 200]
    assert calls == [False, False, True]  # the fourth call reused the third's success


def test_callers_that_arrive_during_a_probe_take_its_answer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AuditStore(settings.audit_db)
    store.ensure_schema()
    running, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_probe(timeout: float = 2.0) -> bool:
        calls.append(1)
        running.set()
        release.wait(10)
        return True

    monkeypatch.setattr(store, "probe_writable", slow_probe)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(store.probe_shared, 60.0)
        assert running.wait(10)
        rest = [pool.submit(store.probe_shared, 60.0) for _ in range(4)]
        time.sleep(0.2)  # the four wait behind the running probe (or arrive after its success)
        release.set()
        answers = [first.result(10)] + [f.result(10) for f in rest]
    assert answers == [True] * 5
    assert calls == [1]


def test_503_bodies_do_not_name_the_database(
    tmp_path: Path, keys: dict[str, str], settings: Settings, registry: Registry
) -> None:
    conf = settings.model_copy(update={"audit_db": f"{settings.audit_db}?timeout=0.5"})
    with TestClient(create_app(conf, loader=registry)) as c:
        holder = sqlite3.connect(_db_path(settings), isolation_level=None, timeout=1)
        holder.execute("BEGIN IMMEDIATE")
        try:
            r = c.post("/v1/scores", json=ONE, headers={"X-API-Key": keys["scorer"]})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert r.status_code == 503, r.text
    assert "no decision made" in r.text
    assert "sqlite" not in r.text and str(tmp_path) not in r.text and "audit.db" not in r.text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_score_bodies_must_be_declared_json(
    client: TestClient, headers: Headers, content_type: str | None
) -> None:
    import json

    hdrs = headers("scorer")
    if content_type:
        hdrs["Content-Type"] = content_type
    for path, body in (("/v1/scores", ONE), ("/v1/scores/batch", [ONE])):
        r = client.post(path, content=json.dumps(body).encode(), headers=hdrs)
        assert r.status_code == 415, (path, content_type, r.text)
    ok = {**headers("scorer"), "Content-Type": "application/json; charset=utf-8"}
    assert client.post("/v1/scores", content=json.dumps(ONE), headers=ok).status_code == 200


def test_metrics_need_the_metrics_key_when_one_is_configured(
    keys: dict[str, str], settings: Settings, registry: Registry
) -> None:
    with TestClient(create_app(settings, loader=registry)) as c:
        assert c.get("/metrics").status_code == 200  # none configured: open
    conf = settings.model_copy(update={"metrics_key": "m-secret-1"})
    with TestClient(create_app(conf, loader=registry)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/metrics", headers={"Authorization": "Bearer m-secret-1"})
        assert ok.status_code == 200 and "scf_risk" in ok.text
        assert c.get("/metrics", headers={"X-Metrics-Key": "m-secret-1"}).status_code == 200


def test_keys_list_shows_ids_never_keys_and_revoke_stops_a_key(
    client: TestClient, keys: dict[str, str], settings: Settings, headers: Headers
) -> None:
    env = {"SCF_RISK_API_KEYS": str(settings.api_keys), "SCF_RISK_ENV": "test"}
    listed = CliRunner().invoke(cli, ["keys", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    scorer_id = keys["scorer"].split("_")[1]
    assert scorer_id in listed.output and "3 key(s)" in listed.output
    assert all(k not in listed.output for k in keys.values())
    assert client.post("/v1/scores", json=ONE, headers=headers("scorer")).status_code == 200
    time.sleep(0.01)
    revoked = CliRunner().invoke(cli, ["keys", "revoke", scorer_id], env=env)
    assert revoked.exit_code == 0 and f"revoked key {scorer_id}" in revoked.output
    assert client.post("/v1/scores", json=ONE, headers=headers("scorer")).status_code == 401
    assert KeyStore(settings.api_keys, development=False).authenticate(keys["scorer"]) is None
    again = CliRunner().invoke(cli, ["keys", "revoke", scorer_id], env=env)
    assert again.exit_code == 1 and "no key with id" in again.output


def test_connections_that_never_finish_their_request_head_are_closed(
    tmp_path: Path, tracking_stores: TrackingStores
) -> None:
    """200 connections sending a partial head: all closed by the deadline, the server still
    answers."""
    from tests.support.load import make_keys
    from tests.support.server import Server

    make_keys(tmp_path / "keys.json")
    env = {
        "SCF_RISK_AUDIT_DB": f"sqlite:///{tmp_path / 'audit.db'}",
        "SCF_RISK_API_KEYS": str(tmp_path / "keys.json"),
        "SCF_RISK_ENV": "test",
        "SCF_RISK_HEADER_TIMEOUT_SECONDS": "1",
        "MLFLOW_TRACKING_URI": tracking_stores.new(tmp_path),  # empty: no champion to load
    }
    with Server(tmp_path, env, wait_for="/healthz") as srv:
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"POST /v1/scores HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        idle = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # sends nothing
        socks.append(idle)
        time.sleep(3)  # the deadline is 1 s
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                closed += s.recv(1024) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass  # still open
            finally:
                s.close()
        assert closed == len(socks), f"{len(socks) - closed} connection(s) still open"
        import httpx

        assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200


def _sign_in(client: TestClient, key: str, **headers: str) -> tuple[int, str | None]:
    r = client.post(
        "/audit/login",
        data={"api_key": key, "next": "/audit/decisions"},
        headers=headers,
        follow_redirects=False,
    )
    return r.status_code, r.cookies.get("scf_risk_key")


def test_the_sign_in_cookie_is_an_opaque_revocable_expiring_session(
    client: TestClient, keys: dict[str, str], settings: Settings
) -> None:
    status, token = _sign_in(client, keys["auditor"])
    assert status == 303 and token
    assert keys["auditor"] not in token and keys["auditor"].split("_")[1] not in token
    svc = client.app.state.service  # type: ignore[attr-defined]
    stored = svc.store.read(sa.select(svc.store.sessions.c.token_hash))
    assert [r[0] for r in stored] != [token]  # only its hash is kept
    cookies = {"scf_risk_key": token}
    client.cookies.clear()
    assert client.get("/audit/decisions", cookies=cookies).status_code == 200
    assert (
        client.get("/audit/decisions", cookies={"scf_risk_key": keys["auditor"]}).status_code == 401
    )
    client.post("/audit/logout", cookies=cookies, follow_redirects=False)
    client.cookies.clear()
    assert client.get("/audit/decisions", cookies=cookies).status_code == 401  # revoked
    # expiry
    _, token2 = _sign_in(client, keys["auditor"])
    client.cookies.clear()
    assert token2
    with svc.store.transaction() as conn:
        conn.execute(sa.update(svc.store.sessions).values(expires_at=time.time() - 1))
    assert client.get("/audit/decisions", cookies={"scf_risk_key": token2}).status_code == 401
    # revoking the key ends its sessions
    _, token3 = _sign_in(client, keys["admin"])
    client.cookies.clear()
    assert client.get("/audit/decisions", cookies={"scf_risk_key": token3}).status_code == 200
    time.sleep(0.01)
    from serving.api.keys import revoke_key

    revoke_key(settings.api_keys, keys["admin"].split("_")[1])
    assert client.get("/audit/decisions", cookies={"scf_risk_key": token3}).status_code == 401


def test_sign_in_from_another_site_is_refused(client: TestClient, keys: dict[str, str]) -> None:
    status, token = _sign_in(client, keys["auditor"], Origin="https://evil.example")
    assert status == 403 and token is None
    status, token = _sign_in(client, keys["auditor"], Referer="https://evil.example/x")
    assert status == 403 and token is None
    status, token = _sign_in(client, keys["auditor"], Origin="http://testserver")
    assert status == 303 and token


def test_the_write_probe_gives_up_within_seconds_on_a_locked_store(store: AuditStore) -> None:
    """Both stores: another session holding the lock makes the probe say False in ~2 s."""
    store.ensure_schema()
    assert store.probe_writable()
    if store.url.startswith("sqlite"):
        holder = sqlite3.connect(store.url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        release = holder.close
    else:
        engine = sa.create_engine(store.url)
        conn = engine.connect()
        conn.exec_driver_sql(f"LOCK TABLE {store.state.name} IN ACCESS EXCLUSIVE MODE")

        def release() -> None:
            conn.rollback()
            conn.close()
            engine.dispose()

    try:
        start = time.monotonic()
        writable = store.probe_writable()
        took = time.monotonic() - start
    finally:
        release()
    assert not writable and took < 4.0, took
    assert store.probe_writable()  # the connection is usable again afterwards
