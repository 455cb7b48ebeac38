"""The audit store: every decision, hash-chained, committed before its response is sent.

SQLAlchemy 2 Core over SQLite (WAL, ``synchronous=FULL``) by default or PostgreSQL by URL.

Each record is a canonical JSON payload (sorted keys, no NaN) holding the whole decision plus its
``sequence`` number and the previous record's hash; ``record_hash = sha256(canonical JSON of the
payload without record_hash)``. A one-row head table holds the last sequence number and hash:
appends lock it (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL), so the
chain stays linear under concurrent threads and several worker processes, and deleting the last
records is detected as well. `verify` re-derives everything and reports edited, deleted and
reordered records.

The same database holds ``features_latest`` (the online feature table, `serving.online`) and a small
``serving_state`` table the workers use to agree on the served model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from serving.audit.anchors import Checkpoint, CheckpointLog, check_signatures, read_checkpoints
from serving.audit.canonical import (
    canonical_bytes,
    canonical_json,
    legacy_record_hash,
    record_hash,
)
from serving.audit.database import (
    DriverCursor,
    DriverStatement,
    WriterTurn,
    make_engine,
    url_lock_timeout,
)
from serving.audit.signing import PublicKeys, Signer
from serving.exceptions import AuditCorrupt, AuditUnavailable, DecisionNotFound

log = logging.getLogger("scf_risk.serving")

SIGNATURE_COLUMNS = {
    "signature": sa.DDL("ALTER TABLE %(table)s ADD COLUMN signature VARCHAR(128)"),
    "key_id": sa.DDL("ALTER TABLE %(table)s ADD COLUMN key_id VARCHAR(32)"),
}
"""The columns a store made before records were signed gets (the table name is quoted by
SQLAlchemy, nothing else varies)."""
GENESIS_HASH = "0" * 64
HEAD_ID = 1
MAX_PROBLEMS = 50
PROBE_SECONDS = 2.0
PROBE_KEY = "readiness_probe"
PROBE_BYTES = 64 * 1024
"""What the readiness probe writes and commits: several times what a single decision takes in
the database (its record, about 8 KB of JSON, index entries and the head), so a disk with room
for a small write but not for a decision is not ready. Random text: no store compresses it."""
MODEL_CHANGE = "model_change"
MODEL_CHANGE_SME = ""  # model_change records: no SME (a decision's sme_id is never empty)
# Columns copied out of the payload for queries; verify checks they still equal the payload.
INDEXED = ("decision_id", "sme_id", "as_of", "grade", "score", "pd", "created_at")


@dataclass(eq=False)
class _Pending:
    """One caller's decisions waiting in the group-commit queue, and how they ended."""

    bodies: list[Mapping[str, Any]]
    payloads: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def settle(
        self, *, payloads: list[dict[str, Any]] | None = None, error: BaseException | None = None
    ) -> None:
        self.payloads = payloads or []
        self.error = error
        self.done.set()


@dataclass(frozen=True)
class VerifyReport:
    """What `AuditStore.verify` found."""

    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)
    total_problems: int = 0
    model_changes: int = 0

    @property
    def decisions(self) -> int:
        return self.records - self.model_changes

    def __str__(self) -> str:
        if self.ok:
            changes = f" ({self.model_changes} model change(s))" if self.model_changes else ""
            return f"audit chain intact: {self.records} record(s){changes}"
        more = self.total_problems - len(self.problems)
        tail = [f"... and {more} more"] if more > 0 else []
        lines = [
            f"audit chain BROKEN: {self.total_problems} problem(s) in {self.records} record(s)"
        ]
        return "\n".join(lines + [f"  {p}" for p in self.problems] + tail)


