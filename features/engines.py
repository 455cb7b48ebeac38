"""Engines that compute the feature panel: pandas (in process) and Dask (dask.distributed).

Both compute the same thing: the reference is built once from the full tables; the SMEs are cut
into partitions (contiguous runs of sorted SME ids), each partition's own rows go to a worker with
the reference, and every worker runs `features.reference.feature_rows` on its SMEs. Every value
depends only on the SME's own rows in canonical order plus the reference, so the engines give
identical frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from features.contract import DEFAULT_HORIZON_DAYS, Tables
from features.exceptions import FeatureError
from features.own import _codes
from features.pipeline import finish_panel, panel_plan
from features.reference import Reference, feature_rows, sme_ids_of

Engine = Literal["pandas", "dask"]
ENGINES: tuple[str, ...] = ("pandas", "dask")


def partition_smes(sme_ids: Sequence[str], partitions: int) -> list[list[str]]:
    """Sorted SME ids cut into at most `partitions` contiguous, non-empty runs."""
    ids = sorted(sme_ids)
    k = max(1, min(partitions, len(ids)))
    return [chunk.tolist() for chunk in np.array_split(np.array(ids, dtype=object), k)]


def split_tables(tables: Tables, parts: Sequence[Sequence[str]]) -> list[Tables]:
    """Each partition's own rows: its SMEs' enterprise rows, invoices where one of them is seller
    or buyer, and their inventory, loans and statements."""
    part_of: dict[str, int] = {s: k for k, part in enumerate(parts) for s in part}
    ids = pa.array(list(part_of), type=pa.string())
    part_no = np.fromiter(part_of.values(), dtype=np.int64, count=len(part_of))

    def owner(values: pd.Series) -> np.ndarray:
        code = _codes(values, ids)
        return np.where(code >= 0, part_no[np.maximum(code, 0)] if len(part_no) else -1, -1)

    inv = tables.invoices
    seller, buyer = owner(inv["seller_id"]), owner(inv["buyer_id"])
    ent_owner = owner(tables.enterprises["enterprise_id"])
    inv_owner = owner(tables.inventory["sme_id"])
    loan_owner = owner(tables.loans["sme_id"])
    fin_owner = owner(tables.financials["sme_id"])
    return [
        Tables(
            enterprises=tables.enterprises[ent_owner == k].reset_index(drop=True),
            invoices=inv[(seller == k) | (buyer == k)].reset_index(drop=True),
            inventory=tables.inventory[inv_owner == k].reset_index(drop=True),
            loans=tables.loans[loan_owner == k].reset_index(drop=True),
            financials=tables.financials[fin_owner == k].reset_index(drop=True),
        )
        for k in range(len(parts))
    ]


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


def dask_rows(
    tables: Tables,
    days: list[int],
    reference: Reference,
    client: object,
    *,
    horizon_days: int,
    partitions: int,
    on_partition: Callable[[], object] | None = None,
) -> pd.DataFrame:
    """Population rows computed on a dask.distributed `client`, partitioned by SME."""
    from distributed import Client, as_completed

    assert isinstance(client, Client)
    parts = partition_smes(sme_ids_of(tables), partitions)
    pieces = split_tables(tables, parts)
    ref = client.scatter(reference, broadcast=True)
    futures = []
    for smes, piece in zip(parts, pieces, strict=True):
        scattered = client.scatter(piece)
        futures.append(
            client.submit(_partition_rows, scattered, days, ref, smes, horizon_days, pure=False)
        )
    results: dict[int, pd.DataFrame] = {}
    index = {f.key: i for i, f in enumerate(futures)}
    for future in as_completed(futures, loop=client.loop):
        results[index[future.key]] = future.result()
        if on_partition is not None:
            on_partition()
    frames = [results[i] for i in range(len(futures))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def default_partitions(n_workers: int) -> int:
    """Partitions per run: two per worker (balance and bounded memory per task, few fixed costs)."""
    return max(1, 2 * n_workers)


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
        workers_now = max(1, len(client.scheduler_info().get("workers", {})))
        k = partitions or default_partitions(workers_now)
        tick = progress(min(k, max(1, len(sme_ids_of(tables))))) if progress is not None else None
        rows = dask_rows(
            tables,
            days,
            reference,
            client,
            horizon_days=horizon_days,
            partitions=k,
            on_partition=tick,
        )
    return finish_panel(rows, horizon_days, end)
