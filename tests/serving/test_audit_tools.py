"""`scf-risk audit verify | verify-receipt | new-key`: fail closed, read only, need only the
public keys; score responses carry receipts that the command proves."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from serving.audit.signing import PublicKeys
from serving.audit.store import AuditStore
from serving.commands import app
from serving.settings import Settings
from tests.support.models import Registry
from training.exceptions import SettingsError

FEATURES_BODY = {
    "sme_id": "S00001",
    "as_of": "2024-06-30",
    "allow_sparse": True,
    "features": {"dso_90d": 42.5, "industry": "food"},
}


def run(settings: Settings, *args: str) -> tuple[int, str]:
    env = {
        "SCF_RISK_AUDIT_DB": settings.audit_db,
        "SCF_RISK_API_KEYS": str(settings.api_keys),
        "SCF_RISK_ENV": "test",
    }
    result = CliRunner().invoke(app, ["audit", *args], env=env)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.fixture
def scored(
    client: TestClient, headers: Callable[[str], dict[str, str]], tmp_path: Path
) -> list[dict]:
    out = []
    for i in range(4):
        body = {**FEATURES_BODY, "sme_id": f"S{i:05d}"}
        r = client.post("/v1/scores", json=body, headers=headers("scorer"))
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def test_every_score_response_carries_a_receipt_that_verifies(
    scored: list[dict], settings: Settings, tmp_path: Path
) -> None:
    keys = PublicKeys.read(settings.public_keys_path)
    for response in scored:
        receipt = response["receipt"]
        assert set(receipt) == {"sequence", "record_hash", "signature", "key_id"}
        assert keys.check(receipt["record_hash"], receipt["signature"], receipt["key_id"]) is None
    file = tmp_path / "response.json"
    file.write_text(json.dumps(scored[1]))
    code, out = run(settings, "verify-receipt", str(file))
    assert code == 0, out
    assert f"receipt proven: record seq {scored[1]['receipt']['sequence']}" in out
    file.write_text(json.dumps(scored[2]["receipt"]))  # the receipt alone
    assert run(settings, "verify-receipt", str(file))[0] == 0


def test_a_receipt_whose_record_was_replaced_is_not_proven(
    scored: list[dict], settings: Settings, tmp_path: Path
) -> None:
    store = AuditStore(settings.audit_db)
    t = store.decisions
    with store.transaction() as conn:
        seq = scored[1]["receipt"]["sequence"]
        conn.execute(sa.update(t).where(t.c.seq == seq).values(record_hash="f" * 64))
    store.dispose()
    file = tmp_path / "receipt.json"
    file.write_text(json.dumps(scored[1]))
    code, out = run(settings, "verify-receipt", str(file))
    assert code == 1 and "receipt NOT proven" in out and "record was replaced" in out, out
    forged = {**scored[0]["receipt"], "record_hash": "0" * 64}
    file.write_text(json.dumps(forged))
    code, out = run(settings, "verify-receipt", str(file))
    assert code == 1 and "does not verify" in out, out


def test_verify_passes_an_intact_store_and_accepts_a_plain_path(
    scored: list[dict], settings: Settings
) -> None:
    code, out = run(settings, "verify")
    assert code == 0 and "intact: 5 record(s) (1 model change(s))" in out, out
    path = sa.make_url(settings.audit_db).database
    assert path is not None
    code, out = run(settings, "verify", "--db", path)
    assert code == 0, out


def test_verify_refuses_a_missing_database_and_creates_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    from serving.audit.signing import Signer, add_public

    add_public(settings.public_keys_path, Signer.generate())
    missing = tmp_path / "nowhere" / "audit.db"
    for target in (str(missing), f"sqlite:///{missing}"):
        code, out = run(settings, "verify", "--db", target)
        assert code == 1 and "does not exist" in out and str(missing) in out, out
        code, out = run(settings, "replay", "--db", target, "00000000-0000-4000-8000-000000000000")
        assert code == 1 and "does not exist" in out, out
    assert not missing.parent.exists()


def test_verify_refuses_a_database_without_a_chain_or_without_records(
    settings: Settings, tmp_path: Path
) -> None:
    from serving.audit.signing import Signer, add_public

    add_public(settings.public_keys_path, Signer.generate())
    other = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{other}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    code, out = run(settings, "verify", "--db", str(other))
    assert code == 1 and "holds no audit chain" in out and str(other) in out, out
    empty = AuditStore(f"sqlite:///{tmp_path / 'empty.db'}")
    empty.ensure_schema()
    empty.dispose()
    code, out = run(settings, "verify", "--db", str(tmp_path / "empty.db"))
    assert code == 1 and "holds no decisions" in out, out


def test_verify_without_the_public_keys_refuses(scored: list[dict], settings: Settings) -> None:
    settings.public_keys_path.unlink()
    code, out = run(settings, "verify")
    assert code == 1 and "public keys file not found" in out, out


def test_rotated_keys_keep_old_records_verifiable(
    settings: Settings, keys: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    from serving.api.app import create_app

    def score_some(conf: Settings) -> None:
        with TestClient(create_app(conf, loader=registry)) as c:
            for i in range(2):
                body = {**FEATURES_BODY, "sme_id": f"S{i:05d}"}
                r = c.post("/v1/scores", json=body, headers={"X-API-Key": keys["scorer"]})
                assert r.status_code == 200, r.text

    score_some(settings)
    new_key = tmp_path / "rotated.pem"
    env = {"SCF_RISK_API_KEYS": str(settings.api_keys), "SCF_RISK_ENV": "test"}
    result = CliRunner().invoke(app, ["audit", "new-key", "--out", str(new_key)], env=env)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(new_key).st_mode) == 0o600
    score_some(settings.model_copy(update={"audit_signing_key": new_key}))
    assert len(PublicKeys.read(settings.public_keys_path).keys) == 2
    code, out = run(settings, "verify")
    assert code == 0 and "intact: 5 record(s) (1 model change(s))" in out, out


def test_signing_key_is_created_0600_in_development_and_refused_elsewhere(
    tmp_path: Path, registry: Registry
) -> None:
    from serving.api.app import create_app

    conf = Settings(
        audit_db=f"sqlite:///{tmp_path}/audit.db",
        api_keys=tmp_path / "keys.json",
        env="development",
    )
    from serving.api.keys import add_key

    scorer = add_key(conf.api_keys, "scorer")[1]
    with TestClient(create_app(conf, loader=registry)) as c:
        r = c.post("/v1/scores", json=FEATURES_BODY, headers={"X-API-Key": scorer})
        assert r.status_code == 200, r.text
    for path in (conf.signing_key_path, Path(f"{tmp_path}/audit.db"), conf.checkpoints_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    prod = conf.model_copy(update={"env": "production", "api_keys": tmp_path / "p" / "keys.json"})
    add_key(prod.api_keys, "scorer")
    with (
        pytest.raises(Exception, match="signing key not found"),
        TestClient(create_app(prod, loader=registry)),
    ):
        pass
    assert not prod.signing_key_path.exists()


def test_verify_warns_when_there_is_no_checkpoints_file(
    scored: list[dict], settings: Settings
) -> None:
    settings.checkpoints_path.unlink(missing_ok=True)
    code, out = run(settings, "verify")
    assert code == 0 and "warning: no checkpoints file" in out, out


def test_signing_off_stores_unsigned_records_and_is_refused_in_production(
    settings: Settings,
    keys: dict[str, str],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SCF_RISK_AUDIT_SIGNING=false (the bench's baseline): chained but unsigned records, no
    receipt, no checkpoint; `verify` with the public keys then says the records are not signed."""
    from serving.api.app import create_app

    off = settings.model_copy(update={"audit_signing": False})
    with TestClient(create_app(off, loader=registry)) as c:
        r = c.post("/v1/scores", json=FEATURES_BODY, headers={"X-API-Key": keys["scorer"]})
        assert r.status_code == 200, r.text
        assert r.json()["receipt"] is None
    assert not settings.checkpoints_path.exists()
    code, out = run(settings, "verify")
    assert code == 1 and "not signed" in out, out
    with pytest.raises(SettingsError, match="refused in production"):
        Settings(env="production", audit_signing=False)
    monkeypatch.setenv("SCF_RISK_AUDIT_SIGNING", "false")
    assert Settings(env="test").audit_signing is False
