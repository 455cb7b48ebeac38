"""One chunk of SMEs simulated month by month, and what the contract's tables record about it.

The latent part (health, defaults, the oracle) calls `features.sim.model`; this module turns the
latent state into trade (invoices), inventory snapshots, loans and financial statements, with the
noise and lags described in `features.simulate`. Everything is vectorised over SMEs, links and
invoices; the only Python loop is over months.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import PRODUCTS
from features.sim.model import (
    INDUSTRIES,
    NEVER,
    REGIONS,
    ROLE_BOTH,
    ROLE_DEALER,
    ROLE_SUPPLIER,
    Calendar,
    CommonRandomNumbers,
    Cores,
    Market,
    ModelParams,
    Smes,
    draw_smes,
    forward_pd,
    hazard,
    health_step,
    health_target,
    rating_label,
    shared_factors,
    sigmoid,
    stress_exposure,
)

AVG_MONTH_DAYS = 30.44
KIND_SELL_TO_CORE, KIND_BUY_FROM_CORE, KIND_PEER = 0, 1, 2
FINANCIAL_COLUMNS: tuple[str, ...] = ("revenue", "current_ratio", "debt_to_assets", "net_margin")
ID_WIDTH = 10  # digits of invoice and loan ids
RECEIVABLE_FINANCING = PRODUCTS.index("receivable_financing")
INVENTORY_PLEDGE = PRODUCTS.index("inventory_pledge")
PREPAYMENT = PRODUCTS.index("prepayment")


@dataclass(frozen=True)
class World:
    """What every chunk shares: parameters, calendar, cores, the market path, the oracle's draws."""

    params: ModelParams
    calendar: Calendar
    cores: Cores
    market: Market
    crn: CommonRandomNumbers
    ids: pa.Array  # enterprise ids (string): cores first, then SMEs in global order


@dataclass(frozen=True)
class ChunkTables:
    """A chunk's rows of every output table (Arrow), plus the latent health for diagnostics."""

    enterprises: pa.Table
    invoices: pa.Table
    inventory: pa.Table
    loans: pa.Table
    financials: pa.Table
    truth: pa.Table
    latent: pa.Table


@dataclass(frozen=True)
class Month:
    """One month period of the calendar: index, first and last day, length in days."""

    index: int
    start: int
    end: int
    days: int


# --------------------------------------------------------------------------------------------
# Arrow helpers


