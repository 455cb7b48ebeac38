"""Out-of-time and SME-grouped splits."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tests.support.panels import CATALOG, make_panel
from training.exceptions import TrainingError
from training.split import MIN_CALIBRATION_GROW_SHARE, make_split, months
from training.train import validate_panel


@pytest.fixture(scope="module")
def matured() -> pd.DataFrame:
    panel, _ = make_panel(n_smes=500, n_months=12, immature_months=2, seed=3)
    data, _ = validate_panel(panel, CATALOG)
    return data


def test_oot_is_the_last_months_and_no_sme_leaks(matured: pd.DataFrame) -> None:
    split = make_split(matured, oot_months=4, seed=5, folds=3)
    m = months(matured["as_of"])
    all_months = sorted(set(m))
    assert split.oot_months == tuple(all_months[-4:])
    assert split.train_months == tuple(all_months[:-4])
    assert set(m[split.oot]) == set(all_months[-4:])
    assert set(m[split.train]) == set(all_months[:-4])
    assert len(split.train) + len(split.oot) == len(matured)  # no embargo: every row used
    sme = matured["sme_id"].to_numpy()
    fit_smes, val_smes = set(sme[split.fit]), set(sme[split.val])
    assert not fit_smes & val_smes
    fold_smes = [set(sme[split.fit][split.fold == k]) for k in range(split.folds)]
    assert split.folds == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert not fold_smes[a] & fold_smes[b]
    assert set().union(*fold_smes) == fit_smes
    assert 0.1 < len(val_smes) / (len(val_smes) + len(fit_smes)) < 0.2


def test_split_is_seeded(matured: pd.DataFrame) -> None:
    a = make_split(matured, 4, seed=5, folds=3)
    b = make_split(matured, 4, seed=5, folds=3)
    c = make_split(matured, 4, seed=6, folds=3)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.fold, b.fold)
    assert not np.array_equal(a.val, c.val)


def test_embargo_leaves_a_gap(matured: pd.DataFrame) -> None:
    split = make_split(matured, 4, seed=5, folds=3, embargo_days=95)
    first_oot = matured["as_of"].iloc[split.oot].min()
    assert (matured["as_of"].iloc[split.train] + pd.Timedelta(days=95) <= first_oot).all()
    assert len(split.embargoed_months) == 3  # three month ends fall within 95 days
    with pytest.raises(TrainingError, match=r"training month\(s\) left"):
        make_split(matured, 4, seed=5, folds=3, embargo_days=400)


def test_split_errors(matured: pd.DataFrame) -> None:
    with pytest.raises(TrainingError, match="needs at least 13"):
        make_split(matured, oot_months=12, seed=0)
    one_class = matured.assign(default_12m=np.where(matured["as_of"] < "2021-06-01", 0, 1))
    with pytest.raises(TrainingError, match="needs both defaults and non-defaults"):
        make_split(one_class, oot_months=4, seed=0, folds=3)
    few = matured[matured["sme_id"].isin(["S00000", "S00001", "S00002"])]
    with pytest.raises(TrainingError, match="SME"):
        make_split(few, oot_months=4, seed=0, folds=3)


def test_calibration_months_mirror_the_oot_split(matured: pd.DataFrame) -> None:
    # 12 matured months, 4 OOT: 8 training months, at most half (4) held out to calibrate
    split = make_split(matured, 4, seed=5, folds=3, calibration_months=6)
    m = months(matured["as_of"])
    assert split.calibration_months == split.train_months[-4:]
    assert set(m[split.cal]) == set(split.calibration_months)
    assert np.array_equal(split.cal, split.train[np.isin(m[split.train], split.calibration_months)])
    # the calibration booster grows on the fit SMEs' earlier months only
    assert set(split.cal_grow) <= set(split.fit)
    assert set(m[split.cal_grow]) == set(split.train_months[:-4])
    assert len(split.cal_grow) == np.isin(m[split.fit], split.train_months[:-4]).sum()
    two = make_split(matured, 4, seed=5, folds=3, calibration_months=2)
    assert two.calibration_months == split.train_months[-2:]


def test_calibration_months_keep_the_embargo(matured: pd.DataFrame) -> None:
    split = make_split(matured, 4, seed=5, folds=3, calibration_months=1, embargo_days=60)
    first_cal = matured["as_of"].iloc[split.cal].min()
    grown_on = matured["as_of"].iloc[split.cal_grow]
    assert len(grown_on) > 0 and (grown_on + pd.Timedelta(days=60) <= first_cal).all()
    # the month just before the held-out one is embargoed, not grown on
    assert grown_on.max() < first_cal - pd.Timedelta(days=31)


def test_too_few_training_months_fall_back_to_cross_fitting(matured: pd.DataFrame) -> None:
    # an embargo can leave nothing to grow the calibration booster on
    split = make_split(matured, 4, seed=5, folds=3, calibration_months=4, embargo_days=95)
    assert split.calibration_months == ()
    assert split.cal.size == 0 and split.cal_grow.size == 0
    # too few defaults to grow a calibration booster that ranks: cross-fitting instead
    few = matured[matured["sme_id"].isin(sorted(set(matured["sme_id"]))[:30])]
    split = make_split(few.reset_index(drop=True), 4, seed=5, folds=3)
    assert split.calibration_months == ()
    # one training month is refused outright: its figures would mean nothing
    with pytest.raises(TrainingError, match=r"1 training month\(s\) left"):
        make_split(matured, 11, seed=5, folds=3)


def test_a_calibration_booster_on_too_few_rows_falls_back_and_says_why(
    matured: pd.DataFrame,
) -> None:
    # a 95-day embargo before the one held-out month leaves the booster one month: a fifth of
    # the fit rows, a shrunken model whose margins would not stand for the model's
    # (MIN_CALIBRATION_GROW_SHARE)
    split = make_split(matured, 4, seed=5, folds=3, calibration_months=1, embargo_days=95)
    assert split.calibration_months == () and split.cal.size == 0
    assert re.search(
        r"would grow on [\d,]+ rows, 20% of the [\d,]+ fit rows", split.calibration_note
    )
    assert split.calibration_note.endswith("cross-fitted margins of the fit SMEs instead")
    # with enough of them, the note says what the calibration was fitted on
    kept = make_split(matured, 4, seed=5, folds=3, calibration_months=4)
    assert kept.calibration_note.startswith("calibrated on the held-out months")
    share = len(kept.cal_grow) / len(kept.fit)
    assert (
        share >= MIN_CALIBRATION_GROW_SHARE
        and f"{share:.0%} of the fit rows" in kept.calibration_note
    )


def test_months_needed_for_an_honest_split() -> None:
    from training.split import months_needed

    # 18 training months + 12 embargo + 6 OOT + 12 for the OOT labels to mature
    assert months_needed(365) == 48
    assert months_needed(365, oot_months=3, train_months=12) == 39
    assert months_needed(180) == 18 + 6 + 6 + 6


def test_the_default_split_is_leak_free(trained) -> None:
    """The default configuration embargoes one label horizon: no training row's label window
    reaches past the first OOT as-of date."""
    cfg, split, data = trained.config, trained.split, trained.panel
    assert cfg.embargo_days is None and cfg.embargo == cfg.horizon_days == 365
    first_oot = data["as_of"].iloc[split.oot].min()
    window_ends = data["as_of"].iloc[split.train] + pd.Timedelta(days=cfg.horizon_days)
    assert (window_ends <= first_oot).all()
    assert split.embargoed_months
    assert "leak-free" in cfg.protocol and "LEAKAGE" not in cfg.protocol
    from training.train import TrainConfig

    assert "LEAKAGE" in TrainConfig(embargo_days=0).protocol
