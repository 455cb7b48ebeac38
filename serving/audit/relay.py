"""One group commit for every worker process of a host: the commit relay.

Each worker process of the service commits its decisions in groups (`AuditStore.append`), but
the database takes one writer at a time: with two workers their commits alternate, each with its
own fsync, and a request waits for the other worker's commit before its own. Here one worker of
the host (the first to bind the store's relay address) is the relay's *leader*: the others send
it their prepared records (`Prepared`: serialised by the sender, so the leader only chains, signs
and inserts them) over a Unix socket, and it commits them in its own group commit, beside its
own decisions, one fsync for all. Each record's chain fields (sequence, hash, signature ...)
go back to its sender, which answers its requests only then: nothing is acknowledged before
the transaction holding it committed.

- The address is in Linux's abstract socket namespace (no file to leave behind: it goes with
  the leader's process), named after the chain (`AuditStore.chain_name`); the leader accepts
  connections from processes of its own user only (``SO_PEERCRED``), which can read the signing
  key and write the database anyway.
- A sender that cannot reach a leader (none, or it went away before the records were sent
  whole) commits the records itself, as without a relay, and tries to become the leader next
  time. Once the records were sent, a lost answer (the leader was killed) is resolved from the
  database, under the write lock, by the records' decision ids (drawn by the sender): stored,
  they are answered as the leader would have; not stored, the sender commits them. A worker's
  crash so fails only its own requests in flight, never another's; and never two copies (the
  decision ids are unique).
- Only where the platform has abstract Unix sockets (Linux): elsewhere every worker commits
  its own groups.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import struct
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from serving.exceptions import AuditUnavailable

if TYPE_CHECKING:
    from serving.audit.store import AuditStore, Prepared

log = logging.getLogger("scf_risk.serving")

_LEN = struct.Struct("!I")
_CRED = struct.Struct("3i")
MAX_FRAME = 256 * 1024 * 1024
"""The largest frame either side reads (a group of records: far below; a corrupt length is
refused, not allocated)."""
REPLY_MARGIN_SECONDS = 5.0
"""How much longer than the store's lock timeout a sender waits for the leader's answer."""


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED")


def address(chain_name: str, identity: str = "") -> bytes:
    """The relay's abstract address of a chain (the same in every worker of the host);
    `identity` tells apart files of one path in different mount namespaces (a SQLite file's
    device and inode)."""
    digest = hashlib.sha256(f"{chain_name}\0{identity}".encode()).hexdigest()[:40]
    return b"\0scf-risk-audit-relay-" + digest.encode("ascii")


# -- frames --------------------------------------------------------------------------------------
def pack_items(items: Sequence[Prepared]) -> bytes:
    """A request: the items' columns (JSON) and canonical fragments, each length-prefixed."""
    chunks = [_LEN.pack(len(items))]
    for item in items:
        columns = orjson.dumps(item.columns, option=orjson.OPT_SERIALIZE_NUMPY)
        for blob in (item.decision_id.encode("utf-8"), columns, *item.parts):
            chunks.append(_LEN.pack(len(blob)))
            chunks.append(blob)
    body = b"".join(chunks)
    return _LEN.pack(len(body)) + body


def unpack_items(body: bytes) -> list[Prepared]:
    """The items of a request (ValueError for a malformed one)."""
    from serving.audit.store import BODY_COLUMNS, Prepared

    view = memoryview(body)
    (count,) = _LEN.unpack_from(view, 0)
    at = _LEN.size
    items: list[Prepared] = []
    for _ in range(count):
        blobs: list[bytes] = []
        for _ in range(8):
            (n,) = _LEN.unpack_from(view, at)
            at += _LEN.size
            if at + n > len(view):
                raise ValueError("a relay request ends inside an item")
            blobs.append(bytes(view[at : at + n]))
            at += n
        decision_id = str(uuid.UUID(blobs[0].decode("ascii")))
        columns = orjson.loads(blobs[1])
        if not isinstance(columns, dict) or tuple(columns) != BODY_COLUMNS:
            raise ValueError(f"a relay item's columns are not {BODY_COLUMNS}")
        a, b, c, d, e, f = blobs[2:]
        items.append(Prepared((a, b, c, d, e, f), columns, decision_id, None))
    if at != len(view):
        raise ValueError("a relay request has bytes after its items")
    return items


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("the relay connection closed")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(_recv_exactly(sock, _LEN.size))
    if n > MAX_FRAME:
        raise ConnectionError(f"a relay frame of {n} bytes (at most {MAX_FRAME})")
    return _recv_exactly(sock, n)


def _frame(doc: Any) -> bytes:
    body = orjson.dumps(doc)
    return _LEN.pack(len(body)) + body


