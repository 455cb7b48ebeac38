"""The feature catalog: every feature declared once (shared/docs/features.md).

The pipeline's output columns, LightGBM's monotone constraints, the API schema and the reason-code
text all read this module. Nothing else in the code lists feature names by hand.

Windowed features (suffix ``_90d``, ``_180d``, ``_365d``) cover the trailing window
``(t - W days, t]`` ending at the as-of date ``t``. Where a denominator is zero the value is
missing (NaN), never 0 or infinity. ``fin_*`` features are added per dataset by `catalog_for`.

Change features (suffix ``_change_365d``) compare the last 90 days with the SME's own level over
the last 365 days. Habits make levels differ between firms (one keeps 40 days of stock, another
80; one always pays a week late), so a level mixes habit and health while the change against the
firm's own year isolates the deterioration. A model cannot derive the change from the two windows
itself: the 365-day window is constrained in the same risk direction as the 90-day one, so it can
never act as the firm's baseline (a higher own baseline makes the same 90-day value less alarming).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from features.contract import FINANCIALS, Tables
from features.exceptions import FeatureError

Direction = Literal[-1, 0, 1]
Kind = Literal["numeric", "categorical"]

WINDOWS: tuple[int, ...] = (90, 180, 365)
"""The trailing windows W, in days, of every windowed feature."""

FIN_PREFIX = "fin_"


@dataclass(frozen=True)
class Feature:
    """One feature: its name, group, a description a borrower or auditor can read, unit, risk
    direction (+1 more risk as it grows, -1 less, 0 none/unconstrained) and kind.

    `window_days` is the trailing window of a windowed feature (None otherwise)."""

    name: str
    group: str
    description: str
    unit: str
    direction: Direction
    kind: Kind = "numeric"
    window_days: int | None = None


def _windowed(
    stem: str, group: str, description: str, unit: str, direction: Direction
) -> tuple[Feature, ...]:
    """One feature per window; `description` has a `{w}` placeholder for the window's days."""
    return tuple(
        Feature(f"{stem}_{w}d", group, description.format(w=w), unit, direction, window_days=w)
        for w in WINDOWS
    )


_AGING = (
    ("current", "not yet due", -1),
    ("1_30", "1 to 30 days past due", 1),
    ("31_60", "31 to 60 days past due", 1),
    ("61_90", "61 to 90 days past due", 1),
    ("90p", "more than 90 days past due", 1),
)

_RECEIVABLES: tuple[Feature, ...] = (
    Feature(
        "ar_open_amount",
        "receivables",
        "Amount of invoices issued to buyers and not yet paid",
        "currency",
        0,
    ),
    *(
        Feature(
            f"ar_{code}_amount",
            "receivables",
            f"Amount of open receivables {text}",
            "currency",
            0,
        )
        for code, text, _ in _AGING
    ),
    *(
        Feature(
            f"ar_{code}_share",
            "receivables",
            f"Share of open receivables {text}",
            "share",
            direction,  # type: ignore[arg-type]
        )
        for code, text, direction in _AGING
    ),
    *_windowed(
        "dso",
        "receivables",
        "Days sales outstanding: open receivables divided by average daily sales of the last "
        "{w} days",
        "days",
        1,
    ),
    *_windowed(
        "ar_days_to_collect",
        "receivables",
        "Average days from invoice to payment for receivables collected in the last {w} days "
        "(weighted by amount)",
        "days",
        1,
    ),
    *_windowed(
        "ar_paid_late_share",
        "receivables",
        "Share of the amount collected in the last {w} days that buyers paid after the due date",
        "share",
        1,
    ),
    *_windowed(
        "dilution",
        "receivables",
        "Share of the invoiced amount not received on receivables settled in the last {w} days",
        "share",
        1,
    ),
    *_windowed(
        "dispute_rate",
        "receivables",
        "Share of invoices issued to buyers in the last {w} days that are disputed",
        "share",
        1,
    ),
    Feature(
        "dispute_rate_change_365d",
        "receivables",
        "Dispute rate of the last 90 days minus the SME's own dispute rate over the last 365 days",
        "share",
        1,
        window_days=365,
    ),
    *_windowed(
        "ar_confirmed_share",
        "receivables",
        "Share of the amount invoiced in the last {w} days that the buyer has confirmed",
        "share",
        -1,
    ),
    Feature(
        "buyer_hhi_365d",
        "receivables",
        "Concentration of sales on few buyers over the last 365 days (Herfindahl index: "
        "1 = a single buyer)",
        "index 0-1",
        1,
        window_days=365,
    ),
)

