"""Evaluation of a trained model: out-of-time metrics (the headline), validation and
cross-fitted figures, unseen-SME metrics, the static rating and the oracle on the same rows,
calibration by grade, metrics by product, monthly stability, monotonicity on real OOT rows, and
an explained sample. `training.train.fit` calls `evaluate` once the bundle is assembled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import expit

from features.contract import PRODUCTS, RATING_SCALE
from features.pipeline import LABEL
from training import metrics as m
from training.exceptions import TrainingError
from training.model import Explanation, ScoringModel
from training.monotone import MonotonicityReport, check_monotonicity
from training.split import Split, months

if TYPE_CHECKING:
    from features.catalog import Feature
    from features.contract import Tables
    from training.config import Calibrated, Grown, Prepared, Progress, TrainConfig

STATIC_RATING = "static_rating_ordinal"
NO_LOAN = "no_loan"


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` measured."""

    metrics: dict[str, float]
    oot: pd.DataFrame  # OOT rows: sme_id, as_of, default_12m, features, pd, score, grade (+ truth)
    grades: pd.DataFrame
    products: pd.DataFrame
    stability: pd.DataFrame
    monotonicity: MonotonicityReport
    explanation: Explanation
    importance: pd.DataFrame
    score: np.ndarray  # the model's score of every matured row (positions of `Prepared.data`)


