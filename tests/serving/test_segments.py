"""Segment drift (`serving.portfolio.segments`): the statistics and the act rule on hand-made
populations, then the monitor on a simulation and on its shocked twin (same seed, a core in
stress and an industry downturn from 2023-07 on), judged against the simulator's true PDs: the
shock is found at 'act', the unshocked twin does not flag the shocked segments and has at most
one segment at 'act', and every 'act' is a material deterioration in truth."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from features.catalog import MAIN_CORE_FACTS, Feature
from serving.portfolio.segments import (
    FDR,
    LARGE_EFFECT,
    MIN_EFFECT,
    MIN_ODDS_RATIO,
    Paired,
    bh,
    segment_drift,
)
from tests.support.truth import true_odds_ratio

if TYPE_CHECKING:
    from features.contract import Tables

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


def moved(
    names: list[str], shifts: dict[str, float], kind: str = "industry", points_fall: float = 0.0
) -> tuple[pd.DataFrame, Feature]:
    """600 SMEs in 6 segments (S0..S5); those of segment S1 move by `shifts` (in units of the
    change's noise sd, riskier) on the named features; their points fall by `points_fall` each
    (0: the model does not move). The segments of `kind`."""
    rng = np.random.default_rng(5)
    n = 600
    ids = [f"S{i:04d}" for i in range(n)]
    lab = pd.Series([f"S{i % 6}" for i in range(n)], index=ids)
    before = pd.DataFrame(rng.normal(size=(n, len(names))), columns=names, index=ids)
    now = before + rng.normal(size=before.shape)
    hit = (lab == "S1").to_numpy()
    for name, shift in shifts.items():
        now.loc[hit, name] += shift
    points_before = pd.DataFrame(rng.normal(size=before.shape), columns=names, index=ids)
    points_now = points_before + rng.normal(scale=0.1, size=before.shape)
    points_now.loc[hit] -= points_fall
    catalog = tuple(Feature(name, "t", name, "ratio", 1) for name in names)
    paired = Paired(before, now, points_before, points_now)
    segments, _ = segment_drift(
        paired, {kind: lab}, catalog, factor=28.85, core_facts=MAIN_CORE_FACTS
    )
    return segments.set_index("segment"), catalog[0]


SME_MEASURES = ["late_days", "ageing", "dso_90d"]


def test_strong_data_is_enough_to_act_and_medium_data_only_to_watch() -> None:
    """The model's points do not move: three measures moved by a large effect make 'act' (the
    model lags its data), three by a medium one only 'watch'."""
    strong, _ = moved(SME_MEASURES, dict.fromkeys(SME_MEASURES, 3.0))
    assert strong.loc["S1", "large_features"] == 3 and not strong.loc["S1", "score_moved"]
    assert strong.loc["S1", "signal"] == "act"
    assert (strong.drop("S1")["signal"] == "stable").all()
    medium, _ = moved(SME_MEASURES, dict.fromkeys(SME_MEASURES, 0.65))
    effects = medium.loc["S1", "moved"]
    assert all(MIN_EFFECT <= m["effect"] < LARGE_EFFECT for m in effects), effects
    assert (medium.loc["S1", "adverse_features"], medium.loc["S1", "signal"]) == (3, "watch")
    # the same medium move with the model's odds up materially: the model carries it, act
    carried, _ = moved(SME_MEASURES, dict.fromkeys(SME_MEASURES, 0.65), points_fall=4.0)
    assert carried.loc["S1", "score_moved"] and carried.loc["S1", "signal"] == "act"


def test_the_windows_of_one_measure_count_once() -> None:
    names = ["dso_90d", "dso_180d", "dso_365d", "late_days"]
    segments, _ = moved(names, dict.fromkeys(names, 3.0))
    assert len(segments.loc["S1", "moved"]) == 4  # every window is listed ...
    assert segments.loc["S1", "adverse_features"] == 2  # ... but they are one measure
    assert segments.loc["S1", "signal"] == "stable"


@pytest.mark.parametrize(
    ("kind", "counted", "signal"), [("core", 2, "stable"), ("industry", 4, "act")]
)
def test_a_cores_own_features_count_once_in_its_segment(
    kind: str, counted: int, signal: str
) -> None:
    """A core's rating, payment stress and peers' defaults are one observation of the core among
    its SMEs: one measure in a core's segment; in an industry they vary with each SME's core."""
    names = [*sorted(MAIN_CORE_FACTS), "late_days"]
    segments, _ = moved(names, dict.fromkeys(names, 3.0), kind=kind)
    assert (segments.loc["S1", "adverse_features"], segments.loc["S1", "signal"]) == (
        counted,
        signal,
    )


# -- the monitor on a simulation and its shocked twin -------------------------------------------
# C01, the largest core, is in normal times from 2023-07 on without the shock (the simulator
# refuses to "shock" a core that is in stress anyway, as C04 is in this simulation); it is an
# electronics core, so the two shocks hit different SMEs.
SHOCK = "core:C01+industry:textiles@2023-07"
HIT = {("industry", "textiles"), ("core", "C01")}
AS_OF = "2023-12-31"
BASELINE = "2023-06-30"


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
        early_stopping_rounds=20, monotonicity_rows=40, explain_rows=100, bag=1,
    )  # fmt: skip
    run, _ = train_and_register(
        load_inputs(root / "stable", None), config, tracking_uri=tracking_uri
    )
    return Twins(
        root / "stable", root / "shocked", tracking_uri, f"models:/{MODEL_NAME}/{run.version}"
    )


@dataclass(frozen=True)
class Monitored:
    doc: dict
    members: dict[tuple[str, str], pd.Index]  # each segment's SMEs
    population: pd.Index  # the SMEs scored at the as-of date
    features: pd.DataFrame  # their features and main core


def monitored(twins: Twins, data: Path) -> Monitored:
    from features.io import load_tables
    from serving.portfolio.monitor import drift_profile, monitor, segment_labels, summary
    from training.bundle import load_model

    loaded = load_model(twins.uri, twins.tracking_uri)
    result = monitor(load_tables(data), loaded, drift_profile(loaded), AS_OF)
    doc = summary(result)
    members = {}
    for kind in ("industry", "core"):
        labels = segment_labels(result.now, kind)
        for seg in labels.dropna().unique():
            members[(kind, str(seg))] = labels.index[labels == seg]
    population = pd.Index(result.now.features["sme_id"].astype(str))
    features = result.now.features.assign(main_core=result.now.main_core.to_numpy())
    return Monitored(doc, members, population, features)


@pytest.fixture(scope="module")
def stable(twins: Twins) -> Monitored:
    return monitored(twins, twins.stable)


@pytest.fixture(scope="module")
def shocked(twins: Twins) -> Monitored:
    return monitored(twins, twins.shocked)


def signals(run: Monitored) -> dict[tuple[str, str], dict]:
    return {(s["kind"], s["segment"]): s for s in run.doc["segments"]["segments"]}


def true_odds(run: Monitored, data: Path, key: tuple[str, str]) -> float:
    return true_odds_ratio(data, run.members[key], run.population, BASELINE, AS_OF)


def test_the_shock_is_found_at_act_and_every_act_is_true(twins: Twins, shocked: Monitored) -> None:
    run = shocked
    assert run.doc["segments"]["baseline"] == BASELINE
    found = signals(run)
    for key in HIT:
        assert found[key]["signal"] == "act", found[key]
        assert any(a.startswith("ACT") and key[1] in a for a in run.doc["actions"])
        # the shock is material in truth: the simulator's own PD says so
        assert true_odds(run, twins.shocked, key) >= MIN_ODDS_RATIO
    # what each shock does first: inventory builds up against sales in a downturn; a core in
    # stress pays its suppliers late
    textiles = {m["feature"] for m in found[("industry", "textiles")]["moved"]}
    assert textiles & {"dio_change_365d", "dio_90d", "inventory_turnover_90d"}, textiles
    core = {m["feature"] for m in found[("core", "C01")]["moved"]}
    assert core & {"main_core_payment_stress", "ar_days_to_collect_90d", "dso_90d"}, core
    # no act on a segment whose true risk did not rise materially against the rest
    for key, seg in found.items():
        if seg["signal"] == "act":
            assert true_odds(run, twins.shocked, key) >= MIN_ODDS_RATIO, key


def test_the_unshocked_twin_has_almost_nothing_to_act_on(twins: Twins, stable: Monitored) -> None:
    """The same simulation without the shock: the shocked segments are not flagged at all, and
    at most one segment is at act, a true deterioration (a core may enter stress on its own:
    C08 does in 2023-07)."""
    run = stable
    found = signals(run)
    assert all(found[key]["signal"] == "stable" for key in HIT), [found[k] for k in HIT]
    acted = [key for key, seg in found.items() if seg["signal"] == "act"]
    assert len(acted) <= 1, acted
    for key in acted:
        assert true_odds(run, twins.stable, key) >= MIN_ODDS_RATIO, key
    assert sum(seg["signal"] != "stable" for seg in found.values()) <= 3
    assert run.doc["psi"]["score"]["band"] == "stable"


def test_a_cores_own_features_take_one_value_per_core(stable: Monitored) -> None:
    """What `MAIN_CORE_FACTS` declares: among one main core's SMEs each of them is one value
    (the peer default share: nearly, it leaves the SME out), so a core segment's test of them is
    one observation of the core, counted once."""
    by_core = stable.features.groupby("main_core")
    assert by_core.ngroups == 8
    for name in MAIN_CORE_FACTS:
        spread = stable.features[name].std()
        assert spread > 0, name
        assert (by_core[name].std(ddof=0) <= 0.01 * spread).all(), name


RATES_365D = ("ap_days_beyond_terms_365d", "ap_late_rate_365d", "dispute_rate_365d")
"""The twin's three rates that drift only because their windows filled (window-filling)."""


