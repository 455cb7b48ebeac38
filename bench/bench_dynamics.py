"""Ablation of dynamic features: would trends, volatility and change against the SME's own
baseline raise the leak-free OOT AUC? (issue 13; `SCF_RISK_BENCH_DYN_SMES`, default 2,000 SMEs,
60 simulated months, seed 1.)

The candidate features are derived from each SME's own earlier panel rows (point-in-time: a row
at t reads rows at t and before): for a few signals per family, the change against 3, 6 and 12
months before, the gap to the SME's own mean over the 12 months before (its baseline), and the
6-month standard deviation. A family is worth adding to the pipeline (`features/own.py`) only
when it raises the leak-free OOT AUC beyond noise; the paired DeLong interval of each gain is
reported beside it, and each family's information ceiling (`bench.bench_gap`: a regression of
logit(pd_true) on the same features) beside its AUC: what the family adds to what the features
know, before what the labels can teach.

Two more families read the SME's persistent state, which the issue-13 diagnosis found the model
misses most (`bench.bench_gap`): `statement history`, the mean of every statement the SME has
published (its long-run financial level, where the pipeline keeps only the latest) and the
per-year slope across them (its drift); `first-year baseline`, a few signals now against the
same signal over the SME's first year on record (the change since onboarding: accumulated
drift, with the firm's habit cancelled).

Two long-memory families estimate the persistent part of the latent health (its level, AR and
mean-reverting, and the drift accumulated since onboarding) from the monthly values of the
signals health drives (`LONG_MEMORY`), over the SME's panel rows on or before the as-of date:
`exponential means`, exponentially weighted means with half-lives of 3, 6, 12 and 24 months
(the steady-state Kalman filter of a level observed with noise); `whole history`, the mean of
every row so far, the current value against it, and the per-month slope across every row so far
(six rows or more).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench.report import Report

if TYPE_CHECKING:
    from features.catalog import Direction

SECTION = "dynamics"
SEED = 1
MONTHS = 60
SIGNALS: dict[str, dict[str, Direction]] = {
    "payment": {
        "ap_days_beyond_terms_90d": 1,
        "payment_index_365d": -1,
        "ap_late_rate_90d": 1,
        "ap_past_due_share": 1,
    },
    "receivable": {
        "dso_90d": 1,
        "ar_paid_late_share_90d": 1,
        "dilution_90d": 1,
        "dispute_rate_90d": 1,
        "ar_90p_share": 1,
    },
    "sales": {"sales_amount_90d": -1, "purchases_amount_90d": -1, "sales_count_90d": -1},
    "inventory": {
        "dio_90d": 1,
        "inventory_turnover_90d": -1,
        "pledged_share": 1,
        "exposure_to_sales_365d": 1,
    },
}


def dynamic_features(panel: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list]]:
    """The panel (sorted by SME and as-of) with the candidate columns, and each family's
    catalog entries (direction 0 for changes and volatility, the signal's for the baseline
    gap)."""
    from features.catalog import Feature

    out = panel.sort_values(["sme_id", "as_of"], kind="stable").reset_index(drop=True)
    sme = out["sme_id"]
    families: dict[str, list] = {}
    for family, signals in SIGNALS.items():
        feats = []
        for col, direction in signals.items():
            x = out[col].astype("float64")
            by = x.groupby(sme)
            for k in (3, 6, 12):
                name = f"{col}_chg{k}m"
                out[name] = x - by.shift(k)
                feats.append(Feature(name, family, f"{col} minus {k} months before", "", 0))
            name = f"{col}_vs_own12m"
            out[name] = x - by.transform(lambda s: s.shift(1).rolling(12, min_periods=3).mean())
            feats.append(
                Feature(name, family, f"{col} minus the SME's 12-month mean", "", direction)
            )
            name = f"{col}_vol6m"
            out[name] = by.transform(lambda s: s.rolling(6, min_periods=3).std())
            feats.append(Feature(name, family, f"6-month standard deviation of {col}", "", 0))
        families[family] = feats
    return out, families


STATEMENT_COLUMNS: dict[str, Direction] = {
    "current_ratio": -1,
    "debt_to_assets": 1,
    "net_margin": -1,
}
FIRST_YEAR: dict[str, tuple[str, str, str, Direction]] = {
    # signal: (column now, column at the end of the first year, comparison, direction)
    "ap_days_beyond_terms": (
        "ap_days_beyond_terms_180d",
        "ap_days_beyond_terms_365d",
        "difference",
        1,
    ),
    "dio": ("dio_180d", "dio_365d", "log_ratio", 1),
    "pledged_share": ("pledged_share", "pledged_share", "difference", 1),
    "exposure_to_sales": ("exposure_to_sales_365d", "exposure_to_sales_365d", "log_ratio", 1),
    "sales_amount": ("sales_amount_365d", "sales_amount_365d", "log_ratio", -1),
    "purchases_amount": ("purchases_amount_365d", "purchases_amount_365d", "log_ratio", -1),
    "dispute_rate": ("dispute_rate_365d", "dispute_rate_365d", "difference", 1),
    "payment_index": ("payment_index_365d", "payment_index_365d", "difference", -1),
}
"""Each signal now against its value at the end of the SME's first year on record."""


