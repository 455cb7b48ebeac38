"""Read and check the data contract's tables (shared/docs/data-contract.md, `features.contract`).

`load_tables(folder)` reads `NAME.csv` or `NAME.parquet` for every table of the contract and hands
the columns to the same checks as `validate_frames(raw)`, which validates in-memory frames (a
scoring request's `history`). Both return typed frames (`features.contract.Tables`) or raise
`ContractError` carrying every violation found (the first `max_violations` of them, listed by
table, row and column, with the total count): nothing half-checked is ever returned. What was
ignored (unknown files, unknown extra columns) is listed in `Tables.warnings`.

Row numbers: a violation's `row` is the 1-based number of the data row as it is in the file, the
header not counted (row 1 is the line after a CSV's header, or a Parquet file's first row; for
in-memory frames the 1-based position in each frame, whatever its index). A CSV row skipped for
having the wrong number of fields keeps its number, so the rows after it keep theirs. `row` None
means the whole file, table or column. For CSV files a violation also carries `line`, the 1-based
line of the file where the row starts (data row 11 is on line 12, later if an earlier value ran
over several lines), shown as "line 12 (data row 11)".

Hostile input is a violation, never a traceback or a long computation: input files must be regular
files (a symbolic link is refused, not followed); a file named like a table in another case
(`Invoices.csv`) is reported, not read; a CSV header longer than MAX_HEADER_BYTES, or a table with
more than `features.contract.MAX_EXTRA_COLUMNS` columns beyond its declared ones, is refused before
any value is read (every check of column names is linear in their number); financials' statement
columns must be named by `features.contract.FINANCIALS_COLUMN_PATTERN` (they become feature
names). A message shows at most a short excerpt of an offending value, file or column name
(`_MAX_VALUE_CHARS` characters; names and foreign error texts with control characters escaped).

CSV: UTF-8 (a BOM is allowed), comma-separated, one header row of at most MAX_HEADER_BYTES bytes,
`"` quotes, no line breaks inside values (an unterminated quote is reported where it starts). An
empty cell is a missing value (a literal `NaN` in a number column is not missing: it is an error).
Dates are `YYYY-MM-DD`; booleans `true`/`false`/`1`/`0` (any case). Parquet: strings as
string columns, dates as date or midnight timestamp columns (or ISO strings), numbers as integer or
float columns (or strings that parse). In frames, NaN/None/NaT in any column means missing.

Memory: CSV is read by pyarrow's multi-threaded reader with every column as raw bytes, then each
column is converted alone and its raw bytes released; string columns stay Arrow-backed (pandas
"str"), and every check is an Arrow or NumPy operation over whole columns. Python loops only format
the capped list of violations, or locate bad cells once a column is known to hold some
(non-UTF-8 bytes, values of mixed types in an in-memory object column).
"""

from __future__ import annotations

import csv
import datetime as dt
import mmap
import os
import re
import shutil
import stat
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.contract import (
    ENTERPRISES,
    FINANCIALS_COLUMN_PATTERN,
    KNOWN_EXTRA_FILES,
    MAX_EXTRA_COLUMNS,
    ROLES,
    TABLES,
    TABLES_BY_NAME,
    Column,
    Table,
    Tables,
    empty_frame,
)
from features.exceptions import ContractError, ScfRiskError, Violation
from features.scratch import sibling

__all__ = [
    "DATE_RANGE",
    "MAX_HEADER_BYTES",
    "SUFFIXES",
    "load_tables",
    "validate_frames",
    "write_new_folder",
]

SUFFIXES: tuple[str, ...] = (".csv", ".parquet")
DATE_RANGE: tuple[dt.date, dt.date] = (dt.date(1678, 1, 1), dt.date(2261, 12, 31))
"""Dates the typed frames can hold (pandas datetime64[ns] spans 1677-09-21 .. 2262-04-11)."""

_DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_FLOAT_RE = r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)$"
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}
_UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
_EXPECTED = {
    "str": "text",
    "date": "a date (YYYY-MM-DD)",
    "float": "a number",
    "bool": "a boolean (true/false)",
}
_MAX_VALUE_CHARS = 80
MAX_HEADER_BYTES = 131_072
"""Longest CSV header line read (the csv module's field limit): a longer one is a violation."""
_COLUMN_NAME = re.compile(FINANCIALS_COLUMN_PATTERN)
_EXACT = 2**53  # the largest integer size a float64 holds exactly


# ---------------------------------------------------------------------------------------------
# public functions


def load_tables(folder: Path, *, max_violations: int = 100, today: dt.date | None = None) -> Tables:
    """Read and validate a folder of `NAME.csv` / `NAME.parquet` tables into typed frames.

    Raises `ContractError` listing every violation (at most `max_violations`, with the total
    count). Files that are not contract tables are ignored and named in `Tables.warnings`.
    `today` (default: the current date) bounds `founded_date`.
    """
    out = _Collector(max_violations)
    folder = Path(folder)
    if not folder.is_dir():
        rule = "data folder not found" if not folder.exists() else "not a folder"
        out.add(Violation(str(folder), None, None, rule))
        raise out.error(str(folder))
    warnings: list[str] = []
    found: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in KNOWN_EXTRA_FILES:
            continue
        stem, suffix = path.stem.lower(), path.suffix.lower()
        if suffix not in SUFFIXES or stem not in TABLES_BY_NAME:
            warnings.append(f"{_excerpt(path.name)}: not a table of the data contract; ignored")
        elif path.name != stem + suffix:
            seen.add(stem)
            rule = f"found {path.name}; table names are lower case: rename it to {stem}{suffix}"
            out.add(Violation(stem, None, None, rule))
        else:
            found.setdefault(stem, []).append(path)
    raws: dict[str, _Raw] = {}
    for name, paths in found.items():
        seen.add(name)
        table = TABLES_BY_NAME[name]
        if len(paths) > 1:
            both = " and ".join(p.name for p in paths)
            out.add(Violation(name, None, None, f"both {both} present: keep only one"))
            continue
        path = paths[0]
        content = _open(path, table, out)
        if content is None:
            continue
        raw = (
            _read_csv(content, path.name, table, out)
            if path.suffix == ".csv"
            else _read_parquet(content, path.name, table, out)
        )
        del content
        if raw is not None:
            raws[name] = raw
    return _validate(
        raws, seen, out, warnings, source=str(folder), today=today, known=None, history_of=None
    )


