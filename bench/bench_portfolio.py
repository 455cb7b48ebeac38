"""Batch scoring (`scf-risk score`): SMEs per second, with explanations, pandas and Dask.

A seeded simulation (N_SMES SMEs, 20 cores, 36 months) is generated into a temporary folder, its
feature panel built and a model trained on it with the training package's defaults (no MLflow:
the model is used in memory). Then the population at the last month end is scored RUNS times
by `serving.portfolio.batch.score_population`, which computes the point-in-time features of
every SME and explains every score (PD, score, grade, top 4 reasons), on:

- pandas (one process, explaining on `default_threads()` threads: both cores where there are 2);
- pandas without explanations (PD, score and grade only), to show what the explanations cost;
- Dask with 2 worker processes on an already running LocalCluster (partitioned by SME);
- Dask with 2 workers including the start of the LocalCluster, as `scf-risk score --engine dask`
  does on every call;
- the core alone, features given (`serving.portfolio.batch.score_rows`: PD, score, grade, base
  points, top 4 reasons): the population's feature rows repeated to 1,000 and 10,000 rows, on
  one thread and on every core (TreeSHAP split over threads), wall and CPU time (the target of
  issue 17: >= 10,000 SMEs/s on 2 cores).

Figures are medians of RUNS runs: SMEs per second = population / wall time. The machine has 2
cores, shared with whatever else runs. `python -m bench portfolio`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import Report, median_runs, timed_runs

if TYPE_CHECKING:
    import pandas as pd

    from training.model import ScoringModel

N_SMES = 2000
N_CORES = 20
MONTHS = 36
SEED = 11
RUNS = 3
WORKERS = 2
SECTION = "portfolio: batch scoring with explanations"


def run(report: Report) -> None:
    """Simulate, train, then time batch scoring on each engine."""
    import pandas as pd
    from distributed import LocalCluster

    from features.pipeline import data_range
    from features.simulate import SimConfig, generate_to_folder
    from serving.portfolio.batch import default_threads, score_population
    from training.bundle import MODEL_NAME, LoadedModel
    from training.run import load_inputs
    from training.train import TrainConfig, fit

    with tempfile.TemporaryDirectory(prefix="scf-risk-bench-portfolio-") as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        generate_to_folder(
            SimConfig(
                n_smes=N_SMES,
                n_cores=N_CORES,
                months=MONTHS,
                start=date(2021, 1, 1),
                seed=SEED,
                progress=False,
            ),
            data,
        )
        inputs = load_inputs(data, None)
        result = fit(
            inputs.panel,
            config=TrainConfig(),
            reference=inputs.reference,
            truth=inputs.truth,
            tables=inputs.tables,
        )
        prepared = time.perf_counter() - t0
        tables = inputs.tables
        assert tables is not None
        loaded = LoadedModel(result.model, MODEL_NAME, None, None, "in-memory (bench)")
        as_of = pd.Timestamp(data_range(tables)[1]) + pd.offsets.MonthEnd(0)
        if as_of > data_range(tables)[1]:
            as_of = as_of - pd.offsets.MonthEnd(1)
        trees = result.model.booster.num_trees()
        setup = (
            f"{N_SMES} simulated SMEs, as of {as_of.date()}; model of {trees} trees over "
            f"{len(result.model.feature_names)} features; data + training took {prepared:.0f} s"
        )

        def measure(name: str, fn_runs: list[float], n: int, note: str) -> None:
            rates = [n / t for t in fn_runs]
            report.add(
                SECTION,
                name,
                statistics.median(rates),
                "SMEs/s",
                runs=rates,
                note=f"{n} SMEs; median wall time {statistics.median(fn_runs):.2f} s; {note}",
            )

        _, times, scored = median_runs(lambda: score_population(tables, [as_of], loaded), RUNS)
        n = len(scored.scores)
        measure(
            f"pandas, with explanations ({default_threads()} thread(s): the default)",
            times,
            n,
            setup,
        )
        _, times, fast = median_runs(
            lambda: score_population(tables, [as_of], loaded, explain=False), RUNS
        )
        measure("pandas, PD/score/grade only (no explanations)", times, len(fast.scores), "")

        with LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            address = cluster.scheduler_address
            _, times, dask = median_runs(
                lambda: score_population(tables, [as_of], loaded, engine="dask", scheduler=address),
                RUNS,
            )
        pd.testing.assert_frame_equal(dask.scores, scored.scores)
        measure(
            f"dask, {WORKERS} workers, cluster running, with explanations",
            times,
            n,
            "same scores as pandas (checked)",
        )
        _, times, _ = median_runs(
            lambda: score_population(tables, [as_of], loaded, engine="dask", n_workers=WORKERS),
            RUNS,
        )
        measure(
            f"dask, {WORKERS} workers, including LocalCluster start, with explanations",
            times,
            n,
            "what `scf-risk score --engine dask` does per call",
        )

    core(report, scored.features, loaded.model)


def core(report: Report, features: pd.DataFrame, model: ScoringModel) -> None:
    """`score_rows` on given features: 1,000 and 10,000 rows, 1 thread and every core, the
    variants taking turns within each run."""
    import os

    import pandas as pd

    from serving.portfolio.batch import score_rows

    cores = os.cpu_count() or 1
    for n in (1_000, 10_000):
        rows = pd.concat([features] * (n // len(features) + 1), ignore_index=True).iloc[:n]
        score_rows(model, rows.iloc[:300], threads=cores)  # warm-up (numba's parallel kernels)
        got: dict[int, tuple[list[float], list[float]]] = {1: ([], []), cores: ([], [])}
        for _ in range(RUNS):
            for threads, (walls, cpus) in got.items():

                def one(t: int = threads, r: pd.DataFrame = rows) -> pd.DataFrame:
                    return score_rows(model, r, threads=t)

                w, c, _ = timed_runs(one, 1)
                walls += w
                cpus += c
        for threads, (walls, cpus) in got.items():
            rates = [n / t for t in walls]
            cpu = statistics.median(cpus)
            report.add(
                SECTION,
                f"core (score_rows, features given), {n:,} rows, {threads} thread(s)",
                statistics.median(rates),
                "SMEs/s",
                runs=rates,
                target=">= 10000" if threads == cores else "",
                note=f"median CPU {cpu:.3f} s = {n / cpu:,.0f} SMEs per CPU-second",
            )
