"""Training benchmark on simulated data (default 20,000 SMEs; `SCF_RISK_BENCH_SMES` to change).

Figures:
- wall time of `training.train.fit` (median of 3) and its ratio to a bare `lightgbm.train` on the
  same fit matrix with the same parameters and the same early stopping. `fit` grows the model,
  the calibration booster of the held-out months and, only where the unseen-SME figure needs
  them (`training.train.cross_fit_for`: fewer than 2,000 validation SMEs, no calibration months,
  or a model regrown on small data), K = 5 cross-fitting boosters; at the default 20,000 SMEs
  (about 3,000 validation SMEs) it grows none and reads the unseen-SME figure on the validation
  SMEs and SMEs new in the OOT months. It adds calibration, the OOT evaluation, the benchmark
  scorecard, the monotonicity check, a SHAP sample and the drift profile, so the ratio is the
  full cost of a validated model over one bare booster; the per-booster ratio divides that by
  the boosters grown. The fit rows are binned once (the other boosters grow on subsets of that
  Dataset), and `boosters_at_once=2` grows the boosters after the model two at a time
  (threads): a second ratio.
- The floor of that ratio while `fit` keeps its boosters: 1 + the CPU time of the other boosters
  `fit` grew (the calibration booster, and the K folds when cross-fitted) grown bare (subsets of
  one binned Dataset, the model's best iteration, no validation) over the bare booster's, and
  what `fit` spends above it (preparation, the predictions, the evaluation and the drift
  profile), in model-equivalents. Measured per phase (process CPU of one fit, 20,000 SMEs,
  500,247 fit rows, 2,992 validation SMEs, a busy 2-core machine, bare 89 s), with the five
  folds (before cross-fitting by the data) / without: the model 1.02 / 0.97, the folds 2.66
  (0.53 each) / none, the calibration booster 0.33 / 0.31, predictions (the model's margins of
  every row; the folds' of theirs) 0.71 / 0.43, evaluation 0.32 / 0.26 (the scorecard 0.15 /
  0.12, its regression now on one BLAS thread; the SHAP sample about 0.07; the monotonicity
  check 0.05), the drift profile 0.05, preparation 0.08 / 0.07: fit / bare 5.2x / 2.1x. At
  6,000 SMEs (898 validation SMEs) fit keeps its folds by default. Since then, without folds
  (one fit's phases, bare 83 s): the model 1.02, the calibration booster 0.33, predictions 0.17
  (the margins read by `training.margins`, LightGBM's bit for bit, 3 times faster), evaluation
  0.23 (the scorecard 0.11; the SHAP sample 0.04; the monotonicity check 0.025, its probes
  walking only the moved feature's trees), the drift profile 0.05, preparation 0.06. Interleaved
  with the commit before (3 runs each, CPU, load 1-6): fit 176.6 s -> 154.4 s, bare 82.9 s,
  fit / bare 2.13x -> 1.86x; at 6,000 SMEs (folds kept; 2 runs) 55.2 s -> 51.1 s, bare 15.7 s,
  3.52x -> 3.25x; at both sizes the booster text, every metric, the OOT frame, the stability
  table, the monotonicity report, the SHAP sample and the drift profile unchanged. 1.5x is not
  reached while fit validates the model with a calibration booster grown as the model is: with
  the model it is a floor of 1.35, and the evaluation, the margins, the drift profile and the
  preparation add 0.5.
- Protocol: the default, leak-free split (embargo = the label horizon) on 60 simulated months.
- OOT AUC against the oracle AUC (the simulator's pd_true on the same rows) and the static
  rating's AUC, the ECE, and the OOT AUC of the rows scored by a booster that never saw their SME.

The simulated dataset and its panel are cached under data/bench/ (git-ignored) and reused.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np

from bench.report import Report, timed_runs

SECTION = "train"
SEED = 1
MONTHS = 60  # enough for the default, leak-free split (training.split.months_needed)


def dataset(n_smes: int, seed: int = SEED) -> tuple[Path, Path]:
    """(tables folder, panel file) of the simulated dataset of `seed`, generated once."""
    from features.engines import build_panel
    from features.io import load_tables
    from features.pipeline import data_range, month_ends, write_panel
    from features.simulate import SimConfig, generate_to_folder

    root = Path("data/bench") / f"sim-{n_smes}-seed{seed}-{MONTHS}m"
    folder, panel = root / "tables", root / "panel.parquet"
    if not (folder / "truth.parquet").is_file():
        print(f"generating {n_smes:,} SMEs into {folder} (once)", flush=True)
        generate_to_folder(SimConfig(n_smes=n_smes, seed=seed, months=MONTHS), folder)
    if panel.is_file() and not _panel_is_current(folder, panel):
        print(f"the cached panel {panel} is stale (feature code changed): rebuilding", flush=True)
        panel.unlink()
    if not panel.is_file():
        print(f"building the feature panel {panel} (once)", flush=True)
        tables = load_tables(folder)
        start, end = data_range(tables)
        write_panel(build_panel(tables, month_ends(start, end)), panel)
    return folder, panel


def _panel_is_current(folder: Path, panel: Path) -> bool:
    """Whether the cached panel is what the current feature code computes: its last as-of date
    is rebuilt and compared (columns, dtypes and values), so a panel cached before a change of
    the catalog or of a feature's definition is not silently benchmarked."""
    import pandas as pd

    from features.engines import build_panel
    from features.io import load_tables

    cached = pd.read_parquet(panel)
    last = cached["as_of"].max()
    cached = cached[cached["as_of"] == last].reset_index(drop=True)
    fresh = build_panel(load_tables(folder), [last])
    try:
        pd.testing.assert_frame_equal(cached, fresh, check_dtype=True)
    except AssertionError:
        return False
    return True