def validate_frames(
    raw: Mapping[str, pd.DataFrame],
    *,
    source: str = "in-memory frames",
    max_violations: int = 100,
    today: dt.date | None = None,
    known_enterprises: pd.DataFrame | None = None,
    history_of: str | None = None,
) -> Tables:
    """Validate in-memory frames (table name -> frame) with the checks of `load_tables`.

    Rows are numbered by 1-based position in each frame. `known_enterprises` (a validated
    `Tables.enterprises`) adds enterprises that ids may refer to; then `enterprises` may be absent
    from `raw`. `history_of` is history mode (one SME's own rows, as in a scoring request): every
    invoice must involve that SME and every `sme_id` must be it, counterparties missing from the
    enterprises are allowed, and the SME itself counts as an SME if no enterprise row names it.
    The result's `enterprises` is the given rows, then the referenced rows of `known_enterprises`
    they lack, then (history mode) a bare row for the SME if it is still absent.
    """
    out = _Collector(max_violations)
    warnings: list[str] = []
    raws: dict[str, _Raw] = {}
    for name, frame in raw.items():
        if name not in TABLES_BY_NAME:
            warnings.append(f"{_excerpt(name)}: not a table of the data contract; ignored")
            continue
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
        table = TABLES_BY_NAME[name]
        names = [str(c) for c in frame.columns]
        if not _check_names(table, names, out, repeated="column appears more than once"):
            continue
        bad: dict[str, np.ndarray] = {}
        converted = _arrow_from_frame(frame, table, out, bad)
        raws[name] = _Raw(table, f"{name} ({source})", converted, None, len(frame), bad)
    return _validate(
        raws,
        set(raw),
        out,
        warnings,
        source=source,
        today=today,
        known=known_enterprises,
        history_of=history_of,
    )


def write_new_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Create the folder `out` whole or not at all: `write(tmp)` fills a temporary sibling folder
    that is renamed to `out` at the end, so a failed run leaves nothing behind. Refuses
    (ScfRiskError) an `out` that exists and is not an empty folder."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ScfRiskError(f"{out}: exists and is not a folder; choose a new --out")
        if any(out.iterdir()):
            raise ScfRiskError(f"{out}: folder is not empty; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(out, ".partial", folder=True)
    finished = False
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
        finished = True
    finally:
        if not finished:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# collecting violations


class _Collector:
    """Every violation found: counts them all, keeps the first `cap` of each check."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"max_violations must be >= 1, got {cap}")
        self.cap = cap
        self.total = 0
        self.kept: list[tuple[tuple[int, int, int, int], Violation]] = []

    def add(self, violation: Violation) -> None:
        """Count and keep one violation; they are listed by table, row, then column order."""
        self.total += 1
        names = [t.name for t in TABLES]
        index = names.index(violation.table) if violation.table in names else -1
        column = -1
        if index >= 0 and violation.column is not None:
            declared = [c.name for c in TABLES[index].columns]
            first = violation.column.split(", ")[0]  # a compound key lists several
            column = declared.index(first) if first in declared else len(declared)
        order = (index, violation.row or 0, column, len(self.kept))
        self.kept.append((order, violation))

    def error(self, source: str) -> ContractError:
        kept = [v for _, v in sorted(self.kept, key=lambda item: item[0])][: self.cap]
        err = ContractError(kept, self.total)
        err.add_note(f"source: {source}")
        return err


@dataclass
class _Raw:
    """One table as read: untyped Arrow columns and each position's row number in the file."""

    table: Table
    origin: str
    columns: dict[str, pa.ChunkedArray]
    rows: np.ndarray | None  # row number of each position; None = position + 1
    n: int
    bad: dict[str, np.ndarray] = field(default_factory=dict)  # cells reported while reading
    text: bool = False  # read from a text (CSV) file: violations carry line numbers
    lines: np.ndarray | None = None  # line where each position's row starts; None = row + 1


@dataclass
class _Part:
    """One table being checked: typed Arrow columns and the cells already reported."""

    table: Table
    origin: str
    n: int
    rows: np.ndarray | None
    out: _Collector
    text: bool = False  # read from a text (CSV) file: violations carry line numbers
    lines: np.ndarray | None = None  # line where each position's row starts; None = row + 1
    cols: dict[str, pa.ChunkedArray] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)
    bad: dict[str, np.ndarray] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.table.name

    def row_numbers(self, positions: np.ndarray) -> np.ndarray:
        return positions + 1 if self.rows is None else self.rows[positions]

    def line_numbers(self, positions: np.ndarray) -> list[int | None]:
        if not self.text:
            return [None] * len(positions)
        lines = self.row_numbers(positions) + 1 if self.lines is None else self.lines[positions]
        return [int(line) for line in lines.tolist()]

    def where(self, position: int) -> str:
        """Where one row is, as a message says it: "line 12, data row 11" or "row 11"."""
        at = np.array([position])
        row, line = int(self.row_numbers(at)[0]), self.line_numbers(at)[0]
        return f"row {row}" if line is None else f"line {line}, data row {row}"

    def is_bad(self, column: str) -> np.ndarray:
        found = self.bad.get(column)
        return np.zeros(self.n, dtype=bool) if found is None else found

    def mark_bad(self, column: str, mask: np.ndarray) -> None:
        self.bad[column] = self.is_bad(column) | mask

    def flag(
        self,
        column: str | None,
        rule: str,
        mask: np.ndarray,
        values: pa.ChunkedArray | Callable[[np.ndarray], list[str]] | None = None,
        *,
        mark: bool = True,
    ) -> None:
        """Report every position where `mask` is true (the first `cap` of them in full); unless
        `mark` is false, those cells of `column` are not checked again (no cascading reports)."""
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return
        if column is not None and mark:
            self.mark_bad(column, mask)
        shown = positions[: self.out.cap]
        texts: list[str | None]
        if values is None:
            texts = [None] * len(shown)
        elif callable(values):
            texts = list(values(shown))
        else:
            texts = list(_cells(values, shown))
        rows = self.row_numbers(shown)
        lines = self.line_numbers(shown)
        for row, line, text in zip(rows.tolist(), lines, texts, strict=True):
            self.out.add(Violation(self.name, int(row), column, rule, text, line))
        self.out.total += positions.size - shown.size

    def flag_column(self, column: str | None, rule: str, value: str | None = None) -> None:
        """Report a whole column (or file, when `column` is None); its cells are not re-checked."""
        self.out.add(Violation(self.name, None, column, rule, value))
        if column is not None:
            self.bad[column] = np.ones(self.n, dtype=bool)


