"""Auditor pages through TestClient: sign-in cookie, escaping, CSP, filters, waterfall layout."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.api.keys import add_key
from serving.api.pages import waterfall
from serving.settings import Settings
from tests.support.models import Registry

Headers = Callable[[str], dict[str, str]]


def make_decision(client: TestClient, headers: Headers, sme: str = "S1") -> dict[str, object]:
    r = client.post(
        "/v1/scores",
        json={
            "sme_id": sme,
            "as_of": "2024-06-30",
            "allow_sparse": True,
            "features": {"dso_90d": 12.0},
        },
        headers=headers("scorer"),
    )
    assert r.status_code == 200
    return dict(r.json())


def test_pages_have_a_nonce_csp_and_security_headers(client: TestClient, headers: Headers) -> None:
    d = make_decision(client, headers)
    r = client.get(f"/audit/decisions/{d['decision_id']}", headers=headers("auditor"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'<style nonce="{nonce.group(1)}">' in r.text
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "<script" not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    again = client.get(f"/audit/decisions/{d['decision_id']}", headers=headers("auditor"))
    assert again.headers["content-security-policy"] != csp  # a fresh nonce per response


def test_sign_in_sets_an_httponly_cookie_for_the_audit_pages(
    client: TestClient, keys: dict[str, str], headers: Headers
) -> None:
    d = make_decision(client, headers)
    first = client.get("/audit/decisions")
    assert first.status_code == 401 and 'name="api_key"' in first.text
    refused = client.post("/audit/login", data={"api_key": keys["scorer"], "next": "/audit/x"})
    assert refused.status_code == 403
    wrong = client.post("/audit/login", data={"api_key": "nope"})
    assert wrong.status_code == 401 and "wrong key" in wrong.text
    ok = client.post(
        "/audit/login",
        data={"api_key": keys["auditor"], "next": f"/audit/decisions/{d['decision_id']}"},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == f"/audit/decisions/{d['decision_id']}"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/audit" in cookie
    page = client.get(f"/audit/decisions/{d['decision_id']}")
    assert page.status_code == 200 and "waterfall" in page.text
    assert client.get("/v1/decisions?sme_id=S1").status_code == 401  # the cookie is pages-only
    evil = client.post(
        "/audit/login",
        data={"api_key": keys["auditor"], "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert evil.headers["location"] == "/audit/decisions"  # no open redirect


def test_page_content_is_escaped(
    settings: Settings, registry: Registry, keys: dict[str, str], tmp_path: Path
) -> None:
    _, sneaky = add_key(settings.api_keys, "scorer", "<script>alert(1)</script>")
    with TestClient(create_app(settings, loader=registry)) as c:
        r = c.post(
            "/v1/scores",
            json={"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": {}},
            headers={"X-API-Key": sneaky},
        )
        page = c.get(
            f"/audit/decisions/{r.json()['decision_id']}", headers={"X-API-Key": keys["auditor"]}
        )
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_index_filters_by_sme_and_grade(client: TestClient, headers: Headers) -> None:
    a = make_decision(client, headers, "S1")
    b = make_decision(client, headers, "S2")
    aud = headers("auditor")
    both = client.get("/audit/decisions", headers=aud).text
    assert str(a["decision_id"]) in both and str(b["decision_id"]) in both
    only_s2 = client.get("/audit/decisions?sme_id=S2", headers=aud).text
    assert str(b["decision_id"]) in only_s2 and str(a["decision_id"]) not in only_s2
    graded = client.get(f"/audit/decisions?grade={a['grade']}", headers=aud).text
    assert str(a["decision_id"]) in graded
    other = "G01" if a["grade"] != "G01" else "G12"
    assert (
        str(a["decision_id"]) not in client.get(f"/audit/decisions?grade={other}", headers=aud).text
    )
    assert client.get("/audit/decisions?sme_id=", headers=aud).status_code == 200


def test_waterfall_adds_up_and_aggregates_the_rest() -> None:
    contributions = {f"f{i}": (-1) ** i * (i + 0.5) for i in range(20)}
    base = 600.0
    score = base + math.fsum(contributions.values())
    chart = waterfall(base, contributions, score, top=5)
    kinds = [b.kind for b in chart.bars]
    assert kinds[0] == "base" and kinds[-1] == "total" and kinds.count("other") == 1
    assert [b.label for b in chart.bars[1:6]] == ["f19", "f18", "f17", "f16", "f15"]
    steps = chart.bars[1:-1]
    assert math.isclose(base + sum(b.points for b in steps), score, abs_tol=1e-9)
    for prev, cur in itertools.pairwise(steps):
        assert math.isclose(prev.end, cur.start)
    assert all(b.width > 0 for b in chart.bars)


def test_pages_read_like_a_person_wrote_them(client: TestClient, headers: Headers) -> None:
    """Values by unit (no float noise), points that round to zero neither green nor negative,
    the axis break said, mode and caller in the list, what was sent beside what was used."""
    r = client.post(
        "/v1/scores",
        json={
            "sme_id": "S9",
            "as_of": "2024-06-30",
            "allow_sparse": True,
            "features": {"dso_90d": 12.25, "sales_amount_365d": 992607.0900000003},
        },
        headers=headers("scorer"),
    )
    assert r.status_code == 200, r.text
    d = r.json()
    page = client.get(f"/audit/decisions/{d['decision_id']}", headers=headers("auditor")).text
    shown = re.sub(r"<pre.*?</pre>", "", page, flags=re.S)  # all but the inputs as sent/used
    assert "992607.09" not in shown and "992,607" in shown
    assert "12 days" in shown  # dso_90d by its unit
    assert ">\u22120.00<" not in shown and ">-0.00<" not in shown  # shown cells, not data-*
    assert re.search(r'class="num zero">0\.00<', page)  # unused features: neutral, not green
    assert 'id="axis-break"' in page and "not 0" in page
    raw = re.search(r'<pre id="raw-input">(.*?)</pre>', page, re.S)
    used = re.search(r'<pre id="normalised-input">(.*?)</pre>', page, re.S)
    assert raw and used and "992607.0900000003" in raw.group(1)
    listing = client.get("/audit/decisions?sme_id=S9", headers=headers("auditor")).text
    assert "<th>mode</th><th>caller</th>" in listing and ">features<" in listing


def test_points_format_has_no_negative_zero() -> None:
    from serving.api.pages import _fmt, points_class

    assert _fmt(-0.0001) == "0.00" and points_class(-0.0001) == "zero"
    assert _fmt(-1.5) == "\u22121.50" and points_class(-1.5) == "neg"
    assert _fmt(2.0) == "+2.00" and points_class(2.0) == "pos"
