"""Cross-fitting only where it is needed (`training.train.cross_fit_for`): the K cross-fitting
boosters change the evidence (the unseen-SME figure's rows, the `*_oof` metrics), never the
served model, and without them the unseen-SME figure reads only SMEs its booster never saw."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.panels import CATALOG, FAST, make_panel
from training import metrics as m
from training import train
from training.exceptions import TrainingError
from training.train import (
    Steps,
    TrainConfig,
    TrainResult,
    choose_params,
    cross_fit_for,
    fit,
    grow,
    prepare,
)
from training.validation_report import write_artifacts


def _config(**settings: object) -> TrainConfig:
    return TrainConfig(seed=2, embargo_days=0, **{**FAST, "max_rounds": 60, **settings})


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel(n_smes=200, n_months=16, seed=5)[0]


@pytest.fixture(scope="module")
def with_and_without(panel: pd.DataFrame) -> tuple[TrainResult, TrainResult]:
    """The same config (the model not regrown, as on large data) with and without the folds."""
    return (
        fit(panel, CATALOG, _config(regrow=False, cross_fit=True)),
        fit(panel, CATALOG, _config(regrow=False, cross_fit=False)),
    )


def test_cross_fitting_changes_the_evidence_not_the_served_model(with_and_without) -> None:
    folds, none = with_and_without
    assert folds.split.calibration_months  # calibrated on the held-out months either way
    assert folds.model.booster.model_to_string() == none.model.booster.model_to_string()
    assert folds.model.calibration == none.model.calibration
    np.testing.assert_array_equal(folds.oot["pd"], none.oot["pd"])
    for key in ("auc_oot", "ece_oot", "auc_val", "auc_oot_benchmark_scorecard", "ece_val"):
        assert folds.metrics[key] == none.metrics[key], key
    assert folds.metrics["unseen_sme_cross_fitted"] == 1.0
    assert none.metrics["unseen_sme_cross_fitted"] == 0.0
    assert {"auc_oof", "ece_oof"} <= set(folds.metrics)
    assert not [k for k in none.metrics if k.endswith("_oof")]  # absent, not NaN
    assert folds.metrics["unseen_sme_rows"] == len(folds.oot)
    assert 0 < none.metrics["unseen_sme_rows"] < len(none.oot)


def test_unseen_sme_figure_without_folds_reads_only_smes_its_booster_never_saw(
    panel: pd.DataFrame, with_and_without
) -> None:
    config = _config(regrow=False, cross_fit=False)
    prep = prepare(panel, CATALOG, config)
    params, _ = choose_params(prep, config, Steps())
    grown = grow(prep, params, config, Steps())
    split, sme = prep.split, prep.data["sme_id"].to_numpy()
    assert not grown.cross_fitted and grown.oof.size == 0 and not grown.regrown
    has = grown.unseen_rows
    read = set(sme[split.oot[has]])
    fit_smes = set(sme[split.fit])  # the scoring booster (the model) grew on these only
    assert read and read.isdisjoint(fit_smes)
    assert set(sme[split.oot[~has]]) <= fit_smes  # and no other OOT row is left out
    assert read & set(sme[split.val])  # (this panel has no SME new in the OOT months)
    np.testing.assert_array_equal(grown.unseen[has], grown.margin[split.oot][has])
    # the figure is the model's on exactly those rows, and says what it stands on
    r = with_and_without[1]
    keep = ~r.oot["sme_id"].isin(fit_smes).to_numpy()
    np.testing.assert_array_equal(keep, has)
    y, p = r.oot["default_12m"].to_numpy(float)[keep], r.oot["pd"].to_numpy()[keep]
    assert r.metrics["auc_oot_unseen_sme"] == pytest.approx(m.auc(y, p), abs=1e-12)
    assert r.metrics["ece_oot_unseen_sme"] == pytest.approx(m.ece(y, p), abs=1e-12)
    assert r.metrics["unseen_sme_rows"] == keep.sum()
    assert r.metrics["unseen_sme_smes"] == len(read)


def test_regrown_without_folds_reads_validation_smes_on_the_early_stopping_booster(
    panel: pd.DataFrame,
) -> None:
    config = _config(regrow=True, cross_fit=False)
    prep = prepare(panel, CATALOG, config)
    params, _ = choose_params(prep, config, Steps())
    grown = grow(prep, params, config, Steps())
    kept = grow(prep, params, replace(config, regrow=False), Steps())
    split, sme = prep.split, prep.data["sme_id"].to_numpy()
    assert grown.regrown and not grown.cross_fitted
    np.testing.assert_array_equal(grown.unseen_rows, kept.unseen_rows)
    in_val = pd.Series(sme[split.oot]).isin(set(sme[split.val])).to_numpy()
    held = grown.val_margin[0] - kept.val_margin[0]  # the difference of the starts
    np.testing.assert_allclose(grown.unseen[in_val], kept.unseen[in_val] + held, atol=1e-12)


def test_cross_fitting_by_the_data(panel: pd.DataFrame, monkeypatch, tmp_path: Path) -> None:
    prep = prepare(panel, CATALOG, _config())
    assert prep.split.val_smes == prep.data["sme_id"].iloc[prep.split.val].nunique()
    split = prep.split
    assert cross_fit_for(_config(), split).on  # small data: the model is regrown
    large = _config(regrow=False)  # as on large data, but few validation SMEs
    assert "fewer than 2,000" in cross_fit_for(large, split).why
    monkeypatch.setattr(train, "MIN_UNSEEN_VALIDATION_SMES", split.val_smes)
    off = cross_fit_for(large, split)
    assert not off.on and f"{split.val_smes:,} validation SMEs" in off.why
    no_months = _config(regrow=False, calibration_months=0)
    assert cross_fit_for(no_months, prepare(panel, CATALOG, no_months).split).on
    with pytest.raises(TrainingError, match="cross_fit=False needs calibration months"):
        fit(panel, CATALOG, replace(no_months, cross_fit=False))
    # by the data, end to end: the progress says it, the count holds, the report explains
    planned: list[int] = []
    said: list[str] = []
    r = fit(panel, CATALOG, large, progress=Steps(said.append, planned.append))
    assert planned == [len(said)], said
    assert any(s.startswith("unseen-SME figure: no cross-fitting") for s in said)
    assert not any("fold" in s for s in said)
    assert r.metrics["unseen_sme_cross_fitted"] == 0.0
    write_artifacts(r, tmp_path, {})
    report = (tmp_path / "validation_report.html").read_text(encoding="utf-8")
    assert "the OOT rows of the fit SMEs are left out (no cross-fitting" in report
    assert "not computed" in report and "no cross-fitted figures" in report
