"""Experiment (issue 13): can the benchmark scorecard's log-odds lift the booster's OOT AUC?

The simulator's oracle log-odds are close to additive and monotone in its latent components,
which is where a monotone-binned logistic scorecard is strong: on the 60-month demo the
scorecard is level with the booster (20,000 SMEs: 0.8475 against 0.8468). Three ways of using
it, each measured against the current model on the same OOT rows, per data seed and as medians:

- ``blend (cal months)``: logistic regression of the label on the booster's margin and the
  scorecard's log-odds, fitted on the calibration months only, as the calibration is
  (`training.split`): the calibration booster's margins (grown on the fit rows of the earlier
  months, the model's rounds) and the margins of a scorecard fitted on the training rows of the
  same earlier months (embargoed), both on the held-out months' rows. The weights are then
  applied to the model's booster and the benchmark scorecard (fitted on all training rows, as
  `training.evaluate` fits it) on the OOT rows. No OOT label is used. The scorecard's logistic
  regression gives some WoE columns negative weights (collinear features): a blend with it is
  not monotone in those features, so the blend is measured again with scorecards whose weights
  are held >= 0 (``weights >= 0``), the version a monotone model could serve.
- ``blend (val SMEs)``: the same regression on the validation SMEs' rows: the model's margins
  (its early stopping saw these rows, so they flatter the booster a little) and a scorecard fitted
  on the fit SMEs only; applied on OOT with that scorecard.
- ``linear_tree``: the model's parameters with ``linear_tree=True`` (a linear model in each
  leaf). LightGBM accepts the monotone constraints with it but does not enforce them on the leaf
  models (the monotonicity check on OOT rows is reported), cannot give SHAP values for it, and
  `training.treeshap` refuses linear trees; categorical features split but do not enter the leaf
  models. Beside it, as a diagnostic, the model's booster without monotone constraints (is a
  gain of linear_tree its linear leaves, or its escape from the constraints?).
- ``init from scorecard``: a booster that starts from the log-odds of a scorecard fitted on the
  fit SMEs (``init_score``) and boosts the residual, with early stopping on the validation SMEs
  (their init score from the same scorecard, to which they are new), at the model's tree size
  and with 4 leaves; and, as a diagnostic only (it gives up the monotone constraints), at the
  model's tree size without them.

Each variant's OOT AUC, its DeLong difference from the current model on the same rows (95 %
interval) and its gap to the oracle (the simulator's pd_true) are reported. The current model is
grown exactly as `training.train.grow` grows it (same rows, bins, parameters, rounds); its OOT
AUC equals `bench quality`'s. The data seeds are `SCF_RISK_BENCH_BLEND_SEEDS` (default 1,2,3),
the size `SCF_RISK_BENCH_BLEND_SMES` (default 2,000 SMEs, 60 months; cached as
`bench.bench_train.dataset`).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.report import Report

SECTION = "blend"
SEEDS = (1, 2, 3)
SMES = 2000
FEW_LEAVES = 4
CI: dict[str, tuple[str, str]] = {
    "diff": ("low", "high"),
    "vs_scorecard": ("vs_scorecard_low", "vs_scorecard_high"),
}
"""The figures reported with their 95 % DeLong intervals: (low, high) keys."""


@dataclass(frozen=True)
class Variant:
    """One variant's OOT score (any increasing transform of its PD) and what it needs said."""

    name: str
    score: np.ndarray
    note: str = ""
    weights: tuple[float, float] | None = None  # a blend's (booster, scorecard) weights


def _logodds(card: Any, frame: pd.DataFrame) -> np.ndarray:
    """A scorecard's log-odds (its logistic regression's decision function)."""
    return np.asarray(card.model_.decision_function(card._woe(frame)), dtype=np.float64)


