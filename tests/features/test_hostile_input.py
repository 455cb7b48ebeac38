"""Hostile input to the data loader: every case is a `ContractError` naming table, row and column,
never a traceback, a long computation or an echo of what a file happens to hold (issue 14)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.contract import FINANCIALS_COLUMN_PATTERN, MAX_EXTRA_COLUMNS
from features.exceptions import ContractError, Violation
from features.io import MAX_HEADER_BYTES, load_tables, validate_frames
from tests.support.contract_folder import (
    BASE,
    TODAY,
    history,
    read_rows,
    set_cell,
    violations,
    write_folder,
    write_rows,
)

NAME_RULE = (
    f"column name must match {FINANCIALS_COLUMN_PATTERN} (a lower case letter, then at most 63 "
    "lower case letters, digits or _): it becomes a feature name"
)


def error(folder: Path) -> ContractError:
    with pytest.raises(ContractError) as info:
        load_tables(folder, today=TODAY)
    return info.value


def history_error(raw: dict[str, pd.DataFrame]) -> ContractError:
    with pytest.raises(ContractError) as info:
        validate_frames(raw, history_of="S1", today=TODAY)
    return info.value


def financials_row(extra: int) -> pd.DataFrame:
    row: dict[str, object] = {"sme_id": "S1", "period_end": "2023-12-31"}
    row.update({f"c{i}": 1.0 for i in range(extra)})
    return pd.DataFrame([row])


def too_many(extra: int) -> Violation:
    rule = f"too many columns: {extra} beyond the 3 declared ones; at most 200 are allowed"
    return Violation("financials", None, None, rule)


# ---------------------------------------------------------------------------------------------
# denial of service: many columns


def test_sixty_thousand_extra_columns_in_a_history_are_refused_at_once() -> None:
    raw = {**history(), "financials": financials_row(60_000)}
    started = time.process_time()
    err = history_error(raw)
    spent = time.process_time() - started
    assert err.violations == [too_many(60_000)]
    assert spent < 5.0  # loose: before the fix this took about a minute of CPU


@pytest.mark.parametrize(("extra", "refused"), [(MAX_EXTRA_COLUMNS, False), (201, True)])
def test_the_cap_on_extra_columns_is_exact(extra: int, refused: bool) -> None:
    raw = {**history(), "financials": financials_row(extra)}
    if refused:
        assert history_error(raw).violations == [too_many(extra)]
    else:
        tables = validate_frames(raw, history_of="S1", today=TODAY)
        assert tables.financials.shape == (1, 3 + extra)


def test_too_many_extra_columns_in_a_csv_file_are_refused(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    rows = read_rows(folder / "invoices.csv")
    extra = [f"note{i}" for i in range(250)]
    write_rows(folder / "invoices.csv", [rows[0] + extra] + [r + [""] * 250 for r in rows[1:]])
    rule = "too many columns: 250 beyond the 10 declared ones; at most 200 are allowed"
    assert violations(folder) == [("invoices", None, None, rule)]


def test_thousands_of_repeated_column_names_are_found_in_linear_time() -> None:
    frame = pd.DataFrame([["S1"] * 40_000 + ["2023-12-31"]], columns=["sme_id"] * 40_000 + ["x"])
    frame = frame.rename(columns={"x": "period_end"})
    started = time.process_time()
    err = history_error({**history(), "financials": frame})
    assert time.process_time() - started < 5.0  # loose: quadratic counting took minutes
    assert err.violations == [
        Violation("financials", None, "sme_id", "column appears more than once")
    ]


# ---------------------------------------------------------------------------------------------
# financials column names become feature names


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("spa ce", "spa ce"),
        ("a\0b", "a\\x00b"),
        ("=cmd", "=cmd"),
        ("Revenue", "Revenue"),
        ("1st_half", "1st_half"),
        ("x" * 65, "x" * 65),
    ],
)
def test_a_financials_column_name_must_fit_a_feature_name(
    tmp_path: Path, name: str, shown: str
) -> None:
    folder = write_folder(tmp_path)
    rows = read_rows(folder / "financials.csv")
    write_rows(folder / "financials.csv", [[*rows[0], name]] + [[*r, "1"] for r in rows[1:]])
    assert violations(folder) == [("financials", None, shown, NAME_RULE)]
    frame = financials_row(0).assign(**{name: [1.0]})
    assert history_error({**history(), "financials": frame}).violations == [
        Violation("financials", None, shown, NAME_RULE)
    ]


def test_a_trailing_line_break_does_not_slip_past_the_name_pattern() -> None:
    frame = financials_row(0).assign(**{"ok\n": [1.0]})
    assert history_error({**history(), "financials": frame}).violations == [
        Violation("financials", None, "ok\\n", NAME_RULE)
    ]


def test_financials_column_names_that_fit_load(tmp_path: Path) -> None:
    frame = financials_row(0).assign(current_ratio_2=[1.5], **{"x" * 64: [2.0]})
    tables = validate_frames({**history(), "financials": frame}, history_of="S1", today=TODAY)
    assert tables.financials["current_ratio_2"].tolist() == [1.5]


# ---------------------------------------------------------------------------------------------
# tracebacks that became violations


def test_a_header_only_enterprises_file_is_a_violation(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    write_rows(folder / "enterprises.csv", BASE["enterprises"][:1])
    found = violations(folder)
    assert found[0] == (
        "enterprises",
        None,
        None,
        "no data rows: this table is required and needs at least one",
    )
    assert ("invoices", 1, "seller_id", "not in enterprises") in found


@pytest.mark.parametrize("table", ["inventory", "loans", "financials"])
def test_a_header_only_optional_table_loads_empty(tmp_path: Path, table: str) -> None:
    folder = write_folder(tmp_path)
    write_rows(folder / f"{table}.csv", BASE[table][:1])
    assert len(load_tables(folder, today=TODAY).frames()[table]) == 0


def test_an_unterminated_quote_is_reported_where_it_starts(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    path = folder / "invoices.csv"
    path.write_bytes(path.read_bytes().replace(b"\nI2,", b'\n"I2,', 1))
    err = error(folder)
    rule = (
        "a quoted value runs from line 3 to line 5: unterminated quote? "
        "(line breaks are not allowed inside values)"
    )
    assert [(v.table, v.row, v.line, v.rule) for v in err.violations] == [("invoices", 2, 3, rule)]
    assert str(err).splitlines()[1].startswith("invoices, line 3 (data row 2): a quoted value")


def test_an_unterminated_quote_on_the_last_line(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    path = folder / "invoices.csv"
    path.write_bytes(path.read_bytes() + b'"I5,S1,C1')
    rule = 'unterminated quote: a value opened with " is not closed on line 6'
    assert [(v.row, v.line, v.rule) for v in error(folder).violations] == [(5, 6, rule)]


def test_an_unterminated_quote_in_the_header(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    path = folder / "loans.csv"
    path.write_bytes(b'"' + path.read_bytes())
    rule = "header of loans.csv is not valid CSV: unexpected end of data"
    assert violations(folder) == [("loans", None, None, rule)]


def test_an_unterminated_quote_in_a_large_file_is_found(tmp_path: Path) -> None:
    """Large enough for the multi-threaded reader's blocks, which do not follow quotes."""
    folder = write_folder(tmp_path)
    header, row = BASE["invoices"][0], BASE["invoices"][2]
    rows = [[f"I{i}", *row[1:]] for i in range(1, 40_001)]
    rows[29_999][1] = '"S2'  # data row 30000, line 30001
    write_rows(folder / "invoices.csv", [header, *rows])
    text = (folder / "invoices.csv").read_bytes().replace(b'"""S2"', b'"S2')
    (folder / "invoices.csv").write_bytes(text)
    first = error(folder).violations[0]
    assert (first.table, first.row, first.line) == ("invoices", 30_000, 30_001)
    assert "line break" in first.rule or "unterminated quote" in first.rule


