"""Empty MLflow tracking stores for the tests, without paying MLflow's schema migrations each time.

A new SQLite tracking store runs every Alembic migration of MLflow's schema: about a second of CPU
and, because each migration step commits (an fsync), several seconds of wall time on a busy disk.
`TrackingStores` migrates one empty store per test session and copies that file wherever a test
wants a new empty store. The copy is byte for byte what MLflow itself would leave after its first
start on an empty file (the schema, its version row and the default experiment), so the code under
test sees an existing empty store. Tests about creating a store from nothing (a command that must
not create one, the first `scf-risk train` on a new URI) do not use it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

STORE_FILE = "mlflow.db"


def sqlite_uri(db: Path) -> str:
    return f"sqlite:///{db}"


class TrackingStores:
    """Copies of one migrated, empty MLflow store (made on first use under `base`)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._template: Path | None = None

    def template(self) -> Path:
        if self._template is None:
            from training.bundle import client_for

            db = self.base / STORE_FILE
            client = client_for(sqlite_uri(db))
            client.search_experiments()  # the tracking store: creates and migrates the schema
            client.search_registered_models()  # the registry store on the same file
            self._template = db
        return self._template

    def new(self, folder: Path) -> str:
        """The URI of a new empty store at ``folder``/mlflow.db (refused if one is there)."""
        db = folder / STORE_FILE
        if db.exists():
            raise FileExistsError(f"{db} exists: a new store is wanted")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template(), db)
        return sqlite_uri(db)
