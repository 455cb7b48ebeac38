"""The supply-chain simulator: valid, deterministic, atomic, causal and statistically realistic."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import features.simulate as simulate_module
from features.cli import app
from features.contract import FINANCIALS, RATING_SCALE, TABLES
from features.exceptions import ScfRiskError
from features.io import load_tables
from features.sim import model
from features.simulate import (
    SimConfig,
    SimResult,
    build_world,
    generate_to_folder,
    latent_smes,
    simulate,
)

SMALL = SimConfig(n_smes=200, months=24, seed=3, progress=False)
DEFAULT = SimConfig(seed=1, progress=False)  # the default dataset: 2,000 SMEs x 36 months
FILES = {*(f"{t.name}.parquet" for t in TABLES), "truth.parquet"}
YEAR = pd.Timedelta(days=365)
EVENT_DATES = {
    "enterprises": ["founded_date"],
    "invoices": ["issue_date", "paid_date", "confirmed_date"],
    "inventory": ["snapshot_date"],
    "loans": ["disbursed_date", "default_date"],
    "financials": ["period_end", "published_date"],
    "truth": ["as_of"],
}


@pytest.fixture(scope="module")
def small() -> SimResult:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def default() -> SimResult:
    return simulate(DEFAULT)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "data"
    generate_to_folder(SMALL, out)
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _default_dates(result: SimResult) -> pd.Series:
    """Each defaulted SME's default date, read (as a model must) from its loans."""
    loans = result.loans.dropna(subset=["default_date"])
    return loans.groupby("sme_id")["default_date"].min()


def _labelled(result: SimResult) -> pd.DataFrame:
    """Mature truth rows with the realised label, and the latent health."""
    return result.labelled_truth().merge(result.latent, on=["sme_id", "as_of"])


# --------------------------------------------------------------------------------------------
# files: determinism, contract, atomicity, command line


def test_same_seed_gives_byte_identical_files(small_folder: Path, tmp_path: Path) -> None:
    generate_to_folder(SMALL, tmp_path / "again")
    assert set(_digests(small_folder)) == FILES
    assert _digests(tmp_path / "again") == _digests(small_folder)
    generate_to_folder(replace(SMALL, seed=4), tmp_path / "other")
    other = _digests(tmp_path / "other")
    assert other["invoices.parquet"] != _digests(small_folder)["invoices.parquet"]


def test_folder_passes_contract_validation_and_matches_memory(
    small_folder: Path, small: SimResult
) -> None:
    tables = load_tables(small_folder)
    assert tables.warnings == ()
    for name, frame in tables.frames().items():
        assert len(frame) > 0, name
        pd.testing.assert_frame_equal(frame, getattr(small, name))
    truth = pq.read_table(small_folder / "truth.parquet").to_pandas(date_as_object=False)
    assert list(truth.columns) == ["sme_id", "as_of", "pd_true"]
    assert len(truth) == len(small.truth)
    np.testing.assert_array_equal(truth["pd_true"], small.truth["pd_true"])


def test_parquet_columns_and_types_are_the_contracts(small_folder: Path) -> None:
    arrow = {"str": pa.string(), "date": pa.date32(), "float": pa.float64(), "bool": pa.bool_()}
    for table in TABLES:
        schema = pq.read_schema(small_folder / f"{table.name}.parquet")
        declared = [(c.name, arrow[c.kind]) for c in table.columns]
        assert [(f.name, f.type) for f in schema][: len(declared)] == declared, table.name
        extras = [f for f in schema][len(declared) :]
        assert table is FINANCIALS or not extras, table.name
        assert all(f.type == pa.float64() for f in extras)
    truth = pq.read_schema(small_folder / "truth.parquet")
    assert [(f.name, f.type) for f in truth] == [
        ("sme_id", pa.string()),
        ("as_of", pa.date32()),
        ("pd_true", pa.float64()),
    ]


