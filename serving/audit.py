"""The audit store: every decision, hash-chained, committed before its response is sent.

SQLAlchemy 2 Core over SQLite (WAL, ``synchronous=FULL``) by default or PostgreSQL by URL.

Each record is a canonical JSON payload (sorted keys, no NaN) holding the whole decision plus its
``sequence`` number and the previous record's hash; ``record_hash = sha256(canonical JSON of the
payload without record_hash)``. A one-row head table holds the last sequence number and hash:
appends lock it (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL), so the
chain stays linear under concurrent threads and several worker processes, and deleting the last
records is detected as well. `verify` re-derives everything and reports edited, deleted and
reordered records.

The same database holds ``features_latest`` (the materialised latest features per SME, written by
`materialize`) and a small ``serving_state`` table the workers use to agree on the served model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from serving.exceptions import AuditUnavailable, DecisionNotFound, InvalidInput

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone arbitrates between processes
    fcntl = None  # type: ignore[assignment]

GENESIS_HASH = "0" * 64
HEAD_ID = 1
MAX_PROBLEMS = 50
# Columns copied out of the payload for queries; verify checks they still equal the payload.
INDEXED = ("decision_id", "sme_id", "as_of", "grade", "score", "pd", "created_at")


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def canonical_bytes(obj: Any) -> bytes:
    """The one serialisation that is hashed (orjson): sorted keys, compact, UTF-8, floats in
    their shortest round-trip form, NaN and infinities as null."""
    return orjson.dumps(obj, option=_CANONICAL)


def canonical_json(obj: Any) -> str:
    """`canonical_bytes` as text (what the payload column stores)."""
    return canonical_bytes(obj).decode("utf-8")


def record_hash(payload: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a payload without its own ``record_hash``."""
    body = {k: v for k, v in payload.items() if k != "record_hash"}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def legacy_record_hash(payload: Mapping[str, Any]) -> str:
    """The record hash of stores written before the canonical form moved to orjson (the
    standard library's ``json.dumps``, sorted keys, compact): `verify` accepts either, so an
    upgrade leaves older chains verifiable. Floats are the one difference (``1e-05`` there,
    ``1e-5`` here)."""
    body = {k: v for k, v in payload.items() if k != "record_hash"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_value(value: Any) -> Any:
    """A feature value as stored in JSON: finite float, str, or None for missing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    return str(value)


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

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.records} record(s)"
        more = self.total_problems - len(self.problems)
        tail = [f"... and {more} more"] if more > 0 else []
        lines = [
            f"audit chain BROKEN: {self.total_problems} problem(s) in {self.records} record(s)"
        ]
        return "\n".join(lines + [f"  {p}" for p in self.problems] + tail)


def _tables(prefix: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table, sa.Table]:
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
    return md, decisions, head, latest, state


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


DEFAULT_LOCK_TIMEOUT = 30.0
CONNECT_TIMEOUT_SECONDS = 10


def url_lock_timeout(url: str, default: float = DEFAULT_LOCK_TIMEOUT) -> float:
    """The lock timeout a SQLite URL asks for (``sqlite:///audit.db?timeout=5``, pysqlite's own
    parameter, in seconds), else `default`."""
    raw = sa.make_url(url).query.get("timeout")
    if raw is None:
        return default
    try:
        value = float(raw if isinstance(raw, str) else raw[-1])
    except ValueError:
        raise ValueError(
            f"audit database URL: timeout={raw!r} is not a number of seconds"
        ) from None
    if not value >= 0:
        raise ValueError(f"audit database URL: timeout={raw!r} must be >= 0 seconds")
    return value


class WriterTurn:
    """The writers' turn across processes on one SQLite file: an advisory ``flock`` on
    ``<database>-writers.lock``, taken before ``BEGIN IMMEDIATE``.

    SQLite's own busy handler retries after sleeping 1, 2, 5, 10 ... 100 ms, so under a steady
    stream of commits from several worker processes a waiting writer keeps waking to find the lock
    taken again, and some decisions wait hundreds of milliseconds. Here a waiter polls the file
    lock every half millisecond instead. Only our writers take it: anything else holding the
    database is still arbitrated by SQLite's busy timeout. A lock file that cannot be opened (a
    read-only folder) leaves SQLite's arbitration alone in charge."""

    POLL_SECONDS = 0.0005

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._unusable = False

    def acquire(self, timeout: float) -> bool:
        """True once this process holds the turn (or no lock file can be used); False after
        `timeout` seconds."""
        fd = self._open()
        if fd is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(self.POLL_SECONDS)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int | None:
        if self._fd is None and not self._unusable:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                self._unusable = True
        return self._fd

    @classmethod
    def for_url(cls, url: str) -> WriterTurn | None:
        """The turn of a file-backed SQLite URL (None for memory, URI-style or read-only ones,
        and where ``flock`` does not exist)."""
        sa_url = sa.make_url(url)
        database = sa_url.database or ""
        if (
            fcntl is None
            or sa_url.get_backend_name() != "sqlite"
            or database in ("", ":memory:")
            or database.startswith("file:")
            or "mode" in sa_url.query
        ):
            return None
        return cls(Path(f"{database}-writers.lock"))