# -- the leader ----------------------------------------------------------------------------------
class Leader:
    """The relay's leader: accepts the other workers' connections, commits what they send."""

    def __init__(self, store: AuditStore, listener: socket.socket) -> None:
        self.store = store
        self._listener = listener
        self._uid = os.getuid()
        self._closed = False
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="scf-risk-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                _, uid, _ = _CRED.unpack(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
                )
            except OSError:  # the peer is gone already
                conn.close()
                continue
            if uid != self._uid:
                log.error("audit relay: refused a connection of user id %d", uid)
                conn.close()
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="scf-risk-relay-peer", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        """One sender's requests, in turn: each committed (with this process's group commit),
        its records' chain fields or the error sent back."""
        try:
            while True:
                try:
                    request = recv_frame(conn)
                except (ConnectionError, OSError):
                    return
                try:
                    items = unpack_items(request)
                except (ValueError, struct.error) as exc:
                    log.error("audit relay: malformed request, connection closed: %s", exc)
                    return
                try:
                    stored = self.store.append_prepared(items, wake=self.store.commit_waker)
                except AuditUnavailable as exc:
                    reply = _frame({"error": str(exc)})
                else:
                    reply = _frame({"fields": [_fields_row(f) for f in stored]})
                conn.sendall(reply)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _fields_row(fields: Mapping[str, Any]) -> list[Any]:
    receipt = fields.get("receipt")
    return [
        fields["decision_id"],
        fields["sequence"],
        fields["created_at"],
        fields["prev_hash"],
        fields["record_hash"],
        receipt["signature"] if receipt else None,
        receipt["key_id"] if receipt else None,
    ]


# -- a sender ------------------------------------------------------------------------------------
class Relay:
    """A store's place in its host's relay: the leader (`Leader`, committing locally), or a
    sender with its connection to the leader; `send` is what `AuditStore.append_gathered` calls."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.address = address(store.chain_name, store.relay_identity())
        self._lock = threading.Lock()  # one request on the connection at a time
        self._leader: Leader | None = None
        self._conn: socket.socket | None = None
        self._closed = False

    @property
    def leading(self) -> bool:
        return self._leader is not None

    def join(self) -> None:
        """Become the leader if no process of the host is, else connect to it (no error: a
        relay that cannot be joined leaves the store committing by itself)."""
        if self._closed or self._leader is not None or self._conn is not None:
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.address)
            listener.listen(16)
        except OSError:
            listener.close()
        else:
            self._leader = Leader(self.store, listener)
            log.info("audit relay: this process commits for the host's workers")
            return
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.address)
        except OSError:
            conn.close()
            return
        conn.settimeout(self.store.lock_timeout + REPLY_MARGIN_SECONDS)
        self._conn = conn

    def send(
        self, gather: Callable[[], Sequence[Mapping[str, Any]]]
    ) -> list[dict[str, Any]] | None:
        """The payloads of the bodies `gather()` returns, committed by the leader; None when
        this process leads (or no leader can be reached before anything was gathered): the
        caller commits them itself. Once gathered, the bodies are committed here or by the
        leader, never by both: `gather` is called once."""
        from serving.audit.store import Prepared, chain_fields, payload_of

        with self._lock:
            self.join()
            conn = self._conn
            if conn is None:
                return None
            bodies = list(gather())
            items = [Prepared.of(b) for b in bodies]
            try:
                conn.sendall(pack_items(items))
            except OSError:
                self._drop()
                return self._commit_here(items)
            try:
                reply = orjson.loads(recv_frame(conn))
            except (OSError, ConnectionError, orjson.JSONDecodeError) as exc:
                self._drop()
                return self._resolve(bodies, items, exc)
        if "error" in reply:
            raise AuditUnavailable(str(reply["error"]))
        rows = reply.get("fields")
        if not isinstance(rows, list) or len(rows) != len(bodies):
            raise AuditUnavailable(
                f"audit store {self.store.safe_url}: the relay's leader answered "
                f"{len(rows) if isinstance(rows, list) else 'no'} records for {len(bodies)}"
            )
        return [payload_of(b, chain_fields(*row)) for b, row in zip(bodies, rows, strict=True)]

    def _resolve(
        self, bodies: list[Mapping[str, Any]], items: list[Prepared], why: BaseException
    ) -> list[dict[str, Any]]:
        """Records sent whose answer was lost (the leader went away, or did not answer in
        time): looked up under the write lock by their decision ids. Stored: their payloads,
        as the leader would have answered; not stored: committed here (the leader, if it still
        runs and commits them later, fails on their unique decision ids: never two copies)."""
        from serving.audit.store import payload_of

        log.warning("audit relay: no answer from the leader (%s); looking the records up", why)
        fields = self.store.committed_fields(items)
        if fields is None:
            return self._commit_here(items)
        return [payload_of(b, f) for b, f in zip(bodies, fields, strict=True)]

    def _commit_here(self, items: list[Prepared]) -> list[dict[str, Any]]:
        """Records that never reached the leader (the connection broke before they were sent
        whole: the leader discards a partial request): committed by this process."""
        log.warning("audit relay: the leader went away; this process commits by itself")
        return self.store.append_prepared(items)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
            if self._leader is not None:
                self._leader.close()
                self._leader = None
