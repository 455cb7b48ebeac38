"""Property tests of the point-in-time rule on random small tables and a random as-of date t.

- adding, changing or removing any record dated after t (including a later payment or
  confirmation of an invoice issued before t, or a later default of an earlier loan) never
  changes any feature at t;
- permuting the rows of every table changes nothing, bit for bit;
- the single-SME path gives the batch row, bit for bit.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import RATING_SCALE, Tables
from features.engines import split_tables
from features.own import META_EVENT, day_of
from features.pipeline import LABEL, build_features
from features.reference import build_reference, feature_rows, sme_features, sme_ids_of
from tests.support.tables import make_tables

BASE = date(2023, 1, 1)
SPAN = 500  # days of data
CORES = ["C0", "C1", "C2"]
SMES = ["S0", "S1", "S2", "S3", "S4"]
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def day(k: int) -> str:
    return (BASE + timedelta(days=k)).isoformat()


money = st.integers(1, 2_000_000).map(lambda cents: cents / 100)


@st.composite
def invoice_rows(draw: st.DrawFn, prefix: str, lo: int, hi: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(draw(st.integers(1, 18))):
        seller = draw(st.sampled_from(CORES + SMES))
        buyer = draw(st.sampled_from([e for e in CORES + SMES if e != seller]))
        if seller in CORES and buyer in CORES:
            buyer = draw(st.sampled_from(SMES))
        issue = draw(st.integers(lo, hi))
        amount = draw(money)
        paid = draw(st.none() | st.integers(issue, issue + 200))
        confirmed = draw(st.none() | st.integers(issue, issue + 100))
        rows.append(
            {
                "invoice_id": f"{prefix}{i:03d}",
                "seller_id": seller,
                "buyer_id": buyer,
                "issue_date": day(issue),
                "due_date": day(issue + draw(st.integers(0, 90))),
                "amount": amount,
                "paid_date": None if paid is None else day(paid),
                "paid_amount": None if paid is None else amount * draw(st.sampled_from([1, 0.9])),
                "disputed": draw(st.booleans()),
                "confirmed_date": None if confirmed is None else day(confirmed),
            }
        )
    return rows


@st.composite
def world(draw: st.DrawFn) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Rows of every table, and an as-of day t inside the data's range."""
    enterprises = [
        {"enterprise_id": c, "role": "core", "external_rating": draw(st.sampled_from(RATING_SCALE))}
        for c in CORES
    ] + [
        {
            "enterprise_id": s,
            "role": "sme",
            "industry": draw(st.sampled_from(["food", "steel", None])),
            "external_rating": draw(st.none() | st.sampled_from(RATING_SCALE)),
            "founded_date": day(-draw(st.integers(0, 4000))),
        }
        for s in SMES
    ]
    invoices = draw(invoice_rows("I", 0, SPAN))
    inventory = []
    for s in SMES:
        for k in sorted(draw(st.sets(st.integers(0, SPAN), max_size=4))):
            value = draw(money)
            inventory.append(
                {
                    "sme_id": s,
                    "snapshot_date": day(k),
                    "inventory_value": value,
                    "pledged_value": draw(st.none() | st.just(value / 2)),
                    "cogs": draw(st.none() | money),
                }
            )
    loans = []
    for i in range(draw(st.integers(0, 6))):
        disbursed = draw(st.integers(0, SPAN))
        loans.append(
            {
                "loan_id": f"L{i:02d}",
                "sme_id": draw(st.sampled_from(SMES)),
                "product": "prepayment",
                "disbursed_date": day(disbursed),
                "maturity_date": day(disbursed + draw(st.integers(0, 300))),
                "amount": draw(money),
                "default_date": draw(st.none() | st.integers(disbursed, SPAN + 100).map(day)),
                "repurchase_guarantee": draw(st.booleans()),
            }
        )
    financials = []
    for s in SMES:
        for k in sorted(draw(st.sets(st.integers(-200, SPAN), max_size=2))):
            published = draw(st.none() | st.integers(k, k + 200))
            financials.append(
                {
                    "sme_id": s,
                    "period_end": day(k),
                    "published_date": None if published is None else day(published),
                    "equity_ratio": draw(st.floats(0, 1)),
                }
            )
    first_issue = min(
        int((pd.Timestamp(r["issue_date"]) - pd.Timestamp(BASE)).days) for r in invoices
    )
    t = draw(st.integers(first_issue, SPAN))
    rows = {
        "enterprises": enterprises,
        "invoices": invoices,
        "inventory": inventory,
        "loans": loans,
        "financials": financials,
    }
    return rows, t


def tables_of(rows: dict[str, list[dict[str, Any]]]) -> Tables:
    """Typed tables; the statement column exists even when no statement row does (as in a
    file with a header and no rows)."""
    tables = make_tables(**rows)
    if "equity_ratio" not in tables.financials:
        tables.financials["equity_ratio"] = pd.Series([], dtype="float64")
    return tables


def rows_at(tables: Tables, t: int) -> pd.DataFrame:
    """Every SME's features at t (population or not), without the label event."""
    t_day = day_of(day(t))
    frame = feature_rows(tables, [t_day], build_reference(tables))
    return frame.drop(columns=[META_EVENT])


