"""The simulator's latent model: calendar, industries, core enterprises, SME health and hazard.

Everything that drives a default lives here, as plain vectorised functions over numpy arrays of
any shape (the month-by-month simulation calls them on one value per SME; the Monte Carlo oracle
calls the very same functions on a ``(paths, SMEs)`` grid). `features.simulate` documents the
mechanisms as a whole; the parameters are declared once, in `ModelParams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from features.contract import RATING_SCALE

INDUSTRIES: tuple[str, ...] = (
    "automotive_parts",
    "electronics",
    "textiles",
    "food_processing",
    "chemicals",
    "machinery",
    "construction_materials",
    "consumer_goods",
)
REGIONS: tuple[str, ...] = ("east", "north", "south", "west", "central", "northeast")

ROLE_SUPPLIER, ROLE_DEALER, ROLE_BOTH = 0, 1, 2
HORIZON_MONTHS = 12  # the oracle's window (t, t + 365 d] spans the next 12 month periods
MAX_CORE_LINKS = 3
MAX_PEERS = 3
NEVER = np.iinfo(np.int64).max  # "no default" day number


@dataclass(frozen=True)
class ModelParams:
    """Every coefficient of the simulated world, declared once (units in the field comments)."""

    # industry factors: AR(1), one per industry, shared by every firm of that industry
    industry_phi: float = 0.9  # monthly persistence
    industry_sigma: float = 0.12  # monthly innovation sd
    # core enterprises: two-state (normal / stress) Markov regime
    stress_entry_base: float = 0.006  # monthly entry probability of an AAA core
    stress_entry_per_notch: float = 0.0025  # added per rating notch below AAA
    stress_entry_industry: float = 2.5  # entry prob x exp(-this x industry factor)
    stress_exit_low: float = 0.12  # monthly exit probability, drawn per core in [low, high]
    stress_exit_high: float = 0.28
    # SME latent health: h' = h + (1 - phi)(target - h) + sigma z
    health_phi: float = 0.9  # monthly persistence around the moving target
    level_sd: float = 0.75  # cross-sectional sd of the SME's long-run level
    drift_sd: float = 0.014  # sd of the SME-specific drift of its level (per month)
    shock_sd: float = 0.17  # typical monthly idiosyncratic shock sd (x U(0.7, 1.4) per SME)
    loading_low: float = 0.6  # industry-factor loading drawn in [low, high]
    loading_high: float = 1.4
    stress_impact_supplier: float = 0.7  # target shift per unit of stressed-core trade share
    stress_impact_dealer: float = 0.35
    age_effect: float = 0.15  # level + this x ln(age / 8 years)
    # monthly default hazard: cap x logistic(intercept - health_coef x h + stress_coef x s)
    hazard_cap: float = 0.2
    hazard_intercept: float = -5.8
    hazard_health: float = 2.2
    hazard_stress: float = 1.0
    # the bank's static onboarding rating: a noisy read of the onboarding health
    rating_noise_sd: float = 1.2
    rating_center: float = 11.0  # RATING_SCALE index of a firm with score 0 (BB)
    rating_per_sd: float = 2.0  # notches per unit of score
    rating_best: int = 6  # A-
    rating_worst: int = 17  # CCC


# --------------------------------------------------------------------------------------------
# calendar


@dataclass(frozen=True)
class Calendar:
    """Month periods as day numbers (days since 1970-01-01), including 12 months past the end.

    Period 0 runs from the start date to the end of its calendar month; every later period is a
    calendar month. As-of dates are the periods' last days; the extraction date is the last one.
    """

    months: int
    month_start: np.ndarray  # int64, months + HORIZON_MONTHS + 1 entries
    month_end: np.ndarray
    month_of_year: np.ndarray  # 0 = January

    @classmethod
    def build(cls, start: date, months: int) -> Calendar:
        first = np.datetime64(start, "M")
        span = first + np.arange(months + HORIZON_MONTHS + 1)
        month_start = span.astype("datetime64[D]").astype(np.int64)
        month_start[0] = np.datetime64(start, "D").astype(np.int64)
        month_end = (span + 1).astype("datetime64[D]").astype(np.int64) - 1
        month_of_year = (span.astype(np.int64) % 12).astype(np.int64)
        return cls(months, month_start, month_end, month_of_year)

    @property
    def extraction(self) -> int:
        """The last day simulated: nothing in the tables is dated later."""
        return int(self.month_end[self.months - 1])

    def days(self, m: int) -> int:
        return int(self.month_end[m] - self.month_start[m] + 1)

    def window_weights(self, m: int) -> np.ndarray:
        """Share of each of the next 12 periods inside (month_end[m], month_end[m] + 365]."""
        weights = np.ones(HORIZON_MONTHS)
        last = m + HORIZON_MONTHS
        horizon_end = self.month_end[m] + 365
        inside = min(horizon_end, self.month_end[last]) - self.month_start[last] + 1
        weights[-1] = inside / self.days(last)
        return weights


# --------------------------------------------------------------------------------------------
# transitions shared by the simulation and the oracle


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function (computed in place on a fresh array)."""
    out = np.negative(x)
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def industry_step(factor: np.ndarray, eps: np.ndarray, p: ModelParams) -> np.ndarray:
    """One month of the industry factors (AR(1))."""
    return p.industry_phi * factor + p.industry_sigma * eps