def test_the_unshocked_twin_has_no_feature_at_act(stable: Monitored) -> None:
    """The model trained on the data's first months, when every SME's 365-day windows were only
    partly covered (on median 120 days): its late-payment and dispute rates, shares over fewer
    payments, were more extreme than over today's full windows, so PSI alone puts them at 'act'.
    Compared on like coverage they do not drift: they are listed as window-filling, with the
    advice to retrain once the history covers the window, and nothing is counted at 'act'."""
    run = stable
    assert run.doc["psi"]["band_counts"]["act"] == 0, [
        f["name"] for f in run.doc["psi"]["features"] if f["signal"] == "act"
    ]
    found = {f["name"]: f for f in run.doc["psi"]["features"]}
    for name in RATES_365D:
        f = found[name]
        assert f["band"] == "act" and f["signal"] == "window-filling", f
        assert f["psi_like_coverage"] < 0.1 and f["training_full_share"] < 0.5
    retrain = [a for a in run.doc["actions"] if a.startswith("RETRAIN")]
    assert len(retrain) == 1 and "ap_late_rate_365d" in retrain[0]


def silenced(tables: Tables, population: pd.Index, days: int) -> Tables:
    """`tables` with the feeds of every fifth SME of the population stopped `days` days before
    the as-of date: none of its invoices (sold or bought) issued and none of its inventory
    snapshots taken since then."""
    hit = set(population.sort_values()[::5])
    since = pd.Timestamp(AS_OF) - pd.Timedelta(days=days)
    inv, stock = tables.invoices, tables.inventory
    lost = (inv["issue_date"] > since) & (inv["seller_id"].isin(hit) | inv["buyer_id"].isin(hit))
    gone = (stock["snapshot_date"] > since) & stock["sme_id"].isin(hit)
    return replace(
        tables,
        invoices=inv[~lost].reset_index(drop=True),
        inventory=stock[~gone].reset_index(drop=True),
    )


