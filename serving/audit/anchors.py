"""Signed checkpoints of the chain kept outside the audit database.

A checkpoint is one JSON line ``{"store", "sequence", "record_hash", "time", "key_id",
"signature"}`` appended (``O_APPEND``, fsync) to a file beside the keys. The signature covers the
canonical JSON of the other fields. `AuditStore.verify` checks the chain against every checkpoint
of its store: a database truncated, rolled back to an older copy or re-chained no longer holds
the record a checkpoint names.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.audit.canonical import canonical_json
from serving.audit.signing import PublicKeys, Signer
from serving.exceptions import AuditUnavailable

SIGNED_FIELDS = ("store", "sequence", "record_hash", "time")


@dataclass(frozen=True)
class Checkpoint:
    store: str
    sequence: int
    record_hash: str
    time: str
    key_id: str
    signature: str
    line: int

    @property
    def message(self) -> str:
        return checkpoint_message(self.store, self.sequence, self.record_hash, self.time)


def checkpoint_message(store: str, sequence: int, record_hash: str, at: str) -> str:
    return canonical_json(
        {"store": store, "sequence": sequence, "record_hash": record_hash, "time": at}
    )


class CheckpointLog:
    """Writes checkpoints every `every_records` records or `every_seconds` seconds (on the next
    commit or poll), and on shutdown."""

    def __init__(
        self,
        path: Path,
        signer: Signer,
        *,
        store: str,
        every_records: int = 1000,
        every_seconds: float = 10.0,
    ) -> None:
        self.path = path
        self.signer = signer
        self.store = store
        self.every_records = every_records
        self.every_seconds = every_seconds
        self._lock = threading.Lock()
        self._last_seq = -1
        self._last_time = time.monotonic()
        self._pending: tuple[int, str] | None = None

    def note(self, sequence: int, record_hash: str) -> None:
        """The chain's head after a commit: write a checkpoint if one is due."""
        with self._lock:
            self._pending = (sequence, record_hash)
            due = (
                sequence - max(self._last_seq, 0) >= self.every_records
                or time.monotonic() - self._last_time >= self.every_seconds
            )
        if due:
            self.flush()

    def poll(self) -> None:
        """Called regularly: write the last noted head if `every_seconds` have passed."""
        if time.monotonic() - self._last_time >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the last noted head now (if it moved since the last checkpoint)."""
        with self._lock:
            if self._pending is None or self._pending[0] == self._last_seq:
                return
            sequence, record_hash = self._pending
            self.write(sequence, record_hash)
            self._last_seq = sequence
            self._last_time = time.monotonic()

    def write(self, sequence: int, record_hash: str) -> None:
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        line = {
            "store": self.store,
            "sequence": sequence,
            "record_hash": record_hash,
            "time": at,
            "key_id": self.signer.key_id,
            "signature": self.signer.sign(
                checkpoint_message(self.store, sequence, record_hash, at)
            ),
        }
        data = (json.dumps(line, sort_keys=True) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditUnavailable(f"checkpoint file {self.path}: {exc}") from exc


def read_checkpoints(path: Path, store: str) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints of `store` in the file, and the problems of lines that are not one."""
    checkpoints: list[Checkpoint] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry: Any = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            cp = Checkpoint(
                store=str(entry["store"]),
                sequence=int(entry["sequence"]),
                record_hash=str(entry["record_hash"]),
                time=str(entry["time"]),
                key_id=str(entry["key_id"]),
                signature=str(entry["signature"]),
                line=n,
            )
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"checkpoint file {path} line {n}: malformed ({exc})")
            continue
        if cp.store == store:
            checkpoints.append(cp)
    return checkpoints, problems


def check_signatures(
    checkpoints: list[Checkpoint], keys: PublicKeys, path: Path
) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints whose signature verifies, and a problem for each one that does not."""
    good: list[Checkpoint] = []
    problems: list[str] = []
    for cp in checkpoints:
        why = keys.check(cp.message, cp.signature, cp.key_id)
        if why is None:
            good.append(cp)
        else:
            problems.append(f"checkpoint file {path} line {cp.line} (seq {cp.sequence}): {why}")
    return good, problems