def core_step(
    stressed: np.ndarray,
    core_factor: np.ndarray,
    u: np.ndarray,
    entry: np.ndarray,
    exit_: np.ndarray,
    p: ModelParams,
) -> np.ndarray:
    """One month of the cores' stress regimes; entry is likelier in an industry downturn."""
    enter = u < entry * np.exp(-p.stress_entry_industry * core_factor)
    stay = u >= exit_
    return np.where(stressed, stay, enter)


def exposure_matrix(core_idx: np.ndarray, core_w: np.ndarray, n_cores: int) -> np.ndarray:
    """(n_cores, n_smes) float32: each SME's trade share with each core (columns sum to 1)."""
    n = core_idx.shape[0]
    out = np.zeros((n_cores, n), dtype=np.float32)
    for link in range(core_idx.shape[1]):
        np.add.at(out, (core_idx[:, link], np.arange(n)), core_w[:, link])
    return out


def stress_exposure(stressed: np.ndarray, exposure_w: np.ndarray) -> np.ndarray:
    """Trade-weighted share of each SME's cores that are stressed.

    `stressed` has shape (..., n_cores), `exposure_w` is `exposure_matrix(...)`; the result has
    shape (..., n_smes).
    """
    return np.asarray(stressed, dtype=np.float32) @ exposure_w


def factor_matrix(
    industry: np.ndarray, loading: np.ndarray, impact: np.ndarray, exposure_w: np.ndarray
) -> np.ndarray:
    """(n_industries + n_cores, n_smes) float32: how each SME's health target loads on the shared
    factors (its industry's factor x its loading; each core's stress flag x -impact x trade share).
    """
    n = industry.size
    out = np.zeros((len(INDUSTRIES) + exposure_w.shape[0], n), dtype=np.float32)
    out[industry, np.arange(n)] = loading
    out[len(INDUSTRIES) :] = -impact * exposure_w
    return out


def shared_factors(industry: np.ndarray, stressed: np.ndarray) -> np.ndarray:
    """The shared state as one float32 vector per path: industry factors, then core stress flags."""
    return np.concatenate(
        [np.asarray(industry, dtype=np.float32), np.asarray(stressed, dtype=np.float32)], axis=-1
    )


def health_target(
    level: np.ndarray, drift: np.ndarray, month: int, factor_term: np.ndarray
) -> np.ndarray:
    """Where an SME's health is pulled this month: its drifting level plus `factor_term`
    (= shared_factors(...) @ factor_matrix(...): its industry's cycle and its cores' stress)."""
    return factor_term + (level + drift * month)


def health_step(
    h: np.ndarray, target: np.ndarray, sigma: np.ndarray, z: np.ndarray, p: ModelParams
) -> np.ndarray:
    """One month of latent health: persistent, mean-reverting to the target, with a shock."""
    out = target - h
    out *= 1.0 - p.health_phi
    out += h
    out += sigma * z
    return out


