"""The service as it runs: a registered model from MLflow, `scf-risk serve` under uvicorn on
127.0.0.1, reload under load, several workers, the audit commands, and the auditor page in a
real headless Chromium."""

from __future__ import annotations

import math
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from serving.api.keys import ROLES, add_key
from tests.support.load import make_signing_key
from tests.support.models import Registered, demo_history_decision, register_copy
from tests.support.server import Browser, Server, chromium_or_skip

FEATURES = {"dso_90d": 35.0}
SPARSE = {"as_of": "2023-12-31", "allow_sparse": True}  # a server test, not a contract test


@pytest.fixture(scope="module")
def server_keys(workdir: Path) -> dict[str, str]:
    make_signing_key(workdir)
    return {role: add_key(workdir / "keys.json", role)[1] for role in ROLES}


def server_env(workdir: Path, registered: Registered, db: str) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
        "SCF_RISK_AUDIT_DB": f"sqlite:///{workdir / db}",
        "SCF_RISK_API_KEYS": str(workdir / "keys.json"),
        "SCF_RISK_ENV": "test",
        "SCF_RISK_RELOAD_POLL_SECONDS": "0.3",
    }


@pytest.fixture(scope="module")
def server(workdir: Path, registered: Registered, server_keys: dict[str, str]) -> Iterator[Server]:
    with Server(workdir, server_env(workdir, registered, "audit.db")) as srv:
        yield srv