def _fmt(value: object) -> str:
    if isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ")
    elif isinstance(value, dt.date):
        text = value.isoformat()
    elif isinstance(value, bytes):
        text = value.decode("utf-8", errors="backslashreplace")
    else:
        text = str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "..."


def _excerpt(value: object, limit: int = _MAX_VALUE_CHARS) -> str:
    """A name or foreign text for a message: at most `limit` characters, the characters that are
    not printable escaped (a NUL as \\x00, a line break as \\n), "..." when cut."""
    text = str(value)
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return shown if len(text) <= limit else shown + "..."


def _cells(values: pa.ChunkedArray, positions: np.ndarray) -> list[str]:
    """The cells at `positions` for a message; values Python cannot hold (a timestamp beyond
    year 9999) are shown as their stored integer and type."""
    taken = values.take(pa.array(positions))
    try:
        return [_fmt(v) for v in taken.to_pylist()]
    except (OverflowError, ValueError, pa.ArrowException):
        pass
    texts = []
    for scalar in taken:
        try:
            texts.append(_fmt(scalar.as_py()))
        except (OverflowError, ValueError, pa.ArrowException):
            stored = getattr(scalar, "value", None)
            texts.append(f"{stored} (stored as {scalar.type})")
    return texts


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow boolean result as a NumPy mask, null = False."""
    filled = pc.fill_null(values, False)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks() if filled.num_chunks != 1 else filled.chunk(0)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)


def _valid(values: pa.ChunkedArray) -> np.ndarray:
    return _mask(pc.is_valid(values))


def _chunked(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


def _null_where(values: pa.ChunkedArray, mask: np.ndarray) -> pa.ChunkedArray:
    if not mask.any():
        return values
    return _chunked(pc.if_else(pa.array(mask), pa.scalar(None, values.type), values))


# ---------------------------------------------------------------------------------------------
# reading files


def _open(path: Path, table: Table, out: _Collector) -> pa.Buffer | None:
    """The bytes of a table's file, mapped read-only; None (reported) unless it is a regular,
    non-empty file.

    A symbolic link is refused, not followed (O_NOFOLLOW closes the gap between the check and
    the open), and a FIFO or device is refused without reading from it."""
    shown = _excerpt(path.name)
    if path.is_symlink():
        rule = f"{shown} is a symbolic link: input files must be regular files (links are not read)"
        out.add(Violation(table.name, None, None, rule))
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        rule = f"{shown} cannot be opened: {_excerpt(exc.strerror)}"
        out.add(Violation(table.name, None, None, rule))
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            rule = f"{shown} is not a regular file: input files must be regular files"
            out.add(Violation(table.name, None, None, rule))
            return None
        if info.st_size == 0:
            what = " (no header row)" if path.suffix == ".csv" else ""
            out.add(Violation(table.name, None, None, f"{shown} is an empty file{what}"))
            return None
        return pa.py_buffer(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
    finally:
        os.close(fd)


def _check_names(table: Table, names: list[str], out: _Collector, *, repeated: str) -> bool:
    """A table's column names, before any value is read: false (reported) if the table cannot be
    read with them. Linear in the number of names; more than MAX_EXTRA_COLUMNS extra ones is a
    violation found before anything else."""
    declared = {c.name for c in table.columns}
    extra = sum(1 for n in names if n not in declared)
    if extra > MAX_EXTRA_COLUMNS:
        rule = (
            f"too many columns: {extra} beyond the {len(declared)} declared ones; "
            f"at most {MAX_EXTRA_COLUMNS} are allowed"
        )
        out.add(Violation(table.name, None, None, rule))
        return False
    twice = sorted(n for n, k in Counter(names).items() if k > 1)
    for col in twice:
        out.add(Violation(table.name, None, _excerpt(col), repeated))
    fine = not twice
    if table.extra_numeric:
        rule = (
            f"column name must match {FINANCIALS_COLUMN_PATTERN} (a lower case letter, then at "
            "most 63 lower case letters, digits or _): it becomes a feature name"
        )
        for col in dict.fromkeys(n for n in names if n not in declared):
            if _COLUMN_NAME.fullmatch(col) is None:
                out.add(Violation(table.name, None, _excerpt(col), rule))
                fine = False
    return fine


def _line_breaks(values: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Line breaks (LF, CR or CRLF) in each cell, or None when no cell holds one."""
    found = pc.any(pc.or_(pc.match_substring(values, "\n"), pc.match_substring(values, "\r")))
    if not found.as_py():
        return None

    def count(pattern: str) -> np.ndarray:
        counted = pc.fill_null(pc.count_substring(values, pattern), 0)
        return np.asarray(_chunked(counted).to_numpy(), dtype=np.int64)

    return count("\n") + count("\r") - count("\r\n")