def evaluate(
    model: ScoringModel,
    prep: Prepared,
    grown: Grown,
    calibrated: Calibrated,
    cfg: TrainConfig,
    *,
    truth: pd.DataFrame | None,
    tables: Tables | None,
    say: Progress,
) -> Evaluation:
    """Every figure of the validation report (module docstring)."""
    data, X, y, split, cat = prep.data, prep.X, prep.y, prep.split, prep.catalog
    booster, calibration = grown.booster, calibrated.calibrator.calibration_
    say("evaluating out of time")
    z = calibration.logodds(grown.margin)
    pd_all = np.asarray(expit(z), dtype=np.float64)
    score = cfg.scale.score(z)
    oot_idx = split.oot
    y_oot, p_oot = y[oot_idx], pd_all[oot_idx]
    metrics: dict[str, float] = {}
    # the validation SMEs as scored by a booster that never saw them: the model, or when the
    # model was regrown on them (small data) the early-stopping booster (`Grown.val_margin`)
    p_val = np.asarray(expit(calibration.logodds(grown.val_margin)), dtype=np.float64)
    for name, yy, pp in (("oot", y_oot, p_oot), ("val", y[split.val], p_val)):
        for key, value in m.summary(yy, pp, cfg.ece_bins).items():
            metrics[f"{key}_{name}"] = value
    if grown.cross_fitted:  # else no `*_oof` metric: the validation report says why
        p_oof = np.asarray(expit(calibration.logodds(grown.oof)), dtype=np.float64)
        for key, value in m.summary(y[split.fit], p_oof, cfg.ece_bins).items():
            metrics[f"{key}_oof"] = value
    # the OOT rows whose SME a booster never saw: all of them when cross-fitted, else those of
    # the validation SMEs and of SMEs new in the OOT months (`training.train.cross_fit_for`)
    has = grown.unseen_rows
    p_unseen = np.asarray(expit(calibration.logodds(grown.unseen[has])), dtype=np.float64)
    sme = data["sme_id"].to_numpy()
    metrics["auc_oot_unseen_sme"] = m.auc(y_oot[has], p_unseen)
    metrics["ece_oot_unseen_sme"] = m.ece(y_oot[has], p_unseen, cfg.ece_bins)
    metrics["unseen_sme_rows"] = float(has.sum())  # what the two figures above stand on
    metrics["unseen_sme_smes"] = float(len(set(sme[oot_idx[has]])))
    metrics["unseen_sme_cross_fitted"] = 1.0 if grown.cross_fitted else 0.0
    metrics["oot_defaults_revealed_share"] = revealed_share(sme, y, split.train, oot_idx)
    metrics["best_iteration"] = float(grown.best_iteration)  # early stopping's choice
    metrics["model_regrown"] = 1.0 if grown.regrown else 0.0  # on fit and validation SMEs
    metrics["model_rounds"] = float(grown.rounds)  # the served booster's rounds (per booster)
    metrics["model_rows"] = float(grown.rows)  # the rows the served booster grew on
    metrics["val_log_loss_lgb"] = grown.val_loss
    metrics["calibration_a"] = calibrated.calibrator.a_
    metrics["calibration_b"] = calibrated.calibrator.b_
    metrics["calibration_by_months"] = 1.0 if calibrated.by_months else 0.0  # 0: cross-fitted
    metrics["calibration_rows"] = float(calibrated.rows)

    oot = data.iloc[oot_idx].reset_index(drop=True)
    oot["pd"] = p_oot
    oot["score"] = score[oot_idx]
    oot["grade"] = cfg.master_scale.grade(p_oot)

    static = _static_rating(oot, tables)
    if static is not None:
        has = ~np.isnan(static)
        metrics["auc_static_rating_oot"] = m.auc(y_oot[has], static[has])
        metrics["static_rating_coverage_oot"] = float(has.mean())
    if truth is not None:
        _oracle_metrics(oot, truth, metrics)

    if cfg.benchmark:
        _benchmark_metrics(data, y, split, cat, cfg, oot, metrics)
    _validator_metrics(y_oot, p_oot, cfg, metrics)

    grades = m.by_grade(y_oot, p_oot, cfg.master_scale)
    metrics["grades_within_ci_share_oot"] = float(grades.loc[grades["n"] > 0, "within_ci"].mean())
    products = (
        _product_metrics(oot, tables.loans, cfg.ece_bins) if tables is not None else pd.DataFrame()
    )
    for product, value in zip(products.get("product", []), products.get("auc", []), strict=True):
        metrics[f"auc_oot_{product}"] = float(value)
    stability = _stability(data, split, pd_all)

    say("checking monotonicity on OOT rows")
    # the compiled engine the explained sample uses too: its margins are booster.predict's bit
    # for bit, and its probes walk only the trees of the moved feature
    engine = model.treeshap()
    mono = check_monotonicity(
        engine.margin,
        X[oot_idx],
        cat,
        n_rows=cfg.monotonicity_rows,
        n_grid=cfg.monotonicity_grid,
        seed=cfg.seed,
        margin_varied=engine.margin_varied,
    )
    metrics["monotonicity_ok"] = 1.0 if mono.ok else 0.0
    metrics["monotonicity_violating_features"] = float(len(mono.violations()))

    say("explaining a sample of OOT rows")
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(len(oot), size=min(cfg.explain_rows, len(oot)), replace=False))
    # from LightGBM's matrix of those rows, already built (`model.explain` would build it again)
    explanation = model.explain_matrix(X[oot_idx[sample]], index=oot.index[sample])
    importance = pd.DataFrame(
        {
            "feature": model.feature_names,
            "gain": booster.feature_importance("gain"),
            "splits": booster.feature_importance("split"),
            "mean_abs_points": explanation.points.abs().mean().to_numpy(),
        }
    ).sort_values("mean_abs_points", ascending=False, kind="stable")
    return Evaluation(
        metrics=metrics,
        oot=oot,
        grades=grades,
        products=products,
        stability=stability,
        monotonicity=mono,
        explanation=explanation,
        importance=importance.reset_index(drop=True),
        score=score,
    )