_PAYABLES: tuple[Feature, ...] = (
    *_windowed(
        "ap_days_beyond_terms",
        "payment behaviour",
        "Average days the SME paid its suppliers after the due date in the last {w} days, "
        "counting unpaid overdue invoices up to today (weighted by amount)",
        "days",
        1,
    ),
    Feature(
        "ap_past_due_share",
        "payment behaviour",
        "Share of the SME's unpaid supplier invoices that are past due",
        "share",
        1,
    ),
    *_windowed(
        "ap_max_days_past_due",
        "payment behaviour",
        "Longest delay past the due date on the SME's supplier invoices paid in the last {w} "
        "days or still unpaid",
        "days",
        1,
    ),
    *_windowed(
        "ap_late_rate",
        "payment behaviour",
        "Share of supplier invoices paid in the last {w} days that the SME paid after the due date",
        "share",
        1,
    ),
    Feature(
        "ap_days_beyond_terms_trend",
        "payment behaviour",
        "Change in days beyond terms: the last 90 days minus the 90 days before",
        "days",
        1,
    ),
    Feature(
        "ap_days_beyond_terms_change_365d",
        "payment behaviour",
        "Days beyond terms of the last 90 days minus the SME's own level over the last 365 days",
        "days",
        1,
        window_days=365,
    ),
    Feature(
        "payment_index_365d",
        "payment behaviour",
        "Payment index of the last 365 days (100 = pays early, 80 = pays on terms, lower = "
        "pays later)",
        "index 1-100",
        -1,
        window_days=365,
    ),
)

_ACTIVITY: tuple[Feature, ...] = (
    *_windowed(
        "sales_amount",
        "trade activity",
        "Amount invoiced to buyers in the last {w} days",
        "currency",
        0,
    ),
    *_windowed(
        "sales_count",
        "trade activity",
        "Number of invoices issued to buyers in the last {w} days",
        "invoices",
        0,
    ),
    *_windowed(
        "purchases_amount",
        "trade activity",
        "Amount invoiced by suppliers in the last {w} days",
        "currency",
        0,
    ),
    *_windowed(
        "purchases_count",
        "trade activity",
        "Number of supplier invoices received in the last {w} days",
        "invoices",
        0,
    ),
    Feature(
        "sales_growth_qoq",
        "trade activity",
        "Growth of sales in the last 90 days over the 90 days before",
        "ratio",
        0,
    ),
    Feature(
        "sales_growth_yoy",
        "trade activity",
        "Growth of sales in the last 90 days over the same 90 days a year earlier",
        "ratio",
        0,
    ),
    Feature(
        "purchases_growth_qoq",
        "trade activity",
        "Growth of purchases in the last 90 days over the 90 days before",
        "ratio",
        0,
    ),
    Feature(
        "purchases_growth_yoy",
        "trade activity",
        "Growth of purchases in the last 90 days over the same 90 days a year earlier",
        "ratio",
        0,
    ),
    Feature(
        "sales_volatility_365d",
        "trade activity",
        "Volatility of monthly sales over the last 365 days (standard deviation / mean)",
        "ratio",
        1,
        window_days=365,
    ),
    Feature(
        "months_since_first_invoice",
        "trade activity",
        "Months since the SME's first recorded invoice",
        "months",
        -1,
    ),
    Feature(
        "days_since_last_sale",
        "trade activity",
        "Days since the SME last invoiced a buyer",
        "days",
        1,
    ),
    Feature(
        "active_cores_365d",
        "trade activity",
        "Number of core enterprises the SME traded with in the last 365 days",
        "enterprises",
        0,
        window_days=365,
    ),
)

_INVENTORY: tuple[Feature, ...] = (
    *_windowed(
        "inventory_turnover",
        "inventory",
        "Inventory turnover over the last {w} days: cost of goods sold divided by average "
        "inventory",
        "times",
        -1,
    ),
    *_windowed(
        "dio",
        "inventory",
        "Days inventory outstanding over the last {w} days: average inventory divided by daily "
        "cost of goods sold",
        "days",
        1,
    ),
    Feature(
        "dio_change_365d",
        "inventory",
        "Days inventory outstanding of the last 90 days relative to the SME's own level over the "
        "last 365 days (ratio minus 1): inventory building up against sales",
        "ratio",
        1,
        window_days=365,
    ),
    Feature(
        "inventory_change_90d",
        "inventory",
        "Change of the latest inventory value against the value 90 days earlier",
        "ratio",
        0,
    ),
    Feature(
        "pledged_share",
        "inventory",
        "Share of the latest inventory pledged to lenders (warehouse receipts); missing when the "
        "SME pledged no inventory in the last 365 days",
        "share",
        1,
    ),
    *_windowed(
        "dpo",
        "inventory",
        "Days payables outstanding: unpaid supplier invoices divided by average daily purchases "
        "of the last {w} days",
        "days",
        0,
    ),
    *_windowed(
        "cash_conversion_cycle",
        "inventory",
        "Cash conversion cycle over the last {w} days: days sales outstanding plus days "
        "inventory outstanding minus days payables outstanding",
        "days",
        1,
    ),
)