def post_score(base: str, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    payload = body or {"sme_id": "S00001", "features": FEATURES, **SPARSE}
    return httpx.post(f"{base}/v1/scores", json=payload, headers={"X-API-Key": key}, timeout=30)


def audit_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "serving", "audit", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip


def test_history_mode_equals_the_batch_panel_row(registered: Registered, tmp_path: Path) -> None:
    """The single-SME path with the model's reference data gives the panel's features."""
    with demo_history_decision(registered, tmp_path) as (c, key, body, first, stored):
        features = stored["features"]
        panel = registered.panel
        row = panel[
            (panel["sme_id"] == body["sme_id"]) & (panel["as_of"] == pd.Timestamp(body["as_of"]))
        ]
        assert len(row) == 1
        for name, value in features.items():
            expected = row.iloc[0][name]
            if value is None:
                assert pd.isna(expected), name
            elif isinstance(value, str):
                assert value == str(expected), name
            else:
                assert math.isclose(value, float(expected), rel_tol=1e-12, abs_tol=1e-12), name
        again = c.post(
            "/v1/scores",
            json={"sme_id": body["sme_id"], "as_of": body["as_of"], "features": {
                k: v for k, v in features.items() if v is not None
            }},
            headers={"X-API-Key": key},
        )  # fmt: skip
        assert again.json()["score"] == first["score"]


def test_reload_under_concurrent_load_fails_no_request(
    server: Server, server_keys: dict[str, str], registered: Registered
) -> None:
    before = httpx.get(
        f"{server.url}/v1/model", headers={"X-API-Key": server_keys["admin"]}
    ).json()["version"]
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(50):
                r = client.post(
                    f"{server.url}/v1/scores",
                    json={"sme_id": "S00002", "features": FEATURES, **SPARSE},
                    headers={"X-API-Key": server_keys["scorer"]},
                )
                version = r.json()["model"]["version"] if r.status_code == 200 else None
                with lock:
                    results.append((r.status_code, version))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    while len(results) < 40:
        time.sleep(0.02)
    new_version = register_copy(registered)
    r = httpx.post(
        f"{server.url}/v1/admin/reload", headers={"X-API-Key": server_keys["admin"]}, timeout=60
    )
    for t in threads:
        t.join()
    assert r.status_code == 200, r.text
    assert r.json()["previous"]["version"] == before and r.json()["model"]["version"] == new_version
    assert len(results) == 200
    assert all(status == 200 for status, _ in results), [s for s, _ in results if s != 200]
    versions = [v for _, v in results]
    assert versions[0] == before and versions[-1] == new_version


def test_audit_commands_verify_and_replay_the_served_decisions(
    server: Server, server_keys: dict[str, str], workdir: Path, registered: Registered
) -> None:
    decision = post_score(server.url, server_keys["scorer"]).json()
    env = server_env(workdir, registered, "audit.db")
    ok = audit_cli(env, "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    replay = audit_cli(env, "replay", decision["decision_id"])
    assert replay.returncode == 0 and "matches exactly" in replay.stdout, replay.stderr
    bad_id = audit_cli(env, "replay", "../../etc/passwd")
    assert bad_id.returncode == 2


def test_audit_verify_command_fails_on_a_tampered_store(
    server: Server, server_keys: dict[str, str], workdir: Path, registered: Registered
) -> None:
    for _ in range(3):
        assert post_score(server.url, server_keys["scorer"]).status_code == 200
    copy = workdir / "tampered.db"
    with sqlite3.connect(workdir / "audit.db") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # a consistent copy of the served store
    env = server_env(workdir, registered, "tampered.db")
    assert audit_cli(env, "verify").returncode == 0
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE decisions SET grade = 'XX' WHERE seq = 2")
    broken = audit_cli(env, "verify")
    assert broken.returncode == 1
    assert "BROKEN" in broken.stderr and "seq 2" in broken.stderr


@pytest.mark.slow
def test_two_workers_share_one_chain_metrics_and_reloads(
    workdir: Path, registered: Registered, server_keys: dict[str, str]
) -> None:
    env = server_env(workdir, registered, "workers.db")
    with Server(workdir, env, workers=2) as srv:
        statuses: list[int] = []

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                for i in range(30):
                    r = client.post(
                        f"{srv.url}/v1/scores",
                        json={"sme_id": f"S{i:05d}", "features": FEATURES, **SPARSE},
                        headers={"X-API-Key": server_keys["scorer"]},
                    )
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 120
        metrics = httpx.get(f"{srv.url}/metrics").text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("scf_risk_decisions_total{")
        )
        assert total == 120  # both workers' counts, aggregated

        new_version = register_copy(registered)
        r = httpx.post(
            f"{srv.url}/v1/admin/reload", headers={"X-API-Key": server_keys["admin"]}, timeout=60
        )
        assert r.status_code == 200 and r.json()["model"]["version"] == new_version
        deadline = time.monotonic() + 30
        versions: set[str] = set()
        while time.monotonic() < deadline:
            versions = {
                post_score(srv.url, server_keys["scorer"]).json()["model"]["version"]
                for _ in range(12)
            }
            if versions == {new_version}:
                break
            time.sleep(0.3)
        assert versions == {new_version}, "the other worker did not follow the reload"
    verify = audit_cli(env, "verify")
    assert verify.returncode == 0, verify.stderr


def test_unreachable_registry_at_start_serves_healthz_not_ready(
    workdir: Path, registered: Registered, server_keys: dict[str, str]
) -> None:
    from tests.support.server import free_port

    env = server_env(workdir, registered, "unreachable.db")
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env["SCF_RISK_MODEL_LOAD_WAIT_SECONDS"] = "2"
    with Server(workdir, env, wait_for="/healthz") as srv:
        ready = httpx.get(f"{srv.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert post_score(srv.url, server_keys["scorer"]).status_code == 503
        deadline = time.monotonic() + 60
        while "model not loaded" not in srv.output() and time.monotonic() < deadline:
            time.sleep(0.2)
    log = srv.output()
    assert "model not loaded" in log and "sme-default-pd@champion" in log


PAGE_SCRIPT = """JSON.stringify((() => {
  const svg = document.querySelector('svg#waterfall');
  if (!svg) return {svg: false};
  const box = svg.getBoundingClientRect();
  const style = getComputedStyle(svg);
  const bars = [...svg.querySelectorAll('g.bar')].map(g => {
    const r = g.querySelector('rect').getBoundingClientRect();
    return {label: g.dataset.label, kind: g.dataset.kind, points: Number(g.dataset.points),
            text: g.querySelector('text.value').textContent, width: r.width, height: r.height};
  });
  return {svg: true, width: box.width, height: box.height, display: style.display,
          visibility: style.visibility, bars: bars,
          score: document.querySelector('#score').textContent.trim(),
          grade: document.querySelector('#grade').textContent.trim(),
          version: document.querySelector('#model-version').textContent.trim(),
          rows: document.querySelectorAll('#features tr[data-feature]').length};
})())"""


def test_auditor_page_renders_in_headless_chromium(
    server: Server, server_keys: dict[str, str], workdir: Path
) -> None:
    binary = chromium_or_skip()
    decision = post_score(server.url, server_keys["scorer"]).json()
    api = httpx.get(
        f"{server.url}/v1/decisions/{decision['decision_id']}",
        headers={"X-API-Key": server_keys["auditor"]},
    ).json()
    shot = workdir / "decision.png"
    with Browser(binary) as browser:
        page = browser.visit(
            f"{server.url}/audit/decisions/{decision['decision_id']}",
            headers={"X-API-Key": server_keys["auditor"]},
            script=PAGE_SCRIPT,
            screenshot=shot,
        )
        denied = browser.visit(
            f"{server.url}/audit/decisions/{decision['decision_id']}",
            headers={"X-API-Key": server_keys["scorer"]},
            script="JSON.stringify(document.body.innerText)",
        )
    assert page["svg"] and page["width"] > 300 and page["height"] > 200
    assert page["display"] != "none" and page["visibility"] == "visible"
    bars = page["bars"]
    assert bars[0]["kind"] == "base" and bars[-1]["kind"] == "total"
    assert all(b["width"] > 0 and b["height"] > 0 for b in bars)
    assert bars[0]["points"] == api["base_points"] and bars[-1]["points"] == api["score"]
    contributions = api["contributions"]
    shown = [b for b in bars if b["kind"] in ("up", "down")]
    assert shown and all(b["points"] == contributions[b["label"]] for b in shown)
    rest = [b for b in bars if b["kind"] == "other"]
    shown_sum = sum(b["points"] for b in shown) + sum(b["points"] for b in rest)
    assert math.isclose(api["base_points"] + shown_sum, api["score"], abs_tol=1e-6)
    assert page["score"] == f"{api['score']:.2f}" and page["grade"] == api["grade"]
    assert page["version"] == api["model"]["version"]
    assert page["rows"] == len(contributions)
    assert shot.stat().st_size > 10_000
    assert "may not" in denied  # a scorer's key is refused (403)


def test_docs_render_offline_in_headless_chromium(server: Server, workdir: Path) -> None:
    """/docs and /redoc load nothing but this server's own files (Chromium runs with networking
    off but loopback) and show the operations."""
    binary = chromium_or_skip()
    for path in ("/docs", "/redoc"):
        page = httpx.get(f"{server.url}{path}", timeout=30)
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["content-security-policy"]
        )
        assert not re.search(r"""(src|href)=["']https?://""", page.text), page.text
    with Browser(binary) as browser:
        swagger = browser.visit(
            f"{server.url}/docs",
            headers={},
            until="document.querySelectorAll('.opblock').length > 0",
            script="JSON.stringify([...document.querySelectorAll('.opblock-summary-path')]"
            ".map(e => e.innerText.replace(/\\u200b/g, '')))",
            screenshot=workdir / "docs.png",
        )
        redoc = browser.visit(
            f"{server.url}/redoc",
            headers={},
            until="document.body.innerText.includes('/v1/scores')",
            script="JSON.stringify(document.body.innerText)",
        )
    assert (
        "/v1/scores" in swagger and "/v1/scores/batch" in swagger and "/v1/reason-codes" in swagger
    )
    assert "/v1/decisions/{decision_id}" in swagger
    assert "Score one SME" in redoc
