"""The data contract (shared/docs/data-contract.md v1), declared once.

Every table and column the service reads is declared here; the loader/validator (`features.io`),
the simulator and the feature pipeline all read these declarations.

Typed frames produced by the loader:
- ``str``   -> pandas string dtype (``"str"``), missing = NA
- ``date``  -> ``datetime64[ns]``, missing = NaT
- ``float`` -> ``float64``, missing = NaN
- ``bool``  -> ``bool`` (missing filled with the column's default, False)
Unknown extra columns are kept (and ignored by the pipeline); financials' extra columns are float64,
named by FINANCIALS_COLUMN_PATTERN. No table may have more than MAX_EXTRA_COLUMNS extra columns.
Empty ``financials.published_date`` is filled with period_end + FINANCIALS_PUBLICATION_LAG_DAYS.
The rules of each column (enums, bounds, cross-column order, references to enterprises) are
declared on its `Column`; `features.io` checks them and words each violation from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

Kind = Literal["str", "date", "float", "bool"]

RATING_SCALE: tuple[str, ...] = (
    "AAA", "AA+", "AA", "AA-", "A+", "A", "A-", "BBB+", "BBB", "BBB-",
    "BB+", "BB", "BB-", "B+", "B", "B-", "CCC+", "CCC", "CCC-", "CC", "C", "D",
)  # fmt: skip
"""Agency-style rating scale, best first. Ordinal used by features: index in this tuple."""

ROLES: tuple[str, ...] = ("core", "sme")
PRODUCTS: tuple[str, ...] = ("receivable_financing", "inventory_pledge", "prepayment")
DEFAULT_HORIZON_DAYS = 365
"""The label horizon: ``default_12m`` looks this many days ahead. Declared here only; a trained
model carries the horizon of its panel in its bundle."""
HORIZON_ATTR = "scf_risk.horizon_days"
"""`DataFrame.attrs` key of a panel's label horizon (pandas keeps attrs in Parquet metadata)."""
MIN_TRAIN_MONTHS = 18
"""Training months an honest split should leave: a year to fit on plus calibration months."""


def months_needed(
    horizon_days: int, oot_months: int = 6, train_months: int = MIN_TRAIN_MONTHS
) -> int:
    """Months of data a leak-free out-of-time split needs: `train_months` training months, an
    embargo of one label horizon, `oot_months` OOT months and, after them, one more horizon for
    the OOT labels to mature."""
    horizon = math.ceil(horizon_days / (365.25 / 12))
    return train_months + horizon + oot_months + horizon


FINANCIALS_PUBLICATION_LAG_DAYS = 120  # default published_date = period_end + 120 days
MAX_EXTRA_COLUMNS = 200
"""Most columns a table may have beyond its declared ones (financials' statement columns, or the
unknown columns other tables keep and ignore). More is a violation, found before any value is read:
a request or file with thousands of columns costs no more than reading its header."""
FINANCIALS_COLUMN_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
"""Names of financials' statement columns: they become feature names `fin_<name>`, so a lower case
letter, then at most 63 lower case letters, digits or underscores."""
KNOWN_EXTRA_FILES: tuple[str, ...] = ("truth.parquet", "conversion.md")
"""Files a data folder may hold beside its tables (the simulator's truth, a converter's account of
what it mapped and synthesised): not warned about."""


Role = Literal["core", "sme"]


@dataclass(frozen=True)
class Column:
    """One column and every per-row rule data-contract.md states for it.

    Floats must always be finite; non-nullable strings must be non-blank. The other rules are
    declared here and checked by `features.io`, which writes each one's message from these fields.
    """

    name: str
    kind: Kind
    required: bool = True  # the column must be present in the file
    nullable: bool = False  # empty cells allowed
    default: object = None  # value for empty cells of bool columns / absent optional columns
    choices: tuple[str, ...] = ()  # allowed values (an enum), when given
    gt: float | None = None  # value must be > gt
    ge: float | None = None  # value must be >= ge
    ge_column: str | None = None  # value must be >= that column of the same row (when both set)
    le_column: str | None = None  # value must be <= that column of the same row (when both set)
    not_after_today: bool = False  # a date that may not lie in the future
    required_with: str | None = None  # must be set on every row where that column is set
    refers_to: Role | Literal["enterprise"] | None = None  # an enterprise_id (of that role)
    default_days_after: tuple[str, int] | None = None  # empty -> that date column + N days


@dataclass(frozen=True)
class Table:
    name: str
    required: bool
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()  # unique key
    extra_numeric: bool = False  # financials: any number of extra numeric columns
    parties: tuple[str, str] | None = None  # two enterprise ids: different, at least one an SME

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


