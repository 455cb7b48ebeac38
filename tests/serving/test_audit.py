"""The audit store: chained records, tamper detection, serialized appends, materialised features."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from serving.audit.canonical import canonical_json, legacy_record_hash, record_hash
from serving.audit.store import GENESIS_HASH, AuditStore
from serving.exceptions import AuditUnavailable, DecisionNotFound
from serving.online import OnlineFeatures, materialize
from tests.support.audit import body


def fill(store: AuditStore, n: int = 6) -> list[dict[str, object]]:
    return store.append([body(i, sme=f"S{i % 2}") for i in range(n)])


def test_append_chains_records_and_reads_them_back(store: AuditStore) -> None:
    stored = fill(store)
    assert [p["sequence"] for p in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[0]["prev_hash"] == GENESIS_HASH
    for prev, cur in itertools.pairwise(stored):
        assert cur["prev_hash"] == prev["record_hash"]
    for p in stored:
        assert p["record_hash"] == record_hash(p)
        assert store.get(str(p["decision_id"])) == p
    assert [p["sequence"] for p in store.find(sme_id="S1")] == [6, 4, 2]
    assert [p["sequence"] for p in store.find(grade="G03", limit=2)] == [6, 5]
    assert store.find(grade="G99") == []
    assert store.count() == 6
    report = store.verify()
    assert report.ok and report.records == 6, str(report)


def test_unknown_decision_is_not_found(store: AuditStore) -> None:
    fill(store, 1)
    with pytest.raises(DecisionNotFound):
        store.get("00000000-0000-4000-8000-000000000000")


def _exec(store: AuditStore, stmt: sa.Executable) -> None:
    with store._writer.begin() as conn:
        conn.execute(stmt)


def assert_broken(store: AuditStore, *words: str) -> None:
    """`verify` fails, and one of its problems names every one of ``words``."""
    report = store.verify()
    assert not report.ok
    assert any(all(w in p for w in words) for p in report.problems), report


def test_verify_detects_an_edited_payload(store: AuditStore) -> None:
    stored = fill(store)
    t = store.decisions
    victim = stored[2]
    edited = dict(victim)
    edited["score"] = 999.0
    _exec(store, sa.update(t).where(t.c.seq == 3).values(payload=canonical_json(edited)))
    assert_broken(store, "seq 3", "does not match its hash")


def test_verify_detects_an_edited_column(store: AuditStore) -> None:
    fill(store)
    t = store.decisions
    _exec(store, sa.update(t).where(t.c.seq == 4).values(grade="G01"))
    assert_broken(store, "seq 4", "column grade")


def test_verify_detects_a_rehashed_edit(store: AuditStore) -> None:
    """Recomputing the edited record's own hash does not help: the next record's link breaks."""
    stored = fill(store)
    t = store.decisions
    edited = dict(stored[1])
    edited["pd"] = 0.5
    edited["record_hash"] = record_hash(edited)
    _exec(
        store,
        sa.update(t)
        .where(t.c.seq == 2)
        .values(payload=canonical_json(edited), pd=0.5, record_hash=edited["record_hash"]),
    )
    assert_broken(store, "seq 3", "does not link")


def test_verify_detects_a_deleted_record(store: AuditStore) -> None:
    fill(store)
    t = store.decisions
    _exec(store, sa.delete(t).where(t.c.seq == 3))
    assert_broken(store, "seq 4", "deleted")


def test_verify_detects_deleted_last_records(store: AuditStore) -> None:
    fill(store)
    t = store.decisions
    _exec(store, sa.delete(t).where(t.c.seq >= 5))
    assert_broken(store, "head says the last record is seq 6")


def test_verify_detects_reordered_records(store: AuditStore) -> None:
    fill(store)
    t = store.decisions
    # swap the positions of records 2 and 5 (via a free sequence number)
    _exec(store, sa.update(t).where(t.c.seq == 2).values(seq=-1))
    _exec(store, sa.update(t).where(t.c.seq == 5).values(seq=2))
    _exec(store, sa.update(t).where(t.c.seq == -1).values(seq=5))
    assert_broken(store, "seq 2", "reordered")
    assert_broken(store, "seq 5", "reordered")


def test_concurrent_appends_from_threads_keep_one_chain(store: AuditStore) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(15):
                store.append([body(100 * k + i)])
        except BaseException as exc:  # collected and re-raised by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert store.count() == 60
    assert store.verify().ok


def _hold_first_group(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch, others: int
) -> tuple[list[int], threading.Event]:
    """Make the first group's writer, once it has taken its group (inside its transaction: the
    queue is taken when the write lock is held), wait until `others` more callers are queued;
    returns the size of every committed group, and an event set when the first group is taken
    (`_append_all` starts the other callers then)."""
    original = store._commit_group
    sizes: list[int] = []
    taken = threading.Event()

    def held(gather: Callable[[], list]) -> None:  # type: ignore[type-arg]
        def gather_then_wait() -> list:  # type: ignore[type-arg]
            group = gather()
            if not sizes:
                taken.set()
                deadline = time.monotonic() + 20
                while len(store._queue) < others and time.monotonic() < deadline:
                    time.sleep(0.005)
            sizes.append(len(group))
            return group

        original(gather_then_wait)

    monkeypatch.setattr(store, "_commit_group", held)
    return sizes, taken


def _append_all(
    store: AuditStore, n: int, first_taken: threading.Event
) -> tuple[list[list[dict[str, object]]], list[BaseException]]:
    """`n` callers appending two records each; the first alone, the others once its group is
    taken (they queue while its transaction is under way)."""
    results: list[list[dict[str, object]]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            results[k] = store.append([body(k), body(1000 + k)])
        except BaseException as exc:  # collected and checked by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    threads[0].start()
    assert first_taken.wait(20)
    for th in threads[1:]:
        th.start()
    for th in threads:
        th.join(60)
    return results, errors


def test_concurrent_appends_are_committed_as_one_group(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ensure_schema()
    sizes, taken = _hold_first_group(store, monkeypatch, others=11)
    results, errors = _append_all(store, 12, taken)
    assert not errors
    assert sizes == [1, 11]  # the 11 callers that queued meanwhile shared one transaction
    for k, payloads in enumerate(results):  # each caller got back its own two records
        assert [p["score"] for p in payloads] == [body(k)["score"], body(1000 + k)["score"]]
        assert payloads[1]["sequence"] == payloads[0]["sequence"] + 1
        for p in payloads:
            assert store.get(str(p["decision_id"])) == p
    assert store.count() == 24
    report = store.verify()
    assert report.ok, str(report)


def test_a_failed_group_fails_every_caller_in_it_and_stores_none(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(store, 2)
    sizes, taken = _hold_first_group(store, monkeypatch, others=5)
    real_row = AuditStore._row
    calls = 0

    def row(payload: dict[str, object], text: str) -> dict[str, object]:
        nonlocal calls
        calls += 1
        out = real_row(payload, text)
        if sizes == [1, 5] and calls > 4:  # inside the second (grouped) transaction: break it
            out["decision_id"] = None  # NOT NULL: the insert fails
        return out

    monkeypatch.setattr(AuditStore, "_row", staticmethod(row))
    results, errors = _append_all(store, 6, taken)
    assert sizes == [1, 5]
    assert len(errors) == 5 and all(isinstance(e, AuditUnavailable) for e in errors)
    assert sum(1 for r in results if r) == 1  # only the first caller's records were stored
    assert store.count() == 2 + 2
    report = store.verify()
    assert report.ok, str(report)


def _append_in_process(url: str, prefix: str, k: int, n: int) -> None:
    s = AuditStore(url, prefix=prefix)
    for i in range(n):
        s.append([body(1000 * k + i)])
    s.dispose()


def test_concurrent_appends_from_processes_keep_one_chain(store: AuditStore) -> None:
    store.ensure_schema()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_append_in_process, args=(store.url, store.prefix, k, 20))
        for k in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert store.count() == 60
    report = store.verify()
    assert report.ok, str(report)


def test_sqlite_store_is_in_wal_mode(tmp_path: Path) -> None:
    s = AuditStore(f"sqlite:///{tmp_path}/a.db")
    s.append([body(1)])
    with s._writer.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    s.dispose()


def test_read_only_database_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = AuditStore(f"sqlite:///{path}")
    s.append([body(1)])
    s.dispose()
    ro = AuditStore(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert not ro.probe_writable()
    with pytest.raises(AuditUnavailable, match="not writable"):
        ro.append([body(2)])
    assert ro.count() == 1  # still readable
    ro.dispose()


def test_a_driver_error_in_an_append_is_unavailable_and_stores_nothing(store: AuditStore) -> None:
    """The append's statements run on the driver's cursor (`DriverCursor`): its errors (a
    duplicate sequence number, a missing head row) are AuditUnavailable like any database
    error, nothing of the group is stored, and the store writes again once the cause is gone."""
    store.append([body(1), body(2)])
    with store.transaction() as conn:  # the head moved back: the next record collides
        conn.execute(sa.update(store.head).values(seq=1))
    with pytest.raises(AuditUnavailable, match="not writable"):
        store.append([body(3)])
    assert store.count() == 2
    with store.transaction() as conn:
        conn.execute(sa.delete(store.head))
    with pytest.raises(AuditUnavailable, match="not writable"):
        store.append([body(4)])
    assert store.count() == 2
    last = store.record_at(2)
    with store.transaction() as conn:
        conn.execute(sa.insert(store.head).values(id=1, seq=2, record_hash=last.record_hash))
    (stored,) = store.append([body(5)])
    assert stored["sequence"] == 3 and store.verify().ok


def test_append_gathered_takes_what_queued_while_it_waited_for_the_write_lock(
    tmp_path: Path,
) -> None:
    """`append_gathered` asks for its bodies once it holds the write lock: what queued while
    another writer held the database is in its one transaction, not left for the next."""
    import sqlite3

    path = tmp_path / "a.db"
    store = AuditStore(f"sqlite:///{path}")
    store.append([body(0)])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the database
    queued = [body(1)]
    calls: list[int] = []

    def gather() -> list[dict[str, object]]:
        calls.append(len(queued))
        return list(queued)

    done: list[list[dict[str, object]]] = []
    writer = threading.Thread(target=lambda: done.append(store.append_gathered(gather)))
    writer.start()
    time.sleep(0.3)
    assert not done and not calls  # waiting for the lock, nothing taken yet
    queued += [body(2), body(3)]  # arrive meanwhile
    other.execute("COMMIT")
    writer.join(10)
    assert calls == [3] and [p["sequence"] for p in done[0]] == [2, 3, 4]
    assert store.count() == 4 and store.verify().ok
    other.close()
    store.dispose()


def _group_sizes(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of callers in each group commit (transaction) of `store` from now on."""
    original = store._commit_group
    sizes: list[int] = []

    def counted(gather: Callable[[], list]) -> None:  # type: ignore[type-arg]
        def gather_and_count() -> list:  # type: ignore[type-arg]
            group = gather()
            sizes.append(len(group))
            return group

        original(gather_and_count)

    monkeypatch.setattr(store, "_commit_group", counted)
    return sizes


