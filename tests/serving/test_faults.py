"""Faults, each against the real service (`scf-risk serve` under uvicorn, a subprocess) under load.

- kill -9 of a worker mid-load: every acknowledged decision is stored, `scf-risk audit verify`
  passes, SQLite's integrity check passes, the supervisor's new worker serves;
- the audit database not writable mid-load (SQLite: another process holds the write lock;
  PostgreSQL: refusing connections, then read-only): scoring fails closed with 503 (never a 200
  without its record) and recovers when the database comes back;
- the model registry unreachable at start: not ready, a clear log line, 503 for scores;
- a corrupted model artifact: refused with a clear error, the old model keeps serving;
- in process (fast): an audit database that never answers or is gone from the start is a 503 in
  seconds, never a hang or a 500.

The invariant checked everywhere: the set of decision ids the client got with a 200 is contained
in the audit store (the load generator records every response).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.audit import database
from serving.audit.store import AuditStore
from serving.exceptions import AuditUnavailable, ModelLoadFailed
from serving.served import ModelHolder
from serving.settings import Settings
from tests.support.load import (
    LoadGenerator,
    LoadResult,
    PostgresDatabase,
    StressServer,
    feature_rows,
    mixed_bodies,
    postgres_database,
    require_postgres,
    server_env,
    sqlite_integrity,
    stored_ids,
)
from tests.support.models import Registered, Registry
from tests.support.problems import problem
from tests.support.server import free_port
from training.bundle import load_model
from training.model import ScoringModel

CONNECTIONS = 16
LOCK_TIMEOUT_S = 3.0  # the audit URL's ?timeout=: how long a write waits for a locked SQLite
FAIL_CLOSED = {200, 503}


@pytest.fixture(scope="module")
def bodies(registered: Registered) -> list[tuple[str, bytes]]:
    return mixed_bodies(feature_rows(registered.panel, 60))


def audit_verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", "audit", "verify"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip


def assert_every_200_stored(result: LoadResult, audit_url: str) -> set[str]:
    acked = result.acknowledged
    assert len(acked) == len(set(acked)), "a decision id was answered twice"
    stored = set(stored_ids(audit_url))
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged decisions are not in the audit store"
    return stored


def assert_statuses(result: LoadResult, allowed: set[int]) -> None:
    unexpected = [o for o in result.outcomes if o.status not in allowed]
    assert not unexpected, f"unexpected outcomes {unexpected[:5]}; {result.summary()}"


def wait_until(t: float, load: LoadGenerator) -> None:
    time.sleep(max(0.0, t - load.now()))


# -- SQLite: one 2-worker server for the kill and the lock ------------------------------------
@pytest.fixture(scope="module")
def sqlite_server(
    workdir: Path, registered: Registered, server_keys: dict[str, str]
) -> Iterator[tuple[StressServer, dict[str, str], Path]]:
    db = workdir / "audit.db"
    env = server_env(workdir, registered.tracking_uri, f"sqlite:///{db}?timeout={LOCK_TIMEOUT_S}")
    with StressServer(workdir, env, workers=2) as srv:
        srv.wait_workers(2)
        yield srv, env, db


def kill_9_scenario(
    srv: StressServer,
    env: dict[str, str],
    server_keys: dict[str, str],
    bodies: list[tuple[str, bytes]],
) -> None:
    """kill -9 one of two workers under load: only its in-flight requests fail (without a
    response), the supervisor replaces it, every 200 is stored and the chain verifies."""
    victims = srv.worker_pids()
    assert len(victims) == 2, victims
    started = srv.workers_started()
    prior = set(stored_ids(env["SCF_RISK_AUDIT_DB"]))
    load = LoadGenerator(
        srv.url, bodies, {"X-API-Key": server_keys["scorer"]}, connections=CONNECTIONS
    )
    with load:
        time.sleep(4)
        t_kill = load.now()
        os.kill(victims[0], signal.SIGKILL)
        srv.wait_workers(started + 1, timeout=120)  # uvicorn's supervisor started a new one
        t_back = load.now()
        time.sleep(4)
        result = load.stop()
    # Only requests in flight on the killed worker may fail, and only without a response.
    failures = result.failures
    assert all(o.status == 0 for o in failures), result.summary()
    assert len(failures) <= CONNECTIONS, result.summary()
    assert all(o.start <= t_kill + 1.0 for o in failures), result.summary()
    assert sum(o.status == 200 and o.start > t_kill for o in result.outcomes) >= 20
    assert sum(o.status == 200 and o.start > t_back for o in result.outcomes) >= 10
    stored = assert_every_200_stored(result, env["SCF_RISK_AUDIT_DB"])
    # A decision committed just before the kill may have lost its response: at most as many as
    # the failed requests asked for (a batch of n commits n decisions at once).
    unanswered = stored - prior - set(result.acknowledged)
    assert len(unanswered) <= sum(o.asked for o in failures), (len(unanswered), result.summary())
    now = srv.worker_pids()
    assert len(now) == 2 and victims[0] not in now, now
    verify = audit_verify(env)
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_load_loses_no_acknowledged_decision(
    sqlite_server: tuple[StressServer, dict[str, str], Path],
    server_keys: dict[str, str],
    bodies: list[tuple[str, bytes]],
) -> None:
    srv, env, db = sqlite_server
    kill_9_scenario(srv, env, server_keys, bodies)
    assert sqlite_integrity(db) == "ok"


# -- PostgreSQL: one 2-worker server on a database of its own for the kill and the faults ------
@pytest.fixture(scope="module")
def postgres_server(
    workdir: Path, registered: Registered, server_keys: dict[str, str]
) -> Iterator[tuple[StressServer, dict[str, str], PostgresDatabase]]:
    with postgres_database(require_postgres()) as db:
        env = server_env(workdir, registered.tracking_uri, db.url)
        with StressServer(workdir, env, workers=2) as srv:
            srv.wait_workers(2)
            yield srv, env, db


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_of_a_worker_mid_load_loses_no_acknowledged_decision_on_postgres(
    postgres_server: tuple[StressServer, dict[str, str], PostgresDatabase],
    server_keys: dict[str, str],
    bodies: list[tuple[str, bytes]],
) -> None:
    srv, env, _ = postgres_server
    kill_9_scenario(srv, env, server_keys, bodies)


@pytest.mark.slow
def test_sqlite_write_locked_mid_load_fails_closed_then_recovers(
    sqlite_server: tuple[StressServer, dict[str, str], Path],
    server_keys: dict[str, str],
    bodies: list[tuple[str, bytes]],
) -> None:
    srv, env, db = sqlite_server
    load = LoadGenerator(
        srv.url, bodies, {"X-API-Key": server_keys["scorer"]}, connections=CONNECTIONS
    )
    with load:
        time.sleep(3)
        blocker = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            t_locked = load.now()
            ready = httpx.get(f"{srv.url}/readyz", timeout=30)
            wait_until(t_locked + 3 * LOCK_TIMEOUT_S, load)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        t_free = load.now()
        time.sleep(LOCK_TIMEOUT_S + 5)
        result = load.stop()
    assert ready.status_code == 503 and ready.json()["audit_store_writable"] is False
    assert_statuses(result, FAIL_CLOSED)
    locked = result.window(t_locked, t_free)
    refused = [o for o in locked if o.status == 503]
    assert refused, result.summary()
    assert all(o.status == 503 for o in locked), "a decision was answered while unwritable"
    assert all("no decision made" in o.error for o in refused)
    after = result.window(t_free + LOCK_TIMEOUT_S + 1, result.seconds + 1)
    assert len(after) >= 10 and all(o.status == 200 for o in after), result.summary()
    assert_every_200_stored(result, env["SCF_RISK_AUDIT_DB"])
    verify = audit_verify(env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert sqlite_integrity(db) == "ok"


# -- SQLite: a full disk ------------------------------------------------------------------------
WAL_FRAME = 24 + 4096  # a WAL frame: its header and one page


@contextmanager
def disk_full_for(pid: int, path: Path, room: int) -> Iterator[None]:
    """Process `pid` may write no file past `path`'s size + `room` bytes, as on a disk with
    `room` bytes left (RLIMIT_FSIZE, set with prlimit, no privilege needed; lifted on exit).
    The kernel really refuses the write; its errno is EFBIG, which SQLite reports as a disk I/O
    error, where a full disk's ENOSPC is "database or disk is full": the service treats both as
    an unwritable store. Writes inside a file's existing size still succeed, as on a full disk
    (the WAL's space after its last commit is reused)."""
    import psutil

    proc = psutil.Process(pid)
    soft, hard = proc.rlimit(psutil.RLIMIT_FSIZE)
    proc.rlimit(psutil.RLIMIT_FSIZE, (path.stat().st_size + room, hard))
    try:
        yield
    finally:
        proc.rlimit(psutil.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.slow
def test_a_full_disk_fails_every_score_closed_and_readyz_says_not_writable(
    workdir: Path, registered: Registered, server_keys: dict[str, str]
) -> None:
    """The audit store's disk fills up: with no room at all, and with room for a page or two
    (a small write commits, a decision does not). Every score answers 503 with the generic body,
    /readyz says the store is not writable, nothing half-written is stored; once there is room
    again the service scores and the chain verifies."""
    db = workdir / "full-disk.db"
    env = server_env(workdir, registered.tracking_uri, f"sqlite:///{db}")
    # every /readyz probes (a success otherwise answers for 1 s: test_hardening)
    env["SCF_RISK_READY_PROBE_REUSE_SECONDS"] = "0"
    rows = feature_rows(registered.panel, 8)
    hdr = {"X-API-Key": server_keys["scorer"]}
    acknowledged: list[str] = []
    with StressServer(workdir, env, workers=1) as srv, httpx.Client(timeout=60) as client:
        assert srv.proc is not None

        def score(i: int) -> httpx.Response:
            return client.post(f"{srv.url}/v1/scores", json=rows[i % len(rows)], headers=hdr)

        for room in (0, 2 * WAL_FRAME + 1000):
            for i in range(4):
                r = score(i)
                assert r.status_code == 200, r.text
                acknowledged.append(r.json()["decision_id"])
            assert client.get(f"{srv.url}/readyz").status_code == 200
            wal = Path(f"{db}-wal")  # the file a commit appends to (WAL mode)
            with disk_full_for(srv.proc.pid, wal, room):
                refused = [score(i) for i in range(4)]
                batch = client.post(f"{srv.url}/v1/scores/batch", json=rows[:2], headers=hdr)
                ready = client.get(f"{srv.url}/readyz")
            for r in [*refused, batch]:
                assert "no decision made" in problem(r, 503)["detail"], (room, r.text)
                assert str(db) not in r.text and "disk" not in r.text.lower(), r.text
            assert ready.status_code == 503, (room, ready.text)
            assert ready.json()["audit_store_writable"] is False, ready.text
            assert ready.json()["model"] is not None  # the model is fine: only the store is full
            r = score(5)
            assert r.status_code == 200, r.text  # room again: scoring resumes
            acknowledged.append(r.json()["decision_id"])
            assert client.get(f"{srv.url}/readyz").status_code == 200
        log = srv.output()
    assert "not writable: disk I/O error" in log, log[-3000:]  # the kernel refused the writes
    assert sorted(stored_ids(env["SCF_RISK_AUDIT_DB"])) == sorted(acknowledged)
    verify = audit_verify(env)
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    assert sqlite_integrity(db) == "ok"


# -- PostgreSQL: refusing connections, then read-only ------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_unreachable_or_read_only_mid_load_fails_closed_then_recovers(
    postgres_server: tuple[StressServer, dict[str, str], PostgresDatabase],
    server_keys: dict[str, str],
    bodies: list[tuple[str, bytes]],
) -> None:
    srv, env, db = postgres_server
    hdr = {"X-API-Key": server_keys["scorer"]}
    load = LoadGenerator(srv.url, bodies, hdr, connections=CONNECTIONS)
    windows: list[tuple[str, float, float, int]] = []
    with load:
        time.sleep(3)
        for name, fault, heal in (
            ("refusing connections", db.refuse_connections, db.accept_connections),
            ("read-only", db.read_only, db.read_write),
        ):
            fault()
            t0 = load.now()
            time.sleep(1)
            ready = httpx.get(f"{srv.url}/readyz", timeout=30).status_code
            wait_until(t0 + 4, load)
            heal()
            windows.append((name, t0, load.now(), ready))
            time.sleep(6)
        result = load.stop()
    assert_statuses(result, FAIL_CLOSED)
    for name, t0, t1, ready in windows:
        assert ready == 503, name
        down = result.window(t0, t1)
        assert down and all(o.status == 503 for o in down), (name, result.summary())
        assert all("no decision made" in o.error for o in down), name
        healed = result.window(t1 + 2, t1 + 6)
        assert len(healed) >= 10, (name, result.summary())
        bad = [o for o in healed if o.status != 200]
        assert not bad, (name, bad[:3])
    assert_every_200_stored(result, db.url)
    verify = audit_verify(env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- the model registry and the model artifact ---------------------------------------------------
@pytest.mark.slow
def test_registry_unreachable_at_start_is_not_ready_with_a_clear_log_line(
    workdir: Path, registered: Registered, server_keys: dict[str, str]
) -> None:
    port = free_port()  # nothing listens there
    env = server_env(
        workdir,
        f"http://127.0.0.1:{port}",
        f"sqlite:///{workdir / 'unreachable.db'}",
        SCF_RISK_MODEL_LOAD_WAIT_SECONDS="2",
    )
    with StressServer(workdir, env, workers=2, wait_for="/healthz") as srv:
        srv.wait_workers(2)
        ready = httpx.get(f"{srv.url}/readyz", timeout=30)
        score = httpx.post(
            f"{srv.url}/v1/scores",
            json={"sme_id": "S00001", "as_of": "2023-12-31", "features": {}, "allow_sparse": True},
            headers={"X-API-Key": server_keys["scorer"]},
            timeout=30,
        )
        deadline = time.monotonic() + 60
        while srv.output().count("model not loaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        log = srv.output()
        assert srv.proc is not None and srv.proc.poll() is None, "the server died"
        assert len(srv.worker_pids()) == 2
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False and body["model"] is None
    assert f"127.0.0.1:{port}" in body["model_error"]
    assert score.headers.get("retry-after")
    assert "model not ready" in problem(score, 503)["detail"]
    lines = [ln for ln in log.splitlines() if "model not loaded" in ln]
    assert len(lines) >= 2, log[-3000:]  # one per worker
    for line in lines:
        assert "ERROR" in line and "models:/sme-default-pd@champion" in line, line
        assert f"127.0.0.1:{port}" in line, line
    assert "Traceback" not in log, log[-3000:]


def private_registry(registered: Registered, root: Path) -> str:
    """A copy of the registered model's MLflow database (same artifacts), to move aliases in."""
    root.mkdir(parents=True, exist_ok=True)
    src = urlsplit(registered.tracking_uri).path
    with sqlite3.connect(src) as a, sqlite3.connect(root / "mlflow.db") as b:
        a.backup(b)
    return f"sqlite:///{root / 'mlflow.db'}"


def register_corrupt_champion(tracking_uri: str, root: Path) -> str:
    """Register a copy of the champion whose booster.txt lost its second half; make it champion."""
    from training.bundle import MODEL_NAME, client_for
    from training.registry import CHAMPION

    client = client_for(tracking_uri)
    mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    source = Path(urlsplit(client.get_model_version_download_uri(mv.name, mv.version)).path)
    copy = root / "corrupt-model"
    shutil.copytree(source, copy)
    booster = copy / "artifacts" / "scoring_model" / "booster.txt"
    text = booster.read_text(encoding="utf-8")
    booster.write_text(text[: len(text) // 2], encoding="utf-8")  # an interrupted copy
    bad = client.create_model_version(MODEL_NAME, copy.as_uri(), run_id=mv.run_id)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, bad.version)
    return str(bad.version)


@pytest.mark.slow
def test_corrupt_model_artifact_is_refused_and_the_old_model_keeps_serving(
    workdir: Path,
    registered: Registered,
    server_keys: dict[str, str],
    bodies: list[tuple[str, bytes]],
) -> None:
    root = workdir / "corrupt"
    tracking = private_registry(registered, root)
    env = server_env(workdir, tracking, f"sqlite:///{root / 'audit.db'}")
    admin = {"X-API-Key": server_keys["admin"]}
    scorer = {"X-API-Key": server_keys["scorer"], "Content-Type": "application/json"}
    path, body = bodies[0]
    with StressServer(workdir, env, workers=1) as srv:
        first = httpx.post(f"{srv.url}{path}", content=body, headers=scorer, timeout=30)
        assert first.status_code == 200
        good = first.json()["model"]["version"]
        bad = register_corrupt_champion(tracking, root)
        reload = httpx.post(f"{srv.url}/v1/admin/reload", headers=admin, timeout=300)
        assert srv.proc is not None and srv.proc.poll() is None, "the corrupt model killed it"
        after = httpx.post(f"{srv.url}{path}", content=body, headers=scorer, timeout=30)
        model = httpx.get(f"{srv.url}/v1/model", headers=admin, timeout=30).json()
        ready = httpx.get(f"{srv.url}/readyz", timeout=30)
        log = srv.output()
    assert bad != good
    detail = problem(reload, 503)["detail"]
    assert "booster.txt" in detail and "corrupt" in detail, detail
    assert f"still serving models:/sme-default-pd/{good}" in detail, detail
    assert after.status_code == 200 and after.json()["model"]["version"] == good
    assert model["version"] == good and ready.status_code == 200
    assert any("booster.txt" in ln and "ERROR" in ln for ln in log.splitlines()), log[-3000:]


# -- in process: an audit database gone from the start, or one that never answers --------------
@contextmanager
def silent_listener() -> Iterator[int]:
    """A 127.0.0.1 port that accepts connections and never says a word (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


BODY = {"sme_id": "S1", "as_of": "2024-01-31", "grade": "B", "score": 600.0, "pd": 0.02}


def test_postgres_that_never_answers_is_unavailable_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(database, "CONNECT_TIMEOUT_SECONDS", 1)
    with silent_listener() as port:
        store = AuditStore(f"postgresql+psycopg://scf@127.0.0.1:{port}/audit")
        t0 = time.monotonic()
        try:
            with pytest.raises(AuditUnavailable, match="audit store"):
                store.append([BODY])
        finally:
            store.dispose()
        assert time.monotonic() - t0 < 15  # seconds (libpq waits at least 2 s a try), no hang


@pytest.mark.parametrize("where", ["postgres refused", "sqlite impossible path"])
def test_audit_store_gone_from_the_start_is_503_never_500(
    where: str,
    settings: Settings,
    keys: dict[str, str],
    registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = (
        f"postgresql+psycopg://scf@127.0.0.1:{free_port()}/audit"
        if where == "postgres refused"
        else "sqlite:////dev/null/no/audit.db"
    )
    caplog.set_level(logging.ERROR, logger="scf_risk.serving")
    with TestClient(create_app(settings, loader=registry, store=AuditStore(url))) as c:
        ready = c.get("/readyz")
        score = c.post(
            "/v1/scores",
            json={"sme_id": "S1", "as_of": "2023-12-31", "features": {}, "allow_sparse": True},
            headers={"X-API-Key": keys["scorer"]},
        )
        batch = c.post(
            "/v1/scores/batch",
            json=[{"sme_id": "S1", "as_of": "2023-12-31", "features": {}, "allow_sparse": True}],
            headers={"X-API-Key": keys["scorer"]},
        )
        read = c.get(
            "/v1/decisions/00000000-0000-4000-8000-000000000000",
            headers={"X-API-Key": keys["auditor"]},
        )
        listed = c.get("/v1/decisions?sme_id=S1", headers={"X-API-Key": keys["auditor"]})
    assert ready.status_code == 503 and ready.json()["audit_store_writable"] is False
    assert ready.json()["model"] is not None  # the model is fine: only the store is missing
    for r in (score, batch):
        assert "no decision made" in problem(r, 503)["detail"], r.text
    for r in (score, batch, read, listed):  # generic: the database's URL stays in the log
        assert problem(r, 503)["type"] == "tag:scf-risk,2025:problem:unavailable"
        assert url not in r.text and "audit.db" not in r.text and "127.0.0.1" not in r.text
    assert any("audit store not available at start" in m for m in caplog.messages)


# -- in process: every kind of corrupt model file is refused, the served model stays ----------
def _truncate(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")


def _drop_tree(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index("Tree=3\n"), text.index("Tree=4\n")
    path.write_text(text[:start] + text[end:], encoding="utf-8")


def _alter_a_leaf(path: Path) -> None:
    """Silent corruption: one digit of a leaf value changes; LightGBM still parses the file."""
    text = path.read_text(encoding="utf-8")
    start = text.index("leaf_value=") + len("leaf_value=")
    digit = next(i for i in range(start, len(text)) if text[i] in "123456789")
    path.write_text(
        text[:digit] + str(int(text[digit]) % 9 + 1) + text[digit + 1 :], encoding="utf-8"
    )


CORRUPTIONS: dict[str, tuple[str, Callable[[Path], object], str]] = {
    "booster truncated": ("booster.txt", _truncate, "crashed LightGBM's parser"),
    "booster missing a tree": ("booster.txt", _drop_tree, "crashed LightGBM's parser"),
    "booster garbage": ("booster.txt", lambda p: p.write_text("hello"), "LightGBMError"),
    "booster zeroed": ("booster.txt", lambda p: p.write_bytes(b"\0" * 4096), "corrupt"),
    "booster gone": ("booster.txt", lambda p: p.unlink(), "does not hold a scoring model"),
    "booster leaf altered": ("booster.txt", _alter_a_leaf, "do not match the sha256"),
    "card truncated": ("model.json", _truncate, "do not match the sha256"),
    "card of the wrong shape": (
        "model.json",
        lambda p: p.write_text("[]"),
        "do not match the sha256",
    ),
    "card not UTF-8": (
        "model.json",
        lambda p: p.write_bytes(b"\xff\xfe{}"),
        "do not match the sha256",
    ),
    "checksums gone": ("checksums.json", lambda p: p.unlink(), "cannot be proven intact"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_model_file_is_refused_and_the_served_model_stays(
    case: str, scoring_model: ScoringModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    scoring_model.save(good / "artifacts" / "scoring_model")
    shutil.copytree(good, bad)
    name, corrupt, message = CORRUPTIONS[case]
    corrupt(bad / "artifacts" / "scoring_model" / name)
    holder = ModelHolder(
        load_model,
        model_uri=str(good),
        tracking_uri=f"sqlite:///{tmp_path / 'unused.db'}",
        explain_method="pred_contrib",
    )
    served = holder.load()
    with pytest.raises(ModelLoadFailed, match=re.escape(message)) as refused:
        holder.load(str(bad))  # this process survives whatever the file holds
    assert holder.current is served and holder.get() is served
    assert holder.last_error is not None and message in holder.last_error
    assert str(bad) in str(refused.value)


def test_the_sqlite_lock_timeout_comes_from_the_audit_url(tmp_path: Path) -> None:
    assert AuditStore(f"sqlite:///{tmp_path / 'a.db'}?timeout=2.5").lock_timeout == 2.5
    assert (
        AuditStore(f"sqlite:///{tmp_path / 'a.db'}").lock_timeout == database.DEFAULT_LOCK_TIMEOUT
    )
    with pytest.raises(ValueError, match="timeout='soon' is not a number of seconds"):
        AuditStore(f"sqlite:///{tmp_path / 'a.db'}?timeout=soon")
