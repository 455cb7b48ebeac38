"""Own-row features: what each SME's own rows say about it at an as-of date.

`prepare(tables, sme_ids, counterparties)` turns the contract's typed frames into integer-day
numpy arrays once; `own_features(prepared, t, horizon_days)` then computes every feature that needs
only the SME's own invoices, inventory, loans, financials and enterprise row (plus static attributes
of its counterparties: role and rating) for every SME at one date, fully vectorised.

Each SME's values depend only on its own rows, in a canonical order (invoices by issue date then
invoice id; inventory by date; loans by id; statements by period), so one SME computed alone gives
bit-for-bit the values it gets inside a batch of thousands, whatever the rows' order in the files.
Sums are sequential `np.bincount`s over that order.

Point-in-time: at day ``t`` an invoice exists from its issue date and is paid only if
``paid_date <= t``; snapshots with ``snapshot_date <= t``; statements with
``published_date <= t``; defaults with ``default_date <= t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.catalog import FIN_PREFIX, WINDOWS
from features.contract import FINANCIALS_PUBLICATION_LAG_DAYS, RATING_SCALE, Tables

NEVER = np.int64(1) << 40
"""Day number standing for a missing date in the future (never paid, never confirmed, ...)."""

_SHIFT = np.int64(1) << 24  # day offset inside combined (sme, day) sort keys
_KEY = np.int64(1) << 26  # multiplier of the SME code in combined keys

AGING_EDGES = np.array([0, 30, 60, 90])
"""Aging buckets by days past due d: d <= 0 current, 1-30, 31-60, 61-90, > 90."""
AGING_CODES: tuple[str, ...] = ("current", "1_30", "31_60", "61_90", "90p")

PAYMENT_INDEX_DAYS = np.array([-20.0, 0.0, 15.0, 22.0, 30.0, 60.0, 90.0, 120.0, 180.0])
PAYMENT_INDEX_SCORE = np.array([100.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 20.0, 1.0])
"""Payment index of one invoice by its days beyond terms d (negative = early), linear between
knots and flat outside: 20+ days early 100, on the due date 80, 15 days late 70, 22 days 60,
30 days 50, 60 days 40, 90 days 30, 120 days 20, 180+ days 1 (in the spirit of trade payment
scores such as D&B's Paydex)."""

DAYS_PER_MONTH = 365.25 / 12
DAYS_PER_YEAR = 365.25
VOLATILITY_BUCKETS = 12  # monthly sales: (t - 365, t] cut into 12 buckets by age*12 // 365

# Meta columns produced beside the features (dropped from the panel).
META_MAIN_CORE = "_main_core_id"
META_ACTIVE = "_has_invoice_365d"
META_DEFAULTED = "_defaulted_by_t"
META_EVENT = "_default_in_horizon"
META_FLAGS: tuple[str, ...] = (META_ACTIVE, META_DEFAULTED, META_EVENT)
"""The boolean meta columns of feature rows (population flags and the label event)."""
META_COLUMNS: tuple[str, ...] = (META_MAIN_CORE, *META_FLAGS)
"""Every meta column of feature rows: dropped from the panel, never a feature."""


def to_days(values: pd.Series | np.ndarray) -> np.ndarray:
    """Dates -> int64 days since 1970-01-01; missing -> `NEVER`."""
    arr = np.asarray(values, dtype="datetime64[ns]")
    days = arr.astype("datetime64[D]").astype(np.int64)
    return np.where(np.isnat(arr), NEVER, days)


def day_of(value: object) -> int:
    """One date (anything pandas reads as a timestamp) -> int days since 1970-01-01."""
    return int(pd.Timestamp(value).normalize().value // 86_400_000_000_000)  # type: ignore[arg-type]


def rating_ordinal(ratings: pd.Series) -> np.ndarray:
    """Rating strings -> index in RATING_SCALE (0 = AAA, higher = worse); unknown/missing -> NaN."""
    text = ratings.astype("str").str.strip().str.upper()
    codes = pd.Categorical(text, categories=list(RATING_SCALE)).codes.astype(float)
    codes[codes < 0] = np.nan
    return codes


def _id_array(ids: Sequence[str] | np.ndarray) -> pa.Array:
    """Ids as an Arrow string array (the value set of `_codes`)."""
    return pa.array([str(i) for i in ids], type=pa.string())


def _codes(
    values: pd.Series, universe: pa.Array, dtype: type[np.signedinteger] = np.int64
) -> np.ndarray:
    """Position of each value in `universe` (an Arrow string array); -1 where absent. The
    (small) universe is cast to the values' string type, not the values (no copy of them);
    `dtype` np.int32 keeps the codes of a large table at half the memory."""
    arr = pa.array(values.astype("str"))
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    idx = pc.index_in(arr, value_set=universe.cast(arr.type))
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _sorted_positions(frame: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """Row positions of `frame` sorted by `keys` (ascending, a total order when keys are unique)."""
    table = pa.table({k: pa.array(frame[k]) for k in keys})
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys])
    return order.to_numpy().astype(np.int64)


def _sorted_factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, code of each key in them): np.unique(return_inverse=True) by
    hashing, fast when there are few distinct keys."""
    codes, uniques = pd.factorize(keys)
    uniques = np.asarray(uniques, dtype=np.int64)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[codes]


@dataclass(frozen=True)
class Counterparties:
    """Static attributes of every enterprise an SME may trade with: id (sorted), core flag, rating
    ordinal. Built from the reference data, overlaid with the request's own enterprise rows."""

    ids: np.ndarray  # object array of str, sorted
    is_core: np.ndarray  # bool
    rating: np.ndarray  # float, NaN = unrated
    arrow_ids: pa.Array | None = None  # `ids` as Arrow strings, when already built

    @property
    def index(self) -> pa.Array:
        """The ids as an Arrow string array (value set for `_codes`)."""
        return self.arrow_ids if self.arrow_ids is not None else _id_array(self.ids)

    @staticmethod
    def from_enterprises(enterprises: pd.DataFrame) -> Counterparties:
        frame = enterprises.drop_duplicates("enterprise_id", keep="last")
        frame = frame.sort_values("enterprise_id", kind="stable")
        ids = frame["enterprise_id"].astype("object").to_numpy()
        is_core = (frame["role"].astype("object") == "core").to_numpy(dtype=bool)
        if "external_rating" in frame:
            rating = rating_ordinal(frame["external_rating"])
        else:
            rating = np.full(len(frame), np.nan)
        return Counterparties(ids, is_core, rating)

    def overlay(self, rows: pd.DataFrame) -> Counterparties:
        """These attributes updated by enterprise `rows` (a given role wins; a given rating
        wins, a missing one keeps the known rating)."""
        if rows.empty:
            return self
        mine = Counterparties.from_enterprises(rows)
        code = _codes(pd.Series(mine.ids, dtype="str"), self.index)
        known = code >= 0
        is_core, rating = self.is_core.copy(), self.rating.copy()
        is_core[code[known]] = mine.is_core[known]
        rating[code[known]] = np.where(
            np.isnan(mine.rating[known]), rating[code[known]], mine.rating[known]
        )
        if known.all():
            return Counterparties(self.ids, is_core, rating, self.arrow_ids)
        ids = np.concatenate([self.ids, mine.ids[~known]])
        order = np.argsort(ids.astype(str), kind="stable")
        return Counterparties(
            ids[order],
            np.concatenate([is_core, mine.is_core[~known]])[order],
            np.concatenate([rating, mine.rating[~known]])[order],
        )


