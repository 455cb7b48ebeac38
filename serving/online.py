"""The online feature table: each SME's latest materialised features, kept in the audit
database (``features_latest``) so that `POST /v1/scores` with an ``sme_id`` alone can score it.

`materialize` writes it from a feature panel (``scf-risk score``); `OnlineFeatures.latest` reads
one SME's row for the scoring path.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from serving.audit.canonical import canonical_json, json_value
from serving.audit.store import AuditStore, reason
from serving.exceptions import AuditUnavailable, InvalidInput


class OnlineFeatures:
    """Reads of the online feature table of one audit store."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    def latest(self, sme_id: str) -> tuple[date, dict[str, Any]] | None:
        """The latest materialised features of an SME: (as_of, feature -> value), or None."""
        t = self.store.latest
        rows = self.store.read(sa.select(t.c.as_of, t.c.features).where(t.c.sme_id == sme_id))
        if not rows:
            return None
        return rows[0][0], dict(json.loads(rows[0][1]))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


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
        with store.transaction() as conn:
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
        raise AuditUnavailable(f"audit store {store.safe_url}: {reason(exc)}") from exc
    finally:
        if store is not engine_or_url:
            store.dispose()
    return written