def _wait_for_queue(store: AuditStore, n: int) -> int:
    """Wait (at most 10 s) until `n` callers are queued for `store`'s group commit."""
    deadline = time.monotonic() + 10
    while len(store._queue) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return len(store._queue)


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "fails"])
def test_append_gathered_takes_the_appends_queued_meanwhile_into_its_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    """`append_gathered` (the event loop's commits) and `append` (batch requests) are one group
    commit: the appends queued while `append_gathered` waited for the write lock are in its
    transaction, each caller gets its own records; if the transaction fails, every one of them
    gets the error and nothing of it is stored."""
    import sqlite3

    path = tmp_path / "a.db"
    store = AuditStore(f"sqlite:///{path}")
    store.append([body(0)])
    sizes = _group_sizes(store, monkeypatch)
    if fails:
        real_row = AuditStore._row

        def row(payload: dict[str, object], text: str) -> dict[str, object]:
            out = real_row(payload, text)
            if payload["sme_id"] == "late2":
                out["decision_id"] = None  # NOT NULL: the insert of the whole group fails
            return out

        monkeypatch.setattr(AuditStore, "_row", staticmethod(row))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the database
    results: dict[str, list[dict[str, object]]] = {}
    errors: dict[str, BaseException] = {}

    def call(name: str, append: Callable[[], list[dict[str, object]]]) -> None:
        try:
            results[name] = append()
        except BaseException as exc:  # collected and checked by the test thread
            errors[name] = exc

    gathered = threading.Thread(
        target=call, args=("gathered", lambda: store.append_gathered(lambda: [body(1)]))
    )
    gathered.start()
    time.sleep(0.2)  # it holds this process's write turn, waiting for the database's lock
    late = [
        threading.Thread(
            target=call, args=(f"late{k}", lambda k=k: store.append([body(10 + k, sme=f"late{k}")]))
        )
        for k in range(3)
    ]
    for th in late:
        th.start()
    assert _wait_for_queue(store, 3) == 3
    other.execute("COMMIT")
    other.close()
    for th in [gathered, *late]:
        th.join(30)
    assert sizes == [4]  # one transaction for the four callers
    if fails:
        assert not results and sorted(errors) == ["gathered", "late0", "late1", "late2"]
        assert all(isinstance(e, AuditUnavailable) for e in errors.values())
        assert store.count() == 1
    else:
        assert not errors
        assert [p["sme_id"] for p in results["gathered"]] == ["S1"]
        for k in range(3):
            (stored,) = results[f"late{k}"]
            assert (
                stored["sme_id"] == f"late{k}" and store.get(str(stored["decision_id"])) == stored
            )
        assert store.count() == 5
    assert store.verify().ok
    store.dispose()