def _benchmark_metrics(
    data: pd.DataFrame,
    y: np.ndarray,
    split: Split,
    catalog: tuple[Feature, ...],
    cfg: TrainConfig,
    oot: pd.DataFrame,
    metrics: dict[str, float],
) -> None:
    """The benchmark scorecard (`training.scorecard`) trained on the training rows of the same
    split and scored on the same OOT rows (`pd_benchmark_scorecard` column of `oot`)."""
    from training.scorecard import Scorecard

    names = [f.name for f in catalog]
    card = Scorecard(catalog, random_state=cfg.seed).fit(
        data.iloc[split.train][names], y[split.train]
    )
    p = card.predict(oot[names])
    oot["pd_benchmark_scorecard"] = p
    y_oot = oot[LABEL].to_numpy(dtype=np.float64)
    metrics["auc_oot_benchmark_scorecard"] = m.auc(y_oot, p)
    metrics["ks_oot_benchmark_scorecard"] = m.ks(y_oot, p)
    metrics["brier_oot_benchmark_scorecard"] = m.brier(y_oot, p)
    metrics["ece_oot_benchmark_scorecard"] = m.ece(y_oot, p, cfg.ece_bins)
    metrics["benchmark_scorecard_features"] = float(len(card.binnings_))
    if m.both_classes(y_oot):
        diff, low, high, _ = m.auc_difference(y_oot, oot["pd"].to_numpy(), p)
        metrics["auc_oot_minus_benchmark"] = diff
        metrics["auc_oot_minus_benchmark_low"] = low
        metrics["auc_oot_minus_benchmark_high"] = high


def _validator_metrics(
    y_oot: np.ndarray, p_oot: np.ndarray, cfg: TrainConfig, metrics: dict[str, float]
) -> None:
    """DeLong interval of the OOT AUC and the Herfindahl concentration of the OOT grades."""
    _, low, high = m.auc_ci(y_oot, p_oot)
    metrics["auc_oot_ci_low"] = low
    metrics["auc_oot_ci_high"] = high
    grades = cfg.master_scale.grade(p_oot)
    counts = pd.Series(grades).value_counts().to_numpy()
    metrics["herfindahl_grades_oot"] = m.herfindahl(counts)
    metrics["herfindahl_grades_oot_even"] = 1.0 / len(cfg.master_scale.grades)


def revealed_share(sme: np.ndarray, y: np.ndarray, train: np.ndarray, oot: np.ndarray) -> float:
    """Share of the OOT default rows (positions `oot`) whose SME has a training row (positions
    `train`) labelled 1: OOT defaults the training labels already record (module docstring).
    NaN without OOT defaults."""
    bad = y[oot] == 1
    if not bad.any():
        return float("nan")
    known = set(sme[train][y[train] == 1])
    return float(pd.Series(sme[oot][bad]).isin(known).mean())


def _static_rating(oot: pd.DataFrame, tables: Tables | None) -> np.ndarray | None:
    """The static onboarding rating of each OOT row as an ordinal (higher = worse), NaN when
    unrated: the panel's `static_rating_ordinal`, else the SMEs' `external_rating`."""
    if STATIC_RATING in oot.columns:
        return pd.to_numeric(oot[STATIC_RATING], errors="coerce").to_numpy(dtype=np.float64)
    if tables is None or "external_rating" not in tables.enterprises.columns:
        return None
    ordinal = {r: float(i) for i, r in enumerate(RATING_SCALE)}
    ent = tables.enterprises
    rating = dict(zip(ent["enterprise_id"].astype("str"), ent["external_rating"], strict=True))
    return np.array(
        [ordinal.get(str(rating.get(s)), np.nan) for s in oot["sme_id"]], dtype=np.float64
    )


def _oracle_metrics(oot: pd.DataFrame, truth: pd.DataFrame, metrics: dict[str, float]) -> None:
    """AUC of the simulator's true PD on the OOT rows it covers, and the model's on those rows."""
    need = {"sme_id", "as_of", "pd_true"}
    if not need <= set(truth.columns):
        raise TrainingError(f"the truth file needs columns {sorted(need)}, has {list(truth)}")
    t = pd.DataFrame(
        {
            "sme_id": truth["sme_id"].astype("str"),
            "as_of": pd.to_datetime(truth["as_of"]).astype("datetime64[ns]"),
            "pd_true": pd.to_numeric(truth["pd_true"], errors="coerce"),
        }
    ).drop_duplicates(["sme_id", "as_of"])
    keys = pd.DataFrame({"sme_id": oot["sme_id"], "as_of": oot["as_of"].astype("datetime64[ns]")})
    merged = keys.merge(t, on=["sme_id", "as_of"], how="left", validate="one_to_one")
    pd_true = merged["pd_true"].to_numpy(dtype=np.float64)
    has = ~np.isnan(pd_true)
    oot["pd_true"] = pd_true
    metrics["truth_coverage_oot"] = float(has.mean())
    if not has.any():
        return
    y = oot["default_12m"].to_numpy(dtype=np.float64)
    metrics["auc_oracle_oot"] = m.auc(y[has], pd_true[has])
    metrics["auc_model_on_truth_rows_oot"] = m.auc(y[has], oot["pd"].to_numpy()[has])
    metrics["ece_oracle_oot"] = m.ece(y[has], pd_true[has])


