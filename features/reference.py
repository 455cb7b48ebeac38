"""Reference data: what other enterprises say about an SME, for any as-of date, and the rows
computed against it (the batch panel and the single-SME path share this code).

Features that need other enterprises' rows — the main core's rating and payment stress, defaults
among the other SMEs of the same main core — cannot come from one SME's own rows. `build_reference`
condenses the full tables into a compact `Reference` (a few MB at 20,000 SMEs) that is saved with
each model (`to_dir` / `from_dir`, Parquet inside) and answers point-in-time queries for any date:

- ``enterprises``: every enterprise row (role, rating, firm attributes), static;
- ``core_payments``: per core and payment day, the amount its suppliers were paid, the
  amount-weighted days from invoice to payment and the invoice count (windowed sums at any date);
- ``peer_intervals``: per (core, SME), the day intervals ``[start, end)`` in which the SME had an
  invoice with the core in the trailing 365 days (a trade on day d makes it a peer on days
  ``d .. d + 364``), merged;
- ``default_intervals``: the same intervals cut to the days on which the SME also had a default
  in the trailing 365 days.

`feature_rows` computes own-row features (`features.own`) and joins these queries; `sme_features`
is that same code applied to one SME's rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.catalog import Feature, catalog_for, financial_columns
from features.contract import ENTERPRISES, Tables
from features.exceptions import FeatureError
from features.own import (
    _KEY,
    _SHIFT,
    META_ACTIVE,
    META_COLUMNS,
    META_DEFAULTED,
    META_FLAGS,
    META_MAIN_CORE,
    NEVER,
    Counterparties,
    Prepared,
    _codes,
    _id_array,
    day_of,
    own_features,
    prepare,
    to_days,
)

REFERENCE_VERSION = 1
PEER_WINDOW_DAYS = 365
STRESS_RECENT_DAYS = 90
STRESS_BASELINE_DAYS = 365
_FILES = ("enterprises", "core_payments", "peer_intervals", "default_intervals")


def _days_to_dates(days: np.ndarray) -> np.ndarray:
    return np.asarray(days, dtype=np.int64).astype("datetime64[D]").astype("datetime64[ns]")


def _merge_runs(group: np.ndarray, day: np.ndarray, span: int) -> tuple[np.ndarray, ...]:
    """Union of the intervals [day, day + span) per group (rows sorted by (group, day)):
    (group, start, end) of the disjoint merged intervals."""
    if len(day) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    new = np.r_[True, (group[1:] != group[:-1]) | (day[1:] - day[:-1] > span)]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(day)] - 1
    return group[starts], day[starts], day[ends] + span


def _lookup(ids: pd.Series) -> pd.Index:
    """Distinct non-missing ids, sorted, as an object Index (positions by `_positions`)."""
    distinct = pd.unique(ids.dropna().astype("object").to_numpy())
    return pd.Index(sorted(str(i) for i in distinct), dtype=object)


def _positions(lookup: pd.Index, ids: pd.Series) -> np.ndarray:
    """Position of each id in `lookup` (int64); -1 where absent or missing."""
    values = pd.Series(ids).astype("object")
    known = pd.Index(values.where(values.notna(), None), dtype=object)
    return lookup.get_indexer(known).astype(np.int64, copy=False)


@dataclass(frozen=True)
class Reference:
    """Point-in-time reference data about the network (see module docstring)."""

    enterprises: pd.DataFrame
    core_payments: pd.DataFrame
    peer_intervals: pd.DataFrame
    default_intervals: pd.DataFrame
    financial_columns: tuple[str, ...] = field(default=())

    def catalog(self) -> tuple[Feature, ...]:
        """The full feature catalog of the data condensed into this reference (its `fin_*`)."""
        return catalog_for(self.financial_columns)

    # ---- persistence
    def to_dir(self, path: str | Path) -> Path:
        """Write the reference as Parquet files plus `reference.json` into folder `path`."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _FILES:
            getattr(self, name).to_parquet(folder / f"{name}.parquet", index=False)
        meta = {"version": REFERENCE_VERSION, "financial_columns": list(self.financial_columns)}
        (folder / "reference.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @staticmethod
    def from_dir(path: str | Path) -> Reference:
        """Read a reference written by `to_dir`."""
        folder = Path(path)
        meta_file = folder / "reference.json"
        if not meta_file.is_file():
            raise FeatureError(f"{folder}: not a reference folder (no reference.json)")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("version") != REFERENCE_VERSION:
            raise FeatureError(
                f"{folder}: reference version {meta.get('version')!r}, expected {REFERENCE_VERSION}"
            )
        frames = {}
        for name in _FILES:
            file = folder / f"{name}.parquet"
            if not file.is_file():
                raise FeatureError(f"{folder}: reference file {file.name} is missing")
            frame = pd.read_parquet(file)
            for col in frame.columns:
                if pd.api.types.is_datetime64_any_dtype(frame[col]):
                    frame[col] = frame[col].astype("datetime64[ns]")
            frames[name] = frame
        return Reference(**frames, financial_columns=tuple(meta["financial_columns"]))

    # ---- query indexes (built on first use)
    @cached_property
    def _core_lookup(self) -> pd.Index:
        """Every core id of the payments and intervals, sorted: a query's cores are coded once
        into it (the hash table is built once and kept by the index)."""
        ids = pd.concat(
            [self.core_payments["core_id"], self.peer_intervals["core_id"],
             self.default_intervals["core_id"]],
            ignore_index=True,
        )  # fmt: skip
        return _lookup(ids)

    @cached_property
    def _sme_lookup(self) -> pd.Index:
        """Every SME id of the intervals, sorted (see `_core_lookup`)."""
        ids = pd.concat(
            [self.peer_intervals["sme_id"], self.default_intervals["sme_id"]], ignore_index=True
        )
        return _lookup(ids)

    def _core_codes(self, core_ids: pd.Series) -> np.ndarray:
        """Position of each core id in `_core_lookup`; -1 where unknown or missing."""
        return _positions(self._core_lookup, core_ids)

    @cached_property
    def _payments_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cp = self.core_payments
        code = self._core_codes(cp["core_id"])
        day = to_days(cp["paid_date"])
        order = np.lexsort((day, code))
        code, day = code[order], day[order]
        frame = pd.DataFrame(
            {
                "code": code,
                "amount": cp["amount"].to_numpy(float)[order],
                "amount_days": cp["amount_days"].to_numpy(float)[order],
                "invoices": cp["invoices"].to_numpy(np.int64)[order],
            }
        )
        cum = frame.groupby("code", sort=False)[["amount", "amount_days", "invoices"]].cumsum()
        keys = code * _KEY + day + _SHIFT
        return (
            keys,
            cum["amount"].to_numpy(float),
            cum["amount_days"].to_numpy(float),
            cum["invoices"].to_numpy(np.int64),
        )

    @cached_property
    def _peer_index(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per interval kind: sorted (core, day) event keys, count after each event."""
        out = {}
        for kind, frame in (("peer", self.peer_intervals), ("default", self.default_intervals)):
            code = self._core_codes(frame["core_id"])
            start, end = to_days(frame["start"]), to_days(frame["end"])
            ev_code = np.concatenate([code, code])
            ev_day = np.concatenate([start, end])
            delta = np.concatenate([np.ones(len(start)), -np.ones(len(end))]).astype(np.int64)
            order = np.lexsort((ev_day, ev_code))
            ev_code, ev_day, delta = ev_code[order], ev_day[order], delta[order]
            counts = pd.Series(delta).groupby(ev_code).cumsum().to_numpy(np.int64)
            out[kind] = (ev_code * _KEY + ev_day + _SHIFT, counts)
        return out

    @cached_property
    def _pair_index(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per interval kind: (core, sme) pair numbers (`_pair_numbers`) sorted, sorted (pair,
        start) keys (pair = position among those numbers), interval ends."""
        out = {}
        for kind, frame in (("peer", self.peer_intervals), ("default", self.default_intervals)):
            number = self._pair_numbers(
                self._core_codes(frame["core_id"]), _positions(self._sme_lookup, frame["sme_id"])
            )
            pairs = np.unique(number)
            code = np.searchsorted(pairs, number)
            start, end = to_days(frame["start"]), to_days(frame["end"])
            keys = code * _KEY + start + _SHIFT
            order = np.argsort(keys, kind="stable")
            out[kind] = (pairs, keys[order], end[order])
        return out

    def _pair_numbers(self, core: np.ndarray, sme: np.ndarray) -> np.ndarray:
        """(core code, SME code) -> one int64 per pair; -1 where either is unknown (-1)."""
        number = core.astype(np.int64) * max(len(self._sme_lookup), 1) + sme
        return np.where((core >= 0) & (sme >= 0), number, -1)

    # ---- point-in-time queries (vectorised over rows)
    def _window_sums(
        self, code: np.ndarray, t: int, w: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys, amount, amount_days, invoices = self._payments_index

        def at(day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            pos = np.searchsorted(keys, code * _KEY + day + _SHIFT, side="right") - 1
            safe = np.maximum(pos, 0)
            ok = (code >= 0) & (pos >= 0)
            if len(keys):
                ok &= keys[safe] // _KEY == code
                return (
                    np.where(ok, amount[safe], 0.0),
                    np.where(ok, amount_days[safe], 0.0),
                    np.where(ok, invoices[safe], 0),
                )
            zeros = np.zeros(len(code))
            return zeros, zeros, zeros.astype(np.int64)

        hi, lo = at(t), at(t - w)
        return hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]

    def core_days_to_pay(self, core_ids: pd.Series, t: int, w: int) -> np.ndarray:
        """Amount-weighted days from invoice to payment of the cores' supplier invoices paid in
        (t - w, t]; NaN for unknown cores or no payment in the window."""
        return self._days_to_pay(self._core_codes(core_ids), t, w)

    def _days_to_pay(self, code: np.ndarray, t: int, w: int) -> np.ndarray:
        amount, amount_days, count = self._window_sums(code, t, w)
        out = np.full(len(amount), np.nan)
        ok = count > 0
        out[ok] = amount_days[ok] / amount[ok]
        return out

    def payment_stress(self, core_ids: pd.Series, t: int) -> np.ndarray:
        """A core's days to pay its suppliers in the last 90 days minus its 365-day baseline."""
        return self._stress(self._core_codes(core_ids), t)

    def _stress(self, code: np.ndarray, t: int) -> np.ndarray:
        return self._days_to_pay(code, t, STRESS_RECENT_DAYS) - self._days_to_pay(
            code, t, STRESS_BASELINE_DAYS
        )

    def _count(self, kind: str, code: np.ndarray, t: int) -> np.ndarray:
        keys, counts = self._peer_index[kind]
        if len(keys) == 0:
            return np.zeros(len(code), dtype=np.int64)
        pos = np.searchsorted(keys, code * _KEY + t + _SHIFT, side="right") - 1
        safe = np.maximum(pos, 0)
        ok = (code >= 0) & (pos >= 0) & (keys[safe] // _KEY == code)
        return np.where(ok, counts[safe], 0)

    def _member(self, kind: str, pair: np.ndarray, t: int) -> np.ndarray:
        pairs, keys, ends = self._pair_index[kind]
        if len(keys) == 0:
            return np.zeros(len(pair), dtype=bool)
        at = np.minimum(np.searchsorted(pairs, pair), len(pairs) - 1)
        code = np.where((pair >= 0) & (pairs[at] == pair), at, -1)
        pos = np.searchsorted(keys, code * _KEY + t + _SHIFT, side="right") - 1
        safe = np.maximum(pos, 0)
        ok = (code >= 0) & (pos >= 0) & (keys[safe] // _KEY == code) & (t < ends[safe])
        return np.asarray(ok, dtype=bool)

    def peer_default_share(self, core_ids: pd.Series, sme_ids: pd.Series, t: int) -> np.ndarray:
        """Share of the other SMEs trading with each core in (t - 365, t] that had a default in
        (t - 365, t]; the SME itself is left out. NaN without a core or without other SMEs."""
        code = self._core_codes(core_ids)
        return self._default_share(code, _positions(self._sme_lookup, sme_ids), t)

    def _default_share(self, code: np.ndarray, sme: np.ndarray, t: int) -> np.ndarray:
        pair = self._pair_numbers(code, sme)
        peers = self._count("peer", code, t) - self._member("peer", pair, t)
        defaulted = self._count("default", code, t) - self._member("default", pair, t)
        out = np.full(len(peers), np.nan)
        ok = (peers > 0) & (code >= 0)
        out[ok] = defaulted[ok] / peers[ok]
        return out

    def network_features(
        self, core_ids: pd.Series, sme_ids: pd.Series, t: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(`payment_stress`, `peer_default_share`) of rows at day `t`, the ids coded once."""
        code = self._core_codes(core_ids)
        sme = _positions(self._sme_lookup, sme_ids)
        return self._stress(code, t), self._default_share(code, sme, t)

    @cached_property
    def _counterparties(self) -> Counterparties:
        base = Counterparties.from_enterprises(self.enterprises)
        return Counterparties(base.ids, base.is_core, base.rating, _id_array(base.ids))

    @cached_property
    def _enterprise_index(self) -> pd.DataFrame:
        return self.enterprises.drop_duplicates("enterprise_id", keep="last").set_index(
            "enterprise_id"
        )

    def counterparties(self, own: pd.DataFrame | None = None) -> Counterparties:
        """Role and rating of every enterprise, updated by the request's own enterprise rows."""
        base = self._counterparties
        return base if own is None else base.overlay(own)

    def prepare(self, tables: Tables, sme_ids: Sequence[str]) -> Prepared:
        """`features.own.prepare` of `sme_ids` against this reference, the request's own
        enterprise rows overlaid (see `counterparties` and `sme_rows`)."""
        return prepare(
            tables,
            sme_ids,
            self.counterparties(tables.enterprises),
            self.financial_columns,
            self.sme_rows(sme_ids, tables.enterprises),
        )

    def sme_rows(self, sme_ids: Sequence[str], own: pd.DataFrame | None = None) -> pd.DataFrame:
        """Enterprise rows of `sme_ids`: the request's own rows, their missing values (or missing
        rows) filled from the reference's rows. Indexed by enterprise_id."""
        known = self._enterprise_index
        base = known.reindex(pd.Index(list(sme_ids), dtype="str", name="enterprise_id"))
        if own is None or own.empty:
            return base
        mine = own.drop_duplicates("enterprise_id", keep="last").set_index("enterprise_id")
        mine = mine[mine.index.isin(base.index)]
        if mine.empty:
            return base
        merged = mine.combine_first(base)
        return merged.reindex(base.index)


def build_reference(tables: Tables) -> Reference:
    """Condense the full tables into the reference data (see module docstring)."""
    ent = tables.enterprises
    columns = [c.name for c in ENTERPRISES.columns if c.name in ent]
    enterprises = ent[columns].sort_values("enterprise_id", kind="stable").reset_index(drop=True)
    roles = pd.Series(
        enterprises["role"].astype("object").to_numpy(),
        index=enterprises["enterprise_id"].astype("object").to_numpy(),
    )
    core_ids = _id_array(sorted(roles.index[roles == "core"].tolist()))
    sme_universe = _id_array(sorted(roles.index[roles == "sme"].tolist()))

    inv = tables.invoices
    # each side coded once into every enterprise id, then mapped to its core / SME code (int32:
    # these arrays span every invoice)
    ent_ids = _id_array(sorted(set(roles.index.tolist())))
    core_of, sme_of = _role_maps(ent_ids, core_ids), _role_maps(ent_ids, sme_universe)
    seller = _codes(inv["seller_id"], ent_ids, np.int32)
    seller_core, seller_sme = core_of[seller], sme_of[seller]
    del seller
    buyer = _codes(inv["buyer_id"], ent_ids, np.int32)
    buyer_core, buyer_sme = core_of[buyer], sme_of[buyer]
    del buyer

    # a core's payments to its suppliers, summed per (core, payment day) in canonical order
    # (by invoice id: sums do not depend on the rows' order in the file)
    paid_at = (
        inv["paid_date"].to_numpy(dtype="datetime64[ns]")
        if "paid_date" in inv
        else np.full(len(inv), np.datetime64("NaT"), dtype="datetime64[ns]")
    )
    rows = np.flatnonzero((buyer_core >= 0) & ~np.isnat(paid_at))
    rows = rows[_sorted_taken(inv["invoice_id"], rows)]
    paid = to_days(paid_at[rows])
    del paid_at
    issued = to_days(inv["issue_date"].to_numpy(dtype="datetime64[ns]")[rows])
    amount = inv["amount"].to_numpy(float)[rows]
    pay = pd.DataFrame(
        {
            "core": buyer_core[rows].astype(np.int64),
            "day": paid,
            "amount": amount,
            "amount_days": amount * (paid - issued),
            "invoices": np.ones(len(rows), dtype=np.int64),
        }
    )
    del rows, paid, issued, amount
    daily = pay.groupby(["core", "day"], sort=True).sum().reset_index()
    del pay
    core_list = np.asarray(core_ids.to_pylist(), dtype=object)
    core_payments = pd.DataFrame(
        {
            "core_id": pd.Series(core_list[daily["core"].to_numpy(np.int64)], dtype="str"),
            "paid_date": _days_to_dates(daily["day"].to_numpy()),
            "amount": daily["amount"].to_numpy(float),
            "amount_days": daily["amount_days"].to_numpy(float),
            "invoices": daily["invoices"].to_numpy(np.int64),
        }
    )

    # peer intervals: (core, sme) trading days, merged into [start, end) (the merge depends on
    # the (pair, day) values only, not on the rows' order)
    a = np.flatnonzero((seller_core >= 0) & (buyer_sme >= 0))
    b = np.flatnonzero((buyer_core >= 0) & (seller_sme >= 0))
    n_sme = max(len(sme_universe), 1)
    pair = np.concatenate(
        [
            seller_core[a].astype(np.int64) * n_sme + buyer_sme[a],
            buyer_core[b].astype(np.int64) * n_sme + seller_sme[b],
        ]
    )
    del seller_core, seller_sme, buyer_core, buyer_sme
    issue_at = inv["issue_date"].to_numpy(dtype="datetime64[ns]")
    day = to_days(np.concatenate([issue_at[a], issue_at[b]]))
    del a, b
    # sorted by (pair, day): one int64 key sorted in place where it fits (no index array and no
    # reordered copies beside the originals: these are the build's largest arrays)
    fit = _pair_day_span(pair, day)
    if fit is None:
        order = np.lexsort((day, pair))
        pair, day = pair[order], day[order]
        del order
    else:
        first, span = fit
        key = pair * span
        del pair
        key += day - first
        del day
        key.sort()
        pair, day = np.divmod(key, span)
        del key
        day += first
    p_pair, p_start, p_end = _merge_runs(pair, day, PEER_WINDOW_DAYS)

    # default intervals per SME, intersected with each of its peer intervals
    loans = tables.loans
    d_sme = _codes(loans["sme_id"], sme_universe)
    d_day = (
        to_days(loans["default_date"]) if "default_date" in loans else np.full(len(loans), NEVER)
    )
    keep = (d_sme >= 0) & (d_day < NEVER)
    d_sme, d_day = d_sme[keep], d_day[keep]
    order = np.lexsort((d_day, d_sme))
    s_sme, s_start, s_end = _merge_runs(d_sme[order], d_day[order], PEER_WINDOW_DAYS)
    peers = pd.DataFrame({"pair": p_pair, "sme": p_pair % n_sme, "start": p_start, "end": p_end})
    defaults = pd.DataFrame({"sme": s_sme, "d_start": s_start, "d_end": s_end})
    both = peers.merge(defaults, on="sme", how="inner")
    both["start"] = np.maximum(both["start"], both["d_start"])
    both["end"] = np.minimum(both["end"], both["d_end"])
    both = both[both["start"] < both["end"]].sort_values(["pair", "start"], kind="stable")

    sme_list = np.asarray(sme_universe.to_pylist(), dtype=object)

    def interval_frame(pairs: np.ndarray, start: np.ndarray, end: np.ndarray) -> pd.DataFrame:
        pairs = np.asarray(pairs, dtype=np.int64)
        return pd.DataFrame(
            {
                "core_id": pd.Series(core_list[pairs // n_sme], dtype="str"),
                "sme_id": pd.Series(sme_list[pairs % n_sme], dtype="str"),
                "start": _days_to_dates(start),
                "end": _days_to_dates(end),
            }
        )

    return Reference(
        enterprises=enterprises,
        core_payments=core_payments,
        peer_intervals=interval_frame(p_pair, p_start, p_end),
        default_intervals=interval_frame(
            both["pair"].to_numpy(), both["start"].to_numpy(), both["end"].to_numpy()
        ),
        financial_columns=tuple(financial_columns(tables)),
    )


def _pair_day_span(pair: np.ndarray, day: np.ndarray) -> tuple[int, int] | None:
    """(first day, span) such that `pair * span + (day - first)` orders (pair, day) rows as a
    lexsort does and fits int64; None where it would not fit."""
    if len(day) == 0:
        return None
    first, span = int(day.min()), int(day.max()) - int(day.min()) + 1
    if int(pair.min()) < 0 or int(pair.max()) >= (2**62) // span:
        return None
    return first, span


def _role_maps(ent_ids: pa.Array, members: pa.Array) -> np.ndarray:
    """For each position in `ent_ids`, the position of that id in `members` (-1 if not one),
    plus a last entry -1: indexed by `_codes` into `ent_ids`, -1 (unknown) maps to -1."""
    found = _codes(pd.Series(ent_ids.to_pylist(), dtype="str"), members, np.int32)
    return np.append(found, np.int32(-1))


def _sorted_taken(ids: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Stable order of `ids` at `rows` (ascending): `rows[order]` is the order in which sorting
    every row by id and keeping `rows` would list them."""
    taken = pa.array(ids).take(pa.array(rows))
    return pc.sort_indices(taken, sort_keys=[("", "ascending")]).to_numpy().astype(np.int64)


def sme_ids_of(tables: Tables) -> list[str]:
    """The SMEs (role `sme`) of a folder's enterprises table, sorted."""
    ent = tables.enterprises
    return sorted(ent.loc[ent["role"] == "sme", "enterprise_id"].astype("object").tolist())


def feature_rows(
    tables: Tables,
    as_of_days: Iterable[int],
    reference: Reference,
    *,
    sme_ids: Sequence[str] | None = None,
    horizon_days: int = 365,
    population_only: bool = False,
    on_date: Callable[[], object] | None = None,
) -> pd.DataFrame:
    """Feature rows of the SMEs `sme_ids` (default: every SME of `tables.enterprises`) at each
    as-of day (int days since 1970-01-01), from their own rows in `tables` plus `reference`.

    Columns: `sme_id`, `as_of`, the catalog features in catalog order, then the meta columns
    `META_ACTIVE`, `META_DEFAULTED`, `META_EVENT` (population flags and label event within
    `horizon_days`) and `META_MAIN_CORE` (the main core enterprise's id). Rows ordered by
    (as_of, sme_id). `population_only` keeps rows with an invoice in the trailing 365 days and
    no default on or before the date. `on_date` is called after each date (progress)."""
    ids = sme_ids_of(tables) if sme_ids is None else sorted({str(s) for s in sme_ids})
    prepared = reference.prepare(tables, ids)
    frames = []
    for t in as_of_days:
        frames.append(date_rows(prepared, reference, int(t), horizon_days, population_only))
        if on_date is not None:
            on_date()
    if not frames:
        catalog = reference.catalog()
        return pd.DataFrame(columns=["sme_id", "as_of", *(f.name for f in catalog)])
    return pd.concat(frames, ignore_index=True)


def date_rows(
    prepared: Prepared,
    reference: Reference,
    t: int,
    horizon_days: int,
    population_only: bool,
) -> pd.DataFrame:
    """`feature_rows` at one day `t` from SMEs already prepared (`Reference.prepare`): their
    rows ordered by sme_id, the population only if `population_only`."""
    own = own_features(prepared, t, horizon_days)
    main_core = own[META_MAIN_CORE]
    assert isinstance(main_core, pd.Series)
    sme_col = pd.Series(prepared.sme_ids, dtype="str")
    stress, share = reference.network_features(main_core, sme_col, t)
    own["main_core_payment_stress"] = stress
    own["peer_default_share_365d"] = share
    columns: dict[str, object] = {
        "sme_id": sme_col,
        "as_of": pd.Series(np.repeat(_days_to_dates(np.array([t])), prepared.n)),
    }
    for f in reference.catalog():
        values = own[f.name]
        if f.kind == "categorical":
            columns[f.name] = pd.Series(values, dtype="str").reset_index(drop=True)
        else:
            columns[f.name] = np.asarray(values, dtype=float)
    for meta in META_FLAGS:
        columns[meta] = np.asarray(own[meta], dtype=bool)
    columns[META_MAIN_CORE] = main_core.reset_index(drop=True)
    frame = pd.DataFrame(columns)
    if population_only:
        frame = frame[frame[META_ACTIVE] & ~frame[META_DEFAULTED]]
    return frame


def sme_features(
    tables: Tables, as_of: object, reference: Reference, *, sme_id: str | None = None
) -> pd.DataFrame:
    """One SME's features at `as_of` from its own rows plus the reference: exactly the batch
    panel's row for that SME and date (without the label).

    `tables` holds the SME's own invoices, inventory, loans and financials rows and, ideally,
    its enterprises row (otherwise the reference's row is used); counterparties' attributes come
    from the reference. `sme_id` defaults to the one SME of `tables.enterprises`."""
    if sme_id is None:
        smes = sme_ids_of(tables)
        if len(smes) != 1:
            raise FeatureError(
                f"sme_features needs sme_id= or exactly one SME in the enterprises rows "
                f"(found {len(smes)})"
            )
        sme_id = smes[0]
    rows = feature_rows(tables, [day_of(as_of)], reference, sme_ids=[sme_id])
    return rows.drop(columns=list(META_COLUMNS)).reset_index(drop=True)