def test_a_gather_that_raises_is_called_once_and_leaves_the_queue_to_the_next_writer(
    tmp_path: Path,
) -> None:
    """A commit whose `gather` raises is not asked again (a second call would take, and fail,
    what queued meanwhile); the appends queued while it waited are committed by the next writer,
    not failed for its error."""
    import sqlite3

    path = tmp_path / "a.db"
    store = AuditStore(f"sqlite:///{path}")
    store.append([body(0)])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    calls: list[int] = []

    def gather() -> list[dict[str, object]]:
        calls.append(1)
        raise KeyError("a body that cannot be made")

    errors: list[BaseException] = []
    stored: list[list[dict[str, object]]] = []

    def gathered() -> None:
        try:
            store.append_gathered(gather)
        except KeyError as exc:
            errors.append(exc)

    first = threading.Thread(target=gathered)
    first.start()
    time.sleep(0.2)
    late = threading.Thread(target=lambda: stored.append(store.append([body(2)])))
    late.start()
    assert _wait_for_queue(store, 1) == 1
    other.execute("COMMIT")
    other.close()
    first.join(30)
    late.join(30)
    assert calls == [1] and len(errors) == 1
    assert [p["sequence"] for p in stored[0]] == [2]
    assert store.count() == 2 and store.verify().ok
    store.dispose()