def test_a_line_break_inside_a_quoted_value_moves_the_later_lines(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    set_cell(folder, "invoices", 2, "invoice_id", "I2\nstill I2")
    set_cell(folder, "invoices", 4, "amount", "0")
    err = error(folder)
    assert [(v.row, v.line, v.column, v.rule) for v in err.violations] == [
        (2, 3, "invoice_id", "line break inside a value: unterminated quote? "
         "(line breaks are not allowed in values)"),
        (4, 6, "amount", "must be > 0"),
    ]  # fmt: skip
    assert "invoices, line 6 (data row 4), column amount: must be > 0: '0.0'" in str(err)


def test_violations_name_the_line_and_the_data_row(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    header, row = BASE["invoices"][0], BASE["invoices"][2]
    rows = [[f"I{i}", *row[1:]] for i in range(1, 13)]
    rows[10][5] = "-1"  # data row 11
    write_rows(folder / "invoices.csv", [header, *rows])
    err = error(folder)
    assert str(err).splitlines()[1] == (
        "invoices, line 12 (data row 11), column amount: must be > 0: '-1.0'"
    )


def write_parquet_invoices(folder: Path, column: str, values: pa.Array) -> None:
    rows = read_rows(folder / "invoices.csv")
    (folder / "invoices.csv").unlink()
    header, body = rows[0], rows[1:]
    arrays = {n: pa.array([r[i] or None for r in body]) for i, n in enumerate(header)}
    arrays[column] = values
    pq.write_table(pa.table(arrays), folder / "invoices.parquet")


BIG = 2**63 - 1


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("amount", pa.array([BIG, 250, 999, 10], pa.int64()),
         [(1, "amount", "integer too large to hold exactly as a number "
           "(more than 9007199254740992 in size)", "9223372036854775807")]),
        ("due_date", pa.array([BIG] * 4, pa.int64()),
         [(None, "due_date", "wrong type: expected a date (YYYY-MM-DD), got int64", None)]),
        ("confirmed_date", pa.array([BIG, None, None, None], pa.timestamp("ms")),
         [(1, "confirmed_date", "has a time of day: expected a calendar date",
           "9223372036854775807 (stored as timestamp[ms])")]),
        ("confirmed_date", pa.array([2**31 - 1, None, None, None], pa.date32()),
         [(1, "confirmed_date", "date out of range 1678-01-01 .. 2261-12-31",
           "2147483647 (stored as date32[day])")]),
    ],
    ids=["int64-amount", "int64-date", "timestamp-date", "date32-date"],
)  # fmt: skip
def test_extreme_parquet_integers_are_violations(
    tmp_path: Path, column: str, values: pa.Array, expected: list[tuple[object, ...]]
) -> None:
    folder = write_folder(tmp_path)
    write_parquet_invoices(folder, column, values)
    err = error(folder)
    assert [(v.row, v.column, v.rule, v.value) for v in err.violations] == expected
    assert all(v.table == "invoices" and v.line is None for v in err.violations)