@pytest.mark.parametrize("days", [30, 60, 100])
def test_an_outage_is_not_excused_as_window_filling(
    twins: Twins, stable: Monitored, days: int
) -> None:
    """The unshocked twin with the feeds of a fifth of its SMEs stopped `days` days before the
    as-of date (30: the shortest training history the like coverage cuts at). They stay in the
    population (they traded within the year) and their 365-day rates are still computed, over
    the part of the year before the outage, so the rates' missing shares on the full windows stay
    as in training; on like coverage the silenced SMEs have no activity in the cuts shorter than
    the outage. Counted as such (missing), they raise the dispute rate's missing share there
    beyond chance (and, the longer the outage, its like-coverage PSI): it is counted at its
    band, act, with the rise said, not excused as window filling. (Dropped from those cuts, as
    the comparison did before, they left cuts that looked like training: the three 365-day rates
    were listed as window filling, as on the twin without the outage.)"""
    from features.io import load_tables
    from serving.portfolio.monitor import drift_profile, monitor, summary
    from training.bundle import load_model

    loaded = load_model(twins.uri, twins.tracking_uri)
    tables = silenced(load_tables(twins.stable), stable.population, days)
    doc = summary(monitor(tables, loaded, drift_profile(loaded), AS_OF))
    assert doc["population"]["as_of"] == len(stable.population)  # nobody left the population
    found = {f["name"]: f for f in doc["psi"]["features"]}
    f = found["dispute_rate_365d"]
    assert f["actual_missing"] < f["expected_missing"] + 0.01  # the full windows hide it
    assert (f["band"], f["signal"]) == ("act", "act"), f
    assert f["missing_like_coverage"] > f["expected_missing"] + 0.03, f
    line = next(a for a in doc["actions"] if a.startswith("ACT: dispute_rate_365d drifted"))
    assert f"missing for {f['missing_like_coverage']:.1%} of the SMEs on like coverage" in line