def test_refuses_a_non_empty_folder_and_accepts_an_empty_one(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ScfRiskError, match="not empty"):
        generate_to_folder(SMALL, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(ScfRiskError, match="not a folder"):
        generate_to_folder(SMALL, a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_to_folder(replace(SMALL, n_smes=20, months=3), empty)
    assert {p.name for p in empty.iterdir()} == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty", "file"]


def test_a_failed_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = simulate_module.simulate_chunk
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(simulate_module, "simulate_chunk", failing)
    out = tmp_path / "data"
    with pytest.raises(RuntimeError, match="disk full"):
        generate_to_folder(replace(SMALL, n_smes=40, chunk_size=20, months=3), out)
    assert calls["n"] == 2  # the first chunk had been written when the run failed
    assert list(tmp_path.iterdir()) == []


def test_bad_config_is_refused() -> None:
    with pytest.raises(ScfRiskError, match="n_smes"):
        simulate(replace(SMALL, n_smes=0))
    with pytest.raises(ScfRiskError, match="mc_paths"):
        simulate(replace(SMALL, mc_paths=1))


def test_cli_generate_then_validate(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    runner = CliRunner()
    args = ["generate", "--out", str(out), "--smes", "300", "--months", "24", "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == FILES
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    assert "not empty" in again.output


# --------------------------------------------------------------------------------------------
# the tables tell a consistent story


def test_no_event_after_the_extraction_date(small: SimResult) -> None:
    extraction = pd.Timestamp(small.extraction_date)
    assert extraction == pd.Timestamp("2023-12-31")  # 24 months from 2022-01-01
    for name, columns in EVENT_DATES.items():
        frame = getattr(small, name)
        for column in columns:
            assert frame[column].max() <= extraction, (name, column)
    assert small.invoices["issue_date"].min() >= pd.Timestamp(SMALL.start)
    assert small.loans["disbursed_date"].min() == pd.Timestamp(SMALL.start)
    assert small.invoices["paid_date"].isna().any()  # still open at extraction
    month_ends = small.inventory["snapshot_date"]
    assert (month_ends.dt.is_month_end).all()
    assert (small.truth["as_of"].dt.is_month_end).all()


def test_defaults_show_on_open_loans_and_stop_trading(small: SimResult) -> None:
    defaults = _default_dates(small)
    assert len(defaults) > 0
    loans = small.loans
    hit = loans.dropna(subset=["default_date"])
    assert (hit["default_date"] >= hit["disbursed_date"]).all()
    assert (hit["default_date"] <= hit["maturity_date"]).all()
    assert (hit.groupby("sme_id")["default_date"].nunique() == 1).all()
    # every loan open on the default day carries it
    open_then = loans.merge(defaults.rename("day"), left_on="sme_id", right_index=True)
    open_then = open_then[
        (open_then["disbursed_date"] <= open_then["day"])
        & (open_then["day"] <= open_then["maturity_date"])
    ]
    assert (open_then["default_date"] == open_then["day"]).all()
    # an SME leaves the truth (and the trade) at its default
    last_truth = small.truth.groupby("sme_id")["as_of"].max()
    ended_early = last_truth[last_truth < pd.Timestamp(small.extraction_date)]
    smes = small.enterprises.loc[small.enterprises["role"] == "sme", "enterprise_id"]
    never = set(smes) - set(last_truth.index)  # defaulted within the first month
    assert set(ended_early.index) | never == set(defaults.index)
    assert (defaults[sorted(never)] <= pd.Timestamp("2022-01-31")).all()
    gap = defaults[ended_early.index] - ended_early
    assert (gap > pd.Timedelta(0)).all() and (gap <= pd.Timedelta(days=31)).all()
    for column, table in (("seller_id", "invoices"), ("buyer_id", "invoices")):
        frame = getattr(small, table)
        after = frame["issue_date"] >= frame[column].map(defaults)
        assert not after.any(), column
    assert not (loans["disbursed_date"] > loans["sme_id"].map(defaults)).any()
    assert not (small.inventory["snapshot_date"] >= small.inventory["sme_id"].map(defaults)).any()


def test_every_sme_always_has_an_open_loan(small: SimResult) -> None:
    spans = small.truth.merge(small.loans, on="sme_id")
    covered = spans[
        (spans["disbursed_date"] <= spans["as_of"]) & (spans["as_of"] <= spans["maturity_date"])
    ]
    assert len(covered.drop_duplicates(["sme_id", "as_of"])) == len(small.truth)


def test_trade_links_roles_and_financing(small: SimResult) -> None:
    roles = small.enterprises.set_index("enterprise_id")["role"]
    inv = small.invoices
    seller_role, buyer_role = inv["seller_id"].map(roles), inv["buyer_id"].map(roles)
    assert ((seller_role == "sme") | (buyer_role == "sme")).all()
    assert (inv["seller_id"] != inv["buyer_id"]).all()
    assert ((seller_role == "sme") & (buyer_role == "sme")).any()  # SMEs trade with each other
    to_core = inv[buyer_role == "core"].groupby("seller_id")["buyer_id"].nunique()
    from_core = inv[seller_role == "core"].groupby("buyer_id")["seller_id"].nunique()
    assert to_core.between(1, 3).all() and from_core.between(1, 3).all()
    assert inv.loc[buyer_role == "core", "confirmed_date"].notna().mean() > 0.4
    assert inv.loc[buyer_role == "sme", "confirmed_date"].isna().all()
    loans = small.loans
    rf = loans[loans["product"] == "receivable_financing"]
    pp = loans[loans["product"] == "prepayment"]
    truth = small.truth
    survivors = set(truth.loc[truth["as_of"] == truth["as_of"].max(), "sme_id"])
    assert set(rf["sme_id"]) & survivors <= set(to_core.index)  # suppliers: sell to cores
    assert set(pp["sme_id"]) & survivors <= set(from_core.index)  # dealers: buy from cores
    assert loans.loc[loans["product"] != "inventory_pledge", "core_id"].notna().all()
    assert pp["repurchase_guarantee"].any() and not rf["repurchase_guarantee"].any()
    ratings = small.enterprises.groupby("role")["external_rating"].agg(set)
    assert ratings["core"] <= set(RATING_SCALE[: RATING_SCALE.index("B") + 1])
    assert small.enterprises["external_rating"].notna().all()


def test_financial_statements_are_published_with_a_lag(small: SimResult) -> None:
    fin = small.financials
    lag = (fin["published_date"] - fin["period_end"]).dt.days
    assert lag.between(90, 150).all()
    assert (fin["period_end"].dt.strftime("%m-%d") == "12-31").all()
    assert set(fin["period_end"].dt.year) == {2021, 2022}  # 2023's is published after extraction
    assert {"revenue", "current_ratio", "debt_to_assets", "net_margin"} <= set(fin.columns)


# --------------------------------------------------------------------------------------------
# the oracle


def test_nothing_recorded_depends_on_the_future(small: SimResult) -> None:
    """Simulating fewer months gives exactly the records dated up to the shorter extraction date:
    every table (pd_true included) is built from states at or before each record's date."""
    short = simulate(replace(SMALL, months=13))
    cut = pd.Timestamp(short.extraction_date)
    assert cut == pd.Timestamp("2023-01-31")

    def upto(frame: pd.DataFrame, since: str, later: dict[str, list[str]]) -> pd.DataFrame:
        out = frame[frame[since] <= cut].reset_index(drop=True)
        for column, cleared in later.items():
            after = out[column] > cut
            for name in cleared:
                out[name] = out[name].mask(after)
        return out

    expected = {
        "enterprises": small.enterprises,
        "invoices": upto(
            small.invoices,
            "issue_date",
            {"paid_date": ["paid_amount", "paid_date"], "confirmed_date": ["confirmed_date"]},
        ),
        "inventory": upto(small.inventory, "snapshot_date", {}),
        "loans": upto(small.loans, "disbursed_date", {"default_date": ["default_date"]}),
        "financials": upto(small.financials, "published_date", {}),
        "truth": upto(small.truth, "as_of", {}),
    }
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(getattr(short, name), frame, obj=name)
    assert len(short.invoices) < len(small.invoices)


def test_latent_smes_are_the_simulated_smes() -> None:
    """The diagnostics' latent attributes are drawn as the simulation drew them: every SME's
    industry, region, founding date and onboarding rating (drawn after its level and drift, from
    the same stream) match the enterprises table, over several chunks."""
    config = replace(SMALL, chunk_size=70)
    result = simulate(config)
    chunks = list(latent_smes(config, build_world(config)))
    assert [c.first for c in chunks] == [0, 70, 140]
    smes = result.enterprises[result.enterprises["role"] == "sme"].reset_index(drop=True)
    industry = np.concatenate([c.industry for c in chunks])
    region = np.concatenate([c.region for c in chunks])
    rating = np.concatenate([c.rating for c in chunks])
    founded = np.concatenate([c.founded for c in chunks])
    assert len(smes) == config.n_smes == industry.size
    assert smes["industry"].tolist() == [model.INDUSTRIES[i] for i in industry]
    assert smes["region"].tolist() == [model.REGIONS[i] for i in region]
    assert smes["external_rating"].tolist() == [RATING_SCALE[i] for i in rating]
    days = smes["founded_date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    np.testing.assert_array_equal(days, founded)
    level = np.concatenate([c.level for c in chunks])
    assert np.unique(level).size == level.size  # one draw per SME, not a chunk repeated


def test_forward_pd_matches_a_brute_force_simulation() -> None:
    """The oracle equals simulating the model forward with Bernoulli defaults and fresh draws,
    and, thanks to common random numbers, decreases smoothly in health."""
    config = replace(SMALL, mc_paths=4000)
    world = simulate_module.build_world(config)
    p, cores, market = world.params, world.cores, world.market
    smes = model.draw_smes(np.random.default_rng(5), 30, 0, cores, 0, p)
    rows = np.arange(smes.n)
    month = 5
    weights = world.calendar.window_weights(month)
    h = smes.level + 0.3 * np.random.default_rng(6).standard_normal(smes.n) - 0.8
    args = (market.industry[month], market.stressed[month], cores, world.crn, weights, p)
    oracle = model.forward_pd(h, smes, rows, month, *args)

    rng = np.random.default_rng(7)
    paths = 4000
    ind = np.tile(market.industry[month], (paths, 1))
    st = np.tile(market.stressed[month], (paths, 1))
    health = np.tile(h, (paths, 1))
    defaulted = np.zeros((paths, smes.n), dtype=bool)
    for k in range(model.HORIZON_MONTHS):
        ind = model.industry_step(ind, rng.standard_normal(ind.shape), p)
        u = rng.random(st.shape)
        st = model.core_step(st, ind[:, cores.industry], u, cores.entry, cores.exit, p)
        exposure = model.stress_exposure(st, smes.exposure_w)
        factors = model.shared_factors(ind, st) @ smes.factor_w
        target = model.health_target(smes.level, smes.drift, month + 1 + k, factors)
        health = model.health_step(
            health, target, smes.sigma, rng.standard_normal((paths, smes.n)), p
        )
        hit = rng.random(defaulted.shape) < model.hazard(health, exposure, p) * weights[k]
        defaulted |= hit
    brute = defaulted.mean(axis=0)
    se = np.sqrt(brute * (1 - brute) / paths) + 1e-3
    assert np.all(np.abs(oracle - brute) < 4 * se), np.c_[oracle, brute]
    assert oracle.std() > 0.02  # a spread of risks was tested, not a constant

    grid = np.linspace(-3, 2, 11)
    one = np.zeros(grid.size, dtype=np.int64)
    curve = model.forward_pd(grid, smes, one, month, *args)
    assert np.all(np.diff(curve) < 0)
    assert curve.min() > 0 and curve.max() < 0.99  # default is never certain


# --------------------------------------------------------------------------------------------
# statistics of the default dataset (2,000 SMEs x 36 months)


def test_volume_and_default_rate(default: SimResult) -> None:
    sme_months = len(default.truth)  # SME-month ends alive and not defaulted
    per_month = len(default.invoices) / sme_months
    assert 5 <= per_month <= 20
    annual = len(_default_dates(default)) / (sme_months / 12)
    assert 0.02 <= annual <= 0.06


def test_oracle_and_static_rating_auc(default: SimResult) -> None:
    rows = _labelled(default)
    assert rows["default_12m"].sum() > 300  # enough defaults for stable AUCs
    oracle = roc_auc_score(rows["default_12m"], rows["pd_true"])
    static = roc_auc_score(rows["default_12m"], rows["rating"])
    assert 0.80 <= oracle <= 0.92
    assert 0.60 <= static <= 0.72
    assert oracle - static > 0.1
    # calibrated: the oracle's mean PD is the realised default rate
    assert rows["pd_true"].mean() == pytest.approx(rows["default_12m"].mean(), rel=0.2)
    assert rows["pd_true"].max() < 0.99


def _monthly(values: pd.Series, sme: pd.Series, day: pd.Series, how: str) -> pd.Series:
    """Aggregate `values` by (sme_id, calendar month of `day`)."""
    key = [sme.rename("sme_id"), day.dt.to_period("M").rename("month")]
    return values.groupby(key).agg(how)


def _observables(result: SimResult) -> dict[str, pd.Series]:
    """Per SME-month aggregates of what the tables record, indexed by (sme_id, month)."""
    smes = set(result.enterprises.loc[result.enterprises["role"] == "sme", "enterprise_id"])
    inv = result.invoices
    sells = inv[inv["seller_id"].isin(smes)]
    paid = inv[inv["buyer_id"].isin(smes) & inv["paid_date"].notna()]
    late = (paid["paid_date"] - paid["due_date"]).dt.days
    partial = (paid["paid_amount"] < paid["amount"]).astype(float)
    stock, loans, fin = result.inventory, result.loans, result.financials
    cogs = _monthly(stock["cogs"], stock["sme_id"], stock["snapshot_date"], "sum")
    inventory = _monthly(stock["inventory_value"], stock["sme_id"], stock["snapshot_date"], "sum")
    pledged = _monthly(stock["pledged_value"], stock["sme_id"], stock["snapshot_date"], "sum")
    drawn = _monthly(loans["amount"], loans["sme_id"], loans["disbursed_date"], "sum")
    out = {
        "late_days_own_payables": _monthly(late, paid["buyer_id"], paid["paid_date"], "mean"),
        "partial_payment_share": _monthly(partial, paid["buyer_id"], paid["paid_date"], "mean"),
        "dispute_rate": _monthly(
            sells["disputed"].astype(float), sells["seller_id"], sells["issue_date"], "mean"
        ),
        "log_sales": np.log(
            _monthly(sells["amount"], sells["seller_id"], sells["issue_date"], "sum")
        ),
        "days_inventory": inventory / cogs * 30,
        "pledged_share": pledged / inventory,
        "financing_per_cogs": drawn / cogs,
    }
    for ratio in ("current_ratio", "debt_to_assets", "net_margin"):
        out[ratio] = _monthly(fin[ratio], fin["sme_id"], fin["published_date"], "mean")
    return out


def test_no_single_observable_reveals_the_latent_health(default: SimResult) -> None:
    latent = default.latent
    health = _monthly(latent["health"], latent["sme_id"], latent["as_of"], "mean")
    rho = {}
    for name, series in _observables(default).items():
        both = pd.concat([health, series.rename("x")], axis=1, join="inner").dropna()
        assert len(both) > 1000, name
        rho[name] = spearmanr(both["health"], both["x"]).statistic
    assert all(abs(r) < 0.9 for r in rho.values()), rho
    # ... but the signals do carry it, each with the direction a credit analyst expects
    assert rho["late_days_own_payables"] < -0.3 and rho["days_inventory"] < -0.3
    assert rho["financing_per_cogs"] < -0.3 and rho["dispute_rate"] < -0.15
    assert rho["partial_payment_share"] < -0.1
    assert rho["current_ratio"] > 0.3 and rho["net_margin"] > 0.3 and rho["debt_to_assets"] < -0.3


def test_core_stress_slows_payment_and_cuts_orders(default: SimResult) -> None:
    regimes = default.core_stress
    month = regimes["as_of"].dt.to_period("M").rename("month")
    stress = regimes.set_index(["core_id", month])["stressed"]
    assert 0.02 < stress.mean() < 0.4
    inv = default.invoices
    to_core = inv[inv["buyer_id"].isin(stress.index.get_level_values(0))].dropna(
        subset=["paid_date"]
    )
    due_month = to_core["due_date"].dt.to_period("M")
    inside = due_month <= pd.Period(default.extraction_date, "M")
    to_core = to_core[inside]
    key = pd.MultiIndex.from_arrays([to_core["buyer_id"], due_month[inside]])
    stressed = stress.reindex(key).to_numpy()
    late = (to_core["paid_date"] - to_core["due_date"]).dt.days.to_numpy()
    assert late[stressed].mean() - late[~stressed].mean() > 15
    orders = inv.groupby([inv["buyer_id"], inv["issue_date"].dt.to_period("M")])["amount"].sum()
    orders = orders[orders.index.get_level_values(0).isin(stress.index.get_level_values(0))]
    relative = orders / orders.groupby(level=0).transform("mean")
    flagged = stress.reindex(relative.index).to_numpy()
    assert relative[flagged].mean() < 0.9 * relative[~flagged].mean()


# -- shocks ---------------------------------------------------------------------------------------
def test_shock_parses_and_refuses_bad_targets() -> None:
    from datetime import date

    from features.simulate import parse_shock

    shock = parse_shock("core:C02+industry:textiles@2022-07", start=date(2022, 1, 1), n_cores=8)
    assert shock == model.Shock(
        month=6, cores=(1,), industries=(model.INDUSTRIES.index("textiles"),)
    )
    with pytest.raises(ScfRiskError, match="unknown target 'core:C99'"):
        parse_shock("core:C99@2022-07", start=date(2022, 1, 1), n_cores=8)
    with pytest.raises(ScfRiskError, match="expected TARGET"):
        parse_shock("industry:textiles", start=date(2022, 1, 1), n_cores=8)
    with pytest.raises(ScfRiskError, match="shock's month"):
        replace(SMALL, shock=model.Shock(month=30, cores=(0,))).check()


def test_a_core_shock_that_would_change_nothing_is_refused() -> None:
    """Holding in stress a core that is in stress anyway in every month from the shock on is a
    shock in name only: refused, naming the core; any other core is accepted and held in stress.
    (Seed 7 has such a core, C04, in stress from its fourth month to the end.)"""
    from features.simulate import build_world

    month = 12
    refused = accepted = 0
    for seed in (7, 8):
        config = replace(SMALL, n_cores=8, months=24, seed=seed)
        idle = build_world(config).market.stressed[month:].all(axis=0)
        for core in range(config.n_cores):
            shocked = replace(config, shock=model.Shock(month=month, cores=(core,)))
            if idle[core]:
                with pytest.raises(ScfRiskError, match=f"C0{core + 1} are in stress in every"):
                    build_world(shocked)
                refused += 1
            else:
                assert build_world(shocked).market.stressed[month:, core].all()
                accepted += 1
    assert refused >= 1 and accepted >= 1


def test_a_shock_changes_nothing_before_its_month_and_hurts_its_targets_after() -> None:
    config = replace(SMALL, n_smes=150, n_cores=6, months=18)
    industry = 0
    shock = model.Shock(month=9, cores=(0,), industries=(industry,), depth=0.8)
    calm, hit = simulate(config), simulate(replace(config, shock=shock))
    cut = calm.truth["as_of"].sort_values().unique()[9]  # the shock month's end
    before_calm = calm.truth[calm.truth["as_of"] < cut].reset_index(drop=True)
    before_hit = hit.truth[hit.truth["as_of"] < cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(before_calm, before_hit)
    stressed = hit.core_stress[hit.core_stress["as_of"] >= cut]
    assert stressed[stressed["core_id"] == calm.enterprises["enterprise_id"].iloc[0]][
        "stressed"
    ].all()
    # the SMEs of the hit industry: their true PD rises against the same SMEs unshocked
    ents = calm.enterprises.set_index("enterprise_id")
    members = ents.index[ents["industry"] == model.INDUSTRIES[industry]]
    after = [
        t[(t["as_of"] >= cut) & t["sme_id"].isin(members)].set_index(["sme_id", "as_of"])["pd_true"]
        for t in (calm.truth, hit.truth)
    ]
    both = pd.concat(after, axis=1, join="inner", keys=["calm", "hit"])
    assert len(both) > 20
    assert both["hit"].mean() > 1.5 * both["calm"].mean()