def hazard(h: np.ndarray, exposure: np.ndarray, p: ModelParams) -> np.ndarray:
    """Monthly default probability: rises as health falls and as the SME's cores are stressed."""
    x = h * -p.hazard_health
    x += p.hazard_stress * exposure
    x += p.hazard_intercept
    out = sigmoid(x)
    out *= p.hazard_cap
    return out


# --------------------------------------------------------------------------------------------
# core enterprises and the shared market path


@dataclass(frozen=True)
class Cores:
    rating: np.ndarray  # RATING_SCALE index, AAA (0) .. B (14)
    industry: np.ndarray
    region: np.ndarray
    founded: np.ndarray  # day number
    terms: np.ndarray  # days the core takes to pay its suppliers by contract
    pay_late: np.ndarray  # habitual days beyond terms in normal times
    stress_late: np.ndarray  # extra days beyond terms while stressed
    order_cut: np.ndarray  # share of orders cut while stressed
    confirm: np.ndarray  # probability that the core confirms a supplier's receivable
    entry: np.ndarray  # monthly stress entry probability (before the industry effect)
    exit: np.ndarray  # monthly stress exit probability
    weight: np.ndarray  # relative size: how many SMEs it anchors

    @property
    def n(self) -> int:
        return int(self.rating.shape[0])


@dataclass(frozen=True)
class Shock:
    """A shock injected into the market path from month period `month` on (0 = the first).

    `cores`: indices of core enterprises held in stress from then on (they pay their suppliers
    late and cut orders, and their SMEs' health targets fall, as in any stress episode);
    `industries`: indices of industries whose factor is lowered by `depth` from then on (a
    downturn: its SMEs weaken and its cores enter stress more often). The oracle (`pd_true`) is
    not told: it forecasts from the state at each date with the usual dynamics, so it expects the
    downturn to revert. Before `month` the path is the unshocked one, draw for draw."""

    month: int
    cores: tuple[int, ...] = ()
    industries: tuple[int, ...] = ()
    depth: float = 0.6  # about 2 stationary standard deviations of an industry factor


@dataclass(frozen=True)
class Market:
    """The realised shared paths: industry factors and core regimes at each month end."""

    industry: np.ndarray  # (months, n_industries)
    stressed: np.ndarray  # (months, n_cores) bool
    industry0: np.ndarray  # before month 0
    stressed0: np.ndarray


def draw_cores(rng: np.random.Generator, n: int, start_day: int, p: ModelParams) -> Cores:
    """Core enterprises: agency ratings AAA..B, terms 30/60/90, discipline, stress propensity."""
    rating_probs = np.array([1, 2, 3, 4, 6, 8, 9, 10, 10, 9, 8, 6, 5, 4, 3], dtype=float)
    rating = rng.choice(rating_probs.size, size=n, p=rating_probs / rating_probs.sum())
    industry = rng.integers(0, len(INDUSTRIES), size=n)
    region = rng.integers(0, len(REGIONS), size=n)
    founded = start_day - (365.25 * rng.uniform(15, 70, size=n)).astype(np.int64)
    terms = rng.choice(np.array([30, 60, 90]), size=n, p=[0.3, 0.45, 0.25])
    pay_late = 1.0 + 0.5 * rating + rng.gamma(2.0, 1.5, size=n)
    stress_late = rng.uniform(20, 45, size=n)
    order_cut = rng.uniform(0.2, 0.45, size=n)
    confirm = rng.uniform(0.5, 0.95, size=n)
    entry = p.stress_entry_base + p.stress_entry_per_notch * rating
    exit_ = rng.uniform(p.stress_exit_low, p.stress_exit_high, size=n)
    weight = rng.lognormal(0.0, 0.8, size=n)
    return Cores(
        rating=rating,
        industry=industry,
        region=region,
        founded=founded,
        terms=terms,
        pay_late=pay_late,
        stress_late=stress_late,
        order_cut=order_cut,
        confirm=confirm,
        entry=entry,
        exit=exit_,
        weight=weight / weight.sum(),
    )


