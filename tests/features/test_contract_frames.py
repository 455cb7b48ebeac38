"""`validate_frames`: the contract's checks on in-memory frames, and history mode (one SME's rows,
as a scoring request sends them, with counterparties that may be unknown)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import ENTERPRISES, Tables
from features.exceptions import ContractError
from features.io import load_tables, validate_frames
from tests.support.contract_folder import TODAY, history, write_folder

Found = tuple[str, int | None, str | None, str]
NOT_INVOLVED = "neither seller_id nor buyer_id is the SME of this history"


def known() -> pd.DataFrame:
    """Enterprises the service already knows (a validated `Tables.enterprises`)."""
    frames = {
        "enterprises": pd.DataFrame(
            {"enterprise_id": ["C9", "S5", "C3"], "role": ["core", "sme", "core"]}
        ),
        "invoices": pd.DataFrame(
            {"invoice_id": ["J1"], "seller_id": ["S5"], "buyer_id": ["C9"],
             "issue_date": ["2023-01-01"], "due_date": ["2023-02-01"], "amount": [1.0]}
        ),
    }  # fmt: skip
    return validate_frames(frames, today=TODAY).enterprises


def found(raw: dict[str, pd.DataFrame], **kwargs: object) -> list[Found]:
    with pytest.raises(ContractError) as info:
        validate_frames(raw, today=TODAY, **kwargs)  # type: ignore[arg-type]
    return [(v.table, v.row, v.column, v.rule) for v in info.value.violations]


def test_history_with_unknown_counterparties_is_valid() -> None:
    tables = validate_frames(history(), history_of="S1", today=TODAY)
    assert tables.enterprises["enterprise_id"].tolist() == ["S1"]
    assert tables.enterprises["role"].tolist() == ["sme"]
    assert tables.enterprises.dtypes.to_dict() == ENTERPRISES_DTYPES
    inv = tables.invoices
    assert str(inv["issue_date"].dtype) == "datetime64[ns]"
    assert inv["disputed"].tolist() == [False, False]
    assert pd.isna(inv["paid_date"].iloc[1])
    assert len(tables.inventory) == 0 and len(tables.financials) == 0


ENTERPRISES_DTYPES = validate_frames(
    {
        "enterprises": pd.DataFrame({"enterprise_id": ["A"], "role": ["sme"]}),
        "invoices": pd.DataFrame(
            {"invoice_id": ["I"], "seller_id": ["A"], "buyer_id": ["A2"],
             "issue_date": ["2024-01-01"], "due_date": ["2024-01-01"], "amount": [1.0]}
        ),
    },
    history_of="A",
).enterprises.dtypes.to_dict()  # fmt: skip


def test_history_keeps_the_known_enterprises_it_refers_to() -> None:
    tables = validate_frames(history(), history_of="S1", known_enterprises=known(), today=TODAY)
    assert tables.enterprises["enterprise_id"].tolist() == ["C9", "S1"]
    assert tables.enterprises["role"].tolist() == ["core", "sme"]


def test_history_rows_must_belong_to_its_sme() -> None:
    raw = history()
    raw["invoices"].loc[1, "buyer_id"] = "S2"
    raw["loans"].loc[0, "sme_id"] = "S2"
    assert found(raw, history_of="S1") == [
        ("invoices", 2, "seller_id", NOT_INVOLVED + " (S1)"),
        ("loans", 1, "sme_id", "must be the SME of this history (S1)"),
    ]  # fmt: skip


def test_history_checks_the_roles_of_known_counterparties() -> None:
    raw = history()
    raw["loans"].loc[0, "core_id"] = "S5"  # known, but an SME
    assert found(raw, history_of="S1", known_enterprises=known()) == [
        ("loans", 1, "core_id", "must be an enterprise with role core")
    ]


def test_history_sme_known_as_a_core_is_an_error() -> None:
    assert found(history(), history_of="C3", known_enterprises=known()) == [
        ("enterprises", None, "role", "C3 is the SME of this history: its role must be sme"),
        ("invoices", 1, "seller_id", NOT_INVOLVED + " (C3)"),
        ("invoices", 2, "seller_id", NOT_INVOLVED + " (C3)"),
        ("loans", 1, "sme_id", "must be the SME of this history (C3)"),
    ]  # fmt: skip


def test_history_sme_given_as_a_core_row_is_reported_at_that_row() -> None:
    raw = history()
    raw["enterprises"] = pd.DataFrame({"enterprise_id": ["C9", "S1"], "role": ["core", "core"]})
    assert found(raw, history_of="S1") == [
        ("enterprises", 2, "role", "S1 is the SME of this history: its role must be sme"),
        ("invoices", 1, "buyer_id", "neither seller_id nor buyer_id is an SME"),  # S1 -> C9
        ("loans", 1, "sme_id", "must be an enterprise with role sme"),
    ]


def test_strict_frames_need_enterprises_and_resolve_every_id() -> None:
    raw = history()
    assert found(raw) == [
        ("enterprises", None, None,
         "required table missing: expected enterprises.csv or enterprises.parquet"),
    ]  # fmt: skip
    assert found(raw, known_enterprises=known()) == [
        ("invoices", 1, "seller_id", "not in enterprises"),
        ("invoices", 2, "seller_id", "not in enterprises"),
        ("invoices", 2, "buyer_id", "not in enterprises"),
        ("loans", 1, "sme_id", "not in enterprises"),
    ]


def test_rows_are_numbered_by_position_whatever_the_index() -> None:
    raw = history()
    raw["invoices"].index = pd.Index([70, 30])
    raw["invoices"].loc[30, "due_date"] = "2024-01-01"
    assert found(raw, history_of="S1") == [("invoices", 2, "due_date", "must be >= issue_date")]


def test_nan_is_missing_and_inf_is_not_finite_in_frames() -> None:
    raw = history()
    raw["invoices"]["amount"] = [np.nan, np.inf]
    assert found(raw, history_of="S1") == [
        ("invoices", 1, "amount", "required value missing"),
        ("invoices", 2, "amount", "must be finite (not NaN or inf)"),
    ]


def test_object_columns_of_mixed_types_report_each_odd_cell() -> None:
    raw = history()
    raw["invoices"]["amount"] = pd.Series([True, "12x"], dtype=object)
    raw["loans"]["maturity_date"] = pd.Series([20240410], dtype=object)
    assert found(raw, history_of="S1") == [
        ("invoices", 1, "amount", "wrong type: expected a number, got bool"),
        ("invoices", 2, "amount", "not a number"),
        ("loans", None, "maturity_date", "wrong type: expected a date (YYYY-MM-DD), got int64"),
    ]


def test_numeric_ids_are_the_wrong_type() -> None:
    raw = history()
    raw["loans"]["loan_id"] = [17]
    assert found(raw, history_of="S1") == [
        ("loans", None, "loan_id", "wrong type: expected text, got int64")
    ]


def test_native_dates_and_timestamps_are_accepted() -> None:
    raw = history()
    raw["invoices"]["issue_date"] = pd.to_datetime(raw["invoices"]["issue_date"])
    raw["invoices"]["due_date"] = [dt.date(2024, 2, 5), dt.date(2024, 3, 9)]
    raw["invoices"]["paid_date"] = pd.Series([dt.date(2024, 2, 1), "2024-03-01"], dtype=object)
    raw["invoices"]["paid_amount"] = [120.0, 80.5]
    tables = validate_frames(raw, history_of="S1", today=TODAY)
    assert tables.invoices["due_date"].tolist() == [
        pd.Timestamp("2024-02-05"),
        pd.Timestamp("2024-03-09"),
    ]
    assert tables.invoices["paid_date"].iloc[1] == pd.Timestamp("2024-03-01")


def test_unknown_table_name_is_ignored_with_a_warning() -> None:
    raw = {**history(), "payments": pd.DataFrame({"x": [1]})}
    tables = validate_frames(raw, history_of="S1", today=TODAY)
    assert tables.warnings == ("payments: not a table of the data contract; ignored",)


def test_a_frame_is_required() -> None:
    with pytest.raises(TypeError, match="invoices: expected a pandas DataFrame, got list"):
        validate_frames({"invoices": [{"invoice_id": "I1"}]})  # type: ignore[dict-item]


def test_loaded_frames_validate_again_unchanged(tmp_path: Path) -> None:
    tables = load_tables(write_folder(tmp_path), today=TODAY)
    again = validate_frames(tables.frames(), today=TODAY)
    for name, frame in tables.frames().items():
        pd.testing.assert_frame_equal(again.frames()[name], frame)
    assert isinstance(again, Tables)


def test_returned_frames_are_writable(tmp_path: Path) -> None:
    tables = load_tables(write_folder(tmp_path), today=TODAY)
    inv = tables.invoices
    inv.loc[0, "amount"] = 1.0
    inv.loc[0, "issue_date"] = pd.Timestamp("2024-01-01").as_unit("ns")
    inv.loc[0, "disputed"] = True
    inv.loc[0, "invoice_id"] = "Z"
    assert inv.iloc[0][["amount", "disputed", "invoice_id"]].tolist() == [1.0, True, "Z"]
    assert ENTERPRISES.name in tables.frames()
