"""Commands of the portfolio view: score, monitor, backtest, monthly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from features import cli_helpers as cli

if TYPE_CHECKING:
    from training.bundle import LoadedModel

MONITORING_FOLDER = Path("models/monitoring")


def _load_model(uri: str | None) -> tuple[LoadedModel, str]:
    """The model to use (default SCF_RISK_MODEL) and the tracking URI it came from."""
    from serving.settings import Settings
    from training.bundle import load_model
    from training.registry import check_tracking

    settings = Settings()
    check_tracking(settings.mlflow_tracking_uri)
    return (
        load_model(uri or settings.model_uri, settings.mlflow_tracking_uri),
        settings.mlflow_tracking_uri,
    )


DataOpt = Annotated[
    Path, typer.Option(help="Folder of the contract's tables (NAME.csv / NAME.parquet).")
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model); "
        "default SCF_RISK_MODEL (models:/sme-default-pd@champion)."
    ),
]


app = cli.package_app("The portfolio: score, monitor, backtest, monthly.")
"""The portfolio commands (part of `scf-risk`)."""


@app.command("score")
@cli.domain_errors_exit
def score_command(
    data: DataOpt,
    as_of: Annotated[
        str, typer.Option(help="Score the SMEs in the population at this date, YYYY-MM-DD.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Parquet file for the scores: sme_id, as_of, pd, score, grade, base_points, "
            "reasons (feature, value, value_text, points, text), model name/version/run_id. "
            "Written whole or not at all."
        ),
    ],
    engine: Annotated[
        str,
        typer.Option(
            help="'pandas' (in process) or 'dask' (dask.distributed, partitioned by SME; "
            "same scores)."
        ),
    ] = "pandas",
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://HOST:PORT) for --engine dask; default: a "
            "local cluster with one worker process per core."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes of the local Dask cluster (--engine dask)."),
    ] = None,
    model: ModelOpt = None,
) -> None:
    """Score every SME in the population at a date (PD, score, grade and the top 4 reasons)
    to Parquet, and materialise their latest features in the audit database for the
    service's sme_id-only requests."""
    from features.io import load_tables
    from serving.audit.store import AuditStore
    from serving.online import materialize
    from serving.portfolio.batch import score_population, write_scores
    from serving.settings import Settings

    cli.check_engine(engine)
    cli.parquet_out(out)
    if (scheduler is not None or workers is not None) and engine != "dask":
        cli.fail_usage("--scheduler and --workers need --engine dask")
    if scheduler is not None and workers is not None:
        cli.fail_usage("give --scheduler or --workers, not both")
    when = cli.parse_date(as_of, "--as-of")
    settings = Settings()
    tables = load_tables(data)
    loaded, _ = _load_model(model)
    make, close = cli.progress_bar("score")
    try:
        scored = score_population(
            tables,
            [when],
            loaded,
            engine=engine,  # type: ignore[arg-type]
            scheduler=scheduler,
            n_workers=workers,
            method=settings.explain_method,
            progress=make,
        )
    finally:
        close()
    store = AuditStore(settings.audit_db)
    try:
        written = materialize(store, scored.features)
        where = store.safe_url
    finally:
        store.dispose()
    write_scores(scored.scores, out)
    typer.echo(
        f"{out}: {len(scored.scores):,} SMEs scored as of {when.isoformat()} with model "
        f"{loaded.name} version {loaded.version}; latest features of {written:,} SMEs "
        f"materialised in {where}"
    )