# -- data freshness -------------------------------------------------------------------------------
def core_stopped(tables: Tables, core: str, days: int) -> Tables:
    """`tables` with the feed of one core enterprise stopped `days` days before the as-of date:
    none of the invoices it sold or bought issued since then, and no payment on its invoices
    recorded since then (paid later: unpaid in the data)."""
    since = pd.Timestamp(AS_OF) - pd.Timedelta(days=days)
    inv = tables.invoices
    with_core = (inv["seller_id"] == core) | (inv["buyer_id"] == core)
    inv = inv[~(with_core & (inv["issue_date"] > since))].copy()
    late = ((inv["seller_id"] == core) | (inv["buyer_id"] == core)) & (inv["paid_date"] > since)
    inv.loc[late, "paid_date"] = pd.NaT
    inv.loc[late, "paid_amount"] = np.nan
    return replace(tables, invoices=inv.reset_index(drop=True))


def acted(doc: dict) -> dict[tuple[str, str, str], list[dict]]:
    """The freshness tests at act, by (kind, group, feed)."""
    found: dict[tuple[str, str, str], list[dict]] = {}
    for t in doc["freshness"]["tests"]:
        if t["signal"] == "act":
            found.setdefault((t["kind"], t["group"], t["feed"]), []).append(t)
    return found


@pytest.mark.parametrize("days", [14, 21])
def test_an_outage_younger_than_the_shortest_cut_is_a_data_action(
    twins: Twins, stable: Monitored, days: int
) -> None:
    """A fifth of the SMEs silenced for the last 14 or 21 days: younger than the shortest like
    coverage cut (30 days), so no feature's drift shows it (before the freshness check the
    monitor had 0 act and 0 watch). The freshness check does: the share of the population's
    SMEs without an invoice sold, an invoice bought or an inventory snapshot in the last 14 days
    rose by about a fifth of the population against the reference dates, at act, and the first
    action says so with the counts."""
    from features.io import load_tables
    from serving.portfolio.monitor import drift_profile, monitor, summary
    from training.bundle import load_model

    loaded = load_model(twins.uri, twins.tracking_uri)
    tables = silenced(load_tables(twins.stable), stable.population, days)
    doc = summary(monitor(tables, loaded, drift_profile(loaded), AS_OF))
    assert doc["population"]["as_of"] == len(stable.population)
    found = acted(doc)
    for feed in ("invoices_sold", "invoices_bought", "inventory"):
        tests = found[("population", "all", feed)]
        assert max(t["rise"] for t in tests) > 0.15, tests  # a fifth of the SMEs fell silent
        by_window = {t["window_days"]: t for t in tests}
        assert 14 in by_window or feed == "inventory", tests
    line = doc["actions"][0]
    assert line.startswith("ACT data: SMEs of the population fell silent: invoices sold: "), line
    assert "inventory snapshots: " in line
    assert doc["freshness"]["act"] == sum(len(v) for v in found.values())
    # while the population's feeds are silent no drift is excused as window filling: the three
    # 365-day rates that are window-filling on the twin without the outage keep their raw signal
    assert doc["freshness"]["blocks_window_filling"] is True
    signals = {f["name"]: f["signal"] for f in doc["psi"]["features"]}
    assert "window-filling" not in signals.values(), signals
    assert not [a for a in doc["actions"] if a.startswith("RETRAIN")]
    before = {f["name"]: f["signal"] for f in stable.doc["psi"]["features"]}
    for name in RATES_365D:
        assert before[name] == "window-filling" and signals[name] == "act", (name, signals[name])


def test_a_core_whose_feed_stopped_is_named(twins: Twins, stable: Monitored) -> None:
    """Core C03's feed stopped 14 (7) days before the as-of date: none of its SMEs has an invoice
    with it, or a payment on one, in the last 14 (7) days. Every flag is C03's, each of its four
    feeds is at act, and the action names the core and the counts; the population's feeds, of
    which C03 is a part, are not flagged."""
    from features.io import load_tables
    from serving.portfolio.monitor import (
        freshness,
        freshness_actions,
        freshness_doc,
        freshness_references,
        months_before,
    )

    as_of = pd.Timestamp(AS_OF)
    references = freshness_references(as_of, months_before(as_of))
    for days in (14, 7):
        tables = core_stopped(load_tables(twins.stable), "C03", days)
        doc = {"freshness": freshness_doc(freshness(tables, as_of, references), as_of)}
        found = acted(doc)
        assert {(kind, group) for kind, group, _ in found} == {("core", "C03")}, found
        feeds = {"invoices_sold", "invoices_bought", "payments_received", "payments_made"}
        assert {feed for _, _, feed in found} == feeds
        for tests in found.values():
            assert any(t["active_as_of"] == 0 and t["window_days"] == days for t in tests)
        sold = next(t for t in found[("core", "C03", "invoices_sold")] if t["window_days"] == days)
        (line,) = freshness_actions(doc["freshness"])
        assert line.startswith("ACT data: core C03's feeds stopped: invoices sold to C03: "), line
        assert (
            f"invoices sold to C03: 0 of {sold['n_as_of']} SMEs with one in the last {days} days, "
            f"{sold['active_compare']} of {sold['n_compare']} on {sold['reference']}"
        ) in line


