"""The point-in-time feature panel: one row per SME in the population at each as-of date.

Population and labels (shared/docs/data-contract.md):
- population at ``t``: SMEs with at least one invoice (sold or bought) issued in
  ``(t - 365 d, t]`` and no loan default on or before ``t``;
- ``default_12m`` at ``t``: 1 if a loan of the SME has its default date in ``(t, t + horizon]``,
  else 0; missing (NA) for an *immature* row, whose window ends after the last date the data
  covers.

"The last date the data covers" (`data_range`) is the latest observed event date in the tables:
invoice issue, payment and confirmation dates, inventory snapshot dates, loan disbursement and
default dates, statement publication dates (given or period end + 120 days). Due and maturity
dates are promises, not observations, and do not count. Callers may pass it explicitly
(`data_end=`), e.g. the extraction date of a bank's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.contract import (
    DEFAULT_HORIZON_DAYS,
    FINANCIALS_PUBLICATION_LAG_DAYS,
    HORIZON_ATTR,
    Tables,
)
from features.exceptions import FeatureError
from features.own import META_COLUMNS, META_EVENT, NEVER, day_of, to_days
from features.reference import Reference, build_reference, feature_rows, sme_features
from features.scratch import sibling

__all__ = [
    "LABEL",
    "as_of_days",
    "build_features",
    "data_range",
    "finish_panel",
    "month_ends",
    "panel_columns",
    "panel_table",
    "sme_features",
    "write_panel",
    "write_row_groups",
]

LABEL = "default_12m"

_OBSERVED_DATES: dict[str, tuple[str, ...]] = {
    "invoices": ("issue_date", "paid_date", "confirmed_date"),
    "inventory": ("snapshot_date",),
    "loans": ("disbursed_date", "default_date"),
}


def data_range(tables: Tables) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(first, last) observed event date of the tables (see module docstring)."""
    lows: list[int] = []
    highs: list[int] = []
    frames = tables.frames()
    for table, columns in _OBSERVED_DATES.items():
        frame = frames[table]
        for column in columns:
            if column in frame and len(frame):
                days = to_days(frame[column])
                days = days[days < NEVER]
                if len(days):
                    lows.append(int(days.min()))
                    highs.append(int(days.max()))
    fin = tables.financials
    if len(fin):
        period = to_days(fin["period_end"])
        published = (
            to_days(fin["published_date"]) if "published_date" in fin else np.full(len(fin), NEVER)
        )
        published = np.where(
            published == NEVER, period + FINANCIALS_PUBLICATION_LAG_DAYS, published
        )
        lows.append(int(published.min()))
        highs.append(int(published.max()))
    if not lows:
        raise FeatureError(
            "the tables hold no dated event: no invoice, snapshot, loan or statement"
        )
    return _timestamp(min(lows)), _timestamp(max(highs))


def _timestamp(day: int) -> pd.Timestamp:
    return pd.Timestamp(np.datetime64(day, "D")).as_unit("ns")


def month_ends(start: object, end: object) -> list[pd.Timestamp]:
    """Every month end in [start, end]."""
    first, last = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()  # type: ignore[arg-type]
    return [d.as_unit("ns") for d in pd.date_range(first, last, freq="ME")]


def as_of_days(as_of_dates: Iterable[object], start: pd.Timestamp, end: pd.Timestamp) -> list[int]:
    """Sorted distinct as-of dates as int days; FeatureError if any is outside [start, end]."""
    days = sorted({day_of(d) for d in as_of_dates})
    if not days:
        raise FeatureError("no as-of date given")
    outside = [
        _timestamp(d).date().isoformat() for d in days if not day_of(start) <= d <= day_of(end)
    ]
    if outside:
        raise FeatureError(
            f"as-of date(s) {', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''} outside "
            f"the data's range {start.date().isoformat()} .. {end.date().isoformat()}"
        )
    return days


def panel_columns(reference: Reference) -> list[str]:
    """The panel's columns for data condensed into `reference`."""
    return ["sme_id", "as_of", *(f.name for f in reference.catalog()), LABEL]