def run(report: Report) -> None:
    from training.booster import categorical_indices
    from training.run import load_inputs
    from training.train import TrainConfig, fit, prepare

    n_smes = int(os.environ.get("SCF_RISK_BENCH_SMES", "20000"))
    folder, panel_file = dataset(n_smes)
    inputs = load_inputs(folder, panel_file)
    config = TrainConfig(seed=0)
    rows = int(inputs.panel["default_12m"].notna().sum())

    fit_runs, fit_cpu, result = timed_runs(
        lambda: fit(inputs.panel, config=config, truth=inputs.truth, tables=inputs.tables), 3
    )
    t_fit = statistics.median(fit_runs)

    at_once = replace(config, boosters_at_once=2)  # the same model, two boosters at a time
    two_runs, _, _ = timed_runs(
        lambda: fit(inputs.panel, config=at_once, truth=inputs.truth, tables=inputs.tables), 3
    )
    t_two = statistics.median(two_runs)

    prep = prepare(inputs.panel, None, config)  # the same matrix and split as `fit`
    X, y, split, catalog = prep.X, prep.y, prep.split, prep.catalog
    params = result.lgb_params

    def bare() -> lgb.Booster:
        dfit = lgb.Dataset(
            X[split.fit],
            y[split.fit],
            feature_name=[f.name for f in catalog],
            categorical_feature=categorical_indices(catalog),
        )
        dval = lgb.Dataset(X[split.val], y[split.val], reference=dfit)
        return lgb.train(
            params,
            dfit,
            num_boost_round=config.max_rounds,
            valid_sets=[dval],
            callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
        )

    bare_runs, bare_cpu, booster = timed_runs(bare, 3)
    t_bare = statistics.median(bare_runs)

    # the floor: the boosters `fit` grows besides the model, bare (each on a subset of one
    # binned Dataset, the model's rounds, no validation): what any fit that keeps the K folds
    # and the calibration booster costs on top of the model before it evaluates anything
    cross_fitted = result.metrics["unseen_sme_cross_fitted"] == 1.0
    parts = [np.flatnonzero(split.fold != k) for k in range(split.folds if cross_fitted else 0)]
    if split.calibration_months:
        parts.append(np.searchsorted(split.fit, split.cal_grow))

    rounds = int(result.metrics["best_iteration"])
    binned = lgb.Dataset(  # binned before the clock starts, as fit's model binned it
        X[split.fit],
        y[split.fit],
        feature_name=[f.name for f in catalog],
        categorical_feature=categorical_indices(catalog),
        params=params,
    ).construct()

    def others() -> None:
        for part in parts:
            lgb.train(params, binned.subset(part.tolist()), num_boost_round=rounds)

    _, others_cpu, _ = timed_runs(others, 3)
    boosters = 1 + len(parts)
    mt = result.metrics
    note = f"{n_smes:,} SMEs, {rows:,} matured rows, {len(catalog)} features, 1 thread"
    report.add(SECTION, "fit wall time", t_fit, "s", runs=fit_runs, note=note)
    report.add(
        SECTION,
        "bare lightgbm.train wall time",
        t_bare,
        "s",
        runs=bare_runs,
        note=f"same fit matrix and parameters, early stopping at {booster.best_iteration}",
    )
    report.add(
        SECTION,
        "fit / bare lightgbm.train",
        t_fit / t_bare,
        "x",
        runs=[t / t_bare for t in fit_runs],
        note=f"medians of 3 runs each; fit grows {boosters} boosters and validates the model",
    )
    report.add(
        SECTION,
        "fit / bare lightgbm.train, CPU time",
        statistics.median(fit_cpu) / statistics.median(bare_cpu),
        "x",
        runs=[c / statistics.median(bare_cpu) for c in fit_cpu],
        target="<= 1.5",
        note=f"median CPU: fit {statistics.median(fit_cpu):.1f} s, bare "
        f"{statistics.median(bare_cpu):.1f} s (the figure to trust on a shared machine)",
    )
    report.add(SECTION, "fit / bare, per booster grown", t_fit / t_bare / boosters, "x")
    floor = 1.0 + statistics.median(others_cpu) / statistics.median(bare_cpu)
    report.add(
        SECTION,
        "floor of fit / bare with its boosters, CPU time",
        floor,
        "x",
        runs=[1.0 + c / statistics.median(bare_cpu) for c in others_cpu],
        note=f"1 + the {len(parts)} other boosters grown bare (subsets of one Dataset, "
        f"{rounds} rounds, no validation) / bare: fit's cost before evaluating, "
        + (
            f"with the {split.folds} cross-fitting folds of the unseen-SME figure"
            if cross_fitted
            else f"no cross-fitting folds ({split.val_smes:,} validation SMEs)"
        ),
    )
    report.add(
        SECTION,
        "fit / bare above the floor, CPU time",
        statistics.median(fit_cpu) / statistics.median(bare_cpu) - floor,
        "x",
        note="evaluation (scorecard, SHAP sample, monotonicity, stability), drift profile, "
        "preparation and predictions, in model-equivalents",
    )
    report.add(
        SECTION,
        "fit, 2 boosters at once / bare lightgbm.train",
        t_two / t_bare,
        "x",
        runs=[t / t_bare for t in two_runs],
        target="<= 1.5",
        note="TrainConfig(boosters_at_once=2): the cross-fitting and calibration boosters in two "
        "threads (the same model)",
    )
    quality: list[tuple[str, float, str, str]] = [  # (name, value, target, note)
        ("OOT AUC", mt["auc_oot"], "", f"{int(mt['n_oot']):,} OOT rows"),
        ("oracle AUC (pd_true, same rows)", mt["auc_oracle_oot"], "", ""),
        ("static rating AUC", mt["auc_static_rating_oot"], "", ""),
        ("oracle AUC - OOT AUC", mt["auc_oracle_oot"] - mt["auc_oot"], "<= 0.025", ""),
        (
            "OOT AUC - static rating AUC",
            mt["auc_oot"] - mt["auc_static_rating_oot"],
            ">= 0.15",
            "",
        ),
        ("OOT ECE", mt["ece_oot"], "<= 0.01", "10 equal-count bins"),
        (
            "benchmark scorecard OOT AUC",
            mt["auc_oot_benchmark_scorecard"],
            "",
            "monotone-binned WoE logistic scorecard, same split",
        ),
        ("OOT AUC - scorecard AUC", mt["auc_oot"] - mt["auc_oot_benchmark_scorecard"], "> 0", ""),
        (
            "OOT AUC, SMEs unseen by their booster",
            mt["auc_oot_unseen_sme"],
            "",
            f"{int(mt['unseen_sme_rows']):,} OOT rows of {int(mt['unseen_sme_smes']):,} SMEs, "
            + (
                "every OOT row, cross-fitted"
                if cross_fitted
                else "those of validation SMEs and SMEs new in the OOT months (no cross-fitting)"
            )
            + ": no SME scored by a booster trained on its earlier rows",
        ),
    ]
    for name, value, target, what in quality:
        report.add(SECTION, name, value, "", target=target, note=what)
    report.add(SECTION, "OOT ECE, SMEs unseen by their booster", mt["ece_oot_unseen_sme"], "")
