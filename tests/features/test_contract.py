"""The data contract loader: every rule of data-contract.md, one bad input at a time.

Each case writes a small valid folder of CSV tables to tmp_path, applies one mutation and checks
the exact violations reported: table, 1-based file row, column and rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.contract import FINANCIALS_PUBLICATION_LAG_DAYS, TABLES, TABLES_BY_NAME
from features.exceptions import ContractError
from features.io import load_tables
from tests.support.contract_folder import (
    BASE,
    TODAY,
    Found,
    add_row,
    drop_column,
    read_rows,
    set_cell,
    to_parquet,
    violations,
    write_folder,
    write_rows,
)

# ---------------------------------------------------------------------------------------------
# the valid folder


def test_valid_folder_loads_typed_frames(tmp_path: Path) -> None:
    tables = load_tables(write_folder(tmp_path), today=TODAY)
    kinds = {"str": "str", "date": "datetime64[ns]", "float": "float64", "bool": "bool"}
    for table in TABLES:
        frame = getattr(tables, table.name)
        assert len(frame) == len(BASE[table.name]) - 1
        for col in table.columns:
            assert str(frame[col.name].dtype) == kinds[col.kind], (table.name, col.name)
    inv = tables.invoices
    assert inv["invoice_id"].tolist() == ["I1", "I2", "I3", "I4"]
    assert inv["disputed"].tolist() == [False, False, True, False]  # empty -> default False
    assert inv["issue_date"].iloc[0] == pd.Timestamp("2024-01-05")
    assert np.isnan(inv["paid_amount"].iloc[1]) and pd.isna(inv["paid_date"].iloc[1])
    assert inv["amount"].tolist() == [1000.5, 250.0, 999.0, 10.0]
    assert pd.isna(tables.enterprises["external_rating"].iloc[3])
    assert pd.isna(tables.loans["core_id"].iloc[2])
    assert tables.warnings == ()


def test_financials_published_date_defaults_to_period_end_plus_lag(tmp_path: Path) -> None:
    fin = load_tables(write_folder(tmp_path), today=TODAY).financials
    lag = pd.Timedelta(days=FINANCIALS_PUBLICATION_LAG_DAYS)
    assert fin["published_date"].tolist() == [
        pd.Timestamp("2023-12-31") + lag,
        pd.Timestamp("2024-03-01"),
    ]
    assert fin["current_ratio"].dtype == "float64" and fin["revenue"].dtype == "float64"


def test_parquet_folder_loads_the_same_frames(tmp_path: Path) -> None:
    csv_tables = load_tables(write_folder(tmp_path / "a"), today=TODAY)
    folder = tmp_path / "b"
    folder.mkdir()
    for name, frame in csv_tables.frames().items():
        frame.to_parquet(folder / f"{name}.parquet")
    pq_tables = load_tables(folder, today=TODAY)
    for name, frame in csv_tables.frames().items():
        pd.testing.assert_frame_equal(pq_tables.frames()[name], frame, check_dtype=True)


def test_optional_tables_and_columns_may_be_absent(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    for name in ("inventory", "loans", "financials"):
        (folder / f"{name}.csv").unlink()
    for column in ("industry", "region", "founded_date", "external_rating"):
        drop_column(folder, "enterprises", column)
    for column in ("paid_date", "paid_amount", "disputed", "confirmed_date"):
        drop_column(folder, "invoices", column)
    tables = load_tables(folder, today=TODAY)
    assert len(tables.loans) == 0 and tables.loans.columns[0] == "loan_id"
    assert tables.invoices["disputed"].tolist() == [False] * 4
    assert tables.invoices["paid_date"].isna().all()
    assert str(tables.enterprises["founded_date"].dtype) == "datetime64[ns]"


def test_unknown_file_is_ignored_with_a_warning(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "customers.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (folder / "notes.txt").write_text("hello", encoding="utf-8")
    (folder / "truth.parquet").write_bytes(b"the simulator's ground truth: known, not a table")
    tables = load_tables(folder, today=TODAY)
    assert tables.warnings == (
        "customers.csv: not a table of the data contract; ignored",
        "notes.txt: not a table of the data contract; ignored",
    )


def test_unknown_extra_column_is_kept_with_a_warning(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    rows = read_rows(folder / "invoices.csv")
    write_rows(
        folder / "invoices.csv",
        [[*r, v] for r, v in zip(rows, ["note", "a", "", "c", "d"], strict=True)],
    )
    tables = load_tables(folder, today=TODAY)
    assert tables.invoices["note"].tolist()[::2] == ["a", "c"]
    assert pd.isna(tables.invoices["note"].iloc[1])
    assert list(tables.invoices.columns)[-1] == "note"
    assert tables.warnings == (
        "invoices.csv: column 'note' is not in the data contract; kept, unused",
    )


def test_iso_dates_with_a_bom_and_quotes_load(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    text = (folder / "loans.csv").read_text(encoding="utf-8").replace("L1,", '"L1",')
    (folder / "loans.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    tables = load_tables(folder, today=TODAY)
    assert tables.loans["loan_id"].tolist() == ["L1", "L2", "L3"]


# ---------------------------------------------------------------------------------------------
# one bad input at a time

Mutation = Callable[[Path], None]


def _cell(table: str, row: int, column: str, value: str) -> Mutation:
    return lambda folder: set_cell(folder, table, row, column, value)


def _both(*mutations: Mutation) -> Mutation:
    def apply(folder: Path) -> None:
        for mutation in mutations:
            mutation(folder)

    return apply


def _write_bytes(name: str, data: bytes) -> Mutation:
    def apply(folder: Path) -> None:
        (folder / name).write_bytes(data)

    return apply


def _replace_line(table: str, line: int, text: bytes) -> Mutation:
    """Replace physical line `line` (0 = header) of a CSV file with raw bytes."""

    def apply(folder: Path) -> None:
        path = folder / f"{table}.csv"
        lines = path.read_bytes().split(b"\n")
        lines[line] = text
        path.write_bytes(b"\n".join(lines))

    return apply


def _parquet(table: str, **columns: tuple[Callable[[str], object], pa.DataType]) -> Mutation:
    return lambda folder: to_parquet(folder, table, columns)


def _parquet_timestamps(folder: Path) -> None:
    frame = load_tables(folder, today=TODAY).invoices
    frame.loc[2, "due_date"] = pd.Timestamp("2024-03-01 13:30").as_unit("ns")
    (folder / "invoices.csv").unlink()
    frame.to_parquet(folder / "invoices.parquet")


def _parquet_and_csv(folder: Path) -> None:
    load_tables(folder, today=TODAY).loans.to_parquet(folder / "loans.parquet")


REQUIRED_COLUMNS = [
    (table.name, col.name) for table in TABLES for col in table.columns if col.required
]

BAD_CELLS: list[tuple[str, Mutation, Found]] = [
    # enterprises
    ("role-unknown", _cell("enterprises", 2, "role", "bank"),
     ("enterprises", 2, "role", "must be one of: core, sme")),
    ("rating-off-scale", _cell("enterprises", 3, "external_rating", "AAAA"),
     ("enterprises", 3, "external_rating",
      "must be one of: AAA, AA+, AA, AA-, A+, A, A-, BBB+, BBB, BBB-, BB+, BB, BB-, B+, B, B-, "
      "CCC+, CCC, CCC-, CC, C, D")),
    ("founded-in-future", _cell("enterprises", 4, "founded_date", "2024-07-01"),
     ("enterprises", 4, "founded_date", "must not be after today (2024-06-30)")),
    ("duplicate-enterprise", lambda f: add_row(f, "enterprises", ["S1", "sme", "", "", "", ""]),
     ("enterprises", 6, "enterprise_id", "duplicate enterprise_id")),
    ("blank-enterprise-id", lambda f: add_row(f, "enterprises", ["  ", "sme", "", "", "", ""]),
     ("enterprises", 6, "enterprise_id", "must not be blank")),
    ("missing-role", _cell("enterprises", 5, "role", ""),
     ("enterprises", 5, "role", "required value missing")),
    # invoices: types and dates
    ("issue-date-slashes", _cell("invoices", 1, "issue_date", "2024/01/05"),
     ("invoices", 1, "issue_date", "not a date in the form YYYY-MM-DD")),
    ("due-date-feb-30", _cell("invoices", 2, "due_date", "2024-02-30"),
     ("invoices", 2, "due_date", "not a date in the form YYYY-MM-DD")),
    ("due-date-unpadded", _cell("invoices", 3, "due_date", "2024-3-1"),
     ("invoices", 3, "due_date", "not a date in the form YYYY-MM-DD")),
    ("date-out-of-range", _cell("invoices", 4, "confirmed_date", "1500-01-01"),
     ("invoices", 4, "confirmed_date", "date out of range 1678-01-01 .. 2261-12-31")),
    ("due-before-issue", _cell("invoices", 2, "due_date", "2024-01-09"),
     ("invoices", 2, "due_date", "must be >= issue_date")),
    ("paid-before-issue", _cell("invoices", 1, "paid_date", "2024-01-04"),
     ("invoices", 1, "paid_date", "must be >= issue_date")),
    ("paid-date-without-amount", _cell("invoices", 3, "paid_amount", ""),
     ("invoices", 3, "paid_amount", "required when paid_date is set")),
    ("amount-zero", _cell("invoices", 2, "amount", "0"), ("invoices", 2, "amount", "must be > 0")),
    ("amount-negative", _cell("invoices", 4, "amount", "-5.5"),
     ("invoices", 4, "amount", "must be > 0")),
    ("amount-nan", _cell("invoices", 1, "amount", "NaN"),
     ("invoices", 1, "amount", "must be finite (not NaN or inf)")),
    ("amount-inf", _cell("invoices", 3, "amount", "inf"),
     ("invoices", 3, "amount", "must be finite (not NaN or inf)")),
    ("amount-text", _cell("invoices", 2, "amount", "12,50"),
     ("invoices", 2, "amount", "not a number")),
    ("amount-missing", _cell("invoices", 4, "amount", ""),
     ("invoices", 4, "amount", "required value missing")),
    ("paid-amount-negative", _cell("invoices", 1, "paid_amount", "-1"),
     ("invoices", 1, "paid_amount", "must be >= 0")),
    ("paid-amount-minus-inf", _cell("invoices", 4, "paid_amount", "-inf"),
     ("invoices", 4, "paid_amount", "must be finite (not NaN or inf)")),
    ("disputed-not-bool", _cell("invoices", 2, "disputed", "maybe"),
     ("invoices", 2, "disputed", "not a boolean (true/false/1/0)")),
    ("duplicate-invoice", _cell("invoices", 3, "invoice_id", "I1"),
     ("invoices", 3, "invoice_id", "duplicate invoice_id")),
    # invoices: parties
    ("dangling-seller", _cell("invoices", 2, "seller_id", "S9"),
     ("invoices", 2, "seller_id", "not in enterprises")),
    ("dangling-buyer", _cell("invoices", 1, "buyer_id", "X1"),
     ("invoices", 1, "buyer_id", "not in enterprises")),
    ("two-cores", _cell("invoices", 3, "buyer_id", "C1"),
     ("invoices", 3, "buyer_id", "neither seller_id nor buyer_id is an SME")),
    ("seller-is-buyer", _cell("invoices", 4, "buyer_id", "S1"),
     ("invoices", 4, "buyer_id", "must differ from seller_id")),
    # inventory
    ("pledged-above-inventory", _cell("inventory", 1, "pledged_value", "5000.01"),
     ("inventory", 1, "pledged_value", "must be <= inventory_value")),
    ("pledged-negative", _cell("inventory", 3, "pledged_value", "-1"),
     ("inventory", 3, "pledged_value", "must be >= 0")),
    ("inventory-negative", _cell("inventory", 2, "inventory_value", "-0.5"),
     ("inventory", 2, "inventory_value", "must be >= 0")),
    ("inventory-of-a-core", _cell("inventory", 3, "sme_id", "C2"),
     ("inventory", 3, "sme_id", "must be an enterprise with role sme")),
    ("inventory-dangling-sme", _cell("inventory", 2, "sme_id", "S7"),
     ("inventory", 2, "sme_id", "not in enterprises")),
    ("duplicate-snapshot", _cell("inventory", 2, "snapshot_date", "2024-01-31"),
     ("inventory", 2, "sme_id, snapshot_date", "duplicate sme_id, snapshot_date")),
    # loans
    ("product-unknown", _cell("loans", 1, "product", "factoring"),
     ("loans", 1, "product",
      "must be one of: receivable_financing, inventory_pledge, prepayment")),
    ("loan-core-is-sme", _cell("loans", 2, "core_id", "S2"),
     ("loans", 2, "core_id", "must be an enterprise with role core")),
    ("loan-of-a-core", _cell("loans", 3, "sme_id", "C1"),
     ("loans", 3, "sme_id", "must be an enterprise with role sme")),
    ("loan-dangling-sme", _cell("loans", 1, "sme_id", "S404"),
     ("loans", 1, "sme_id", "not in enterprises")),
    ("maturity-before-disbursed", _cell("loans", 3, "maturity_date", "2024-01-31"),
     ("loans", 3, "maturity_date", "must be >= disbursed_date")),
    ("default-before-disbursed", _cell("loans", 2, "default_date", "2024-01-31"),
     ("loans", 2, "default_date", "must be >= disbursed_date")),
    ("loan-amount-zero", _cell("loans", 1, "amount", "0"), ("loans", 1, "amount", "must be > 0")),
    ("duplicate-loan", _cell("loans", 2, "loan_id", "L1"),
     ("loans", 2, "loan_id", "duplicate loan_id")),
    ("guarantee-not-bool", _cell("loans", 1, "repurchase_guarantee", "yes"),
     ("loans", 1, "repurchase_guarantee", "not a boolean (true/false/1/0)")),
    # financials
    ("financials-extra-not-numeric", _cell("financials", 2, "current_ratio", "high"),
     ("financials", 2, "current_ratio", "not a number")),
    ("financials-extra-inf", _cell("financials", 1, "revenue", "Infinity"),
     ("financials", 1, "revenue", "must be finite (not NaN or inf)")),
    ("financials-of-a-core", _cell("financials", 1, "sme_id", "C1"),
     ("financials", 1, "sme_id", "must be an enterprise with role sme")),
    ("duplicate-period", _cell("financials", 2, "sme_id", "S1"),
     ("financials", 2, "sme_id, period_end", "duplicate sme_id, period_end")),
    # files
    ("required-table-missing", lambda f: (f / "enterprises.csv").unlink(),
     ("enterprises", None, None,
      "required table missing: expected enterprises.csv or enterprises.parquet")),
    ("empty-file", _write_bytes("invoices.csv", b""),
     ("invoices", None, None, "invoices.csv is an empty file (no header row)")),
    ("header-only", _write_bytes("invoices.csv", b"invoice_id,seller_id,buyer_id,issue_date,"
                                 b"due_date,amount\n"),
     ("invoices", None, None, "no data rows: this table is required and needs at least one")),
    ("non-utf8-cell", _replace_line("enterprises", 3, b"S1,sme,p\xe4rts,north,2010-03-15,BB"),
     ("enterprises", 3, "industry", "not valid UTF-8")),
    ("non-utf8-header", _replace_line("loans", 0, b"loan_id,sme_id,pr\xf6duct"),
     ("loans", None, None, "header of loans.csv is not valid UTF-8 (byte offset 17)")),
    ("ragged-row-short", _replace_line("invoices", 2, b"I2,S2,C1,2024-01-10,2024-02-10,250"),
     ("invoices", 2, None, "wrong number of fields: expected 10, got 6")),
    ("ragged-row-long", _replace_line("inventory", 3, b"S3,2024-01-31,800,800,50,7"),
     ("inventory", 3, None, "wrong number of fields: expected 5, got 6")),
    ("repeated-header-column", _replace_line("loans", 0, b"loan_id,sme_id,product,core_id,"
                                             b"disbursed_date,maturity_date,amount,amount,"
                                             b"repurchase_guarantee"),
     ("loans", None, "amount", "column appears more than once in the header")),
    ("csv-and-parquet", _parquet_and_csv,
     ("loans", None, None, "both loans.csv and loans.parquet present: keep only one")),
    ("parquet-dates-as-ints",
     _parquet("loans", disbursed_date=(lambda v: int(v.replace("-", "")), pa.int64())),
     ("loans", None, "disbursed_date", "wrong type: expected a date (YYYY-MM-DD), got int64")),
    ("parquet-ids-as-ints", _parquet("inventory", sme_id=(lambda v: int(v[1:]), pa.int64())),
     ("inventory", None, "sme_id", "wrong type: expected text, got int64")),
    ("parquet-number-as-bool", _parquet("inventory", cogs=(bool, pa.bool_())),
     ("inventory", None, "cogs", "wrong type: expected a number, got bool")),
    ("parquet-amount-text", _both(_cell("invoices", 2, "amount", "lots"), _parquet("invoices")),
     ("invoices", 2, "amount", "not a number")),
    ("parquet-bad-date-text", _both(_cell("loans", 3, "maturity_date", "31.12.2024"),
                                    _parquet("loans")),
     ("loans", 3, "maturity_date", "not a date in the form YYYY-MM-DD")),
    ("parquet-nan-amount",
     _parquet("loans", amount=(lambda v: float("nan" if v == "800" else v), pa.float64())),
     ("loans", 1, "amount", "must be finite (not NaN or inf)")),
    ("parquet-time-of-day", _parquet_timestamps,
     ("invoices", 3, "due_date", "has a time of day: expected a calendar date")),
]  # fmt: skip


@pytest.mark.parametrize(("table", "column"), REQUIRED_COLUMNS)
def test_each_missing_required_column(tmp_path: Path, table: str, column: str) -> None:
    folder = write_folder(tmp_path)
    drop_column(folder, table, column)
    assert violations(folder) == [(table, None, column, "required column missing")]


@pytest.mark.parametrize(
    ("mutation", "expected"), [c[1:] for c in BAD_CELLS], ids=[c[0] for c in BAD_CELLS]
)
def test_one_bad_input_one_exact_violation(
    tmp_path: Path, mutation: Mutation, expected: Found
) -> None:
    folder = write_folder(tmp_path)
    mutation(folder)
    assert violations(folder) == [expected]


def test_there_are_at_least_thirty_distinct_bad_inputs() -> None:
    assert len({c[0] for c in BAD_CELLS}) == len(BAD_CELLS) >= 30
    assert len(REQUIRED_COLUMNS) == sum(
        c.required for t in TABLES_BY_NAME.values() for c in t.columns
    )


def test_violation_carries_the_offending_value(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    set_cell(folder, "invoices", 2, "due_date", "2024-01-09")
    set_cell(folder, "invoices", 3, "invoice_id", "I1")
    set_cell(folder, "inventory", 3, "sme_id", "C2")
    with pytest.raises(ContractError) as info:
        load_tables(folder, today=TODAY)
    values = [v.value for v in info.value.violations]
    assert values == [
        "2024-01-09 (issue_date 2024-01-10)",
        "I1 (first at line 2, data row 1)",
        "C2 (role core)",
    ]
    shown = str(info.value)
    assert "invoices, line 3 (data row 2), column due_date: must be >= issue_date" in shown


def test_many_violations_are_collected_at_once(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    set_cell(folder, "loans", 1, "product", "factoring")
    set_cell(folder, "invoices", 4, "amount", "-1")
    set_cell(folder, "invoices", 1, "seller_id", "S9")
    set_cell(folder, "invoices", 1, "due_date", "soon")
    set_cell(folder, "enterprises", 1, "role", "CORE")
    drop_column(folder, "inventory", "inventory_value")
    (folder / "financials.csv").write_bytes(b"")
    found = violations(folder)
    assert found == [  # in table order, then file order, then column order
        ("enterprises", 1, "role", "must be one of: core, sme"),
        ("invoices", 1, "seller_id", "not in enterprises"),
        ("invoices", 1, "due_date", "not a date in the form YYYY-MM-DD"),
        ("invoices", 4, "amount", "must be > 0"),
        ("inventory", None, "inventory_value", "required column missing"),
        ("loans", 1, "product", "must be one of: receivable_financing, inventory_pledge, "
         "prepayment"),
        ("financials", None, None, "financials.csv is an empty file (no header row)"),
    ]  # fmt: skip


def test_the_cap_keeps_the_first_violations_and_counts_them_all(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    header = BASE["invoices"][0]
    rows = [[f"I{i}", "S1", "C1", "2024-01-05", "2024-01-01", "-1", "", "", "", ""]
            for i in range(1, 51)]  # fmt: skip
    write_rows(folder / "invoices.csv", [header, *rows])
    with pytest.raises(ContractError) as info:
        load_tables(folder, max_violations=7, today=TODAY)
    err = info.value
    assert err.total == 100  # 50 due dates before issue + 50 amounts <= 0
    assert len(err.violations) == 7
    assert [(v.row, v.column) for v in err.violations[:4]] == [
        (1, "due_date"),
        (1, "amount"),
        (2, "due_date"),
        (2, "amount"),
    ]
    assert str(err).startswith("100 data contract violation(s):")
    assert str(err).endswith("... and 93 more violations")


def test_rows_after_a_ragged_row_keep_their_file_numbers(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    set_cell(folder, "invoices", 4, "amount", "0")
    _replace_line("invoices", 2, b"I2,S2")(folder)
    _replace_line("invoices", 1, b"I1,S1,C1,2024-01-05,x,y,z,w,v,u,t,s")(folder)
    assert violations(folder) == [
        ("invoices", 1, None, "wrong number of fields: expected 10, got 12"),
        ("invoices", 2, None, "wrong number of fields: expected 10, got 2"),
        ("invoices", 4, "amount", "must be > 0"),
    ]


def test_an_empty_row_inside_a_file_is_reported_once(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    _replace_line("loans", 2, b"")(folder)
    _replace_line("inventory", 1, b",,,,")(folder)
    assert violations(folder) == [
        ("inventory", 1, None, "empty row (no values)"),
        ("loans", 2, None, "empty row (no values)"),
    ]


def test_crlf_line_ends_and_blank_lines_at_the_end_are_fine(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    for path in folder.glob("*.csv"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\n")
    tables = load_tables(folder, today=TODAY)
    assert tables.loans["loan_id"].tolist() == ["L1", "L2", "L3"]
    assert tables.financials["revenue"].iloc[0] == 120000.0


def test_a_duplicate_points_at_the_first_row_with_that_key(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    set_cell(folder, "invoices", 3, "invoice_id", "I2")
    set_cell(folder, "invoices", 4, "invoice_id", "I2")
    with pytest.raises(ContractError) as info:
        load_tables(folder, today=TODAY)
    assert [(v.row, v.value) for v in info.value.violations] == [
        (3, "I2 (first at line 3, data row 2)"),
        (4, "I2 (first at line 3, data row 2)"),
    ]


def test_non_utf8_in_an_extra_column_is_an_error(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    rows = (folder / "loans.csv").read_bytes().split(b"\n")
    rows = [
        r + (b",note" if i == 0 else b",\xff" if i == 3 else b",ok") for i, r in enumerate(rows)
    ]
    (folder / "loans.csv").write_bytes(b"\n".join(rows[:-1]) + b"\n")
    assert violations(folder) == [("loans", 3, "note", "not valid UTF-8")]


def test_unreadable_parquet_file(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "loans.csv").unlink()
    (folder / "loans.parquet").write_bytes(b"PAR1 this is not really parquet")
    [(table, row, column, rule)] = violations(folder)
    assert (table, row, column) == ("loans", None, None)
    assert rule.startswith("unreadable Parquet file loans.parquet:")


def test_missing_folder_is_a_contract_error(tmp_path: Path) -> None:
    assert violations(tmp_path / "nowhere") == [
        (str(tmp_path / "nowhere"), None, None, "data folder not found")
    ]


def test_max_violations_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_violations"):
        load_tables(write_folder(tmp_path), max_violations=0)


# ---------------------------------------------------------------------------------------------
# many rows: files read in many blocks (CSV) or row groups (Parquet)


def test_many_blocks_keep_exact_rows_in_csv(tmp_path: Path) -> None:
    from bench.bench_contract import write_folder as write_large

    folder = tmp_path / "large"
    write_large(folder, "csv", n_invoices=120_000, seed=5)
    path = folder / "invoices.csv"
    lines = path.read_bytes().split(b"\n")  # line r is data row r

    def cells(row: int) -> list[bytes]:
        return lines[row].split(b",")

    first_id = cells(3)[0]
    fixes = {
        70_001: [cells(70_001)[0], b'"S\xff"', *cells(70_001)[2:]],
        90_000: cells(90_000)[:-1],
        110_000: [*cells(110_000)[:4], b"2024-02-30", *cells(110_000)[5:]],
        115_000: [first_id, *cells(115_000)[1:]],
        119_999: [*cells(119_999)[:2], b'"S9999999"', *cells(119_999)[3:]],
    }
    for row, fields in fixes.items():
        lines[row] = b",".join(fields)
    path.write_bytes(b"\n".join(lines))
    assert violations(folder) == [
        ("invoices", 70_001, "seller_id", "not valid UTF-8"),
        ("invoices", 90_000, None, "wrong number of fields: expected 10, got 9"),
        ("invoices", 110_000, "due_date", "not a date in the form YYYY-MM-DD"),
        ("invoices", 115_000, "invoice_id", "duplicate invoice_id"),
        ("invoices", 119_999, "buyer_id", "not in enterprises"),
    ]


def test_many_row_groups_keep_exact_rows_in_parquet(tmp_path: Path) -> None:
    from bench.bench_contract import write_folder as write_large

    folder = tmp_path / "large"
    write_large(folder, "parquet", n_invoices=100_000, seed=6)
    tables = load_tables(folder, today=TODAY)
    assert len(tables.invoices) == 100_000 and len(tables.enterprises) > 100_000
    invoices = pq.read_table(folder / "invoices.parquet").to_pandas()
    invoices.loc[55_554, "amount"] = -1.0
    invoices.loc[99_999, "invoice_id"] = invoices.loc[0, "invoice_id"]
    pq.write_table(
        pa.Table.from_pandas(invoices), folder / "invoices.parquet", row_group_size=20_000
    )
    assert violations(folder) == [
        ("invoices", 55_555, "amount", "must be > 0"),
        ("invoices", 100_000, "invoice_id", "duplicate invoice_id"),
    ]