def _monotone_logodds(card: Any, fit: pd.DataFrame, y: np.ndarray) -> Callable[..., np.ndarray]:
    """The scorecard's bins with non-negative weights: an L2 logistic regression on the WoE
    columns (the scorecard's C) with every coefficient >= 0, so that each feature's term rises
    with its WoE, i.e. keeps the direction of its bins (a blend with a positive weight is then
    monotone in each feature as the booster is). Returns the log-odds function of a frame."""
    from scipy.optimize import minimize
    from scipy.special import expit

    W = card._woe(fit)
    k = W.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k]
        z = W @ w + b
        nll = float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(w @ w) / card.C
        r = expit(z) - y
        return nll, np.append(W.T @ r + w / card.C, r.sum())

    start = np.append(np.zeros(k), np.log(y.mean() / (1 - y.mean())))
    bounds = [(0.0, None)] * k + [(None, None)]
    theta = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds).x

    def logodds(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(card._woe(frame) @ theta[:k] + theta[k], dtype=np.float64)

    return logodds


def _stack(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.column_stack([first, second])


def _blend(x_fit: np.ndarray, y_fit: np.ndarray) -> Any:
    """An unpenalised logistic regression of the label on two margins."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1e6, max_iter=1000).fit(x_fit, y_fit)


def _oracle(data: pd.DataFrame, rows: np.ndarray, truth: pd.DataFrame | None) -> np.ndarray:
    """pd_true of the rows (NaN where the truth has none)."""
    if truth is None:
        return np.full(len(rows), np.nan)
    t = pd.DataFrame(
        {
            "sme_id": truth["sme_id"].astype("str"),
            "as_of": pd.to_datetime(truth["as_of"]).astype("datetime64[ns]"),
            "pd_true": pd.to_numeric(truth["pd_true"], errors="coerce"),
        }
    ).drop_duplicates(["sme_id", "as_of"])
    keys = data.iloc[rows][["sme_id", "as_of"]].astype({"as_of": "datetime64[ns]"})
    merged = keys.reset_index(drop=True).merge(t, on=["sme_id", "as_of"], how="left")
    return merged["pd_true"].to_numpy(dtype=np.float64)


def measure(
    panel: pd.DataFrame,
    truth: pd.DataFrame | None,
    say: Callable[[str], None] = print,
    *,
    boosters: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Every variant on one panel: {variant: figures}, and facts about the seed. `boosters`
    False: the scorecard and the blends only (no other booster than the model's and the
    calibration booster: for large panels)."""
    from training import booster as boosting
    from training.scorecard import Scorecard
    from training.train import Steps, TrainConfig, choose_params, prepare

    cfg = TrainConfig()
    prep = prepare(panel, None, cfg)
    params, _ = choose_params(prep, cfg, Steps())
    X, y, split, cat, data = prep.X, prep.y, prep.split, prep.catalog, prep.data
    names = [f.name for f in cat]
    if not split.calibration_months:
        raise RuntimeError("the blend on calibration months needs calibration months")
    fit, val, oot, train = split.fit, split.val, split.oot, split.train

    # the current model, as training.train.grow grows it
    say("current model")
    trainer = boosting.LocalTrainer(cat, params)
    fit_rows = trainer.rows(X[fit], y[fit])
    model = trainer.train(
        fit_rows,
        rounds=cfg.max_rounds,
        X_val=X[val],
        y_val=y[val],
        patience=cfg.early_stopping_rounds,
    )
    margin = np.asarray(model.booster.predict(X, raw_score=True), np.float64)
    cal_rows = fit_rows.subset(np.searchsorted(fit, split.cal_grow))
    cal_booster = next(trainer.train_each([cal_rows], rounds=model.best_iteration)).booster
    shift = boosting.start_margin(y[fit], params) - boosting.start_margin(y[split.cal_grow], params)
    cal_margin = np.asarray(cal_booster.predict(X[split.cal], raw_score=True), np.float64) + shift

    # the scorecards: benchmark (all training rows), calibration mirror, fit SMEs only
    say("scorecards")
    frame = data[names]
    card = Scorecard(cat, random_state=cfg.seed).fit(frame.iloc[train], y[train])
    dates = data["as_of"].to_numpy()
    first_cal = dates[split.cal].min()
    in_cal = np.isin(train, split.cal)
    early = train[~in_cal & (dates[train] + np.timedelta64(cfg.embargo, "D") <= first_cal)]
    card_cal = Scorecard(cat, random_state=cfg.seed).fit(frame.iloc[early], y[early])
    card_fit = Scorecard(cat, random_state=cfg.seed).fit(frame.iloc[fit], y[fit])
    sc_oot = _logodds(card, frame.iloc[oot])

    variants = [Variant("current model", margin[oot]), Variant("scorecard", sc_oot)]

    blend_cal = _blend(_stack(cal_margin, _logodds(card_cal, frame.iloc[split.cal])), y[split.cal])
    w = blend_cal.coef_[0]
    variants.append(
        Variant(
            "blend (cal months)",
            blend_cal.decision_function(_stack(margin[oot], sc_oot)),
            f"weights booster {w[0]:.3f}, scorecard {w[1]:.3f}",
            (float(w[0]), float(w[1])),
        )
    )
    # the same with scorecards of non-negative weights (a blend that keeps monotonicity)
    mono_oot = _monotone_logodds(card, frame.iloc[train], y[train])(frame.iloc[oot])
    mono_cal = _monotone_logodds(card_cal, frame.iloc[early], y[early])(frame.iloc[split.cal])
    variants.append(Variant("scorecard, weights >= 0", mono_oot))
    blend_mono = _blend(_stack(cal_margin, mono_cal), y[split.cal])
    w = blend_mono.coef_[0]
    variants.append(
        Variant(
            "blend (cal months), scorecard weights >= 0",
            blend_mono.decision_function(_stack(margin[oot], mono_oot)),
            f"weights booster {w[0]:.3f}, scorecard {w[1]:.3f}",
            (float(w[0]), float(w[1])),
        )
    )
    blend_val = _blend(_stack(margin[val], _logodds(card_fit, frame.iloc[val])), y[val])
    w = blend_val.coef_[0]
    variants.append(
        Variant(
            "blend (val SMEs)",
            blend_val.decision_function(_stack(margin[oot], _logodds(card_fit, frame.iloc[oot]))),
            f"weights booster {w[0]:.3f}, scorecard {w[1]:.3f}",
            (float(w[0]), float(w[1])),
        )
    )

    if boosters:
        variants += _boosters(prep, params, model, card_fit, say)
    return _figures(variants, prep, margin, truth, card, model, params, say)


def _boosters(
    prep: Any, params: dict[str, Any], model: Any, card_fit: Any, say: Callable[[str], None]
) -> list[Variant]:
    """linear_tree, the unconstrained booster (diagnostic) and the boosters started from the
    scorecard of the fit SMEs."""
    import lightgbm as lgb

    from training import booster as boosting
    from training.monotone import check_monotonicity
    from training.train import TrainConfig

    cfg = TrainConfig()
    X, y, split, cat, data = prep.X, prep.y, prep.split, prep.catalog, prep.data
    names = [f.name for f in cat]
    frame = data[names]
    fit, val, oot = split.fit, split.val, split.oot
    variants: list[Variant] = []
    say("linear_tree")
    linear = boosting.LocalTrainer(cat, {**params, "linear_tree": True})
    lin = linear.train(
        linear.rows(X[fit], y[fit]),
        rounds=cfg.max_rounds,
        X_val=X[val],
        y_val=y[val],
        patience=cfg.early_stopping_rounds,
    )
    mono = check_monotonicity(
        lambda M: np.asarray(lin.booster.predict(M, raw_score=True)),
        X[oot],
        cat,
        n_rows=cfg.monotonicity_rows,
        n_grid=cfg.monotonicity_grid,
        seed=cfg.seed,
    )
    variants.append(
        Variant(
            "linear_tree",
            np.asarray(lin.booster.predict(X[oot], raw_score=True), np.float64),
            f"{lin.best_iteration} rounds; monotonicity check "
            f"{'passed' if mono.ok else 'FAILED on ' + str(len(mono.violations())) + ' features'}",
        )
    )

    say("current model without monotone constraints (diagnostic)")
    free = boosting.LocalTrainer(cat, {**params, "monotone_constraints": [0] * len(cat)})
    unc = free.train(
        free.rows(X[fit], y[fit]),
        rounds=cfg.max_rounds,
        X_val=X[val],
        y_val=y[val],
        patience=cfg.early_stopping_rounds,
    )
    variants.append(
        Variant(
            "no monotone constraints (diagnostic)",
            np.asarray(unc.booster.predict(X[oot], raw_score=True), np.float64),
            f"{unc.best_iteration} rounds",
        )
    )

    # the scorecard of the fit SMEs: the validation rows are new to it, as to the booster, so
    # that early stopping judges the residual booster on rows neither part was fitted on
    sc_fit, sc_val = _logodds(card_fit, frame.iloc[fit]), _logodds(card_fit, frame.iloc[val])
    sc_fit_oot = _logodds(card_fit, frame.iloc[oot])
    unconstrained = {"monotone_constraints": [0] * len(cat)}
    for leaves, extra, label in (
        (int(params["num_leaves"]), {}, "the model's leaves"),
        (FEW_LEAVES, {}, f"{FEW_LEAVES} leaves"),
        (int(params["num_leaves"]), unconstrained, "no monotone constraints (diagnostic)"),
    ):
        say(f"init from scorecard, {label}")
        p = {**params, "num_leaves": leaves, **extra}
        dfit = lgb.Dataset(
            X[fit],
            y[fit],
            init_score=sc_fit,
            feature_name=names,
            categorical_feature=boosting.categorical_indices(cat),
            params=p,
        )
        dval = lgb.Dataset(X[val], y[val], init_score=sc_val, reference=dfit)
        b = lgb.train(
            p,
            dfit,
            num_boost_round=cfg.max_rounds,
            valid_sets=[dval],
            valid_names=["val"],
            callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)],
        )
        best = b.best_iteration if b.best_iteration > 0 else cfg.max_rounds
        residual = np.asarray(b.predict(X[oot], raw_score=True, num_iteration=best), np.float64)
        variants.append(
            Variant(
                f"init from scorecard, {label}",
                sc_fit_oot + residual,
                f"{leaves} leaves, {best} rounds (model: {model.best_iteration}); val log loss "
                f"{b.best_score['val']['binary_logloss']:.5f} (model: {model.val_loss:.5f})",
            )
        )

    return variants