@pytest.mark.parametrize("change", ["missing", "unknown"])
def test_an_append_row_without_a_column_or_with_an_unknown_one_stores_nothing(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The insert runs on the driver's cursor (`DriverStatement`): a row with a column missing
    is refused (never a placeholder written in its place), and so is a row with a column the
    table does not have (never dropped silently): AuditUnavailable naming it, nothing stored."""
    store.append([body(1)])
    real_row = AuditStore._row

    def row(payload: dict[str, object], text: str) -> dict[str, object]:
        out = real_row(payload, text)
        if change == "missing":
            del out["signature"]
        else:
            out["reviewer"] = "someone"
        return out

    monkeypatch.setattr(AuditStore, "_row", staticmethod(row))
    named = "no value for signature" if change == "missing" else "no parameter: reviewer"
    with pytest.raises(AuditUnavailable, match=named):
        store.append([body(2)])
    with pytest.raises(AuditUnavailable, match=named):
        store.append_gathered(lambda: [body(3)])
    monkeypatch.undo()
    assert store.count() == 1 and store.verify().ok
    (stored,) = store.append([body(4)])
    assert stored["sequence"] == 2 and store.verify().ok


def test_driver_statements_take_exactly_their_parameters(store: AuditStore) -> None:
    """Each append statement takes the values of its own parameters, no more, no fewer; its
    literals (the head row's id) are its own, and nothing required has a placeholder value."""
    store.ensure_schema()
    head, insert, move = store._append_statements()
    columns = {c.key for c in store.decisions.columns}
    assert insert.required == columns and not insert.defaults
    assert head.required == frozenset() and list(head.defaults.values()) == [1]
    assert move.required == {"new_seq", "new_hash"} and list(move.defaults.values()) == [1]
    full = dict.fromkeys(columns)
    assert len(insert.parameters(full)) == len(columns)
    for values, named in [
        ({k: v for k, v in full.items() if k != "seq"}, "no value for seq"),
        ({**full, "extra": 1}, "no parameter: extra"),
        ({"new_seq": 1}, "no value for new_hash"),
    ]:
        stmt = move if "new_seq" in values else insert
        with pytest.raises(sa.exc.InvalidRequestError, match=named):
            stmt.parameters(values)


def test_append_gathered_on_an_unreachable_store_is_unavailable(
    tmp_path: Path,
) -> None:
    (tmp_path / "nowhere").write_text("a file where a folder should be")
    store = AuditStore(f"sqlite:///{tmp_path}/nowhere/x/a.db")
    with pytest.raises(AuditUnavailable):
        store.append_gathered(lambda: [body(1)])


def test_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "nowhere").write_text("a file where a folder should be")
    s = AuditStore(f"sqlite:///{tmp_path}/nowhere/x/a.db")
    with pytest.raises(AuditUnavailable):
        s.append([body(1)])
    assert not s.probe_writable()


def test_materialize_keeps_each_smes_latest_row(store: AuditStore) -> None:
    panel = pd.DataFrame(
        {
            "sme_id": ["A", "A", "B"],
            "as_of": pd.to_datetime(["2024-01-31", "2024-02-29", "2024-01-31"]),
            "dso_90d": [1.0, np.nan, 3.0],
            "industry": ["food", "metals", None],
            "default_12m": [0.0, np.nan, 1.0],
        }
    )
    assert materialize(store, panel) == 2
    as_of, feats = OnlineFeatures(store).latest("A") or (None, None)
    assert str(as_of) == "2024-02-29"
    assert feats == {"dso_90d": None, "industry": "metals"}
    assert OnlineFeatures(store).latest("C") is None
    older = panel.assign(as_of=pd.to_datetime("2023-12-31"), dso_90d=7.0)
    assert materialize(store, older) == 0  # never replaced by an older as-of
    newer = panel.iloc[[2]].assign(as_of=pd.to_datetime("2024-03-31"), dso_90d=9.0)
    assert materialize(store.url if not store.prefix else store, newer) == 1
    as_of, feats = OnlineFeatures(store).latest("B") or (None, None)
    assert str(as_of) == "2024-03-31" and feats is not None and feats["dso_90d"] == 9.0


def test_canonical_json_is_stable_and_stores_non_finite_as_missing() -> None:
    assert canonical_json({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'
    assert canonical_json({"b": {"z": 1, "y": 2}, "a": "é"}) == '{"a":"é","b":{"y":2,"z":1}}'
    nonfinite = {"x": float("nan"), "y": float("inf"), "z": np.float64("-inf")}
    assert canonical_json(nonfinite) == '{"x":null,"y":null,"z":null}'
    assert canonical_json({"x": np.float64(0.25), 1: "k"}) == '{"1":"k","x":0.25}'
    p = json.loads(canonical_json({"x": 0.1 + 0.2}))
    assert p["x"] == 0.1 + 0.2  # floats round-trip exactly


def test_chains_written_with_the_legacy_canonical_form_still_verify(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records hashed by an earlier release (json.dumps) verify; an edit to one is still caught."""
    import serving.audit.store as audit

    def legacy_chained(payload: dict[str, object]) -> tuple[str, str]:
        digest = legacy_record_hash(payload)  # what an earlier release hashed
        return digest, canonical_json({**payload, "record_hash": digest})

    monkeypatch.setattr(audit, "chained_text", legacy_chained)
    old = store.append([{**body(1), "pd": 1.5e-05}, body(2)])
    monkeypatch.undo()
    assert record_hash(old[0]) != old[0]["record_hash"]  # the two forms differ on this float
    fill(store, 2)
    report = store.verify()
    assert report.ok and report.records == 4, str(report)
    payload = dict(old[0], score=1.0)
    _exec(
        store,
        sa.update(store.decisions)
        .where(store.decisions.c.seq == 1)
        .values(payload=json.dumps(payload)),
    )
    report = store.verify()
    assert not report.ok and "does not match its hash" in str(report)