def _stationary_stress(cores: Cores) -> np.ndarray:
    return cores.entry / (cores.entry + cores.exit)


def draw_market(
    rng: np.random.Generator,
    cores: Cores,
    months: int,
    p: ModelParams,
    shock: Shock | None = None,
) -> Market:
    """Simulate the industry factors and the cores' regimes over the whole horizon (with the
    `shock`, if any, from its month on; the random draws are the same either way)."""
    n_ind = len(INDUSTRIES)
    stationary_sd = p.industry_sigma / np.sqrt(1.0 - p.industry_phi**2)
    industry0 = rng.normal(0.0, stationary_sd, size=n_ind)
    stressed0 = rng.random(cores.n) < _stationary_stress(cores)
    industry = np.empty((months, n_ind))
    stressed = np.empty((months, cores.n), dtype=bool)
    offset = np.zeros(n_ind)
    forced = np.zeros(cores.n, dtype=bool)
    if shock is not None:
        offset[list(shock.industries)] = -shock.depth
        forced[list(shock.cores)] = True
    base, st = industry0, stressed0
    for m in range(months):
        base = industry_step(base, rng.standard_normal(n_ind), p)
        shocked = shock is not None and m >= shock.month
        ind = base + offset if shocked else base
        st = core_step(st, ind[cores.industry], rng.random(cores.n), cores.entry, cores.exit, p)
        if shocked:
            st = st | forced
        industry[m], stressed[m] = ind, st
    return Market(industry, stressed, industry0, stressed0)


# --------------------------------------------------------------------------------------------
# SMEs


@dataclass(frozen=True)
class Smes:
    """Static attributes of a chunk of SMEs (one entry per SME)."""

    first: int  # global index of the chunk's first SME
    role: np.ndarray
    core_idx: np.ndarray  # (n, MAX_CORE_LINKS), padded with 0 where core_w == 0
    core_w: np.ndarray  # (n, MAX_CORE_LINKS) float32 trade shares, largest first
    n_cores: np.ndarray
    industry: np.ndarray
    region: np.ndarray
    founded: np.ndarray  # day number
    level: np.ndarray
    drift: np.ndarray
    loading: np.ndarray
    sigma: np.ndarray
    impact: np.ndarray
    h0: np.ndarray  # health at onboarding (just before month 0)
    rating: np.ndarray  # RATING_SCALE index of the onboarding rating
    sales: np.ndarray  # typical monthly sales
    pay_habit: np.ndarray  # habitual days beyond terms on its own payables
    dispute_habit: np.ndarray  # logit shift of disputes on its sales
    sales_terms: np.ndarray  # days it grants its SME customers
    dio: np.ndarray  # typical days of inventory
    pledger: np.ndarray  # bool: pledges inventory (warehouse receipts)
    pledge_bias: np.ndarray
    pledge_phase: np.ndarray  # month (mod 3) of its inventory-pledge draws
    guarantee: np.ndarray  # bool: its prepayment loans carry the core's repurchase guarantee
    peers: np.ndarray  # (n, MAX_PEERS) chunk-local indices of SME suppliers, -1 = none
    exposure_w: np.ndarray  # (n_cores, n) float32, see exposure_matrix
    factor_w: np.ndarray  # (n_industries + n_cores, n) float32, see factor_matrix

    @property
    def n(self) -> int:
        return int(self.role.shape[0])


def _distinct_offsets(rng: np.random.Generator, rows: int, k: int, high: int) -> np.ndarray:
    """k distinct integers in [0, high) per row (Floyd's algorithm, vectorised over rows)."""
    chosen = np.empty((rows, k), dtype=np.int64)
    for col, j in enumerate(range(high - k, high)):
        t = rng.integers(0, j + 1, size=rows)
        taken = (chosen[:, :col] == t[:, None]).any(axis=1)
        chosen[:, col] = np.where(taken, j, t)
    return chosen


