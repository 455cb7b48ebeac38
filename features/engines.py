"""Engines that compute the feature panel: pandas (in process) and Dask (dask.distributed).

Both compute the same thing: the reference is built once from the full tables; the SMEs are cut
into partitions (contiguous runs of sorted SME ids), each partition's own rows go to a worker with
the reference, and every worker runs `features.reference.feature_rows` on its SMEs. Every value
depends only on the SME's own rows in canonical order plus the reference, so the engines give
identical frames.

Files: `write_features` (pandas) and `write_dask_inputs` / `write_dask_panel` write the panel
date by date, one Parquet row group each, never holding the whole panel and its copies: the
pandas engine prepares the SMEs in parts (`prepare_panel`; the tables can be released before the
dates are computed) and computes the dates on forked processes that share the prepared arrays;
the Dask engine writes each partition's own rows to temporary Arrow files beside the output
(`prepare_dask_panel`; the tables can then be released), and each partition's rows, one Arrow
batch per date, to another as they arrive from the workers, then reads one date at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import shutil
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
from features.scratch import sibling

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
    part: dict[str, bytes],
    days: list[int],
    reference: Reference,
    sme_ids: list[str],
    horizon_days: int,
) -> bytes:
    """One partition's population rows (runs on a Dask worker) from its tables as Arrow IPC
    files (`_save_tables`), as an Arrow IPC file of one record batch per as-of day, in day
    order (an empty batch for a day without rows). The client writes it to disk as it arrives
    and reads it back a day at a time (`_read_day`)."""
    frames = {name: _ipc_frame(data) for name, data in part.items()}
    tables = Tables(
        enterprises=frames["enterprises"],
        invoices=frames["invoices"],
        inventory=frames["inventory"],
        loans=frames["loans"],
        financials=frames["financials"],
    )
    return _day_batches(_partition_rows(tables, days, reference, sme_ids, horizon_days), days)


def _ipc_frame(data: bytes) -> pd.DataFrame:
    """An Arrow IPC file written from a frame -> that frame (its dtypes from the pandas
    metadata; a fresh RangeIndex)."""
    return pa.ipc.open_file(pa.py_buffer(data)).read_all().to_pandas()


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
    client: object,
    pending: Iterator[tuple[list[str], object]],
    task: Callable[..., object],
    on_result: Callable[[int, Any], object],
    days: list[int],
    reference: Reference,
    horizon_days: int,
) -> None:
    """Run `task(piece, days, reference, smes, horizon_days)` on `client` for each partition
    (`pending`: its SME ids and piece, in SME order) and hand each result to
    `on_result(k, result)` in the client as it finishes (the worker's copy is then released).
    A partition's piece is taken from `pending` (cut, or read) and sent when a worker can take
    it (at most two per worker in flight), so the workers never hold every partition at once;
    the reference is sent to each worker once."""
    from distributed import Client, as_completed

    assert isinstance(client, Client)
    in_flight = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    ref = client.scatter(reference, broadcast=True)
    numbered = enumerate(pending)
    index: dict[Any, int] = {}  # future key -> partition
    done = as_completed(loop=client.loop)

    def submit_next() -> None:
        for k, (smes, piece) in numbered:
            # a list of one: a dict piece is one value (scattered as a dict, its keys would
            # name the data); hash=False: no content hash of the piece
            (data,) = client.scatter([piece], hash=False)
            future = client.submit(task, data, days, ref, smes, horizon_days, pure=False)
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

    smes = sme_ids_of(tables)
    results: dict[int, pd.DataFrame] = {}
    with _dask_client(scheduler, n_workers) as client:
        parts = partition_smes(smes, partitions or default_partitions(_workers(client), len(smes)))
        tick = progress(len(parts)) if progress is not None else None

        def keep(k: int, rows: Any) -> None:
            results[k] = rows
            if tick is not None:
                tick()

        pending = zip(parts, iter_split_tables(tables, parts), strict=True)
        _dask_map(client, pending, _partition_rows, keep, days, reference, horizon_days)
    pieces = [results.pop(k) for k in range(len(parts))]
    rows = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    return finish_panel(rows, horizon_days, end)


@dataclass(frozen=True)
class DaskInputs:
    """What the Dask engine needs once the tables are read: each partition's own rows as Arrow
    IPC files in `folder` (a temporary folder beside the output), the partitions' SME ids (in
    order), the reference, the checked as-of days, the label horizon and the last date the data
    covers. The tables themselves can then be released. `write_dask_inputs` removes the folder
    however it ends; `close` (or leaving a `with` block) removes it when it is not called."""

    folder: Path
    parts: tuple[list[str], ...]
    reference: Reference
    days: list[int]
    horizon_days: int
    data_end: pd.Timestamp

    def close(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)

    def __enter__(self) -> DaskInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare_dask_panel(
    tables: Tables,
    as_of_dates: Iterable[object],
    out: str | Path,
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    reference: Reference | None = None,
    data_end: object | None = None,
    n_workers: int | None = None,
    partitions: int | None = None,
) -> DaskInputs:
    """The panel of `build_panel(tables, as_of_dates, engine="dask", ...)` prepared for
    `write_dask_inputs` (same checks, same FeatureErrors): the SMEs cut into `partitions`
    (default: `default_partitions` for `n_workers`, one per core by default) and each
    partition's own rows written to a temporary folder beside `out`, one partition at a time.
    The caller can then release the tables (the client's largest holding while the workers
    compute)."""
    days, reference, end = panel_plan(tables, as_of_dates, horizon_days, reference, data_end)
    smes = sme_ids_of(tables)
    k = partitions or default_partitions(n_workers or os.cpu_count() or 1, len(smes))
    parts = partition_smes(smes, k)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = sibling(target, ".parts", folder=True)
    inputs = DaskInputs(folder, tuple(parts), reference, days, int(horizon_days), end)
    try:
        for i, piece in enumerate(iter_split_tables(tables, parts)):
            _save_tables(piece, folder, i)
            del piece
            pa.default_memory_pool().release_unused()  # the part's Arrow intermediates
    except BaseException:
        inputs.close()
        raise
    return inputs


def _save_tables(piece: Tables, folder: Path, k: int) -> None:
    """Partition k's tables as Arrow IPC files (`in-k.<table>.arrow`), read back by
    `_ipc_frame` to equal frames."""
    for name, frame in piece.frames().items():
        table = pa.Table.from_pandas(frame, preserve_index=False)
        with (
            pa.OSFile(str(folder / f"in-{k:06d}.{name}.arrow"), "wb") as sink,
            pa.ipc.new_file(sink, table.schema) as writer,
        ):
            writer.write_table(table)


def _read_tables(folder: Path, k: int) -> dict[str, bytes]:
    """Partition k's saved tables (`_save_tables`) as bytes, by table name."""
    return {
        path.name.split(".")[1]: path.read_bytes()
        for path in sorted(folder.glob(f"in-{k:06d}.*.arrow"))
    }


