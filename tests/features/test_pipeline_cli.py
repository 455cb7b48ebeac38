"""`scf-risk features`: exit 0 writes the panel; bad input exits 1 and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.catalog import catalog_for, feature_names
from features.cli import app
from features.io import load_tables
from features.pipeline import LABEL, data_range
from tests.support.tables import random_tables


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    tables = random_tables(n_smes=15, n_cores=3, n_invoices=600, days=400, seed=5)
    for name, frame in tables.frames().items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def run(*args: str):
    return CliRunner().invoke(app, ["features", *args])


def test_writes_the_panel_at_every_month_end(data_dir, tmp_path):
    out = tmp_path / "panel.parquet"
    result = run("--data", str(data_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    panel = pd.read_parquet(out)
    names = feature_names(catalog_for(["equity_ratio", "revenue"]))
    assert list(panel.columns) == ["sme_id", "as_of", *names, LABEL]
    start, end = data_range(load_tables(data_dir))
    # invoices start 2023-01-01; statements are published from 2022 on, so month ends before
    # 2023 hold no population and give no rows
    assert start < pd.Timestamp("2023-01-01") and end > pd.Timestamp("2024-02-04")
    month_ends_with_trade = pd.date_range("2023-01-31", end, freq="ME")
    assert sorted(panel["as_of"].unique()) == list(month_ends_with_trade)
    assert [p.name for p in tmp_path.iterdir()] == ["panel.parquet"]


def test_explicit_dates_and_range(data_dir, tmp_path):
    out = tmp_path / "p.parquet"
    result = run("--data", str(data_dir), "--out", str(out), "--as-of", "2023-06-15",
                 "--as-of", "2023-09-30", "--horizon-days", "90")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_parquet(out)["as_of"].dt.strftime("%Y-%m-%d").unique()) == [
        "2023-06-15",
        "2023-09-30",
    ]
    result = run("--data", str(data_dir), "--out", str(out), "--from", "2023-05-01",
                 "--to", "2023-07-31")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["as_of"].nunique() == 3


def test_date_outside_the_data_exits_1_and_writes_nothing(data_dir, tmp_path):
    out = tmp_path / "panel.parquet"
    result = run("--data", str(data_dir), "--out", str(out), "--as-of", "2030-01-31")
    assert result.exit_code == 1
    assert "outside the data's range" in result.output
    assert list(tmp_path.iterdir()) == []


def test_empty_population_exits_1(data_dir, tmp_path):
    out = tmp_path / "panel.parquet"
    result = run("--data", str(data_dir), "--out", str(out), "--as-of", "2022-12-01")
    assert result.exit_code == 1  # before the first invoice (but within the data: statements)
    assert "no SME is in the population" in result.output
    assert list(tmp_path.iterdir()) == []


def test_invalid_folder_exits_1_with_the_validator_message(data_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in data_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    loans = pd.read_parquet(bad / "loans.parquet")
    loans.loc[0, "amount"] = -5.0
    loans.to_parquet(bad / "loans.parquet", index=False)
    out = tmp_path / "panel.parquet"
    result = run("--data", str(bad), "--out", str(out))
    assert result.exit_code == 1
    validate = CliRunner().invoke(app, ["validate", str(bad)])
    assert validate.exit_code == 1
    assert "loans, row 1, column amount" in result.output
    assert result.output.strip() == validate.output.strip()
    assert not out.exists()


def test_usage_errors_exit_2(data_dir, tmp_path):
    out = str(tmp_path / "p.parquet")
    both = run(
        "--data", str(data_dir), "--out", out, "--as-of", "2023-06-30", "--from", "2023-01-01"
    )
    assert both.exit_code == 2
    assert run("--data", str(data_dir), "--out", out, "--as-of", "30/06/2023").exit_code == 2
    assert run("--data", str(data_dir), "--out", out, "--engine", "spark").exit_code == 2
    assert run("--data", str(data_dir), "--out", out, "--scheduler", "tcp://x:1").exit_code == 2
    dask_jobs = run("--data", str(data_dir), "--out", out, "--engine", "dask", "--jobs", "2")
    assert dask_jobs.exit_code == 2
    assert run("--data", str(data_dir), "--out", out, "--jobs", "0").exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_help_explains_every_option():
    result = CliRunner().invoke(app, ["features", "--help"])
    assert result.exit_code == 0
    for option in ("--data", "--out", "--as-of", "--from", "--to", "--horizon-days", "--engine",
                   "--scheduler", "--jobs"):  # fmt: skip
        assert option in result.output
    assert "month end" in result.output


def test_the_output_format_follows_the_file_name_or_is_refused(tmp_path) -> None:
    """The panel is Parquet: `--out panel.csv` is a usage error naming --out, and nothing is
    written (rather than Parquet bytes in a file called .csv)."""
    out = tmp_path / "panel.csv"
    result = CliRunner().invoke(app, ["features", "--data", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2
    assert "--out" in result.output and "expected a .parquet file" in result.output
    assert not out.exists()


def test_the_dask_engine_on_a_local_cluster_writes_the_pandas_panel(data_dir, tmp_path):
    """`--engine dask` without a scheduler: the partitions are prepared on disk and the tables
    released before the cluster computes (`prepare_dask_panel`); the panel is the pandas
    engine's, and nothing but the panel is left beside it."""
    pandas_out, dask_out = (
        tmp_path / "pandas" / "panel.parquet",
        tmp_path / "dask" / "panel.parquet",
    )
    assert run("--data", str(data_dir), "--out", str(pandas_out)).exit_code == 0
    result = run("--data", str(data_dir), "--out", str(dask_out), "--engine", "dask")
    assert result.exit_code == 0, result.output
    assert dask_out.read_bytes() == pandas_out.read_bytes()
    assert sorted(p.name for p in dask_out.parent.iterdir()) == ["panel.parquet"]


@pytest.mark.slow
def test_a_dask_build_stopped_by_sigterm_leaves_no_temporary_files(tmp_path):
    """A cancelled job (SIGTERM) while the Dask engine holds its temporary files beside the
    output: exit 143, and neither those files nor an output are left (`terminated_as_exit`)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "data"
    folder.mkdir()
    tables = random_tables(n_smes=300, n_cores=6, n_invoices=60_000, days=700, seed=3)
    for name, frame in tables.frames().items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "features", "features", "--data", str(folder)]
    cmd += ["--out", str(out_dir / "panel.parquet"), "--engine", "dask"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 240
        while not any(out_dir.glob(".panel.parquet.*.parts")):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the temporary folder never appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert list(out_dir.iterdir()) == []
