"""The feature catalog: every feature declared once (shared/docs/features.md).

The pipeline's output columns, LightGBM's monotone constraints, the API schema and the reason-code
text all read this module. Nothing else in the code lists feature names by hand.

Windowed features (suffix ``_90d``, ``_180d``, ``_365d``) cover the trailing window
``(t - W days, t]`` ending at the as-of date ``t``. Where a denominator is zero the value is
missing (NaN), never 0 or infinity. ``fin_*`` features are added per dataset by `catalog_for`.

Per-day rates (DSO, DPO, DIO, turnover, growth, exposure to a year of sales) divide a window's sum
by the days of the window the SME's history covers, ``min(W, t - start + 1)``, not by ``W``:
``start`` is its first invoice (either side) for sales and purchases, and the day after its first
inventory snapshot for cost of goods sold (a snapshot's ``cogs`` covers the days since the
previous snapshot, so the first one's covers days before the history and is not counted; COGS
falls back to purchases when no counted snapshot in the window has it). A window reaching back
before the history began (a young SME, or the data's first year) is not a window of zero trade.
Monthly sales volatility uses only the months the history covers whole.

Change features (suffix ``_change_365d``) compare the last 90 days with the SME's own level over
the last 365 days. Habits make levels differ between firms (one keeps 40 days of stock, another
80; one always pays a week late), so a level mixes habit and health while the change against the
firm's own year isolates the deterioration. A model cannot derive the change from the two windows
itself: the 365-day window is constrained in the same risk direction as the 90-day one, so it can
never act as the firm's baseline (a higher own baseline makes the same 90-day value less alarming).
A change is missing while the SME's history holds no day before the last 90 days (no baseline).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from features.contract import FINANCIALS, RATING_SCALE, Tables
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
        "{w} days (days on record only)",
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
        "Growth of daily sales in the last 90 days over the 90 days before",
        "ratio",
        0,
    ),
    Feature(
        "sales_growth_yoy",
        "trade activity",
        "Growth of daily sales in the last 90 days over the same 90 days a year earlier",
        "ratio",
        0,
    ),
    Feature(
        "purchases_growth_qoq",
        "trade activity",
        "Growth of daily purchases in the last 90 days over the 90 days before",
        "ratio",
        0,
    ),
    Feature(
        "purchases_growth_yoy",
        "trade activity",
        "Growth of daily purchases in the last 90 days over the same 90 days a year earlier",
        "ratio",
        0,
    ),
    Feature(
        "sales_volatility_365d",
        "trade activity",
        "Volatility of monthly sales over the last 365 days (standard deviation / mean; months "
        "on record only, at least two)",
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
        "Inventory turnover over the last {w} days: cost of goods sold (at its daily rate on "
        "record, times {w}) divided by average inventory",
        "times",
        -1,
    ),
    *_windowed(
        "dio",
        "inventory",
        "Days inventory outstanding over the last {w} days: average inventory divided by daily "
        "cost of goods sold (days on record only)",
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
        "of the last {w} days (days on record only)",
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
        "Loans outstanding divided by a year of sales at the daily rate of the last 365 days "
        "(days on record only)",
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

MAIN_CORE_FACTS: frozenset[str] = frozenset(
    {"main_core_rating_ordinal", "main_core_payment_stress", "peer_default_share_365d"}
)
"""Features that describe the SME's main core enterprise, not the SME: the same value (the peer
default share: nearly, it leaves the SME itself out) for every SME of one main core. Among one
core's SMEs they are a single observation of that core repeated, not one per SME, so segment
monitoring counts them together as one feature that moved ("the core itself")."""


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


FIN_DIRECTIONS: Mapping[str, Direction] = {
    "current_ratio": -1,
    "quick_ratio": -1,
    "net_margin": -1,
    "operating_margin": -1,
    "return_on_assets": -1,
    "interest_coverage": -1,
    "debt_to_assets": 1,
    "debt_to_equity": 1,
}
"""Statement columns whose risk direction is sure (liquidity, profitability and coverage ratios
lower the risk as they grow, leverage raises it): their `fin_*` features are constrained. Every
other statement column (amounts such as revenue, whose effect depends on the firm, and any column a
bank adds) is unconstrained."""


def fin_feature(column: str) -> Feature:
    """The `fin_<column>` feature of a financial statement column: its direction from
    `FIN_DIRECTIONS`, else 0 (unknown: unconstrained)."""
    return Feature(
        f"{FIN_PREFIX}{column}",
        "financials",
        f"Latest published financial statement: {column}",
        "as reported",
        FIN_DIRECTIONS.get(column, 0),
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


# -- domains: the values a feature can take ----------------------------------------------------
@dataclass(frozen=True)
class Domain:
    """The valid values of a feature: a closed numeric range ``[low, high]`` (finite both ends)
    or, for a categorical feature, the categories the model was trained on (declared with the
    model, in its bundle: `ScoringModel.categories`)."""

    low: float = -1e15
    high: float = 1e15
    categorical: bool = False

    def describe(self, categories: Sequence[str] = ()) -> str:
        if self.categorical:
            return "one of " + ", ".join(repr(c) for c in categories)
        return f"[{_plain(self.low)}, {_plain(self.high)}]"

    def violation(self, value: float | str, categories: Sequence[str] = ()) -> str | None:
        """Why `value` lies outside the domain (None when inside)."""
        if self.categorical:
            if value in categories:
                return None
            return f"unknown category {value!r}: expected {self.describe(categories)}"
        if isinstance(value, str) or not (self.low <= value <= self.high):
            return f"value {value!r} outside the domain {self.describe()}"
        return None


def _plain(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else f"{x:.0e}"


DAYS_SPAN = 36_500.0  # a century, in days
UNIT_DOMAINS: dict[str, Domain] = {
    "share": Domain(0.0, 1.0),
    "index 0-1": Domain(0.0, 1.0),
    "index 1-100": Domain(1.0, 100.0),
    "days": Domain(0.0, DAYS_SPAN),
    "months": Domain(0.0, 2_400.0),
    "years": Domain(0.0, 300.0),
    "invoices": Domain(0.0, 1e9),
    "enterprises": Domain(0.0, 1e6),
    "loans": Domain(0.0, 1e6),
    "currency": Domain(0.0, 1e15),
    "times": Domain(0.0, 1e6),
    "ratio": Domain(0.0, 1e6),
    "rating notches": Domain(0.0, float(len(RATING_SCALE) - 1)),
    "as reported": Domain(-1e15, 1e15),
    "category": Domain(categorical=True),
}
"""The domain of every unit; a feature whose values differ from its unit's says so below."""

