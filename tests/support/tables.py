"""Typed contract tables for the feature tests: hand-written rows, or seeded random ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.contract import TABLES_BY_NAME, Tables

_DTYPES = {"str": "str", "date": "datetime64[ns]", "float": "float64", "bool": "bool"}


def typed_frame(name: str, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A frame of contract table `name` typed as the loader types it (str / datetime64[ns] /
    float64 / bool). Declared columns absent from the rows are missing (bools: their default);
    extra keys become extra columns (floats when numeric: financial statement columns)."""
    table = TABLES_BY_NAME[name]
    declared = {c.name for c in table.columns}
    data: dict[str, pd.Series] = {}
    for col in table.columns:
        values = [r.get(col.name) for r in rows]
        if col.kind == "bool":
            default = bool(col.default) if col.default is not None else False
            data[col.name] = pd.Series(
                [default if v is None else bool(v) for v in values], dtype="bool"
            )
        elif col.kind == "date":
            data[col.name] = pd.Series(pd.to_datetime(values), dtype="datetime64[ns]")
        elif col.kind == "float":
            data[col.name] = pd.Series(
                [np.nan if v is None else float(v) for v in values], dtype="float64"
            )
        else:
            data[col.name] = pd.Series(values, dtype="str")
    extras = dict.fromkeys(k for r in rows for k in r if k not in declared)
    for key in extras:
        data[key] = pd.Series(
            [np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype="float64"
        )
    return pd.DataFrame(data)


def make_tables(
    enterprises: Sequence[Mapping[str, Any]],
    invoices: Sequence[Mapping[str, Any]],
    inventory: Sequence[Mapping[str, Any]] = (),
    loans: Sequence[Mapping[str, Any]] = (),
    financials: Sequence[Mapping[str, Any]] = (),
) -> Tables:
    """Typed `Tables` from hand-written rows (dates as 'YYYY-MM-DD' strings)."""
    return Tables(
        enterprises=typed_frame("enterprises", enterprises),
        invoices=typed_frame("invoices", invoices),
        inventory=typed_frame("inventory", inventory),
        loans=typed_frame("loans", loans),
        financials=typed_frame("financials", financials),
    )


def random_tables(
    *, n_smes: int, n_cores: int, n_invoices: int, days: int, seed: int, start: str = "2023-01-01"
) -> Tables:
    """Seeded, contract-valid random tables (every table, every optional column) over `days`
    days from `start`: SMEs sell to and buy from cores and each other, pay late or early, take
    loans that sometimes default, publish yearly statements."""
    rng = np.random.default_rng(seed)
    origin = pd.Timestamp(start)
    smes = np.array([f"S{i:03d}" for i in range(n_smes)], dtype=object)
    cores = np.array([f"C{i:02d}" for i in range(n_cores)], dtype=object)
    ratings = np.array(["AA", "A+", "A", "BBB+", "BBB", "BB", "B", None], dtype=object)
    n_ent = n_cores + n_smes
    enterprises = pd.DataFrame(
        {
            "enterprise_id": pd.Series(np.concatenate([cores, smes]), dtype="str"),
            "role": pd.Series(["core"] * n_cores + ["sme"] * n_smes, dtype="str"),
            "industry": pd.Series(rng.choice(["food", "steel", None], n_ent), dtype="str"),
            "region": pd.Series(rng.choice(["north", "south", None], n_ent), dtype="str"),
            "founded_date": origin - pd.to_timedelta(rng.integers(100, 9000, n_ent), "D"),
            "external_rating": pd.Series(rng.choice(ratings, n_ent), dtype="str"),
        }
    )

    def when(offsets: np.ndarray) -> pd.Series:
        return pd.Series(origin + pd.to_timedelta(offsets, "D"), dtype="datetime64[ns]")

    kind = rng.choice(3, n_invoices, p=[0.6, 0.3, 0.1])  # sme->core, core->sme, sme->sme
    sme_a = rng.integers(0, n_smes, n_invoices)
    sme_b = (sme_a + rng.integers(1, max(n_smes, 2), n_invoices)) % max(n_smes, 1)
    core = cores[rng.integers(0, n_cores, n_invoices)]
    seller = np.where(kind == 1, core, smes[sme_a])
    buyer = np.where(kind == 0, core, np.where(kind == 1, smes[sme_a], smes[sme_b]))
    issue = rng.integers(0, days, n_invoices)
    due = issue + rng.choice([0, 30, 45, 60], n_invoices)
    paid = due + np.round(rng.normal(5, 20, n_invoices)).astype(np.int64)
    paid = np.maximum(paid, issue)
    unpaid = (rng.random(n_invoices) < 0.1) | (paid >= days)
    amount = np.round(rng.lognormal(8, 1, n_invoices), 2)
    paid_amount = np.where(rng.random(n_invoices) < 0.1, np.round(amount * 0.9, 2), amount)
    confirmed = issue + rng.integers(0, 20, n_invoices)
    unconfirmed = (rng.random(n_invoices) < 0.5) | (confirmed >= days)
    invoices = pd.DataFrame(
        {
            "invoice_id": pd.Series([f"I{i:06d}" for i in range(n_invoices)], dtype="str"),
            "seller_id": pd.Series(seller, dtype="str"),
            "buyer_id": pd.Series(buyer, dtype="str"),
            "issue_date": when(issue),
            "due_date": when(due),
            "amount": amount,
            "paid_date": when(paid).mask(unpaid),
            "paid_amount": pd.Series(paid_amount).mask(unpaid),
            "disputed": rng.random(n_invoices) < 0.05,
            "confirmed_date": when(confirmed).mask(unconfirmed),
        }
    )

    months = np.arange(0, days, 30)
    inv_sme = np.repeat(smes, len(months))
    snap = np.tile(months, n_smes)
    value = np.round(rng.lognormal(9, 0.5, len(snap)), 2)
    inventory = pd.DataFrame(
        {
            "sme_id": pd.Series(inv_sme, dtype="str"),
            "snapshot_date": when(snap),
            "inventory_value": value,
            "pledged_value": pd.Series(np.round(value * rng.random(len(snap)), 2)).mask(
                rng.random(len(snap)) < 0.3
            ),
            "cogs": pd.Series(np.round(rng.lognormal(8.5, 0.5, len(snap)), 2)).mask(
                rng.random(len(snap)) < 0.3
            ),
        }
    )

    n_loans = 2 * n_smes
    disbursed = rng.integers(0, days, n_loans)
    maturity = disbursed + rng.integers(30, 365, n_loans)
    default = disbursed + rng.integers(0, 400, n_loans)
    no_default = (rng.random(n_loans) < 0.85) | (default >= days)
    loans = pd.DataFrame(
        {
            "loan_id": pd.Series([f"L{i:05d}" for i in range(n_loans)], dtype="str"),
            "sme_id": pd.Series(smes[rng.integers(0, n_smes, n_loans)], dtype="str"),
            "product": pd.Series(
                rng.choice(["prepayment", "inventory_pledge"], n_loans), dtype="str"
            ),
            "core_id": pd.Series(cores[rng.integers(0, n_cores, n_loans)], dtype="str"),
            "disbursed_date": when(disbursed),
            "maturity_date": when(maturity),
            "amount": np.round(rng.lognormal(9, 1, n_loans), 2),
            "default_date": when(default).mask(no_default),
            "repurchase_guarantee": rng.random(n_loans) < 0.3,
        }
    )

    years = np.arange(-365, days, 365)
    fin_sme = np.repeat(smes, len(years))
    period = np.tile(years, n_smes)
    financials = pd.DataFrame(
        {
            "sme_id": pd.Series(fin_sme, dtype="str"),
            "period_end": when(period),
            "published_date": when(period + rng.integers(30, 150, len(period))),
            "equity_ratio": np.round(rng.random(len(period)), 3),
            "revenue": np.round(rng.lognormal(12, 1, len(period)), 0),
        }
    )
    return Tables(enterprises, invoices, inventory, loans, financials)
