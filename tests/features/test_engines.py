"""The pandas and Dask engines give identical panels (exact equality)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.contract import HORIZON_ATTR
from features.engines import (
    build_panel,
    partition_smes,
    prepare_panel,
    split_tables,
    write_dask_panel,
    write_features,
)
from features.exceptions import FeatureError
from features.own import NEVER, _clip_day, _narrow, _paid_after, _widen
from features.pipeline import build_features, month_ends, write_panel
from tests.support.tables import random_tables


@pytest.fixture(scope="module")
def tables():
    return random_tables(n_smes=40, n_cores=4, n_invoices=3000, days=540, seed=11)


@pytest.fixture(scope="module")
def dates():
    return month_ends("2023-03-01", "2024-06-23")


def test_partitions_cover_every_sme_once(tables):
    ids = [f"S{i:03d}" for i in range(40)]
    parts = partition_smes(ids, 3)
    assert [len(p) for p in parts] == [14, 13, 13]
    assert [s for part in parts for s in part] == sorted(ids)
    pieces = split_tables(tables, parts)
    for part, piece in zip(parts, pieces, strict=True):
        inv = piece.invoices
        assert (inv["seller_id"].isin(part) | inv["buyer_id"].isin(part)).all()
        assert set(piece.loans["sme_id"]) <= set(part)
    # every invoice lands in the partition of each of its SMEs
    per_invoice = pd.concat([p.invoices["invoice_id"] for p in pieces]).value_counts()
    inv = tables.invoices.set_index("invoice_id")
    both_sme = inv["seller_id"].str.startswith("S") & inv["buyer_id"].str.startswith("S")
    for invoice_id, count in per_invoice.items():
        same = any(
            inv.at[invoice_id, "seller_id"] in p and inv.at[invoice_id, "buyer_id"] in p
            for p in parts
        )
        assert count == (2 if both_sme[invoice_id] and not same else 1)


def test_pandas_engine_is_build_features(tables, dates):
    expected = build_features(tables, dates)
    pd.testing.assert_frame_equal(build_panel(tables, dates), expected, check_exact=True)


def test_dask_engine_on_two_workers_equals_pandas(tables, dates, tmp_path):
    from distributed import LocalCluster

    expected = build_panel(tables, dates, engine="pandas")
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        got = build_panel(
            tables, dates, engine="dask", scheduler=cluster.scheduler_address, partitions=5
        )
        rows = write_dask_panel(
            tables, dates, tmp_path / "p.parquet", scheduler=cluster.scheduler_address,
            partitions=5,
        )  # fmt: skip
    assert len(got) > 300
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert rows == len(expected)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "p.parquet"), expected, check_exact=True
    )


def test_unknown_engine_is_a_feature_error(tables, dates):
    with pytest.raises(FeatureError, match="unknown engine 'spark'"):
        build_panel(tables, dates, engine="spark")  # type: ignore[arg-type]


@pytest.mark.parametrize(("jobs", "part_smes"), [(1, 10_000), (2, 10_000), (2, 7)])
def test_streamed_panel_file_reads_back_as_the_panel(tables, dates, tmp_path, jobs, part_smes):
    expected = build_features(tables, dates, horizon_days=200)
    write_panel(expected, tmp_path / "whole.parquet")
    plan = prepare_panel(tables, dates, horizon_days=200, part_smes=part_smes)
    assert len(plan.parts) == -(-40 // part_smes)
    ticks = []
    rows = write_features(
        plan, tmp_path / "streamed.parquet", jobs=jobs, on_date=lambda: ticks.append(1)
    )
    got = pd.read_parquet(tmp_path / "streamed.parquet")
    assert rows == len(expected) and len(ticks) == len(dates)
    assert got.attrs == expected.attrs == {HORIZON_ATTR: 200}
    pd.testing.assert_frame_equal(
        got, pd.read_parquet(tmp_path / "whole.parquet"), check_exact=True
    )
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert pq.ParquetFile(tmp_path / "streamed.parquet").num_row_groups == len(dates)


def test_streamed_panel_dictionary_encodes_only_non_float_columns(tables, dates, tmp_path):
    # a float feature's values are mostly distinct: a dictionary would be built and dropped
    write_features(prepare_panel(tables, dates), tmp_path / "panel.parquet", jobs=1)
    meta = pq.ParquetFile(tmp_path / "panel.parquet").metadata
    group = meta.row_group(meta.num_row_groups - 1)
    encodings = {
        group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)
    }
    floats = [f.name for f in meta.schema.to_arrow_schema() if pa.types.is_floating(f.type)]
    assert floats and all("RLE_DICTIONARY" not in encodings[name] for name in floats)
    for name in ("sme_id", "as_of", "industry", "region", "default_12m"):
        assert "RLE_DICTIONARY" in encodings[name], name


def test_compact_columns_give_back_the_same_int64_values():
    days = np.array([19_000, NEVER, -5, 20_100, NEVER], dtype=np.int64)
    narrow = _narrow(days)
    assert narrow.dtype == np.int16
    assert _widen(narrow).dtype == np.int64
    np.testing.assert_array_equal(_widen(narrow), days)
    # a value int16 cannot hold (or that would read as NEVER) takes int32
    for values in ([0, 2**15 - 1, NEVER], [0, -(2**15)], [40_000, NEVER, 3]):
        days = np.array(values, dtype=np.int64)
        narrow = _narrow(days)
        assert narrow.dtype == np.int32
        np.testing.assert_array_equal(_widen(narrow), days)
    # a value int32 cannot hold (or that would read as NEVER) keeps the column int64
    for wide in ([0, 2**31 - 1], [0, -(2**31)], [0, 2**40 + 1]):
        kept = _narrow(np.array(wide, dtype=np.int64))
        assert kept.dtype == np.int64 and kept.tolist() == wide


@pytest.mark.parametrize("kind", [np.int16, np.int32])
def test_searches_in_compact_columns_answer_as_in_int64(kind):
    """A day outside the compact type's range (an as-of date far from the SMEs' own days) is
    clipped for searches, and an unpaid row is after every day, as `NEVER` is in int64."""
    top = int(np.iinfo(kind).max)
    issue = np.array([-top + 1, 5, 9, top - 1], dtype=np.int64)
    paid = np.array([-top + 1, NEVER, 9, top - 1], dtype=np.int64)
    narrow_issue, narrow_paid = issue.astype(kind), _narrow(paid)
    assert narrow_paid.dtype == kind and _narrow(issue).dtype == kind
    for day in (-(2**40), -top - 5, -top, 0, 5, 9, top - 1, top, top + 5, 2**40 - 1):
        wide = int(np.searchsorted(issue, day, side="right"))
        assert (
            int(np.searchsorted(narrow_issue, _clip_day(narrow_issue, day), side="right")) == wide
        )
        np.testing.assert_array_equal(_paid_after(narrow_paid, day), paid > day)


def test_prepared_sides_are_compact_and_take_the_int64_rows(tables):
    plan = prepare_panel(tables, ["2024-03-31"])
    recv = plan.parts[0].recv
    assert recv.issue.dtype == recv.paid.dtype == recv.sme.dtype == np.int16
    rows = recv.take(np.arange(len(recv.issue)))
    assert rows.paid.dtype == rows.sme.dtype == np.int64
    assert (rows.paid == NEVER).any() and not (rows.paid == np.iinfo(np.int16).max).any()
    np.testing.assert_array_equal(rows.paid, _widen(recv.paid))


def test_streamed_panel_without_population_leaves_no_file(tables, tmp_path):
    plan = prepare_panel(tables, ["2022-06-30", "2022-12-31"])  # statements, no trade yet
    with pytest.raises(FeatureError, match="no SME is in the population"):
        write_features(plan, tmp_path / "panel.parquet", jobs=2)
    assert list(tmp_path.iterdir()) == []