_SIGNED_DAYS = Domain(-DAYS_SPAN, DAYS_SPAN)
_GROWTH = Domain(-1.0, 1e6)  # a ratio minus 1: never below -1
DOMAIN_OVERRIDES: dict[str, Domain] = {
    "dispute_rate_change_365d": Domain(-1.0, 1.0),
    "ap_days_beyond_terms_trend": _SIGNED_DAYS,
    "ap_days_beyond_terms_change_365d": _SIGNED_DAYS,
    "main_core_payment_stress": _SIGNED_DAYS,
    **{f"cash_conversion_cycle_{w}d": _SIGNED_DAYS for w in WINDOWS},
    "sales_growth_qoq": _GROWTH,
    "sales_growth_yoy": _GROWTH,
    "purchases_growth_qoq": _GROWTH,
    "purchases_growth_yoy": _GROWTH,
    "dio_change_365d": _GROWTH,
    "inventory_change_90d": _GROWTH,
}
"""Features whose domain is not their unit's (differences and growth rates can be negative)."""


def domain_of(feature: Feature) -> Domain:
    """A feature's domain: its own override, else its unit's; a unit without one is an error."""
    if feature.name in DOMAIN_OVERRIDES:
        return DOMAIN_OVERRIDES[feature.name]
    if feature.unit in UNIT_DOMAINS:
        return UNIT_DOMAINS[feature.unit]
    raise FeatureError(
        f"feature {feature.name!r}: unit {feature.unit!r} has no domain; declare one in "
        "UNIT_DOMAINS or DOMAIN_OVERRIDES (features/catalog.py)"
    )


# -- reason codes and their wording ------------------------------------------------------------
ReasonSide = Literal["HIGH", "LOW", "CATEGORY", "MISSING"]


@dataclass(frozen=True)
class ReasonCode:
    """A stable code for one feature and one side (its value is high, low, a category, or
    missing), with the sentence a lending system can show (``{value}`` is filled in)."""

    code: str
    feature: str
    side: ReasonSide
    template: str


def _window_words(days: int | None) -> str:
    return {None: "", 365: "the last year"}.get(days, f"the last {days} days")


