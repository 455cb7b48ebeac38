"""The training core on synthetic panels: quality, reproducibility, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tests.support.panels import CATALOG, FAST, make_panel
from training import booster as boosting
from training.booster import (
    BAG,
    SMALL_DATA_ROWS,
    bag_seeds,
    regrown_rounds,
    scaled_params,
    start_margin,
)
from training.calibration import LogOddsCalibrator
from training.evaluate import active_products, revealed_share
from training.exceptions import TrainingError
from training.train import (
    Steps,
    TrainConfig,
    calibrate,
    choose_params,
    fit,
    grow,
    prepare,
    validate_panel,
)


def test_model_learns_the_known_effects(trained) -> None:
    mt = trained.metrics
    assert mt["auc_oot"] > mt["auc_static_rating_oot"] + 0.05
    assert mt["auc_oracle_oot"] - mt["auc_oot"] < 0.06
    assert mt["ece_oot"] < 0.03
    assert mt["calibration_b"] > 0
    assert trained.monotonicity.ok and mt["monotonicity_ok"] == 1.0
    assert trained.grades["n"].sum() == mt["n_oot"] == len(trained.oot)
    top = trained.importance["feature"].tolist()[:2]
    assert set(top) == {"payment_index_365d", "ap_days_beyond_terms_90d"}
    # OOT really is the last months, and the OOT table holds the model's outputs
    assert trained.oot["as_of"].min() > trained.panel["as_of"].iloc[trained.split.train].max()
    np.testing.assert_allclose(
        trained.oot["pd"], trained.model.predict(trained.oot[trained.model.feature_names])
    )
    assert set(trained.stability["period"]) == {"train", "oot"}
    for key in ("auc_oot", "gini_oot", "ks_oot", "brier_oot", "log_loss_oot", "pr_auc_oot"):
        assert np.isfinite(mt[key])
    assert {"auc_oot_unseen_sme", "ece_oot_unseen_sme", "auc_oof", "ece_oof"} <= set(mt)
    assert 0.0 <= mt["oot_defaults_revealed_share"] <= 1.0
    # 36 months, leak-free: 19 training months leave the calibration booster one month (11 %
    # of the fit rows), too few to stand for the model: calibrated on cross-fitted margins,
    # and the record says so
    assert mt["calibration_by_months"] == 0.0
    assert mt["calibration_rows"] == len(trained.split.fit)
    assert "11% of the" in trained.split.calibration_note


def test_revealed_share_counts_oot_defaults_already_labelled_in_training() -> None:
    # A defaults in OOT and had a training row labelled 1 (revealed); B defaults in OOT but was
    # labelled 0 in training; C's OOT row is not a default (not counted)
    sme = np.array(["A", "A", "B", "B", "C", "C", "A", "B", "C"], dtype=object)
    y = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0], dtype=np.float64)
    train, oot = np.arange(6), np.arange(6, 9)
    assert revealed_share(sme, y, train, oot) == pytest.approx(0.5)
    assert np.isnan(revealed_share(sme, y, train, np.array([8])))


def test_same_data_and_seed_give_the_same_model(synthetic) -> None:
    panel, _ = synthetic
    config = TrainConfig(seed=11, **FAST)
    a = fit(panel, CATALOG, config)
    b = fit(panel.sample(frac=1.0, random_state=3), CATALOG, config)  # row order does not matter
    X = a.oot[a.model.feature_names]
    assert np.array_equal(a.model.predict(X), b.model.predict(X))
    assert a.model.booster.model_to_string() == b.model.booster.model_to_string()
    assert a.model.calibration == b.model.calibration


def test_tuning_runs_seeded_trials() -> None:
    panel, _ = make_panel(n_smes=200, n_months=14, seed=4)
    config = TrainConfig(
        seed=2, tune_trials=2, calibration_folds=2, max_rounds=100, embargo_days=0
    )  # a plain split: 14 months are too few for the leak-free one
    a = fit(panel, CATALOG, config)
    fit_rows = a.split.fit
    scaled = scaled_params(len(fit_rows), int(a.panel["default_12m"].iloc[fit_rows].sum()))
    assert len(a.tuning) == 2  # the scaled defaults come first
    assert a.tuning[0]["num_leaves"] == scaled["num_leaves"]
    assert a.tuning[0]["min_data_in_leaf"] == scaled["min_data_in_leaf"]
    b = fit(panel, CATALOG, config)
    assert a.tuning == b.tuning
    # growing the model again gives the same booster (the search's best trial, reused, on
    # large data; on these few rows a bag, grown again)
    again = grow(prepare(panel, CATALOG, config), a.lgb_params, config, Steps())
    assert again.best_iteration == a.model.params["best_iteration"]
    assert again.booster.model_to_string() == a.model.booster.model_to_string()


def test_calibration_on_held_out_months_reads_margins_from_the_models_start() -> None:
    """The calibration booster starts from its own rows' log-odds; its margins are read on the
    model's scale and the difference of the starts goes back into the intercept once, however
    large the calibration slope (a slope of 8.7 once multiplied it into a mean PD 6x too high)."""
    panel, _ = make_panel(n_smes=300, n_months=20, seed=8)
    early = pd.to_datetime(panel["as_of"]) < pd.Timestamp("2021-07-01")
    labels = panel["default_12m"].astype("Float64")
    thinned = early & (labels == 1) & (np.arange(len(panel)) % 2 == 0)
    panel = panel.assign(default_12m=panel["default_12m"].mask(thinned, 0))  # fewer early
    config = TrainConfig(
        seed=2,
        embargo_days=0,
        calibration_months=6,
        params={"learning_rate": 0.003},
        **{**FAST, "regrow": None},
    )
    prep = prepare(panel, CATALOG, config)
    params, _ = choose_params(prep, config, Steps())
    grown = grow(prep, params, config, Steps())
    split, y = prep.split, prep.y
    assert split.calibration_months and "calibrated on the held-out months" in (
        split.calibration_note
    )
    assert grown.regrown  # small data: the model grew on every training row, and starts there
    start = start_margin(y[split.train], params)
    drift = start - start_margin(y[split.cal_grow], params)
    assert abs(drift) > 0.05 and grown.cal_drift == pytest.approx(drift)
    cal = calibrate(prep, grown, Steps()).calibrator
    raw = LogOddsCalibrator().fit(grown.cal_margin, y[split.cal])
    assert cal.b_ == raw.b_ and cal.a_ == pytest.approx(raw.a_ + drift)
    # read on the calibration booster's own scale, the same rows give the same fitted map
    own = LogOddsCalibrator().fit(grown.cal_margin - drift, y[split.cal])
    assert own.b_ == pytest.approx(cal.b_)
    # z = start + alpha + b (m - start) for the model, alpha fitted on the booster's scale
    alpha = own.a_ + own.b_ * (start - drift) - (start - drift)
    assert cal.a_ == pytest.approx(start + alpha - cal.b_ * start)


def test_no_calibration_months_calibrates_on_cross_fitted_smes() -> None:
    panel, _ = make_panel(n_smes=200, n_months=14, seed=4)
    config = TrainConfig(
        seed=2, calibration_folds=2, max_rounds=100, calibration_months=0, embargo_days=0
    )
    r = fit(panel, CATALOG, config)
    assert r.split.calibration_months == ()
    assert r.metrics["calibration_by_months"] == 0.0
    assert r.metrics["calibration_rows"] == len(r.split.fit)


def _panel() -> pd.DataFrame:
    panel, _ = make_panel(n_smes=60, n_months=10, immature_months=2, seed=5)
    return panel


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.drop(columns="default_12m"), "no default_12m column"),
        (lambda p: p.assign(default_12m=pd.NA), "no matured rows"),
        (lambda p: p.assign(default_12m=0), "one class only"),
        (lambda p: p.assign(mystery_ratio=1.0), r"does not know: \['mystery_ratio'\]"),
        (lambda p: p.assign(default_12m=2), "expected 0, 1 or empty"),
        (lambda p: p.assign(dso_90d="high"), "dso_90d: expected a numeric column"),
        (lambda p: pd.concat([p, p.head(1)]), "duplicate"),
        (lambda p: p.drop(columns="sme_id"), "lacks the column"),
        (
            lambda p: p[[c for c in p.columns if c in ("sme_id", "as_of", "default_12m")]],
            "no catalog",
        ),
    ],
)
def test_bad_panels_are_refused(change, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        fit(change(_panel()), config=TrainConfig(**FAST))


def test_default_catalog_comes_from_the_panel_columns() -> None:
    panel = _panel().assign(fin_current_ratio=1.5)
    _, catalog = validate_panel(panel)
    names = [f.name for f in catalog]
    assert names[-1] == "fin_current_ratio" and "dso_90d" in names
    assert len(names) == len(CATALOG) + 1


def test_active_products_at_the_as_of_date() -> None:
    loans = pd.DataFrame(
        {
            "sme_id": ["A", "A", "B", "C"],
            "product": ["prepayment", "inventory_pledge", "prepayment", "prepayment"],
            "disbursed_date": pd.to_datetime(
                ["2022-01-01", "2022-03-01", "2022-01-01", "2021-01-01"]
            ),
            "maturity_date": pd.to_datetime(
                ["2022-06-30", "2022-04-30", "2022-01-31", "2022-12-31"]
            ),
            "default_date": pd.to_datetime(pd.Series([None, None, None, "2022-01-15"])),
        }
    )
    rows = pd.DataFrame(
        {
            "sme_id": ["A", "A", "B", "C", "D"],
            "as_of": pd.to_datetime(
                ["2022-01-31", "2022-03-31", "2022-01-31", "2022-01-31", "2022-01-31"]
            ),
        }
    )
    flags = active_products(loans, rows)
    assert flags["prepayment"].tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]  # B matured, C defaulted
    assert flags["inventory_pledge"].tolist() == [False, True, False, False, False]
    assert not flags["receivable_financing"].any()


@pytest.mark.parametrize(
    "settings",
    [{}, {"calibration_months": 0}, {"tune_trials": 2}],
    ids=["calibration-months", "cross-fitted", "tuned"],
)
def test_fit_announces_exactly_the_steps_it_reports(settings: dict[str, int]) -> None:
    """The progress total is declared by `fit` itself: a bar never ends short or long."""
    panel, _ = make_panel(n_smes=150, n_months=16, seed=6)
    planned: list[int] = []
    said: list[str] = []
    config = TrainConfig(seed=2, embargo_days=0, **{**FAST, "max_rounds": 60, **settings})
    fit(panel, CATALOG, config, progress=Steps(said.append, planned.append))
    assert planned == [len(said)], said
    assert any("calibrating" in s for s in said)


def test_tree_size_scales_with_rows_and_defaults() -> None:
    small = scaled_params(700, 35)  # 5 % defaults on 700 rows
    assert small["min_data_in_leaf"] == 35 and small["num_leaves"] == 4  # still splits
    large = scaled_params(400_000, 16_000)  # 4 %: 250 rows hold 10 expected defaults
    assert large["min_data_in_leaf"] == 250 and large["num_leaves"] == 31
    rare = scaled_params(100_000, 500)  # 0.5 %: leaves must be larger to see defaults
    assert rare["min_data_in_leaf"] == 2000 and rare["num_leaves"] == 5


def test_a_tuning_budget_searches_on_the_calibration_months() -> None:
    panel, _ = make_panel(n_smes=150, n_months=16, seed=6)
    planned: list[int] = []
    said: list[str] = []
    config = TrainConfig(seed=2, embargo_days=0, tune_minutes=1e-6, **FAST)  # 60 µs
    r = fit(panel, CATALOG, config, progress=Steps(said.append, planned.append))
    assert planned == [len(said)]
    assert any("on the calibration months" in s for s in said)
    assert len(r.tuning) == 1  # the budget ran out after the first trial (the defaults)
    with pytest.raises(TrainingError, match="not both"):
        fit(panel, CATALOG, TrainConfig(tune_trials=1, tune_minutes=1.0))


def test_boosters_grown_at_once_are_the_boosters_grown_one_by_one() -> None:
    panel, _ = make_panel(n_smes=200, n_months=16, seed=5)
    one = TrainConfig(seed=2, embargo_days=0, **FAST)
    prep = prepare(panel, CATALOG, one)
    params, _ = choose_params(prep, one, Steps())
    a = grow(prep, params, one, Steps())
    b = grow(prep, params, replace(one, boosters_at_once=3), Steps())
    assert prep.split.calibration_months  # the calibration booster is among them
    for name in ("oof", "unseen", "cal_margin"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_small_data_grows_a_bag_recorded_in_the_bundle(monkeypatch) -> None:
    """Below `SMALL_DATA_ROWS` fit rows the model is the mean of `BAG` boosters (its seeds in the
    bundle); its reason points still add up to the score exactly. At the threshold: one."""
    panel, _ = make_panel(n_smes=150, n_months=16, seed=6)
    config = TrainConfig(
        seed=2, embargo_days=0, **{**FAST, "max_rounds": 60, "bag": None, "regrow": None}
    )
    fit_rows = len(prepare(panel, CATALOG, config).split.fit)
    assert fit_rows < SMALL_DATA_ROWS
    bagged = fit(panel, CATALOG, config)
    assert bagged.model.params["bag_seeds"] == bag_seeds(2, BAG)
    assert bagged.metrics["bag_boosters"] == BAG  # logged with the run's metrics
    rounds = bagged.model.params["final_model"]["rounds"]  # regrown: small data
    assert bagged.model.booster.num_trees() == BAG * rounds
    X = bagged.oot[bagged.model.feature_names]
    for method in ("pred_contrib", "tree_shap", "fast"):
        e = bagged.model.explain(X, method=method)
        total = e.base_points + e.points.sum(axis=1).to_numpy()
        assert np.abs(total - e.score).max() < 1e-6, method
    monkeypatch.setattr(boosting, "SMALL_DATA_ROWS", fit_rows)
    single = fit(panel, CATALOG, config)
    assert single.model.params["bag_seeds"] == [2] and single.metrics["bag_boosters"] == 1
    assert single.model.booster.num_trees() == single.model.params["best_iteration"]
    with pytest.raises(ValueError, match="bag must be at least 1"):
        TrainConfig(bag=0)


def test_small_data_regrows_the_model_on_every_training_sme() -> None:
    """Below `SMALL_DATA_ROWS` fit rows the served model is grown again on fit and validation
    SMEs (the fit rows' bins) with the rounds early stopping chose; the validation SMEs' margins
    and the OOT margins of their SMEs come from the early-stopping booster, which never saw
    them; every other booster is the one grown without regrowing, read on the model's scale."""
    panel, _ = make_panel(n_smes=150, n_months=16, seed=6)
    config = TrainConfig(
        seed=2, embargo_days=0, **{**FAST, "max_rounds": 60, "bag": 2, "regrow": None}
    )
    prep = prepare(panel, CATALOG, config)
    split, y = prep.split, prep.y
    assert len(split.fit) < SMALL_DATA_ROWS and split.calibration_months
    params, _ = choose_params(prep, config, Steps())
    kept = grow(prep, params, replace(config, regrow=False), Steps())
    grown = grow(prep, params, config, Steps())  # regrow: by the fit rows
    assert grown.regrown and not kept.regrown
    assert grown.rows == len(split.train) and kept.rows == len(split.fit)
    assert grown.best_iteration == kept.best_iteration
    assert grown.rounds == regrown_rounds(kept.best_iteration, len(split.fit), len(split.train))
    assert grown.val_loss == kept.val_loss  # the early-stopping booster's
    trainer = boosting.LocalTrainer(CATALOG, params, 2)
    by_hand = trainer.train(
        trainer.rows(
            prep.X[split.train], y[split.train], bins=trainer.rows(prep.X[split.fit], y[split.fit])
        ),
        rounds=grown.rounds,
    ).booster
    assert grown.booster.model_to_string() == by_hand.model_to_string()
    assert grown.booster.model_to_string() != kept.booster.model_to_string()
    # read on the regrown model's scale: it starts from all training rows' log-odds
    held = start_margin(y[split.train], params) - start_margin(y[split.fit], params)
    assert held != 0.0
    np.testing.assert_allclose(grown.val_margin, kept.margin[split.val] + held, atol=1e-12)
    in_sample = grown.margin[split.val]  # the regrown model saw these rows: not what is reported
    assert not np.allclose(grown.val_margin, in_sample)
    sme = prep.data["sme_id"].to_numpy()
    oot_sme = pd.Series(sme[split.oot])
    in_val = oot_sme.isin(set(sme[split.val])).to_numpy()
    in_fit = oot_sme.isin(set(sme[split.fit])).to_numpy()
    assert in_val.any() and in_fit.any()
    seen = in_val | in_fit
    np.testing.assert_allclose(grown.unseen[seen], kept.unseen[seen] + held, atol=1e-12)
    np.testing.assert_array_equal(grown.unseen[~seen], grown.margin[split.oot][~seen])
    np.testing.assert_allclose(grown.oof, kept.oof + held, atol=1e-12)
    np.testing.assert_allclose(grown.cal_margin, kept.cal_margin + held, atol=1e-12)
    assert grown.cal_drift == pytest.approx(kept.cal_drift + held)
    # the calibration sees the same margins: the same slope
    assert calibrate(prep, grown, Steps()).calibrator.b_ == pytest.approx(
        calibrate(prep, kept, Steps()).calibrator.b_
    )


def test_the_regrown_model_is_served_recorded_and_reproducible() -> None:
    panel, _ = make_panel(n_smes=150, n_months=16, seed=6)
    config = TrainConfig(
        seed=2, embargo_days=0, **{**FAST, "max_rounds": 60, "bag": 2, "regrow": None}
    )
    r = fit(panel, CATALOG, config)
    best = r.model.params["best_iteration"]
    rounds = regrown_rounds(best, len(r.split.fit), len(r.split.train))
    assert r.model.params["final_model"] == {
        "grown_on": "fit and validation SMEs",
        "regrown": True,
        "rows": len(r.split.train),
        "rounds": rounds,
    }
    assert r.metrics["model_regrown"] == 1.0 and r.metrics["model_rounds"] == rounds
    assert r.metrics["model_rows"] == len(r.split.train)
    assert r.model.booster.num_trees() == 2 * rounds
    again = fit(panel, CATALOG, config)
    assert again.model.booster.model_to_string() == r.model.booster.model_to_string()
    X = r.oot[r.model.feature_names]
    np.testing.assert_allclose(r.oot["pd"], r.model.predict(X))  # the OOT figures: the served
    for method in ("pred_contrib", "tree_shap", "fast"):
        e = r.model.explain(X, method=method)
        total = e.base_points + e.points.sum(axis=1).to_numpy()
        assert np.abs(total - e.score).max() < 1e-6, method
    # the validation figures are those of the booster that never saw the validation SMEs: the
    # same ranking as the model that is not regrown (its margins but for a constant)
    kept = fit(panel, CATALOG, replace(config, regrow=False))
    assert kept.model.params["final_model"]["regrown"] is False
    assert kept.metrics["model_regrown"] == 0.0
    assert r.metrics["auc_val"] == pytest.approx(kept.metrics["auc_val"], abs=1e-12)
    assert r.metrics["val_log_loss_lgb"] == kept.metrics["val_log_loss_lgb"]
    assert r.model.booster.model_to_string() != kept.model.booster.model_to_string()


def test_large_data_serves_the_early_stopping_booster_unchanged(monkeypatch) -> None:
    """At `SMALL_DATA_ROWS` fit rows and above the model is the booster early stopping kept, as
    before regrowing existed: the same booster `grow` grows with regrowing turned off."""
    panel, _ = make_panel(n_smes=150, n_months=16, seed=6)
    config = TrainConfig(seed=2, embargo_days=0, **{**FAST, "max_rounds": 60})
    prep = prepare(panel, CATALOG, config)
    monkeypatch.setattr(boosting, "SMALL_DATA_ROWS", len(prep.split.fit))
    params, _ = choose_params(prep, config, Steps())
    grown = grow(prep, params, config, Steps())
    assert not grown.regrown and grown.rows == len(prep.split.fit)
    trainer = boosting.LocalTrainer(CATALOG, params)
    early = trainer.train(
        trainer.rows(prep.X[prep.split.fit], prep.y[prep.split.fit]),
        rounds=config.max_rounds,
        X_val=prep.X[prep.split.val],
        y_val=prep.y[prep.split.val],
        patience=config.early_stopping_rounds,
    )
    assert grown.booster.model_to_string() == early.booster.model_to_string()
    np.testing.assert_array_equal(grown.val_margin, grown.margin[prep.split.val])
