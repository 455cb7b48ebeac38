"""Coverage of the performance estimate before labels mature, measured honestly (issue 16;
`serving.portfolio.performance`): for how many matured months the model did not train on does
the realised default rate, AUC and ECE lie inside the estimate's 95 % interval, when each month
is judged by a recalibration that could not have seen its outcome?

Data: `features.simulate`, `MONTHS` months from 2019-01 (`SCF_RISK_BENCH_CBPE_SMES` SMEs,
default 1,200, 12 cores; seeds `SCF_RISK_BENCH_CBPE_SEEDS`, default 1,5,13,21; tables cached
under data/bench/). A leak-free model (the default split) is trained (`FAST` settings of the tests)
on the data as they stood at month `TRAIN_AT` (labels immature after it masked), so that
the months after its training window give some 47 matured reference months by the end of the
data, not the 17 a model trained at the end has. Every month end is scored and estimated with
the labels known at the end of the data (`SCF_RISK_BENCH_CBPE_DRAWS` draws, default 1,000), once
per rule of `JUDGES` for the reference months a judged month's recalibration rests on:
``forward`` (those whose labels had matured by the judged month's date: how the estimate is used
on an immature month), ``horizon`` (at least 12 months away on either side) and
``half-horizon`` (6 months: the previous rule, whose label windows overlap); and forward in time
once more without the recalibration's time trend (``forward, no trend``: the previous
estimator, ``logit PD' = a + b logit PD`` whatever the reference months span), side by side with
the trend the estimator now fits (`TREND_MIN_SPAN`, `TREND_AHEAD`).

Reported per seed, rule and metric: realised inside the interval / months judged by a
recalibration (months that fell back to plain CBPE are counted apart, with their reasons), the
plain CBPE band's count on the same months, the median interval width, and the mean of
(realised - estimate) / half-width (bias: 0 for a centred estimate; beyond +-1 outside). The
per-month tables are written to bench-out/cbpe/.
"""

from __future__ import annotations

import os
import statistics
from datetime import date
from pathlib import Path

import pandas as pd

from bench.report import Report

SECTION = "cbpe coverage"
MONTHS = 84
TRAIN_AT = 54
"""The model is trained on the data as they stood at the end of month 54 of 84."""
N_CORES = 12
FAST = {"calibration_folds": 3, "max_rounds": 400, "early_stopping_rounds": 50}
"""The training settings of the tests (`tests.support.panels.FAST`): quick, and the same model
family."""


def scored_months(n_smes: int, seed: int) -> tuple[pd.DataFrame, object]:
    """(every month end's rows: as_of, sme_id, pd, default_12m as known at the end of the
    data; the model's `TrainingWindow`) for one simulation."""
    from features.contract import DEFAULT_HORIZON_DAYS, HORIZON_ATTR
    from features.engines import build_panel
    from features.io import load_tables
    from features.pipeline import data_range, month_ends
    from features.simulate import SimConfig, generate_to_folder
    from serving.portfolio.performance import TrainingWindow
    from training.train import TrainConfig, fit

    folder = Path("data/bench") / f"cbpe-sim-{n_smes}-seed{seed}-{MONTHS}m" / "tables"
    if not (folder / "truth.parquet").is_file():
        config = SimConfig(
            n_smes=n_smes, n_cores=N_CORES, months=MONTHS, start=date(2019, 1, 1), seed=seed,
            progress=False,
        )  # fmt: skip
        generate_to_folder(config, folder)
    tables = load_tables(folder)
    panel = build_panel(tables, month_ends(*data_range(tables)))
    cut = pd.Timestamp(sorted(panel["as_of"].unique())[TRAIN_AT - 1])
    train = panel[panel["as_of"] <= cut].copy()
    horizon = pd.Timedelta(days=int(panel.attrs.get(HORIZON_ATTR, DEFAULT_HORIZON_DAYS)))
    train["default_12m"] = train["default_12m"].mask(train["as_of"] + horizon > cut)
    train.attrs = dict(panel.attrs)
    model = fit(train, config=TrainConfig(**FAST, seed=0, benchmark=False)).model
    window = TrainingWindow.of(model)
    scores = panel[["as_of", "sme_id", "default_12m"]].assign(pd=model.predict(panel))
    return scores, window


