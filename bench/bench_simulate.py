"""The simulator: speed and memory of `scf-risk generate`, and how realistic its default dataset is.

- wall time and peak RSS of generating 2,000 SMEs x 36 months (median of 3 runs) and 100,000 SMEs
  x 36 months (one run), each run in its own subprocess so that its peak RSS is its own;
- on the default dataset (2,000 SMEs x 36 months, seed 1): invoices per SME-month, the annual
  default rate, the oracle's AUC (pd_true against realised 12-month defaults read from the loans)
  and the static onboarding rating's AUC, on as-of dates whose window ends within the data;
- a model of observable history: the project's feature panel (`features.pipeline`) and a plain
  LightGBM trained on the first 12 as-of months and scored on the next 12, against the oracle and
  the static rating on the same rows - the signals must carry the health, noisily.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import Report

SECTION = "simulator"
_CHILD = """
import json, resource, sys, time
from pathlib import Path
from features.simulate import SimConfig, generate_to_folder
n_smes, months, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
t0 = time.perf_counter()
generate_to_folder(SimConfig(n_smes=n_smes, months=months, seed=1, progress=False), out)
seconds = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
files_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "files_mb": files_mb}))
"""


def _generate_in_child(n_smes: int, months: int) -> dict[str, float]:
    """Run `generate_to_folder` in a fresh interpreter; its wall time, peak RSS and output size."""
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        out = Path(tmp) / "data"
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(n_smes), str(months), str(out)],
            check=True,
            capture_output=True,
            text=True,
        )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _speed(report: Report) -> None:
    small = [_generate_in_child(2_000, 36) for _ in range(3)]
    seconds = [r["seconds"] for r in small]
    peaks = [r["peak_mb"] for r in small]
    report.add(
        SECTION,
        "generate 2,000 SMEs x 36 months: wall time",
        statistics.median(seconds),
        "s",
        runs=seconds,
        target="seconds",
    )
    report.add(
        SECTION,
        "generate 2,000 SMEs x 36 months: peak RSS",
        statistics.median(peaks),
        "MB",
        runs=peaks,
        note="whole interpreter (imports included)",
    )
    big = _generate_in_child(100_000, 36)
    report.add(
        SECTION,
        "generate 100,000 SMEs x 36 months: wall time",
        big["seconds"] / 60,
        "min",
        target="minutes",
        note="one run",
    )
    report.add(
        SECTION,
        "generate 100,000 SMEs x 36 months: peak RSS",
        big["peak_mb"],
        "MB",
        target="bounded (SME chunks)",
        note=f"one run; {big['files_mb']:.0f} MB of Parquet written",
    )


def _realism(report: Report) -> None:
    import lightgbm as lgb
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from features.pipeline import build_features
    from features.simulate import SimConfig, simulate

    result = simulate(SimConfig(progress=False))
    sme_months = len(result.truth)
    defaults = result.loans["default_date"].notna().groupby(result.loans["sme_id"]).any().sum()
    rows = result.labelled_truth()
    y = rows["default_12m"]
    labelled = f"{len(rows):,} SME-months, {int(y.sum()):,} with a default within 12 months"
    for name, value, unit, target, note in (
        ("invoices per SME-month (default dataset)", len(result.invoices) / sme_months,
         "invoices", "5-20", ""),
        ("annual default rate (default dataset)", 100 * defaults / (sme_months / 12), "%",
         "2-6 %", ""),
        ("oracle AUC: pd_true vs realised 12-month default", roc_auc_score(y, rows["pd_true"]),
         "AUC", "0.80-0.92", labelled),
        ("static onboarding rating AUC", roc_auc_score(y, rows["rating"]), "AUC", "0.60-0.72", ""),
        ("oracle calibration: mean pd_true / realised default rate",
         rows["pd_true"].mean() / y.mean(), "ratio", "about 1", ""),
    ):  # fmt: skip
        report.add(SECTION, name, value, unit, target=target, note=note)

    as_of = sorted(rows["as_of"].unique())
    panel = build_features(result.tables(), as_of, data_end=result.extraction_date)
    panel = panel.merge(rows[["sme_id", "as_of", "pd_true", "rating"]], on=["sme_id", "as_of"])
    panel = panel[panel["default_12m"].notna()]
    features = [
        c for c in panel.columns if c not in ("sme_id", "as_of", "default_12m", "pd_true", "rating")
    ]
    x = panel[features].copy()
    for name in x.columns:
        if not pd.api.types.is_numeric_dtype(x[name]):
            x[name] = x[name].astype("category")
    train = (panel["as_of"] <= as_of[11]).to_numpy()
    label = panel["default_12m"].astype(int)
    model = lgb.LGBMClassifier(
        n_estimators=300,
        learning_rate=0.03,
        num_leaves=15,
        min_child_samples=100,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        random_state=0,
        verbose=-1,
    )
    model.fit(x[train], label[train])
    scores = np.asarray(model.predict_proba(x[~train]))[:, 1]
    test = panel[~train]
    oracle = roc_auc_score(test["default_12m"], test["pd_true"])
    static = roc_auc_score(test["default_12m"], test["rating"])
    note = (
        f"features.pipeline panel + LightGBM, trained on 12 as-of months, tested on the next 12 "
        f"({len(test):,} rows); same rows: oracle {oracle:.3f}, static rating {static:.3f}"
    )
    report.add(
        SECTION,
        "model of observable history AUC (out of time)",
        roc_auc_score(label[~train], scores),
        "AUC",
        target="close to the oracle",
        note=note,
    )


def run(report: Report) -> None:
    """Speed and memory first (subprocesses), then the default dataset's realism figures."""
    _speed(report)
    _realism(report)