@app.command("monitor")
@cli.domain_errors_exit
def monitor_command(
    data: DataOpt,
    as_of: Annotated[str, typer.Option(help="Monitoring date, YYYY-MM-DD.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="HTML report to write (its JSON summary goes beside it, same name .json); "
            "default models/monitoring/monitor-<as-of>.html."
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Date to compare with (rating migration, downgrades, PD crossings), "
            "YYYY-MM-DD; default 3 months before --as-of (month end to month end)."
        ),
    ] = None,
    pd_threshold: Annotated[
        float | None,
        typer.Option(
            help="Early warning: flag SMEs whose PD is at or above this (strictly between 0 "
            "and 1) and was below it at the comparison date. Default: the threshold the "
            "model's bundle records (0.10 for models trained now).",
        ),
    ] = None,
    min_notches: Annotated[
        int,
        typer.Option(
            min=1, help="Early warning: flag SMEs down at least this many grades since then."
        ),
    ] = 2,
    model: ModelOpt = None,
) -> None:
    """Monitor the portfolio at a date: PSI of every feature and of the score against the
    model's training reference, grade distribution, rating migration, early-warning list
    with reasons, realised default rate by grade once labels have matured. Writes an HTML
    report and a JSON summary, and logs both to MLflow (experiment 'monitoring')."""
    from features.io import load_tables
    from serving.portfolio.monitor import (
        drift_profile,
        log_to_mlflow,
        metrics_of,
        monitor,
        summary,
    )
    from serving.portfolio.report import publish, render_monitor
    from serving.settings import Settings
    from training.registry import check_tracking

    if pd_threshold is not None and not 0.0 < pd_threshold < 1.0:
        raise typer.BadParameter(
            f"expected a PD strictly between 0 and 1, got {pd_threshold}",
            param_hint="--pd-threshold",
        )
    when = cli.parse_date(as_of, "--as-of")
    earlier = cli.parse_date(compare, "--compare") if compare is not None else None
    target = out or MONITORING_FOLDER / f"monitor-{when.isoformat()}.html"
    if target.suffix.lower() not in (".html", ".htm"):
        raise typer.BadParameter(f"expected an .html file, got {target}", param_hint="--out")
    settings = Settings()
    tables = load_tables(data)
    loaded, tracking_uri = _load_model(model)
    profile = drift_profile(loaded)
    make, close = cli.progress_bar("monitor")
    try:
        result = monitor(
            tables,
            loaded,
            profile,
            when,
            compare=earlier,
            pd_threshold=pd_threshold,
            min_notches=min_notches,
            method=settings.explain_method,
            progress=make,
        )
    finally:
        close()
    doc = summary(result)
    client = check_tracking(tracking_uri)
    runs: list[str] = []
    html_path, json_path = publish(
        render_monitor(doc),
        doc,
        target,
        before_publish=lambda files: runs.append(
            log_to_mlflow(doc, files, tracking_uri=tracking_uri, client=client)
        ),
    )
    psi, metrics = doc["psi"], metrics_of(doc)
    typer.echo(
        f"{html_path} and {json_path}: {doc['population']['as_of']:,} SMEs; score PSI "
        f"{psi['score']['psi']:.3f} ({psi['score']['band']}); features to act on "
        f"{psi['band_counts']['act']}, to watch {psi['band_counts']['watch']}; segments "
        f"(industries, cores' SMEs) to act on {metrics['segments_act']:.0f}, to watch "
        f"{metrics['segments_watch']:.0f}; {doc['early_warning']['count']} early warnings; "
        f"MLflow run {runs[0]} "
        "(experiment monitoring)"
    )