def finish_panel(
    rows: pd.DataFrame,
    horizon_days: int,
    data_end: pd.Timestamp,
    keep: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Population rows of `feature_rows` -> the panel: label attached (NA when immature), meta
    columns dropped (but those in `keep`), ordered by (as_of, sme_id)."""
    if rows.empty:
        raise FeatureError(NO_POPULATION)
    rows = rows.sort_values(["as_of", "sme_id"], kind="stable").reset_index(drop=True)
    return _labelled(rows, horizon_days, data_end, keep)


NO_POPULATION = (
    "no SME is in the population at the as-of date(s): none has an invoice in the "
    "365 days before and no earlier default"
)


def _labelled(
    rows: pd.DataFrame, horizon_days: int, data_end: pd.Timestamp, keep: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Rows already in panel order -> panel rows: label attached, meta columns dropped."""
    mature = rows["as_of"] + pd.Timedelta(days=horizon_days) <= data_end
    label = rows[META_EVENT].astype("Int8").mask(~mature)
    panel = rows.drop(columns=[c for c in META_COLUMNS if c not in keep])
    panel[LABEL] = label
    panel.attrs[HORIZON_ATTR] = int(horizon_days)  # travels with the panel, in Parquet too
    return panel


def panel_plan(
    tables: Tables,
    as_of_dates: Iterable[object],
    horizon_days: int,
    reference: Reference | None,
    data_end: object | None,
) -> tuple[list[int], Reference, pd.Timestamp]:
    """What every engine resolves before computing a panel: the checked as-of days, the
    reference (built from `tables` when not given) and the last date the data covers."""
    if horizon_days < 1:
        raise FeatureError(f"horizon_days must be at least 1, got {horizon_days}")
    start, end = data_range(tables)
    if data_end is not None:
        end = pd.Timestamp(data_end).normalize().as_unit("ns")  # type: ignore[arg-type]
    days = as_of_days(as_of_dates, start, end)
    reference = build_reference(tables) if reference is None else reference
    return days, reference, end


def build_features(
    tables: Tables,
    as_of_dates: Iterable[object],
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    reference: Reference | None = None,
    data_end: object | None = None,
    on_date: Callable[[], object] | None = None,
) -> pd.DataFrame:
    """The feature panel (pandas engine): `sme_id`, `as_of`, every catalog feature in catalog
    order, `default_12m`; one row per SME in the population at each as-of date.

    `reference` defaults to `build_reference(tables)`; `data_end` to the last date the data
    covers (`data_range`). FeatureError for an as-of date outside the data's range or an empty
    population."""
    days, reference, end = panel_plan(tables, as_of_dates, horizon_days, reference, data_end)
    rows = feature_rows(
        tables,
        days,
        reference,
        horizon_days=horizon_days,
        population_only=True,
        on_date=on_date,
    )
    return finish_panel(rows, horizon_days, end)


def write_panel(panel: pd.DataFrame, out: str | Path) -> Path:
    """Write the panel to Parquet atomically: a temporary file beside `out`, then a rename; on
    any failure nothing is left at `out` (nor a temporary file)."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(target, ".tmp", folder=False)
    try:
        panel.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_row_groups(
    tables: Iterable[pa.Table], out: str | Path, *, on_table: Callable[[], object] | None = None
) -> int:
    """Write panel pieces (Arrow tables of one schema, e.g. from `panel_table`) to Parquet, one
    row group each, atomically (a temporary file beside `out`, then a rename; on any failure
    nothing is left); returns the number of rows. FeatureError, and no file, without rows."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(target, ".tmp", folder=False)
    rows = 0
    try:
        writer: pq.ParquetWriter | None = None
        try:
            for table in tables:
                if writer is None:
                    writer = pq.ParquetWriter(
                        tmp, table.schema, use_dictionary=_dictionary_columns(table.schema)
                    )
                if table.num_rows:
                    writer.write_table(table)
                    rows += table.num_rows
                if on_table is not None:
                    on_table()
        finally:
            if writer is not None:
                writer.close()
        if rows == 0:
            raise FeatureError(NO_POPULATION)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rows


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary encoding in a panel file: all but the floating-point ones.
    Their values are mostly distinct, so the writer would build each one's dictionary and then
    fall back to plain encoding (about twice the time of plain encoding, and a larger file).
    The encoding is invisible to readers: the file reads back to the same frame."""
    return [f.name for f in schema if not pa.types.is_floating(f.type)]


def panel_table(rows: pd.DataFrame, horizon_days: int, data_end: pd.Timestamp) -> pa.Table:
    """Population rows already in panel order (one date's, say) -> the panel's rows as Arrow,
    with the pandas metadata `write_panel` writes (dtypes, the horizon attribute)."""
    panel = _labelled(rows.reset_index(drop=True), horizon_days, data_end)
    table = pa.Table.from_pandas(panel, preserve_index=False)
    attrs = {b"PANDAS_ATTRS": json.dumps(panel.attrs).encode()}  # as DataFrame.to_parquet
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **attrs})