@pytest.mark.parametrize("shape", ["one-long-name", "many-names"])
def test_a_csv_header_over_the_limit_is_a_violation(tmp_path: Path, shape: str) -> None:
    folder = write_folder(tmp_path)
    path = folder / "loans.csv"
    names = ["x" * (MAX_HEADER_BYTES + 10)] if shape == "one-long-name" else [
        f"c{i}" for i in range(MAX_HEADER_BYTES // 4)
    ]  # fmt: skip
    path.write_bytes(",".join(names).encode() + b"\n" + path.read_bytes())
    rule = "header of loans.csv is longer than 131072 bytes (the longest read)"
    assert violations(folder) == [("loans", None, None, rule)]
    assert len(str(error(folder))) < 300


# ---------------------------------------------------------------------------------------------
# files that are not what they claim to be


def test_a_symlink_to_a_system_file_is_refused_and_not_echoed(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "invoices.csv").unlink()
    os.symlink("/etc/passwd", folder / "invoices.csv")
    err = error(folder)
    rule = "invoices.csv is a symbolic link: input files must be regular files (links are not read)"
    assert [(v.table, v.row, v.column, v.rule) for v in err.violations] == [
        ("invoices", None, None, rule)
    ]
    assert "root" not in str(err)


def test_a_symlink_to_a_valid_table_is_refused_too(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "loans.csv").rename(tmp_path / "elsewhere.csv")
    os.symlink(tmp_path / "elsewhere.csv", folder / "loans.csv")
    rule = "loans.csv is a symbolic link: input files must be regular files (links are not read)"
    assert violations(folder) == [("loans", None, None, rule)]


def test_a_fifo_named_like_a_table_is_refused_without_reading(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "inventory.csv").unlink()
    os.mkfifo(folder / "inventory.csv")
    rule = "inventory.csv is not a regular file: input files must be regular files"
    assert violations(folder) == [("inventory", None, None, rule)]


def test_a_long_bad_row_is_shown_as_a_short_escaped_excerpt(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    path = folder / "loans.csv"
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"L2,\x1b[2J" + b"A" * 10_000 + b",x"
    path.write_bytes(b"\n".join(lines))
    [only] = error(folder).violations
    assert (only.row, only.line) == (2, 3)
    assert only.value is not None and len(only.value) <= 83 and only.value.endswith("...")
    shown = str(error(folder))
    assert "\x1b" not in shown and "\\x1b[2J" in shown and len(shown) < 300


def test_a_hostile_column_name_cannot_forge_lines_in_a_message() -> None:
    name = "x\ninvoices, row 1, column amount: forged"
    frame = financials_row(0).assign(**{name: [1.0]})
    err = history_error({**history(), "financials": frame})
    assert str(err).count("\n") == 1  # the count line, then one violation
    assert err.violations[0].column == "x\\ninvoices, row 1, column amount: forged"


@pytest.mark.parametrize("file", ["Invoices.csv", "INVOICES.CSV", "invoices.CSV"])
def test_a_table_name_in_another_case_gets_a_hint(tmp_path: Path, file: str) -> None:
    folder = write_folder(tmp_path)
    (folder / "invoices.csv").rename(folder / file)
    rule = f"found {file}; table names are lower case: rename it to invoices.csv"
    assert violations(folder) == [("invoices", None, None, rule)]
