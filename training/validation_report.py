"""The evidence of a training run as files: plots (PNG), tables (CSV), catalog and metrics (JSON)
and the HTML validation report a model validator reads. Written into a folder, then logged to
MLflow by `training.registry`."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from training.evaluate import STATIC_RATING
from training.split import CROSS_FITTED
from training.train import TrainResult, cross_fit_for

PLOTS = ("roc", "calibration_by_grade", "shap_summary", "importance", "stability")


def write_artifacts(result: TrainResult, folder: Path, info: dict[str, Any]) -> list[Path]:
    """Write every artifact of a run into `folder` (created); `info` adds facts of the run
    (run id, data fingerprints, source). Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    written = [
        _plot_roc(result, plots / "roc.png"),
        _plot_grades(result, plots / "calibration_by_grade.png"),
        _plot_shap(result, plots / "shap_summary.png"),
        _plot_importance(result, plots / "importance.png"),
        _plot_stability(result, plots / "stability.png"),
    ]
    tables = folder / "tables"
    tables.mkdir(exist_ok=True)
    for name, frame in _tables(result).items():
        path = tables / f"{name}.csv"
        frame.to_csv(path, index=False)
        written.append(path)
    catalog = folder / "catalog.json"
    catalog.write_text(
        json.dumps([asdict(f) for f in result.model.catalog], indent=2), encoding="utf-8"
    )
    metrics = folder / "metrics.json"
    metrics.write_text(
        json.dumps(_finite(result.metrics), indent=2, sort_keys=True), encoding="utf-8"
    )
    report = folder / "validation_report.html"
    report.write_text(validation_report(result, info, plots), encoding="utf-8")
    return [*written, catalog, metrics, report]


def _tables(result: TrainResult) -> dict[str, pd.DataFrame]:
    out = {
        "calibration_by_grade": result.grades,
        "stability_by_month": result.stability,
        "monotonicity": result.monotonicity.to_frame(),
        "importance": result.importance,
    }
    if not result.products.empty:
        out["metrics_by_product"] = result.products
    if result.tuning:
        out["tuning_trials"] = pd.DataFrame(result.tuning)
    return out


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if np.isfinite(v) else None) for k, v in values.items()}


# -- plots (matplotlib's object API: no global pyplot state, Agg canvas) ------------------------
def _figure(width: float = 6.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _plot_roc(result: TrainResult, path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    y = result.oot["default_12m"].to_numpy()
    curves: list[tuple[str, np.ndarray, float | None]] = [
        ("model", result.oot["pd"].to_numpy(), result.metrics.get("auc_oot"))
    ]
    if STATIC_RATING in result.oot:
        rating = result.oot[STATIC_RATING].to_numpy(dtype=float)
        has = ~np.isnan(rating)
        if has.any():  # unrated rows drawn at the median rating
            rating = np.where(has, rating, np.median(rating[has]))
            curves.append(("static rating", rating, result.metrics.get("auc_static_rating_oot")))
    if "pd_true" in result.oot and result.oot["pd_true"].notna().all():
        oracle = result.oot["pd_true"].to_numpy(dtype=float)
        curves.append(("oracle (pd_true)", oracle, result.metrics.get("auc_oracle_oot")))
    for label, score, auc in curves:
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})" if auc is not None else label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, out of time")
    ax.legend(loc="lower right")
    fig.savefig(path)
    return path


def _plot_grades(result: TrainResult, path: Path) -> Path:
    g = result.grades[result.grades["n"] > 0]
    fig = _figure(7.0, 4.5)
    ax = fig.subplots()
    x = np.arange(len(g))
    rate = g["observed_rate"].to_numpy()
    err = np.vstack([rate - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - rate])
    ax.errorbar(x, rate, yerr=err, fmt="o", capsize=3, label="observed default rate (95% CI)")
    ax.plot(x, g["mean_pd"].to_numpy(), "s", color="tab:red", label="mean PD")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xticks(x, g["grade"].tolist())
    ax.set(xlabel="grade", ylabel="12-month default rate", title="Calibration by grade, OOT")
    ax.legend(loc="upper left")
    fig.savefig(path)
    return path


