"""A small valid data folder of CSV tables, and the helpers that mutate it one cell at a time."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.exceptions import ContractError
from features.io import load_tables

TODAY = dt.date(2024, 6, 30)

BASE: dict[str, list[list[str]]] = {
    "enterprises": [
        ["enterprise_id", "role", "industry", "region", "founded_date", "external_rating"],
        ["C1", "core", "steel", "north", "1990-05-01", "AA"],
        ["C2", "core", "autos", "south", "1985-01-01", "A+"],
        ["S1", "sme", "parts", "north", "2010-03-15", "BB"],
        ["S2", "sme", "parts", "south", "2015-07-01", ""],
        ["S3", "sme", "retail", "east", "", "B+"],
    ],
    "invoices": [
        [
            "invoice_id", "seller_id", "buyer_id", "issue_date", "due_date", "amount",
            "paid_date", "paid_amount", "disputed", "confirmed_date",
        ],
        ["I1", "S1", "C1", "2024-01-05", "2024-03-05", "1000.5", "2024-03-01", "1000.5", "false",
         "2024-01-10"],
        ["I2", "S2", "C1", "2024-01-10", "2024-02-10", "250", "", "", "", ""],
        ["I3", "C2", "S3", "2024-02-01", "2024-03-01", "999", "2024-03-15", "900", "true", ""],
        ["I4", "S1", "S2", "2024-02-03", "2024-02-28", "10", "2024-02-28", "10", "0", ""],
    ],
    "inventory": [
        ["sme_id", "snapshot_date", "inventory_value", "pledged_value", "cogs"],
        ["S1", "2024-01-31", "5000", "1000", "300"],
        ["S1", "2024-02-29", "5200", "", ""],
        ["S3", "2024-01-31", "800", "800", "50"],
    ],
    "loans": [
        [
            "loan_id", "sme_id", "product", "core_id", "disbursed_date", "maturity_date", "amount",
            "default_date", "repurchase_guarantee",
        ],
        ["L1", "S1", "receivable_financing", "C1", "2024-01-15", "2024-04-15", "800", "", "false"],
        ["L2", "S3", "prepayment", "C2", "2024-02-01", "2024-05-01", "500", "2024-06-01", "true"],
        ["L3", "S2", "inventory_pledge", "", "2024-02-01", "2024-08-01", "300", "", ""],
    ],
    "financials": [
        ["sme_id", "period_end", "published_date", "current_ratio", "revenue"],
        ["S1", "2023-12-31", "", "1.4", "120000"],
        ["S2", "2023-12-31", "2024-03-01", "0.9", ""],
    ],
}  # fmt: skip


def write_folder(root: Path, tables: dict[str, list[list[str]]] | None = None) -> Path:
    """Write the valid base folder (or `tables`) as CSV files under `root / "data"`."""
    folder = root / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (BASE if tables is None else tables).items():
        write_rows(folder / f"{name}.csv", rows)
    return folder


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def set_cell(folder: Path, table: str, row: int, column: str, value: str) -> None:
    """Set one cell; `row` is the 1-based data row (header excluded)."""
    rows = read_rows(folder / f"{table}.csv")
    rows[row][rows[0].index(column)] = value
    write_rows(folder / f"{table}.csv", rows)


def drop_column(folder: Path, table: str, column: str) -> None:
    rows = read_rows(folder / f"{table}.csv")
    at = rows[0].index(column)
    write_rows(folder / f"{table}.csv", [r[:at] + r[at + 1 :] for r in rows])


def add_row(folder: Path, table: str, row: list[str]) -> None:
    rows = read_rows(folder / f"{table}.csv")
    write_rows(folder / f"{table}.csv", [*rows, row])


def to_parquet(
    folder: Path, table: str, columns: dict[str, tuple[Callable[[str], object], pa.DataType]]
) -> None:
    """Replace NAME.csv by NAME.parquet; the named columns converted cell by cell and typed."""
    rows = read_rows(folder / f"{table}.csv")
    (folder / f"{table}.csv").unlink()
    header, body = rows[0], rows[1:]
    arrays = {}
    for i, name in enumerate(header):
        convert, kind = columns.get(name, (str, pa.string()))
        arrays[name] = pa.array([convert(r[i]) if r[i] else None for r in body], type=kind)
    pq.write_table(pa.table(arrays), folder / f"{table}.parquet")


Found = tuple[str, int | None, str | None, str]


def violations(folder: Path, **kwargs: object) -> list[Found]:
    """The (table, row, column, rule) of every violation `load_tables` reports."""
    with pytest.raises(ContractError) as info:
        load_tables(folder, today=TODAY, **kwargs)  # type: ignore[arg-type]
    return [(v.table, v.row, v.column, v.rule) for v in info.value.violations]


def history() -> dict[str, pd.DataFrame]:
    """SME S1's own rows, as JSON lists parsed into frames (dates as text, ids as text)."""
    return {
        "invoices": pd.DataFrame(
            [
                {"invoice_id": "I1", "seller_id": "S1", "buyer_id": "C9",
                 "issue_date": "2024-01-05", "due_date": "2024-02-05", "amount": 120.0,
                 "paid_date": "2024-02-01", "paid_amount": 120.0, "disputed": False},
                {"invoice_id": "I2", "seller_id": "X7", "buyer_id": "S1",
                 "issue_date": "2024-01-09", "due_date": "2024-03-09", "amount": 80.5,
                 "paid_date": None, "paid_amount": None, "disputed": None},
            ]
        ),
        "loans": pd.DataFrame(
            [
                {"loan_id": "L1", "sme_id": "S1", "product": "receivable_financing",
                 "core_id": "C9", "disbursed_date": "2024-01-10", "maturity_date": "2024-04-10",
                 "amount": 100.0},
            ]
        ),
    }  # fmt: skip
