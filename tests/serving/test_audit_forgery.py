"""Forgeries of the audit trail by someone who can write the database but holds no signing key.

Each is detected by `AuditStore.verify` with the public keys and the checkpoint file (outside the
database); `verify` under concurrent writes gives no false alarm; malformed payloads are problems,
never crashes.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from serving.audit.anchors import CheckpointLog
from serving.audit.canonical import canonical_json, record_hash
from serving.audit.signing import PublicKeys, Signer
from serving.audit.store import GENESIS_HASH, HEAD_ID, AuditStore, open_existing


def body(i: int) -> dict[str, object]:
    return {
        "sme_id": f"S{i % 3}",
        "as_of": "2024-01-31",
        "grade": "G03",
        "score": 600.0 + i / 7,
        "pd": 0.01 + i / 1000,
        "features": {"dso_90d": float(i)},
    }


class Signed:
    """A store signing with `signer`, checkpointing every `every` records into `path`."""

    def __init__(self, store: AuditStore, path: Path, every: int = 5) -> None:
        self.store = store
        self.signer = Signer.generate()
        self.keys = PublicKeys.of(self.signer)
        self.path = path
        store.signer = self.signer
        store.checkpoints = CheckpointLog(
            path, self.signer, store=store.chain_name, every_records=every, every_seconds=3600
        )

    def fill(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(start, start + n):
            out += self.store.append([body(i)])
        return out

    def verify(self) -> Any:
        return self.store.verify(public_keys=self.keys, checkpoints=self.path)


@pytest.fixture
def signed(store: AuditStore, tmp_path: Path) -> Signed:
    return Signed(store, tmp_path / "checkpoints.jsonl")


def _exec(store: AuditStore, *stmts: Any) -> None:
    with store.transaction() as conn:
        for stmt in stmts:
            conn.execute(stmt)


def _payloads(store: AuditStore) -> list[dict[str, Any]]:
    t = store.decisions
    rows = store.read(sa.select(t.c.payload).order_by(t.c.seq))
    return [json.loads(r[0]) for r in rows]


def _rechain(store: AuditStore, payloads: list[dict[str, Any]], *, signature: Any = None) -> None:
    """Rewrite the whole table the way the store writes it (hashes, links, head), without the
    key: signatures are left as they were, or set to `signature`."""
    t = store.decisions
    prev = GENESIS_HASH
    stmts: list[Any] = [sa.delete(t)]
    rows = []
    for i, p in enumerate(payloads, start=1):
        p = {k: v for k, v in p.items() if k != "receipt"}
        p.update(sequence=i, prev_hash=prev)
        p["record_hash"] = record_hash(p)
        row = {c: p[c] for c in ("decision_id", "sme_id", "as_of", "grade", "score", "pd")}
        row.update(
            created_at=p["created_at"],
            seq=i,
            payload=canonical_json(p),
            prev_hash=prev,
            record_hash=p["record_hash"],
            signature=signature(p) if callable(signature) else signature,
            key_id=None if signature is None else "attacker",
        )
        rows.append(row)
        prev = p["record_hash"]
    if rows:
        stmts.append(sa.insert(t).values(rows))
    stmts.append(
        sa.update(store.head)
        .where(store.head.c.id == HEAD_ID)
        .values(seq=len(rows), record_hash=prev)
    )
    _exec(store, *stmts)


def test_an_untouched_signed_chain_verifies_and_every_receipt_proves(signed: Signed) -> None:
    stored = signed.fill(12)
    report = signed.verify()
    assert report.ok and report.records == 12, report
    assert len(signed.path.read_text().splitlines()) == 2  # every 5 records
    for payload in stored:
        assert signed.store.check_receipt(payload["receipt"], signed.keys) == []


def test_edit_and_rechain_without_the_key_is_detected(signed: Signed) -> None:
    signed.fill(8)
    payloads = _payloads(signed.store)
    payloads[2]["grade"] = "G01"
    t = signed.store.decisions
    old = {
        int(r.seq): (r.signature, r.key_id)
        for r in signed.store.read(sa.select(t.c.seq, t.c.signature, t.c.key_id))
    }
    _rechain(signed.store, payloads)
    for seq, (sig, kid) in old.items():  # keep the old signatures in place
        _exec(signed.store, sa.update(t).where(t.c.seq == seq).values(signature=sig, key_id=kid))
    assert signed.store.verify().ok  # the hashes alone cannot tell
    report = signed.verify()
    assert not report.ok
    assert any("seq 3" in p and "does not verify" in p for p in report.problems), report
    assert any("chain was rewritten or rolled back" in p for p in report.problems), report


def test_a_chain_rewritten_with_another_key_is_detected(signed: Signed) -> None:
    signed.fill(6)
    attacker = Signer.generate()
    payloads = _payloads(signed.store)
    payloads[0]["pd"] = 0.9
    _rechain(signed.store, payloads, signature=lambda p: attacker.sign(p["record_hash"]))
    report = signed.verify()
    assert not report.ok
    assert any("not in the public keys" in p for p in report.problems), report


def test_truncate_and_reset_to_genesis_is_detected(signed: Signed) -> None:
    signed.fill(7)
    _rechain(signed.store, [])
    assert signed.store.verify().ok  # an empty chain is consistent with itself
    report = signed.verify()
    assert not report.ok
    assert any(
        "chain ends at seq 0" in p and "truncated or rolled back" in p for p in report.problems
    ), report
    # ... and a new chain started in its place, unsigned, is detected as well
    attacker_store = AuditStore(signed.store.url, prefix=signed.store.prefix)
    attacker_store.append([body(1), body(2)])
    attacker_store.dispose()
    report = signed.verify()
    assert any("seq 1" in p and "not signed" in p for p in report.problems), report
    assert any("names seq 5" in p and "rolled back" in p for p in report.problems), report


def test_rollback_to_an_older_state_is_detected(signed: Signed) -> None:
    signed.fill(5)
    t, store = signed.store.decisions, signed.store
    old_head = store.read(sa.select(store.head.c.seq, store.head.c.record_hash))[0]
    signed.fill(5, start=5)
    _exec(
        store,
        sa.delete(t).where(t.c.seq > 5),
        sa.update(store.head).values(seq=old_head[0], record_hash=old_head[1]),
    )
    assert store.verify().ok  # a consistent older state
    report = signed.verify()
    assert not report.ok
    assert any("names seq 10" in p and "rolled back" in p for p in report.problems), report


def test_rollback_to_an_older_copy_of_the_database_file_is_detected(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    signed = Signed(AuditStore(f"sqlite:///{db}"), tmp_path / "cp.jsonl")
    signed.fill(5)
    signed.store.dispose()
    shutil.copy(db, tmp_path / "old.db")
    signed.fill(5, start=5)
    signed.store.dispose()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.db", db)
    fresh = AuditStore(f"sqlite:///{db}")
    assert fresh.verify().ok and fresh.verify().records == 5
    report = fresh.verify(public_keys=signed.keys, checkpoints=signed.path)
    fresh.dispose()
    assert not report.ok
    assert any("names seq 10" in p and "rolled back" in p for p in report.problems), report


@pytest.mark.parametrize("kind", ["unsigned", "garbage", "another record's"])
def test_a_forged_append_is_detected(signed: Signed, kind: str) -> None:
    signed.fill(4)
    payloads = _payloads(signed.store)
    t = signed.store.decisions
    real = signed.store.read(sa.select(t.c.signature, t.c.key_id).where(t.c.seq == 4))[0]
    forged = {**payloads[-1], "decision_id": "00000000-0000-4000-8000-000000000000", "pd": 0.001}
    forged.update(sequence=5, prev_hash=payloads[-1]["record_hash"])
    forged["record_hash"] = record_hash(forged)
    signature = {
        "unsigned": None,
        "garbage": base64.b64encode(b"x" * 64).decode(),
        "another record's": real[0],
    }[kind]
    row = {c: forged[c] for c in ("decision_id", "sme_id", "as_of", "grade", "score", "pd")}
    row.update(
        created_at=forged["created_at"],
        seq=5,
        payload=canonical_json(forged),
        prev_hash=forged["prev_hash"],
        record_hash=forged["record_hash"],
        signature=signature,
        key_id=None if signature is None else real[1],
    )
    _exec(
        signed.store,
        sa.insert(t).values(row),
        sa.update(signed.store.head).values(seq=5, record_hash=forged["record_hash"]),
    )
    assert signed.store.verify().ok
    report = signed.verify()
    assert not report.ok
    expected = "not signed" if kind == "unsigned" else "does not verify"
    assert any("seq 5" in p and expected in p for p in report.problems), report


def test_a_forged_checkpoint_line_is_a_problem(signed: Signed) -> None:
    signed.fill(5)
    line = json.loads(signed.path.read_text().splitlines()[0])
    line.update(sequence=99)
    with signed.path.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    report = signed.verify()
    assert any("line 2" in p and "does not verify" in p for p in report.problems), report


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1,2]", "not a JSON object"),
        ("null", "not a JSON object"),
        ('{"a":1,"a":2}', "twice"),
        ('{"a":1e999}', "out of range"),
        ('{"a":123456789012345678901234567890}', "integer out of range"),
        ('{"a":-9223372036854775809}', "integer out of range"),
        ("{not json", "not JSON"),
    ],
)
def test_malformed_payloads_are_problems_not_crashes(
    signed: Signed, text: str, expected: str
) -> None:
    signed.fill(3)
    t = signed.store.decisions
    _exec(signed.store, sa.update(t).where(t.c.seq == 2).values(payload=text))
    report = signed.verify()
    assert not report.ok
    assert any("seq 2" in p and expected in p for p in report.problems), report


def test_a_payload_stored_in_a_non_canonical_form_is_a_problem(signed: Signed) -> None:
    signed.fill(3)
    payload = _payloads(signed.store)[1]
    t = signed.store.decisions
    spaced = json.dumps(payload, indent=1)  # the same JSON value, other text
    _exec(signed.store, sa.update(t).where(t.c.seq == 2).values(payload=spaced))
    report = signed.verify()
    assert any("seq 2" in p and "not the canonical form" in p for p in report.problems), report


def _as_the_tool_opens_it(store: AuditStore) -> AuditStore:
    """The store as `scf-risk audit verify` opens it: its own engine, a SQLite file by plain
    path and read-only, a PostgreSQL database by URL."""
    url = sa.make_url(store.url)
    target = url.database if url.get_backend_name() == "sqlite" else store.url
    assert target
    tool = open_existing(target, prefix=store.prefix)
    assert tool.chain_name == store.chain_name  # so it checks the writer's checkpoints
    return tool


APPENDS_PER_VERIFY = 10
"""Appends of two records the concurrent writer makes while each verification runs."""


def test_verify_under_concurrent_writes_gives_no_false_alarm(signed: Signed) -> None:
    """20 verifications per store, each opened as the `audit verify` tool opens it, while a
    writer appends and checkpoints: not one problem. Each verification lets the writer make
    `APPENDS_PER_VERIFY` appends as it starts, so that writes and reads overlap however fast
    the store appends, and every verification reads a bounded chain (an unbounded writer grew
    the chain faster than 20 verifications could read it)."""
    signed.store.checkpoints = CheckpointLog(
        signed.path,
        signed.signer,
        store=signed.store.chain_name,
        every_records=3,
        every_seconds=0.01,
    )
    signed.fill(3)
    stop = threading.Event()
    rounds = threading.Semaphore(0)
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while True:
                rounds.acquire()
                if stop.is_set():
                    return
                for _ in range(APPENDS_PER_VERIFY):
                    signed.store.append([body(i), body(i + 1)])
                    i += 2
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    reports = []
    try:
        for _ in range(20):
            rounds.release()  # the writer appends while this verification reads
            tool = _as_the_tool_opens_it(signed.store)
            try:
                reports.append(tool.verify(public_keys=signed.keys, checkpoints=signed.path))
            finally:
                tool.dispose()
    finally:
        stop.set()
        rounds.release()
        thread.join(30)
    assert not thread.is_alive()
    assert not errors, errors
    assert len(reports) == 20
    bad = [r for r in reports if not r.ok]
    assert not bad, bad[0]
    # the writer's later rounds start only after the first verification ended: the last sees them
    assert reports[-1].records > reports[0].records


def test_a_checkpoint_is_written_at_shutdown(store: AuditStore, tmp_path: Path) -> None:
    signed = Signed(store, tmp_path / "cp.jsonl", every=1000)
    signed.fill(3)
    assert not signed.path.exists()  # not due yet
    store.dispose()
    lines = [json.loads(x) for x in signed.path.read_text().splitlines()]
    assert [x["sequence"] for x in lines] == [3]
    assert oct(signed.path.stat().st_mode & 0o777) == "0o600"
    assert signed.verify().ok
