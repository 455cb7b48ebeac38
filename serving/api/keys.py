"""API keys: a JSON file of hashed keys, checked in constant time.

A key is ``scfk_<key id>_<secret>`` with a 256-bit random secret. At rest only
``sha256("<key id>:" + key)`` is kept. A slow password hash (scrypt, PBKDF2) exists to make
guessing low-entropy passwords expensive; a 256-bit random secret cannot be guessed, so a fast
hash loses nothing and keeps the check at microseconds per request (scrypt would cost tens of
milliseconds of the 50 ms p99 budget). The key id makes the lookup O(1); the hash comparison uses
`hmac.compare_digest`, and an unknown id still costs one hash and one comparison.

Keys created by the development bootstrap are marked ``"development": true`` and refused outside
the development environment (placeholder secrets never reach production).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast, get_args

from serving.exceptions import KeysError

Role = Literal["scorer", "auditor", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
KEY_PREFIX = "scfk_"
_KEY_RE = re.compile(r"^scfk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_KEY_IN_TEXT = re.compile(r"scfk_(?:([0-9a-f]{16})_)?[A-Za-z0-9_-]+")
_FILE_VERSION = 1


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored: never the key itself."""

    key_id: str
    name: str
    role: Role
    hash: str  # "sha256:<hex>"
    created_at: str
    development: bool = False


@dataclass(frozen=True)
class Caller:
    """Who made a request (recorded with every decision)."""

    key_id: str
    name: str
    role: Role


def redact(text: str) -> str:
    """`text` with every API key (or anything shaped like one) masked; the key id, which is no
    secret, stays to tell keys apart."""
    return _KEY_IN_TEXT.sub(
        lambda m: f"scfk_{m.group(1)}_[redacted]" if m.group(1) else "scfk_[redacted]", text
    )


def _digest(key_id: str, key: str) -> str:
    return "sha256:" + hashlib.sha256(f"{key_id}:{key}".encode()).hexdigest()


def new_key(role: Role, name: str, *, development: bool = False) -> tuple[KeyRecord, str]:
    """A fresh random key and its record (the key is returned once and never stored)."""
    if role not in ROLES:
        raise KeysError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    key_id = secrets.token_hex(8)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    created = datetime.now(UTC).isoformat(timespec="seconds")
    record = KeyRecord(key_id, name, role, _digest(key_id, key), created, development)
    return record, key


def read_keys(path: Path) -> list[KeyRecord]:
    """The records of a keys file; KeysError naming the file and entry when it is malformed."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeysError(f"{path}: API keys file not found (SCF_RISK_API_KEYS)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeysError(f"{path}: unreadable API keys file: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise KeysError(f"{path}: expected an object with a 'keys' list")
    records: list[KeyRecord] = []
    fields = set(KeyRecord.__dataclass_fields__)
    for i, entry in enumerate(raw["keys"]):
        if not isinstance(entry, dict) or not {"key_id", "role", "hash"} <= set(entry):
            raise KeysError(f"{path}: keys[{i}]: expected key_id, role and hash")
        if entry["role"] not in ROLES:
            raise KeysError(
                f"{path}: keys[{i}].role: expected one of {ROLES}, got {entry['role']!r}"
            )
        if not str(entry["hash"]).startswith("sha256:"):
            raise KeysError(f"{path}: keys[{i}].hash: expected 'sha256:<hex>'")
        values = {k: v for k, v in entry.items() if k in fields}
        values.setdefault("name", "")
        values.setdefault("created_at", "")
        records.append(KeyRecord(**values))
    ids = [r.key_id for r in records]
    if len(set(ids)) != len(ids):
        raise KeysError(f"{path}: duplicate key_id")
    return records


def write_keys(path: Path, records: list[KeyRecord]) -> None:
    """Write the keys file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"version": _FILE_VERSION, "keys": [asdict(r) for r in records]}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def add_key(path: Path, role: Role, name: str | None = None) -> tuple[KeyRecord, str]:
    """Append a new key to the keys file (created if absent); returns its record and the key."""
    records = read_keys(path) if path.exists() else []
    record, key = new_key(role, name or role)
    write_keys(path, [*records, record])
    return record, key


def revoke_key(path: Path, key_id: str) -> KeyRecord:
    """Remove a key from the keys file (running services stop accepting it at their next
    request: they re-read the file when it changes). KeysError if there is no such key or it
    is the last one."""
    records = read_keys(path)
    gone = [r for r in records if r.key_id == key_id]
    if not gone:
        raise KeysError(f"{path}: no key with id {key_id!r} (see `scf-risk keys list`)")
    kept = [r for r in records if r.key_id != key_id]
    if not kept:
        raise KeysError(f"{path}: {key_id} is the last key; add another before revoking it")
    write_keys(path, kept)
    return gone[0]


def ensure_development_keys(path: Path, *, development: bool) -> dict[Role, str] | None:
    """Create the development keys file (one key per role) when it does not exist.

    Returns the new keys (to be shown once), or None when the file already existed. Outside
    development a missing file is an error: production keys are made with `scf-risk keys add`.
    """
    if path.exists():
        return None
    if not development:
        raise KeysError(
            f"{path}: API keys file not found; create keys with `scf-risk keys add --role ...`"
        )
    created: dict[Role, str] = {}
    records: list[KeyRecord] = []
    for role in ROLES:
        record, key = new_key(role, f"development {role}", development=True)
        records.append(record)
        created[role] = key
    # Write aside, then link into place: exactly one of several starting workers creates it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_keys(tmp, records)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return created


class KeyStore:
    """The keys file, re-read when it changes on disk (so `keys add` needs no restart). The file
    is looked at (a `stat`) at most once every `recheck_seconds` (0: on every request), so a key
    added or revoked takes effect within that long."""

    def __init__(
        self,
        path: Path,
        *,
        development: bool,
        recheck_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.development = development
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked_at = -math.inf
        self._by_id: dict[str, KeyRecord] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the file if it changed, unless it was looked at less than `recheck_seconds`
        ago; KeysError when it is missing or not allowed."""
        now = self.clock()
        if now - self._checked_at < self.recheck_seconds:
            return
        self._checked_at = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise KeysError(f"{self.path}: API keys file not found (SCF_RISK_API_KEYS)") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            records = read_keys(self.path)
            if not self.development:
                dev = [r.key_id for r in records if r.development]
                if dev:
                    raise KeysError(
                        f"{self.path}: development keys {dev} are refused outside development; "
                        "replace them with `scf-risk keys add`"
                    )
            if not records:
                raise KeysError(f"{self.path}: no API keys")
            self._by_id = {r.key_id: r for r in records}
            self._stamp = stamp

    def caller_of(self, key_id: str) -> Caller | None:
        """The caller of a key id that is still in the file (None once revoked)."""
        self.refresh()
        record = self._by_id.get(key_id)
        if record is None:
            return None
        return Caller(record.key_id, record.name, cast(Role, record.role))

    def authenticate(self, presented: str | None) -> Caller | None:
        """The caller a presented key belongs to, or None (missing, malformed or wrong key)."""
        if not presented:
            return None
        self.refresh()
        match = _KEY_RE.match(presented)
        key_id = match.group(1) if match else "0" * 16
        record = self._by_id.get(key_id)
        expected = record.hash if record is not None else "sha256:" + "0" * 64
        ok = hmac.compare_digest(_digest(key_id, presented).encode(), expected.encode())
        if not (ok and match and record is not None):
            return None
        return Caller(record.key_id, record.name, cast(Role, record.role))
