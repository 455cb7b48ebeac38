"""The single-score path, byte for byte: every answer and every audit record of a fixed set of
varied requests is the one the service gave before its request path was cut for CPU (issue 17).

Everything that varies from run to run is fixed here (the signing key, the API key, decision ids,
record times, the date of the start-up model change), so the whole answer (status, headers but
the date, body) and each stored row (every column: payload text, hashes, signature) are
deterministic, and the digest of all of them is compared with the one the code before the cut
(ed545fe) gave. The requests: full and sparse feature sets, categorical values known and unknown,
missing values (absent and null), integers for floats, values outside their domain, wrong types,
unknown and extra fields, bad and future dates, bad ids, too few features without
``allow_sparse``, the stored mode without materialised features, non-JSON and empty bodies, and
a batch with a failing item. A digest that differs names the first request whose answer, or the
first stored row, differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

import serving.audit.store as store_module
from features.catalog import CATALOG, domain_of
from serving.api.app import create_app
from serving.api.keys import KEY_PREFIX, KeyRecord, _digest, write_keys
from serving.settings import Settings
from tests.support.models import Registry, synthetic_rows

KEY_ID = "0123456789abcdef"
KEY = f"{KEY_PREFIX}{KEY_ID}_{'k' * 43}"
# The first 16 hex digits of each answer's and each stored row's sha256, as the code before the
# cut (ed545fe) gave them: one per request of `_requests`, in order, and one per row of the
# decisions table (the start-up model change first).
ANSWERS = (
    "2d5eb28699a435bc",
    "6a0b51dbd047f0f2",
    "43b6225c1e958998",
    "5f26f1a600365855",
    "d4c12f7a0f3df220",
    "ceed1f4ba614f271",
    "c0c723a49f181aa5",
    "760bd93e9a4abca7",
    "c6489ae8943ae2ad",
    "7ec25ff3b8e1ba77",
    "6220a95fab02329e",
    "258323770e36da5f",
    "c6bd74ea5c40a1c9",
    "0c8ce596755d4f6d",
    "685c6af483fd7e8d",
    "953902c184a5016e",
    "7482226c279fb131",
    "1eef153c4203140e",
    "6151758a24cc09cd",
    "f9c36c6b87a55207",
    "de69838cb70e4dad",
    "7d430bbf19c981e2",
    "6ee70b39cc176a10",
    "e0597740e53547b8",
    "cdac313656991fd2",
    "4a1d20bc3f31947e",
    "a5f9d2c9c20e506e",
    "35c66fc5d7bfabfb",
    "542abcd8a9ea59a7",
    "5433b3509bffd746",
    "938f5f9b94f78554",
    "c9c68f81421e4de0",
    "be084df88a68e978",
    "cac043746abc20f1",
    "bf09e9c5a7da01c1",
    "2577e9d5f7efcc53",
    "515836477677919e",
    "8dfaac4e62c70ae6",
    "49b324e67f1175e6",
    "a8e43e76b26384b0",
    "5eb43d653666e192",
    "b46d5711a6ed2317",
    "49e19358dc0fcf1b",
    "6e1879cd88130482",
    "d4cd0b00ddde61aa",
    "d9c5acc84166f672",
    "c5b970f89f555867",
    "74a2097b0474b3e1",
    "41b93aebc063143f",
    "90cb256f92e8ce07",
    "6d561f31efd19b96",
    "a4fc371f641ed9e2",
    "06f1bb5dd48b8062",
    "f8556b474f345841",
    "ebc45eff3c2e945f",
    "43b214fdd645ab3d",
    "63fb3d8af97e5367",
    "f881667f71071f71",
    "47c094df53901909",
    "e52becebe27a0390",
    "e8600e6409cd540f",
    "cce077afeb5f4ea1",
    "0bc867abcbdc75ed",
    "4a6df52e1520863f",
    "a5d16e339103c06e",
    "026b74eb0df01a32",
)
RECORDS = (
    "d9a50ca654b32ce0",
    "c41714fda9d216a8",
    "ee5cae9f0e92733c",
    "2f89892cf41a5d09",
    "fbd2853c06807586",
    "0e55a5bb20d6d5fa",
    "93e353d298dbd1f8",
    "243fc0433e67e4ea",
    "378c46be945fe053",
    "2fd5c4df216ada0e",
    "bd2887a86f6df6d8",
    "6da99f6d651d1d12",
    "7711bf5f4d53a5b3",
    "127e9b664d085073",
    "ae12e50ac04bba94",
    "c91d441fc67336a0",
    "6210c26d38b9fd53",
    "90965bbfd1a6f695",
    "642fc5a181e8731d",
    "edc5a1ad1884bea6",
    "f3b56797de98b4a0",
    "c9e584ca559e3994",
    "4c71aaddf840320b",
    "1a7ed13ec3c30c28",
    "e5a98ad349b1429e",
    "91d4f1d7fa791179",
    "5e1f43edc8b114f2",
    "e4373589e51aeb92",
    "718a7f6d91eafc1c",
    "4b474c2fa009bb84",
    "a63f0063cbd8e535",
    "c1782cb052910377",
    "e94f4e1e4d0b7468",
    "5556b6fc8a181273",
    "ab740fc4b01c48b3",
    "842bb3883782e48b",
    "4680d7512d8f08b2",
    "ed6024ec52aec470",
    "225c4b8a1035b02f",
    "5549d2466e04cfc1",
    "7971b33f2990249b",
    "4be9784649c83b98",
    "419225bb2306905f",
)


def _requests() -> list[tuple[str, bytes, str]]:
    """(path, body, content type) of every request, in order."""
    frame, _ = synthetic_rows(60, seed=21)
    rng = np.random.default_rng(17)
    numeric = [f for f in CATALOG if f.kind != "categorical"]
    out: list[tuple[str, bytes, str]] = []

    def features(k: int) -> dict[str, Any]:
        row = frame.iloc[k].to_dict()
        return {n: v for n, v in row.items() if not (isinstance(v, float) and math.isnan(v))}

    def score(body: Any, content_type: str = "application/json") -> None:
        text = body if isinstance(body, bytes) else json.dumps(body).encode()
        out.append(("/v1/scores", text, content_type))

    for k in range(24):  # full rows, as sent by a client, most with some values missing
        score({"sme_id": f"SME-{k}", "as_of": "2024-06-30", "features": features(k)})
    for k in range(24, 36):  # sparse: a random few features, allowed or refused
        feats = features(k)
        names = sorted(feats)
        keep = rng.choice(len(names), size=int(rng.integers(1, 12)), replace=False)
        body = {"sme_id": f"SPARSE-{k}", "as_of": "2024-01-31"}
        body["features"] = {names[j]: feats[names[j]] for j in sorted(keep)}
        body["allow_sparse"] = bool(k % 2)
        score(body)
    base = features(40)
    some_numeric = next(f.name for f in numeric if f.name in base)
    industry = next(f.name for f in CATALOG if f.kind == "categorical")
    low = next(f for f in numeric if math.isfinite(domain_of(f).low))
    variants: list[dict[str, Any]] = [
        {**base, industry: "metals"},
        {**base, industry: "no-such-industry"},  # unknown category: out of domain
        {**base, some_numeric: None},  # null: missing
        {**base, some_numeric: 7},  # an integer for a float
        {**base, some_numeric: "seven"},  # a string for a number
        {**base, low.name: domain_of(low).low - 1.0},  # below its domain
        {**base, "no_such_feature": 1.0},
        {**base, some_numeric: 1e300},
        {**base, some_numeric: -0.0},
        {**base, some_numeric: 0.1 + 0.2},
    ]
    for k, feats in enumerate(variants):
        score({"sme_id": f"VAR-{k}", "as_of": "2023-12-31", "features": feats})
    good = {"sme_id": "S1", "as_of": "2024-06-30", "features": base}
    for body in [
        {**good, "as_of": "2999-01-01"},  # in the future
        {**good, "as_of": "2024-02-30"},  # no such date
        {**good, "as_of": "1899-12-31"},  # before the supported range
        {**good, "sme_id": "bad id!"},
        {**good, "sme_id": ""},
        {**good, "extra": 1},
        {**good, "allow_sparse": "yes"},
        {"sme_id": "S1", "as_of": "2024-06-30"},  # stored mode: never materialised
        {"sme_id": "S1"},  # no as_of
        {**good, "features": {}},  # nothing present, sparse not allowed
        {**good, "features": {}, "allow_sparse": True},
        {**good, "features": {industry: "food"}, "allow_sparse": True},
        [good],  # a list
    ]:
        score(body)
    score(b"{not json")
    score(b"")
    score(b'{"sme_id": "S1", "as_of": "2024-06-30", "features": {"dso_90d": NaN}}')
    score(json.dumps(good).encode(), "text/plain")
    score(b'{"sme_id": "S\\ud800", "as_of": "2024-06-30", "features": {}}')
    score(
        b'{"sme_id": "S1", "as_of": "2024-06-30", "features": {"dso_90d": 123456789012345678901}}'
    )
    batch = [
        {"sme_id": f"B{k}", "as_of": "2024-05-31", "features": features(50 + k)} for k in range(4)
    ]
    batch.insert(2, {"sme_id": "B-bad", "as_of": "2024-05-31", "features": {"dso_90d": -1.0}})
    out.append(("/v1/scores/batch", json.dumps(batch).encode(), "application/json"))
    return out


class _Fixed:
    """Decision ids and record times from counters (the audit store's own uuid and clock)."""

    def __init__(self) -> None:
        self.ids = 0
        self.ticks = 0

    def uuid4(self) -> str:
        self.ids += 1
        return f"00000000-0000-4000-8000-{self.ids:012d}"

    def now(self) -> str:
        self.ticks += 1
        return f"2024-07-01T00:00:00.{self.ticks:06d}+00:00"


class _Clock(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> _Clock:
        return cls(2024, 7, 1, tzinfo=tz or UTC)


@pytest.fixture
def fixed_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scoring_model: Any
) -> Iterator[tuple[TestClient, str]]:
    fixed = _Fixed()
    monkeypatch.setattr(store_module, "uuid", types.SimpleNamespace(uuid4=fixed.uuid4))
    monkeypatch.setattr(store_module, "_now", fixed.now)
    monkeypatch.setattr(store_module, "datetime", _Clock)
    keys = tmp_path / "keys.json"
    write_keys(keys, [KeyRecord(KEY_ID, "golden", "scorer", _digest(KEY_ID, KEY), "", False)])
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    (tmp_path / "audit-signing-key.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    db = f"sqlite:///{tmp_path}/audit.db"
    settings = Settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        audit_db=db,
        api_keys=keys,
        env="test",
        reload_poll_seconds=3600,
        keys_recheck_seconds=0.0,
    )
    registry = Registry()
    registry.add(scoring_model)
    with TestClient(create_app(settings, loader=registry)) as client:
        yield client, db


def _answers_and_records(client: TestClient, db: str) -> tuple[list[str], list[int], list[str]]:
    """One digest per answer (status, headers but the date, body), the statuses, and one digest
    per stored row (every column)."""
    answers, statuses = [], []
    for path, body, content_type in _requests():
        r = client.post(
            path, content=body, headers={"X-API-Key": KEY, "Content-Type": content_type}
        )
        doc = r.content
        if r.headers.get("content-type", "").startswith("application/problem+json"):
            problem = json.loads(doc)  # an error's occurrence id is random: left out
            problem.pop("instance", None)
            doc = json.dumps(problem, sort_keys=True).encode()
        headers = sorted(
            (k, v) for k, v in r.headers.items() if k not in ("date", "content-length")
        )
        item = json.dumps([path, body.decode("utf-8", "replace"), r.status_code, headers])
        answers.append(hashlib.sha256(item.encode() + doc).hexdigest())
        statuses.append(r.status_code)
    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM decisions ORDER BY seq")).all()
    finally:
        engine.dispose()
    records = [hashlib.sha256(json.dumps(list(row)).encode()).hexdigest() for row in rows]
    return answers, statuses, records


def test_answers_and_records_are_those_before_the_cut(
    fixed_client: tuple[TestClient, str],
) -> None:
    answers, statuses, records = _answers_and_records(*fixed_client)
    assert set(statuses) == {200, 415, 422}
    # each 200 single stored one record, the batch (a 200 too) four; the model change first
    assert 1 + (statuses.count(200) - 1) + 4 == len(records)
    assert len(answers) == len(ANSWERS) and len(records) == len(RECORDS)
    for k, (got, expected) in enumerate(zip(answers, ANSWERS, strict=True)):
        path, body, _ = _requests()[k]
        assert got[:16] == expected, f"answer {k} differs: {path} {body[:200]!r}"
    for k, (got, expected) in enumerate(zip(records, RECORDS, strict=True)):
        assert got[:16] == expected, f"stored row {k + 1} differs"
