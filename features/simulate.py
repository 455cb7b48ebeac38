"""A supply-chain credit simulator with ground truth: `scf-risk generate`.

No real SME supply-chain data is public, so this module simulates a bank's supply-chain finance
portfolio: the contract's tables (enterprises, invoices, inventory, loans, financials) plus
``truth`` (``sme_id, as_of, pd_true``), the simulator's own probability of default. The latent
model lives in `features.sim.model`, the observation layer in `features.sim.chunk`; this module is
the public surface (`SimConfig`, `simulate`, `generate_to_folder`).

Time
    Month periods: the first runs from ``start`` to the end of its calendar month, the others are
    calendar months. As-of dates are month ends; the extraction date is the last day simulated,
    and no event in the tables is dated after it (issue, payment, confirmation, snapshot,
    disbursement, default and publication dates). Contractual dates set at issue or disbursement
    (``due_date``, ``maturity_date``) may lie after it, as in any real extract.

Core enterprises (default 20)
    Agency ratings AAA..B, payment terms of 30/60/90 days, a habitual lateness that grows with the
    rating notch, and a two-state Markov regime (normal / stress). Entering stress is likelier for
    weaker ratings and in a downturn of the core's industry; a stress episode lasts a few months.
    A stressed core pays its suppliers 20-45 days later and cuts its orders by 20-45 %.

Industries
    Eight industry factors, each a persistent AR(1) shared by the firms of that industry; they
    move the health of SMEs (with an SME-specific loading) and the cores' stress entry.

SMEs (default 2,000)
    Each linked to 1-3 cores (larger cores anchor more SMEs), with trade shares: upstream
    suppliers sell to their cores (receivables, often confirmed by the core), downstream dealers
    buy from them on 30-day terms (payables), a fifth do both. Every SME also buys from 1-3 other
    SMEs (so SMEs' payables and receivables both exist, and a buyer's distress shows in its
    suppliers' receivables). Industry (mostly its main core's), region, founding date (age feeds
    its long-run health a little), and a static ``external_rating``: a noisy read of the health at
    onboarding on the scale A-..CCC, never updated - the static rating a model must beat.

Latent health
    ``h`` evolves monthly: ``h' = h + (1 - phi)(target - h) + sigma z`` with phi = 0.9, where the
    target is the SME's long-run level, plus an SME-specific drift (some firms improve, others
    deteriorate), plus its loading times its industry factor, minus the trade-weighted share of
    its cores in stress (suppliers are hit harder than dealers). The tables never see ``h``:
    they read a smoothed, lagged ``h_obs = (h_obs + h) / 2`` through noisy, SME-specific habits,
    so no single column reveals it, while together (and over time) they carry it:

    - own payables: each month an open invoice's payment date is re-planned from its due date,
      the payer's payment habit and current ``h_obs`` (days beyond terms grow convexly as health
      falls) and the invoice's noise; it is paid when that date comes (early, on time or late),
      partially more often when the payer is weak, and never once the payer has defaulted;
    - receivables: disputes (and the dilution they bring: 5-50 % short payment, 15-45 days later)
      become likelier as the seller weakens; a core pays with its habitual lateness, 20-45 days
      more while stressed, so its suppliers' receivables age;
    - sales and purchases fall (fewer and smaller invoices), with industry seasonality;
    - inventory builds up relative to sales, and more of it is pledged to lenders;
    - financing drawn per unit of activity rises;
    - annual financial statements (calendar fiscal year: revenue, current_ratio, debt_to_assets,
      net_margin) read the year's average ``h_obs`` with noise and are published 90-150 days
      after the period end; the statement of the year before the start reads the onboarding state.

    Causality: every record is drawn in the month it is dated, from states of that month or
    earlier, so simulating more months never changes a record dated within fewer (tested).

Default
    Monthly hazard ``cap * logistic(a - b h + c s)`` (s = stressed-core share), capped at 20 % a
    month so that default is never certain. A default happens on a uniform day of its month; it
    sets ``default_date`` on every loan open that day (disbursed on or before, maturing on or
    after), and the SME stops trading: no invoices, loans, snapshots or statements from then on,
    and its unpaid payables stay unpaid. The portfolio's annual default rate is about 4 %.

Loans (rolling financing, so that every default is visible through a loan)
    Suppliers draw receivable financing every month, anchored on their main core (tenor = the
    core's terms + 35-65 days); dealers draw prepayment financing every month from their main core
    (65-155 days; 40 % of dealers with the core's repurchase guarantee); half of the SMEs pledge
    inventory (warehouse receipts) and draw an inventory-pledge loan every quarter (120-210 days).
    Month 0's loans are disbursed on the start date, so an SME always has an open loan.

Shocks (`SimConfig.shock`, ``scf-risk generate --shock``)
    From a given month on, chosen core enterprises stay in stress and chosen industries' factors
    are lowered (a downturn). The random draws are unchanged, so everything dated before the
    shock is identical to the same seed without it; the oracle is not told of the shock. A core
    that is in stress anyway in every month from the shock's month on is refused: holding it in
    stress would change nothing (seed 7 with 8 cores has one, C04, stressed from its fourth month
    to the end). Size, on 800 SMEs and 8 cores (seed 7), 6 months after the shock, as the paired
    difference in differences of logit ``pd_true`` of the target's SMEs against the rest (the
    unshocked run's in brackets): an industry downturn (textiles) x2.1 (x1.06), a core held in
    stress (C01, 139 SMEs) x1.75 (x1.12). The oracle expects a downturn and a stress episode to
    revert, so these understate what the shocked SMEs' realised defaults will show.

Truth
    ``truth.parquet`` has one row per SME and month end at which the SME is alive and has not
    defaulted (on or before that date). ``pd_true`` = P(default in (t, t + 365 d] | latent state
    at t): a Monte Carlo forward simulation of the same model (industry factors, core regimes and
    the SME's health, with the same transition and hazard functions) from the state at t, over
    `SimConfig.mc_paths` paths of common random numbers (antithetic, shared by every SME and date),
    integrating the default event exactly (product of monthly survival). It never reads the
    realised future. On the default dataset the oracle's AUC against realised 12-month defaults
    (as-of dates whose window ends within the data) is about 0.87, the static rating's about 0.66,
    and a LightGBM on the project's feature panel gets within about 0.01 of the oracle out of
    time (`bench/bench_simulate.py`).

Determinism and scale
    Everything derives from ``seed`` through independent streams (market, oracle draws, one per
    chunk of `SimConfig.chunk_size` SMEs), so the same config gives byte-identical files. SMEs are
    simulated chunk by chunk after the shared market path, and each chunk is appended to the
    Parquet files, so memory is bounded by the chunk size.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from features.contract import FINANCIALS, RATING_SCALE, TABLES, Table, Tables
from features.exceptions import ScfRiskError
from features.io import write_new_folder
from features.sim.chunk import (
    FINANCIAL_COLUMNS,
    ChunkTables,
    World,
    cores_table,
    simulate_chunk,
)
from features.sim.model import (
    INDUSTRIES,
    Calendar,
    CommonRandomNumbers,
    ModelParams,
    Shock,
    Smes,
    draw_cores,
    draw_market,
    draw_smes,
)

TRUTH_FILE = "truth.parquet"
_ARROW_TYPES = {"str": pa.string(), "date": pa.date32(), "float": pa.float64(), "bool": pa.bool_()}
_STREAM_MARKET, _STREAM_ORACLE, _STREAM_CHUNKS = 0, 1, 2


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Same config (seed included), byte-identical output."""

    n_smes: int = 2000
    n_cores: int = 20
    months: int = 36
    start: date = date(2022, 1, 1)
    seed: int = 1
    mc_paths: int = 256  # Monte Carlo paths of the pd_true oracle
    chunk_size: int = 2000  # SMEs simulated (and held in memory) at a time
    progress: bool = True  # a progress bar on stderr
    params: ModelParams = field(default_factory=ModelParams)
    shock: Shock | None = None  # a core in stress / an industry downturn from a month on

    def check(self) -> None:
        """Raise ScfRiskError naming the first field out of range."""
        for name, low in (
            ("n_smes", 1),
            ("n_cores", 1),
            ("months", 1),
            ("mc_paths", 2),
            ("chunk_size", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ScfRiskError(
                    f"simulation config: {name} must be an integer >= {low}, got {value!r}"
                )
        if not isinstance(self.start, date):
            raise ScfRiskError(f"simulation config: start must be a date, got {self.start!r}")
        if self.seed < 0:
            raise ScfRiskError(f"simulation config: seed must be >= 0, got {self.seed!r}")
        if self.shock is not None:
            s = self.shock
            if not 0 <= s.month < self.months:
                raise ScfRiskError(
                    f"simulation config: the shock's month must be in [0, {self.months}), "
                    f"got {s.month}"
                )
            bad = [c for c in s.cores if not 0 <= c < self.n_cores]
            if bad:
                raise ScfRiskError(f"simulation config: shock cores {bad} out of range")
            if any(not 0 <= i < len(INDUSTRIES) for i in s.industries):
                raise ScfRiskError(f"simulation config: shock industries {s.industries} unknown")
            if not s.cores and not s.industries:
                raise ScfRiskError("simulation config: a shock needs a core or an industry")


def parse_shock(text: str, *, start: date, n_cores: int) -> Shock:
    """A `Shock` from its command-line form ``TARGET[+TARGET...]@YYYY-MM``, where a target is
    ``core:ID`` (an enterprise id, C01 ...) or ``industry:NAME`` (one of the simulator's
    industries): e.g. ``core:C01+industry:textiles@2023-06``. ScfRiskError naming what is wrong."""
    head, sep, when = text.strip().partition("@")
    if not sep or not head:
        raise ScfRiskError(
            f"shock {text!r}: expected TARGET[+TARGET...]@YYYY-MM, e.g. core:C01@2023-06"
        )
    try:
        month = pd.Period(when, freq="M")
    except ValueError:
        raise ScfRiskError(
            f"shock {text!r}: expected a month YYYY-MM after '@', got {when!r}"
        ) from None
    index = (month.year - start.year) * 12 + (month.month - start.month)
    ids = _enterprise_ids(n_cores, 1).to_pylist()[:n_cores]
    cores: list[int] = []
    industries: list[int] = []
    for target in head.split("+"):
        kind, _, name = target.partition(":")
        if kind == "core" and name in ids:
            cores.append(ids.index(name))
        elif kind == "industry" and name in INDUSTRIES:
            industries.append(INDUSTRIES.index(name))
        else:
            raise ScfRiskError(
                f"shock {text!r}: unknown target {target!r}; expected core:ID (ID one of "
                f"{ids[0]}..{ids[-1]}) or industry:NAME (NAME one of {', '.join(INDUSTRIES)})"
            )
    return Shock(month=index, cores=tuple(cores), industries=tuple(industries))


@dataclass(frozen=True)
class SimResult:
    """The simulated tables in memory, typed as `features.io` types a loaded folder."""

    enterprises: pd.DataFrame
    invoices: pd.DataFrame
    inventory: pd.DataFrame
    loans: pd.DataFrame
    financials: pd.DataFrame
    truth: pd.DataFrame  # sme_id, as_of, pd_true
    latent: pd.DataFrame  # sme_id, as_of, health: the SMEs' latent state (not written)
    core_stress: pd.DataFrame  # core_id, as_of, stressed: the cores' regimes (not written)
    extraction_date: date

    def tables(self) -> Tables:
        """The contract's tables as a `Tables` bundle."""
        return Tables(
            enterprises=self.enterprises,
            invoices=self.invoices,
            inventory=self.inventory,
            loans=self.loans,
            financials=self.financials,
        )

    def labelled_truth(self, horizon_days: int = 365) -> pd.DataFrame:
        """Truth rows whose window (as_of, as_of + horizon] ends by the extraction date, with the
        realised label read from the loans as a model must (`default_12m`: a loan of the SME has
        its default date in the window) and the SME's static rating as an ordinal (`rating`:
        index in RATING_SCALE, higher = riskier)."""
        horizon = pd.Timedelta(days=horizon_days)
        rows = self.truth[self.truth["as_of"] + horizon <= pd.Timestamp(self.extraction_date)]
        defaulted = self.loans.dropna(subset=["default_date"])
        first_default = defaulted.groupby("sme_id")["default_date"].min()
        when = rows["sme_id"].map(first_default)
        label = (when > rows["as_of"]) & (when <= rows["as_of"] + horizon)
        ordinal = {name: i for i, name in enumerate(RATING_SCALE)}
        ratings = self.enterprises.set_index("enterprise_id")["external_rating"].map(ordinal)
        return rows.assign(default_12m=label.astype(int), rating=rows["sme_id"].map(ratings))


def arrow_schema(table: Table) -> pa.Schema:
    """The Parquet schema of a contract table (financials: with the simulator's ratio columns)."""
    fields = [pa.field(c.name, _ARROW_TYPES[c.kind]) for c in table.columns]
    if table is FINANCIALS:
        fields += [pa.field(name, pa.float64()) for name in FINANCIAL_COLUMNS]
    return pa.schema(fields)


TRUTH_SCHEMA = pa.schema(
    [
        pa.field("sme_id", pa.string()),
        pa.field("as_of", pa.date32()),
        pa.field("pd_true", pa.float64()),
    ]
)


def _stream(config: SimConfig, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(index,)))


def _enterprise_ids(n_cores: int, n_smes: int) -> pa.Array:
    core_w = max(2, len(str(n_cores)))
    sme_w = max(5, len(str(n_smes)))
    ids = [f"C{i:0{core_w}d}" for i in range(1, n_cores + 1)]
    ids += [f"S{i:0{sme_w}d}" for i in range(1, n_smes + 1)]
    return pa.array(ids, type=pa.string())


def _refuse_idle_core_shock(config: SimConfig, shock: Shock, calendar: Calendar) -> None:
    """ScfRiskError when a shocked core is in stress anyway in every month from the shock's month
    on: holding it in stress would change nothing, and the run would be a shock in name only."""
    rng = _stream(config, _STREAM_MARKET)
    cores = draw_cores(rng, config.n_cores, int(calendar.month_start[0]), config.params)
    plain = draw_market(rng, cores, config.months, config.params)
    ids = _enterprise_ids(config.n_cores, 1).to_pylist()
    month = shock.month
    idle = [ids[c] for c in shock.cores if plain.stressed[month:, c].all()]
    if idle:
        when = pd.Timestamp(int(calendar.month_start[month]), unit="D").strftime("%Y-%m")
        raise ScfRiskError(
            f"shock: core(s) {', '.join(idle)} are in stress in every month from {when} on "
            "without the shock, so holding them in stress changes nothing; choose a core in "
            "normal times then (or an earlier month)"
        )


def build_world(config: SimConfig) -> World:
    """The shared part of a simulation: calendar, cores, market path, the oracle's draws."""
    config.check()
    p = config.params
    calendar = Calendar.build(config.start, config.months)
    market_rng = _stream(config, _STREAM_MARKET)
    cores = draw_cores(market_rng, config.n_cores, int(calendar.month_start[0]), p)
    market = draw_market(market_rng, cores, config.months, p, config.shock)
    if config.shock is not None and config.shock.cores:
        _refuse_idle_core_shock(config, config.shock, calendar)
    crn = CommonRandomNumbers.draw(_stream(config, _STREAM_ORACLE), config.mc_paths, cores.n)
    ids = _enterprise_ids(config.n_cores, config.n_smes)
    return World(p, calendar, cores, market, crn, ids)


def iter_chunks(config: SimConfig, world: World) -> Iterator[ChunkTables]:
    """Simulate the SMEs chunk by chunk (a progress bar over months on stderr)."""
    n_chunks = -(-config.n_smes // config.chunk_size)
    invoice_offset = loan_offset = 0
    # the oracle's small matrix products run fastest (and steadiest on a shared machine) on one
    # BLAS thread; the limit is lifted when the generator finishes
    with (
        threadpool_limits(limits=1, user_api="blas"),
        tqdm(
            total=n_chunks * config.months,
            desc="simulating",
            unit="month",
            file=sys.stderr,
            disable=not config.progress,
        ) as bar,
    ):
        for chunk in range(n_chunks):
            first = chunk * config.chunk_size
            n = min(config.chunk_size, config.n_smes - first)
            rng = _stream(config, _STREAM_CHUNKS + chunk)
            out = simulate_chunk(
                world, rng, first, n, invoice_offset, loan_offset, lambda: bar.update(1)
            )
            invoice_offset += out.invoices.num_rows
            loan_offset += out.loans.num_rows
            yield out


def latent_smes(config: SimConfig, world: World) -> Iterator[Smes]:
    """Each chunk's SMEs with their latent attributes (level, drift, loadings, ...), drawn
    exactly as `iter_chunks` draws them, without simulating a month: for diagnostics that ask
    which latent component a model misses (`bench.bench_gap`). Never written to the tables."""
    for chunk in range(-(-config.n_smes // config.chunk_size)):
        first = chunk * config.chunk_size
        rng = _stream(config, _STREAM_CHUNKS + chunk)
        n = min(config.chunk_size, config.n_smes - first)
        yield draw_smes(
            rng, n, first, world.cores, int(world.calendar.month_start[0]), config.params
        )


def _schemas() -> dict[str, pa.Schema]:
    schemas = {t.name: arrow_schema(t) for t in TABLES}
    schemas["truth"] = TRUTH_SCHEMA
    return schemas


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas(date_as_object=False)
    for name, kind in zip(table.column_names, table.schema.types, strict=True):
        if pa.types.is_date(kind):
            frame[name] = frame[name].astype("datetime64[ns]")
    return frame


def simulate(config: SimConfig) -> SimResult:
    """Run the simulation in memory (tests, benchmarks): every table as a typed DataFrame."""
    world = build_world(config)
    schemas = _schemas()
    parts: dict[str, list[pa.Table]] = {name: [] for name in [*schemas, "latent"]}
    parts["enterprises"].append(cores_table(world))
    for out in iter_chunks(config, world):
        for name in parts:
            parts[name].append(getattr(out, name))
    frames = {}
    for name, tables in parts.items():
        table = pa.concat_tables(tables)
        if name in schemas:
            table = table.cast(schemas[name])
        frames[name] = _to_pandas(table)
    extraction = np.datetime64(world.calendar.extraction, "D").astype(object)
    return SimResult(**frames, core_stress=_core_stress(world), extraction_date=extraction)


def _core_stress(world: World) -> pd.DataFrame:
    months, n_cores = world.market.stressed.shape
    as_of = world.calendar.month_end[:months].astype("datetime64[D]").astype("datetime64[ns]")
    return pd.DataFrame(
        {
            "core_id": pd.Series(
                np.tile(world.ids.slice(0, n_cores).to_pylist(), months), dtype="str"
            ),
            "as_of": np.repeat(as_of, n_cores),
            "stressed": world.market.stressed.reshape(-1),
        }
    )


def _write(config: SimConfig, folder: Path) -> None:
    world = build_world(config)
    schemas = _schemas()
    writers = {
        name: pq.ParquetWriter(folder / f"{name}.parquet", schema, compression="zstd")
        for name, schema in schemas.items()
    }
    try:
        writers["enterprises"].write_table(cores_table(world).cast(schemas["enterprises"]))
        for out in iter_chunks(config, world):
            for name, writer in writers.items():
                writer.write_table(getattr(out, name).cast(schemas[name]))
    finally:
        for writer in writers.values():
            writer.close()


def generate_to_folder(config: SimConfig, out: Path) -> None:
    """Simulate and write `out/NAME.parquet` for every contract table plus `truth.parquet`.

    Atomic: written into a temporary sibling folder that is renamed to `out` at the end, so a
    failed run leaves nothing behind. Refuses (ScfRiskError) an `out` that exists and is not an
    empty folder.
    """
    config.check()
    write_new_folder(out, lambda tmp: _write(config, tmp))
