"""Security of the running service (`scf-risk serve`, a real uvicorn subprocess): no key in its
logs, keys hashed at rest (and never in the audit store), roles kept apart, CORS closed by
default, security headers on the HTML pages, and hostile text escaped on them."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.api.keys import add_key, read_keys
from tests.support.load import StressServer, feature_rows, server_env
from tests.support.models import Registered
from tests.support.problems import problem

pytestmark = pytest.mark.slow

EVIL = "https://evil.example"
HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture(scope="module")
def server(
    workdir: Path, registered: Registered, server_keys: dict[str, str]
) -> Iterator[StressServer]:
    env = server_env(
        workdir,
        registered.tracking_uri,
        f"sqlite:///{workdir / 'audit.db'}",
        SCF_RISK_ENV="test",
        SCF_RISK_KEYS_RECHECK_SECONDS="0",  # a key added here is used at once
    )
    with StressServer(workdir, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def row(registered: Registered) -> dict[str, Any]:
    return feature_rows(registered.panel, 1)[0]


def _secret(key: str) -> str:
    """The secret part of ``scfk_<key id>_<secret>``; the secret itself may hold "_"."""
    return key.split("_", 2)[2]


def h(key: str, **extra: str) -> dict[str, str]:
    return {"X-API-Key": key, **extra}


def test_no_key_in_the_logs_and_none_at_rest(
    server: StressServer,
    server_keys: dict[str, str],
    row: dict[str, Any],
    workdir: Path,
) -> None:
    url = server.url
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as c:
        decision = c.post("/v1/scores", json=row, headers=h(server_keys["scorer"])).json()
        did = decision["decision_id"]
        for role, key in server_keys.items():  # every key, right role or not
            c.get(f"/v1/decisions/{did}", headers=h(key))
            c.get("/v1/model", headers=h(key))
            if role != "admin":
                c.post("/v1/admin/reload", headers=h(key))
            c.post("/audit/login", data={"api_key": key, "next": "/audit/decisions"})
            # A careless client putting its key in the URL: the access log must not keep it.
            c.get(f"/v1/model?api_key={key}", headers=h(key))
            c.get(f"/audit/decisions?sme_id={key}", headers=h(key))
        near_miss = server_keys["scorer"][:-1] + ("A" if server_keys["scorer"][-1] != "A" else "B")
        assert c.post("/v1/scores", json=row, headers=h(near_miss)).status_code == 401
        assert c.get(f"/healthz?k={near_miss}").status_code == 200
    deadline = time.monotonic() + 10
    while "GET /healthz?k=" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)  # the access log line follows the response
    log = server.output()
    assert "GET /v1/model?api_key=" in log  # the requests were logged...
    secrets = [*server_keys.values(), near_miss]
    for key in secrets:
        secret = _secret(key)
        assert len(secret) == 43  # the whole 256-bit secret, not a tail after a '_' in it
        assert key not in log and secret not in log  # ...without the keys
    # At rest: the keys file holds hashes only, readable by its owner only.
    keys_file = workdir / "keys.json"
    text = keys_file.read_text()
    for key in server_keys.values():
        assert key not in text and _secret(key) not in text
    records = read_keys(keys_file)
    assert records and all(re.fullmatch(r"sha256:[0-9a-f]{64}", r.hash) for r in records)
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    # The audit store records who decided (key id, name, role), never the key.
    raw = b"".join(p.read_bytes() for p in workdir.glob("audit.db*"))
    assert did.encode() in raw
    for key in server_keys.values():
        assert key.encode() not in raw and _secret(key).encode() not in raw


def test_roles_are_kept_apart(
    server: StressServer, server_keys: dict[str, str], row: dict[str, Any]
) -> None:
    with httpx.Client(base_url=server.url, timeout=30, follow_redirects=False) as c:
        scored = c.post("/v1/scores", json=row, headers=h(server_keys["scorer"]))
        assert scored.status_code == 200
        did = scored.json()["decision_id"]
        before = c.get(f"/v1/decisions?sme_id={row['sme_id']}", headers=h(server_keys["auditor"]))
        # An auditor cannot score (single or batch), nor reload; nothing gets stored.
        for path, body in (("/v1/scores", row), ("/v1/scores/batch", [row])):
            r = c.post(path, json=body, headers=h(server_keys["auditor"]))
            assert "auditor" in problem(r, 403)["detail"], r.text
        assert c.post("/v1/admin/reload", headers=h(server_keys["auditor"])).status_code == 403
        after = c.get(f"/v1/decisions?sme_id={row['sme_id']}", headers=h(server_keys["auditor"]))
        assert len(after.json()["decisions"]) == len(before.json()["decisions"])
        # A scorer cannot read decisions: API, pages by header, pages by sign-in.
        for path in (f"/v1/decisions/{did}", f"/v1/decisions?sme_id={row['sme_id']}"):
            assert c.get(path, headers=h(server_keys["scorer"])).status_code == 403, path
        for path in (f"/audit/decisions/{did}", "/audit/decisions"):
            r = c.get(path, headers=h(server_keys["scorer"]))
            assert r.status_code == 403 and did not in r.text, path
        login = c.post("/audit/login", data={"api_key": server_keys["scorer"]})
        assert login.status_code == 403 and "set-cookie" not in login.headers
        c.cookies.set("scf_risk_key", server_keys["scorer"], path="/audit")
        forged = c.get(f"/audit/decisions/{did}")  # a key is not a session id
        assert forged.status_code == 401 and 'name="api_key"' in forged.text  # the sign-in form
        c.cookies.clear()
        # The auditor reads it, by header and after signing in (cookie: HttpOnly, strict).
        assert c.get(f"/v1/decisions/{did}", headers=h(server_keys["auditor"])).status_code == 200
        signed = c.post(
            "/audit/login",
            data={"api_key": server_keys["auditor"], "next": f"/audit/decisions/{did}"},
        )
        assert signed.status_code == 303 and signed.headers["location"] == f"/audit/decisions/{did}"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/audit" in cookie
        page = c.get(f"/audit/decisions/{did}")  # the client keeps the cookie
        assert page.status_code == 200 and did in page.text
        c.cookies.clear()
        # No key: 401 everywhere a key is needed (the pages offer the sign-in form).
        assert c.post("/v1/scores", json=row).status_code == 401
        assert c.get(f"/v1/decisions/{did}").status_code == 401
        denied = c.get(f"/audit/decisions/{did}")
        assert denied.status_code == 401 and 'action="/audit/login"' in denied.text
        # The sign-in form does not redirect off-site.
        off = c.post("/audit/login", data={"api_key": server_keys["auditor"], "next": EVIL})
        assert off.status_code == 303 and off.headers["location"] == "/audit/decisions"


def test_cors_is_closed_by_default(server: StressServer, server_keys: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        simple = c.get("/v1/model", headers=h(server_keys["scorer"], Origin=EVIL))
        assert simple.status_code == 200
        assert not any(k.lower().startswith("access-control-") for k in simple.headers)
        for path, method in (("/v1/scores", "POST"), ("/v1/decisions", "GET")):
            pre = c.options(
                path,
                headers={
                    "Origin": EVIL,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "x-api-key,content-type",
                },
            )
            assert pre.status_code >= 400, (path, pre.status_code)  # preflight refused
            assert not any(k.lower().startswith("access-control-") for k in pre.headers)


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def test_html_pages_carry_security_headers_and_escape_hostile_text(
    server: StressServer, server_keys: dict[str, str], row: dict[str, Any], workdir: Path
) -> None:
    auditor = h(server_keys["auditor"])
    # A key whose name (shown on the decision page as who decided) is an HTML injection.
    _, hostile_key = add_key(workdir / "keys.json", "scorer", HOSTILE)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        did = c.post("/v1/scores", json=row, headers=h(server_keys["scorer"])).json()["decision_id"]
        hostile = c.post("/v1/scores", json=row, headers=h(hostile_key))
        assert hostile.status_code == 200, hostile.text
        hid = hostile.json()["decision_id"]
        pages = {
            "login": c.get("/audit/login"),
            "sign-in needed": c.get(f"/audit/decisions/{did}"),
            "decision": c.get(f"/audit/decisions/{did}", headers=auditor),
            "index": c.get("/audit/decisions", headers=auditor),
            "not found": c.get(
                "/audit/decisions/00000000-0000-4000-8000-000000000000", headers=auditor
            ),
            "hostile next": c.get("/audit/login", params={"next": f'"><script>{HOSTILE}'}),
            "hostile key name": c.get(f"/audit/decisions/{hid}", headers=auditor),
        }
    for name, page in pages.items():
        assert page.headers["content-type"].startswith("text/html"), name
        for header, value in SECURITY_HEADERS.items():
            assert page.headers.get(header) == value, (name, header)
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, (name, csp)
        assert "script-src" not in csp and "unsafe-inline" not in csp, (name, csp)
        nonce = re.search(r"'nonce-([^']+)'", csp)
        assert nonce, (name, csp)
        styles = re.findall(r"<style([^>]*)>", page.text)
        assert all(f'nonce="{nonce.group(1)}"' in s for s in styles), name
        assert "<script" not in page.text.lower(), name
        assert HOSTILE not in page.text, name  # escaped if shown at all
    assert pages["decision"].status_code == 200 and pages["not found"].status_code == 404
    nonces = {
        re.findall(r"'nonce-([^']+)'", p.headers["content-security-policy"])[0]
        for p in pages.values()
    }
    assert len(nonces) == len(pages)  # a fresh nonce per response
    assert "&lt;img src=x onerror=" in pages["hostile key name"].text
