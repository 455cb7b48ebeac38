"""Ed25519 signatures of the audit trail, with a key that never lives in the audit database.

The service signs each record's hash (and each checkpoint) with a private key read from a file
(``SCF_RISK_AUDIT_SIGNING_KEY``). Verification needs only the public keys file
(``SCF_RISK_AUDIT_PUBLIC_KEYS``): a JSON object ``{"keys": [{"key_id", "public_key"}]}`` that keeps
every key ever used, so rotated-out keys still verify the records they signed. A key id is the
first 16 hex digits of the sha256 of the raw public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from serving.exceptions import SigningKeyError


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Signer:
    """The private key of the service and its key id."""

    private: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_key(cls, private: Ed25519PrivateKey) -> Signer:
        return cls(private, key_id_of(private.public_key()))

    @classmethod
    def generate(cls) -> Signer:
        return cls.from_key(Ed25519PrivateKey.generate())

    def sign(self, message: str) -> str:
        """The base64 signature of `message` (a record hash, or a checkpoint's canonical text)."""
        return _b64(self.private.sign(message.encode("utf-8")))

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )


class PublicKeys:
    """Every public key the trail may have been signed with, by key id."""

    def __init__(self, keys: dict[str, Ed25519PublicKey], source: str = "") -> None:
        self.keys = keys
        self.source = source

    @classmethod
    def of(cls, *signers: Signer) -> PublicKeys:
        return cls({s.key_id: s.private.public_key() for s in signers}, "in memory")

    @classmethod
    def read(cls, path: Path) -> PublicKeys:
        """The public keys file; SigningKeyError naming the file and entry if it is unusable."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SigningKeyError(
                f"{path}: audit public keys file not found (SCF_RISK_AUDIT_PUBLIC_KEYS)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SigningKeyError(f"{path}: unreadable audit public keys file: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list) or not raw["keys"]:
            raise SigningKeyError(f"{path}: expected an object with a non-empty 'keys' list")
        keys: dict[str, Ed25519PublicKey] = {}
        for i, entry in enumerate(raw["keys"]):
            if not isinstance(entry, dict) or not {"key_id", "public_key"} <= set(entry):
                raise SigningKeyError(f"{path}: keys[{i}]: expected key_id and public_key")
            try:
                public = serialization.load_pem_public_key(str(entry["public_key"]).encode())
            except ValueError as exc:
                raise SigningKeyError(f"{path}: keys[{i}].public_key: {exc}") from None
            if not isinstance(public, Ed25519PublicKey):
                raise SigningKeyError(f"{path}: keys[{i}].public_key: not an Ed25519 key")
            if key_id_of(public) != entry["key_id"]:
                raise SigningKeyError(
                    f"{path}: keys[{i}].key_id {entry['key_id']!r} is not the id of its key"
                )
            keys[key_id_of(public)] = public
        return cls(keys, str(path))

    def check(self, message: str, signature: str | None, key_id: str | None) -> str | None:
        """None if `signature` is a valid signature of `message` by `key_id`, else why not."""
        if not signature or not key_id:
            return "not signed"
        public = self.keys.get(key_id)
        if public is None:
            return f"signed with key {key_id}, which is not in the public keys ({self.source})"
        try:
            public.verify(base64.b64decode(signature, validate=True), message.encode("utf-8"))
        except (InvalidSignature, ValueError):
            return f"signature does not verify with key {key_id} (forged)"
        return None


def read_signer(path: Path) -> Signer:
    """The private key file (PEM, PKCS8, unencrypted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(
            f"{path}: audit signing key not found (SCF_RISK_AUDIT_SIGNING_KEY); create one with "
            "`scf-risk audit new-key`"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"{path}: unreadable audit signing key: {exc}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 private key")
    return Signer.from_key(private)


def write_private(path: Path, signer: Signer) -> None:
    """Write a private key file, readable by its owner only; never overwrites one. Written
    aside, then linked into place: a worker starting at the same time sees no file or the
    whole key, never half of it (FileExistsError if one is there)."""
    pem = signer.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def add_public(path: Path, signer: Signer) -> None:
    """Add a signer's public key to the public keys file (created if absent; old keys kept)."""
    entries: list[dict[str, str]] = []
    if path.exists():
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = list(raw.get("keys", [])) if isinstance(raw, dict) else []
    if any(e.get("key_id") == signer.key_id for e in entries):
        return
    entries.append(
        {
            "key_id": signer.key_id,
            "public_key": signer.public_pem,
            "added_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"keys": entries}, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def new_signing_key(private_path: Path, public_path: Path) -> Signer:
    """Create a key pair: the private key (0600, never overwritten) and its public key added to
    the public keys file. Rotation: point SCF_RISK_AUDIT_SIGNING_KEY at the new file."""
    signer = Signer.generate()
    try:
        write_private(private_path, signer)
    except FileExistsError:
        raise SigningKeyError(f"{private_path}: already exists; not overwritten") from None
    add_public(public_path, signer)
    return signer


def ensure_signing_key(
    private_path: Path, public_path: Path, *, development: bool
) -> tuple[Signer, bool]:
    """The service's signer, and whether it was just created (development only: elsewhere a
    missing key is an error, never silently replaced)."""
    if private_path.exists() or not development:
        signer = read_signer(private_path)
    else:
        try:
            return new_signing_key(private_path, public_path), True
        except SigningKeyError:  # another worker created it first
            signer = read_signer(private_path)
    if not public_path.exists():
        add_public(public_path, signer)
    return signer, False