def after(value: str | None, t: int) -> bool:
    return value is not None and pd.Timestamp(value) > pd.Timestamp(day(t))


@st.composite
def future_edits(draw: st.DrawFn, rows: dict[str, list[dict[str, Any]]], t: int) -> dict:
    """The same world with records dated after t added, changed or removed, and the unknown
    future of earlier records (payments, confirmations, defaults after t) rewritten."""
    out: dict[str, list[dict[str, Any]]] = {"enterprises": list(rows["enterprises"])}
    later = st.integers(t + 1, SPAN + 400).map(day)
    invoices = []
    for r in rows["invoices"]:
        r = dict(r)
        if after(r["issue_date"], t):
            action = draw(st.sampled_from(["keep", "drop", "change"]))
            if action == "drop":
                continue
            if action == "change":
                r["amount"] = draw(money)
                r["seller_id"], r["buyer_id"] = r["buyer_id"], r["seller_id"]
                r["disputed"] = not r["disputed"]
        else:
            if r["paid_date"] is None or after(r["paid_date"], t):
                paid = draw(st.none() | later)
                r["paid_date"] = paid
                r["paid_amount"] = None if paid is None else r["amount"] * 0.5
            if r["confirmed_date"] is None or after(r["confirmed_date"], t):
                r["confirmed_date"] = draw(st.none() | later)
        invoices.append(r)
    new = draw(invoice_rows("N", t + 1, SPAN + 300))
    out["invoices"] = invoices + new
    out["inventory"] = [r for r in rows["inventory"] if not after(r["snapshot_date"], t)] + [
        {"sme_id": s, "snapshot_date": day(t + 1 + k), "inventory_value": 1e6, "cogs": 5.0}
        for k, s in enumerate(draw(st.lists(st.sampled_from(SMES), max_size=3)))
    ]
    loans = []
    for r in rows["loans"]:
        r = dict(r)
        if after(r["disbursed_date"], t):
            if draw(st.booleans()):
                continue
            r["amount"] = draw(money)
        elif r["default_date"] is None or after(r["default_date"], t):
            r["default_date"] = draw(st.none() | later)
        loans.append(r)
    loans.append(
        {
            "loan_id": "LNEW",
            "sme_id": draw(st.sampled_from(SMES)),
            "product": "prepayment",
            "disbursed_date": day(t + 1),
            "maturity_date": day(t + 100),
            "amount": 1e6,
            "default_date": day(t + 2),
        }
    )
    out["loans"] = loans
    financials = []
    for r in rows["financials"]:
        published = (
            r["published_date"]
            or (pd.Timestamp(r["period_end"]) + pd.Timedelta(days=120)).date().isoformat()
        )
        if after(published, t):
            r = {**r, "equity_ratio": draw(st.floats(0, 1)), "published_date": published}
            if draw(st.booleans()):
                continue
        financials.append(r)
    out["financials"] = financials
    return out


@PROPERTY_SETTINGS
@given(data=st.data())
def test_records_dated_after_t_never_change_features_at_t(data: st.DataObject) -> None:
    rows, t = data.draw(world())
    edited = data.draw(future_edits(rows, t))
    before = rows_at(tables_of(rows), t)
    changed = rows_at(tables_of(edited), t)
    pd.testing.assert_frame_equal(before, changed, check_exact=True)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_permuting_rows_changes_nothing(data: st.DataObject) -> None:
    rows, t = data.draw(world())
    tables = tables_of(rows)
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shuffled = Tables(
        **{
            name: frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
            for name, frame in tables.frames().items()
        }
    )
    pd.testing.assert_frame_equal(rows_at(tables, t), rows_at(shuffled, t), check_exact=True)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_single_sme_path_equals_batch_row(data: st.DataObject) -> None:
    rows, t = data.draw(world())
    tables = tables_of(rows)
    reference = build_reference(tables)
    batch = feature_rows(tables, [day_of(day(t))], reference)
    batch = batch.drop(columns=[c for c in batch.columns if c.startswith("_")])
    for sme in sme_ids_of(tables):
        own = split_tables(tables, [[sme]])[0]
        single = sme_features(own, day(t), reference)
        expected = batch[batch["sme_id"] == sme].reset_index(drop=True)
        pd.testing.assert_frame_equal(single, expected, check_exact=True)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_panel_is_the_population_rows_and_labels_follow_the_loans(data: st.DataObject) -> None:
    rows, t = data.draw(world())
    tables = tables_of(rows)
    when = pd.Timestamp(day(t))
    inv = tables.invoices
    recent = inv[(inv["issue_date"] > when - pd.Timedelta(days=365)) & (inv["issue_date"] <= when)]
    traders = set(recent["seller_id"]) | set(recent["buyer_id"])
    loans = tables.loans
    defaulted = set(loans.loc[loans["default_date"] <= when, "sme_id"])
    expected = sorted((traders & set(SMES)) - defaulted)
    end = when + pd.Timedelta(days=400)
    if not expected:
        return
    panel = build_features(tables, [when], data_end=end, horizon_days=200)
    assert panel["sme_id"].tolist() == expected
    window = loans[
        (loans["default_date"] > when) & (loans["default_date"] <= when + pd.Timedelta(days=200))
    ]
    assert panel[LABEL].tolist() == [int(s in set(window["sme_id"])) for s in expected]
