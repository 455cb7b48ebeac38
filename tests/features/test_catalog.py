"""The catalog: one declaration per feature, readable descriptions, honest directions."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from features.catalog import (
    CATALOG,
    FIN_PREFIX,
    WINDOWS,
    catalog_for,
    categorical_features,
    feature_names,
    financial_columns,
    get_feature,
    monotone_constraints,
)
from features.exceptions import FeatureError


def test_names_unique_snake_case_and_windowed_suffixes():
    names = feature_names()
    assert len(names) == len(set(names))
    for f in CATALOG:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", f.name), f.name
        assert not f.name.startswith(FIN_PREFIX)
        if f.window_days is not None:
            assert f.name.endswith(f"_{f.window_days}d"), f.name
            assert f.window_days in WINDOWS


def test_every_feature_is_described_for_a_person():
    for f in CATALOG:
        assert f.description[0].isupper() and len(f.description) >= 20, f.name
        assert "_" not in f.description, f"{f.name}: description uses a code name"
        assert f.unit and f.group
        assert f.direction in (-1, 0, 1)
        assert f.kind in ("numeric", "categorical")


def test_features_md_families_are_all_declared():
    names = set(feature_names())
    for w in WINDOWS:
        for stem in (
            "dso",
            "ar_days_to_collect",
            "ar_paid_late_share",
            "dilution",
            "dispute_rate",
            "ar_confirmed_share",
            "ap_days_beyond_terms",
            "ap_max_days_past_due",
            "ap_late_rate",
            "sales_amount",
            "sales_count",
            "purchases_amount",
            "purchases_count",
            "inventory_turnover",
            "dio",
            "dpo",
            "cash_conversion_cycle",
        ):
            assert f"{stem}_{w}d" in names
    for bucket in ("current", "1_30", "31_60", "61_90", "90p"):
        assert {f"ar_{bucket}_amount", f"ar_{bucket}_share"} <= names
    assert {
        "ar_open_amount",
        "buyer_hhi_365d",
        "ap_past_due_share",
        "ap_days_beyond_terms_trend",
        "payment_index_365d",
        "sales_growth_qoq",
        "sales_growth_yoy",
        "sales_volatility_365d",
        "months_since_first_invoice",
        "days_since_last_sale",
        "active_cores_365d",
        "inventory_change_90d",
        "pledged_share",
        "main_core_rating_ordinal",
        "core_rating_weighted",
        "main_core_payment_stress",
        "peer_default_share_365d",
        "active_loans",
        "loan_exposure",
        "exposure_to_sales_365d",
        "guaranteed_exposure_share",
        "firm_age_years",
        "industry",
        "region",
        "static_rating_ordinal",
        "financials_age_days",
    } <= names


def test_directions_where_the_risk_is_clear():
    expect = {
        "ar_90p_share": 1,
        "ar_current_share": -1,
        "dso_90d": 1,
        "payment_index_365d": -1,
        "ap_days_beyond_terms_365d": 1,
        "peer_default_share_365d": 1,
        "static_rating_ordinal": 1,
        "main_core_rating_ordinal": 1,
        "sales_growth_qoq": 0,  # growth cuts both ways
        "sales_amount_365d": 0,  # size, not risk
        "industry": 0,
    }
    for name, direction in expect.items():
        assert get_feature(name).direction == direction, name
    assert categorical_features() == ["industry", "region"]
    assert all(get_feature(n).direction == 0 for n in categorical_features())


def test_dynamic_fin_features_and_lookup():
    frame = pd.DataFrame(
        {
            "sme_id": pd.Series(["S1"], dtype="str"),
            "period_end": pd.to_datetime(["2024-01-31"]),
            "published_date": pd.to_datetime(["2024-05-31"]),
            "total_assets": [1.0],
            "equity_ratio": [0.3],
            "auditor": pd.Series(["X"], dtype="str"),  # not numeric: ignored
            "audited": [True],  # bool: ignored
        }
    )
    assert financial_columns(frame) == ["equity_ratio", "total_assets"]
    full = catalog_for(frame)
    assert full[: len(CATALOG)] == CATALOG
    assert [f.name for f in full[len(CATALOG) :]] == ["fin_equity_ratio", "fin_total_assets"]
    assert all(f.direction == 0 and f.group == "financials" for f in full[len(CATALOG) :])
    assert catalog_for(["b", "a"])[-2].name == "fin_a"
    assert catalog_for(None) == CATALOG
    assert get_feature("fin_cash").direction == 0
    with pytest.raises(FeatureError, match="unknown feature 'nope'"):
        get_feature("nope")


def test_monotone_constraints_follow_the_requested_order():
    names = ["payment_index_365d", "fin_x", "dso_90d", "industry"]
    assert monotone_constraints(names) == [-1, 0, 1, 0]


def test_the_code_computes_exactly_the_catalog():
    """No feature computed that the catalog does not declare, none declared and not computed."""
    from features.own import own_features
    from features.reference import build_reference, sme_ids_of
    from tests.support.tables import random_tables

    tables = random_tables(n_smes=6, n_cores=2, n_invoices=200, days=400, seed=3)
    reference = build_reference(tables)
    ids = sme_ids_of(tables)
    prepared = reference.prepare(tables, ids)
    own = {k for k in own_features(prepared, 19_700, 365) if not k.startswith("_")}
    from_reference = {"main_core_payment_stress", "peer_default_share_365d"}
    assert not own & from_reference
    assert own | from_reference == set(feature_names(reference.catalog()))


def test_fin_features_are_constrained_only_where_the_direction_is_declared() -> None:
    full = catalog_for(["revenue", "current_ratio", "debt_to_assets", "net_margin", "cash"])
    directions = {f.name: f.direction for f in full if f.group == "financials"}
    assert directions == {
        "financials_age_days": 0,
        "fin_cash": 0,
        "fin_current_ratio": -1,
        "fin_debt_to_assets": 1,
        "fin_net_margin": -1,
        "fin_revenue": 0,
    }