def write_dask_inputs(
    inputs: DaskInputs,
    out: str | Path,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: Callable[[int], Callable[[], object]] | None = None,
) -> int:
    """Compute the panel of `inputs` on Dask and write it to Parquet, one row group per as-of
    date, atomically as `write_panel` does; returns the number of rows. The file is
    `write_panel(build_panel(..., engine="dask"))`'s (same rows, columns, dtypes, horizon
    attribute) without the whole panel's copies: each partition's rows go to a file in the
    inputs' folder as they arrive, then the panel is written date by date, each date's rows
    read from the partitions' files in SME order. The folder is removed however it ends.

    Connects to `scheduler` if given, else starts a LocalCluster of `n_workers` processes
    (default: one per core); `progress(total)` returns a callback called once per partition."""
    with inputs:
        release_freed_memory()  # the tables the caller released after `prepare_dask_panel`
        with _dask_client(scheduler, n_workers) as client:
            files = _compute_inputs(inputs, client, progress)
        return _write_results(inputs, files, out)


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
    """`write_dask_inputs(prepare_dask_panel(tables, ...), out)` with `partitions` defaulting
    to `default_partitions` for the workers the cluster has: the panel file of
    `write_panel(build_panel(..., engine="dask"))`, the tables held by the caller throughout
    (`prepare_dask_panel` lets the caller release them). Returns the number of rows."""
    dates = list(as_of_dates)
    _, reference, end = panel_plan(tables, dates, horizon_days, reference, data_end)  # no cluster
    inputs: DaskInputs | None = None  # started for a FeatureError
    try:
        with _dask_client(scheduler, n_workers) as client:
            k = partitions or default_partitions(_workers(client), len(sme_ids_of(tables)))
            inputs = prepare_dask_panel(
                tables, dates, out, horizon_days=horizon_days, reference=reference,
                data_end=end, partitions=k,
            )  # fmt: skip
            files = _compute_inputs(inputs, client, progress)
        return _write_results(inputs, files, out)
    finally:
        if inputs is not None:
            inputs.close()


def _compute_inputs(
    inputs: DaskInputs, client: object, progress: Callable[[int], Callable[[], object]] | None
) -> list[Path]:
    """Every partition's rows (`_partition_batches`) computed on `client`, each written to the
    inputs' folder as it arrives (and the partition's input files removed then: the disk holds
    at most the inputs and the results, never both of one partition for long); the files, in
    SME order."""
    tick = progress(len(inputs.parts)) if progress is not None else None
    files: dict[int, Path] = {}

    def save(k: int, data: Any) -> None:
        path = inputs.folder / f"part-{k:06d}.arrow"
        path.write_bytes(data)
        files[k] = path
        for done in inputs.folder.glob(f"in-{k:06d}.*.arrow"):  # its rows are computed
            done.unlink()
        if tick is not None:
            tick()

    pending = ((smes, _read_tables(inputs.folder, k)) for k, smes in enumerate(inputs.parts))
    _dask_map(
        client, pending, _partition_batches, save, inputs.days, inputs.reference,
        inputs.horizon_days,
    )  # fmt: skip
    return [files[k] for k in range(len(inputs.parts))]


def _write_results(inputs: DaskInputs, files: list[Path], out: str | Path) -> int:
    """The panel file from the partitions' row files (`_day_batches`): date by date, each
    date's rows from every partition in SME order, one row group each (`write_row_groups`)."""
    with ExitStack() as stack:
        readers = [pa.ipc.open_file(stack.enter_context(pa.OSFile(str(f), "rb"))) for f in files]

        def date_tables() -> Iterator[pa.Table]:
            for j in range(len(inputs.days)):
                rows = pd.concat([_read_day(r, j) for r in readers], ignore_index=True)
                yield panel_table(rows, inputs.horizon_days, inputs.data_end)

        return write_row_groups(date_tables(), out)


def _workers(client: Any) -> int:
    """The number of workers `client`'s scheduler has now (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


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