def test_the_unshocked_twin_raises_no_freshness_alarm(twins: Twins, stable: Monitored) -> None:
    """No false alarm: at the as-of date of the monitored run, and at every month end of the
    twin's second year (and two dates mid-month, one of them against month ends), no feed is at
    act, except the payments received from a core that entered stress that month in the
    simulator's truth: a stressed core pays 20-45 days later, so for weeks its suppliers receive
    nothing (the action says it may be the core not paying). The population the check counts is
    the scored one."""
    from features.io import load_tables
    from features.simulate import SimConfig, simulate
    from serving.portfolio.monitor import (
        freshness,
        freshness_references,
        months_before,
        population_at,
    )

    assert stable.doc["freshness"]["act"] == 0, acted(stable.doc)
    assert population_at(load_tables(twins.stable), AS_OF) == sorted(stable.population)
    truth = simulate(
        SimConfig(n_smes=800, n_cores=8, months=24, start=date(2022, 1, 1), seed=7,
                  progress=False)
    ).core_stress  # fmt: skip
    stressed = truth.pivot(index="as_of", columns="core_id", values="stressed").astype(bool)
    entered = stressed & ~stressed.shift(1, fill_value=False)
    tables = load_tables(twins.stable)
    dates = [*pd.date_range("2022-12-31", AS_OF, freq="ME"), pd.Timestamp("2023-12-15")]
    runs = [(t, freshness_references(t, months_before(t))) for t in dates]
    unaligned = pd.Timestamp("2023-12-15")  # against month ends
    runs.append((unaligned, freshness_references(unaligned, pd.Timestamp("2023-09-30"))))
    stress_flags = 0
    for i, (as_of, refs) in enumerate(runs):
        found = freshness(tables, as_of, refs)
        for t in found.tests[found.tests["signal"] == "act"].to_dict("records"):
            month = pd.offsets.MonthEnd().rollforward(as_of)
            assert (t["feed"], t["kind"]) == ("payments_received", "core"), (as_of, t)
            assert entered.loc[month, t["group"]], (as_of, t)
            stress_flags += 1
        out_of_phase = any(
            r.day != as_of.day and not (r.is_month_end and as_of.is_month_end) for r in refs
        )
        assert out_of_phase == (i == len(runs) - 1)
        if out_of_phase:  # monthly snapshots are not compared in windows shorter than a month
            assert any(s.startswith("inventory snapshots") for s in found.skipped)
            assert not (found.tests["feed"] == "inventory").any()
        else:
            assert not found.skipped
    assert stress_flags <= 6  # C08 in 2023-07 and C05 in 2023-11, three windows each


def test_the_freshness_check_sees_only_the_past(twins: Twins) -> None:
    """The point-in-time rule: the check at a date is the same whether the data end there or run
    on for months (records after the date removed, payments made after it unrecorded)."""
    from features.io import load_tables
    from serving.portfolio.monitor import freshness, freshness_references, months_before

    as_of = pd.Timestamp("2023-09-30")
    refs = freshness_references(as_of, months_before(as_of))
    tables = load_tables(twins.stable)
    inv, stock = tables.invoices, tables.inventory
    cut = inv[inv["issue_date"] <= as_of].copy()
    late = cut["paid_date"] > as_of
    cut.loc[late, "paid_date"] = pd.NaT
    cut.loc[late, "paid_amount"] = np.nan
    kept = stock[stock["snapshot_date"] <= as_of].reset_index(drop=True)
    ended = replace(tables, invoices=cut.reset_index(drop=True), inventory=kept)
    full, short = freshness(tables, as_of, refs), freshness(ended, as_of, refs)
    pd.testing.assert_frame_equal(full.tests, short.tests)
    assert full.references == short.references and full.skipped == short.skipped