def make_engine(url: str, *, immediate: bool = False, lock_timeout: float | None = None) -> Engine:
    """An engine for the audit database. SQLite: WAL, synchronous=FULL, a busy timeout of
    `lock_timeout` seconds (default: the URL's ``timeout``, else 30 s), and (``immediate=True``)
    write transactions that take the write lock at BEGIN. PostgreSQL: connections checked before
    use and a connect timeout (an unreachable server is an error in seconds, not a hang)."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        args: dict[str, Any] = {}
        if sa_url.get_backend_name() == "postgresql" and "connect_timeout" not in sa_url.query:
            args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
        return sa.create_engine(url, pool_pre_ping=True, connect_args=args)
    timeout = url_lock_timeout(url) if lock_timeout is None else lock_timeout
    engine = sa.create_engine(url, connect_args={"timeout": timeout})
    begin_sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (SQLAlchemy's pysqlite recipe)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # the busy timeout is the connect timeout
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(begin_sql)

    return engine


class AuditStore:
    """The decisions of the service, chained by hash, plus the materialised latest features.

    Nothing is opened by the constructor; the schema is created on first use, and every database
    failure is raised as `AuditUnavailable` (the API answers 503: no unaudited decision).
    """

    def __init__(self, url: str, *, prefix: str = "", lock_timeout: float | None = None) -> None:
        if prefix and not prefix.replace("_", "").isalnum():
            raise ValueError(f"prefix: letters, digits and _ only, got {prefix!r}")
        self.url = url
        self.prefix = prefix
        self._md, self.decisions, self.head, self.latest, self.state = _tables(prefix)
        self._sqlite = sa.make_url(url).get_backend_name() == "sqlite"
        self.lock_timeout = url_lock_timeout(url) if lock_timeout is None else lock_timeout
        # SQLite: this process's writers queue here, so SQLite's busy handler (sleep and retry,
        # no queue) only arbitrates between processes.
        self._local_writer = threading.Lock() if self._sqlite else None
        self._writer_turn = WriterTurn.for_url(url)
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
        self._reader = make_engine(url, lock_timeout=lock_timeout) if self._sqlite else self._writer
        self._schema_ready = False

    # -- lifecycle -------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the tables and the chain's head row if they do not exist (idempotent)."""
        if self._schema_ready:
            return
        database = sa.make_url(self.url).database
        if self._sqlite and database and database != ":memory:" and "mode=ro" not in self.url:
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
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
                raise AuditUnavailable(f"audit store {self.safe_url}: {_reason(exc)}") from exc
        try:
            with self._write() as conn:
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
            raise AuditUnavailable(f"audit store {self.safe_url}: {_reason(exc)}") from exc
        self._schema_ready = True

    def dispose(self) -> None:
        """Close every pooled connection (and the writers' lock file)."""
        self._writer.dispose()
        if self._writer_turn is not None:
            self._writer_turn.close()
        if self._reader is not self._writer:
            self._reader.dispose()

    def drop_all(self) -> None:
        """Drop this store's tables (tests with a per-run prefix)."""
        self._md.drop_all(self._writer, checkfirst=True)
        self._schema_ready = False

    @contextmanager
    def _write(self, *, commit: bool = True) -> Iterator[sa.Connection]:
        """A write transaction (committed, or rolled back when `commit` is false).

        On SQLite this process's writers first queue for their turn (at most the lock timeout).
        After a database error the connection is discarded, never pooled again: a session that
        failed a write may be read-only (PostgreSQL fixes ``default_transaction_read_only`` when
        a session starts) or half broken, and reusing it would keep refusing decisions after the
        database came back."""
        local, turn = self._local_writer, self._writer_turn
        start = time.monotonic()
        if local is not None and not local.acquire(timeout=self.lock_timeout):
            raise AuditUnavailable(
                f"audit store {self.safe_url}: no write turn within {self.lock_timeout:g} s"
            )
        left = max(0.0, self.lock_timeout - (time.monotonic() - start))
        if turn is not None and not turn.acquire(left):
            if local is not None:
                local.release()
            raise AuditUnavailable(
                f"audit store {self.safe_url}: another process kept the write turn for "
                f"{self.lock_timeout:g} s"
            )
        try:
            with self._writer.connect() as conn:
                try:
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
            if turn is not None:
                turn.release()
            if local is not None:
                local.release()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (for logs and messages)."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def probe_writable(self) -> bool:
        """True if a write transaction can be opened and a row updated right now (rolled back)."""
        try:
            self.ensure_schema()
            with self._write(commit=False) as conn:
                conn.execute(
                    sa.update(self.head)
                    .where(self.head.c.id == HEAD_ID)
                    .values(seq=self.head.c.seq)
                )
        except (AuditUnavailable, SQLAlchemyError):
            return False
        return True

    # -- decisions ---------------------------------------------------------------------------
    def append(self, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Store decisions as the next records of the chain, durably, before returning them.

        Each body is a JSON-able mapping with at least sme_id, as_of, grade, score, pd. Returns
        the stored payloads (with decision_id, sequence, created_at, prev_hash, record_hash).

        Group commit: concurrent callers of this process queue their bodies; whichever gets the
        writer's turn commits everything queued in one transaction (one fsync for the group) and
        hands each caller its own payloads. Nobody returns before the transaction holding its
        records is committed; if it fails, every caller in the group gets `AuditUnavailable` and
        nothing of the group is stored.
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
                    with self._queue_lock:
                        group, self._queue = self._queue, []
                    self._commit_group(group)
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

    def _commit_group(self, group: list[_Pending]) -> None:
        """Chain and commit every queued entry in one transaction; settle each entry."""
        try:
            with self._write() as conn:
                row = conn.execute(self._head_for_update).one()
                seq, prev = int(row.seq), str(row.record_hash)
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
                        payload["record_hash"] = record_hash(payload)
                        rows.append(self._row(payload))
                        payloads.append(payload)
                        prev = payload["record_hash"]
                    chained.append(payloads)
                conn.execute(self._insert_decisions, rows)
                conn.execute(self._move_head, {"new_seq": seq, "new_hash": prev})
        except SQLAlchemyError as exc:
            error = AuditUnavailable(f"audit store {self.safe_url} is not writable: {_reason(exc)}")
            error.__cause__ = exc
            for entry in group:
                entry.settle(error=error)
        except BaseException as exc:
            for entry in group:
                entry.settle(error=exc)
            raise
        else:
            for entry, payloads in zip(group, chained, strict=True):
                entry.settle(payloads=payloads)

    @staticmethod
    def _row(payload: Mapping[str, Any]) -> dict[str, Any]:
        row = {k: payload[k] for k in INDEXED}
        row.update(
            seq=payload["sequence"],
            payload=canonical_json(payload),
            prev_hash=payload["prev_hash"],
            record_hash=payload["record_hash"],
        )
        return row

    def get(self, decision_id: str) -> dict[str, Any]:
        """One stored decision; DecisionNotFound if there is none with that id."""
        stmt = sa.select(self.decisions.c.payload).where(
            self.decisions.c.decision_id == decision_id
        )
        rows = self._read(stmt)
        if not rows:
            raise DecisionNotFound(f"no decision with id {decision_id}")
        return dict(json.loads(rows[0][0]))

    def find(
        self, *, sme_id: str | None = None, grade: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored decisions, newest first, optionally of one SME and/or one grade."""
        stmt = sa.select(self.decisions.c.payload)
        if sme_id is not None:
            stmt = stmt.where(self.decisions.c.sme_id == sme_id)
        if grade is not None:
            stmt = stmt.where(self.decisions.c.grade == grade)
        stmt = stmt.order_by(self.decisions.c.seq.desc()).limit(limit)
        return [dict(json.loads(r[0])) for r in self._read(stmt)]

    def count(self) -> int:
        """How many decisions are stored."""
        rows = self._read(sa.select(sa.func.count()).select_from(self.decisions))
        return int(rows[0][0])

    def _read(self, stmt: sa.Executable) -> list[Any]:
        self.ensure_schema()
        try:
            with self._reader.connect() as conn:
                return list(conn.execute(stmt).all())
        except SQLAlchemyError as exc:
            raise AuditUnavailable(
                f"audit store {self.safe_url} is not readable: {_reason(exc)}"
            ) from exc

    # -- verification ---------------------------------------------------------------------------
    def verify(self, *, batch: int = 1000) -> VerifyReport:
        """Re-derive the whole chain: every hash, every link, every sequence number, the head.

        Detects an edited record (payload or indexed column), a deleted one (gap, broken link, or
        a head ahead of the last record) and a reordered one (sequence/payload mismatch, broken
        links).
        """
        problems: list[str] = []
        self.ensure_schema()
        expected_seq = 1
        prev = GENESIS_HASH
        n = 0
        for row in self._scan(batch):
            n += 1
            seq = int(row.seq)
            where = f"record seq {seq} (decision {row.decision_id})"
            if seq != expected_seq:
                problems.append(
                    f"{where}: expected seq {expected_seq}: "
                    f"{seq - expected_seq} record(s) deleted before it"
                    if seq > expected_seq
                    else f"{where}: expected seq {expected_seq}"
                )
            try:
                payload = json.loads(row.payload)
            except json.JSONDecodeError:
                problems.append(f"{where}: payload is not JSON (edited)")
                prev, expected_seq = str(row.record_hash), seq + 1
                continue
            if payload.get("sequence") != seq:
                problems.append(
                    f"{where}: payload says sequence {payload.get('sequence')} (reordered)"
                )
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
            prev = str(row.record_hash)
            expected_seq = seq + 1
        head = self._read(sa.select(self.head.c.seq, self.head.c.record_hash))
        if len(head) != 1:
            problems.append(f"head table has {len(head)} rows, expected 1")
        else:
            head_seq, head_hash = int(head[0][0]), str(head[0][1])
            if head_seq != expected_seq - 1 or head_hash != prev:
                problems.append(
                    f"head says the last record is seq {head_seq}, the table ends at seq "
                    f"{expected_seq - 1}: the last record(s) were deleted or the head was edited"
                )
        return VerifyReport(not problems, n, problems[:MAX_PROBLEMS], len(problems))

    def _scan(self, batch: int) -> Iterator[Any]:
        cols = [self.decisions.c[c] for c in ("seq", "payload", "prev_hash", "record_hash")]
        cols += [self.decisions.c[c] for c in INDEXED]
        last = -(2**62)
        while True:
            stmt = (
                sa.select(*cols)
                .where(self.decisions.c.seq > last)
                .order_by(self.decisions.c.seq)
                .limit(batch)
            )
            rows = self._read(stmt)
            if not rows:
                return
            yield from rows
            last = int(rows[-1].seq)

    # -- materialised latest features -----------------------------------------------------------
    def latest_features(self, sme_id: str) -> tuple[date, dict[str, Any]] | None:
        """The latest materialised features of an SME: (as_of, feature -> value), or None."""
        stmt = sa.select(self.latest.c.as_of, self.latest.c.features).where(
            self.latest.c.sme_id == sme_id
        )
        rows = self._read(stmt)
        if not rows:
            return None
        return rows[0][0], dict(json.loads(rows[0][1]))

    # -- state shared by the workers ------------------------------------------------------------
    def get_state(self, name: str) -> str | None:
        """A value of the small serving_state table (None if unset)."""
        rows = self._read(sa.select(self.state.c.value).where(self.state.c.name == name))
        return str(rows[0][0]) if rows else None

    def set_state(self, name: str, value: str) -> None:
        """Set a serving_state value (insert or update)."""
        self.ensure_schema()
        try:
            with self._write() as conn:
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
            raise AuditUnavailable(f"audit store {self.safe_url}: {_reason(exc)}") from exc


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]


NON_FEATURE_COLUMNS = ("sme_id", "as_of", "default_12m")


def materialize(
    engine_or_url: Engine | AuditStore | str, panel: pd.DataFrame, *, prefix: str = ""
) -> int:
    """Write each SME's latest row of a feature panel into ``features_latest``.

    `panel` has ``sme_id``, ``as_of`` and feature columns (``default_12m`` is ignored). A stored
    row is replaced only by a row of the same or a later as-of date. Returns the rows written.
    """
    if isinstance(engine_or_url, AuditStore):
        store = engine_or_url
    elif isinstance(engine_or_url, Engine):
        store = AuditStore(engine_or_url.url.render_as_string(hide_password=False), prefix=prefix)
    else:
        store = AuditStore(engine_or_url, prefix=prefix)
    for col in ("sme_id", "as_of"):
        if col not in panel.columns:
            raise InvalidInput(("panel", col), "column missing from the feature panel")
    if panel.empty:
        return 0
    as_of = pd.to_datetime(panel["as_of"], errors="coerce")
    if as_of.isna().any():
        row = int(np.flatnonzero(as_of.isna().to_numpy())[0]) + 1
        raise InvalidInput(("panel", row, "as_of"), "not a date")
    frame = panel.assign(as_of=as_of).sort_values(["sme_id", "as_of"], kind="stable")
    latest = frame.groupby("sme_id", sort=False).tail(1)
    feature_cols = [c for c in latest.columns if c not in NON_FEATURE_COLUMNS]
    now = _now()
    rows = [
        {
            "sme_id": str(sme),
            "as_of": ts.date(),
            "features": canonical_json(
                {c: json_value(v) for c, v in zip(feature_cols, vals, strict=True)}
            ),
            "materialized_at": now,
        }
        for sme, ts, vals in zip(
            latest["sme_id"],
            latest["as_of"],
            latest[feature_cols].itertuples(index=False),
            strict=True,
        )
    ]
    store.ensure_schema()
    t = store.latest
    written = 0
    try:
        with store._write() as conn:
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                ids = [r["sme_id"] for r in chunk]
                stored = dict(
                    conn.execute(sa.select(t.c.sme_id, t.c.as_of).where(t.c.sme_id.in_(ids))).all()
                )
                fresh = [
                    r
                    for r in chunk
                    if r["sme_id"] not in stored or stored[r["sme_id"]] <= r["as_of"]
                ]
                replace = [r["sme_id"] for r in fresh if r["sme_id"] in stored]
                if replace:
                    conn.execute(sa.delete(t).where(t.c.sme_id.in_(replace)))
                if fresh:
                    conn.execute(sa.insert(t), fresh)
                written += len(fresh)
    except SQLAlchemyError as exc:
        raise AuditUnavailable(f"audit store {store.safe_url}: {_reason(exc)}") from exc
    finally:
        if store is not engine_or_url:
            store.dispose()
    return written
