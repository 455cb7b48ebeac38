"""Every catalog feature has a domain and reason codes (a feature added without them fails here:
declare its unit's domain or an override, and its codes come from its name)."""

from __future__ import annotations

import math

import pytest

from features.catalog import (
    CATALOG,
    Domain,
    Feature,
    all_reason_codes,
    domain_of,
    fin_feature,
    format_value,
    get_feature,
    reason_codes,
)
from features.exceptions import FeatureError


@pytest.mark.parametrize("feature", [*CATALOG, fin_feature("revenue")], ids=lambda f: f.name)
def test_every_feature_has_a_domain_and_codes(feature: Feature) -> None:
    domain = domain_of(feature)
    if feature.kind == "categorical":
        assert domain.categorical
        assert set(reason_codes(feature)) == {"CATEGORY", "MISSING"}
    else:
        assert not domain.categorical
        assert math.isfinite(domain.low) and math.isfinite(domain.high)
        assert domain.low < domain.high
        assert set(reason_codes(feature)) == {"HIGH", "LOW", "MISSING"}
        if feature.unit in ("share", "index 0-1"):
            assert (domain.low, domain.high) in ((0.0, 1.0), (-1.0, 1.0))
        if feature.unit in ("days", "months", "years", "invoices", "loans", "enterprises"):
            assert (
                domain.low >= 0
                or feature.name.endswith(("_trend", "_change_365d", "_stress"))
                or feature.name.startswith("cash_conversion")
            )
    for rc in reason_codes(feature).values():
        assert rc.code == rc.code.upper() and rc.code.startswith(feature.name.upper())
        assert "{" not in rc.template.replace("{value}", "")
        if rc.side != "MISSING":
            assert "{value}" in rc.template


def test_codes_are_unique_and_stable() -> None:
    codes = [rc.code for rc in all_reason_codes()]
    assert len(codes) == len(set(codes))
    assert "AP_DAYS_BEYOND_TERMS_365D_HIGH" in codes and "PLEDGED_SHARE_MISSING" in codes


def test_a_unit_without_a_domain_is_an_error() -> None:
    with pytest.raises(FeatureError, match="no domain"):
        domain_of(Feature("new_thing", "x", "A new thing", "furlongs", 1))


def test_domain_violations_name_value_and_domain() -> None:
    share = domain_of(get_feature("ar_90p_share"))
    assert share.violation(0.5) is None
    assert share.violation(1.5) == "value 1.5 outside the domain [0, 1]"
    cat = Domain(categorical=True)
    msg = cat.violation("Textiles", ["food", "textiles"])
    assert msg == "unknown category 'Textiles': expected one of 'food', 'textiles'"


def test_sentences_read_like_sentences() -> None:
    dbt = get_feature("ap_days_beyond_terms_365d")
    assert (
        reason_codes(dbt)["HIGH"].template.format(value=format_value(dbt, 34.2))
        == "Pays its suppliers 34 days beyond terms on average over the last year"
    )
    assert reason_codes(get_feature("pledged_share"))["MISSING"].template == (
        "No inventory pledged in the last 365 days"
    )


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("ar_open_amount", 992607.0900000003, "992,607"),
        ("ar_90p_share", -0.0, "0%"),
        ("ar_90p_share", 0.3449, "34%"),
        ("sales_growth_qoq", -0.00001, "0%"),
        ("sales_growth_qoq", 0.25, "+25%"),
        ("dso_90d", 1.0, "1 day"),
        ("firm_age_years", 7.25, "7.2 years"),
        ("industry", "food", "food"),
        ("dso_90d", None, "missing"),
    ],
)
def test_values_formatted_by_unit(name: str, value: float | str | None, text: str) -> None:
    assert format_value(get_feature(name), value) == text
