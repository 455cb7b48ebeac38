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

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from serving.audit.canonical import canonical_json, legacy_record_hash, record_hash
from serving.audit.database import WriterTurn, make_engine, url_lock_timeout
from serving.exceptions import AuditUnavailable, DecisionNotFound

GENESIS_HASH = "0" * 64
HEAD_ID = 1
MAX_PROBLEMS = 50
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
                raise AuditUnavailable(f"audit store {self.safe_url}: {reason(exc)}") from exc
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
    def transaction(self, *, commit: bool = True) -> Iterator[sa.Connection]:
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
            with self.transaction(commit=False) as conn:
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
            with self.transaction() as conn:
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
            error = AuditUnavailable(f"audit store {self.safe_url} is not writable: {reason(exc)}")
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
        rows = self.read(stmt)
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
        return [dict(json.loads(r[0])) for r in self.read(stmt)]

    def count(self) -> int:
        """How many decisions are stored."""
        rows = self.read(sa.select(sa.func.count()).select_from(self.decisions))
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
        head = self.read(sa.select(self.head.c.seq, self.head.c.record_hash))
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
            rows = self.read(stmt)
            if not rows:
                return
            yield from rows
            last = int(rows[-1].seq)

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


def reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]