@app.command("backtest")
@cli.domain_errors_exit
def backtest_command(
    data: DataOpt,
    out: Annotated[
        Path,
        typer.Option(
            help="HTML report to write (its JSON summary goes beside it, same name .json, and "
            "every defaulter in <name>-defaulters.csv)."
        ),
    ] = MONITORING_FOLDER / "backtest.html",
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help="First month end to score, YYYY-MM-DD (default: the data's first)."
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(help="Last month end to score, YYYY-MM-DD (default: the data's last)."),
    ] = None,
    static_cutoff: Annotated[
        str,
        typer.Option(
            help="Static rule: flag SMEs whose static rating (external_rating) is this or "
            "worse, e.g. B+ (AAA ... D)."
        ),
    ] = "B+",
    lookback: Annotated[
        int,
        typer.Option(min=1, help="Months before default in which alerts count (lead time)."),
    ] = 12,
    model: ModelOpt = None,
) -> None:
    """Show how many months before default the dynamic grade flagged each defaulter,
    against the static rating, with both rules flagging the same share of SME-months. Warns
    when the month ends include the model's training months (the dynamic side is in-sample)."""
    from features.exceptions import FeatureError
    from features.io import load_tables
    from features.pipeline import data_range, month_ends
    from serving.portfolio.backtest import backtest, defaulters_csv
    from serving.portfolio.report import defaulters_path_for, publish, render_backtest

    first = cli.parse_date(from_, "--from") if from_ is not None else None
    last = cli.parse_date(to, "--to") if to is not None else None
    if out.suffix.lower() not in (".html", ".htm"):
        raise typer.BadParameter(f"expected an .html file, got {out}", param_hint="--out")
    tables = load_tables(data)
    start, end = data_range(tables)
    dates = month_ends(first or start, last or end)
    if len(dates) < 2:
        raise FeatureError(
            f"fewer than two month ends between {(first or start):%Y-%m-%d} and "
            f"{(last or end):%Y-%m-%d}"
        )
    loaded, _ = _load_model(model)
    make, close = cli.progress_bar("backtest")
    try:
        result = backtest(
            tables,
            loaded,
            dates,
            static_cutoff=static_cutoff,
            lookback_months=lookback,
            progress=make,
        )
    finally:
        close()
    doc = result.doc
    if doc["defaulters"] == 0:
        raise FeatureError(
            f"no SME defaulted between {doc['from']} and {doc['to']} after being scored: "
            "nothing to backtest"
        )
    listed = defaulters_path_for(out)
    html_path, json_path = publish(
        render_backtest(doc, defaulters_file=listed.name),
        doc,
        out,
        extra={listed.name: defaulters_csv(doc)},
    )
    typer.echo(
        f"{html_path}, {json_path} and {listed}: {doc['defaulters']} defaulters; flagged at "
        f"least {doc['ahead_months']} months ahead: dynamic {doc['dynamic']['share_ahead']:.0%}, "
        f"static {doc['static']['share_ahead']:.0%}, at an alert rate of "
        f"{doc['static']['alert_rate']:.1%} of SME-months"
    )
    if doc["note"]:
        typer.echo(doc["note"])


@app.command("monthly")
@cli.domain_errors_exit
def monthly_command(
    data: DataOpt,
    as_of: Annotated[str, typer.Option(help="Month end of the run, YYYY-MM-DD.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder to write (must not exist, or be empty): scores.parquet, monitor.html "
            "and .json (with the list of actions), early_warnings.csv, performance.csv. "
            "Default models/monitoring/monthly-<as-of>."
        ),
    ] = None,
    model: ModelOpt = None,
) -> None:
    """What the risk team does each month: score the population (and materialise its latest
    features for the service), monitor it, list the early warnings, and estimate the
    performance of the months whose labels have not matured (realised beside it where they
    have). One folder of reports, logged to MLflow (experiment 'monitoring')."""
    from features.io import load_tables
    from serving.audit.store import AuditStore
    from serving.online import materialize
    from serving.portfolio.monitor import log_to_mlflow
    from serving.portfolio.monthly import monthly
    from serving.settings import Settings
    from training.registry import check_tracking

    when = cli.parse_date(as_of, "--as-of")
    target = out or MONITORING_FOLDER / f"monthly-{when.isoformat()}"
    settings = Settings()
    tables = load_tables(data)
    loaded, tracking_uri = _load_model(model)
    client = check_tracking(tracking_uri)
    store = AuditStore(settings.audit_db)
    runs: list[str] = []
    try:
        run = monthly(
            tables,
            loaded,
            when,
            target,
            method=settings.explain_method,
            materialise=lambda features: materialize(store, features),
            log=lambda doc, files: runs.append(
                log_to_mlflow(doc, files, tracking_uri=tracking_uri, client=client)
            ),
        )
    finally:
        store.dispose()
    doc = run.doc
    typer.echo(
        f"{run.folder}: {doc['population']['as_of']:,} SMEs scored; "
        f"{doc['early_warning']['count']} early warnings; MLflow run {runs[0]} "
        "(experiment monitoring). To do:"
    )
    for line in doc["actions"]:
        typer.echo(f"- {line}")
