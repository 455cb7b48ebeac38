"""Commands of the training package: train, promote."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from features.cli_helpers import (
    check_engine,
    domain_errors_exit,
    fail_usage,
    package_app,
    progress_bar,
)


def _tracking_uri(option: str | None) -> str:
    from training.settings import TrackingSettings

    return option if option is not None else TrackingSettings().mlflow_tracking_uri


TrackingOpt = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking (and registry) URI. Default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///models/mlflow.db."
    ),
]


app = package_app("Models: train and register, promote the challenger.")
"""The training package's commands (`python -m training`; part of `scf-risk`)."""


@app.command()
@domain_errors_exit
def train(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the contract's tables: the panel is built from it (unless "
            "--features is given), and it supplies reference data, loans (metrics by "
            "product) and truth.parquet when present."
        ),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(help="Feature panel (Parquet, from `scf-risk features`) to train on."),
    ] = None,
    oot_months: Annotated[
        int,
        typer.Option(min=1, help="The last N matured as-of months form the out-of-time set."),
    ] = 6,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment of the training run.")
    ] = "sme-default-pd",
    engine: Annotated[
        str,
        typer.Option(
            help="'pandas' (lightgbm.train in process) or 'dask' (DaskLGBMClassifier on "
            "dask.distributed; also builds the panel on Dask)."
        ),
    ] = "pandas",
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address for --engine dask; default: a local cluster of "
            "two worker processes."
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the splits, LightGBM and tuning: same data and seed, same model."
        ),
    ] = 0,
    tune: Annotated[
        int,
        typer.Option(
            min=0, help="Optuna trials (seeded TPE) on the validation split; 0 = defaults."
        ),
    ] = 0,
    tune_minutes: Annotated[
        float,
        typer.Option(
            min=0,
            help="Time budget (minutes) of an Optuna search that grows on the months before "
            "the calibration months and judges on them (time-respecting); 0 = none. Not "
            "with --tune.",
        ),
    ] = 0.0,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="truth.parquet (sme_id, as_of, pd_true) for the oracle AUC; default: "
            "DATA/truth.parquet when present."
        ),
    ] = None,
    embargo_days: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Leave out training rows with as_of + N days after the first OOT date. "
            "Default: the label horizon (365), so no training label window reaches the OOT "
            "period (leak-free figures). 0 = a plain split (leaky: for comparison only).",
        ),
    ] = None,
    calibration_months: Annotated[
        int,
        typer.Option(
            min=0,
            help="The last N training months (at most half) are held out to fit the "
            "log-odds calibration on a booster grown on the earlier months, as OOT stands "
            "to the model. 0 = calibrate on cross-fitted SMEs instead.",
        ),
    ] = 6,
    horizon_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Label horizon when building the panel from --data (default 365). With "
            "--features, the panel file's own horizon; giving another one is an error.",
        ),
    ] = None,
    max_rounds: Annotated[
        int, typer.Option(min=1, help="Most boosting rounds (early stopping picks fewer).")
    ] = 3000,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="LightGBM threads; part of the model's definition (same data, seed and "
            "threads -> same model).",
        ),
    ] = 1,
    boosters_at_once: Annotated[
        int,
        typer.Option(
            min=1,
            help="Cross-fitting and calibration boosters grown at the same time (threads, "
            "pandas engine); not part of the model's definition: the same model either way.",
        ),
    ] = 1,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Train a calibrated, monotone LightGBM default model, log it to MLflow and register it
    as a new version of sme-default-pd with alias 'challenger'. Prints one JSON line."""
    from tqdm import tqdm

    from training.registry import check_tracking
    from training.run import load_inputs, summary, train_and_register
    from training.train import Steps, TrainConfig

    check_engine(engine)
    if scheduler is not None and engine != "dask":
        fail_usage("--scheduler needs --engine dask")
    if data is None and features is None:
        fail_usage("give --data DIR or --features FILE.parquet")
    if tune > 0 and tune_minutes > 0:
        fail_usage("give --tune N or --tune-minutes M, not both")
    uri = _tracking_uri(tracking_uri)
    client = check_tracking(uri)  # before any work: an unreachable store fails fast

    on_dates, close_dates = progress_bar("features", "date")
    bars: list[tqdm] = []

    def plan(total: int) -> None:  # `fit` says how many steps it will report
        bars.append(tqdm(total=total, desc="train", unit="step", file=sys.stderr))

    def say(message: str) -> None:
        bars[-1].set_postfix_str(message, refresh=False)
        bars[-1].update(1)

    try:
        try:
            inputs = load_inputs(
                data,
                features,
                truth,
                horizon_days=horizon_days,
                engine=engine,
                scheduler=scheduler,
                on_dates=on_dates,
            )
        finally:
            close_dates()

        config = TrainConfig(
            horizon_days=inputs.horizon_days,
            oot_months=oot_months,
            seed=seed,
            engine="dask" if engine == "dask" else "pandas",
            scheduler=scheduler,
            tune_trials=tune,
            tune_minutes=tune_minutes,
            num_threads=threads,
            boosters_at_once=boosters_at_once,
            max_rounds=max_rounds,
            embargo_days=embargo_days,
            calibration_months=calibration_months,
        )
        registered, result = train_and_register(
            inputs,
            config,
            tracking_uri=uri,
            experiment=experiment,
            progress=Steps(say, plan),
            client=client,
        )
    finally:
        for bar in bars:
            bar.close()
    typer.echo(json.dumps(summary(registered, result)))


DataOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder of the contract's tables: the models are compared on its newest matured "
        "months that neither trained on (labels whose window overlaps either model's training "
        "months excluded). Default: the OOT rows both training runs logged, the same way "
        "restricted."
    ),
]


def _comparison_panel(data: Path | None) -> pd.DataFrame | None:
    """The labelled panel built from --data (None without it)."""
    if data is None:
        return None
    from training.run import load_inputs

    on_dates, close_dates = progress_bar("features", "date")
    try:
        return load_inputs(data, None, on_dates=on_dates).panel
    finally:
        close_dates()


@app.command()
@domain_errors_exit
def compare(
    data: DataOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Score the champion and the challenger on the same rows, rows neither trained on, and
    print them side by side: AUC with DeLong 95% intervals and the interval of the difference,
    KS, Brier score, ECE, default rates by grade. Reads only; exit 1 without a champion or a
    challenger, or when no row is unseen by both."""
    from training.promote import compare_registered

    uri = _tracking_uri(tracking_uri)
    from training.registry import check_tracking

    check_tracking(uri, create=False)  # before building any panel
    typer.echo(compare_registered(uri, panel=_comparison_panel(data)).table())


