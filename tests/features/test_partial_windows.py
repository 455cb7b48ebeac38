"""Per-day rates over windows the SME's history covers only in part.

An SME whose history starts s days before the as-of date T and trades at a constant daily rate has
the same DSO, DPO and DIO in every window, whatever s: "days in W" are the days of W its history
covers (from its first invoice; for cost of goods sold, from its first inventory snapshot, whose
own cogs covers days before it). A window that reaches before the history began is not a window
of zero activity.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.pipeline import build_features
from tests.support.tables import make_tables

T = date(2024, 6, 30)
DAILY_SALES = 100.0
DAILY_PURCHASES = 40.0
DAILY_COGS = 30.0
INVENTORY = 2700.0
EXPOSURE = 5000.0


def d(k: int) -> str:
    return (T + timedelta(days=k)).isoformat()


def constant_trader(history_days: int, snapshot_months: int) -> Any:
    """S1 sells DAILY_SALES and buys DAILY_PURCHASES every day of (T - history_days, T] on
    30-day terms, everything issued in the last 30 days still open; one monthly snapshot of
    INVENTORY every 30 days back from T, `snapshot_months` of them after the first, each with
    30 days of cogs; one loan of EXPOSURE outstanding at T."""
    enterprises = [{"enterprise_id": "C1", "role": "core"}, {"enterprise_id": "S1", "role": "sme"}]
    invoices = []
    for k in range(-history_days + 1, 1):
        paid = None if k > -30 else d(k + 30)
        for side, (seller, buyer, amount) in {
            "R": ("S1", "C1", DAILY_SALES),
            "P": ("C1", "S1", DAILY_PURCHASES),
        }.items():
            invoices.append(
                {
                    "invoice_id": f"{side}{k + 1000}",
                    "seller_id": seller,
                    "buyer_id": buyer,
                    "issue_date": d(k),
                    "due_date": d(k + 30),
                    "amount": amount,
                    "paid_date": paid,
                    "paid_amount": None if paid is None else amount,
                }
            )
    inventory = [
        {
            "sme_id": "S1",
            "snapshot_date": d(-30 * m),
            "inventory_value": INVENTORY,
            "cogs": 30 * DAILY_COGS,
        }
        for m in range(snapshot_months + 1)
    ]
    loans = [
        {
            "loan_id": "L1",
            "sme_id": "S1",
            "product": "prepayment",
            "disbursed_date": d(-10),
            "maturity_date": d(100),
            "amount": EXPOSURE,
        }
    ]
    tables = make_tables(enterprises, invoices, inventory, loans, [])
    return build_features(tables, [T], data_end=d(400)).set_index("sme_id").loc["S1"]


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(
    history_days=st.one_of(st.integers(31, 100), st.integers(31, 500)),
    snapshot_months=st.integers(1, 12),
)
def test_a_constant_daily_rate_is_the_same_in_every_window(
    history_days: int, snapshot_months: int
) -> None:
    row = constant_trader(history_days, snapshot_months)
    # open at T: the last 30 days of sales / purchases
    dso, dpo, dio = 30 * DAILY_SALES / DAILY_SALES, 30.0, INVENTORY / DAILY_COGS
    for w in (90, 180, 365):
        assert row[f"dso_{w}d"] == pytest.approx(dso), w
        assert row[f"dpo_{w}d"] == pytest.approx(dpo), w
        assert row[f"dio_{w}d"] == pytest.approx(dio), w
        assert row[f"inventory_turnover_{w}d"] == pytest.approx(w / dio), w
        assert row[f"cash_conversion_cycle_{w}d"] == pytest.approx(dso + dio - dpo), w
    # a change against the SME's own year needs history before the last 90 days (COGS: the
    # snapshots after the first cover (T - 30 * snapshot_months, T])
    if snapshot_months * 30 > 90:
        assert row["dio_change_365d"] == pytest.approx(0.0, abs=1e-12)
    else:
        assert row["dio_change_365d"] != row["dio_change_365d"]  # NaN: no baseline
    for change in ("dispute_rate_change_365d", "ap_days_beyond_terms_change_365d"):
        if history_days > 90:
            assert row[change] == pytest.approx(0.0, abs=1e-12), change
        else:
            assert row[change] != row[change], change  # NaN: no baseline
    assert row["exposure_to_sales_365d"] == pytest.approx(EXPOSURE / (365 * DAILY_SALES))
    # the 90 days before the last 90 hold at least one day of history when it started by T-90
    if history_days >= 91:
        assert row["sales_growth_qoq"] == pytest.approx(0.0, abs=1e-12)
        assert row["purchases_growth_qoq"] == pytest.approx(0.0, abs=1e-12)
    else:
        assert row["sales_growth_qoq"] != row["sales_growth_qoq"]  # NaN: nothing to compare
    if history_days >= 366:
        assert row["sales_growth_yoy"] == pytest.approx(0.0, abs=1e-12)


def test_a_window_the_history_covers_whole_is_divided_by_its_length() -> None:
    # 500 days of history: every window is whole; sales in 365 d 36,500 -> DSO 3000 / 100
    row = constant_trader(500, 12)
    assert row["sales_amount_365d"] == 365 * DAILY_SALES
    assert row["dso_365d"] == pytest.approx(3000 / (36_500 / 365))


def test_volatility_counts_only_the_months_the_history_covers_whole() -> None:
    # 45 days of history: month buckets are ages 0-30 (31 days) and 31-60; only the first is
    # whole (ages 0..30 <= 44): one month is no volatility
    assert (
        constant_trader(45, 1)["sales_volatility_365d"]
        != constant_trader(45, 1)["sales_volatility_365d"]
    )
    # 100 days: whole buckets ages 0-30 (31 days), 31-60 (30), 61-91 (31): 3100, 3000, 3100
    monthly = [3100.0, 3000.0, 3100.0]
    mean = sum(monthly) / 3
    std = (sum((m - mean) ** 2 for m in monthly) / 3) ** 0.5
    assert constant_trader(100, 3)["sales_volatility_365d"] == pytest.approx(std / mean)