def draw_smes(
    rng: np.random.Generator, n: int, first: int, cores: Cores, start_day: int, p: ModelParams
) -> Smes:
    """Draw a chunk of SMEs, their links to cores and to each other, and their onboarding state."""
    role = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    k = np.minimum(
        rng.choice(np.arange(1, MAX_CORE_LINKS + 1), size=n, p=[0.5, 0.35, 0.15]), cores.n
    )
    # distinct cores, size-weighted (Gumbel top-k), ordered by trade share (largest = main core)
    keys = np.log(cores.weight)[None, :] + rng.gumbel(size=(n, cores.n))
    ranked = np.argsort(-keys, axis=1, kind="stable")
    width = min(MAX_CORE_LINKS, cores.n)
    core_idx = np.zeros((n, MAX_CORE_LINKS), dtype=np.int64)
    core_idx[:, :width] = ranked[:, :width]
    shares = rng.gamma(2.0, 1.0, size=(n, MAX_CORE_LINKS))
    shares[np.arange(MAX_CORE_LINKS)[None, :] >= k[:, None]] = 0.0
    shares = -np.sort(-shares, axis=1)
    core_w = (shares / shares.sum(axis=1, keepdims=True)).astype(np.float32)
    core_idx[core_w == 0] = 0

    main_core = core_idx[:, 0]
    industry = np.where(
        rng.random(n) < 0.7, cores.industry[main_core], rng.integers(0, len(INDUSTRIES), size=n)
    )
    region = np.where(
        rng.random(n) < 0.6, cores.region[main_core], rng.integers(0, len(REGIONS), size=n)
    )
    age_years = 1.0 + rng.gamma(2.0, 5.0, size=n)
    founded = start_day - (365.25 * age_years).astype(np.int64)

    industry_offset = np.linspace(-0.2, 0.2, len(INDUSTRIES))[::-1]
    region_offset = np.linspace(-0.1, 0.1, len(REGIONS))
    level = (
        industry_offset[industry]
        + region_offset[region]
        + p.age_effect * np.log(age_years / 8.0)
        + rng.normal(0.0, p.level_sd, size=n)
    )
    drift = rng.normal(0.0, p.drift_sd, size=n)
    loading = rng.uniform(p.loading_low, p.loading_high, size=n)
    sigma = p.shock_sd * rng.uniform(0.7, 1.4, size=n)
    impact = np.select(
        [role == ROLE_SUPPLIER, role == ROLE_DEALER],
        [p.stress_impact_supplier, p.stress_impact_dealer],
        0.5 * (p.stress_impact_supplier + p.stress_impact_dealer),
    )
    h0 = level + rng.normal(0.0, 1.0, size=n) * sigma / np.sqrt(1.0 - p.health_phi**2)
    score = h0 + rng.normal(0.0, p.rating_noise_sd, size=n)
    rating = np.clip(
        np.rint(p.rating_center - p.rating_per_sd * score), p.rating_best, p.rating_worst
    ).astype(np.int64)

    exposure_w = exposure_matrix(core_idx, core_w, cores.n)
    peers = np.full((n, MAX_PEERS), -1, dtype=np.int64)
    if n > 1:
        n_peers = np.minimum(rng.integers(1, MAX_PEERS + 1, size=n), n - 1)
        width = min(MAX_PEERS, n - 1)
        offsets = _distinct_offsets(rng, n, width, n - 1) + 1  # in [1, n-1]: never itself
        chosen = (np.arange(n)[:, None] + offsets) % n
        keep = np.arange(width)[None, :] < n_peers[:, None]
        peers[:, :width] = np.where(keep, chosen, -1)

    return Smes(
        first=first,
        role=role,
        core_idx=core_idx,
        core_w=core_w,
        n_cores=k,
        industry=industry,
        region=region,
        founded=founded,
        level=level,
        drift=drift,
        loading=loading,
        sigma=sigma,
        impact=impact,
        h0=h0,
        rating=rating,
        sales=rng.lognormal(np.log(250_000.0), 0.9, size=n),
        pay_habit=rng.normal(0.0, 6.0, size=n),
        dispute_habit=rng.normal(0.0, 0.5, size=n),
        sales_terms=rng.choice(np.array([30, 45, 60]), size=n),
        dio=rng.uniform(30.0, 90.0, size=n),
        pledger=rng.random(n) < 0.5,
        pledge_bias=rng.normal(-0.6, 0.5, size=n),
        pledge_phase=rng.integers(0, 3, size=n),
        guarantee=rng.random(n) < 0.4,
        peers=peers,
        exposure_w=exposure_w,
        factor_w=factor_matrix(industry, loading, impact, exposure_w),
    )