def judged_months(table: pd.DataFrame) -> pd.DataFrame:
    """The matured months the model did not train on."""
    from serving.portfolio.performance import OVERLAP, UNSEEN

    return table[table["mature"] & table["role"].isin([OVERLAP, UNSEEN])]


def summary(judged: pd.DataFrame, metric: str) -> dict[str, float]:
    """Counts, width and bias of `metric` over the months judged by a recalibration."""
    from serving.portfolio.performance import LEAVE_OUT

    rows = judged[judged["interval"] == LEAVE_OUT]
    real, est = rows[f"{metric}_realised"], rows[f"{metric}_estimate"]
    low, high = rows[f"{metric}_low"], rows[f"{metric}_high"]
    half = (high - low) / 2
    plain = (rows[f"{metric}_cbpe_low"] <= real) & (real <= rows[f"{metric}_cbpe_high"])
    return {
        "inside": int(rows[f"{metric}_within"].astype(bool).sum()),
        "months": len(rows),
        "plain": int(plain.sum()),
        "width": float((high - low).median()) if len(rows) else float("nan"),
        "bias": float(((real - est) / half).mean()) if len(rows) else float("nan"),
        "below": int((real < low).sum()),
        "above": int((real > high).sum()),
    }


def run(report: Report) -> None:
    from serving.portfolio.performance import FORWARD, JUDGES, METRICS, performance_table

    n_smes = int(os.environ.get("SCF_RISK_BENCH_CBPE_SMES", "1200"))
    seeds = [int(s) for s in os.environ.get("SCF_RISK_BENCH_CBPE_SEEDS", "1,5,13,21").split(",")]
    draws = int(os.environ.get("SCF_RISK_BENCH_CBPE_DRAWS", "1000"))
    out = report.out_dir / "cbpe"
    out.mkdir(parents=True, exist_ok=True)
    pooled: dict[tuple[str, str], list[int]] = {}
    widths: dict[tuple[str, str], list[float]] = {}
    rules = [(judge, judge, True) for judge in JUDGES] + [("forward, no trend", FORWARD, False)]
    for seed in seeds:
        scores, window = scored_months(n_smes, seed)
        for name, judge, trend in rules:
            table = performance_table(
                scores[["as_of", "sme_id", "pd"]],
                scores["default_12m"].astype("Float64"),
                window=window,  # type: ignore[arg-type]
                draws=draws,
                judge=judge,
                trend=trend,
            )
            table.to_csv(out / f"seed{seed}-{name.replace(', ', '-').replace(' ', '-')}.csv",
                         index=False)  # fmt: skip
            judged = judged_months(table)
            reasons = judged["fallback"].dropna().value_counts().to_dict()
            fell = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
            for metric in METRICS:
                s = summary(judged, metric)
                sums = pooled.setdefault((name, metric), [0, 0])
                sums[0] += s["inside"]
                sums[1] += s["months"]
                widths.setdefault((name, metric), []).append(s["width"])
                report.add(
                    SECTION,
                    f"seed {seed}, {name}: {metric} inside",
                    s["inside"] / s["months"] if s["months"] else float("nan"),
                    "share",
                    target=">= 0.9",
                    note=(
                        f"{s['inside']}/{s['months']} months ({s['below']} below, "
                        f"{s['above']} above); plain CBPE {s['plain']}/{s['months']}; median "
                        f"width {s['width']:.4f}; mean (realised - estimate) / half-width "
                        f"{s['bias']:+.2f}; fell back to plain CBPE: {fell}; {n_smes} SMEs, "
                        f"{draws} draws"
                    ),
                )
    for (name, metric), (inside, months) in pooled.items():
        report.add(
            SECTION,
            f"pooled, {name}: {metric} inside",
            inside / months if months else float("nan"),
            "share",
            target=">= 0.9",
            note=(
                f"{inside}/{months} months over seeds {','.join(map(str, seeds))}; median over "
                f"seeds of the median width {statistics.median(widths[(name, metric)]):.4f}"
            ),
        )
