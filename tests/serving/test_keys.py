"""API keys: hashed at rest, constant-time checks, development bootstrap, `scf-risk keys add`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.api.keys import (
    KeyStore,
    add_key,
    ensure_development_keys,
    read_keys,
    revoke_key,
)
from serving.exceptions import KeysError


def test_added_key_authenticates_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    record, key = add_key(path, "auditor", "Ann")
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text  # the secret may hold "_"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store = KeyStore(path, development=False)
    caller = store.authenticate(key)
    assert caller is not None and caller.role == "auditor" and caller.name == "Ann"
    assert caller.key_id == record.key_id


@pytest.mark.parametrize(
    "presented",
    ["", None, "nope", "scfk_0000000000000000_" + "A" * 43, "x" * 5000],
)
def test_wrong_or_malformed_keys_are_refused(tmp_path: Path, presented: str | None) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "scorer")
    assert KeyStore(path, development=False).authenticate(presented) is None


def test_a_right_id_with_a_wrong_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, key = add_key(path, "scorer")
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert KeyStore(path, development=False).authenticate(forged) is None


def test_development_keys_are_created_once(tmp_path: Path) -> None:
    path = tmp_path / "models" / "keys.json"
    created = ensure_development_keys(path, development=True)
    assert created is not None and set(created) == {"scorer", "auditor", "admin"}
    assert ensure_development_keys(path, development=True) is None
    store = KeyStore(path, development=True)
    for role, key in created.items():
        caller = store.authenticate(key)
        assert caller is not None and caller.role == role


def test_development_keys_are_refused_outside_development(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ensure_development_keys(path, development=True)
    with pytest.raises(KeysError, match="refused outside development"):
        KeyStore(path, development=False)


def test_missing_keys_file_outside_development_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="keys add"):
        ensure_development_keys(tmp_path / "keys.json", development=False)


def test_malformed_keys_file_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"key_id": "a", "role": "root", "hash": "sha256:x"}]}))
    with pytest.raises(KeysError, match=r"keys\[0\]\.role"):
        read_keys(path)
    path.write_text("{not json")
    with pytest.raises(KeysError, match="unreadable"):
        read_keys(path)


def test_store_picks_up_keys_added_while_running(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "scorer")
    store = KeyStore(path, development=False)
    time.sleep(0.01)
    _, key = add_key(path, "admin")
    caller = store.authenticate(key)
    assert caller is not None and caller.role == "admin"


def test_keys_add_command_prints_the_key_alone_on_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    env = {**os.environ, "SCF_RISK_API_KEYS": str(path), "SCF_RISK_ENV": "production"}
    out = subprocess.run(
        [sys.executable, "-m", "serving", "keys", "add", "--role", "auditor", "--name", "Ann"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    key = out.stdout.strip().splitlines()[-1]
    assert KeyStore(path, development=False).authenticate(key) is not None
    bad = subprocess.run(
        [sys.executable, "-m", "serving", "keys", "add", "--role", "root"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert bad.returncode == 2


def test_keys_file_is_looked_at_once_per_recheck_interval(tmp_path: Path) -> None:
    """With `recheck_seconds`, a key added or revoked takes effect once the interval has passed
    since the file was last looked at, and not before (a revoked key stays valid that long)."""
    path = tmp_path / "keys.json"
    _, kept = add_key(path, "scorer")
    now = [100.0]
    store = KeyStore(path, development=False, recheck_seconds=1.0, clock=lambda: now[0])
    admin, added = add_key(path, "admin")
    now[0] += 0.5
    assert store.authenticate(added) is None  # not looked at again yet
    now[0] += 0.5
    assert store.authenticate(added) is not None  # one interval after the first look
    revoke_key(path, admin.key_id)
    now[0] += 0.9
    assert store.authenticate(added) is not None  # revoked, still valid within the interval
    now[0] += 0.1
    assert store.authenticate(added) is None
    assert store.authenticate(kept) is not None
