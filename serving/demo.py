"""An example scoring request built from a data folder (for `scf-risk serve --demo-data`).

It takes one SME that is active and not defaulted at the folder's last month end and sends its
own rows in ``history`` mode, so the example exercises the same pipeline code as training.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import TABLES, Tables
from features.exceptions import FeatureError

ACTIVE_DAYS = 90


def _json_cell(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | np.floating | float | int):
        f = float(value)
        return f if math.isfinite(f) else None
    return str(value)


def _rows(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    records = frame[columns].astype(object).to_dict(orient="records")
    return [{str(k): _json_cell(v) for k, v in rec.items()} for rec in records]


def history_of(tables: Tables, sme_id: str) -> dict[str, list[dict[str, Any]]]:
    """The SME's own rows of every contract table, as a ``history`` body."""
    out: dict[str, list[dict[str, Any]]] = {}
    frames = tables.frames()
    for table in TABLES:
        frame = frames[table.name]
        declared = [c.name for c in table.columns if c.name in frame]
        if table.name == "enterprises":
            mine = frame[frame["enterprise_id"] == sme_id]
        elif table.name == "invoices":
            mine = frame[(frame["seller_id"] == sme_id) | (frame["buyer_id"] == sme_id)]
        else:
            mine = frame[frame["sme_id"] == sme_id]
        columns = declared
        if table.extra_numeric:
            columns = declared + [
                c
                for c in frame.columns
                if c not in declared
                and pd.api.types.is_numeric_dtype(frame[c])
                and not pd.api.types.is_bool_dtype(frame[c])
            ]
        out[table.name] = _rows(mine, columns)
    return out


def pick_sme(tables: Tables, as_of: pd.Timestamp) -> str:
    """The SME with the most sales in the last 90 days before `as_of` and no default by then."""
    inv = tables.invoices
    ent = tables.enterprises
    smes = set(ent.loc[ent["role"] == "sme", "enterprise_id"].astype(object))
    loans = tables.loans
    defaulted = set(
        loans.loc[
            loans["default_date"].notna() & (loans["default_date"] <= as_of), "sme_id"
        ].astype(object)
    )
    recent = inv[
        (inv["issue_date"] > as_of - pd.Timedelta(days=ACTIVE_DAYS)) & (inv["issue_date"] <= as_of)
    ]
    counts = recent["seller_id"].astype(object).value_counts()
    for sme_id in sorted(counts.index, key=lambda s: (-counts[s], s)):
        if sme_id in smes and sme_id not in defaulted:
            return str(sme_id)
    raise FeatureError(f"no active, non-defaulted SME at {as_of.date()} in the data")


def demo_request(folder: Path, *, today: date | None = None) -> dict[str, Any]:
    """A ``history`` scoring request for one SME of `folder` at its last month end."""
    from features.io import load_tables
    from features.pipeline import data_range, month_ends

    tables = load_tables(folder)
    start, end = data_range(tables)
    limit = pd.Timestamp(today or date.today())
    ends = [d for d in month_ends(start, min(end, limit)) if d <= limit]
    if not ends:
        raise FeatureError(
            f"{folder}: no month end within the data's range {start.date()}..{end.date()}"
        )
    as_of = ends[-1]
    sme_id = pick_sme(tables, as_of)
    return {
        "sme_id": sme_id,
        "as_of": as_of.date().isoformat(),
        "history": history_of(tables, sme_id),
    }
