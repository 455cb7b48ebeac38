"""The audit database's connection: engines (SQLite WAL + FULL sync, PostgreSQL) and the
cross-process writer turn on one SQLite file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone arbitrates between processes
    fcntl = None  # type: ignore[assignment]

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
    read_only = sa_url.query.get("mode") == "ro"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (SQLAlchemy's pysqlite recipe)
        if read_only:  # the audit tools: read the file as it is, change nothing
            return
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # the busy timeout is the connect timeout
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(begin_sql)

    return engine


@dataclass(frozen=True)
class DriverStatement:
    """A SQLAlchemy Core statement compiled once for one dialect, run on the driver's own cursor
    (`DriverCursor`): the statements every append runs, without SQLAlchemy's per-execution work
    (cache lookup, execution context, events, result wrapping), which cost several times the
    driver's own execution of them. The same SQL and the same bound values as ``conn.execute``
    (the statement's own literals, e.g. the head row's id, plus the values given, each through
    its type's bind processor if the dialect has one). The values must name exactly the
    statement's parameters that have no value of their own (`required`: an insert's columns):
    one missing or one more is an error (SQLAlchemy's InvalidRequestError, as ``conn.execute``
    raises for a missing one), never a placeholder or a dropped value written to the table."""

    sql: str
    names: tuple[str, ...] | None  # positional drivers: the parameters in order; None: named
    defaults: Mapping[str, Any]  # the statement's own literals
    required: frozenset[str]  # the parameters every call gives, and no others
    processors: Mapping[str, Callable[[Any], Any]]

    @classmethod
    def of(
        cls, stmt: Any, dialect: sa.Dialect, column_keys: Sequence[str] | None = None
    ) -> DriverStatement:
        compiled = stmt.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
        )
        processors = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        names = tuple(compiled.positiontup or ()) if compiled.positional else None
        params = dict(compiled.params)  # a required one's value is a placeholder (REQUIRED)
        required = frozenset(name for name in params if compiled.binds[name].required)
        defaults = {name: v for name, v in params.items() if name not in required}
        return cls(str(compiled), names, defaults, required, processors)

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for `values` (and the statement's own literals);
        InvalidRequestError unless `values` names exactly the `required` parameters."""
        if values.keys() != self.required:
            missing = sorted(self.required - values.keys())
            unknown = sorted(values.keys() - self.required)
            why = [f"no value for {', '.join(missing)}"] if missing else []
            why += [f"a value for no parameter: {', '.join(unknown)}"] if unknown else []
            raise sa.exc.InvalidRequestError(f"{self.sql.split('(')[0].strip()}: {'; '.join(why)}")
        merged = {**self.defaults, **values}
        for name, process in self.processors.items():
            if name in merged:
                merged[name] = process(merged[name])
        if self.names is None:
            return merged
        return tuple(merged[name] for name in self.names)


class DriverCursor:
    """The driver's cursor of a SQLAlchemy connection inside its transaction, for
    `DriverStatement`s. A driver error is raised as SQLAlchemy's (`sa.exc.DBAPIError.instance`:
    OperationalError, IntegrityError ...), as ``conn.execute`` raises it, so the transaction
    that catches it discards the connection and the store answers AuditUnavailable."""

    def __init__(
        self, conn: sa.Connection | None, *, driver: Any = None, dialect: Any = None
    ) -> None:
        self._driver: Any = conn.connection.dbapi_connection if conn is not None else driver
        self._dialect: sa.Dialect = conn.dialect if conn is not None else dialect
        self._dbapi_error: type[Exception] = self._dialect.loaded_dbapi.Error
        self._cursor: Any = None

    @classmethod
    def of_driver(cls, driver: Any, dialect: sa.Dialect) -> DriverCursor:
        """The cursor of a driver connection held outside a SQLAlchemy connection (a pooled
        one: `AuditStore._appending`), with the dialect its errors are raised as."""
        return cls(None, driver=driver, dialect=dialect)

    def __enter__(self) -> DriverCursor:
        self._cursor = self._run("cursor()", None, self._driver.cursor)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cursor, self._cursor = self._cursor, None
        with suppress(self._dbapi_error):  # the transaction's own end (or error) decides
            cursor.close()

    def one(self, stmt: DriverStatement, values: Mapping[str, Any], *, fetch: bool = True) -> Any:
        """Run `stmt` once; its first row when `fetch` (NoResultFound when there is none)."""
        params = stmt.parameters(values)
        self._run(stmt.sql, params, lambda: self._cursor.execute(stmt.sql, params))
        if not fetch:
            return None
        row = self._run(stmt.sql, params, self._cursor.fetchone)
        if row is None:
            raise sa.exc.NoResultFound(f"no row: {stmt.sql}")
        return row

    def many(self, stmt: DriverStatement, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run `stmt` once per row (the driver's executemany)."""
        params = [stmt.parameters(r) for r in rows]
        self._run(stmt.sql, params, lambda: self._cursor.executemany(stmt.sql, params))

    def run(self, sql: str) -> None:
        """Run a statement without parameters (``BEGIN IMMEDIATE``)."""
        self._run(sql, (), lambda: self._cursor.execute(sql))

    def end(self, sql: str, call: Callable[[], Any]) -> None:
        """End the transaction with the driver's `call` (its commit or rollback); `sql` names
        it in an error."""
        self._run(sql, (), call)

    def _run(self, sql: str, params: Any, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._dbapi_error as exc:
            raise sa.exc.DBAPIError.instance(
                sql, params, exc, self._dbapi_error, dialect=self._dialect
            ) from exc
