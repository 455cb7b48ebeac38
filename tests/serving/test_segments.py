"""Segment drift (`serving.portfolio.segments`): the statistics on hand-made populations, then the
monitor on a simulation and on its shocked twin (same seed, a core in stress and an industry
downturn from 2023-07 on): the shock is found, the unshocked twin does not flag the same
segments and has nothing at 'act'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.catalog import Feature
from serving.portfolio.segments import FDR, Paired, bh, segment_drift

FEATURES = (
    Feature("late_days", "t", "days late", "days", 1),
    Feature("turnover", "t", "inventory turnover", "ratio", -1),
    Feature("ageing", "t", "receivables ageing", "days", 1),
    Feature("noise", "t", "unrelated", "ratio", 1),
)


def population(n: int, shifted: np.ndarray, shift: float, seed: int) -> Paired:
    """`n` SMEs at two dates; those in `shifted` get riskier by `shift` sd on the first three
    features, and their points fall accordingly."""
    rng = np.random.default_rng(seed)
    ids = [f"S{i:04d}" for i in range(n)]
    before = pd.DataFrame(rng.normal(size=(n, 4)), columns=[f.name for f in FEATURES], index=ids)
    now = before + rng.normal(scale=0.5, size=(n, 4))
    risk = np.array([1.0, -1.0, 1.0, 0.0]) * shift * 0.5
    now.loc[shifted] += risk
    points_before = pd.DataFrame(-5 * before.to_numpy() * [1, -1, 1, 0], index=ids,
                                 columns=before.columns)  # fmt: skip
    points_now = pd.DataFrame(-5 * now.to_numpy() * [1, -1, 1, 0], index=ids,
                              columns=before.columns)  # fmt: skip
    return Paired(before, now, points_before, points_now)


def labels(n: int, k: int) -> pd.Series:
    return pd.Series([f"I{i % k}" for i in range(n)], index=[f"S{i:04d}" for i in range(n)])


def test_bh_q_values_match_the_step_up_rule() -> None:
    q = bh(np.array([0.01, 0.04, 0.03, np.nan, 0.5]))
    # sorted 0.01, 0.03, 0.04, 0.5 -> p * 4 / rank = 0.04, 0.06, 0.0533, 0.5, then the
    # running minimum from the top
    np.testing.assert_allclose(q[[0, 1, 2, 4]], [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(q[3])


def test_a_shifted_segment_is_found_and_named() -> None:
    lab = labels(600, 6)
    paired = population(600, lab.index[lab == "I2"], shift=2.0, seed=1)
    segments, moves = segment_drift(paired, {"industry": lab}, FEATURES, factor=28.85)
    top = segments.iloc[0]
    assert (top["segment"], top["signal"]) == ("I2", "act")
    assert {m["feature"] for m in top["moved"]} == {"late_days", "turnover", "ageing"}
    assert top["odds_ratio"] > 1.25 and top["drivers"][0]["points_change"] < 0
    assert (segments["signal"].iloc[1:] == "stable").all()
    # the unrelated feature never counts, and every flagged move passed the FDR
    assert not moves.loc[moves["feature"] == "noise", "adverse"].any()
    assert (moves.loc[moves["adverse"], "q"] < FDR).all()


@pytest.mark.parametrize("seed", range(5))
def test_no_segment_is_flagged_when_nothing_moved(seed: int) -> None:
    lab = labels(600, 12)
    paired = population(600, lab.index[:0], shift=0.0, seed=seed)
    segments, _ = segment_drift(paired, {"industry": lab}, FEATURES, factor=28.85)
    assert len(segments) == 12 and (segments["signal"] == "stable").all()


def test_an_improving_segment_is_not_flagged() -> None:
    lab = labels(600, 6)
    paired = population(600, lab.index[lab == "I3"], shift=-2.0, seed=2)
    segments, _ = segment_drift(paired, {"industry": lab}, FEATURES, factor=28.85)
    assert (segments["signal"] == "stable").all()


def test_small_segments_are_not_tested() -> None:
    lab = labels(100, 10)  # 10 SMEs each, under MIN_SMES
    segments, moves = segment_drift(population(100, lab.index[:0], 0.0, 3), {"industry": lab},
                                    FEATURES, factor=28.85)  # fmt: skip
    assert segments.empty and moves.empty


# -- the monitor on a simulation and its shocked twin -------------------------------------------
SHOCK = "core:C04+industry:textiles@2023-07"
AS_OF = "2023-12-31"


@dataclass(frozen=True)
class Twins:
    stable: Path
    shocked: Path
    tracking_uri: str
    uri: str


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Twins:
    """800 SMEs, 8 cores, 24 months (seed 7); a model trained on the unshocked data; the twin
    with the shock five months before the as-of date."""
    from features.simulate import SimConfig, generate_to_folder, parse_shock
    from training.bundle import MODEL_NAME
    from training.run import load_inputs, train_and_register
    from training.train import TrainConfig

    root = tmp_path_factory.mktemp("twins")
    start = date(2022, 1, 1)
    base = SimConfig(n_smes=800, n_cores=8, months=24, start=start, seed=7, progress=False)
    generate_to_folder(base, root / "stable")
    shock = parse_shock(SHOCK, start=start, n_cores=8)
    generate_to_folder(SimConfig(**{**base.__dict__, "shock": shock}), root / "shocked")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    config = TrainConfig(
        oot_months=4, embargo_days=0, calibration_folds=2, max_rounds=80,
        early_stopping_rounds=20, monotonicity_rows=40, explain_rows=100,
    )  # fmt: skip
    run, _ = train_and_register(
        load_inputs(root / "stable", None), config, tracking_uri=tracking_uri
    )
    return Twins(
        root / "stable", root / "shocked", tracking_uri, f"models:/{MODEL_NAME}/{run.version}"
    )


def monitored(twins: Twins, data: Path) -> dict:
    from features.io import load_tables
    from serving.portfolio.monitor import drift_profile, monitor, summary
    from training.bundle import load_model

    loaded = load_model(twins.uri, twins.tracking_uri)
    return summary(monitor(load_tables(data), loaded, drift_profile(loaded), AS_OF))


def flagged(doc: dict) -> dict[tuple[str, str], dict]:
    return {
        (s["kind"], s["segment"]): s for s in doc["segments"]["segments"] if s["signal"] != "stable"
    }


def test_the_shock_is_found_and_the_unshocked_twin_does_not_flag_it(twins: Twins) -> None:
    shocked = monitored(twins, twins.shocked)
    stable = monitored(twins, twins.stable)
    assert shocked["segments"]["baseline"] == "2023-06-30"
    hit = {("industry", "textiles"), ("core", "C04")}
    found = flagged(shocked)
    assert hit <= set(found), found.keys()
    for key in hit:
        moved = {m["feature"] for m in found[key]["moved"]}
        # inventory building up against sales: what a downturn does to its SMEs first
        assert moved & {"dio_change_365d", "dio_90d", "inventory_turnover_90d"}, moved
        assert any(key[1] in a for a in shocked["actions"])
    # the same simulation without the shock: the hit segments are not flagged, nothing at 'act',
    # and natural episodes (a core's own stress) stay few
    quiet = flagged(stable)
    assert not hit & set(quiet), quiet.keys()
    assert all(s["signal"] != "act" for s in stable["segments"]["segments"])
    assert len(quiet) <= 3
