"""The Dask engine's panel file: each partition's rows pass through a temporary Arrow file (one
batch per date) beside the output, and the file written from them is the pandas engine's, byte
for byte; the temporary files are gone however the build ends."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

import features.engines as engines
from features.engines import (
    build_panel,
    prepare_dask_panel,
    prepare_panel,
    write_dask_inputs,
    write_dask_panel,
    write_features,
)
from features.exceptions import FeatureError
from features.pipeline import month_ends
from features.reference import build_reference, feature_rows
from tests.support.tables import random_tables


@pytest.fixture(scope="module")
def tables():
    return random_tables(n_smes=40, n_cores=4, n_invoices=3000, days=540, seed=11)


@pytest.fixture(scope="module")
def dates():
    return month_ends("2023-03-01", "2024-06-23")


@pytest.fixture(scope="module")
def scheduler():
    """One in-process worker thread: partitions finish in submission order, and a task
    patched in this process is the one the worker runs."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def _watch(folder, seen):
    """A `progress` that records, after each partition, the partitions' row files beside the
    output."""

    def progress(total):
        def tick():
            seen.append(sorted(p.name for p in folder.glob(".p.parquet.*.parts/part-*")))

        return tick

    return progress


def test_partition_file_reads_back_each_date_as_its_rows(tables, dates):
    reference = build_reference(tables)
    days = [int(d.value // 86_400_000_000_000) for d in dates]
    rows = feature_rows(tables, days, reference, horizon_days=200, population_only=True)
    reader = engines.pa.ipc.open_file(engines._day_batches(rows, days))
    assert reader.num_record_batches == len(days)
    bounds = engines._date_bounds(rows, days)
    assert (bounds[1:] > bounds[:-1]).sum() > 5  # several dates with rows
    for j in range(len(days)):
        expected = rows.iloc[bounds[j] : bounds[j + 1]].reset_index(drop=True)
        pd.testing.assert_frame_equal(engines._read_day(reader, j), expected, check_exact=True)


def test_dask_file_is_the_pandas_file_and_its_parts_removed(tables, dates, tmp_path, scheduler):
    pandas_file, dask_file = tmp_path / "pandas" / "p.parquet", tmp_path / "p.parquet"
    write_features(prepare_panel(tables, dates, horizon_days=200), pandas_file, jobs=1)
    seen: list[list[str]] = []
    rows = write_dask_panel(
        tables, dates, dask_file, scheduler=scheduler, horizon_days=200, partitions=5,
        progress=_watch(tmp_path, seen),
    )  # fmt: skip
    assert seen == [[f"part-{k:06d}.arrow" for k in range(i + 1)] for i in range(5)]
    assert dask_file.read_bytes() == pandas_file.read_bytes()
    assert pq.ParquetFile(dask_file).num_row_groups == len(dates)
    assert rows == len(build_panel(tables, dates, horizon_days=200))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet", "pandas"]


def test_a_failed_partition_leaves_no_file(tables, dates, tmp_path, scheduler, monkeypatch):
    real = engines._partition_batches

    def fails_on_the_last(part, days, reference, sme_ids, horizon_days):
        if "S039" in sme_ids:
            raise RuntimeError("partition failed")
        return real(part, days, reference, sme_ids, horizon_days)

    monkeypatch.setattr(engines, "_partition_batches", fails_on_the_last)
    seen: list[list[str]] = []
    with pytest.raises(RuntimeError, match="partition failed"):
        write_dask_panel(
            tables, dates, tmp_path / "p.parquet", scheduler=scheduler, partitions=5,
            progress=_watch(tmp_path, seen),
        )  # fmt: skip
    assert seen[-1] == [f"part-{k:06d}.arrow" for k in range(4)]  # there were files
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_file(tables, tmp_path, scheduler):
    seen: list[list[str]] = []
    with pytest.raises(FeatureError, match="no SME is in the population"):
        write_dask_panel(
            tables, ["2022-06-30", "2022-12-31"], tmp_path / "p.parquet", scheduler=scheduler,
            partitions=3, progress=_watch(tmp_path, seen),
        )  # fmt: skip
    assert len(seen) == 3 and seen[-1]
    assert list(tmp_path.iterdir()) == []


def test_prepared_inputs_give_the_same_file_without_the_tables(tables, dates, tmp_path, scheduler):
    write_dask_panel(tables, dates, tmp_path / "whole.parquet", scheduler=scheduler, partitions=4)
    inputs = prepare_dask_panel(
        tables.__class__(**tables.frames()), dates, tmp_path / "p.parquet", partitions=4
    )  # a copy of the tables, released before the computation
    assert len(inputs.parts) == 4 and len(list(inputs.folder.glob("in-*.arrow"))) == 4 * 5
    rows = write_dask_inputs(inputs, tmp_path / "p.parquet", scheduler=scheduler)
    assert rows == len(pd.read_parquet(tmp_path / "p.parquet"))
    assert (tmp_path / "p.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet", "whole.parquet"]


def test_prepared_inputs_not_written_are_removed_on_close(tables, dates, tmp_path):
    with prepare_dask_panel(tables, dates, tmp_path / "p.parquet", partitions=2) as inputs:
        assert inputs.folder.parent == tmp_path and any(inputs.folder.iterdir())
    assert list(tmp_path.iterdir()) == []


def test_a_date_outside_the_data_fails_before_a_cluster_starts(tables, tmp_path, monkeypatch):
    def no_cluster(*args):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(engines, "_dask_client", no_cluster)
    with pytest.raises(FeatureError, match="outside"):
        write_dask_panel(tables, ["2030-01-31"], tmp_path / "p.parquet")
    assert list(tmp_path.iterdir()) == []