@app.command()
@domain_errors_exit
def promote(
    version: Annotated[
        int | None,
        typer.Option(min=1, help="Model version to promote; default: the 'challenger'."),
    ] = None,
    max_auc_drop: Annotated[
        float,
        typer.Option(help="Gate: largest OOT AUC drop allowed against the champion."),
    ] = 0.005,
    max_ece: Annotated[
        float, typer.Option(help="Gate: largest OOT expected calibration error allowed.")
    ] = 0.02,
    data: DataOpt = None,
    reload: Annotated[
        str | None,
        typer.Option(
            help="Base URL of a running service (e.g. http://127.0.0.1:8000) to reload the "
            "champion into after a promotion; needs an admin key in SCF_RISK_ADMIN_KEY."
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move the alias 'champion' of sme-default-pd to the challenger (or --version) if its
    gates pass on rows neither model trained on (as `scf-risk compare`): AUC within
    --max-auc-drop of the champion's, ECE at most --max-ece, monotonicity verified. The
    decision is recorded in MLflow; a failed gate exits 1 with the reasons. Promoting the
    current champion changes nothing."""
    import os

    from training.exceptions import ComparisonError, PromotionRejectedError
    from training.promote import promote as run_promote
    from training.promote import reload_service
    from training.registry import check_tracking

    uri = _tracking_uri(tracking_uri)
    admin_key = os.environ.get("SCF_RISK_ADMIN_KEY")
    if reload is not None and not admin_key:
        raise ComparisonError(
            "--reload needs an admin API key in SCF_RISK_ADMIN_KEY (create one with "
            "`scf-risk keys add --role admin`); nothing was promoted"
        )
    check_tracking(uri, create=False)  # before building any panel
    try:
        decision = run_promote(
            uri,
            version,
            panel=_comparison_panel(data),
            max_auc_drop=max_auc_drop,
            max_ece=max_ece,
        )
    except PromotionRejectedError as exc:
        typer.echo(exc.comparison, err=True)
        raise
    if decision.noop:
        typer.echo(f"version {decision.version} is already the champion: nothing to do", err=True)
        typer.echo(json.dumps(decision.to_json()))
        return
    typer.echo(decision.comparison, err=True)
    if reload is not None:
        served = reload_service(reload, admin_key)
        typer.echo(f"the service at {reload} reloaded: {json.dumps(served)}", err=True)
    else:
        typer.echo(
            f"version {decision.version} is the champion; a running service keeps its old "
            "model until reloaded (POST /v1/admin/reload with an admin key, or promote with "
            "--reload URL)",
            err=True,
        )
    typer.echo(json.dumps(decision.to_json()))