_NETWORK: tuple[Feature, ...] = (
    Feature(
        "main_core_trade_share_365d",
        "core enterprises",
        "Share of the SME's trade of the last 365 days done with its main core enterprise",
        "share",
        0,
        window_days=365,
    ),
    Feature(
        "main_core_rating_ordinal",
        "core enterprises",
        "Credit rating of the SME's main core enterprise (0 = AAA, higher = worse)",
        "rating notches",
        1,
    ),
    Feature(
        "core_rating_weighted",
        "core enterprises",
        "Average credit rating of the core enterprises the SME traded with in the last 365 days, "
        "weighted by trade (0 = AAA, higher = worse)",
        "rating notches",
        1,
    ),
    Feature(
        "main_core_payment_stress",
        "core enterprises",
        "How much slower the main core enterprise paid its suppliers in the last 90 days than "
        "over the last 365 days",
        "days",
        1,
    ),
    Feature(
        "peer_default_share_365d",
        "core enterprises",
        "Share of the other SMEs trading with the same main core enterprise that defaulted in the "
        "last 365 days",
        "share",
        1,
        window_days=365,
    ),
)

_FINANCING: tuple[Feature, ...] = (
    Feature("active_loans", "financing", "Number of the SME's loans outstanding", "loans", 0),
    Feature("loan_exposure", "financing", "Amount of the SME's loans outstanding", "currency", 0),
    Feature(
        "exposure_to_sales_365d",
        "financing",
        "Loans outstanding divided by sales of the last 365 days",
        "ratio",
        1,
        window_days=365,
    ),
    Feature(
        "guaranteed_exposure_share",
        "financing",
        "Share of loans outstanding with a repurchase guarantee from the core enterprise",
        "share",
        -1,
    ),
)

_FIRM: tuple[Feature, ...] = (
    Feature("firm_age_years", "firm", "Years since the firm was founded", "years", -1),
    Feature("industry", "firm", "Industry the firm operates in", "category", 0, kind="categorical"),
    Feature("region", "firm", "Region where the firm operates", "category", 0, kind="categorical"),
    Feature(
        "static_rating_ordinal",
        "firm",
        "Rating the bank assigned at onboarding (0 = AAA, higher = worse)",
        "rating notches",
        1,
    ),
    Feature(
        "financials_age_days",
        "financials",
        "Days since the end of the period of the latest published financial statement",
        "days",
        0,
    ),
)

CATALOG: tuple[Feature, ...] = (
    *_RECEIVABLES,
    *_PAYABLES,
    *_ACTIVITY,
    *_INVENTORY,
    *_NETWORK,
    *_FINANCING,
    *_FIRM,
)
"""The static catalog; `fin_*` features are added per dataset by `catalog_for`."""

TIME_LIKE: frozenset[str] = frozenset(
    {"firm_age_years", "months_since_first_invoice", "financials_age_days"}
)
"""Features that move with the calendar by construction (ages; the age of the latest statement
follows the publication season), so their distribution drifts from training's without any
change in risk: monitoring lists their drift apart and does not count it as a signal."""


def financial_columns(source: Tables | pd.DataFrame | Iterable[str]) -> list[str]:
    """The numeric statement columns of a financials table (sorted), i.e. the `fin_*` sources.

    `source` is a `Tables`, a financials frame (numeric non-bool columns beyond the declared
    ones), or the column names themselves."""
    if isinstance(source, Tables):
        source = source.financials
    if isinstance(source, pd.DataFrame):
        declared = {c.name for c in FINANCIALS.columns}
        names = [
            str(c)
            for c in source.columns
            if c not in declared
            and pd.api.types.is_numeric_dtype(source[c])
            and not pd.api.types.is_bool_dtype(source[c])
        ]
    else:
        names = [str(c) for c in source]
    return sorted(dict.fromkeys(names))


def fin_feature(column: str) -> Feature:
    """The `fin_<column>` feature of a financial statement column (direction unknown: 0)."""
    return Feature(
        f"{FIN_PREFIX}{column}",
        "financials",
        f"Latest published financial statement: {column}",
        "as reported",
        0,
    )


def catalog_for(source: Tables | pd.DataFrame | Iterable[str] | None = None) -> tuple[Feature, ...]:
    """The full catalog of a dataset: the static catalog plus `fin_<col>` per statement column.

    `source` as in `financial_columns`; None gives the static catalog."""
    if source is None:
        return CATALOG
    return CATALOG + tuple(fin_feature(c) for c in financial_columns(source))


def feature_names(catalog: Sequence[Feature] = CATALOG) -> list[str]:
    """The names of a catalog, in catalog order (the panel's feature columns)."""
    return [f.name for f in catalog]


def get_feature(name: str, catalog: Sequence[Feature] | None = None) -> Feature:
    """Look a feature up by name; `fin_*` names not in `catalog` are built on the fly."""
    for f in catalog if catalog is not None else CATALOG:
        if f.name == name:
            return f
    if name.startswith(FIN_PREFIX) and len(name) > len(FIN_PREFIX):
        return fin_feature(name[len(FIN_PREFIX) :])
    raise FeatureError(f"unknown feature {name!r}: not in the feature catalog")


def monotone_constraints(
    names: Sequence[str], catalog: Sequence[Feature] | None = None
) -> list[int]:
    """LightGBM's `monotone_constraints` for the features `names`, in that order."""
    return [int(get_feature(n, catalog).direction) for n in names]


def categorical_features(catalog: Sequence[Feature] = CATALOG) -> list[str]:
    """Names of the categorical features of a catalog, in catalog order."""
    return [f.name for f in catalog if f.kind == "categorical"]