@dataclass(frozen=True)
class Sides:
    """Invoices seen from one side (the SME as seller, or as buyer), one row per invoice, in
    canonical order (issue date, invoice id). Missing dates are `NEVER`. The payables' columns;
    `SaleSides` adds what only the receivables' features read."""

    sme: np.ndarray
    pair: np.ndarray  # code of (sme, counterparty); pairs sorted by (sme, counterparty id)
    issue: np.ndarray
    due: np.ndarray
    paid: np.ndarray
    amount: np.ndarray

    def take(self, idx: np.ndarray) -> Self:
        """The rows `idx`, every integer column as int64 (`NEVER` for a missing date)."""
        return type(self)(*(_widen(getattr(self, f)[idx]) for f in self.__dataclass_fields__))

    def compact(self) -> Self:
        """The same rows with each integer column held as int32 where its values fit (half the
        memory of the prepared arrays' codes and days); `take` gives them back as int64."""
        return type(self)(*(_narrow(getattr(self, f)) for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class SaleSides(Sides):
    """Receivables: `Sides` plus the amount received, the dispute flag and the confirmation
    date (payables do without them: a third less memory per payable row)."""

    paid_amount: np.ndarray
    disputed: np.ndarray
    confirmed: np.ndarray


_COMPACT_TYPES = (np.int16, np.int32)
"""The integer types of `Sides.compact` columns, narrowest first; in each, its largest value
stands for `NEVER` (no day or code there reaches it)."""


def _narrow(values: np.ndarray) -> np.ndarray:
    """An int64 column (codes, or days with `NEVER`) as the narrowest of int16 / int32 whose
    range holds every other value strictly inside it (`NEVER` as that type's largest value);
    anything else unchanged. Days of 1970..2059 and codes below 32,767 fit int16."""
    if values.dtype != np.int64:
        return values
    known = values[values != NEVER]
    low, high = (int(known.min()), int(known.max())) if len(known) else (0, 0)
    for small in _COMPACT_TYPES:
        info = np.iinfo(small)
        if info.min < low and high < info.max:
            return np.where(values == NEVER, info.max, values).astype(small)
    return values


def _widen(values: np.ndarray) -> np.ndarray:
    """`_narrow` undone: an int16 / int32 column back to int64, its largest value to `NEVER`."""
    if values.dtype not in _COMPACT_TYPES:
        return values
    wide = values.astype(np.int64)
    wide[values == np.iinfo(values.dtype).max] = NEVER
    return wide


def _clip_day(values: np.ndarray, day: int) -> int:
    """`day` clipped into the range of a compact column's type: a search or comparison of the
    column's known values against it answers as against `day` (they lie strictly inside)."""
    if values.dtype not in _COMPACT_TYPES:
        return day
    info = np.iinfo(values.dtype)
    return min(max(day, int(info.min)), int(info.max))


def _paid_after(paid: np.ndarray, day: int) -> np.ndarray:
    """`paid > day` for a (possibly compact) payment-day column, `NEVER` (never paid) being
    after every day."""
    if paid.dtype in _COMPACT_TYPES and day >= np.iinfo(paid.dtype).max:
        return paid == np.iinfo(paid.dtype).max  # only the unpaid lie after such a day
    return paid > _clip_day(paid, day)


@dataclass(frozen=True)
class Prepared:
    """One set of SMEs' own rows as integer-day arrays, ready for any number of as-of dates."""

    sme_ids: np.ndarray  # object array of str, sorted; code = position
    recv: SaleSides  # receivables (the SME sold), canonical order
    pay: Sides  # payables (the SME bought), canonical order
    # pairs
    pair_sme: np.ndarray
    pair_cp_id: np.ndarray  # object array
    pair_is_core: np.ndarray
    pair_rating: np.ndarray
    # receivables by (sme, issue) for the last sale
    sale_key: np.ndarray
    first_invoice_day: np.ndarray  # per SME, NEVER if none: where its invoice history starts
    # inventory by (sme, snapshot day)
    i_sme: np.ndarray
    i_day: np.ndarray
    i_key: np.ndarray
    i_value: np.ndarray
    i_pledged: np.ndarray
    i_cogs: np.ndarray
    first_snapshot_day: np.ndarray  # per SME, NEVER if none: where its inventory history starts
    # loans by loan id
    l_sme: np.ndarray
    l_disbursed: np.ndarray
    l_maturity: np.ndarray
    l_default: np.ndarray
    l_amount: np.ndarray
    l_guaranteed: np.ndarray
    first_default_day: np.ndarray  # per SME, NEVER if none
    default_key: np.ndarray  # sorted (sme, default day) keys of every defaulted loan
    # financials by (sme, period_end)
    f_sme: np.ndarray
    f_period: np.ndarray
    f_published: np.ndarray
    f_values: np.ndarray  # (rows, len(fin_columns))
    fin_columns: tuple[str, ...]
    # firm
    founded: np.ndarray  # float days, NaN if unknown
    industry: pd.Series
    region: pd.Series
    static_rating: np.ndarray

    @property
    def n(self) -> int:
        return len(self.sme_ids)


def _col(frame: pd.DataFrame, name: str, default: object) -> pd.Series:
    if name in frame:
        return frame[name]
    return pd.Series([default] * len(frame), index=frame.index, dtype=object)


def prepare(
    tables: Tables,
    sme_ids: Sequence[str] | np.ndarray,
    counterparties: Counterparties,
    fin_columns: Sequence[str],
    sme_rows: pd.DataFrame,
) -> Prepared:
    """Arrays of the SMEs `sme_ids` from their own rows in `tables`.

    `sme_rows` holds the SMEs' own enterprise rows indexed by enterprise_id (industry, region,
    founded date, static rating); `counterparties` the roles and ratings of everyone they trade
    with; `fin_columns` the statement columns that become `fin_*` features (absent: NaN)."""
    smes = np.array(sorted({str(s) for s in sme_ids}), dtype=object)
    n = len(smes)
    universe = _id_array(smes)

    # ---- invoice sides, canonical order (issue_date, invoice_id)
    inv = tables.invoices
    order = _sorted_positions(inv, ["issue_date", "invoice_id"])
    seller = _codes(inv["seller_id"], universe)[order]
    buyer = _codes(inv["buyer_id"], universe)[order]
    recv_rows = order[seller >= 0]  # positions in `inv`, canonical order
    pay_rows = order[buyer >= 0]
    seller, buyer = seller[seller >= 0], buyer[buyer >= 0]
    # counterparties: codes into a sorted universe of every id seen, pairs sorted by (sme, id)
    cp_universe = pa.array(
        sorted(
            set(pd.unique(inv["seller_id"]).tolist()) | set(pd.unique(inv["buyer_id"]).tolist())
        ),
        type=pa.string(),
    )
    n_cp = max(len(cp_universe), 1)
    recv_pair_key = seller * n_cp + _codes(inv["buyer_id"], cp_universe)[recv_rows]
    pay_pair_key = buyer * n_cp + _codes(inv["seller_id"], cp_universe)[pay_rows]
    pair_keys, pair_code = _sorted_factorize(np.concatenate([recv_pair_key, pay_pair_key]))
    pair_sme = pair_keys // n_cp
    pair_cp_id = np.asarray(cp_universe.to_pylist(), dtype=object)[pair_keys % n_cp]
    pair_is_core = np.zeros(len(pair_keys), dtype=bool)
    pair_rating = np.full(len(pair_keys), np.nan)
    if len(counterparties.ids) and len(pair_keys):
        known = _codes(pd.Series(pair_cp_id, dtype="str"), counterparties.index)
        found = known >= 0
        pair_is_core[found] = counterparties.is_core[known[found]]
        pair_rating[found] = counterparties.rating[known[found]]

    issue = to_days(inv["issue_date"])
    due = to_days(inv["due_date"])
    paid = to_days(_col(inv, "paid_date", pd.NaT))
    amount = inv["amount"].to_numpy(dtype=float)
    paid_amount = pd.to_numeric(_col(inv, "paid_amount", np.nan)).to_numpy(
        dtype=float, na_value=np.nan
    )
    disputed = _col(inv, "disputed", False).fillna(False).to_numpy(dtype=bool)
    confirmed = to_days(_col(inv, "confirmed_date", pd.NaT))

    # receivables by (sme, issue) and each SME's first invoice
    sale_key = np.sort(seller * _KEY + issue[recv_rows] + _SHIFT)
    first = np.full(n, NEVER, dtype=np.int64)
    np.minimum.at(first, seller, issue[recv_rows])
    np.minimum.at(first, buyer, issue[pay_rows])
    # the arrays every date's rows are taken from, compact (`Sides.compact`)
    cut = len(recv_rows)
    recv = SaleSides(
        sme=_narrow(seller),
        pair=_narrow(pair_code[:cut]),
        issue=_narrow(issue[recv_rows]),
        due=_narrow(due[recv_rows]),
        paid=_narrow(paid[recv_rows]),
        amount=amount[recv_rows],
        paid_amount=paid_amount[recv_rows],
        disputed=disputed[recv_rows],
        confirmed=_narrow(confirmed[recv_rows]),
    )
    pay = Sides(
        sme=_narrow(buyer),
        pair=_narrow(pair_code[cut:]),
        issue=_narrow(issue[pay_rows]),
        due=_narrow(due[pay_rows]),
        paid=_narrow(paid[pay_rows]),
        amount=amount[pay_rows],
    )

    # ---- inventory by (sme, snapshot)
    invt = tables.inventory
    i_code = _codes(invt["sme_id"], universe)
    invt = invt.iloc[np.flatnonzero(i_code >= 0)]
    i_code = i_code[i_code >= 0]
    i_day = to_days(invt["snapshot_date"])
    i_key = i_code * _KEY + i_day + _SHIFT
    i_order = np.argsort(i_key, kind="stable")
    first_snapshot = np.full(n, NEVER, dtype=np.int64)
    np.minimum.at(first_snapshot, i_code, i_day)

    # ---- loans by id
    loans = tables.loans
    l_code = _codes(loans["sme_id"], universe)
    loans = loans.iloc[np.flatnonzero(l_code >= 0)]
    l_code = l_code[l_code >= 0]
    l_order = _sorted_positions(loans, ["loan_id"]) if len(loans) else np.zeros(0, np.int64)
    loans, l_code = loans.iloc[l_order], l_code[l_order]
    l_default = to_days(_col(loans, "default_date", pd.NaT))
    first_default = np.full(n, NEVER, dtype=np.int64)
    np.minimum.at(first_default, l_code, l_default)
    has_def = l_default < NEVER
    default_key = np.sort(l_code[has_def] * _KEY + l_default[has_def] + _SHIFT)

    # ---- financials by (sme, period_end)
    fin = tables.financials
    f_code = _codes(fin["sme_id"], universe)
    fin = fin.iloc[np.flatnonzero(f_code >= 0)]
    f_code = f_code[f_code >= 0]
    f_period = to_days(fin["period_end"])
    published = to_days(_col(fin, "published_date", pd.NaT))
    f_published = np.where(
        published == NEVER, f_period + FINANCIALS_PUBLICATION_LAG_DAYS, published
    )
    f_order = np.argsort(f_code * _KEY + f_period + _SHIFT, kind="stable")
    values = np.full((len(fin), len(fin_columns)), np.nan)
    for j, column in enumerate(fin_columns):
        if column in fin:
            values[:, j] = pd.to_numeric(fin[column]).to_numpy(dtype=float, na_value=np.nan)

    # ---- firm attributes of the SMEs themselves
    ent = sme_rows.reindex(pd.Index(smes.astype(str), dtype="str"))
    founded_days = to_days(_col(ent, "founded_date", pd.NaT)).astype(float)
    founded = np.where(founded_days == float(NEVER), np.nan, founded_days)
    industry = _col(ent, "industry", None).astype("str").reset_index(drop=True)
    region = _col(ent, "region", None).astype("str").reset_index(drop=True)
    static_rating = rating_ordinal(_col(ent, "external_rating", None))

    return Prepared(
        sme_ids=smes,
        recv=recv,
        pay=pay,
        pair_sme=pair_sme.astype(np.int64),
        pair_cp_id=pair_cp_id,
        pair_is_core=np.asarray(pair_is_core, dtype=bool),
        pair_rating=np.asarray(pair_rating, dtype=float),
        sale_key=sale_key,
        first_invoice_day=first,
        i_sme=i_code[i_order],
        i_day=i_day[i_order],
        i_key=i_key[i_order],
        i_value=invt["inventory_value"].to_numpy(dtype=float)[i_order],
        i_pledged=pd.to_numeric(_col(invt, "pledged_value", np.nan)).to_numpy(
            dtype=float, na_value=np.nan
        )[i_order],
        i_cogs=pd.to_numeric(_col(invt, "cogs", np.nan)).to_numpy(dtype=float, na_value=np.nan)[
            i_order
        ],
        first_snapshot_day=first_snapshot,
        l_sme=l_code,
        l_disbursed=to_days(loans["disbursed_date"]),
        l_maturity=to_days(loans["maturity_date"]),
        l_default=l_default,
        l_amount=loans["amount"].to_numpy(dtype=float),
        l_guaranteed=_col(loans, "repurchase_guarantee", False).fillna(False).to_numpy(dtype=bool),
        first_default_day=first_default,
        default_key=default_key,
        f_sme=f_code[f_order],
        f_period=f_period[f_order],
        f_published=f_published[f_order],
        f_values=values[f_order],
        fin_columns=tuple(fin_columns),
        founded=founded,
        industry=industry,
        region=region,
        static_rating=static_rating,
    )


# ---------------------------------------------------------------------------------------------
# per-date computation


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or NaN (never inf)."""
    out = np.full(np.shape(num), np.nan)
    ok = (den != 0) & ~np.isnan(den)
    np.divide(num, den, out=out, where=ok)
    return out


ISSUE_AGE_EDGES = np.array([90, 180, 365, 455])
"""Issue-age buckets by t - issue_date: 0 = last 90 d, 1 = the 90 d before, 2 = rest of the
year, 3 = (t - 455, t - 365] (a year before the last 90 d), 4 = older."""
PAID_AGE_EDGES = np.array([90, 180, 365])
"""Payment-age buckets by t - paid_date: 0, 1, 2 as above, 3 = earlier; 4 = open at t."""
N_BUCKETS = 5
OPEN = 4


def _covered(start: np.ndarray, t: int, lo: int, hi: int) -> np.ndarray:
    """Days of the span (t - hi, t - lo] on or after each SME's `start` (the first day its history
    holds: NEVER when none): what a per-day rate over that span divides by. A window before the
    history began is not a window of zero activity."""
    return np.clip(t - lo - start + 1, 0, hi - lo).astype(float)


def _covered_windows(start: np.ndarray, t: int) -> dict[int, np.ndarray]:
    """`_covered` for the windows (t - W, t]: min(W, t - start + 1), at least 0."""
    return {w: _covered(start, t, 0, w) for w in WINDOWS}


def _with_baseline(change: np.ndarray | pd.Series, start: np.ndarray, t: int) -> np.ndarray:
    """A change of the last 90 days against the SME's own 365 days, missing where its history
    (from `start`) holds no day before the last 90: there is no baseline to change against."""
    return np.where(_covered(start, t, 90, 365) > 0, change, np.nan)


VOLATILITY_LAST_AGE = np.array(
    [-(-365 * (k + 1) // VOLATILITY_BUCKETS) - 1 for k in range(VOLATILITY_BUCKETS)]
)
"""The oldest age t - issue_date in each monthly sales bucket (age * 12 // 365 = k)."""


def _bucket(edges: np.ndarray, values: np.ndarray, *, side: str) -> np.ndarray:
    """`np.searchsorted(edges, values, side=side)` for a few sorted `edges` (as int8): how many
    edges lie below each value (`left`), or at or below it (`right`). One comparison per edge
    and row, several times faster than a binary search per row."""
    out = np.zeros(len(values), dtype=np.int8)
    for edge in edges.tolist():
        out += (values > edge) if side == "left" else (values >= edge)
    return out


def _window(m: np.ndarray) -> dict[int, np.ndarray]:
    """Per-SME bucket sums (n, 5) -> sums over the windows (t - W, t] for W = 90, 180, 365."""
    w90 = m[:, 0]
    w180 = w90 + m[:, 1]
    return {90: w90, 180: w180, 365: w180 + m[:, 2]}


class _Side:
    """One side's rows that can matter at day t (issued on or before t, and issued in the last
    455 days, paid in the last 365 days or still open), with their age buckets."""

    def __init__(self, sides: Sides, n: int, t: int) -> None:
        lo = int(np.searchsorted(sides.issue, _clip_day(sides.issue, t - 455), side="right"))
        hi = int(np.searchsorted(sides.issue, _clip_day(sides.issue, t), side="right"))
        old = np.flatnonzero(_paid_after(sides.paid[:lo], t - 365))  # paid in the last year or open
        v = sides.take(np.concatenate([old, np.arange(lo, hi)]))
        self.v, self.n, self.t = v, n, t
        self.open = v.paid > t
        self.issue_bucket = _bucket(ISSUE_AGE_EDGES, t - v.issue, side="right")
        self.paid_bucket = np.where(
            self.open, OPEN, _bucket(PAID_AGE_EDGES, t - v.paid, side="right")
        )
        self._issue_key = v.sme * N_BUCKETS + self.issue_bucket
        self._paid_key = v.sme * N_BUCKETS + self.paid_bucket

    def by_issue(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(n, 5) sums of `weights` (default: counts) by issue-age bucket."""
        return self._matrix(self._issue_key, weights)

    def by_paid(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(n, 5) sums of `weights` (default: counts) by payment-age bucket (4 = open)."""
        return self._matrix(self._paid_key, weights)

    def _matrix(self, key: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        out = np.bincount(key, weights, minlength=self.n * N_BUCKETS)
        return out.astype(float, copy=False).reshape(self.n, N_BUCKETS)

    def per_sme(self, weights: np.ndarray) -> np.ndarray:
        return np.bincount(self.v.sme, weights, minlength=self.n)


def _latest_index(keys: np.ndarray, n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """For each SME code 0..n-1: position of its last row with day <= t in `keys` (sorted
    (sme, day) keys), and whether it exists."""
    q = np.arange(n, dtype=np.int64) * _KEY + t + _SHIFT
    pos = np.searchsorted(keys, q, side="right") - 1
    if len(keys) == 0:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    ok = (pos >= 0) & (keys[np.maximum(pos, 0)] // _KEY == np.arange(n))
    return np.maximum(pos, 0), np.asarray(ok, dtype=bool)


@dataclass(frozen=True)
class _Receivables:
    """What the other groups reuse of the receivables at t."""

    sales: dict[int, np.ndarray]  # amount issued in each window
    days: dict[int, np.ndarray]  # days of each window the SME's invoice history covers
    sales_n: dict[int, np.ndarray]  # invoices issued in each window
    sales_b: np.ndarray  # (n, 5) amounts by issue-age bucket
    dso: dict[int, np.ndarray]
    per_buyer: np.ndarray  # last year's sales per (SME, counterparty) pair
    in_year: np.ndarray  # receivable rows issued in the last year


@dataclass(frozen=True)
class _Trade:
    """What the other groups reuse of the trade activity at t."""

    purchases: dict[int, np.ndarray]
    purchases_n: dict[int, np.ndarray]
    pair_trade: np.ndarray  # last year's trade (both sides) per (SME, counterparty) pair


Out = dict[str, np.ndarray | pd.Series]


def own_features(p: Prepared, t: int, horizon_days: int) -> Out:
    """Every own-row feature of every prepared SME at day `t` (int days since 1970-01-01), plus
    the meta arrays `META_*` (main core id, population flags, label event): one function per
    catalog group, in catalog order."""
    out: Out = {}
    r = _Side(p.recv, p.n, t)
    q = _Side(p.pay, p.n, t)
    recv = _receivables(p, r, out)
    ap_open = _payment(p, q, out)
    trade = _trade_activity(p, r, q, recv, out)
    _inventory(p, t, recv, trade, ap_open, out)
    main_core = _core_enterprises(p, trade, out)
    _financing(p, t, recv, out)
    _firm(p, t, out)
    _statements(p, t, out)
    _meta(p, t, horizon_days, main_core, recv, trade, out)
    return out


def _receivables(p: Prepared, r: _Side, out: Out) -> _Receivables:
    """Receivables: aging, DSO, collection, lateness, dilution, disputes, confirmation, buyers."""
    n, t, rv, zero = p.n, r.t, r.v, 0.0
    assert isinstance(rv, SaleSides), "receivables are taken from SaleSides"
    n_pairs = len(p.pair_sme)
    r_open_amount = np.where(r.open, rv.amount, zero)
    aging = _bucket(AGING_EDGES, t - rv.due, side="left")
    aged = np.bincount(
        rv.sme * len(AGING_CODES) + aging, r_open_amount, minlength=n * len(AGING_CODES)
    ).reshape(n, len(AGING_CODES))
    paid_amount = r.by_paid(rv.amount)
    ar_open = paid_amount[:, OPEN]
    out["ar_open_amount"] = ar_open
    for j, code in enumerate(AGING_CODES):
        out[f"ar_{code}_amount"] = aged[:, j].copy()
    for j, code in enumerate(AGING_CODES):
        out[f"ar_{code}_share"] = _ratio(aged[:, j], ar_open)

    sales_b = r.by_issue(rv.amount)
    sales = _window(sales_b)
    sales_n = _window(r.by_issue())
    days = _covered_windows(p.first_invoice_day, t)
    dso = {w: _ratio(ar_open, _ratio(sales[w], days[w])) for w in WINDOWS}
    for w in WINDOWS:
        out[f"dso_{w}d"] = dso[w]
    settled = np.where(r.open, zero, 1.0)
    collected = _window(paid_amount)
    collect_days = _window(r.by_paid(rv.amount * (rv.paid - rv.issue) * settled))
    for w in WINDOWS:
        out[f"ar_days_to_collect_{w}d"] = _ratio(collect_days[w], collected[w])
    late = _window(r.by_paid(rv.amount * ((rv.paid > rv.due) & ~r.open)))
    for w in WINDOWS:
        out[f"ar_paid_late_share_{w}d"] = _ratio(late[w], collected[w])
    received = _window(r.by_paid(np.where(r.open, zero, rv.paid_amount)))
    for w in WINDOWS:
        out[f"dilution_{w}d"] = 1.0 - _ratio(received[w], collected[w])
    disputed = _window(r.by_issue(rv.disputed.astype(float)))
    for w in WINDOWS:
        out[f"dispute_rate_{w}d"] = _ratio(disputed[w], sales_n[w])
    out["dispute_rate_change_365d"] = _with_baseline(
        out["dispute_rate_90d"] - out["dispute_rate_365d"], p.first_invoice_day, t
    )
    confirmed = _window(r.by_issue(rv.amount * (rv.confirmed <= t)))
    for w in WINDOWS:
        out[f"ar_confirmed_share_{w}d"] = _ratio(confirmed[w], sales[w])
    in_year = r.issue_bucket <= 2
    per_buyer = np.bincount(rv.pair, np.where(in_year, rv.amount, zero), minlength=n_pairs)
    out["buyer_hhi_365d"] = _ratio(
        np.bincount(p.pair_sme, per_buyer**2, minlength=n),
        np.bincount(p.pair_sme, per_buyer, minlength=n) ** 2,
    )
    return _Receivables(sales, days, sales_n, sales_b, dso, per_buyer, in_year)


def _payment(p: Prepared, q: _Side, out: Out) -> np.ndarray:
    """The SME's own payment behaviour; returns its open payables at t."""
    n, t, zero = p.n, q.t, 0.0
    qv = q.v
    q_settled = ~q.open
    bought_paid = q.by_paid(qv.amount)
    ap_open = bought_paid[:, OPEN]
    paid_in = _window(bought_paid)
    beyond = np.maximum(qv.paid - qv.due, 0)
    paid_late_days = q.by_paid(np.where(q_settled, qv.amount * beyond, zero))
    overdue = q.open & (qv.due < t)
    od_amount = q.per_sme(np.where(overdue, qv.amount, zero))
    od_days = q.per_sme(np.where(overdue, qv.amount * (t - qv.due), zero))
    late_days_w = _window(paid_late_days)
    for w in WINDOWS:
        out[f"ap_days_beyond_terms_{w}d"] = _ratio(late_days_w[w] + od_days, paid_in[w] + od_amount)
    out["ap_days_beyond_terms_change_365d"] = _with_baseline(
        out["ap_days_beyond_terms_90d"] - out["ap_days_beyond_terms_365d"], p.first_invoice_day, t
    )
    out["ap_past_due_share"] = _ratio(od_amount, ap_open)
    worst_flat = np.full(n * N_BUCKETS, -1.0)
    late_by = np.where(q.open, np.maximum(t - qv.due, 0), beyond).astype(float)
    np.maximum.at(worst_flat, qv.sme * N_BUCKETS + q.paid_bucket, late_by)
    worst = worst_flat.reshape(n, N_BUCKETS)
    worst_paid = {90: worst[:, 0]}
    worst_paid[180] = np.maximum(worst_paid[90], worst[:, 1])
    worst_paid[365] = np.maximum(worst_paid[180], worst[:, 2])
    for w in WINDOWS:
        m = np.maximum(worst_paid[w], worst[:, OPEN])
        out[f"ap_max_days_past_due_{w}d"] = np.where(m < 0, np.nan, m)
    late_n = _window(q.by_paid((q_settled & (qv.paid > qv.due)).astype(float)))
    paid_n = _window(q.by_paid(q_settled.astype(float)))
    for w in WINDOWS:
        out[f"ap_late_rate_{w}d"] = _ratio(late_n[w], paid_n[w])
    # days beyond terms as known 90 days earlier: paid in (t - 180, t - 90] (payment bucket 1)
    # plus what was open and overdue at t - 90
    t0 = t - 90
    overdue0 = (qv.issue <= t0) & (qv.paid > t0) & (qv.due < t0)
    od0_amount = q.per_sme(np.where(overdue0, qv.amount, zero))
    od0_days = q.per_sme(np.where(overdue0, qv.amount * (t0 - qv.due), zero))
    dbt_before = _ratio(paid_late_days[:, 1] + od0_days, bought_paid[:, 1] + od0_amount)
    out["ap_days_beyond_terms_trend"] = out["ap_days_beyond_terms_90d"] - dbt_before
    scored = (q.paid_bucket <= 2) | overdue
    score = np.interp(
        np.where(q.open, t - qv.due, qv.paid - qv.due).astype(float),
        PAYMENT_INDEX_DAYS,
        PAYMENT_INDEX_SCORE,
    )
    weight = np.where(scored, qv.amount, zero)
    out["payment_index_365d"] = _ratio(q.per_sme(weight * score), q.per_sme(weight))
    return ap_open


def _trade_activity(p: Prepared, r: _Side, q: _Side, recv: _Receivables, out: Out) -> _Trade:
    """Trade activity: sales and purchases by window, growth, volatility, age, recency, cores."""
    n, t, rv, qv, zero = p.n, r.t, r.v, q.v, 0.0
    n_pairs = len(p.pair_sme)
    sales, sales_n, sales_b = recv.sales, recv.sales_n, recv.sales_b
    in_year, per_buyer = recv.in_year, recv.per_buyer
    purchases_b = q.by_issue(qv.amount)
    purchases = _window(purchases_b)
    purchases_n = _window(q.by_issue())
    for w in WINDOWS:
        out[f"sales_amount_{w}d"] = sales[w]
    for w in WINDOWS:
        out[f"sales_count_{w}d"] = sales_n[w]
    for w in WINDOWS:
        out[f"purchases_amount_{w}d"] = purchases[w]
    for w in WINDOWS:
        out[f"purchases_count_{w}d"] = purchases_n[w]
    # growth of daily rates over the days of each 90-day span the invoice history covers
    first = p.first_invoice_day
    span = {k: _covered(first, t, lo, lo + 90) for k, lo in ((0, 0), (1, 90), (3, 365))}
    for name, b in (("sales", sales_b), ("purchases", purchases_b)):
        rate = {k: _ratio(b[:, k], span[k]) for k in span}
        out[f"{name}_growth_qoq"] = _ratio(rate[0], rate[1]) - 1.0
        out[f"{name}_growth_yoy"] = _ratio(rate[0], rate[3]) - 1.0
    month = np.minimum((t - rv.issue) * VOLATILITY_BUCKETS // 365, VOLATILITY_BUCKETS - 1)
    monthly = np.bincount(
        rv.sme * VOLATILITY_BUCKETS + month,
        np.where(in_year, rv.amount, zero),
        minlength=n * VOLATILITY_BUCKETS,
    ).reshape(n, VOLATILITY_BUCKETS)
    # only the months the invoice history covers whole; a volatility needs two of them
    whole = VOLATILITY_LAST_AGE[None, :] <= (t - first)[:, None]
    months = whole.sum(axis=1).astype(float)
    total = np.zeros(n)
    for k in range(VOLATILITY_BUCKETS):
        total = total + np.where(whole[:, k], monthly[:, k], zero)
    mean = np.where(months >= 2, _ratio(total, months), np.nan)
    sq = np.zeros(n)
    for k in range(VOLATILITY_BUCKETS):
        sq = sq + np.where(whole[:, k], (monthly[:, k] - mean) ** 2, zero)
    out["sales_volatility_365d"] = _ratio(np.sqrt(_ratio(sq, months)), mean)
    out["months_since_first_invoice"] = np.where(first <= t, (t - first) / DAYS_PER_MONTH, np.nan)
    pos, ok = _latest_index(p.sale_key, n, t)
    last_sale = p.sale_key[pos] % _KEY - _SHIFT if len(p.sale_key) else np.zeros(n, np.int64)
    out["days_since_last_sale"] = np.where(ok, (t - last_sale).astype(float), np.nan)
    pair_trade = per_buyer + np.bincount(
        qv.pair, np.where(q.issue_bucket <= 2, qv.amount, zero), minlength=n_pairs
    )
    out["active_cores_365d"] = np.bincount(
        p.pair_sme, (p.pair_is_core & (pair_trade > 0)).astype(float), minlength=n
    )
    return _Trade(purchases, purchases_n, pair_trade)


def _inventory(
    p: Prepared, t: int, recv: _Receivables, trade: _Trade, ap_open: np.ndarray, out: Out
) -> None:
    """Inventory: change, pledged share, turnover, DIO, DPO, cash conversion cycle."""
    n, dso, purchases, days = p.n, recv.dso, trade.purchases, recv.days
    pos, ok = _latest_index(p.i_key, n, t)
    latest_value = np.where(ok, p.i_value[pos] if len(p.i_key) else np.nan, np.nan)
    pos90, ok90 = _latest_index(p.i_key, n, t - 90)
    earlier_value = np.where(ok90, p.i_value[pos90] if len(p.i_key) else np.nan, np.nan)
    out["inventory_change_90d"] = _ratio(latest_value, earlier_value) - 1.0
    latest_pledged = np.where(ok, p.i_pledged[pos] if len(p.i_key) else np.nan, np.nan)
    # a firm that pledged nothing in the last 365 days does not use warehouse-receipt financing:
    # missing, not 0 (a share of 0 would rank it with the safest pledgers, see the catalog)
    year = (p.i_day <= t) & (p.i_day > t - 365) & (p.i_pledged > 0)
    pledger = np.bincount(p.i_sme[year], minlength=n) > 0
    out["pledged_share"] = np.where(pledger, _ratio(latest_pledged, latest_value), np.nan)
    avg_inv: dict[int, np.ndarray] = {}
    daily_cogs: dict[int, np.ndarray] = {}
    cogs_start: dict[int, np.ndarray] = {}  # where the history behind each window's COGS starts
    # a snapshot's cogs covers the days since the previous snapshot: the SME's first snapshot's
    # covers days before its inventory history and is not counted; the others cover
    # (first snapshot, t]
    counted = ~np.isnan(p.i_cogs) & (p.i_day > p.first_snapshot_day[p.i_sme])
    cogs_days = _covered_windows(p.first_snapshot_day + 1, t)
    for w in WINDOWS:
        m = (p.i_day <= t) & (p.i_day > t - w)
        avg_inv[w] = _ratio(
            np.bincount(p.i_sme[m], p.i_value[m], minlength=n),
            np.bincount(p.i_sme[m], minlength=n).astype(float),
        )
        mc = m & counted
        given = np.bincount(p.i_sme[mc], minlength=n) > 0
        cogs_start[w] = np.where(given, p.first_snapshot_day + 1, p.first_invoice_day)
        daily_cogs[w] = np.where(
            given,
            _ratio(np.bincount(p.i_sme[mc], p.i_cogs[mc], minlength=n), cogs_days[w]),
            _ratio(purchases[w], days[w]),
        )
    for w in WINDOWS:
        out[f"inventory_turnover_{w}d"] = _ratio(daily_cogs[w] * w, avg_inv[w])
    dio = {w: _ratio(avg_inv[w], daily_cogs[w]) for w in WINDOWS}
    for w in WINDOWS:
        out[f"dio_{w}d"] = dio[w]
    out["dio_change_365d"] = _with_baseline(_ratio(dio[90], dio[365]) - 1.0, cogs_start[365], t)
    dpo = {w: _ratio(ap_open, _ratio(purchases[w], days[w])) for w in WINDOWS}
    for w in WINDOWS:
        out[f"dpo_{w}d"] = dpo[w]
    for w in WINDOWS:
        out[f"cash_conversion_cycle_{w}d"] = dso[w] + dio[w] - dpo[w]


def _core_enterprises(p: Prepared, trade: _Trade, out: Out) -> pd.Series:
    """Core enterprises: main core = largest 365 d trade (ties: smallest id); returns its id."""
    n, pair_trade = p.n, trade.pair_trade
    core_trade = np.where(p.pair_is_core, pair_trade, 0.0)
    best = np.zeros(n)
    np.maximum.at(best, p.pair_sme, core_trade)
    candidate = np.flatnonzero((core_trade > 0) & (core_trade == best[p.pair_sme]))
    smes_with, first_pos = np.unique(p.pair_sme[candidate], return_index=True)
    main_pair = np.full(n, -1, dtype=np.int64)
    main_pair[smes_with] = candidate[first_pos]
    has_main = main_pair >= 0
    all_trade = np.bincount(p.pair_sme, pair_trade, minlength=n)
    sel = np.flatnonzero(has_main)
    main_trade, main_rating = np.zeros(n), np.full(n, np.nan)
    main_ids = np.full(n, None, dtype=object)
    main_trade[sel] = core_trade[main_pair[sel]]
    main_rating[sel] = p.pair_rating[main_pair[sel]]
    main_ids[sel] = p.pair_cp_id[main_pair[sel]]
    out["main_core_trade_share_365d"] = np.where(has_main, _ratio(main_trade, all_trade), np.nan)
    out["main_core_rating_ordinal"] = main_rating
    rated = p.pair_is_core & (pair_trade > 0) & ~np.isnan(p.pair_rating)
    out["core_rating_weighted"] = _ratio(
        np.bincount(p.pair_sme[rated], (pair_trade * p.pair_rating)[rated], minlength=n),
        np.bincount(p.pair_sme[rated], pair_trade[rated], minlength=n),
    )
    main_core = pd.Series(main_ids, dtype="str")
    return main_core


def _financing(p: Prepared, t: int, recv: _Receivables, out: Out) -> None:
    """Financing: active loans, exposure, exposure to sales, guaranteed share."""
    n, sales = p.n, recv.sales
    active = (p.l_disbursed <= t) & (p.l_maturity > t) & (p.l_default > t)
    exposure = np.bincount(p.l_sme[active], p.l_amount[active], minlength=n)
    out["active_loans"] = np.bincount(p.l_sme[active], minlength=n).astype(float)
    out["loan_exposure"] = exposure
    out["exposure_to_sales_365d"] = _ratio(exposure, _ratio(sales[365], recv.days[365]) * 365)
    g = active & p.l_guaranteed
    out["guaranteed_exposure_share"] = _ratio(
        np.bincount(p.l_sme[g], p.l_amount[g], minlength=n), exposure
    )


def _firm(p: Prepared, t: int, out: Out) -> None:
    """Firm attributes."""
    out["firm_age_years"] = (t - p.founded) / DAYS_PER_YEAR
    out["industry"] = p.industry
    out["region"] = p.region
    out["static_rating_ordinal"] = p.static_rating


def _statements(p: Prepared, t: int, out: Out) -> None:
    """The latest published financial statement: its age and every value."""
    n = p.n
    idx = np.flatnonzero(p.f_published <= t)
    s = p.f_sme[idx]
    last = idx[np.r_[s[1:] != s[:-1], True]] if len(idx) else idx
    age = np.full(n, np.nan)
    age[p.f_sme[last]] = (t - p.f_period[last]).astype(float)
    out["financials_age_days"] = age
    for j, column in enumerate(p.fin_columns):
        col = np.full(n, np.nan)
        col[p.f_sme[last]] = p.f_values[last, j]
        out[f"{FIN_PREFIX}{column}"] = col


def _meta(
    p: Prepared,
    t: int,
    horizon_days: int,
    main_core: pd.Series,
    recv: _Receivables,
    trade: _Trade,
    out: Out,
) -> None:
    """Meta arrays: main core id, population flags, the label event within the horizon."""
    n = p.n
    sales_n, purchases_n = recv.sales_n, trade.purchases_n
    out[META_MAIN_CORE] = main_core
    out[META_ACTIVE] = (sales_n[365] + purchases_n[365]) > 0
    out[META_DEFAULTED] = p.first_default_day <= t
    lo = np.searchsorted(p.default_key, np.arange(n) * _KEY + t + _SHIFT, side="right")
    hi = np.searchsorted(
        p.default_key, np.arange(n) * _KEY + t + horizon_days + _SHIFT, side="right"
    )
    out[META_EVENT] = hi > lo