def _plot_shap(result: TrainResult, path: Path) -> Path:
    """SHAP summary (beeswarm) of the explained OOT sample, in score points (negative = the
    feature lowers the score, i.e. adds risk); colour = the feature's value rank."""
    expl = result.explanation
    top = result.importance["feature"].tolist()[:15]
    fig = _figure(7.5, 0.35 * len(top) + 1.5)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    names = [f.name for f in result.model.catalog]
    values = result.model.prepare(result.oot.loc[expl.points.index, names])
    for row, name in enumerate(reversed(top)):
        pts = expl.points[name].to_numpy()
        col = values[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            rank = np.asarray(col.cat.codes, dtype=float)
        else:
            rank = np.asarray(col, dtype=float)
        ok = ~np.isnan(rank)
        colour = np.full(len(rank), 0.5)
        if ok.sum() > 1:
            colour[ok] = pd.Series(rank[ok]).rank(pct=True).to_numpy()
        jitter = rng.uniform(-0.3, 0.3, size=len(pts))
        ax.scatter(pts, row + jitter, c=colour, cmap="coolwarm", s=4, alpha=0.6, linewidths=0)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(np.arange(len(top)), list(reversed(top)))
    ax.set(
        xlabel="score points (SHAP, calibrated); colour: feature value, blue low to red high",
        title="SHAP summary, OOT sample",
    )
    fig.savefig(path)
    return path


def _plot_importance(result: TrainResult, path: Path) -> Path:
    imp = result.importance.head(20).iloc[::-1]
    fig = _figure(7.5, 0.3 * len(imp) + 1.5)
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    ax1.barh(imp["feature"], imp["mean_abs_points"])
    ax1.set(xlabel="mean |score points|", title="Impact")
    ax2.barh(imp["feature"], imp["gain"] / max(imp["gain"].sum(), 1e-12), color="tab:orange")
    ax2.set(xlabel="share of split gain", title="LightGBM gain")
    fig.savefig(path)
    return path


def _plot_stability(result: TrainResult, path: Path) -> Path:
    s = result.stability
    fig = _figure(8.0, 4.5)
    ax = fig.subplots()
    x = np.arange(len(s))
    ax.plot(x, s["default_rate"], "o-", label="observed default rate")
    ax.plot(x, s["mean_pd"], "s--", label="mean PD")
    ax2 = ax.twinx()
    ax2.plot(x, s["auc"], "^-", color="tab:green", label="AUC")
    ax2.set_ylabel("AUC")
    oot = np.flatnonzero((s["period"] == "oot").to_numpy())
    if oot.size:
        ax.axvspan(oot[0] - 0.5, oot[-1] + 0.5, color="grey", alpha=0.15, label="OOT")
    step = max(1, len(s) // 12)
    ax.set_xticks(x[::step], s["month"].tolist()[::step], rotation=45)
    ax.set(ylabel="12-month default rate", title="Stability across as-of months")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    fig.savefig(path)
    return path


# -- the HTML validation report -----------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
.ok{color:#176f2c;font-weight:bold}.bad{color:#b00020;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.kv td:first-child{text-align:left}.why{text-align:left;color:#555}
"""


def human(v: float) -> str:
    """A number as a person reads it: 4 decimals, thousands separated, tiny values as
    '< 0.0001' (never '1.735e-18'), n/a for missing."""
    if not np.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    if abs(v) < 1e-4:
        return "< 0.0001" if v > 0 else "> -0.0001"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4f}"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, float_format=human, na_rep="")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _kv(pairs: Sequence[tuple[str, object]]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in pairs
    )
    return f'<table class="kv">{rows}</table>'


def _fmt(v: object) -> str:
    if isinstance(v, float | np.floating):
        return human(float(v))
    return str(v)


def _explained(rows: Sequence[tuple[str, object, str]]) -> str:
    """A table of (metric, value, one line saying what it means)."""
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td>"
        f"<td class='why'>{html.escape(why)}</td></tr>"
        for k, v, why in rows
    )
    return f'<table class="kv">{body}</table>'


def _with_ci(mt: dict[str, float], key: str, low: str, high: str) -> str:
    nan = float("nan")
    return f"{human(mt.get(key, nan))} [{human(mt.get(low, nan))}, {human(mt.get(high, nan))}]"


def unseen_sme_method(result: TrainResult) -> str:
    """How the unseen-SME figure was obtained and what it stands on (`training.train.grow`)."""
    mt = result.metrics
    on = f"{int(mt['unseen_sme_rows']):,} OOT rows of {int(mt['unseen_sme_smes']):,} SMEs"
    if mt["unseen_sme_cross_fitted"] == 1.0:
        return (
            f"every OOT row ({on}): fit SMEs scored by the cross-fitting booster grown without "
            "their fold, validation SMEs by a booster grown on the fit SMEs only, SMEs new in "
            "the OOT months by the model"
        )
    return (
        f"{on}, those of the validation SMEs (scored by a booster grown on the fit SMEs only) "
        "and of SMEs new in the OOT months (the model); the OOT rows of the fit SMEs are left "
        "out (" + cross_fit_for(result.config, result.split).why + ")"
    )


def failed_tests(result: TrainResult) -> list[str]:
    """Every validation test the model fails, one sentence each (the report's headline)."""
    r, mt = result, result.metrics
    out: list[str] = []
    if not r.monotonicity.ok:
        out.append("monotonicity: " + "; ".join(r.monotonicity.violations()))
    max_ece = float(r.model.thresholds.get("promotion_max_ece", np.inf))
    if mt.get("ece_oot", 0.0) > max_ece:
        out.append(f"calibration: OOT ECE {human(mt['ece_oot'])} above {human(max_ece)}")
    g = r.grades[r.grades["n"] > 0]
    for _, row in g[~g["jeffreys_pass"].astype(bool)].iterrows():
        out.append(
            f"Jeffreys test, grade {row['grade']}: PD {human(row['mean_pd'])} too low for "
            f"{int(row['defaults'])} defaults in {int(row['n'])} "
            f"(p = {human(row['jeffreys_p_value'])})"
        )
    for _, row in g[~g["within_ci"].astype(bool)].iterrows():
        out.append(
            f"binomial test, grade {row['grade']}: mean PD {human(row['mean_pd'])} outside the "
            f"95% interval [{human(row['ci_low'])}, {human(row['ci_high'])}] of the observed "
            f"rate {human(row['observed_rate'])}"
        )
    if mt.get("auc_oot_minus_benchmark_high", 1.0) < 0:
        out.append("benchmark: the scorecard ranks significantly better than the model")
    if not (mt.get("auc_oot_ci_low", 1.0) > 0.5):
        out.append("discrimination: the OOT AUC interval reaches 0.5 (no better than chance)")
    hhi = mt.get("herfindahl_grades_oot", 0.0)
    if hhi > 0.3:
        out.append(f"concentration: Herfindahl index of the grades {human(hhi)} above 0.30")
    if r.config.embargo < r.config.horizon_days:
        out.append("protocol: the OOT figures carry label leakage (embargo shorter than horizon)")
    return out


def validation_report(result: TrainResult, info: dict[str, Any], plots: Path) -> str:
    """A self-contained HTML page (plots embedded): data and population, metrics, calibration,
    stability across months, top drivers, monotonicity check."""
    r, mt, split = result, result.metrics, result.split
    data = r.panel
    failed = failed_tests(result)
    mono_ok = r.monotonicity.ok
    mono_class, mono_text = ("ok", "passed") if mono_ok else ("bad", "FAILED")
    calibration_text = (
        f"is fitted on the held-out training months {', '.join(split.calibration_months)} "
        f"({len(split.cal):,} rows), scored by a booster grown with the same settings on the fit "
        "SMEs' earlier months: they stand to that booster as the OOT months stand to the model."
        if split.calibration_months
        else "is fitted on cross-fitted margins of the fit SMEs (each scored by a booster grown "
        f"without its fold), not on held-out months: "
        f"{split.calibration_note.removesuffix(CROSS_FITTED)}."
    )
    headline = [
        (
            "OOT AUC [95% DeLong CI]",
            _with_ci(mt, "auc_oot", "auc_oot_ci_low", "auc_oot_ci_high"),
            "probability that a defaulter gets a higher PD than a non-defaulter; 0.5 is chance",
        ),
        ("OOT Gini", mt.get("gini_oot"), "2·AUC − 1, the accuracy ratio"),
        (
            "OOT KS",
            mt.get("ks_oot"),
            "largest gap between the PD distributions of defaulters and non-defaulters",
        ),
        (
            "OOT Brier score",
            mt.get("brier_oot"),
            "mean squared error of the PD against the 0/1 outcome; lower is better",
        ),
        (
            "OOT log loss",
            mt.get("log_loss_oot"),
            "mean negative log-likelihood of the outcomes; lower is better",
        ),
        (
            "OOT ECE (10 equal-count bins)",
            mt.get("ece_oot"),
            "mean gap between PD and observed default rate over bins of similar PD",
        ),
        ("OOT PR-AUC", mt.get("pr_auc_oot"), "average precision of ranking defaulters first"),
        (
            "OOT default rate / mean PD",
            f"{human(mt['default_rate_oot'])} / {human(mt['mean_pd_oot'])}",
            "observed share of defaults against the average predicted PD",
        ),
        (
            "benchmark scorecard AUC (OOT)",
            mt.get("auc_oot_benchmark_scorecard", float("nan")),
            "a logistic scorecard on monotone bins, same training rows: what the booster must beat",
        ),
        (
            "model − scorecard AUC [95% CI]",
            _with_ci(
                mt,
                "auc_oot_minus_benchmark",
                "auc_oot_minus_benchmark_low",
                "auc_oot_minus_benchmark_high",
            ),
            "paired DeLong interval of the gain over the benchmark on the same OOT rows",
        ),
        (
            "static rating AUC (OOT)",
            mt.get("auc_static_rating_oot", float("nan")),
            "the onboarding rating used as a score: the status quo",
        ),
        (
            "oracle AUC, pd_true (OOT)",
            mt.get("auc_oracle_oot", float("nan")),
            "the simulator's true PD: the best any model could rank (simulated data only)",
        ),
        (
            "OOT AUC / ECE, each SME scored by a booster that never saw it",
            f"{human(mt['auc_oot_unseen_sme'])} / {human(mt['ece_oot_unseen_sme'])}",
            "how the model does on new clients: " + unseen_sme_method(result),
        ),
        (
            "OOT default rows whose default a training label already records",
            mt.get("oot_defaults_revealed_share", float("nan")),
            "0 under the leak-free protocol; above 0 the OOT figures are optimistic",
        ),
        (
            "Herfindahl index of OOT grades",
            f"{human(mt.get('herfindahl_grades_oot', np.nan))} "
            f"(even spread: {human(mt.get('herfindahl_grades_oot_even', np.nan))})",
            "sum of squared grade shares: near 1 means most rows crowd into one grade",
        ),
        (
            "validation AUC / cross-fitted AUC and ECE (training months)",
            f"{human(mt['auc_val'])} / "
            + (
                f"{human(mt['auc_oof'])}, {human(mt['ece_oof'])}"
                if "auc_oof" in mt
                else "not computed"
            ),
            "the same figures inside the training months, for SMEs the booster did not fit"
            + (
                " (validation SMEs: the early-stopping booster, grown on the fit SMEs only; the "
                "model was regrown on them)"
                if mt.get("model_regrown") == 1.0
                else ""
            )
            + (
                ""
                if "auc_oof" in mt
                else "; no cross-fitted figures: the cross-fitting boosters were not grown ("
                + cross_fit_for(result.config, result.split).why
                + ")"
            ),
        ),
    ]
    population = [
        ("input panel rows", r.panel_rows),
        ("matured rows", len(data)),
        ("SMEs (matured rows)", data["sme_id"].nunique()),
        ("as-of months", f"{split.train_months[0]} .. {split.oot_months[-1]}"),
        ("training months", f"{split.train_months[0]} .. {split.train_months[-1]}"),
        ("OOT months", f"{split.oot_months[0]} .. {split.oot_months[-1]}"),
        (
            "rows: fit / validation / OOT",
            f"{len(split.fit)} / {len(split.val)} / {len(split.oot)}",
        ),
        (
            "embargoed months (between training and OOT)",
            ", ".join(split.embargoed_months) or "none",
        ),
        (
            "default rate: training months / OOT",
            f"{data['default_12m'].to_numpy()[split.train].mean():.4f} / "
            f"{mt['default_rate_oot']:.4f}",
        ),
        ("features", len(r.model.catalog)),
        *((k, v) for k, v in info.items()),
    ]
    model_facts = [
        ("best iteration (early stopping on validation SMEs)", int(mt["best_iteration"])),
        (
            "final model grown on",
            f"fit and validation SMEs ({int(mt['model_rows']):,} rows), regrown with "
            f"{int(mt['model_rounds'])} rounds after early stopping"
            if mt.get("model_regrown") == 1.0
            else f"fit SMEs ({int(mt['model_rows']):,} rows): the early-stopping booster",
        ),
        (
            "calibration: z = a + b·margin",
            f"a = {mt['calibration_a']:.5f}, b = {mt['calibration_b']:.5f}",
        ),
        (
            "score scale",
            f"PDO {r.model.scale.pdo:g}, {r.model.scale.base_score:g} points at "
            f"{r.model.scale.base_odds:g}:1 (factor {r.model.scale.factor:.4f}, "
            f"offset {r.model.scale.offset:.4f})",
        ),
        (
            "engine / seed / tuning trials",
            f"{r.config.engine} / {r.config.seed} / {r.config.tune_trials}",
        ),
        *((f"lightgbm {k}", v) for k, v in r.lgb_params.items() if k != "monotone_constraints"),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>scf-risk validation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Validation report: SME 12-month default model</h1>",
        (
            "<p class='bad'>Failed tests:</p><ul>"
            + "".join(f"<li class='bad'>{html.escape(t)}</li>" for t in failed)
            + "</ul>"
            if failed
            else "<p class='ok'>Every validation test passed.</p>"
        ),
        f"<p><b>Protocol:</b> {html.escape(r.config.protocol)}. The unseen-SME figure scores "
        f"OOT rows with a booster that never saw their SME: {html.escape(unseen_sme_method(r))}."
        "</p>",
        f"<p>Monotonicity check: <span class='{mono_class}'>{mono_text}</span>. "
        f"OOT AUC {_fmt(mt.get('auc_oot'))}, ECE {_fmt(mt.get('ece_oot'))}.</p>",
        "<h2>1. Data and population</h2>",
        "<p>Population and labels follow the data contract: one row per SME with an invoice in "
        "the past 365 days and no earlier default, per month end; immature rows (horizon beyond "
        "the data) are excluded. Out-of-time: the last OOT months; the training months are "
        "split by SME into fit and validation (early stopping) sets"
        + (
            ", and the model is then grown again on both with the rounds early stopping chose "
            "(small data), so the validation figures come from the early-stopping booster"
            if mt.get("model_regrown") == 1.0
            else ""
        )
        + "; the log-odds calibration "
        f"{calibration_text}</p>",
        _kv(population),
        "<h2>2. Model</h2>",
        _kv(model_facts),
        "<h2>3. Metrics, out of time</h2>",
        _explained(headline),
        _img(plots / "roc.png", "ROC curves"),
    ]
    if not r.products.empty:
        parts += [
            "<h3>By product</h3>",
            "<p>A row counts for a product when the SME has a loan of that product outstanding "
            "at the as-of date (disbursed on or before, maturing after, not defaulted); "
            "<code>no_loan</code>: none outstanding.</p>",
            _table(r.products),
        ]
    parts += [
        "<h2>4. Calibration</h2>",
        "<p>Observed default rate per grade of the master scale with 95% Clopper–Pearson "
        "intervals (Wilson alongside), against the mean PD of the grade (binomial test: "
        "<code>within_ci</code>), and the Jeffreys test of each grade's PD (ECB IRB "
        "validation: p below 0.05 rejects the PD as too low). ECE uses 10 "
        "equal-count bins of predicted PD.</p>",
        _table(r.grades),
        _img(plots / "calibration_by_grade.png", "calibration by grade"),
        "<h2>5. Stability across months</h2>",
        "<p>Per as-of month: default rate, mean PD, AUC and the PSI of the PD distribution "
        "against the training months.</p>",
        _table(r.stability),
        _img(plots / "stability.png", "stability"),
        "<h2>6. Top drivers</h2>",
        _table(r.importance.head(20)),
        _img(plots / "shap_summary.png", "SHAP summary"),
        _img(plots / "importance.png", "importance"),
        "<h2>7. Monotonicity check</h2>",
        f"<p>Every feature with a risk direction in the catalog is constrained in LightGBM and "
        f"verified: {r.config.monotonicity_rows} real OOT rows, each re-scored over a grid of "
        f"up to {r.config.monotonicity_grid} quantiles of the feature; the margin may not move "
        f"against the direction by more than {r.monotonicity.tolerance:g}. Result: "
        f"<span class='{mono_class}'>{mono_text}</span>.</p>",
        _table(r.monotonicity.to_frame()),
    ]
    if result.tuning:
        parts += ["<h2>8. Tuning trials</h2>", _table(pd.DataFrame(result.tuning))]
    parts.append("</body></html>")
    return "\n".join(parts)
