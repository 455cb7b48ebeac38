"""Ablation of dynamic features: would trends, volatility and change against the SME's own
baseline raise the leak-free OOT AUC? (issue 13; `SCF_RISK_BENCH_DYN_SMES`, default 2,000 SMEs,
60 simulated months, seed 1.)

The candidate features are derived from each SME's own earlier panel rows (point-in-time: a row
at t reads rows at t and before): for a few signals per family, the change against 3, 6 and 12
months before, the gap to the SME's own mean over the 12 months before (its baseline), and the
6-month standard deviation. A family is worth adding to the pipeline (`features/own.py`) only
when it raises the leak-free OOT AUC beyond noise; the paired DeLong interval of each gain is
reported beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import Report

SECTION = "dynamics"
SEED = 1
MONTHS = 60
SIGNALS: dict[str, dict[str, int]] = {
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


def run(report: Report) -> None:
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
    panel, families = dynamic_features(panel)
    base = list(panel_catalog([str(c) for c in panel.columns if "_chg" not in str(c)]))
    base = [f for f in base if not f.name.endswith(("_vs_own12m", "_vol6m"))]
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
            diff, low, high, _ = m.auc_difference(y, keyed["pd_y"], keyed["pd_x"])
            note += f"; gain over none {diff:+.4f} [95% CI {low:+.4f}, {high:+.4f}]"
        report.add(SECTION, f"OOT AUC, dynamic family: {name}", auc, "", note=note)
