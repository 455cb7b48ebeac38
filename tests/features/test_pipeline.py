"""Hand-worked fixture: every expected value below is worked out by hand in the comments.

The as-of date is T = 2024-06-30; `d(k)` is the date k days after T (negative: before).
Windows are (T - W, T]. Amount-weighted averages are sum(amount * x) / sum(amount).
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from features.catalog import catalog_for, feature_names
from features.engines import split_tables
from features.exceptions import FeatureError
from features.pipeline import LABEL, build_features, data_range, month_ends
from features.reference import build_reference, sme_features
from tests.support.tables import make_tables

T = date(2024, 6, 30)


def d(k: int) -> str:
    return (T + timedelta(days=k)).isoformat()


def inv(i, seller, buyer, issue, due, amount, paid=None, paid_amount=None, **extra):
    row = {
        "invoice_id": i,
        "seller_id": seller,
        "buyer_id": buyer,
        "issue_date": d(issue),
        "due_date": d(due),
        "amount": amount,
        "paid_date": None if paid is None else d(paid),
        "paid_amount": paid_amount
        if paid_amount is not None
        else (None if paid is None else amount),
    }
    row.update(extra)
    return row


ENTERPRISES = [
    {"enterprise_id": "C1", "role": "core", "external_rating": "A"},  # ordinal 5
    {"enterprise_id": "C2", "role": "core", "external_rating": "BBB"},  # ordinal 8
    {"enterprise_id": "C3", "role": "core"},  # unrated
    {
        "enterprise_id": "S1",
        "role": "sme",
        "industry": "food",
        "region": "north",
        "founded_date": "2014-06-30",
        "external_rating": "BB",  # ordinal 11
    },
    {"enterprise_id": "S2", "role": "sme", "industry": "steel"},
    {"enterprise_id": "S3", "role": "sme"},
    {"enterprise_id": "S4", "role": "sme"},
    {"enterprise_id": "S5", "role": "sme"},
    {"enterprise_id": "S6", "role": "sme"},
]

INVOICES = [
    # S1's receivables (S1 sells)
    inv("R1", "S1", "C1", -200, -170, 1000, paid=-150, paid_amount=950),
    inv("R2", "S1", "C1", -80, -50, 2000, confirmed_date=d(3)),  # confirmed after T
    inv("R3", "S1", "C2", -40, -10, 500, disputed=True, confirmed_date=d(-35)),
    inv("R4", "S1", "C1", -20, 10, 1500, confirmed_date=d(-15)),
    inv("R5", "S1", "S2", -120, -90, 400),
    inv("R6", "S1", "C2", -300, -270, 600),
    inv("R7", "S1", "C1", -60, -30, 800, paid=-30),
    inv("R8", "S1", "C1", -30, 0, 300, paid=5),  # paid after T: open at T
    inv("R9", "S1", "C1", -400, -370, 700, paid=-360),
    inv("R10", "S1", "C1", 10, 40, 999),  # issued after T
    # S1's payables (S1 buys)
    inv("P1", "C3", "S1", -100, -70, 1000, paid=-60),
    inv("P2", "C2", "S1", -50, -20, 500),
    inv("P3", "S2", "S1", -10, 20, 300),
    inv("P4", "C3", "S1", -150, -120, 400, paid=-125),
    inv("P5", "C2", "S1", -40, -5, 200, paid=10),  # paid after T: open and overdue at T
    # other SMEs
    inv("Q1", "S2", "C1", -70, -40, 1000, paid=-10),
    inv("Q2", "C2", "S2", -45, -15, 250, paid=-15),
    inv("Q3", "S3", "C1", -300, -270, 100, paid=-260),
    inv("Q4", "S4", "C1", -500, -470, 100, paid=-460),
    inv("Q5", "S5", "C1", -200, -170, 100, paid=-160),
    inv("Q6", "S6", "C1", 10, 40, 100),
]

INVENTORY = [
    {"sme_id": "S1", "snapshot_date": d(-200), "inventory_value": 1000, "cogs": 300},
    {"sme_id": "S1", "snapshot_date": d(-100), "inventory_value": 1200, "pledged_value": 300,
     "cogs": 600},
    {"sme_id": "S1", "snapshot_date": d(-10), "inventory_value": 800, "pledged_value": 400,
     "cogs": 500},
    {"sme_id": "S1", "snapshot_date": d(20), "inventory_value": 5000, "cogs": 9},  # after T
    {"sme_id": "S2", "snapshot_date": d(-30), "inventory_value": 500},  # no cogs
]  # fmt: skip

LOANS = [
    {"loan_id": "L1", "sme_id": "S1", "product": "receivable_financing", "core_id": "C1",
     "disbursed_date": d(-100), "maturity_date": d(80), "amount": 2000,
     "repurchase_guarantee": True},
    {"loan_id": "L2", "sme_id": "S1", "product": "prepayment", "disbursed_date": d(-50),
     "maturity_date": d(100), "amount": 1000, "default_date": d(40)},
    {"loan_id": "L3", "sme_id": "S1", "product": "prepayment", "disbursed_date": d(-400),
     "maturity_date": d(-30), "amount": 5000},
    {"loan_id": "L4", "sme_id": "S1", "product": "prepayment", "disbursed_date": d(5),
     "maturity_date": d(90), "amount": 7000},
    {"loan_id": "L5", "sme_id": "S3", "product": "prepayment", "disbursed_date": d(-250),
     "maturity_date": d(50), "amount": 100, "default_date": d(-100)},
    {"loan_id": "L6", "sme_id": "S5", "product": "prepayment", "disbursed_date": d(-520),
     "maturity_date": d(-300), "amount": 100, "default_date": d(-400)},
]  # fmt: skip

FINANCIALS = [
    {"sme_id": "S1", "period_end": d(-400), "published_date": d(-280), "equity_ratio": 0.25,
     "debt": 100},
    {"sme_id": "S1", "period_end": d(-200), "equity_ratio": 0.30, "debt": 150},  # published d(-80)
    {"sme_id": "S1", "period_end": d(-35), "published_date": d(85), "equity_ratio": 0.9,
     "debt": 1},  # published after T
]  # fmt: skip


@pytest.fixture(scope="module")
def tables():
    return make_tables(ENTERPRISES, INVOICES, INVENTORY, LOANS, FINANCIALS)


@pytest.fixture(scope="module")
def panel(tables):
    return build_features(tables, [T], data_end=d(400))


@pytest.fixture(scope="module")
def s1(panel):
    return panel.set_index("sme_id").loc["S1"]


def test_population_is_s1_and_s2_only(panel):
    # S3 defaulted at T-100 and S5 at T-400 (excluded: default on or before T); S4's only invoice
    # is 500 days old; S6's only invoice is issued after T.
    assert panel["sme_id"].tolist() == ["S1", "S2"]
    assert (panel["as_of"] == pd.Timestamp(T)).all()


def test_columns_are_the_catalog(tables, panel):
    catalog = catalog_for(tables)
    assert list(panel.columns) == ["sme_id", "as_of", *feature_names(catalog), LABEL]
    assert "fin_debt" in panel and "fin_equity_ratio" in panel


def test_receivable_aging(s1):
    # open at T: R2 2000 (50 days past due), R3 500 (10), R4 1500 (not due), R5 400 (90),
    # R6 600 (270), R8 300 (due on T: current; its payment at T+5 is not known at T) = 5300
    assert s1["ar_open_amount"] == 5300
    assert s1["ar_current_amount"] == 1800  # R4 + R8
    assert s1["ar_1_30_amount"] == 500
    assert s1["ar_31_60_amount"] == 2000
    assert s1["ar_61_90_amount"] == 400  # exactly 90 days past due
    assert s1["ar_90p_amount"] == 600
    assert s1["ar_current_share"] == pytest.approx(1800 / 5300)
    assert s1["ar_90p_share"] == pytest.approx(600 / 5300)


def test_dso(s1):
    # sales issued in (T-90, T]: R2 2000 + R3 500 + R4 1500 + R7 800 + R8 300 = 5100;
    # 180 d adds R5 400 = 5500; 365 d adds R1 1000 and R6 600 = 7100 (R9 is 400 days old)
    assert s1["sales_amount_90d"] == 5100 and s1["sales_count_90d"] == 5
    assert s1["sales_amount_180d"] == 5500 and s1["sales_count_180d"] == 6
    assert s1["sales_amount_365d"] == 7100 and s1["sales_count_365d"] == 8
    assert s1["dso_90d"] == pytest.approx(5300 / (5100 / 90))  # 93.53 days
    assert s1["dso_180d"] == pytest.approx(5300 / (5500 / 180))
    assert s1["dso_365d"] == pytest.approx(5300 / (7100 / 365))


def test_collection_speed_and_dilution(s1):
    # collected in (T-90, T]: R7 (60 -> 30 days before T: 30 days, on the due date)
    assert s1["ar_days_to_collect_90d"] == pytest.approx(30)
    assert s1["ar_paid_late_share_90d"] == 0
    assert s1["dilution_90d"] == 0
    # 180 d adds R1: 1000 collected after 50 days, 20 days late, 950 received
    assert s1["ar_days_to_collect_180d"] == pytest.approx((1000 * 50 + 800 * 30) / 1800)
    assert s1["ar_paid_late_share_180d"] == pytest.approx(1000 / 1800)
    assert s1["dilution_180d"] == pytest.approx(1 - 1750 / 1800)
    # 365 d adds R9 (paid 360 days before T: 700 after 40 days, 10 days late)
    assert s1["ar_days_to_collect_365d"] == pytest.approx((50_000 + 24_000 + 28_000) / 2500)
    assert s1["ar_paid_late_share_365d"] == pytest.approx(1700 / 2500)
    assert s1["dilution_365d"] == pytest.approx(1 - 2450 / 2500)


def test_disputes_confirmation_and_concentration(s1):
    # R3 is disputed: 1 of 5 / 6 / 8 invoices
    assert s1["dispute_rate_90d"] == pytest.approx(1 / 5)
    assert s1["dispute_rate_180d"] == pytest.approx(1 / 6)
    assert s1["dispute_rate_365d"] == pytest.approx(1 / 8)
    assert s1["dispute_rate_change_365d"] == pytest.approx(1 / 5 - 1 / 8)  # against its own year
    # confirmed by T: R3 500 and R4 1500 (R2's confirmation comes after T)
    assert s1["ar_confirmed_share_90d"] == pytest.approx(2000 / 5100)
    assert s1["ar_confirmed_share_365d"] == pytest.approx(2000 / 7100)
    # 365 d sales by buyer: C1 2000+1500+800+300+1000 = 5600, C2 500+600 = 1100, S2 400
    assert s1["buyer_hhi_365d"] == pytest.approx((5600**2 + 1100**2 + 400**2) / 7100**2)


def test_own_payment_behaviour(s1):
    # open payables at T: P2 500 (20 days overdue), P3 300 (not due), P5 200 (5 days overdue;
    # paid only after T) -> past due share 700 / 1000
    assert s1["ap_past_due_share"] == pytest.approx(0.7)
    # 90 d: P1 paid 10 days late (1000) + open overdue P2 20 days (500), P5 5 days (200)
    assert s1["ap_days_beyond_terms_90d"] == pytest.approx(21_000 / 1700)
    # 180 d adds P4, paid 5 days early: counts 0 days (400)
    assert s1["ap_days_beyond_terms_180d"] == pytest.approx(21_000 / 2100)
    assert s1["ap_days_beyond_terms_365d"] == pytest.approx(10.0)
    assert s1["ap_days_beyond_terms_change_365d"] == pytest.approx(21_000 / 1700 - 10.0)
    assert s1["ap_max_days_past_due_90d"] == 20
    assert s1["ap_max_days_past_due_365d"] == 20
    assert s1["ap_late_rate_90d"] == 1.0  # P1
    assert s1["ap_late_rate_180d"] == 0.5  # P1 late, P4 early
    # at T-90: P4 paid in (T-180, T-90] on time (0 days); P1 open but not yet due -> 0
    assert s1["ap_days_beyond_terms_trend"] == pytest.approx(21_000 / 1700 - 0.0)


def test_payment_index(s1):
    # knots: -20 d -> 100, 0 -> 80, 15 -> 70, 22 -> 60 (linear between)
    # P1 +10 d: 80 - 10 * 10/15; P4 -5 d: 80 + 5 * 20/20 = 85;
    # P2 open, 20 d overdue: 70 - 5 * 10/7; P5 open, 5 d overdue: 80 - 5 * 10/15
    expected = (
        1000 * (80 - 10 * 10 / 15) + 400 * 85 + 500 * (70 - 5 * 10 / 7) + 200 * (80 - 5 * 10 / 15)
    ) / 2100
    assert s1["payment_index_365d"] == pytest.approx(expected)  # 73.38


def test_trade_activity(s1):
    # purchases: 90 d P2 500 + P3 300 + P5 200; 180 d adds P1 1000 and P4 400
    assert s1["purchases_amount_90d"] == 1000 and s1["purchases_count_90d"] == 3
    assert s1["purchases_amount_365d"] == 2400 and s1["purchases_count_365d"] == 5
    # sales growth of daily rates: last 90 d 5100 vs (T-180, T-90] R5 400, both 90 days of
    # history; vs (T-455, T-365] R9 700, whose 90 days hold only 36 of S1's history (its first
    # invoice R9 is T-400: days T-400 .. T-365)
    assert s1["sales_growth_qoq"] == pytest.approx(5100 / 400 - 1)
    assert s1["sales_growth_yoy"] == pytest.approx((5100 / 90) / (700 / 36) - 1)  # 1.91
    assert s1["purchases_growth_qoq"] == pytest.approx(1000 / 1400 - 1)
    assert math.isnan(s1["purchases_growth_yoy"])  # nothing bought a year earlier
    # monthly buckets (age * 12 // 365): R4 20 d and R8 30 d -> 0; R3 40, R7 60 -> 1;
    # R2 80 -> 2; R5 120 -> 3; R1 200 -> 6; R6 300 -> 9
    monthly = np.array([1800, 1300, 2000, 400, 0, 0, 1000, 0, 0, 600, 0, 0], dtype=float)
    assert s1["sales_volatility_365d"] == pytest.approx(monthly.std() / monthly.mean())
    assert s1["months_since_first_invoice"] == pytest.approx(400 / (365.25 / 12))  # R9
    assert s1["days_since_last_sale"] == 20  # R4 (R10 is issued after T)
    assert s1["active_cores_365d"] == 3  # C1, C2 (sales and purchases), C3 (purchases)


def test_inventory(s1, panel):
    # latest snapshot at T-10: 800 (400 pledged); at T-90 the latest was T-100: 1200
    assert s1["inventory_change_90d"] == pytest.approx(800 / 1200 - 1)
    assert s1["pledged_share"] == pytest.approx(0.5)
    # 90 d: one snapshot 800, cogs 500; 180 d: 1200, 800 avg 1000, cogs 1100;
    # 365 d: avg 1000 (the T+20 snapshot is not known). S1's inventory history starts with its
    # first snapshot at T-200, whose cogs 300 covers days before it: not counted. The 365-day
    # cogs is 600 + 500 = 1100 over the 200 days (T-200, T], 5.5 a day
    assert s1["inventory_turnover_90d"] == pytest.approx(500 / 800)
    assert s1["dio_90d"] == pytest.approx(800 / (500 / 90))  # 144 days
    assert s1["inventory_turnover_180d"] == pytest.approx(1.1)
    assert s1["inventory_turnover_365d"] == pytest.approx(5.5 * 365 / 1000)  # 2.01 a year
    assert s1["dio_365d"] == pytest.approx(1000 / 5.5)  # 181.8 days
    assert s1["dio_change_365d"] == pytest.approx(144 / (1000 / 5.5) - 1)
    # DPO: open payables 1000 / (purchases / W); S1's invoices go back to T-400: whole windows
    assert s1["dpo_90d"] == pytest.approx(90)
    assert s1["dpo_180d"] == pytest.approx(1000 / (2400 / 180))
    assert s1["cash_conversion_cycle_90d"] == pytest.approx(5300 / (5100 / 90) + 144 - 90)
    # S2 has no cogs: purchases stand in (Q2 250 in 90 d) against its one snapshot of 500.
    # S2's first invoice is R5 (it bought from S1) at T-120: the 90-day window is whole, the
    # 365-day window holds 121 days of its history, with R5 400 + Q2 250 = 650 bought
    s2 = panel.set_index("sme_id").loc["S2"]
    assert s2["inventory_turnover_90d"] == pytest.approx(250 / 500)
    assert s2["dio_90d"] == pytest.approx(500 / (250 / 90))
    assert s2["dio_365d"] == pytest.approx(500 / (650 / 121))  # 93.1 days, not 500 / (650 / 365)
    assert s2["dpo_365d"] == pytest.approx(400 / (650 / 121))  # R5 400 is still open
    # S2 pledged nothing in the last 365 days: it does not use warehouse receipts, so its share
    # is missing rather than 0 (which would rank it with the safest pledgers)
    assert math.isnan(s2["pledged_share"])


def test_pledged_share_of_a_firm_that_stopped_pledging_is_zero_not_missing():
    # P1 pledged 300 at T-100 and nothing at T-10: a pledging firm with nothing pledged now (0);
    # P2 never pledged: missing; P3 pledged 500 days ago only, outside the 365-day year: missing
    enterprises = [{"enterprise_id": "C1", "role": "core"}] + [
        {"enterprise_id": s, "role": "sme"} for s in ("P1", "P2", "P3")
    ]
    invoices = [inv(f"I{s}", s, "C1", -20, 10, 100) for s in ("P1", "P2", "P3")]
    snap = [
        ("P1", -100, 1000, 300), ("P1", -10, 800, 0), ("P2", -10, 800, 0),
        ("P3", -500, 900, 450), ("P3", -10, 800, 0),
    ]  # fmt: skip
    inventory = [
        {"sme_id": s, "snapshot_date": d(k), "inventory_value": v, "pledged_value": pv}
        for s, k, v, pv in snap
    ]
    rows = build_features(make_tables(enterprises, invoices, inventory), [T], data_end=d(400))
    share = rows.set_index("sme_id")["pledged_share"]
    assert share["P1"] == 0.0
    assert math.isnan(share["P2"]) and math.isnan(share["P3"])


def test_core_enterprises_and_peers(s1):
    # 365 d trade: C1 5600, C2 1100 sold + 700 bought = 1800, C3 1400 bought, S2 400 + 300
    assert s1["main_core_trade_share_365d"] == pytest.approx(5600 / 9500)
    assert s1["main_core_rating_ordinal"] == 5  # C1: A
    assert s1["core_rating_weighted"] == pytest.approx((5600 * 5 + 1800 * 8) / 7400)  # C3 unrated
    # C1 paid its suppliers: R7 800 after 30 d and Q1 1000 after 60 d in the last 90 d;
    # 365 d adds R1 1000 after 50 d, R9 700 after 40 d, Q3 100 after 40 d, Q5 100 after 40 d
    # (R8's payment comes after T)
    recent = (800 * 30 + 1000 * 60) / 1800
    baseline = (1000 * 50 + 800 * 30 + 700 * 40 + 1000 * 60 + 100 * 40 + 100 * 40) / 3700
    assert s1["main_core_payment_stress"] == pytest.approx(recent - baseline)
    # C1's other SMEs in (T-365, T]: S2, S3, S5 (S4: 500 days ago; S6: after T);
    # S3 defaulted at T-100, S5 at T-400 (outside the window) -> 1 / 3
    assert s1["peer_default_share_365d"] == pytest.approx(1 / 3)


def test_financing_firm_and_statements(s1):
    # active at T: L1 2000 (guaranteed) and L2 1000 (defaults only after T); L3 matured,
    # L4 not yet disbursed
    assert s1["active_loans"] == 2
    assert s1["loan_exposure"] == 3000
    assert s1["exposure_to_sales_365d"] == pytest.approx(3000 / 7100)
    assert s1["guaranteed_exposure_share"] == pytest.approx(2000 / 3000)
    assert s1["firm_age_years"] == pytest.approx(3653 / 365.25)  # 10 years, 3 leap days
    assert s1["industry"] == "food" and s1["region"] == "north"
    assert s1["static_rating_ordinal"] == 11  # BB
    # statements known at T: period T-400 (published T-280) and T-200 (published by default
    # 120 days later, T-80); the T-35 one is published after T
    assert s1["fin_equity_ratio"] == pytest.approx(0.30)
    assert s1["fin_debt"] == 150
    assert s1["financials_age_days"] == 200


def test_labels_and_horizon(tables):
    # L2 of S1 defaults at T+40
    mature = build_features(tables, [T], data_end=d(400)).set_index("sme_id")[LABEL]
    assert mature.to_dict() == {"S1": 1, "S2": 0}
    short = build_features(tables, [T], data_end=d(400), horizon_days=30).set_index("sme_id")
    assert short[LABEL].to_dict() == {"S1": 0, "S2": 0}  # T+40 is beyond a 30-day horizon
    assert build_features(tables, [T], data_end=d(400), horizon_days=40)[LABEL].tolist() == [1, 0]
    # default data end = the last observed event (statement published T+85): immature
    assert data_range(tables)[1] == pd.Timestamp(d(85))
    immature = build_features(tables, [T])
    assert immature[LABEL].isna().all() and str(immature[LABEL].dtype) == "Int8"
    # horizon 85 ends exactly on the data's last date: mature
    assert build_features(tables, [T], horizon_days=85)[LABEL].tolist() == [1, 0]


def test_zero_denominators_are_nan_never_inf(panel):
    numeric = panel.drop(columns=["sme_id", "as_of", "industry", "region", LABEL])
    values = numeric.to_numpy(dtype=float)
    assert not np.isinf(values).any()
    s2 = panel.set_index("sme_id").loc["S2"]
    assert math.isnan(s2["guaranteed_exposure_share"])  # no loans
    assert s2["loan_exposure"] == 0 and s2["exposure_to_sales_365d"] == 0
    assert math.isnan(s2["financials_age_days"]) and math.isnan(s2["fin_debt"])
    assert math.isnan(s2["ap_days_beyond_terms_trend"])  # nothing known 90 days earlier


def test_single_sme_path_equals_batch_row(tables, panel):
    reference = build_reference(tables)
    for sme in ("S1", "S2"):
        own = split_tables(tables, [[sme]])[0]
        assert set(own.enterprises["enterprise_id"]) == {sme}  # counterparties come from reference
        row = sme_features(own, T, reference)
        expected = panel[panel["sme_id"] == sme].drop(columns=[LABEL]).reset_index(drop=True)
        pd.testing.assert_frame_equal(row, expected, check_exact=True)


def test_single_sme_path_survives_reference_round_trip(tables, panel, tmp_path):
    reference = build_reference(tables)
    loaded = type(reference).from_dir(reference.to_dir(tmp_path / "ref"))
    own = split_tables(tables, [["S1"]])[0]
    row = sme_features(own, T, loaded)
    expected = panel[panel["sme_id"] == "S1"].drop(columns=[LABEL]).reset_index(drop=True)
    pd.testing.assert_frame_equal(row, expected, check_exact=True)


def test_dates_outside_the_data_and_empty_population(tables):
    assert data_range(tables)[0] == pd.Timestamp(d(-520))  # L6's disbursement, the oldest event
    with pytest.raises(FeatureError, match="outside the data's range"):
        build_features(tables, [d(-521)])
    with pytest.raises(FeatureError, match="outside the data's range"):
        build_features(tables, [d(86)])
    with pytest.raises(FeatureError, match="no SME is in the population"):
        build_features(tables, [d(-510)])  # no invoice issued on or before that day
    assert month_ends("2024-01-15", "2024-03-31") == [
        pd.Timestamp("2024-01-31"),
        pd.Timestamp("2024-02-29"),
        pd.Timestamp("2024-03-31"),
    ]


@pytest.mark.parametrize("with_known", [False, True])
def test_history_request_through_the_validator_gives_the_batch_row(tables, panel, with_known):
    """A scoring request's `history`: the SME's own rows only, validated by `validate_frames` in
    history mode (a bare enterprises row for the SME; counterparties unknown or taken from the
    reference's enterprises). The SME's attributes and the counterparties' come from the
    reference."""
    from features.io import validate_frames

    reference = build_reference(tables)
    own = split_tables(tables, [["S1"]])[0]
    raw = {name: own.frames()[name] for name in ("invoices", "inventory", "loans", "financials")}
    history = validate_frames(
        raw, history_of="S1", known_enterprises=reference.enterprises if with_known else None
    )
    row = sme_features(history, T, reference, sme_id="S1")
    expected = panel[panel["sme_id"] == "S1"].drop(columns=[LABEL]).reset_index(drop=True)
    pd.testing.assert_frame_equal(row, expected, check_exact=True)
