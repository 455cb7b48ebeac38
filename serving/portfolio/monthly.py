"""The monthly run of a risk team: score, materialise, monitor, early warnings, estimated
performance, in one folder of reports (`scf-risk monthly`).

Files (written into a temporary sibling folder, renamed into place at the end):

- ``scores.parquet`` — every SME in the population at the as-of date (`scf-risk score`'s file);
- ``monitor.html`` / ``monitor.json`` — the monitoring report and its summary, whose
  ``actions`` list is what to do this month, with the estimated performance per month;
- ``early_warnings.csv`` — the workout team's list: grades and PDs at both dates, the top reasons
  now and the features whose points fell most (numbers rounded: PD 4 decimals, points 1);
- ``performance.csv`` — per month end up to the as-of date: the estimated default rate, AUC and
  ECE with 95 % intervals (`serving.portfolio.performance`: CBPE on the PDs recalibrated on the
  matured months after the model's training window, or plain CBPE when too few, per month in
  ``interval``), the plain CBPE figures beside them and, where matured, the realised ones.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.scratch import sibling
from serving.portfolio.monitor import MonitorResult

if TYPE_CHECKING:
    from features.contract import Tables
    from training.bundle import LoadedModel

FILES: tuple[str, ...] = (
    "scores.parquet",
    "monitor.html",
    "monitor.json",
    "early_warnings.csv",
    "performance.csv",
)


def warnings_frame(result: MonitorResult) -> pd.DataFrame:
    """The early-warning list as the CSV shows it (rounded numbers, reasons and drivers as
    text), most severe first (highest PD now)."""
    w = result.warnings

    def reasons(items: list[dict[str, Any]]) -> str:
        return "; ".join(f"{r['feature']} ({r['points']:+.1f})" for r in items)

    def drivers(items: list[dict[str, Any]] | None) -> str:
        return "; ".join(
            f"{d['feature']}: {d['points_before']:+.1f} -> {d['points_now']:+.1f} "
            f"({d['change']:+.1f})"
            for d in items or []
        )

    return pd.DataFrame(
        {
            "sme_id": w["sme_id"],
            "rule": w["rule"],
            "grade_before": w["grade_before"].replace("nan", ""),
            "grade_now": w["grade_now"],
            "notches_down": w["notches_down"],
            "pd_before": w["pd_before"].round(4),
            "pd_now": w["pd_now"].round(4),
            "top_reasons_now": [reasons(r) for r in w["reasons"]],
            "points_fallen_most": [drivers(d) for d in w.get("drivers", [None] * len(w))],
        }
    )


@dataclass(frozen=True)
class MonthlyRun:
    folder: Path
    doc: dict[str, Any]
    performance: pd.DataFrame


def monthly(
    tables: Tables,
    loaded: LoadedModel,
    as_of: object,
    out: Path,
    *,
    method: str,
    materialise: Any = None,
    log: Any = None,
) -> MonthlyRun:
    """Run the month (module docstring) into folder `out` (must not exist or be empty).
    `materialise(features)` stores the latest features for the service; `log(doc, files)`
    records the run (MLflow) before the folder is put in place."""
    from features.exceptions import FeatureError
    from features.pipeline import data_range, month_ends
    from serving.portfolio.batch import write_scores
    from serving.portfolio.monitor import drift_profile, monitor, summary, to_date
    from serving.portfolio.performance import performance_by_month, performance_doc
    from serving.portfolio.report import render_monitor

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FeatureError(f"{out}: exists and is not an empty folder; choose a new --out")
    when = to_date(as_of)
    result = monitor(tables, loaded, drift_profile(loaded), when, method=method)
    doc = summary(result)
    doc["kind"] = "monthly"
    start, _ = data_range(tables)
    performance = performance_by_month(tables, loaded, month_ends(start, when), when)
    doc["performance"] = performance_doc(performance)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(out, ".partial", folder=True)
    try:
        write_scores(result.now.scores, tmp / "scores.parquet")
        (tmp / "monitor.html").write_text(render_monitor(doc), encoding="utf-8")
        import json

        (tmp / "monitor.json").write_text(
            json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False), encoding="utf-8"
        )
        warnings_frame(result).to_csv(tmp / "early_warnings.csv", index=False)
        perf = performance.copy()
        perf["as_of"] = perf["as_of"].dt.date
        perf.round(4).to_csv(tmp / "performance.csv", index=False)
        if materialise is not None:
            materialise(result.now.features)
        if log is not None:
            log(doc, [tmp / name for name in FILES])
        if out.exists():
            out.rmdir()
        os.chmod(tmp, 0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MonthlyRun(out, doc, performance)