def dates(days: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Day numbers -> Arrow date32 (null where not `valid`)."""
    mask = None if valid is None else ~np.asarray(valid, dtype=bool)
    return pa.array(np.asarray(days, dtype=np.int32), type=pa.date32(), mask=mask)


def floats(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    mask = None if valid is None else ~np.asarray(valid, dtype=bool)
    return pa.array(np.asarray(values, dtype=np.float64), type=pa.float64(), mask=mask)


def serial_ids(prefix: str, first: int, count: int) -> pa.Array:
    """prefix + zero-padded serial numbers first+1 .. first+count."""
    numbers = pc.cast(pa.array(np.arange(first + 1, first + count + 1)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(numbers, ID_WIDTH, "0"), "")


def _take(ids: pa.Array, index: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    mask = None if valid is None else ~np.asarray(valid, dtype=bool)
    return pc.take(ids, pa.array(np.asarray(index, dtype=np.int64), mask=mask))


def _labels(names: tuple[str, ...], index: np.ndarray) -> pa.Array:
    return pc.take(pa.array(names, type=pa.string()), pa.array(index.astype(np.int64)))


# --------------------------------------------------------------------------------------------
# trade links


@dataclass(frozen=True)
class Links:
    """The chunk's trade relationships: who sells to whom, how often, how much, on what terms."""

    kind: np.ndarray
    seller: np.ndarray  # chunk-local SME index, -1 = a core
    buyer: np.ndarray  # chunk-local SME index, -1 = a core
    core: np.ndarray  # core index, -1 = none (peer trade)
    rate: np.ndarray  # expected invoices per average month
    value: np.ndarray  # expected amount per invoice
    terms: np.ndarray  # days from issue to due
    seller_gid: np.ndarray  # row in World.ids
    buyer_gid: np.ndarray


def build_links(rng: np.random.Generator, smes: Smes, cores: Cores) -> Links:
    n = smes.n
    n_cores = cores.n
    sme_gid = n_cores + smes.first + np.arange(n)
    parts: list[dict[str, np.ndarray]] = []
    rows, cols = np.nonzero(smes.core_w > 0)  # (SME, link slot) pairs, SME-major
    share = smes.core_w[rows, cols].astype(np.float64)
    core = smes.core_idx[rows, cols]

    sells = np.isin(smes.role[rows], (ROLE_SUPPLIER, ROLE_BOTH))
    count = rng.uniform(4.0, 9.0, size=n)[rows] * share
    parts.append(
        {
            "kind": np.full(sells.sum(), KIND_SELL_TO_CORE),
            "seller": rows[sells],
            "buyer": np.full(sells.sum(), -1),
            "core": core[sells],
            "rate": count[sells],
            "value": (smes.sales[rows] * 0.8 * share / count)[sells],
            "terms": cores.terms[core[sells]],
            "seller_gid": sme_gid[rows[sells]],
            "buyer_gid": core[sells],
        }
    )
    buys = np.isin(smes.role[rows], (ROLE_DEALER, ROLE_BOTH))
    count = rng.uniform(3.0, 7.0, size=n)[rows] * share
    parts.append(
        {
            "kind": np.full(buys.sum(), KIND_BUY_FROM_CORE),
            "seller": np.full(buys.sum(), -1),
            "buyer": rows[buys],
            "core": core[buys],
            "rate": count[buys],
            "value": (smes.sales[rows] * 0.7 * share / count)[buys],
            "terms": np.full(buys.sum(), 30),
            "seller_gid": core[buys],
            "buyer_gid": sme_gid[rows[buys]],
        }
    )
    buyer, slot = np.nonzero(smes.peers >= 0)
    seller = smes.peers[buyer, slot]
    n_peers = (smes.peers >= 0).sum(axis=1)
    count = rng.uniform(0.8, 2.0, size=buyer.size)
    parts.append(
        {
            "kind": np.full(buyer.size, KIND_PEER),
            "seller": seller,
            "buyer": buyer,
            "core": np.full(buyer.size, -1),
            "rate": count,
            "value": smes.sales[buyer] * 0.15 / (n_peers[buyer] * count),
            "terms": smes.sales_terms[seller],
            "seller_gid": sme_gid[seller],
            "buyer_gid": sme_gid[buyer],
        }
    )
    cat = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return Links(
        kind=cat["kind"].astype(np.int8),
        seller=cat["seller"].astype(np.int64),
        buyer=cat["buyer"].astype(np.int64),
        core=cat["core"].astype(np.int64),
        rate=cat["rate"].astype(np.float64),
        value=cat["value"].astype(np.float64),
        terms=cat["terms"].astype(np.int64),
        seller_gid=cat["seller_gid"].astype(np.int64),
        buyer_gid=cat["buyer_gid"].astype(np.int64),
    )


def _at(values: np.ndarray, index: np.ndarray, fill: float) -> np.ndarray:
    """values[index] where index >= 0, else fill."""
    out = np.full(index.shape, fill, dtype=np.float64)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


# --------------------------------------------------------------------------------------------
# observation equations


def late_days_mean(h_obs: np.ndarray) -> np.ndarray:
    """Expected days beyond terms on an SME's own payables: convex in falling health."""
    return 3.0 + 12.0 * np.logaddexp(0.0, -1.2 * (h_obs + 0.3))


def partial_payment_prob(h_obs: np.ndarray) -> np.ndarray:
    return sigmoid(-4.2 - 1.6 * h_obs)


def dispute_prob(h_obs: np.ndarray, habit: np.ndarray) -> np.ndarray:
    """Disputes (quality, short delivery) on an SME's sales: likelier when it is struggling."""
    return sigmoid(-3.3 + habit - 0.9 * h_obs)


# --------------------------------------------------------------------------------------------
# settlement


class Ledger:
    """Open invoices, settled month by month from the payer's state in the month of payment.

    Each month an open invoice's payment date is re-planned from its due date, the payer's
    current state (an SME: payment habit and current health; a core: discipline and current
    stress), its own noise and any dispute delay; it is paid this month if that date falls in it
    (a date already past is caught up on a random day of the month). So nothing is ever decided
    from a state later than the payment itself. An SME pays nothing from its default day on.
    """

    FIELDS = ("index", "payer", "core", "issue", "due", "noise", "delay", "share", "u", "partial")

    def __init__(self) -> None:
        self.open: dict[str, np.ndarray] = {
            key: np.empty(
                0, dtype=np.float64 if key in ("noise", "share", "u", "partial") else np.int64
            )
            for key in self.FIELDS
        }
        self.paid: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.issued = 0  # invoices added so far (the next one's index)

    def add(self, new: dict[str, np.ndarray]) -> None:
        self.open = {key: np.concatenate([self.open[key], new[key]]) for key in self.FIELDS}
        self.issued += new["index"].size

    def settle(
        self,
        rng: np.random.Generator,
        month: Month,
        h_obs: np.ndarray,
        dday: np.ndarray,
        stressed: np.ndarray,
        smes: Smes,
        cores: Cores,
    ) -> None:
        ms, me, days = month.start, month.end, month.days
        o = self.open
        sme_pays = o["payer"] >= 0
        b, c = np.maximum(o["payer"], 0), np.maximum(o["core"], 0)
        late = np.where(
            sme_pays,
            smes.pay_habit[b] + late_days_mean(h_obs[b]),
            cores.pay_late[c] + cores.stress_late[c] * stressed[c],
        )
        planned = o["due"] + np.rint(late + o["noise"] + o["delay"]).astype(np.int64)
        catch_up = ms + (rng.random(planned.size) * days).astype(np.int64)
        day = np.maximum(np.where(planned >= ms, planned, catch_up), o["issue"])
        lost = sme_pays & (dday[b] <= np.minimum(day, me))  # the payer defaulted first
        pay = (planned <= me) & ~lost
        partial = sme_pays & (o["share"] == 1.0) & (o["u"] < partial_payment_prob(h_obs[b]))
        share = np.where(partial, o["partial"], o["share"])
        self.paid.append((o["index"][pay], day[pay], share[pay]))
        keep = ~(pay | lost)
        self.open = {key: value[keep] for key, value in o.items()}

    def outcome(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(paid day, -1 = unpaid at extraction; paid share of the amount) for every invoice."""
        day = np.full(count, -1, dtype=np.int64)
        share = np.zeros(count)
        for index, paid_day, paid_share in self.paid:
            day[index], share[index] = paid_day, paid_share
        return day, share


# --------------------------------------------------------------------------------------------
# the chunk


def simulate_chunk(
    world: World,
    rng: np.random.Generator,
    first: int,
    n: int,
    invoice_offset: int,
    loan_offset: int,
    tick: Callable[[], None],
) -> ChunkTables:
    """Simulate SMEs first .. first+n-1 over the calendar; `tick()` is called once per month.

    Every random draw of month m is made in month m's turn of the loop, from states of month m or
    earlier: the records dated up to any month end are the same however many months follow.
    """
    p, cal, cores, market = world.params, world.calendar, world.cores, world.market
    # statements are drawn after the month loop, from their own stream, so that simulating more
    # months never changes a record dated within fewer
    (statements_rng,) = rng.spawn(1)
    smes = draw_smes(rng, n, first, cores, int(cal.month_start[0]), p)
    links = build_links(rng, smes, cores)
    phase = rng.uniform(0, 12, (len(INDUSTRIES), 1))
    season = 0.1 * np.sin(2 * np.pi * (np.arange(12)[None, :] - phase) / 12)  # industry x month

    h = smes.h0.copy()
    h_obs = smes.h0.copy()
    dday = np.full(n, NEVER, dtype=np.int64)
    inventory = smes.sales * smes.dio / 30.0 * np.exp(-0.4 * smes.h0)
    h_obs_path = np.empty((n, cal.months))
    act_path = np.empty((n, cal.months))
    ledger = Ledger()
    parts: dict[str, list[dict[str, np.ndarray]]] = {
        "invoices": [],
        "inventory": [],
        "loans": [],
        "truth": [],
    }

    for m in range(cal.months):
        month = Month(m, int(cal.month_start[m]), int(cal.month_end[m]), cal.days(m))
        stressed = market.stressed[m]
        # the latent state: health, then this month's defaults (on a uniform day of the month)
        exposure = stress_exposure(stressed, smes.exposure_w).astype(np.float64)
        factors = shared_factors(market.industry[m], stressed) @ smes.factor_w
        target = health_target(smes.level, smes.drift, m, factors.astype(np.float64))
        h = health_step(h, target, smes.sigma, rng.standard_normal(n), p)
        trading = dday == NEVER  # at the start of the month
        defaults = trading & (rng.random(n) < hazard(h, exposure, p))
        dday[defaults] = month.start + (rng.random(defaults.sum()) * month.days).astype(np.int64)
        # what the tables see: a smoothed, lagged health and this month's activity level
        h_obs = 0.5 * h_obs + 0.5 * h
        noise = rng.normal(0, 0.08, n)
        act = np.exp(0.3 * h_obs + season[smes.industry, cal.month_of_year[m]] + noise)
        h_obs_path[:, m], act_path[:, m] = h_obs, act

        invoices, entries = _issue_invoices(
            rng, month, links, smes, cores, act, h_obs, stressed, trading, dday
        )
        entries["index"] += ledger.issued
        parts["invoices"].append(invoices)
        ledger.add(entries)
        ledger.settle(rng, month, h_obs, dday, stressed, smes, cores)
        stock, inventory, pledged = _snapshot(rng, month, smes, act, h_obs, inventory, dday)
        parts["inventory"].append(stock)
        parts["loans"] += _draw_loans(rng, month, smes, cores, act, h_obs, pledged, trading, dday)
        # the oracle at the month end, for the SMEs alive and not yet defaulted
        rows = np.flatnonzero(dday > month.end)
        weights = cal.window_weights(m)
        args = (m, market.industry[m], stressed, cores, world.crn, weights, p)
        parts["truth"].append(
            {
                "sme": rows,
                "day": np.full(rows.size, month.end),
                "pd": forward_pd(h[rows], smes, rows, *args),
                "health": h[rows],
            }
        )
        tick()

    return ChunkTables(
        enterprises=_enterprises(world, smes),
        invoices=_invoices(world, links, parts["invoices"], ledger, invoice_offset),
        inventory=_inventory(world, smes, parts["inventory"]),
        loans=_loans(world, smes, parts["loans"], dday, loan_offset),
        financials=_financials(world, statements_rng, smes, dday, h_obs_path, act_path),
        truth=_truth(world, smes, parts["truth"], with_health=False),
        latent=_truth(world, smes, parts["truth"], with_health=True),
    )


def _issue_invoices(
    rng: np.random.Generator,
    month: Month,
    links: Links,
    smes: Smes,
    cores: Cores,
    act: np.ndarray,
    h_obs: np.ndarray,
    stressed: np.ndarray,
    trading: np.ndarray,
    dday: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """This month's invoices on every live link (in issue order) and their ledger entries.

    Counts and amounts follow both parties' activity; a stressed core cuts its orders; nothing
    is issued from an SME party's default day on. Disputes are likelier when the seller is weak.
    """
    core = np.maximum(links.core, 0)
    cut = np.where(
        links.kind == KIND_SELL_TO_CORE, 1.0 - cores.order_cut[core] * stressed[core], 1.0
    )
    volume = np.sqrt(_at(act, links.seller, 1.0) * _at(act, links.buyer, 1.0)) * cut
    live = ((links.seller < 0) | trading[np.maximum(links.seller, 0)]) & (
        (links.buyer < 0) | trading[np.maximum(links.buyer, 0)]
    )
    counts = rng.poisson(links.rate * np.sqrt(volume) * month.days / AVG_MONTH_DAYS) * live
    li = np.repeat(np.arange(links.kind.size), counts)
    issue = month.start + (rng.random(li.size) * month.days).astype(np.int64)
    cutoff = np.minimum(
        _at(dday.astype(np.float64), links.seller[li], np.inf),
        _at(dday.astype(np.float64), links.buyer[li], np.inf),
    )
    keep = issue < cutoff
    li, issue = li[keep], issue[keep]
    order = np.argsort(issue, kind="stable")
    li, issue = li[order], issue[order]
    k = li.size
    amount = links.value[li] * np.sqrt(volume[li]) * rng.lognormal(-0.1, 0.45, k)
    seller, sme_pays = links.seller[li], links.buyer[li] >= 0
    s = np.maximum(seller, 0)
    p_dispute = np.where(seller >= 0, dispute_prob(h_obs[s], smes.dispute_habit[s]), 0.01)
    disputed = rng.random(k) < p_dispute
    invoices = {
        "link": li,
        "issue": issue,
        "amount": np.maximum(np.round(amount, 2), 1.0),
        "disputed": disputed,
        "confirm": issue + rng.integers(1, 16, k),
        "u_confirm": rng.random(k),
    }
    entries = {
        "index": np.arange(k),
        "payer": links.buyer[li],
        "core": np.where(sme_pays, -1, links.core[li]),
        "issue": issue,
        "due": issue + links.terms[li],
        "noise": np.where(sme_pays, 7.0, 4.0) * rng.standard_normal(k),
        "delay": np.where(disputed, rng.integers(15, 46, k), 0),
        "share": np.where(disputed, rng.uniform(0.5, 0.95, k), 1.0),
        "u": rng.random(k),
        "partial": rng.uniform(0.4, 0.95, k),
    }
    return invoices, entries


def _snapshot(
    rng: np.random.Generator,
    month: Month,
    smes: Smes,
    act: np.ndarray,
    h_obs: np.ndarray,
    inventory: np.ndarray,
    dday: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The month-end inventory snapshot of SMEs still trading; (rows, inventory, pledged).

    Inventory builds up relative to sales as health falls, and pledgers pledge more of it.
    """
    n = smes.n
    build_up = np.exp(-0.4 * h_obs + rng.normal(0, 0.12, n))
    inventory = 0.5 * inventory + 0.5 * smes.sales * act * smes.dio / 30.0 * build_up
    pledged_share = sigmoid(smes.pledge_bias - 0.9 * h_obs + rng.normal(0, 0.25, n))
    pledged = np.where(smes.pledger, inventory * pledged_share, 0.0)
    cogs = smes.sales * act * 0.75 * month.days / AVG_MONTH_DAYS * rng.lognormal(0, 0.05, n)
    at_end = dday > month.end
    rows = {
        "sme": np.flatnonzero(at_end),
        "day": np.full(at_end.sum(), month.end),
        "inventory": np.round(inventory[at_end], 2),
        "pledged": np.round(pledged[at_end], 2),
        "cogs": np.round(cogs[at_end], 2),
    }
    return rows, inventory, pledged


def _draw_loans(
    rng: np.random.Generator,
    month: Month,
    smes: Smes,
    cores: Cores,
    act: np.ndarray,
    h_obs: np.ndarray,
    pledged: np.ndarray,
    trading: np.ndarray,
    dday: np.ndarray,
) -> list[dict[str, np.ndarray]]:
    """This month's drawdowns: receivable financing and prepayment every month, inventory
    pledges every quarter; more is drawn per unit of activity as health falls. Month 0's loans
    are the book at onboarding, disbursed on the start date."""
    n, m = smes.n, month.index
    main_core = smes.core_idx[:, 0]
    main_w = smes.core_w[:, 0].astype(np.float64)
    need = np.exp(-0.35 * h_obs + rng.normal(0, 0.15, n))
    products = (
        (
            np.isin(smes.role, (ROLE_SUPPLIER, ROLE_BOTH)),
            RECEIVABLE_FINANCING,
            0.8 * smes.sales * 0.8 * main_w * act * need,
            cores.terms[main_core] + 35 + rng.integers(0, 31, n),
        ),
        (
            np.isin(smes.role, (ROLE_DEALER, ROLE_BOTH)),
            PREPAYMENT,
            0.6 * smes.sales * 0.7 * main_w * act * need,
            65 + rng.integers(0, 91, n),
        ),
        (
            smes.pledger & ((m % 3 == smes.pledge_phase) | (m == 0)),
            INVENTORY_PLEDGE,
            0.6 * pledged,
            120 + rng.integers(0, 91, n),
        ),
    )
    out = []
    for has, product, amount, tenor in products:
        offset = np.zeros(n, np.int64) if m == 0 else (rng.random(n) * month.days).astype(np.int64)
        day = month.start + offset
        ok = has & trading & ((day < dday) | (m == 0)) & (amount > 0)
        idx = np.flatnonzero(ok)
        out.append(
            {
                "sme": idx,
                "product": np.full(idx.size, product),
                "core": np.full(idx.size, -1) if product == INVENTORY_PLEDGE else main_core[idx],
                "disbursed": day[idx],
                "maturity": day[idx] + tenor[idx],
                "amount": np.maximum(np.round(amount[idx], 2), 100.0),
                "guarantee": smes.guarantee[idx] & (product == PREPAYMENT),
            }
        )
    return out


def _cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _enterprises(world: World, smes: Smes) -> pa.Table:
    gid = world.cores.n + smes.first + np.arange(smes.n)
    return pa.table(
        {
            "enterprise_id": _take(world.ids, gid),
            "role": pa.array(["sme"] * smes.n, type=pa.string()),
            "industry": _labels(INDUSTRIES, smes.industry),
            "region": _labels(REGIONS, smes.region),
            "founded_date": dates(smes.founded),
            "external_rating": pa.array(rating_label(smes.rating).tolist(), type=pa.string()),
        }
    )


def cores_table(world: World) -> pa.Table:
    """The core enterprises' rows of `enterprises`."""
    c = world.cores
    return pa.table(
        {
            "enterprise_id": world.ids.slice(0, c.n),
            "role": pa.array(["core"] * c.n, type=pa.string()),
            "industry": _labels(INDUSTRIES, c.industry),
            "region": _labels(REGIONS, c.region),
            "founded_date": dates(c.founded),
            "external_rating": pa.array(rating_label(c.rating).tolist(), type=pa.string()),
        }
    )


def _invoices(
    world: World,
    links: Links,
    parts: list[dict[str, np.ndarray]],
    ledger: Ledger,
    offset: int,
) -> pa.Table:
    """The chunk's invoices in issue order, with their settlement as of the extraction date."""
    cores, extraction = world.cores, world.calendar.extraction
    inv = _cat(parts)
    li, issue, amount, disputed = inv["link"], inv["issue"], inv["amount"], inv["disputed"]
    k = li.size
    paid, share = ledger.outcome(k)
    is_paid = paid >= 0
    c = np.maximum(links.core[li], 0)
    confirm_p = np.where(links.kind[li] == KIND_SELL_TO_CORE, cores.confirm[c], 0.0)
    confirm_p *= np.where(disputed, 0.3, 1.0)
    confirmed = inv["confirm"]
    is_confirmed = (inv["u_confirm"] < confirm_p) & (confirmed <= extraction)
    due = issue + links.terms[li]
    return pa.table(
        {
            "invoice_id": serial_ids("INV", offset, k),
            "seller_id": _take(world.ids, links.seller_gid[li]),
            "buyer_id": _take(world.ids, links.buyer_gid[li]),
            "issue_date": dates(issue),
            "due_date": dates(due),
            "amount": floats(amount),
            "paid_date": dates(paid, is_paid),
            "paid_amount": floats(np.round(amount * share, 2), is_paid),
            "disputed": pa.array(disputed, type=pa.bool_()),
            "confirmed_date": dates(confirmed, is_confirmed),
        }
    )


def _inventory(world: World, smes: Smes, parts: list[dict[str, np.ndarray]]) -> pa.Table:
    st = _cat(parts)
    return pa.table(
        {
            "sme_id": _take(world.ids, world.cores.n + smes.first + st["sme"]),
            "snapshot_date": dates(st["day"]),
            "inventory_value": floats(st["inventory"]),
            "pledged_value": floats(np.minimum(st["pledged"], st["inventory"])),
            "cogs": floats(st["cogs"]),
        }
    )


def _loans(
    world: World,
    smes: Smes,
    parts: list[dict[str, np.ndarray]],
    dday: np.ndarray,
    offset: int,
) -> pa.Table:
    """Loans in disbursement order; a default marks every loan open on its day."""
    ln = _cat(parts)
    order = np.lexsort((ln["product"], ln["sme"], ln["disbursed"]))
    ln = {key: value[order] for key, value in ln.items()}
    d = dday[ln["sme"]]
    defaulted = (d != NEVER) & (ln["disbursed"] <= d) & (d <= ln["maturity"])
    has_core = ln["core"] >= 0
    return pa.table(
        {
            "loan_id": serial_ids("LN", offset, ln["sme"].size),
            "sme_id": _take(world.ids, world.cores.n + smes.first + ln["sme"]),
            "product": _labels(PRODUCTS, ln["product"]),
            "core_id": _take(world.ids, np.maximum(ln["core"], 0), has_core),
            "disbursed_date": dates(ln["disbursed"]),
            "maturity_date": dates(ln["maturity"]),
            "amount": floats(ln["amount"]),
            "default_date": dates(np.where(defaulted, d, 0), defaulted),
            "repurchase_guarantee": pa.array(ln["guarantee"], type=pa.bool_()),
        }
    )


def _financials(
    world: World,
    rng: np.random.Generator,
    smes: Smes,
    dday: np.ndarray,
    h_obs_path: np.ndarray,
    act_path: np.ndarray,
) -> pa.Table:
    """Annual statements (fiscal year = calendar year): a noisy, lagged read of the year's health.

    The statement of the year before the start reads the onboarding state. A statement is
    published 90-150 days after its period end, only if the SME has not defaulted by then and
    the publication falls on or before the extraction date.
    """
    cal = world.calendar
    n = smes.n
    first_year = int(
        np.datetime64(int(cal.month_start[0]), "D").astype("datetime64[Y]").astype(int)
    )
    last_year = int(np.datetime64(cal.extraction, "D").astype("datetime64[Y]").astype(int))
    year_of_month = (
        cal.month_start[: cal.months].astype("datetime64[D]").astype("datetime64[Y]").astype(int)
    )
    parts: list[dict[str, np.ndarray]] = []
    for year in range(first_year - 1, last_year + 1):  # years since 1970
        period_end = int(np.datetime64(f"{1970 + year}-12-31", "D").astype(np.int64))
        cols = np.flatnonzero(year_of_month == year)
        if cols.size:
            if period_end > cal.extraction:
                break
            h_bar = h_obs_path[:, cols].mean(axis=1)
            act_bar = act_path[:, cols].mean(axis=1)
        else:
            h_bar, act_bar = smes.h0, np.exp(0.3 * smes.h0)
        published = period_end + rng.integers(90, 151, n)
        values = {
            "revenue": np.round(12 * smes.sales * act_bar * rng.lognormal(0, 0.05, n), 0),
            "current_ratio": np.round(np.exp(0.25 + 0.22 * h_bar + rng.normal(0, 0.15, n)), 3),
            "debt_to_assets": np.round(sigmoid(-0.1 - 0.5 * h_bar + rng.normal(0, 0.25, n)), 4),
            "net_margin": np.round(0.03 + 0.025 * h_bar + rng.normal(0, 0.015, n), 4),
        }
        ok = (published <= cal.extraction) & (published < dday)
        idx = np.flatnonzero(ok)
        parts.append(
            {
                "sme": idx,
                "period_end": np.full(idx.size, period_end),
                "published": published[idx],
                **{name: values[name][idx] for name in FINANCIAL_COLUMNS},
            }
        )
    fin = _cat(parts)
    return pa.table(
        {
            "sme_id": _take(world.ids, world.cores.n + smes.first + fin["sme"]),
            "period_end": dates(fin["period_end"]),
            "published_date": dates(fin["published"]),
            **{name: floats(fin[name]) for name in FINANCIAL_COLUMNS},
        }
    )


def _truth(
    world: World, smes: Smes, parts: list[dict[str, np.ndarray]], *, with_health: bool
) -> pa.Table:
    tr = _cat(parts)
    columns = {
        "sme_id": _take(world.ids, world.cores.n + smes.first + tr["sme"]),
        "as_of": dates(tr["day"]),
    }
    if with_health:
        columns["health"] = floats(tr["health"])
    else:
        columns["pd_true"] = floats(tr["pd"])
    return pa.table(columns)