# --------------------------------------------------------------------------------------------
# the oracle: Monte Carlo forward simulation of the same model


@dataclass(frozen=True)
class CommonRandomNumbers:
    """One set of forward shocks reused for every SME and every as-of date (with antithetics).

    Sharing the draws makes pd_true a smooth, deterministic function of the latent state: two
    SMEs in the same state get the same PD, and a healthier state never gets a higher one.
    """

    z: np.ndarray  # (paths, 12) float32: SME shocks
    industry_eps: np.ndarray  # (paths, 12, n_industries)
    core_u: np.ndarray  # (paths, 12, n_cores)

    @classmethod
    def draw(cls, rng: np.random.Generator, paths: int, n_cores: int) -> CommonRandomNumbers:
        half = (paths + 1) // 2
        z = rng.standard_normal((half, HORIZON_MONTHS))
        eps = rng.standard_normal((half, HORIZON_MONTHS, len(INDUSTRIES)))
        u = rng.random((half, HORIZON_MONTHS, n_cores))
        return cls(
            z=np.concatenate([z, -z])[:paths].astype(np.float32),
            industry_eps=np.concatenate([eps, -eps])[:paths],
            core_u=np.concatenate([u, 1.0 - u])[:paths],
        )


def forward_pd(
    h: np.ndarray,
    smes: Smes,
    rows: np.ndarray,
    month: int,
    industry_now: np.ndarray,
    stressed_now: np.ndarray,
    cores: Cores,
    crn: CommonRandomNumbers,
    weights: np.ndarray,
    p: ModelParams,
) -> np.ndarray:
    """P(default in (t, t + 365 d]) for the chunk's SMEs `rows`, given their state at `month`.

    The industry factors and core regimes are simulated forward from their current values, each
    SME's health from its current value, month by month with the same transition and hazard
    functions as the simulation; the default event itself is integrated out (survival = product
    of 1 - hazard x the month's share inside the window), which removes its sampling noise.
    """
    f32 = np.float32
    paths = crn.z.shape[0]
    ind = np.broadcast_to(industry_now, (paths, industry_now.size))
    st = np.broadcast_to(stressed_now, (paths, stressed_now.size))
    exposure_w = smes.exposure_w[:, rows]
    factor_w = smes.factor_w[:, rows]
    level = smes.level[rows].astype(f32)
    drift = smes.drift[rows].astype(f32)
    sigma = smes.sigma[rows].astype(f32)
    health = np.broadcast_to(h.astype(f32), (paths, rows.size))
    survival = np.ones((paths, rows.size), dtype=f32)
    for k in range(HORIZON_MONTHS):
        ind = industry_step(ind, crn.industry_eps[:, k, :], p)
        st = core_step(st, ind[:, cores.industry], crn.core_u[:, k, :], cores.entry, cores.exit, p)
        exposure = stress_exposure(st, exposure_w)
        target = health_target(level, drift, month + 1 + k, shared_factors(ind, st) @ factor_w)
        health = health_step(health, target, sigma, crn.z[:, k, None], p)
        alive = hazard(health, exposure, p)
        alive *= f32(weights[k])
        np.subtract(f32(1.0), alive, out=alive)
        survival *= alive
    return 1.0 - survival.astype(np.float64).mean(axis=0)


def rating_label(index: np.ndarray) -> np.ndarray:
    """RATING_SCALE labels for ordinal indices."""
    return np.asarray(RATING_SCALE, dtype=object)[index]