# Sentences written for people, by feature stem (windowed names without ``_{w}d``): the
# present-value wording per side, and the missing-value wording. ``{window}`` is "the last year"
# or "the last 90 days"; ``{value}`` the value formatted by unit. A feature without an entry
# reads its catalog description (see `reason_codes`).
SENTENCES: dict[str, dict[str, str]] = {
    "ap_days_beyond_terms": {
        "HIGH": "Pays its suppliers {value} beyond terms on average over {window}",
        "MISSING": "No supplier invoices paid or overdue in {window}",
    },
    "ap_late_rate": {
        "HIGH": "Paid {value} of its supplier invoices late over {window}",
        "MISSING": "No supplier invoices paid in {window}",
    },
    "ap_max_days_past_due": {
        "HIGH": "Paid a supplier as late as {value} past the due date over {window}",
        "MISSING": "No supplier invoices paid or open in {window}",
    },
    "ap_past_due_share": {
        "HIGH": "{value} of its unpaid supplier invoices are past due",
        "MISSING": "No unpaid supplier invoices",
    },
    "payment_index": {
        "LOW": "Payment index of {value} over {window} (80 = pays on terms)",
        "MISSING": "No supplier payments in {window} to compute a payment index",
    },
    "dso": {
        "HIGH": "Buyers take {value} to pay (days sales outstanding over {window})",
        "MISSING": "No sales in {window} to compute days sales outstanding",
    },
    "pledged_share": {
        "HIGH": "{value} of its latest inventory is pledged to lenders",
        "MISSING": "No inventory pledged in the last 365 days",
    },
    "dispute_rate": {
        "HIGH": "{value} of its invoices to buyers in {window} are disputed",
        "MISSING": "No invoices to buyers in {window}",
    },
    "days_since_last_sale": {
        "HIGH": "Last invoiced a buyer {value} ago",
        "MISSING": "No sale on record",
    },
    "firm_age_years": {
        "LOW": "The firm was founded {value} ago",
        "MISSING": "The firm's founding date is not known",
    },
    "months_since_first_invoice": {
        "LOW": "First invoice on record {value} ago",
        "MISSING": "No invoice on record",
    },
    "peer_default_share": {
        "HIGH": "{value} of the SMEs trading with its main core enterprise defaulted in {window}",
        "MISSING": "No other SMEs trade with its main core enterprise",
    },
    "main_core_rating_ordinal": {
        "HIGH": "Its main core enterprise is rated {value} below AAA",
        "MISSING": "No main core enterprise in the last year",
    },
}


@functools.lru_cache(maxsize=4096)
def stem(name: str) -> str:
    """A feature name without its window suffix (``dso_90d`` -> ``dso``; ``_365d`` too)."""
    for w in WINDOWS:
        if name.endswith(f"_{w}d"):
            return name[: -len(f"_{w}d")]
    return name


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


@functools.lru_cache(maxsize=4096)
def reason_codes(feature: Feature) -> dict[ReasonSide, ReasonCode]:
    """The codes of one feature, by side: HIGH and LOW (numeric) or CATEGORY (categorical),
    and MISSING; each with its sentence template (`SENTENCES`, else the catalog description)."""
    written = SENTENCES.get(stem(feature.name), {})
    window = _window_words(feature.window_days)
    sides: tuple[ReasonSide, ...] = (
        ("CATEGORY", "MISSING") if feature.kind == "categorical" else ("HIGH", "LOW", "MISSING")
    )
    out: dict[ReasonSide, ReasonCode] = {}
    for side in sides:
        if side in written:
            template = written[side].replace("{window}", window)
        elif side == "MISSING":
            template = f"Not known: {_lower_first(feature.description)}"
        elif side == "CATEGORY":
            template = f"{feature.description}: {{value}}"
        else:
            level = "high" if side == "HIGH" else "low"
            template = f"{feature.description} is {level}: {{value}}"
        code = f"{feature.name.upper()}_{side}"
        out[side] = ReasonCode(code, feature.name, side, template)
    return out


def all_reason_codes(catalog: Sequence[Feature] = CATALOG) -> list[ReasonCode]:
    """Every reason code of a catalog, in catalog order."""
    return [rc for f in catalog for rc in reason_codes(f).values()]


def format_value(feature: Feature, value: float | str | None) -> str:
    """A value written for a person, by the feature's unit (``34%``, ``12 days``, ``1,234,567``);
    no float noise and no negative zero."""
    if value is None or (isinstance(value, float) and value != value):
        return "missing"
    if isinstance(value, str):
        return value
    v = float(value)
    unit = feature.unit
    if unit in ("share", "index 0-1") and stem(feature.name) != "buyer_hhi":
        pct = v * 100
        text = f"{pct:.1f}%" if 0 < abs(pct) < 10 and round(pct) != pct else f"{pct:.0f}%"
        return _no_negative_zero(text)
    if unit == "days":
        n = round(v)
        return _no_negative_zero(f"{n:,} day" + ("" if abs(n) == 1 else "s"))
    if unit in ("currency", "as reported"):
        return _no_negative_zero(f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}")
    if unit in ("months", "years"):
        return _no_negative_zero(f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}")
    if unit in ("invoices", "enterprises", "loans"):
        return f"{round(v):,} {unit}"
    if unit == "rating notches":
        return _no_negative_zero(f"{v:.1f} notches")
    if unit == "times":
        return _no_negative_zero(f"{v:.2f} times")
    if unit == "index 1-100":
        return f"{v:.0f}"
    if feature.name in DOMAIN_OVERRIDES and DOMAIN_OVERRIDES[feature.name] is _GROWTH:
        return _no_negative_zero(f"{v * 100:+.0f}%")
    return _no_negative_zero(f"{v:,.2f}")


_NONZERO_DIGIT = re.compile("[1-9]")


def _no_negative_zero(text: str) -> str:
    if text[:1] not in ("-", "+"):  # the common case: nothing to strip
        return text
    stripped = text.lstrip("-+")
    if stripped and not _NONZERO_DIGIT.search(stripped.split(" ")[0]):
        return stripped
    return text