def _tables(
    prefix: str,
) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table, sa.Table, sa.Table]:
    md = sa.MetaData()
    decisions = sa.Table(
        f"{prefix}decisions",
        md,
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("decision_id", sa.String(36), nullable=False, unique=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("sme_id", sa.String(128), nullable=False),
        sa.Column("as_of", sa.String(10), nullable=False),
        sa.Column("grade", sa.String(16), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("pd", sa.Float, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False),
        # Ed25519 signature of record_hash by the service's key (serving.audit.signing); not
        # part of the hashed payload. Null in stores written before signing.
        sa.Column("signature", sa.String(128), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Index(f"ix_{prefix}decisions_sme", "sme_id", "seq"),
        sa.Index(f"ix_{prefix}decisions_grade", "grade", "seq"),
    )
    head = sa.Table(
        f"{prefix}audit_head",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False),
    )
    latest = sa.Table(
        f"{prefix}features_latest",
        md,
        sa.Column("sme_id", sa.String(128), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("materialized_at", sa.String(40), nullable=False),
    )
    state = sa.Table(
        f"{prefix}serving_state",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
    )
    sessions = sa.Table(
        f"{prefix}page_sessions",
        md,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    return md, decisions, head, latest, state, sessions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class AuditStore:
    """The decisions of the service, chained by hash, plus the materialised latest features.

    Nothing is opened by the constructor; the schema is created on first use, and every database
    failure is raised as `AuditUnavailable` (the API answers 503: no unaudited decision).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        lock_timeout: float | None = None,
        signer: Signer | None = None,
        checkpoints: CheckpointLog | None = None,
    ) -> None:
        if prefix and not prefix.replace("_", "").isalnum():
            raise ValueError(f"prefix: letters, digits and _ only, got {prefix!r}")
        self.url = url
        self.prefix = prefix
        self._md, self.decisions, self.head, self.latest, self.state, self.sessions = _tables(
            prefix
        )
        self._sqlite = sa.make_url(url).get_backend_name() == "sqlite"
        self.lock_timeout = url_lock_timeout(url) if lock_timeout is None else lock_timeout
        # SQLite: this process's writers queue here, so SQLite's busy handler (sleep and retry,
        # no queue) only arbitrates between processes.
        self._local_writer = threading.Lock() if self._sqlite else None
        self._writer_turn = WriterTurn.for_url(url)
        # `probe_shared`: one probe at a time; the monotonic time of the last success.
        self._probe_turn = threading.Lock()
        self._probe_ok_at: float | None = None
        # The statements of every append, built once (SQLAlchemy then only looks up its cache).
        self._head_for_update = (
            sa.select(self.head.c.seq, self.head.c.record_hash)
            .where(self.head.c.id == HEAD_ID)
            .with_for_update()
        )
        self._insert_decisions = sa.insert(self.decisions)
        self._move_head = (
            sa.update(self.head)
            .where(self.head.c.id == HEAD_ID)
            .values(seq=sa.bindparam("new_seq"), record_hash=sa.bindparam("new_hash"))
        )
        # Group commit of decisions (`append`): the queue, and the turn to commit it.
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._turn = threading.Lock()
        self._writer = make_engine(url, immediate=True, lock_timeout=lock_timeout)
        self._driver_statements: tuple[DriverStatement, DriverStatement, DriverStatement] | None = (
            None
        )
        self._reader = make_engine(url, lock_timeout=lock_timeout) if self._sqlite else self._writer
        self._schema_ready = False
        # SQLite: the pooled connection the group commits keep between groups (`_appending`).
        self._append_conn: Any = None
        self.signer = signer
        self.checkpoints = checkpoints
        self.display_name: str | None = None

    @property
    def chain_name(self) -> str:
        """What checkpoints call this chain: the database (a SQLite file's absolute path, or the
        server URL without password or options) and its decisions table. A copy of the file
        elsewhere is another chain; an older copy put back in its place is the same one."""
        url = sa.make_url(self.url)
        if self._sqlite:
            database = url.database or ""
            database = database.removeprefix("file:")
            where = f"sqlite:{Path(database).resolve() if database != ':memory:' else database}"
        else:
            where = url.set(password=None, query={}).render_as_string(hide_password=True)
        return f"{where}#{self.decisions.name}"

    # -- lifecycle -------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the tables and the chain's head row if they do not exist (idempotent)."""
        if self._schema_ready:
            return
        database = sa.make_url(self.url).database
        if self._sqlite and database and database != ":memory:" and "mode=ro" not in self.url:
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                # Created readable by its owner only (SQLite gives -wal and -shm the same mode).
                os.close(os.open(database, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                raise AuditUnavailable(f"audit store {self.safe_url}: {exc}") from exc
        try:
            self._md.create_all(self._writer, checkfirst=True)
        except SQLAlchemyError as exc:
            # Another process may have created them concurrently: check again once (the database
            # may as well be unreachable: that is AuditUnavailable too, never a raw driver error).
            try:
                created = sa.inspect(self._writer).has_table(self.head.name)
            except SQLAlchemyError:
                created = False
            if not created:
                raise AuditUnavailable(f"audit store {self.safe_url}: {reason(exc)}") from exc
        self._add_signature_columns()
        try:
            with self.transaction() as conn:
                exists = conn.execute(
                    sa.select(self.head.c.id).where(self.head.c.id == HEAD_ID)
                ).first()
                if exists is None:
                    conn.execute(
                        sa.insert(self.head).values(id=HEAD_ID, seq=0, record_hash=GENESIS_HASH)
                    )
        except IntegrityError:
            pass  # another worker inserted the head row first
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit store {self.safe_url}: {reason(exc)}") from exc
        self._schema_ready = True

    def _add_signature_columns(self) -> None:
        """Stores made before records were signed get the two (nullable) signature columns."""
        try:
            columns = {c["name"] for c in sa.inspect(self._writer).get_columns(self.decisions.name)}
            for name, ddl in SIGNATURE_COLUMNS.items():
                if name not in columns:
                    with self.transaction() as conn:
                        conn.execute(ddl.against(self.decisions))
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit store {self.safe_url}: {reason(exc)}") from exc

    def dispose(self) -> None:
        """Write a last checkpoint, close every pooled connection (and the writers' lock file)."""
        if self.checkpoints is not None:
            try:
                self.checkpoints.flush()
            except AuditUnavailable as exc:
                log.error("no checkpoint at shutdown: %s", exc)
        self._close_append_conn()  # back to the pool, which the engine's dispose closes
        self._writer.dispose()
        if self._writer_turn is not None:
            self._writer_turn.close()
        if self._reader is not self._writer:
            self._reader.dispose()

    def drop_all(self) -> None:
        """Drop this store's tables (tests with a per-run prefix)."""
        self._close_append_conn()
        self._md.drop_all(self._writer, checkfirst=True)
        self._schema_ready = False

    def _close_append_conn(self) -> None:
        """Close the connection the group commits keep (`_appending`) once no append of this
        process holds it (its writers' lock, at most the lock timeout; closed all the same
        after that, with a log line: an append still on it then fails and stores nothing)."""
        local = self._local_writer
        held = local is None or local.acquire(timeout=self.lock_timeout)
        if not held:
            log.error("closing the audit append connection while an append may still use it")
        try:
            if self._append_conn is not None:
                conn, self._append_conn = self._append_conn, None
                conn.close()
        finally:
            if held and local is not None:
                local.release()

    @contextmanager
    def transaction(
        self, *, commit: bool = True, timeout: float | None = None
    ) -> Iterator[sa.Connection]:
        """A write transaction (committed, or rolled back when `commit` is false).

        On SQLite this process's writers first queue for their turn (at most the lock timeout).
        After a database error the connection is discarded, never pooled again: a session that
        failed a write may be read-only (PostgreSQL fixes ``default_transaction_read_only`` when
        a session starts) or half broken, and reusing it would keep refusing decisions after the
        database came back."""
        limit = self.lock_timeout if timeout is None else timeout
        start = time.monotonic()
        with self._write_turn(limit), self._writer.connect() as conn:
            try:
                if timeout is not None:
                    self._bound_waits(conn, max(0.0, limit - (time.monotonic() - start)))
                trans = conn.begin()
                try:
                    yield conn
                except BaseException:
                    trans.rollback()
                    raise
                if commit:
                    trans.commit()
                else:
                    trans.rollback()
            except SQLAlchemyError:
                conn.invalidate()
                raise
            finally:
                if timeout is not None and not conn.invalidated:
                    self._bound_waits(conn, None)

    @contextmanager
    def _write_turn(self, limit: float) -> Iterator[None]:
        """This process's write turn on SQLite (its writers' lock, then the writers' file lock
        across processes), waited for at most `limit` seconds in all; AuditUnavailable after."""
        local, turn = self._local_writer, self._writer_turn
        start = time.monotonic()
        if local is not None and not local.acquire(timeout=limit):
            raise AuditUnavailable(f"audit store {self.safe_url}: no write turn within {limit:g} s")
        try:
            left = max(0.0, limit - (time.monotonic() - start))
            if turn is not None and not turn.acquire(left):
                raise AuditUnavailable(
                    f"audit store {self.safe_url}: another process kept the write turn for "
                    f"{limit:g} s"
                )
            try:
                yield
            finally:
                if turn is not None:
                    turn.release()
        finally:
            if local is not None:
                local.release()

    @contextmanager
    def _appending(self) -> Iterator[DriverCursor]:
        """The write transaction of a group commit (`_commit_group`), on the driver's cursor.

        PostgreSQL: `transaction`'s. SQLite: the same write turn, ``BEGIN IMMEDIATE`` (the
        engine's own begin) and commit, on one pooled connection the appends keep between
        groups (appends take turns: `_turn`), run on the driver itself: a pool check-out and
        check-in and SQLAlchemy's begin and commit machinery per group cost more CPU than the
        rest of a one-record commit but its fsync. Any error (a database error, as in
        `transaction`, or any other) rolls back where it can and discards the connection: the
        next group opens another; driver errors are raised as SQLAlchemy's."""
        if not self._sqlite:
            with self.transaction() as conn, DriverCursor(conn) as cursor:
                yield cursor
            return
        with self._write_turn(self.lock_timeout):
            if self._append_conn is None:
                self._append_conn = self._writer.raw_connection()
            raw = self._append_conn
            dialect = self._writer.dialect
            try:
                with DriverCursor.of_driver(raw.dbapi_connection, dialect) as cursor:
                    cursor.run("BEGIN IMMEDIATE")
                    try:
                        yield cursor
                    except BaseException:
                        cursor.end("ROLLBACK", raw.dbapi_connection.rollback)
                        raise
                    cursor.end("COMMIT", raw.dbapi_connection.commit)
            except BaseException:  # a database error, or anything else between BEGIN and
                # COMMIT: never reuse a connection whose transaction may still be open
                self._append_conn = None
                raw.invalidate()
                raise

    def _bound_waits(self, conn: sa.Connection, seconds: float | None) -> None:
        """Make this connection wait at most `seconds` for a lock (None: back to the default)."""
        if self._sqlite:
            ms = int(1000 * (self.lock_timeout if seconds is None else seconds))
            driver: Any = conn.connection.driver_connection
            driver.execute(f"PRAGMA busy_timeout = {int(ms)}")  # an int: nothing to inject
        elif seconds is not None:
            limit = {"ms": f"{max(1, int(1000 * seconds))}ms"}
            conn.execute(sa.text("SELECT set_config('lock_timeout', :ms, false)"), limit)
            conn.execute(sa.text("SELECT set_config('statement_timeout', :ms, false)"), limit)
            conn.commit()
        else:
            conn.exec_driver_sql("RESET lock_timeout")
            conn.exec_driver_sql("RESET statement_timeout")
            conn.commit()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (for logs and messages), or the name the store was
        opened by (`open_existing`)."""
        if self.display_name:
            return self.display_name
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def probe_writable(self, timeout: float = PROBE_SECONDS) -> bool:
        """True if PROBE_BYTES (more than a decision) can be written and committed (durably)
        within `timeout` seconds: a held lock, a full disk (even one with room left for a small
        write) or a read-only database answer False in about that time, not after the decisions'
        lock timeout."""
        value = secrets.token_hex(PROBE_BYTES // 2)
        try:
            self.ensure_schema()
            with self.transaction(timeout=timeout) as conn:
                done = conn.execute(
                    sa.update(self.state)
                    .where(self.state.c.name == PROBE_KEY)
                    .values(value=value, updated_at=_now())
                ).rowcount
                if not done:
                    conn.execute(
                        sa.insert(self.state).values(name=PROBE_KEY, value=value, updated_at=_now())
                    )
        except (AuditUnavailable, SQLAlchemyError) as exc:
            log.error("audit store not writable (readiness probe): %s", exc)
            return False
        return True

    def probe_shared(self, reuse_seconds: float) -> bool:
        """`probe_writable`, shared between callers: a success less than `reuse_seconds` old
        answers for a new probe, and a caller that arrives while a probe runs waits for that
        probe's answer. A flood of readiness calls (the endpoint needs no key) so costs at most
        one probe write per `reuse_seconds`, and callers queued behind a locked database wait
        for one probe's timeout, not one each. A failure is never reused: the next caller
        probes again. `reuse_seconds` 0: every call probes."""
        if not self._probe_turn.acquire(blocking=False):
            with self._probe_turn:  # another caller's probe is running: take its answer
                return self._probe_ok_at is not None
        try:
            last = self._probe_ok_at
            if last is not None and time.monotonic() - last < reuse_seconds:
                return True
            ok = self.probe_writable()
            self._probe_ok_at = time.monotonic() if ok else None
            return ok
        finally:
            self._probe_turn.release()

    # -- decisions ---------------------------------------------------------------------------
    def append(self, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Store decisions as the next records of the chain, durably, before returning them.

        Each body is a JSON-able mapping with at least sme_id, as_of, grade, score, pd. Returns
        the stored payloads (with decision_id, sequence, created_at, prev_hash, record_hash).

        Group commit: concurrent callers of this process queue their bodies; whichever gets the
        writer's turn (this method's callers and `append_gathered`'s) commits everything queued
        by the time it holds the database's write lock (the head row) in one transaction (one
        fsync for the group) and hands each caller its own payloads. Nobody returns before the
        transaction holding its records is committed; if it fails, every caller in the group
        gets `AuditUnavailable` and nothing of the group is stored.
        """
        if not bodies:
            return []
        self.ensure_schema()
        entry = _Pending(list(bodies))
        with self._queue_lock:
            self._queue.append(entry)
        if self._turn.acquire(timeout=self.lock_timeout):
            try:
                if not entry.done.is_set():
                    self._commit_group(self._take_queue)
            finally:
                self._turn.release()
        else:
            with self._queue_lock:
                queued = entry in self._queue
                if queued:
                    self._queue.remove(entry)
            if queued:
                raise AuditUnavailable(
                    f"audit store {self.safe_url}: no write turn within {self.lock_timeout:g} s"
                )
            entry.done.wait()  # a writer has taken it: its transaction ends one way or the other
        if entry.error is not None:
            raise entry.error
        return entry.payloads

    def append_gathered(
        self, gather: Callable[[], Sequence[Mapping[str, Any]]]
    ) -> list[dict[str, Any]]:
        """`append` of the bodies `gather()` returns, called once this store holds the write
        lock (the head row read under it): what a caller queues while the store waits for
        another process's commit is in this transaction, not the next one. The same group
        commit as `append`: what `append`'s callers queued by then is in this transaction too,
        and gets its error if it fails. Durable before it returns, all stored or none (`gather`
        is called once: then too when the transaction failed before it, so that its caller
        learns what the error was for)."""
        self.ensure_schema()
        entry = _Pending([])

        def take() -> list[_Pending]:
            # The caller's bodies first: if they cannot be made, the queue is left to the next
            # writer, not failed for another caller's error.
            entry.bodies = list(gather())
            return [entry, *self._take_queue()]

        if not self._turn.acquire(timeout=self.lock_timeout):
            raise AuditUnavailable(
                f"audit store {self.safe_url}: no write turn within {self.lock_timeout:g} s"
            )
        try:
            self._commit_group(take)
        finally:
            self._turn.release()
        if entry.error is not None:
            raise entry.error
        return entry.payloads

    def _take_queue(self) -> list[_Pending]:
        with self._queue_lock:
            group, self._queue = self._queue, []
        return group

    def _commit_group(self, gather: Callable[[], list[_Pending]]) -> None:
        """Chain and commit, in one transaction, the entries `gather()` returns once the write
        lock is held (the head row read); settle each entry. When the transaction fails before
        `gather` was called, it is called then, and its entries get the error; `gather` is
        never called twice (one that raised has no entries to settle: it answers for itself)."""
        head, insert, move = self._append_statements()
        group: list[_Pending] | None = None
        gathered = False
        try:
            with self._appending() as cursor:
                row = cursor.one(head, {})
                seq, prev = int(row[0]), str(row[1])
                gathered = True
                group = gather()
                rows: list[dict[str, Any]] = []
                chained: list[list[dict[str, Any]]] = []
                for entry in group:
                    payloads: list[dict[str, Any]] = []
                    for body in entry.bodies:
                        seq += 1
                        payload = dict(body)
                        payload.update(
                            decision_id=str(uuid.uuid4()),
                            sequence=seq,
                            created_at=_now(),
                            prev_hash=prev,
                        )
                        payload["record_hash"], text = chained_text(payload)
                        record = self._row(payload, text)
                        if self.signer is not None:
                            record["signature"] = self.signer.sign(payload["record_hash"])
                            record["key_id"] = self.signer.key_id
                            # Not stored in the payload (it signs it): the caller's proof.
                            payload["receipt"] = {
                                "sequence": seq,
                                "record_hash": payload["record_hash"],
                                "signature": record["signature"],
                                "key_id": record["key_id"],
                            }
                        rows.append(record)
                        payloads.append(payload)
                        prev = payload["record_hash"]
                    chained.append(payloads)
                if rows:
                    cursor.many(insert, rows)
                    cursor.one(move, {"new_seq": seq, "new_hash": prev}, fetch=False)
        except SQLAlchemyError as exc:
            error = AuditUnavailable(f"audit store {self.safe_url} is not writable: {reason(exc)}")
            error.__cause__ = exc
            for entry in _failed(group, gathered, gather):
                entry.settle(error=error)
        except BaseException as exc:
            for entry in _failed(group, gathered, gather):
                entry.settle(error=exc)
            raise
        else:
            assert group is not None  # gathered inside the transaction that committed
            for entry, payloads in zip(group, chained, strict=True):
                entry.settle(payloads=payloads)
            if self.checkpoints is not None and any(chained):
                try:
                    self.checkpoints.note(seq, prev)
                except AuditUnavailable as exc:  # the decisions are durable; the anchor is late
                    log.error("checkpoint not written: %s", exc)

    def _append_statements(self) -> tuple[DriverStatement, DriverStatement, DriverStatement]:
        """The three statements of every append (lock and read the head, insert the records,
        move the head), compiled once for the writer's driver (`DriverStatement`)."""
        if self._driver_statements is None:
            dialect = self._writer.dialect
            self._driver_statements = (
                DriverStatement.of(self._head_for_update, dialect),
                DriverStatement.of(
                    self._insert_decisions, dialect, [c.key for c in self.decisions.columns]
                ),
                DriverStatement.of(self._move_head, dialect),
            )
        return self._driver_statements

    @staticmethod
    def _row(payload: Mapping[str, Any], text: str) -> dict[str, Any]:
        """The table row of a chained payload whose canonical text is `text`: every column of
        the decisions table (the insert refuses a row with one more or one less)."""
        row = {k: payload[k] for k in INDEXED}
        row.update(
            seq=payload["sequence"],
            payload=text,
            prev_hash=payload["prev_hash"],
            record_hash=payload["record_hash"],
            signature=None,
            key_id=None,
        )
        return row

    def get(self, decision_id: str) -> dict[str, Any]:
        """One stored decision; DecisionNotFound if there is none with that id."""
        stmt = sa.select(self.decisions.c.payload).where(
            self.decisions.c.decision_id == decision_id,
            self.decisions.c.sme_id != MODEL_CHANGE_SME,
        )
        rows = self.read(stmt)
        if not rows:
            raise DecisionNotFound(f"no decision with id {decision_id}")
        return dict(json.loads(rows[0][0]))

    # -- model changes: records of the chain that are not decisions ---------------------------
    def record_model_change(
        self, old: Mapping[str, Any] | None, new: Mapping[str, Any], *, by: str
    ) -> dict[str, Any]:
        """Chain a ``model_change`` record (old and new name, version, run id; who or what made
        the change) like any decision: hashed, signed, durable before returning."""
        body = {
            "kind": MODEL_CHANGE,
            "sme_id": MODEL_CHANGE_SME,
            "as_of": datetime.now(UTC).date().isoformat(),
            "grade": "",
            "score": 0.0,
            "pd": 0.0,
            "old_model": dict(old) if old is not None else None,
            "new_model": dict(new),
            "by": by,
        }
        return self.append([body])[0]

    def last_model_change(self) -> dict[str, Any] | None:
        """The newest ``model_change`` record (None if there is none)."""
        t = self.decisions
        stmt = (
            sa.select(t.c.payload)
            .where(t.c.sme_id == MODEL_CHANGE_SME)
            .order_by(t.c.seq.desc())
            .limit(1)
        )
        rows = self.read(stmt)
        return dict(json.loads(rows[0][0])) if rows else None

    def find(
        self, *, sme_id: str | None = None, grade: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored decisions, newest first, optionally of one SME and/or one grade."""
        stmt = sa.select(self.decisions.c.payload).where(
            self.decisions.c.sme_id != MODEL_CHANGE_SME
        )
        if sme_id is not None:
            stmt = stmt.where(self.decisions.c.sme_id == sme_id)
        if grade is not None:
            stmt = stmt.where(self.decisions.c.grade == grade)
        stmt = stmt.order_by(self.decisions.c.seq.desc()).limit(limit)
        return [dict(json.loads(r[0])) for r in self.read(stmt)]

    def count(self) -> int:
        """How many decisions are stored (model_change records left out)."""
        t = self.decisions
        rows = self.read(
            sa.select(sa.func.count()).select_from(t).where(t.c.sme_id != MODEL_CHANGE_SME)
        )
        return int(rows[0][0])

    def read(self, stmt: sa.Executable) -> list[Any]:
        self.ensure_schema()
        try:
            with self._reader.connect() as conn:
                return list(conn.execute(stmt).all())
        except SQLAlchemyError as exc:
            raise AuditUnavailable(
                f"audit store {self.safe_url} is not readable: {reason(exc)}"
            ) from exc

    # -- verification ---------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[sa.Connection]:
        """One read transaction: everything read through it is one consistent state of the
        database while the service keeps writing (SQLite WAL: a read transaction; PostgreSQL:
        REPEATABLE READ, read only)."""
        try:
            if self._sqlite:
                with self._reader.connect() as conn, conn.begin():
                    yield conn
            else:
                with self._reader.connect() as raw:
                    conn = raw.execution_options(isolation_level="REPEATABLE READ")
                    with conn.begin():
                        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                        yield conn
        except SQLAlchemyError as exc:
            raise AuditUnavailable(
                f"audit store {self.safe_url} is not readable: {reason(exc)}"
            ) from exc

    def require_chain(self) -> None:
        """AuditCorrupt unless the database holds this store's chain (tables and head row);
        creates nothing (the audit tools open stores they must not change)."""
        try:
            inspector = sa.inspect(self._reader)
            missing = [
                t.name for t in (self.decisions, self.head) if not inspector.has_table(t.name)
            ]
        except SQLAlchemyError as exc:
            raise AuditUnavailable(
                f"audit store {self.safe_url} is not readable: {reason(exc)}"
            ) from exc
        if missing:
            raise AuditCorrupt(
                f"audit store {self.safe_url} holds no audit chain (no table {', '.join(missing)})"
            )
        self._schema_ready = True  # nothing to create: never write from a tool

    def verify(
        self,
        *,
        batch: int = 1000,
        public_keys: PublicKeys | None = None,
        checkpoints: Path | None = None,
        require_records: bool = False,
    ) -> VerifyReport:
        """Re-derive the whole chain from one snapshot: every hash, link, sequence number, the
        head, and (given `public_keys`) every record's signature and (given a `checkpoints`
        file) every signed checkpoint of this store.

        Detects an edited record (payload, its text, or an indexed column), a deleted one (gap,
        broken link, or a head ahead of the last record), a reordered one, and, with the keys
        and checkpoints, a re-chained, forged, truncated or rolled-back chain. Malformed payloads
        are problems, never crashes.
        """
        problems: list[str] = []
        anchors: list[Checkpoint] = []
        if checkpoints is not None:
            # Read before the snapshot: a checkpoint is written after its records commit, so
            # the snapshot holds every record the file names.
            found, bad = read_checkpoints(checkpoints, self.chain_name)
            problems += bad
            if public_keys is not None:
                found, bad = check_signatures(found, public_keys, checkpoints)
                problems += bad
            anchors = found
        by_seq: dict[int, list[Checkpoint]] = {}
        for cp in anchors:
            by_seq.setdefault(cp.sequence, []).append(cp)
        if not self._schema_ready:
            self.ensure_schema()
        expected_seq = 1
        prev = GENESIS_HASH
        n = changes = 0
        with self.snapshot() as conn:
            for row in self._scan(conn, batch):
                n += 1
                changes += row.sme_id == MODEL_CHANGE_SME
                seq = int(row.seq)
                where = f"record seq {seq} (decision {row.decision_id})"
                if seq != expected_seq:
                    problems.append(
                        f"{where}: expected seq {expected_seq}: "
                        f"{seq - expected_seq} record(s) deleted before it"
                        if seq > expected_seq
                        else f"{where}: expected seq {expected_seq}"
                    )
                problems += self._check_row(row, prev, where, public_keys)
                for cp in by_seq.get(seq, []):
                    if cp.record_hash != row.record_hash:
                        problems.append(
                            f"{where}: checkpoint of {cp.time} (line {cp.line}) says its hash is "
                            f"{cp.record_hash[:16]}..., the database {str(row.record_hash)[:16]}"
                            "...: the chain was rewritten or rolled back"
                        )
                prev = str(row.record_hash)
                expected_seq = seq + 1
            head = list(conn.execute(sa.select(self.head.c.seq, self.head.c.record_hash)).all())
        last = expected_seq - 1
        if len(head) != 1:
            problems.append(f"head table has {len(head)} rows, expected 1")
        else:
            head_seq, head_hash = int(head[0][0]), str(head[0][1])
            if head_seq != last or head_hash != prev:
                problems.append(
                    f"head says the last record is seq {head_seq}, the table ends at seq "
                    f"{last}: the last record(s) were deleted or the head was edited"
                )
        if anchors:
            newest = max(anchors, key=lambda cp: cp.sequence)
            if newest.sequence > last:
                problems.append(
                    f"the chain ends at seq {last}, but a checkpoint of {newest.time} (line "
                    f"{newest.line}) names seq {newest.sequence}: the database was truncated or "
                    "rolled back to an older copy"
                )
        if require_records and n == 0 and not problems:
            problems.append(f"audit store {self.safe_url} holds no decisions: nothing to verify")
        return VerifyReport(not problems, n, problems[:MAX_PROBLEMS], len(problems), changes)

    def _check_row(
        self, row: Any, prev: str, where: str, public_keys: PublicKeys | None
    ) -> list[str]:
        """The problems of one stored record, given the previous record's hash."""
        seq = int(row.seq)
        payload, why = parse_payload(row.payload)
        if payload is None:
            return [f"{where}: payload {why} (edited)"]
        problems: list[str] = []
        text = row.payload  # the legacy form only when the canonical one differs (rare)
        if text != canonical_json(payload) and text != _legacy_text(payload):
            problems.append(
                f"{where}: stored text is not the canonical form of its payload (edited)"
            )
        if payload.get("sequence") != seq:
            problems.append(f"{where}: payload says sequence {payload.get('sequence')} (reordered)")
        if row.prev_hash != payload.get("prev_hash"):
            problems.append(f"{where}: prev_hash column differs from the payload (edited)")
        if payload.get("prev_hash") != prev:
            problems.append(
                f"{where}: does not link to the previous record "
                "(a record before it was deleted, edited or reordered)"
            )
        digest = record_hash(payload)
        if digest != row.record_hash and legacy_record_hash(payload) == row.record_hash:
            digest = row.record_hash  # written by a release before the orjson form
        if digest != payload.get("record_hash") or digest != row.record_hash:
            problems.append(f"{where}: content does not match its hash (edited)")
        for col in INDEXED:
            if getattr(row, col) != payload.get(col):
                problems.append(
                    f"{where}: column {col} = {getattr(row, col)!r} but the hashed "
                    f"record says {payload.get(col)!r} (edited)"
                )
        if public_keys is not None:
            bad = public_keys.check(str(row.record_hash), row.signature, row.key_id)
            if bad is not None:
                problems.append(f"{where}: {bad}")
        return problems

    def check_receipt(self, receipt: Any, public_keys: PublicKeys) -> list[str]:
        """Why a receipt is not proof of a record in this chain (empty: it is)."""
        need = {"sequence": int, "record_hash": str, "signature": str, "key_id": str}
        if not isinstance(receipt, dict) or any(
            not isinstance(receipt.get(k), t) or isinstance(receipt.get(k), bool)
            for k, t in need.items()
        ):
            return ["not a receipt: expected sequence (integer), record_hash, signature, key_id"]
        seq, digest = receipt["sequence"], receipt["record_hash"]
        bad = public_keys.check(digest, receipt["signature"], receipt["key_id"])
        if bad is not None:
            return [f"receipt of seq {seq}: {bad}"]
        row = self.record_at(seq)
        if row is None:
            return [f"receipt of seq {seq}: the chain holds no record seq {seq} (deleted)"]
        if row.record_hash != digest:
            return [
                f"receipt of seq {seq}: the chain's record has hash "
                f"{str(row.record_hash)[:16]}..., the receipt {digest[:16]}... "
                "(the record was replaced)"
            ]
        before = self.record_at(seq - 1) if seq > 1 else None
        prev = GENESIS_HASH if seq == 1 else str(before.record_hash) if before else "(missing)"
        return self._check_row(row, prev, f"record seq {seq}", public_keys)

    def record_at(self, sequence: int) -> Any | None:
        """The stored row of one sequence number (every column), or None."""
        cols = [self.decisions.c[c] for c in ("seq", "payload", "prev_hash", "record_hash")]
        cols += [self.decisions.c[c] for c in (*INDEXED, "signature", "key_id")]
        rows = self.read(sa.select(*cols).where(self.decisions.c.seq == sequence))
        return rows[0] if rows else None

    def _scan(self, conn: sa.Connection, batch: int) -> Iterator[Any]:
        cols = [self.decisions.c[c] for c in ("seq", "payload", "prev_hash", "record_hash")]
        cols += [self.decisions.c[c] for c in (*INDEXED, "signature", "key_id")]
        last = -(2**62)
        while True:
            stmt = (
                sa.select(*cols)
                .where(self.decisions.c.seq > last)
                .order_by(self.decisions.c.seq)
                .limit(batch)
            )
            rows = list(conn.execute(stmt).all())
            if not rows:
                return
            yield from rows
            last = int(rows[-1].seq)

    # -- sign-in sessions of the auditor pages ----------------------------------------------------
    def create_session(self, key_id: str, ttl_seconds: float) -> str:
        """A new opaque session token for `key_id` (only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        self.ensure_schema()
        try:
            with self.transaction() as conn:
                conn.execute(
                    sa.delete(self.sessions).where(self.sessions.c.expires_at < time.time())
                )
                conn.execute(
                    sa.insert(self.sessions).values(
                        token_hash=_token_hash(token),
                        key_id=key_id,
                        created_at=_now(),
                        expires_at=time.time() + ttl_seconds,
                    )
                )
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit store {self.safe_url}: {reason(exc)}") from exc
        return token

    def session_key_id(self, token: str) -> str | None:
        """The key id of a live session, or None (unknown, expired or revoked)."""
        t = self.sessions
        rows = self.read(
            sa.select(t.c.key_id).where(
                t.c.token_hash == _token_hash(token), t.c.expires_at >= time.time()
            )
        )
        return str(rows[0][0]) if rows else None

    def end_session(self, token: str) -> None:
        """Revoke one session (sign-out)."""
        self.ensure_schema()
        try:
            with self.transaction() as conn:
                conn.execute(
                    sa.delete(self.sessions).where(self.sessions.c.token_hash == _token_hash(token))
                )
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit store {self.safe_url}: {reason(exc)}") from exc

    # -- state shared by the workers ------------------------------------------------------------
    def get_state(self, name: str) -> str | None:
        """A value of the small serving_state table (None if unset)."""
        rows = self.read(sa.select(self.state.c.value).where(self.state.c.name == name))
        return str(rows[0][0]) if rows else None

    def set_state(self, name: str, value: str) -> None:
        """Set a serving_state value (insert or update)."""
        self.ensure_schema()
        try:
            with self.transaction() as conn:
                done = conn.execute(
                    sa.update(self.state)
                    .where(self.state.c.name == name)
                    .values(value=value, updated_at=_now())
                ).rowcount
                if not done:
                    conn.execute(
                        sa.insert(self.state).values(name=name, value=value, updated_at=_now())
                    )
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit store {self.safe_url}: {reason(exc)}") from exc


def _failed(
    group: list[_Pending] | None, gathered: bool, gather: Callable[[], list[_Pending]]
) -> list[_Pending]:
    """The entries a failed group commit settles with its error: those it gathered, else (it
    failed before it gathered) those `gather()` returns now; none when `gather` itself raised."""
    if group is not None:
        return group
    return [] if gathered else gather()


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(f"has the key {k!r} twice")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"holds {name}, which JSON does not allow")


class _OutOfRange(ValueError):
    pass


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _OutOfRange(f"holds a number out of range ({literal[:40]})")
    return value


def _int64(literal: str) -> int:
    """An integer the canonical form can write (orjson: 64 bits), else the payload is refused
    (a larger one would crash the hashing, not be reported)."""
    value = int(literal)
    if not -(2**63) <= value < 2**64:
        raise _OutOfRange(f"holds an integer out of range ({literal[:40]})")
    return value


def parse_payload(text: Any) -> tuple[dict[str, Any] | None, str]:
    """A stored payload as a dict, or None and what is wrong with it (not JSON, not an object,
    duplicate keys, a non-finite number such as ``1e999`` or an integer beyond 64 bits: refused
    as it is parsed)."""
    if not isinstance(text, str):
        return None, f"is {type(text).__name__}, not text"
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_int64,
        )
    except (_Duplicate, _OutOfRange) as exc:
        return None, str(exc)
    except ValueError as exc:
        return None, f"is not JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"is not a JSON object (a {type(value).__name__})"
    return value, ""


HASH_KEY = "record_hash"


def chained_text(payload: Mapping[str, Any]) -> tuple[str, str]:
    """The record hash of a payload without its ``record_hash`` (`record_hash`), and the
    canonical text of the payload with it (`canonical_json`), from one serialisation: the keys
    sorting before ``record_hash`` and those after it are written apart, hashed as one object
    without the hash and joined once with the hash between them. Byte for byte the two
    canonical forms (the sort is by code point, as UTF-8 bytes sort; tests/serving/
    test_fast_paths.py). The parts are read in place (memoryviews), so a ~15 KB record is
    copied twice (the join, the text), not once per step."""
    before = memoryview(canonical_bytes({k: v for k, v in payload.items() if k < HASH_KEY}))[1:-1]
    after = memoryview(canonical_bytes({k: v for k, v in payload.items() if k > HASH_KEY}))[1:-1]
    comma_before = b"," if before else b""
    comma_after = b"," if after else b""
    hashed = hashlib.sha256(b"{")
    hashed.update(before)
    hashed.update(b"," if before and after else b"")
    hashed.update(after)
    hashed.update(b"}")
    digest = hashed.hexdigest()
    field = b'"record_hash":"' + digest.encode("ascii") + b'"'
    text = b"".join((b"{", before, comma_before, field, comma_after, after, b"}"))
    return digest, text.decode("utf-8")


def _legacy_text(payload: Mapping[str, Any]) -> str:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]


def open_existing(target: str, *, prefix: str = "") -> AuditStore:
    """An audit store the tools only read: `target` is a SQLAlchemy URL or a plain path to a
    SQLite file. Refuses (AuditCorrupt, naming the store) a file that does not exist or a
    database without a chain; creates nothing (SQLite opened read-only)."""
    if "://" not in target:
        target = f"sqlite:///{target}"
    url = sa.make_url(target)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise AuditCorrupt(f"audit store {target}: expected a database file")
        path = Path(database)
        if not path.is_file():
            raise AuditCorrupt(f"audit store {target}: {path} does not exist")
        readonly = url.set(database=f"file:{path.resolve()}", query={"mode": "ro", "uri": "true"})
        store = AuditStore(readonly.render_as_string(hide_password=False), prefix=prefix)
        store.display_name = str(path)
    else:
        store = AuditStore(target, prefix=prefix)
    try:
        store.require_chain()
    except BaseException:
        store.dispose()
        raise
    return store