ENTERPRISES = Table(
    "enterprises",
    required=True,
    key=("enterprise_id",),
    columns=(
        Column("enterprise_id", "str"),
        Column("role", "str", choices=ROLES),
        Column("industry", "str", required=False, nullable=True),
        Column("region", "str", required=False, nullable=True),
        Column("founded_date", "date", required=False, nullable=True, not_after_today=True),
        Column("external_rating", "str", required=False, nullable=True, choices=RATING_SCALE),
    ),
)

INVOICES = Table(
    "invoices",
    required=True,
    key=("invoice_id",),
    parties=("seller_id", "buyer_id"),
    columns=(
        Column("invoice_id", "str"),
        Column("seller_id", "str", refers_to="enterprise"),
        Column("buyer_id", "str", refers_to="enterprise"),
        Column("issue_date", "date"),
        Column("due_date", "date", ge_column="issue_date"),
        Column("amount", "float", gt=0.0),
        Column("paid_date", "date", required=False, nullable=True, ge_column="issue_date"),
        Column(
            "paid_amount",
            "float",
            required=False,
            nullable=True,
            ge=0.0,
            required_with="paid_date",
        ),
        Column("disputed", "bool", required=False, nullable=True, default=False),
        Column("confirmed_date", "date", required=False, nullable=True),
    ),
)

INVENTORY = Table(
    "inventory",
    required=False,
    key=("sme_id", "snapshot_date"),
    columns=(
        Column("sme_id", "str", refers_to="sme"),
        Column("snapshot_date", "date"),
        Column("inventory_value", "float", ge=0.0),
        Column(
            "pledged_value",
            "float",
            required=False,
            nullable=True,
            ge=0.0,
            le_column="inventory_value",
        ),
        Column("cogs", "float", required=False, nullable=True),
    ),
)

LOANS = Table(
    "loans",
    required=False,  # required for training (checked there), optional for scoring
    key=("loan_id",),
    columns=(
        Column("loan_id", "str"),
        Column("sme_id", "str", refers_to="sme"),
        Column("product", "str", choices=PRODUCTS),
        Column("core_id", "str", required=False, nullable=True, refers_to="core"),
        Column("disbursed_date", "date"),
        Column("maturity_date", "date", ge_column="disbursed_date"),
        Column("amount", "float", gt=0.0),
        Column("default_date", "date", required=False, nullable=True, ge_column="disbursed_date"),
        Column("repurchase_guarantee", "bool", required=False, nullable=True, default=False),
    ),
)

FINANCIALS = Table(
    "financials",
    required=False,
    key=("sme_id", "period_end"),
    extra_numeric=True,
    columns=(
        Column("sme_id", "str", refers_to="sme"),
        Column("period_end", "date"),
        Column(
            "published_date",
            "date",
            required=False,
            nullable=True,
            default_days_after=("period_end", FINANCIALS_PUBLICATION_LAG_DAYS),
        ),
    ),
)

TABLES: tuple[Table, ...] = (ENTERPRISES, INVOICES, INVENTORY, LOANS, FINANCIALS)
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
TRAINING_NEEDS: tuple[str, ...] = (LOANS.name,)
"""Tables that scoring can do without but training cannot (the default labels come from loans)."""


def empty_frame(table: Table) -> pd.DataFrame:
    """A zero-row typed frame with the table's declared columns."""
    dtypes = {"str": "str", "date": "datetime64[ns]", "float": "float64", "bool": "bool"}
    return pd.DataFrame({c.name: pd.Series([], dtype=dtypes[c.kind]) for c in table.columns})


@dataclass
class Tables:
    """A validated folder: typed frames, one per contract table (optional ones may be empty)."""

    enterprises: pd.DataFrame
    invoices: pd.DataFrame
    inventory: pd.DataFrame = field(default_factory=lambda: empty_frame(INVENTORY))
    loans: pd.DataFrame = field(default_factory=lambda: empty_frame(LOANS))
    financials: pd.DataFrame = field(default_factory=lambda: empty_frame(FINANCIALS))
    warnings: tuple[str, ...] = ()  # what the loader ignored (unknown files, extra columns)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {t.name: getattr(self, t.name) for t in TABLES}

    def valid_for(self) -> str:
        """What these tables can be used for, in words (`scf-risk validate`'s verdict): every
        folder that validates can be scored; training also needs rows of `TRAINING_NEEDS`."""
        lacking = [name for name in TRAINING_NEEDS if getattr(self, name).empty]
        if lacking:
            return f"valid for scoring; training also needs {' and '.join(lacking)}"
        return "valid for training and scoring"