def active_products(loans: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """For each row (sme_id, as_of): one boolean column per product, True when the SME has a
    loan of that product outstanding at as_of (module docstring)."""
    out = pd.DataFrame(False, index=rows.index, columns=list(PRODUCTS))
    if loans.empty:
        return out
    keyed = pd.DataFrame(
        {"row": np.arange(len(rows)), "sme_id": rows["sme_id"].astype("str").to_numpy()}
    )
    keyed["as_of"] = pd.to_datetime(rows["as_of"]).to_numpy()
    lo = pd.DataFrame(
        {
            "sme_id": loans["sme_id"].astype("str"),
            "product": loans["product"].astype("str"),
            "disbursed": pd.to_datetime(loans["disbursed_date"]),
            "maturity": pd.to_datetime(loans["maturity_date"]),
            "default": pd.to_datetime(loans["default_date"]) if "default_date" in loans else pd.NaT,
        }
    )
    pairs = keyed.merge(lo, on="sme_id", how="inner")
    active = (
        (pairs["disbursed"] <= pairs["as_of"])
        & (pairs["as_of"] < pairs["maturity"])
        & ~(pairs["default"] <= pairs["as_of"])
    )
    hit = pairs.loc[active, ["row", "product"]].drop_duplicates()
    for product in PRODUCTS:
        r = hit.loc[hit["product"] == product, "row"].to_numpy()
        col = np.zeros(len(rows), dtype=bool)
        col[r] = True
        out[product] = col
    return out


def _product_metrics(oot: pd.DataFrame, loans: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    flags = active_products(loans, oot)
    groups: dict[str, np.ndarray] = {p: flags[p].to_numpy(dtype=bool) for p in PRODUCTS}
    groups[NO_LOAN] = ~np.asarray(flags.to_numpy(dtype=bool).any(axis=1))
    y = oot["default_12m"].to_numpy(dtype=np.float64)
    p = oot["pd"].to_numpy(dtype=np.float64)
    rows = []
    for name, mask in groups.items():
        n = int(mask.sum())
        rows.append(
            {
                "product": name,
                "n": n,
                "defaults": int(y[mask].sum()),
                "observed_rate": float(y[mask].mean()) if n else float("nan"),
                "mean_pd": float(p[mask].mean()) if n else float("nan"),
                "auc": m.auc(y[mask], p[mask]) if n else float("nan"),
                "ks": m.ks(y[mask], p[mask]) if n else float("nan"),
                "ece": m.ece(y[mask], p[mask], n_bins) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _stability(data: pd.DataFrame, split: Split, pd_all: np.ndarray) -> pd.DataFrame:
    """Per as-of month: period, n, default rate, mean PD, AUC and the PSI of the PD against
    the training months' PD distribution."""
    month = months(data["as_of"])
    y = data[LABEL].to_numpy(dtype=np.float64)
    train_pd = pd_all[split.train]
    oot_set = set(split.oot_months)
    masks = [(mo, month == mo) for mo in sorted(set(month))]
    psis = m.psi_of_groups(train_pd, [pd_all[mask] for _, mask in masks])  # binned once
    rows = []
    for (mo, mask), psi in zip(masks, psis, strict=True):
        rows.append(
            {
                "month": mo,
                "period": "oot" if mo in oot_set else "train",
                "n": int(mask.sum()),
                "default_rate": float(y[mask].mean()),
                "mean_pd": float(pd_all[mask].mean()),
                "auc": m.auc(y[mask], pd_all[mask]),
                "psi": psi,
            }
        )
    return pd.DataFrame(rows)
