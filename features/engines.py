"""Engines that compute the feature panel: pandas (in process) and Dask (dask.distributed).

Both compute the same thing: the reference is built once from the full tables; the SMEs are cut
into partitions (contiguous runs of sorted SME ids), each partition's own rows go to a worker with
the reference, and every worker runs `features.reference.feature_rows` on its SMEs. Every value
depends only on the SME's own rows in canonical order plus the reference, so the engines give
identical frames.

Files: `write_features` (pandas) and `write_dask_panel` write the panel date by date, one
Parquet row group each, never holding the whole panel and its copies: the pandas engine prepares
the SMEs in parts (`prepare_panel`; the tables can be released before the dates are computed) and
computes the dates on forked processes that share the prepared arrays.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from features.contract import DEFAULT_HORIZON_DAYS, Tables
from features.exceptions import FeatureError
from features.own import Prepared, _codes
from features.pipeline import finish_panel, panel_plan, panel_table, write_row_groups
from features.reference import Reference, date_rows, feature_rows, sme_ids_of

Engine = Literal["pandas", "dask"]
ENGINES: tuple[str, ...] = ("pandas", "dask")
PART_SMES = 10_000
"""At most this many SMEs in a Dask partition by default (its task holds the partition's tables,
prepared arrays and rows at every date)."""
PREPARE_PART_SMES = 2_500
"""At most this many SMEs are prepared at a time by `prepare_panel` (pandas). A part's
conversion intermediates (its rows' copy, int64 codes and days: about 200 bytes per invoice row)
sit beside the whole tables and every part prepared before it, at the build's peak: 0.76 GB for
parts of 10,000 SMEs at 100,000 SMEs (33 M invoices), a quarter of that for 2,500. More parts
cost a few ms per part and date."""


def partition_smes(sme_ids: Sequence[str], partitions: int) -> list[list[str]]:
    """Sorted SME ids cut into at most `partitions` contiguous, non-empty runs."""
    ids = sorted(sme_ids)
    k = max(1, min(partitions, len(ids)))
    return [chunk.tolist() for chunk in np.array_split(np.array(ids, dtype=object), k)]


def split_tables(tables: Tables, parts: Sequence[Sequence[str]]) -> list[Tables]:
    """Each partition's own rows: its SMEs' enterprise rows, invoices where one of them is seller
    or buyer, and their inventory, loans and statements."""
    return list(iter_split_tables(tables, parts))


def iter_split_tables(tables: Tables, parts: Sequence[Sequence[str]]) -> Iterator[Tables]:
    """`split_tables` one partition at a time (only the current one's copies are alive)."""
    part_of: dict[str, int] = {s: k for k, part in enumerate(parts) for s in part}
    ids = pa.array(list(part_of), type=pa.string())
    part_no = np.fromiter(part_of.values(), dtype=np.int32, count=len(part_of))

    def owner(values: pd.Series) -> np.ndarray:  # int32: alive for every partition's cut
        code = _codes(values, ids)
        found = part_no[np.maximum(code, 0)] if len(part_no) else np.int32(-1)
        return np.where(code >= 0, found, np.int32(-1)).astype(np.int32, copy=False)

    inv = tables.invoices
    seller, buyer = owner(inv["seller_id"]), owner(inv["buyer_id"])
    ent_owner = owner(tables.enterprises["enterprise_id"])
    inv_owner = owner(tables.inventory["sme_id"])
    loan_owner = owner(tables.loans["sme_id"])
    fin_owner = owner(tables.financials["sme_id"])
    for k in range(len(parts)):
        yield Tables(
            enterprises=tables.enterprises[ent_owner == k].reset_index(drop=True),
            invoices=inv[(seller == k) | (buyer == k)].reset_index(drop=True),
            inventory=tables.inventory[inv_owner == k].reset_index(drop=True),
            loans=tables.loans[loan_owner == k].reset_index(drop=True),
            financials=tables.financials[fin_owner == k].reset_index(drop=True),
        )


def _partition_rows(
    part: Tables,
    days: list[int],
    reference: Reference,
    sme_ids: list[str],
    horizon_days: int,
) -> pd.DataFrame:
    """One partition's population rows (runs on a Dask worker)."""
    return feature_rows(
        part, days, reference, sme_ids=sme_ids, horizon_days=horizon_days, population_only=True
    )


def _partition_batches(
    part: Tables,
    days: list[int],
    reference: Reference,
    sme_ids: list[str],
    horizon_days: int,
) -> bytes:
    """One partition's population rows (runs on a Dask worker) as an Arrow IPC file of one
    record batch per as-of day, in day order (an empty batch for a day without rows). The
    client writes it to disk as it arrives and reads it back a day at a time (`_read_day`)."""
    return _day_batches(_partition_rows(part, days, reference, sme_ids, horizon_days), days)


def _day_batches(rows: pd.DataFrame, days: list[int]) -> bytes:
    """`rows` (ordered by as_of, with the pandas metadata that restores their dtypes) as an
    Arrow IPC file, batch j holding the rows at `days[j]`. Converted once, so every batch has
    the partition's one schema."""
    table = pa.Table.from_pandas(rows, preserve_index=False).combine_chunks()
    batches = table.to_batches()  # one contiguous batch (none without rows)
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
    assert len(batches) <= 1 and batch.schema == table.schema
    bounds = _date_bounds(rows, days)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        for j in range(len(days)):
            writer.write_batch(batch.slice(bounds[j], bounds[j + 1] - bounds[j]))
    return sink.getvalue().to_pybytes()


def _read_day(reader: pa.ipc.RecordBatchFileReader, j: int) -> pd.DataFrame:
    """Batch j of a `_day_batches` file: the partition's rows at its j-th day, as a frame equal
    to the slice it was written from (same columns, dtypes and values; a fresh RangeIndex)."""
    return pa.Table.from_batches([reader.get_batch(j)]).to_pandas()


def _dask_map(
    tables: Tables,
    days: list[int],
    reference: Reference,
    client: object,
    task: Callable[[Tables, list[int], Reference, list[str], int], object],
    on_result: Callable[[int, Any], object],
    horizon_days: int,
    partitions: int,
) -> int:
    """Run `task(piece, days, reference, smes, horizon_days)` for every partition of the SMEs
    on `client` and hand each result to `on_result(k, result)` in the client as it finishes
    (the worker's copy is then released); returns the number of partitions. A partition's
    tables are cut and sent when a worker can take it (at most two per worker in flight), so
    the workers never hold every partition at once; the reference is sent to each once."""
    from distributed import Client, as_completed

    assert isinstance(client, Client)
    parts = partition_smes(sme_ids_of(tables), partitions)
    in_flight = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    ref = client.scatter(reference, broadcast=True)
    pending = zip(range(len(parts)), parts, iter_split_tables(tables, parts), strict=True)
    index: dict[Any, int] = {}  # future key -> partition
    done = as_completed(loop=client.loop)

    def submit_next() -> None:
        for k, smes, piece in pending:
            future = client.submit(
                task, client.scatter(piece), days, ref, smes, horizon_days, pure=False
            )
            index[future.key] = k
            done.add(future)
            return

    for _ in range(in_flight):
        submit_next()
    for future in done:
        result = future.result()
        future.release()
        submit_next()
        on_result(index[future.key], result)
        del result
    return len(parts)


def default_partitions(n_workers: int, n_smes: int = 0) -> int:
    """Partitions per run: two per worker (balance and few fixed costs), and at least one per
    `PART_SMES` SMEs (bounded memory per task)."""
    return max(1, 2 * n_workers, -(-n_smes // PART_SMES))


def build_panel(
    tables: Tables,
    as_of_dates: Iterable[object],
    *,
    engine: Engine = "pandas",
    scheduler: str | None = None,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    reference: Reference | None = None,
    data_end: object | None = None,
    n_workers: int | None = None,
    partitions: int | None = None,
    progress: Callable[[int], Callable[[], object]] | None = None,
) -> pd.DataFrame:
    """The feature panel on the chosen engine (same frame either way; see `build_features`).

    Dask: connect to `scheduler` if given, else start a LocalCluster of `n_workers` processes
    (default: one per core). `progress(total)` returns a callback called once per finished
    date (pandas) or partition (dask)."""
    if engine not in ENGINES:
        raise FeatureError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    days, reference, end = panel_plan(tables, as_of_dates, horizon_days, reference, data_end)
    if engine == "pandas":
        tick = progress(len(days)) if progress is not None else None
        rows = feature_rows(
            tables, days, reference, horizon_days=horizon_days, population_only=True, on_date=tick
        )
        return finish_panel(rows, horizon_days, end)

    results: dict[int, pd.DataFrame] = {}

    def keep(k: int, rows: Any, tick: Callable[[], object] | None) -> None:
        results[k] = rows
        if tick is not None:
            tick()

    n = _dask_run(
        tables, days, reference, horizon_days, scheduler, n_workers, partitions, progress,
        _partition_rows, keep,
    )  # fmt: skip
    pieces = [results.pop(k) for k in range(n)]
    rows = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    return finish_panel(rows, horizon_days, end)


def write_dask_panel(
    tables: Tables,
    as_of_dates: Iterable[object],
    out: str | Path,
    *,
    scheduler: str | None = None,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    reference: Reference | None = None,
    data_end: object | None = None,
    n_workers: int | None = None,
    partitions: int | None = None,
    progress: Callable[[int], Callable[[], object]] | None = None,
) -> int:
    """`write_panel(build_panel(..., engine="dask"), out)` without the whole panel's copies:
    each partition's rows go to a temporary Arrow file (one batch per date) as they arrive,
    beside `out`; the panel is then written date by date (one row group each), each date's
    rows read from the partitions' files in SME order, so the client holds one partition's
    result or one date's rows at a time. Returns the number of rows. The temporary files are
    removed however it ends; the panel file is written atomically (`write_row_groups`)."""
    days, reference, end = panel_plan(tables, as_of_dates, horizon_days, reference, data_end)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".parts", dir=target.parent))
    try:
        files: dict[int, Path] = {}

        def save(k: int, data: Any, tick: Callable[[], object] | None) -> None:
            path = folder / f"part-{k:06d}.arrow"
            path.write_bytes(data)
            files[k] = path
            if tick is not None:
                tick()

        n = _dask_run(
            tables, days, reference, horizon_days, scheduler, n_workers, partitions, progress,
            _partition_batches, save,
        )  # fmt: skip
        with ExitStack() as stack:
            readers = [
                pa.ipc.open_file(stack.enter_context(pa.OSFile(str(files[k]), "rb")))
                for k in range(n)
            ]

            def date_tables() -> Iterator[pa.Table]:
                for j in range(len(days)):
                    rows = pd.concat([_read_day(r, j) for r in readers], ignore_index=True)
                    yield panel_table(rows, horizon_days, end)

            return write_row_groups(date_tables(), target)
    finally:
        shutil.rmtree(folder)


def _dask_run(
    tables: Tables,
    days: list[int],
    reference: Reference,
    horizon_days: int,
    scheduler: str | None,
    n_workers: int | None,
    partitions: int | None,
    progress: Callable[[int], Callable[[], object]] | None,
    task: Callable[[Tables, list[int], Reference, list[str], int], object],
    on_result: Callable[[int, Any, Callable[[], object] | None], object],
) -> int:
    """`_dask_map` of `task` on a client of `scheduler` (else a LocalCluster, `_dask_client`),
    with `partitions` or `default_partitions` for the workers it has; `on_result(k, result,
    tick)` gets `progress(total)`'s callback, to call once per partition. Returns the number of
    partitions."""
    n_smes = len(sme_ids_of(tables))
    with _dask_client(scheduler, n_workers) as client:
        workers_now = max(1, len(client.scheduler_info().get("workers", {})))
        k = partitions or default_partitions(workers_now, n_smes)
        tick = progress(min(k, max(1, n_smes))) if progress is not None else None
        return _dask_map(
            tables,
            days,
            reference,
            client,
            task,
            lambda part, result: on_result(part, result, tick),
            horizon_days,
            k,
        )


def _date_bounds(rows: pd.DataFrame, days: list[int]) -> np.ndarray:
    """Row positions where each of `days` begins in `rows` (ordered by as_of), and the end."""
    as_of = rows["as_of"].to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)
    return np.searchsorted(as_of, np.asarray([*days, days[-1] + 1], dtype=np.int64), side="left")


@contextmanager
def _dask_client(scheduler: str | None, n_workers: int | None) -> Iterator[Any]:
    """A dask.distributed client of `scheduler`, else of a LocalCluster of `n_workers`
    single-threaded processes (default: one per core), closed on exit."""
    from distributed import Client, LocalCluster

    with ExitStack() as stack:
        if scheduler is not None:
            client = stack.enter_context(Client(scheduler, set_as_default=False))
        else:
            workers = n_workers or os.cpu_count() or 1
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(Client(cluster, set_as_default=False))
        yield client


# ---------------------------------------------------------------------------------------------
# the pandas engine, streamed to a file


@dataclass(frozen=True)
class PreparedPanel:
    """What the panel needs once the tables are read: the SMEs' own rows as arrays (contiguous
    runs of sorted SME ids, in order), the reference, the checked as-of days, the label horizon
    and the last date the data covers. The tables themselves can then be released."""

    parts: tuple[Prepared, ...]
    reference: Reference
    days: list[int]
    horizon_days: int
    data_end: pd.Timestamp


def prepare_panel(
    tables: Tables,
    as_of_dates: Iterable[object],
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    reference: Reference | None = None,
    data_end: object | None = None,
    part_smes: int = PREPARE_PART_SMES,
) -> PreparedPanel:
    """The panel of `build_panel(tables, as_of_dates, ...)` prepared for `write_features` (same
    checks, same FeatureErrors): SMEs are prepared `part_smes` at a time from their partition's
    rows, as the Dask engine does (every value depends only on the SME's own rows)."""
    days, reference, end = panel_plan(tables, as_of_dates, horizon_days, reference, data_end)
    smes = sme_ids_of(tables)
    parts = partition_smes(smes, -(-len(smes) // max(1, part_smes)))
    prepared = []
    for ids, piece in zip(parts, iter_split_tables(tables, parts), strict=True):
        prepared.append(reference.prepare(piece, ids))
        del piece
        pa.default_memory_pool().release_unused()  # the part's Arrow intermediates
    return PreparedPanel(tuple(prepared), reference, days, int(horizon_days), end)


def write_features(
    plan: PreparedPanel,
    out: str | Path,
    *,
    jobs: int = 1,
    on_date: Callable[[], object] | None = None,
) -> int:
    """Compute the panel of `plan` date by date and write it to Parquet, one row group per
    as-of date, atomically as `write_panel` does; returns the number of rows.

    The file reads back as `write_panel(build_panel(...))`'s (same rows, columns, dtypes,
    horizon attribute), but only one date's rows are held at a time. `jobs` > 1 computes dates
    in that many forked processes (where the platform forks; they share the prepared arrays),
    written in date order. FeatureError, and no file, when no SME is in the population."""
    return write_row_groups(_date_tables(plan, jobs), out, on_table=on_date)


def _date_table(plan: PreparedPanel, t: int) -> pa.Table:
    """The panel rows at day `t` as Arrow."""
    frames = [
        date_rows(part, plan.reference, t, plan.horizon_days, population_only=True)
        for part in plan.parts
    ]
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return panel_table(rows, plan.horizon_days, plan.data_end)


def release_freed_memory() -> None:
    """Hand memory already freed back to the operating system: Arrow's pool, and glibc's heap
    (`malloc_trim`), where freed blocks below its mmap threshold (a part's arrays, the tables'
    pandas intermediates) otherwise stay in the process. A forked date worker that allocated
    from that inherited free heap would copy each page it touches; returned, the pages are
    neither counted nor copied. Without glibc (no `malloc_trim`) only Arrow's pool is
    released."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


_FORKED: PreparedPanel | None = None
"""The plan forked date workers read (set only while `_date_tables` starts its pool)."""


def _forked_date_table(t: int) -> pa.Table:
    assert _FORKED is not None, "a date worker runs only in a process forked by _date_tables"
    return _date_table(_FORKED, t)


def _date_tables(plan: PreparedPanel, jobs: int) -> Iterator[pa.Table]:
    """Each as-of date's panel rows, in date order: in this process, or in `jobs` forked
    processes that share the prepared arrays (copy-on-write) and send back Arrow tables."""
    if jobs <= 1 or len(plan.days) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for t in plan.days:
            yield _date_table(plan, t)
        return
    release_freed_memory()  # freed tables: not inherited (and copied on write) by the workers
    global _FORKED
    _FORKED = plan
    try:
        pool = multiprocessing.get_context("fork").Pool(min(jobs, len(plan.days)))
    finally:
        _FORKED = None  # the workers were forked with it
    with pool:
        yield from pool.imap(_forked_date_table, plan.days)
