"""Explanation benchmark: SHAP values of one row and of 1,000 rows on a model of the served size.

The model is grown on synthetic data (no simulated dataset needed): 95 features of which 4 are
categorical, about 10% missing values, 15 leaves, 75 trees, LightGBM's served parameters
(`training.booster.DEFAULT_PARAMS`, one thread as in serving). Timed, median of 7 runs, the methods
taking turns within each run (1 row: each run the mean of 200 calls), wall and CPU time:

- ``booster.predict(M, pred_contrib=True)`` (LightGBM's TreeSHAP), one thread as served; for
  the batch also two threads;
- ``shap.TreeExplainer(booster)(M)`` (explainer built once, outside the timing);
- `training.treeshap.TreeShap.shap_values` (the "fast" engine), one thread, and for the batch
  also two threads;

and the ratios of both peers to the engine (target >= 5x). The engine's first-call compile (or
cache load) time and its largest difference from pred_contrib are reported too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np

from bench.report import Report

SECTION = "explain"
SEED = 7
FEATURES = 95
CATEGORICAL = (3, 17, 42, 80)
TREES = 75
ROWS_TRAIN = 20_000
BATCH = 1_000
SINGLE_CALLS = 200
RUNS = 7


def _data(n: int, rng: np.random.Generator) -> np.ndarray:
    X = rng.normal(size=(n, FEATURES))
    for j, levels in zip(CATEGORICAL, (5, 12, 30, 60), strict=True):
        X[:, j] = rng.integers(0, levels, size=n)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:, 5][rng.random(n) < 0.3] = 0.0
    return X


def _model() -> tuple[lgb.Booster, np.ndarray]:
    from training.booster import DEFAULT_PARAMS

    rng = np.random.default_rng(SEED)
    X = _data(ROWS_TRAIN, rng)
    signal = np.nan_to_num(X[:, :12]) @ rng.normal(size=12) + 0.3 * (X[:, 3] % 3)
    y = (signal + rng.normal(size=ROWS_TRAIN) > 1.0).astype(np.float64)
    params = {**DEFAULT_PARAMS, "num_threads": 1, "seed": SEED}
    data = lgb.Dataset(X, y, categorical_feature=list(CATEGORICAL))
    booster = lgb.train(params, data, num_boost_round=TREES)
    return booster, _data(BATCH, rng)


def _interleaved(
    methods: dict[str, Callable[[], Any]], runs: int, calls: int
) -> dict[str, tuple[float, list[float], float]]:
    """Per method: median wall time per call (s), every run's, and the median CPU time (s, all
    threads of the process). The methods take turns within each run, so that a change of the
    load of the shared machine hits all of them alike."""
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(runs):
        for name, fn in methods.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                fn()
            wall[name].append((time.perf_counter() - t0) / calls)
            cpu[name].append((time.process_time() - c0) / calls)
    return {
        name: (statistics.median(wall[name]), wall[name], statistics.median(cpu[name]))
        for name in methods
    }


def run(report: Report) -> None:
    import shap

    from training.treeshap import TreeShap

    booster, M = _model()
    k = booster.num_feature()
    trees = booster.num_trees()
    t0 = time.perf_counter()
    engine = TreeShap.from_booster(booster)
    t_parse = time.perf_counter() - t0
    t_warm = engine.warm_up()
    engine2 = TreeShap.from_booster(booster, threads=2)
    t_warm2 = engine2.warm_up()
    explainer = shap.TreeExplainer(booster)

    ref = booster.predict(M, pred_contrib=True)
    phi, phi0 = engine.shap_values(M)
    err = max(np.abs(phi - ref[:, :k]).max(), np.abs(phi0 - ref[:, k]).max())
    sv = explainer(M[:50], check_additivity=False)
    shap_err = np.abs(sv.values - ref[:50, :k]).max()
    note = f"{k} features ({len(CATEGORICAL)} categorical), {trees} trees, 15 leaves"
    report.add(SECTION, "engine parse time", t_parse, "s", note=note)
    report.add(
        SECTION,
        "engine first call (compile or cache load)",
        t_warm,
        "s",
        note="warm_up(), 1 thread; numba's on-disk cache is warm after the first process",
    )
    report.add(SECTION, "engine first call, 2 threads", t_warm2, "s")
    report.add(SECTION, "engine max |difference| vs pred_contrib", err, "", target="<= 1e-9")
    report.add(SECTION, "shap TreeExplainer max |difference| vs pred_contrib", shap_err, "")

    def peers(X: np.ndarray, threaded: bool) -> dict[str, Callable[[], Any]]:
        methods: dict[str, Callable[[], Any]] = {
            "pred_contrib": lambda: booster.predict(X, pred_contrib=True, num_threads=1),
            "shap TreeExplainer": lambda: explainer(X, check_additivity=False),
            "fast engine": lambda: engine.shap_values(X),
        }
        if threaded:
            methods["pred_contrib, 2 threads"] = lambda: booster.predict(
                X, pred_contrib=True, num_threads=2
            )
            methods["fast engine, 2 threads"] = lambda: engine2.shap_values(X)
        return methods

    sizes = {"1 row": (M[:1], False, SINGLE_CALLS), f"{BATCH:,} rows": (M, True, 1)}
    for label, (X, threaded, calls) in sizes.items():
        got = _interleaved(peers(X, threaded), RUNS, calls)
        for name, (t, runs, c) in got.items():
            report.add(
                SECTION,
                f"{label}: {name}",
                t * 1e3,
                "ms",
                runs=[r * 1e3 for r in runs],
                note=f"median CPU {c * 1e3:.4g} ms"
                + (f", mean of {calls} calls" if calls > 1 else ""),
            )
        fast, _, fast_cpu = got["fast engine"]
        for name in ("pred_contrib", "shap TreeExplainer"):
            t, _, c = got[name]
            report.add(
                SECTION,
                f"{label}: {name} / fast engine",
                t / fast,
                "x",
                target=">= 5",
                note=f"CPU time ratio {c / fast_cpu:.3g}",
            )
        if threaded:
            report.add(
                SECTION,
                f"{label}: pred_contrib / fast engine, both 2 threads",
                got["pred_contrib, 2 threads"][0] / got["fast engine, 2 threads"][0],
                "x",
            )
            report.add(
                SECTION,
                f"{label}: fast engine 1 thread / 2 threads",
                fast / got["fast engine, 2 threads"][0],
                "x",
                note="2 cores shared with other work",
            )