def _figures(
    variants: list[Variant],
    prep: Any,
    margin: np.ndarray,
    truth: pd.DataFrame | None,
    card: Any,
    model: Any,
    params: dict[str, Any],
    say: Callable[[str], None],
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each variant's OOT AUC, its DeLong difference from the current model, its oracle gap."""
    from training import metrics as m

    oot = prep.split.oot
    y_oot = prep.y[oot]
    pd_true = _oracle(prep.data, oot, truth)
    has = ~np.isnan(pd_true)
    oracle = m.auc(y_oot[has], pd_true[has]) if has.any() else float("nan")
    out: dict[str, dict[str, float]] = {}
    scorecard = next(v.score for v in variants if v.name == "scorecard")
    for v in variants:
        diff, low, high, p_value = m.auc_difference(y_oot, v.score, margin[oot])
        versus, versus_low, versus_high, _ = m.auc_difference(y_oot, v.score, scorecard)
        gap = oracle - m.auc(y_oot[has], v.score[has]) if has.any() else float("nan")
        out[v.name] = {
            "auc": m.auc(y_oot, v.score),
            "diff": diff,
            "low": low,
            "high": high,
            "p": p_value,
            "oracle_gap": gap,
            "vs_scorecard": versus,
            "vs_scorecard_low": versus_low,
            "vs_scorecard_high": versus_high,
        }
        if v.weights is not None:
            out[v.name]["weight_booster"], out[v.name]["weight_scorecard"] = v.weights
        say(
            f"  {v.name:32s} AUC {out[v.name]['auc']:.4f}  vs current {diff:+.4f} "
            f"[{low:+.4f}, {high:+.4f}] p={p_value:.3f}  vs scorecard {versus:+.4f} "
            f"[{versus_low:+.4f}, {versus_high:+.4f}]  oracle gap {gap:.4f}  {v.note}"
        )
    facts = {
        "oracle_auc": oracle,
        "scorecard_negative_coefs": float((card.model_.coef_[0] < 0).sum()),
        "scorecard_features": float(len(card.binnings_)),
        "best_iteration": float(model.best_iteration),
        "num_leaves": float(params["num_leaves"]),
        "oot_rows": float(len(oot)),
        "oot_defaults": float(y_oot.sum()),
    }
    say(f"  facts: {facts}")
    return out, facts


def run(report: Report) -> None:
    from bench.bench_train import dataset
    from training.run import load_inputs

    seeds = [int(s) for s in os.environ.get("SCF_RISK_BENCH_BLEND_SEEDS", "1,2,3").split(",")]
    n_smes = int(os.environ.get("SCF_RISK_BENCH_BLEND_SMES", str(SMES)))
    per_seed: list[dict[str, dict[str, float]]] = []
    for seed in seeds:
        print(f"data seed {seed}", flush=True)
        folder, panel_file = dataset(n_smes, seed)
        inputs = load_inputs(folder, panel_file)
        figures, _ = measure(inputs.panel, inputs.truth)
        per_seed.append(figures)
    note = f"median over data seeds {', '.join(map(str, seeds))}; {n_smes:,} SMEs, 60 months"
    for name in per_seed[0]:
        for key, label in (
            ("auc", "OOT AUC"),
            ("diff", "OOT AUC - current model's (DeLong, same rows)"),
            ("vs_scorecard", "OOT AUC - benchmark scorecard's (DeLong, same rows)"),
            ("oracle_gap", "oracle AUC - OOT AUC"),
            ("weight_scorecard", "the scorecard's weight"),
        ):
            if key not in per_seed[0][name]:
                continue
            values = [s[name][key] for s in per_seed]
            text = note
            if key in CI:
                lo, hi = CI[key]
                text += "; 95 % CI " + "; ".join(
                    f"seed {seed}: [{s[name][lo]:+.4f}, {s[name][hi]:+.4f}]"
                    for seed, s in zip(seeds, per_seed, strict=True)
                )
            report.add(
                SECTION, f"{name}: {label}", statistics.median(values), "", runs=values, note=text
            )