def _text_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _read_csv(content: pa.Buffer, file: str, table: Table, out: _Collector) -> _Raw | None:
    name = table.name
    shown = _excerpt(file)
    head = content.slice(0, min(content.size, MAX_HEADER_BYTES + 1)).to_pybytes()
    end = head.find(b"\n")
    if end < 0 and len(head) > MAX_HEADER_BYTES:
        rule = f"header of {shown} is longer than {MAX_HEADER_BYTES} bytes (the longest read)"
        out.add(Violation(name, None, None, rule))
        return None
    head = head if end < 0 else head[:end]
    try:
        header = head.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        rule = f"header of {shown} is not valid UTF-8 (byte offset {exc.start})"
        out.add(Violation(name, None, None, rule))
        return None
    try:
        names = next(csv.reader([header], strict=True), [])
    except csv.Error as exc:  # an unterminated quote, a quote inside a quoted name
        rule = f"header of {shown} is not valid CSV: {_excerpt(exc)}"
        out.add(Violation(name, None, None, rule, _fmt(header)))
        return None
    if not names or names == [""]:
        out.add(Violation(name, None, None, f"{shown} has no header row"))
        return None
    if not _check_names(table, names, out, repeated="column appears more than once in the header"):
        return None

    declared = {c.name: c for c in table.columns}
    types = {
        n: pa.large_binary() if n not in declared or declared[n].kind == "str" else pa.binary()
        for n in names
    }
    invalid: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(row)
        return "skip"

    def read(threads: bool) -> pa.Table:
        # one thread: quotes are followed across lines, so rows are numbered as parsed
        return pacsv.read_csv(
            pa.BufferReader(content),
            read_options=pacsv.ReadOptions(use_threads=threads, column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=on_invalid,
                ignore_empty_lines=False,
                newlines_in_values=not threads,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )

    try:
        data = read(threads=True)
        if any(row.number is None for row in invalid):  # threaded reads do not number rows
            invalid.clear()
            data = read(threads=False)
    except pa.ArrowInvalid as exc:
        rule = f"unreadable CSV file {shown}: {_excerpt(exc, 2 * _MAX_VALUE_CHARS)}"
        out.add(Violation(name, None, None, rule))
        return None
    n = data.num_rows
    columns = {c: data.column(c) for c in names}
    del data
    # data row of each kept position: a skipped row keeps its number, so the rows after keep theirs
    rows = np.arange(1, n + 1, dtype=np.int64)
    invalid.sort(key=lambda r: r.number)
    skipped = np.array([row.number - 1 for row in invalid], dtype=np.int64)
    if skipped.size:
        before = skipped - np.arange(skipped.size)
        rows += np.searchsorted(before - 1, rows - 1, side="right")
    # line of each data row: one more than its number, plus the line breaks inside earlier rows
    breaks = {c: b for c, values in columns.items() if (b := _line_breaks(values)) is not None}
    skipped_breaks = np.array([_text_breaks(row.text) for row in invalid], dtype=np.int64)
    starts = np.arange(n + skipped.size + 1, dtype=np.int64) + 1  # by data row number
    lines: np.ndarray | None = None
    if breaks or skipped_breaks.any():
        spans = np.zeros(starts.size, dtype=np.int64)
        for counted in breaks.values():
            spans[rows] += counted
        spans[skipped] = skipped_breaks
        starts[1:] += np.cumsum(spans)[:-1]
        lines = starts[rows]
    for row, extra in list(zip(invalid, skipped_breaks.tolist(), strict=True))[: out.cap]:
        number = row.number - 1
        line = int(starts[number])
        if extra:
            rule = (
                f"a quoted value runs from line {line} to line {line + extra}: unterminated "
                "quote? (line breaks are not allowed inside values)"
            )
        elif row.text.count('"') % 2:
            rule = f'unterminated quote: a value opened with " is not closed on line {line}'
        else:
            rule = (
                f"wrong number of fields: expected {row.expected_columns}, got {row.actual_columns}"
            )
        out.add(Violation(name, number, None, rule, _fmt(row.text), line))
    out.total += max(0, len(invalid) - out.cap)
    bad: dict[str, np.ndarray] = {}
    rule = "line break inside a value: unterminated quote? (line breaks are not allowed in values)"
    for col, counted in breaks.items():
        mask = counted > 0
        positions = np.flatnonzero(mask)
        texts = _cells(columns[col], positions[: out.cap])
        for at, text in zip(positions[: out.cap].tolist(), texts, strict=True):
            out.add(Violation(name, int(rows[at]), col, rule, text, int(starts[rows[at]])))
        out.total += max(0, positions.size - out.cap)
        columns[col] = _null_where(columns[col], mask)
        bad[col] = mask
    raw = _Raw(table, file, columns, rows if skipped.size else None, n, bad, True, lines)
    return _without_blank_rows(raw, out)


def _without_blank_rows(raw: _Raw, out: _Collector) -> _Raw:
    """Drop the empty lines that end a CSV file; report empty rows inside it (once per row)."""
    blank = np.ones(raw.n, dtype=bool)
    for values in raw.columns.values():
        blank &= ~_valid(values)
    for mask in raw.bad.values():  # a cell emptied after it was reported is not blank
        blank &= ~mask
    if not blank.any():
        return raw
    filled = np.flatnonzero(~blank)
    end = int(filled[-1]) + 1 if filled.size else 0
    if end < raw.n:
        raw.columns = {k: v.slice(0, end) for k, v in raw.columns.items()}
        raw.rows = None if raw.rows is None else raw.rows[:end]
        raw.lines = None if raw.lines is None else raw.lines[:end]
        raw.bad = {k: v[:end] for k, v in raw.bad.items()}
        raw.n, blank = end, blank[:end]
    positions = np.flatnonzero(blank)[: out.cap]
    rows = positions + 1 if raw.rows is None else raw.rows[positions]
    lines = rows + 1 if raw.lines is None else raw.lines[positions]
    for row, line in zip(rows.tolist(), lines.tolist(), strict=True):
        rule = "empty row (no values)"
        out.add(Violation(raw.table.name, int(row), None, rule, None, line if raw.text else None))
    out.total += max(0, int(blank.sum()) - out.cap)
    raw.bad = {name: blank | raw.bad.get(name, False) for name in raw.columns}
    return raw


def _read_parquet(content: pa.Buffer, file: str, table: Table, out: _Collector) -> _Raw | None:
    name = table.name
    shown = _excerpt(file)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(content))
        schema = parquet.schema_arrow
        meta = schema.pandas_metadata or {}
        index_columns = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
        names = [n for n in schema.names if n not in index_columns]
        if not _check_names(table, names, out, repeated="column appears more than once"):
            return None
        data = parquet.read(columns=names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        rule = f"unreadable Parquet file {shown}: {_excerpt(exc, 2 * _MAX_VALUE_CHARS)}"
        out.add(Violation(name, None, None, rule))
        return None
    columns = {n: data.column(n) for n in names}
    n = data.num_rows
    del data
    return _Raw(table, file, columns, None, n)


def _arrow_from_frame(
    frame: pd.DataFrame, table: Table, out: _Collector, bad: dict[str, np.ndarray]
) -> dict[str, pa.ChunkedArray]:
    """A frame's columns as Arrow arrays; in object columns of mixed types Arrow cannot convert,
    cells of a type the column cannot hold are reported (and marked in `bad`) and become null.
    Its column names have been checked (`_check_names`)."""
    names = [str(c) for c in frame.columns]
    declared = {c.name: c for c in table.columns}
    columns: dict[str, pa.ChunkedArray] = {}
    for name, (_, series) in zip(names, frame.items(), strict=True):
        try:
            columns[name] = _chunked(pa.array(series, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            spec = declared.get(name)
            kind = spec.kind if spec else "float" if table.extra_numeric else "str"
            columns[name], bad[name] = _mixed_to_text(series, table, name, kind, out)
    return columns


def _mixed_to_text(
    series: pd.Series, table: Table, name: str, kind: str, out: _Collector
) -> tuple[pa.ChunkedArray, np.ndarray]:
    """An object column Arrow cannot type: cells of an acceptable type as text, others reported."""
    accepted: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "date": (str, dt.date),
        "float": (str, int, float),
        "bool": (str, bool, int),
    }
    texts: list[str | None] = []
    wrong: list[tuple[int, object]] = []
    for position, value in enumerate(series.tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
            texts.append(None)
        elif isinstance(value, accepted[kind]) and not (
            kind == "float" and isinstance(value, bool)
        ):
            if isinstance(value, dt.datetime):
                texts.append(value.isoformat() if value.time() != dt.time() else str(value.date()))
            elif isinstance(value, dt.date):
                texts.append(value.isoformat())
            elif isinstance(value, bool):
                texts.append("true" if value else "false")
            else:
                texts.append(str(value))
        else:
            texts.append(None)
            wrong.append((position, value))
    for position, value in wrong[: out.cap]:
        rule = f"wrong type: expected {_EXPECTED[kind]}, got {type(value).__name__}"
        out.add(Violation(table.name, position + 1, name, rule, _fmt(value)))
    out.total += max(0, len(wrong) - out.cap)
    odd = np.zeros(len(texts), dtype=bool)
    odd[[position for position, _ in wrong]] = True
    return _chunked(pa.array(texts, type=pa.large_string())), odd


# ---------------------------------------------------------------------------------------------
# typing columns


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _decode(part: _Part, name: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Raw bytes -> large_string; cells that are not UTF-8 are reported and become null."""
    if values.type == pa.large_string():
        return values
    if _is_text(values.type):
        return values.cast(pa.large_string())
    if pa.types.is_dictionary(values.type):
        return _decode(part, name, values.cast(values.type.value_type))
    chunks = []
    bad = np.zeros(part.n, dtype=bool)
    offset = 0
    for chunk in values.chunks:
        try:
            chunks.append(chunk.cast(pa.large_string()))
        except pa.ArrowInvalid:  # locate the cells (this chunk only)
            cells = chunk.to_pylist()
            broken = np.zeros(len(chunk), dtype=bool)
            for i, cell in enumerate(cells):
                if cell is not None:
                    try:
                        cell.decode("utf-8")
                    except UnicodeDecodeError:
                        broken[i] = True
            bad[offset : offset + len(chunk)] = broken
            kept = pc.if_else(pa.array(broken), pa.scalar(None, chunk.type), chunk)
            chunks.append(kept.cast(pa.large_string()))
        offset += len(chunk)
    if bad.any():
        part.flag(name, "not valid UTF-8", bad, values)
    return pa.chunked_array(chunks, type=pa.large_string())


def _typed(part: _Part, col: Column, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Convert one column to its declared kind; report cells and columns that do not convert."""
    kind = col.kind
    target = {"str": pa.large_string(), "date": pa.date32(), "float": pa.float64()}.get(
        kind, pa.bool_()
    )
    t = values.type
    if pa.types.is_null(t):
        return _chunked(pa.nulls(part.n, target))
    if pa.types.is_dictionary(t):
        return _typed(part, col, values.cast(t.value_type))
    if _is_bytes(t) or _is_text(t):
        text = _decode(part, col.name, values)
        if kind == "str":
            return text
        parse = {"date": _parse_dates, "float": _parse_floats, "bool": _parse_bools}[kind]
        return parse(part, col.name, text)
    if kind == "date" and pa.types.is_date(t):
        return values.cast(pa.date32())
    if kind == "date" and pa.types.is_timestamp(t) and t.tz is None:
        return _midnights(part, col.name, values)
    if kind == "float" and t.bit_width == 64 and pa.types.is_integer(t):
        # a float64 holds integers exactly only up to 2**53: a larger one is reported, not rounded
        big = _mask(pc.greater(values, _EXACT))
        if pa.types.is_signed_integer(t):
            big |= _mask(pc.less(values, -_EXACT))
        rule = f"integer too large to hold exactly as a number (more than {_EXACT} in size)"
        part.flag(col.name, rule, big, values)
        return _null_where(values, big).cast(pa.float64(), safe=False)
    if kind == "float" and (
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    ):
        return values.cast(pa.float64(), safe=False)  # decimals round, as text does
    if kind == "bool" and pa.types.is_boolean(t):
        return values
    if kind == "bool" and pa.types.is_integer(t):
        return _parse_bools(part, col.name, values.cast(pa.large_string()))
    part.flag_column(col.name, f"wrong type: expected {_EXPECTED[kind]}, got {t}")
    return _chunked(pa.nulls(part.n, target))


def _parse_dates(part: _Part, name: str, text: pa.ChunkedArray) -> pa.ChunkedArray:
    try:
        return text.cast(pa.date32())  # Arrow's strict ISO-8601 YYYY-MM-DD
    except pa.ArrowInvalid:
        pass
    parsed = pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True)
    same = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), text)  # rejects 2023-02-30
    ok = _mask(pc.and_(pc.match_substring_regex(text, _DATE_RE), same))
    bad = _valid(text) & ~ok
    part.flag(name, "not a date in the form YYYY-MM-DD", bad, text)
    return _null_where(text, bad).cast(pa.date32())


def _midnights(part: _Part, name: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps (no time zone) -> dates; a time of day other than midnight is reported."""
    per_day = _UNITS_PER_DAY[values.type.unit]
    valid = _valid(values)
    ticks = np.asarray(pc.fill_null(values.cast(pa.int64()), 0).to_numpy(), dtype=np.int64)
    with_time = valid & (ticks % per_day != 0)
    part.flag(name, "has a time of day: expected a calendar date", with_time, values)
    days = (ticks // per_day).clip(-(2**31), 2**31 - 1).astype(np.int32)
    return _chunked(pa.array(days, type=pa.date32(), mask=~valid | with_time))


def _parse_floats(part: _Part, name: str, text: pa.ChunkedArray) -> pa.ChunkedArray:
    try:
        return text.cast(pa.float64())
    except pa.ArrowInvalid:
        pass
    ok = _mask(pc.match_substring_regex(text, _FLOAT_RE, ignore_case=True))
    bad = _valid(text) & ~ok
    part.flag(name, "not a number", bad, text)
    return _null_where(text, bad).cast(pa.float64())


def _parse_bools(part: _Part, name: str, text: pa.ChunkedArray) -> pa.ChunkedArray:
    lowered = pc.utf8_lower(text)
    known = pa.array(list(_BOOL_TEXT), type=pa.large_string())
    bad = _valid(text) & ~_mask(pc.is_in(lowered, value_set=known))
    part.flag(name, "not a boolean (true/false/1/0)", bad, text)
    truth = pa.array(list(_BOOL_TEXT.values()), type=pa.bool_())
    return _chunked(pc.take(truth, pc.index_in(lowered, value_set=known)))


def _in_range(part: _Part, name: str, dates: pa.ChunkedArray) -> pa.ChunkedArray:
    low, high = (pa.scalar(d, pa.date32()) for d in DATE_RANGE)
    out = _mask(pc.or_(pc.less(dates, low), pc.greater(dates, high))) & ~part.is_bad(name)
    part.flag(name, f"date out of range {DATE_RANGE[0]} .. {DATE_RANGE[1]}", out, dates)
    return _null_where(dates, out)


def _finite(part: _Part, name: str, numbers: pa.ChunkedArray) -> pa.ChunkedArray:
    odd = _valid(numbers) & ~_mask(pc.is_finite(numbers))
    part.flag(name, "must be finite (not NaN or inf)", odd, numbers)
    return _null_where(numbers, odd)


def _type_part(raw: _Raw, out: _Collector, warnings: list[str]) -> _Part:
    table = raw.table
    part = _Part(table, raw.origin, raw.n, raw.rows, out, raw.text, raw.lines, bad=raw.bad)
    columns = raw.columns
    raw.columns = {}
    for col in table.columns:
        values = columns.pop(col.name, None)
        if values is None:
            if col.required:
                part.flag_column(col.name, "required column missing")
            values = pa.chunked_array([pa.nulls(raw.n)])
        else:
            part.present.add(col.name)
        typed = _typed(part, col, values)
        del values
        if col.kind == "date":
            typed = _in_range(part, col.name, typed)
        elif col.kind == "float":
            typed = _finite(part, col.name, typed)
        part.cols[col.name] = typed
    for name in list(columns):
        values = columns.pop(name)
        if table.extra_numeric:
            number = Column(name, "float", required=False, nullable=True)
            part.cols[name] = _finite(part, name, _typed(part, number, values))
        else:
            warnings.append(
                f"{raw.origin}: column '{_excerpt(name)}' is not in the data contract; kept, unused"
            )
            part.cols[name] = _decode(part, name, values) if _is_bytes(values.type) else values
        part.extras.append(name)
    return part


# ---------------------------------------------------------------------------------------------
# the rules


def _check_rows(part: _Part, today: dt.date) -> None:
    """Every per-row rule of the part's table (its columns' declarations)."""
    if part.n == 0 and part.table.required:
        part.flag_column(None, "no data rows: this table is required and needs at least one")
    for col in part.table.columns:
        if col.name not in part.present:
            continue
        values = part.cols[col.name]
        valid = _valid(values)
        if not col.nullable:
            part.flag(col.name, "required value missing", ~valid & ~part.is_bad(col.name))
            if col.kind == "str":
                blank = _mask(pc.or_(pc.equal(values, ""), pc.utf8_is_space(values)))
                part.flag(col.name, "must not be blank", blank & ~part.is_bad(col.name), values)
        if col.choices:
            allowed = pa.array(col.choices, type=pa.large_string())
            odd = valid & ~_mask(pc.is_in(values, value_set=allowed)) & ~part.is_bad(col.name)
            part.flag(col.name, f"must be one of: {', '.join(col.choices)}", odd, values)
        if col.gt is not None:
            odd = _mask(pc.less_equal(values, col.gt)) & ~part.is_bad(col.name)
            part.flag(col.name, f"must be > {col.gt:g}", odd, values)
        if col.ge is not None:
            odd = _mask(pc.less(values, col.ge)) & ~part.is_bad(col.name)
            part.flag(col.name, f"must be >= {col.ge:g}", odd, values)
        for other, test, word in (
            (col.ge_column, pc.less, ">="),
            (col.le_column, pc.greater, "<="),
        ):
            if other is None or other not in part.present:
                continue
            odd = _mask(test(values, part.cols[other])) & ~part.is_bad(col.name)
            part.flag(col.name, f"must be {word} {other}", odd, _pair(values, other, part))
        if col.not_after_today:
            odd = _mask(pc.greater(values, pa.scalar(today, pa.date32()))) & ~part.is_bad(col.name)
            part.flag(col.name, f"must not be after today ({today})", odd, values)
        if col.required_with is not None and col.required_with in part.present:
            needed = _valid(part.cols[col.required_with]) & ~valid & ~part.is_bad(col.name)
            part.flag(col.name, f"required when {col.required_with} is set", needed)
    _check_key(part)


def _pair(values: pa.ChunkedArray, other: str, part: _Part) -> Callable[[np.ndarray], list[str]]:
    def show(positions: np.ndarray) -> list[str]:
        index = pa.array(positions)
        mine = values.take(index).to_pylist()
        theirs = part.cols[other].take(index).to_pylist()
        return [f"{_fmt(a)} ({other} {_fmt(b)})" for a, b in zip(mine, theirs, strict=True)]

    return show


def _repeats(columns: list[pa.ChunkedArray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose values (all `columns`; nulls never match) repeat an earlier row's.

    Returns the repeating positions (ascending) and, for each, the position of the first row
    with those values. A stable sort brings equal rows together in file order (less memory and
    time than hashing millions of distinct strings)."""
    n = len(columns[0])
    if n < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    names = [f"k{i}" for i in range(len(columns))]
    order = pc.sort_indices(
        pa.table(dict(zip(names, columns, strict=True))),
        sort_keys=[(name, "ascending") for name in names],
    )
    same = np.ones(n - 1, dtype=bool)
    for values in columns:
        ordered = values.take(order)
        same &= _mask(pc.equal(ordered.slice(1), ordered.slice(0, n - 1)))
        del ordered
    if not same.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ranks = np.asarray(order.to_numpy(), dtype=np.int64)
    del order
    repeat = np.concatenate(([False], same))
    del same
    run_start = np.arange(n, dtype=np.int64)
    run_start[repeat] = 0
    np.maximum.accumulate(run_start, out=run_start)  # sorted index of each run's first row
    positions = ranks[repeat]
    firsts = ranks[run_start[repeat]]
    by_position = np.argsort(positions, kind="stable")
    return positions[by_position], firsts[by_position]


def _check_key(part: _Part) -> None:
    key = part.table.key
    if not key or part.n == 0 or any(k not in part.present for k in key):
        return
    columns = [_null_where(part.cols[k], part.is_bad(k)) for k in key]
    positions, firsts = _repeats(columns)
    if positions.size == 0:
        return
    repeat = np.zeros(part.n, dtype=bool)
    repeat[positions] = True
    first_at = dict(zip(positions.tolist(), firsts.tolist(), strict=True))

    def show(shown: np.ndarray) -> list[str]:
        index = pa.array(shown)
        values = [part.cols[k].take(index).to_pylist() for k in key]
        return [
            f"{', '.join(_fmt(v) for v in vals)} (first at {part.where(first_at[at])})"
            for vals, at in zip(zip(*values, strict=True), shown.tolist(), strict=True)
        ]

    column = ", ".join(key)  # a compound key is reported once, naming all its columns
    part.flag(column, f"duplicate {column}", repeat, show, mark=False)
    for name in key:
        part.mark_bad(name, repeat)


@dataclass
class _Registry:
    """Enterprise ids and their roles (index in ROLES, -1 unknown), first occurrence wins."""

    ids: pa.Array
    roles: np.ndarray
    strict: bool  # an id not found is a violation


def _registry(
    parts: dict[str, _Part], known: pd.DataFrame | None, history_of: str | None
) -> _Registry | None:
    ids: list[pa.Array] = []
    roles: list[np.ndarray] = []
    ent = parts.get(ENTERPRISES.name)
    if ent is not None and "enterprise_id" in ent.present:
        ok = ~ent.is_bad("enterprise_id")
        ids.append(ent.cols["enterprise_id"].combine_chunks().filter(pa.array(ok)))
        role = _role_codes(ent.cols["role"])
        roles.append(role[ok])
    elif known is None and history_of is None:
        return None  # no enterprises to check against: reported already
    if known is not None and len(known):
        # pandas "str" columns may convert to a ChunkedArray: make it one contiguous array
        ids.append(
            _chunked(pa.array(known["enterprise_id"], type=pa.large_string())).combine_chunks()
        )
        roles.append(_role_codes(_chunked(pa.array(known["role"], type=pa.large_string()))))
    if history_of is not None:
        ids.append(pa.array([history_of], type=pa.large_string()))
        roles.append(np.array([ROLES.index("sme")], dtype=np.int64))
    if not ids:
        return _Registry(pa.array([], type=pa.large_string()), np.array([], np.int64), True)
    all_ids = _chunked(pa.concat_arrays([a.cast(pa.large_string()) for a in ids]))
    keep = np.ones(len(all_ids), dtype=bool)
    keep[_repeats([all_ids])[0]] = False  # the first row of an id wins
    return _Registry(
        all_ids.filter(pa.array(keep)).combine_chunks(),
        np.concatenate(roles)[keep],
        strict=history_of is None,
    )


def _role_codes(values: pa.ChunkedArray) -> np.ndarray:
    found = pc.index_in(values, value_set=pa.array(ROLES, type=pa.large_string()))
    return np.asarray(pc.fill_null(found, -1).to_numpy(), dtype=np.int64)


def _check_references(
    parts: dict[str, _Part], registry: _Registry | None, history_of: str | None
) -> None:
    """Ids that must name an enterprise (of a role), the parties of a trade, history mode."""
    for part in parts.values():
        looked_up: dict[str, np.ndarray] = {}
        for col in part.table.columns:
            if col.refers_to is None or col.name not in part.present:
                continue
            values = part.cols[col.name]
            given = _valid(values) & ~part.is_bad(col.name)
            if history_of is not None and col.refers_to == "sme":
                other = given & ~_mask(pc.equal(values, history_of))
                part.flag(
                    col.name, f"must be the SME of this history ({history_of})", other, values
                )
                given &= ~other
            if registry is None:
                continue
            found = pc.index_in(values, value_set=registry.ids)
            index = np.asarray(pc.fill_null(found, -1).to_numpy(), dtype=np.int64)
            if registry.strict:
                part.flag(col.name, "not in enterprises", given & (index < 0), values)
            role = np.full(index.size, -1, dtype=np.int64)  # registry may be empty
            role[index >= 0] = registry.roles[index[index >= 0]]
            looked_up[col.name] = role
            if col.refers_to in ROLES:
                want = ROLES.index(col.refers_to)
                wrong = given & (role >= 0) & (role != want)
                part.flag(
                    col.name,
                    f"must be an enterprise with role {col.refers_to}",
                    wrong,
                    _with_role(values, role),
                )
        if part.table.parties is not None:
            _check_parties(part, looked_up, history_of)


def _with_role(values: pa.ChunkedArray, role: np.ndarray) -> Callable[[np.ndarray], list[str]]:
    def show(positions: np.ndarray) -> list[str]:
        ids = values.take(pa.array(positions)).to_pylist()
        return [
            f"{i} (role {ROLES[r]})" for i, r in zip(ids, role[positions].tolist(), strict=True)
        ]

    return show


def _check_parties(part: _Part, roles: dict[str, np.ndarray], history_of: str | None) -> None:
    assert part.table.parties is not None
    seller, buyer = part.table.parties
    if seller not in part.present or buyer not in part.present:
        return
    a, b = part.cols[seller], part.cols[buyer]
    fine = ~part.is_bad(seller) & ~part.is_bad(buyer)

    def show(positions: np.ndarray) -> list[str]:
        index = pa.array(positions)
        pairs = zip(a.take(index).to_pylist(), b.take(index).to_pylist(), strict=True)
        return [f"{s} -> {t}" for s, t in pairs]

    same = fine & _mask(pc.equal(a, b))
    part.flag(buyer, f"must differ from {seller}", same, show)
    fine &= ~same
    if seller in roles and buyer in roles:
        sme = ROLES.index("sme")
        ra, rb = roles[seller], roles[buyer]
        no_sme = fine & (ra >= 0) & (rb >= 0) & (ra != sme) & (rb != sme)
        part.flag(buyer, f"neither {seller} nor {buyer} is an SME", no_sme, show)
    if history_of is not None:
        outside = fine & ~_mask(pc.equal(a, history_of)) & ~_mask(pc.equal(b, history_of))
        rule = f"neither {seller} nor {buyer} is the SME of this history ({history_of})"
        part.flag(seller, rule, outside, show)


def _check_history_sme(
    parts: dict[str, _Part], registry: _Registry | None, sme: str, out: _Collector
) -> None:
    """The SME of a history must not be known as a core enterprise."""
    if registry is None:
        return
    found = pc.index_in(pa.array([sme], type=pa.large_string()), value_set=registry.ids)[0]
    role = int(registry.roles[found.as_py()]) if found.is_valid else -1
    if role < 0 or ROLES[role] == "sme":
        return
    rule = f"{sme} is the SME of this history: its role must be sme"
    ent = parts.get(ENTERPRISES.name)
    at = np.zeros(0, dtype=bool) if ent is None else _mask(pc.equal(ent.cols["enterprise_id"], sme))
    if ent is not None and at.any():
        ent.flag("role", rule, at & (np.cumsum(at) == 1), ent.cols["role"])
    else:
        out.add(Violation(ENTERPRISES.name, None, "role", rule, ROLES[role]))


# ---------------------------------------------------------------------------------------------
# the whole check and the typed result


def _validate(
    raws: dict[str, _Raw],
    seen: set[str],
    out: _Collector,
    warnings: list[str],
    *,
    source: str,
    today: dt.date | None,
    known: pd.DataFrame | None,
    history_of: str | None,
) -> Tables:
    today = today or dt.date.today()
    for table in TABLES:
        optional_here = table is ENTERPRISES and (known is not None or history_of is not None)
        if table.required and table.name not in seen and not optional_here:
            files = " or ".join(f"{table.name}{s}" for s in SUFFIXES)
            out.add(Violation(table.name, None, None, f"required table missing: expected {files}"))
    parts: dict[str, _Part] = {}
    for table in TABLES:
        raw = raws.pop(table.name, None)
        if raw is not None:
            parts[table.name] = _type_part(raw, out, warnings)
    for part in parts.values():
        _check_rows(part, today)
    registry = _registry(parts, known, history_of)
    _check_references(parts, registry, history_of)
    if history_of is not None:
        _check_history_sme(parts, registry, history_of, out)
    if out.total:
        raise out.error(source)
    frames = {name: _to_pandas(part) for name, part in parts.items()}
    if known is not None or history_of is not None:
        frames[ENTERPRISES.name] = _with_known(frames, known, history_of)
    typed = {t.name: frames.get(t.name, empty_frame(t)) for t in TABLES}
    return Tables(**typed, warnings=tuple(warnings))


def _to_pandas(part: _Part) -> pd.DataFrame:
    """The typed frame: declared columns in contract order, then the extra ones (all writable).
    Columns are converted one at a time, so at most one intermediate column is alive."""
    columns: dict[str, pd.Series | np.ndarray] = {}
    for col in part.table.columns:
        values = part.cols[col.name]
        if col.kind == "date":
            values = values.cast(pa.timestamp("ns"))
            if col.default_days_after is not None:
                base, days = col.default_days_after
                shift = pa.scalar(dt.timedelta(days=days), pa.duration("ns"))
                later = pc.add(part.cols[base].cast(pa.timestamp("ns")), shift)
                values = _chunked(pc.coalesce(values, later))
        elif col.kind == "bool":
            values = _chunked(pc.fill_null(values, bool(col.default)))
        columns[col.name] = _to_column(values)
        del values
    for name in part.extras:
        columns[name] = _to_column(part.cols[name])
    part.cols.clear()
    return pd.DataFrame(columns, index=pd.RangeIndex(part.n), copy=False)


def _to_column(values: pa.ChunkedArray) -> pd.Series | np.ndarray:
    """One Arrow column as pandas: strings stay Arrow-backed, numbers become writable NumPy."""
    t = values.type
    if pa.types.is_floating(t) or pa.types.is_timestamp(t) or pa.types.is_boolean(t):
        array = values.to_numpy() if values.num_chunks else np.array([], t.to_pandas_dtype())
        return array if array.flags.writeable else array.copy()
    series = values.to_pandas()
    if isinstance(series.array, pd.arrays.NumpyExtensionArray) or series.dtype.kind in "iufbmM":
        return series.to_numpy(copy=True)
    return series


def _with_known(
    frames: dict[str, pd.DataFrame], known: pd.DataFrame | None, history_of: str | None
) -> pd.DataFrame:
    """The given enterprises, plus the referenced known ones they lack, plus the history's SME."""
    given = frames.get(ENTERPRISES.name, empty_frame(ENTERPRISES))
    have = set(given["enterprise_id"].dropna())
    pieces = [given]
    if known is not None and len(known):
        wanted: set[str] = set()
        for name, frame in frames.items():
            for col in TABLES_BY_NAME[name].columns:
                if col.refers_to is not None:
                    wanted.update(frame[col.name].dropna())
        extra = known[known["enterprise_id"].isin(wanted - have)]
        pieces.append(extra.reindex(columns=given.columns))
        have.update(extra["enterprise_id"])
    if history_of is not None and history_of not in have:
        bare = pd.DataFrame({"enterprise_id": [history_of], "role": ["sme"]})
        pieces.append(bare.reindex(columns=given.columns))
    pieces = [p for p in pieces if len(p)]
    if not pieces:
        return given
    joined = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]
    return joined.astype(given.dtypes.to_dict())