def statement_history(panel: pd.DataFrame, financials: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """Per panel row (same index): the mean and the per-year slope (two statements or more) of
    each of `STATEMENT_COLUMNS` over the statements published on or before the as-of date."""
    from features.catalog import Feature

    fin = financials.assign(published_date=pd.to_datetime(financials["published_date"]))
    fin = fin.sort_values(["sme_id", "published_date"], kind="stable").reset_index(drop=True)
    by = fin["sme_id"]
    x = (pd.to_datetime(fin["period_end"]) - pd.Timestamp("2000-01-01")).dt.days / 365.25
    k = by.groupby(by).cumcount() + 1
    sx, sxx = x.groupby(by).cumsum(), (x * x).groupby(by).cumsum()
    running = fin[["sme_id", "published_date"]].copy()
    feats = []
    for col, direction in STATEMENT_COLUMNS.items():
        y = fin[col].astype("float64")
        sy, sxy = y.groupby(by).cumsum(), (x * y).groupby(by).cumsum()
        spread = (sxx - sx * sx / k).where(k >= 2)
        running[f"stmt_mean_{col}"] = sy / k
        running[f"stmt_slope_{col}"] = (sxy - sx * sy / k) / spread.where(spread > 0)
        feats += [
            Feature(
                f"stmt_mean_{col}", "statements", f"mean {col} of every statement", "", direction
            ),
            Feature(f"stmt_slope_{col}", "statements", f"per-year slope of {col}", "", 0),
        ]
    keys = panel[["sme_id", "as_of"]].assign(as_of=pd.to_datetime(panel["as_of"]), _row=panel.index)
    merged = pd.merge_asof(
        keys.sort_values("as_of", kind="stable"),
        running.sort_values("published_date", kind="stable"),
        left_on="as_of",
        right_on="published_date",
        by="sme_id",
        direction="backward",
    ).set_index("_row")
    return merged.loc[panel.index, [f.name for f in feats]], feats


def first_year_baseline(panel: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """Per panel row (same index): each of `FIRST_YEAR`'s signals now against its 365-day value
    at the end of the SME's first year on record (11 months after its first panel row); missing
    before that date."""
    from features.catalog import Feature

    as_of = pd.to_datetime(panel["as_of"])
    base_day = as_of.groupby(panel["sme_id"]).transform("min") + pd.offsets.MonthEnd(11)
    basis = panel[as_of == base_day].set_index("sme_id")
    out = pd.DataFrame(index=panel.index)
    feats = []
    for signal, (column, first_column, how, direction) in FIRST_YEAR.items():
        first = panel["sme_id"].map(basis[first_column])
        first = first.where(as_of >= base_day)
        now = panel[column].astype("float64")
        name = f"{signal}_vs_first_year"
        if how == "difference":
            out[name] = now - first
        else:
            out[name] = np.log(now.where(now > 0) / first.where(first > 0))
        feats.append(
            Feature(name, "first-year baseline", f"{column} against year one", "", direction)
        )
    return out, feats


LONG_MEMORY: dict[str, tuple[bool, Direction]] = {
    # signal: (read on the log scale, direction)
    "ap_days_beyond_terms_90d": (False, 1),
    "ap_late_rate_90d": (False, 1),
    "dispute_rate_90d": (False, 1),
    "dilution_90d": (False, 1),
    "sales_amount_90d": (True, -1),
    "purchases_amount_90d": (True, -1),
    "dio_90d": (True, 1),
    "pledged_share": (False, 1),
    "exposure_to_sales_365d": (True, 1),
}
HALF_LIVES = (3, 6, 12, 24)  # months


def _long_memory_signal(panel: pd.DataFrame, column: str, log: bool) -> pd.Series:
    x = panel[column].astype("float64")
    return np.log(x.where(x > 0)) if log else x


def exponential_means(panel: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """Per panel row (same index; `panel` sorted by SME and as-of): exponentially weighted means
    of each `LONG_MEMORY` signal over the SME's rows so far, one per half-life in `HALF_LIVES`
    (weights normalised over the rows there are, missing values skipped)."""
    from features.catalog import Feature

    sme = panel["sme_id"]
    out, feats = {}, []
    for column, (log, direction) in LONG_MEMORY.items():
        by = _long_memory_signal(panel, column, log).groupby(sme)
        for half_life in HALF_LIVES:
            name = f"{column}_ewm{half_life}m"
            out[name] = by.transform(
                lambda s, h=half_life: s.ewm(halflife=h, ignore_na=True).mean()
            )
            what = f"{'log ' if log else ''}{column}, mean with a {half_life}-month half-life"
            feats.append(Feature(name, "exponential means", what, "", direction))
    return pd.DataFrame(out, index=panel.index), feats


def whole_history(panel: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """Per panel row (same index; `panel` sorted by SME and as-of): each `LONG_MEMORY` signal's
    mean over the SME's rows so far, the current value minus that mean, and the per-month OLS
    slope over those rows (six values or more)."""
    from features.catalog import Feature

    sme = panel["sme_id"]
    month = panel.groupby(sme).cumcount().astype("float64")
    out, feats = {}, []
    for column, (log, direction) in LONG_MEMORY.items():
        x = _long_memory_signal(panel, column, log)
        has = x.notna().astype("float64")
        y = x.fillna(0.0)
        k = has.groupby(sme).cumsum()
        sx, sxx = (month * has).groupby(sme).cumsum(), (month * month * has).groupby(sme).cumsum()
        sy, sxy = y.groupby(sme).cumsum(), (month * y).groupby(sme).cumsum()
        mean = (sy / k).where(k > 0)
        spread = sxx - sx * sx / k
        out[f"{column}_history_mean"] = mean
        out[f"{column}_vs_history"] = x - mean
        out[f"{column}_history_slope"] = ((sxy - sx * sy / k) / spread).where(
            (k >= 6) & (spread > 0)
        )
        feats += [
            Feature(f"{column}_history_mean", "whole history", f"mean {column}", "", direction),
            Feature(f"{column}_vs_history", "whole history", f"{column} - its mean", "", 0),
            Feature(f"{column}_history_slope", "whole history", f"slope of {column}", "", 0),
        ]
    return pd.DataFrame(out, index=panel.index), feats


def run(report: Report) -> None:
    from bench.bench_gap import information_ceiling
    from features.engines import build_panel
    from features.io import load_tables
    from features.pipeline import data_range, month_ends
    from features.simulate import SimConfig, generate_to_folder
    from training import metrics as m
    from training.train import TrainConfig, fit, panel_catalog

    n_smes = int(os.environ.get("SCF_RISK_BENCH_DYN_SMES", "2000"))
    folder = Path("data/bench") / f"sim-{n_smes}-seed{SEED}-{MONTHS}m" / "tables"
    if not (folder / "truth.parquet").is_file():
        generate_to_folder(SimConfig(n_smes=n_smes, seed=SEED, months=MONTHS), folder)
    tables = load_tables(folder)
    panel = build_panel(tables, month_ends(*data_range(tables)))
    truth = pd.read_parquet(folder / "truth.parquet")
    base = list(panel_catalog([str(c) for c in panel.columns]))
    panel, families = dynamic_features(panel)
    history, families["statement history"] = statement_history(panel, tables.financials)
    baseline, families["first-year baseline"] = first_year_baseline(panel)
    means, families["exponential means"] = exponential_means(panel)
    whole, families["whole history"] = whole_history(panel)
    panel = pd.concat([panel, history, baseline, means, whole], axis=1)
    config = TrainConfig(seed=0, benchmark=False)
    reference: pd.DataFrame | None = None
    every = [f for feats in families.values() for f in feats]
    for name, extra in [("none", []), *families.items(), ("all", every)]:
        catalog = [*base, *extra]
        cols = ["sme_id", "as_of", "default_12m", *(f.name for f in catalog)]
        result = fit(panel[cols], catalog, config, truth=truth, tables=tables)
        oot = result.oot
        auc = result.metrics["auc_oot"]
        note = f"{len(catalog)} features, leak-free split"
        if reference is None:
            reference = oot[["sme_id", "as_of", "default_12m", "pd"]]
        else:
            keyed = reference.merge(oot[["sme_id", "as_of", "pd"]], on=["sme_id", "as_of"])
            y = keyed["default_12m"].to_numpy(dtype=np.float64)
            new, old = (keyed[c].to_numpy(dtype=np.float64) for c in ("pd_y", "pd_x"))
            diff, low, high, _ = m.auc_difference(y, new, old)
            note += f"; gain over none {diff:+.4f} [95% CI {low:+.4f}, {high:+.4f}]"
        report.add(SECTION, f"OOT AUC, dynamic family: {name}", auc, "", note=note)
        ceiling = information_ceiling(panel[cols], truth, config, catalog)
        report.add(
            SECTION,
            f"OOT AUC, information ceiling, dynamic family: {name}",
            ceiling,
            "",
            note=f"regression on logit(pd_true) (bench.bench_gap), oracle "
            f"{result.metrics['auc_oracle_oot']:.4f}; {len(catalog)} features",
        )
