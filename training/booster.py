"""Growing the LightGBM booster: parameters, early stopping, the bag of boosters on small data,
the Dask engine and Optuna tuning.

Every function takes float matrices in catalog order (categoricals as integer codes, NaN =
missing, see `training.model.to_matrix`) so the pandas and Dask engines see the same data.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Self

import lightgbm as lgb
import numpy as np

from features.catalog import Feature
from training.metrics import log_loss
from training.monotone import monotone_constraints

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "binary_logloss",
    "learning_rate": 0.02,
    "num_leaves": 15,
    "max_depth": -1,
    "min_data_in_leaf": 100,
    "min_sum_hessian_in_leaf": 1e-3,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 20.0,
    "max_bin": 255,
    "cat_smooth": 200.0,
    "cat_l2": 200.0,
    "min_data_per_group": 50,
    "monotone_constraints_method": "basic",
    "deterministic": True,
    "force_col_wise": True,
    "verbose": -1,
}
"""Defaults for panels of correlated monthly rows (the tree size comes from `scaled_params`): a
slow learning rate (0.02) so that the validation loss curve is smooth and early stopping is not
stopped by one noisy round, half the columns per tree and a strong L2 shrinkage (many features
carry the same few latent signals); bagging; `deterministic` with fixed threads and seed for
reproducibility. On the 60-month demo (leak-free) these moved the OOT AUC from 0.829 to 0.835 and
the ECE from 0.0137 to 0.0113 (README, issue 13).
`cat_smooth` and `cat_l2` (200, LightGBM's defaults 10) shrink the categoricals' levels (industry,
region) about halfway to the overall rate: what a level learns in the training months is in good
part that period's realised industry cycle, which has decorrelated by the OOT months (issue 13,
`bench.bench_gap`). On the 60-month demo, leak-free, data seeds 1 / 2 / 3: OOT AUC 0.8372 /
0.8653 / 0.8257 -> 0.8378 / 0.8674 / 0.8311, ECE 0.0123 / 0.0097 / 0.0136 -> 0.0129 / 0.0103 /
0.0136: a small gain, of one sign on every seed.

`monotone_constraints_method` is "basic": the "intermediate" and "advanced" methods produced
models that failed the monotonicity check (`training.monotone`) on our synthetic panels, while
"basic" never did and cost no measurable AUC on the simulated portfolio."""


DEFAULTS_PER_LEAF = 10
"""`scaled_params`: a leaf must be large enough to expect this many defaults."""
DEFAULTS_PER_TREE_LEAF = 100
"""`scaled_params`: at most one leaf per this many defaults in the fit rows."""


def scaled_params(n_rows: int, n_defaults: int) -> dict[str, Any]:
    """Tree size from the data instead of constants tuned for 400,000 rows: a leaf must hold
    enough rows to expect `DEFAULTS_PER_LEAF` defaults (its default rate is then estimable), but
    never more than a twentieth of the rows (small data still splits); a tree has about one leaf
    per `DEFAULTS_PER_TREE_LEAF` defaults, between 4 and 31."""
    rate = max(n_defaults, 1) / max(n_rows, 1)
    min_leaf = int(np.clip(round(DEFAULTS_PER_LEAF / rate), 20, 2000))
    min_leaf = max(5, min(min_leaf, n_rows // 20))
    leaves = int(np.clip(n_defaults // DEFAULTS_PER_TREE_LEAF, 4, 31))
    return {
        "min_data_in_leaf": min_leaf,
        "num_leaves": leaves,
        "min_data_per_group": min(int(DEFAULT_PARAMS["min_data_per_group"]), min_leaf),
    }


SMALL_DATA_ROWS = 20_000
"""Fit rows below which the model is a bag of `BAG` boosters (`bag_size`)."""
BAG = 5
"""Boosters averaged into the model on small data (`bag_size`)."""


def bag_size(fit_rows: int) -> int:
    """How many boosters, grown alike but for their seed, the model averages: `BAG` below
    `SMALL_DATA_ROWS` fit rows, else 1. On few rows a booster's trees (its bagged rows and
    columns) vary much with the seed: on the German credit data (5,400 fit rows of 550
    applicants) the OOT AUC of boosters differing only in their seed spread over 0.743-0.757 on
    one SME split, and early stopping on the few validation SMEs chose 86-361 rounds. The mean of
    `BAG` of them is steadier, its validation curve smoother (`Trainer.train`), and it costs `BAG`
    times a booster's time, which is little below `SMALL_DATA_ROWS`; above it, where a booster
    is steady and costly, one is grown (the 60-month demo: 50,240 fit rows, one booster as
    before). On the German credit data, training seeds 0-9 (`python -m bench german`), the OOT
    AUC minus plain LightGBM's went from a median of +0.0043 (worst -0.0154) to +0.0077 (worst
    -0.0066) and the median ECE from 0.061 to 0.052, for 3.2 times the training CPU time."""
    return BAG if fit_rows < SMALL_DATA_ROWS else 1


def regrows(fit_rows: int) -> bool:
    """Whether the model, once early stopping on the validation SMEs has chosen its rounds, is
    grown again on all training rows (fit and validation SMEs) with those rounds: below
    `SMALL_DATA_ROWS` fit rows, where the validation SMEs (`TrainConfig.val_fraction`, 15 % of
    the training SMEs) are data the model cannot spare; above it the model is the booster early
    stopping kept, as before (the 60-month demo: 50,240 fit rows). The validation SMEs are then
    in the model, so every figure that was read on them comes from a booster that never saw
    them (`training.train.grow`)."""
    return fit_rows < SMALL_DATA_ROWS


def regrown_rounds(best_iteration: int, fit_rows: int, train_rows: int) -> int:
    """The rounds of the model regrown on `train_rows` rows after early stopping chose
    `best_iteration` on a booster of `fit_rows` rows: that count times the ratio of the rows
    (`REGROW_SCALES_ROUNDS`; off: the same count). More rows carry more signal for the same
    learning rate and leaf sizes, so the model needs more rounds to learn it."""
    if not REGROW_SCALES_ROUNDS:
        return best_iteration
    return max(1, round(best_iteration * train_rows / max(fit_rows, 1)))


REGROW_SCALES_ROUNDS = True
"""`regrown_rounds`: scale the early-stopping count by the rows' ratio. On the German credit data
(`python -m bench german`, 5,400 fit rows and 6,380 training rows: 1.18 times the count), OOT
AUC minus plain LightGBM's over training seeds 0-9, same count / scaled count: see README
("Real data"); the scaled count was ahead on most seeds and on the worst."""


def bag_seeds(seed: int, bag: int) -> list[int]:
    """The seeds of a bag's boosters, drawn from `seed` (bags of different seeds share none)."""
    state = np.random.SeedSequence(seed).generate_state(bag, dtype=np.uint32)
    return [int(s) & 0x7FFFFFFF for s in state]


def average_boosters(boosters: Sequence[lgb.Booster]) -> lgb.Booster:
    """One booster whose raw margin is the mean of `boosters`' margins: their trees one booster
    after the other, each tree's leaf values (and its nodes' internal values) divided by their
    number. It is a sum of trees like any booster, so TreeSHAP, the monotonicity check and
    serving read it unchanged, and its reason points add up exactly. Each booster's first tree
    holds its start margin (`start_margin`): averaged, boosters grown on the same rows start
    where each of them does. One booster is returned as it is."""
    if len(boosters) == 1:
        return boosters[0]
    scale = 1.0 / len(boosters)
    head = tail = ""
    trees: list[str] = []
    for booster in boosters:
        text = booster.model_to_string(num_iteration=-1)  # every tree
        start, end = text.index("\nTree=0\n") + 1, text.index("\nend of trees\n") + 1
        if not head:
            head, tail = text[:start], text[end:]
        for block in re.split(r"^Tree=\d+\n", text[start:end], flags=re.MULTILINE)[1:]:
            trees.append(_scaled_tree(block, scale))
    head = "".join(line for line in head.splitlines(True) if not line.startswith("tree_sizes="))
    body = "".join(f"Tree={i}\n{block}\n\n\n" for i, block in enumerate(trees))
    merged = lgb.Booster(model_str=head + body + tail)
    return lgb.Booster(model_str=merged.model_to_string())  # LightGBM's own header and sizes


def _scaled_tree(block: str, scale: float) -> str:
    """A tree of a model text with its leaf and internal values times `scale`."""
    lines = block.strip("\n").split("\n")
    if "is_linear=1" in lines:
        raise ValueError("linear trees cannot be averaged (their leaves hold coefficients)")
    for i, line in enumerate(lines):
        key, _, values = line.partition("=")
        if key in ("leaf_value", "internal_value"):
            scaled = np.array(values.split(), dtype=np.float64) * scale
            lines[i] = f"{key}=" + " ".join(format(v, ".17g") for v in scaled)
    return "\n".join(lines)


def staged_log_loss(boosters: Sequence[lgb.Booster], X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Log loss of the mean margin of `boosters` after each of their first n iterations (n: the
    fewest any of them has), from the leaves each row reaches (one prediction per booster, in
    blocks of rows)."""
    n = min(b.current_iteration() for b in boosters)
    total = np.zeros(n)
    leaves = [_leaf_values(b)[:n] for b in boosters]
    y = np.asarray(y, np.float64)
    for lo in range(0, len(X), 1024):
        rows = X[lo : lo + 1024]
        margin = np.zeros((len(rows), n))
        for booster, values in zip(boosters, leaves, strict=True):
            reached = np.asarray(booster.predict(rows, pred_leaf=True, num_iteration=n), np.int64)
            margin += np.column_stack([v[reached[:, t]] for t, v in enumerate(values)])
        margin = np.cumsum(margin / len(boosters), axis=1)  # rows x iterations
        sign = 2.0 * y[lo : lo + 1024, None] - 1.0
        total += np.logaddexp(0.0, -sign * margin).sum(axis=0)
    return total / max(len(X), 1)


def _leaf_values(booster: lgb.Booster) -> list[np.ndarray]:
    """Each tree's leaf values, in tree order."""
    return [
        np.array(line[len("leaf_value=") :].split(), dtype=np.float64)
        for line in booster.model_to_string(num_iteration=-1).splitlines()
        if line.startswith("leaf_value=")
    ]


def start_margin(y: np.ndarray, params: Mapping[str, Any]) -> float:
    """The raw margin a binary booster starts from before its first tree: with
    `boost_from_average` (LightGBM's default) the log-odds of its training rows' default rate,
    clipped as LightGBM clips it (`BinaryLogloss::BoostFromScore`, no sample weights here); else
    0. Boosters grown on different rows start from different margins; a margin from one is read
    on another's scale by adding the difference of their starts (`training.train.grow`)."""
    if not params.get("boost_from_average", True):
        return 0.0
    eps = 1e-15  # LightGBM's kEpsilon
    rate = float(np.clip(np.mean(np.asarray(y, np.float64)), eps, 1.0 - eps))
    return float(np.log(rate / (1.0 - rate)))


@dataclass(frozen=True)
class BoosterFit:
    booster: lgb.Booster  # truncated to the best iteration
    best_iteration: int
    val_loss: float  # validation log loss at the best iteration (NaN without validation)


def make_params(
    catalog: tuple[Feature, ...],
    seed: int,
    num_threads: int,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """LightGBM parameters: defaults, then overrides, then the catalog's monotone constraints,
    the seed and the thread count (these three always win)."""
    params = {**DEFAULT_PARAMS, **dict(overrides or {})}
    params["monotone_constraints"] = monotone_constraints(catalog)
    params["seed"] = seed
    params["num_threads"] = num_threads
    return params


def categorical_indices(catalog: tuple[Feature, ...]) -> list[int]:
    return [j for j, f in enumerate(catalog) if f.kind == "categorical"]


def _truncate(booster: lgb.Booster, best_iteration: int) -> lgb.Booster:
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best_iteration))


def _stopped(
    booster: lgb.Booster, validation: tuple[np.ndarray, np.ndarray], patience: int
) -> lgb.Booster:
    """`booster` cut where early stopping with `patience` stops growing it: `patience`
    iterations after its best validation loss (as it is when already stopped there)."""
    stop = best_iteration_by_patience(staged_log_loss([booster], *validation), patience) + patience
    return booster if stop >= booster.current_iteration() else _truncate(booster, stop)


def best_iteration_by_patience(losses: np.ndarray, patience: int) -> int:
    """The iteration (1-based) early stopping would keep, given the validation loss after each
    iteration: the best so far when `patience` iterations pass without improvement."""
    best_i, best = 0, np.inf
    for i, value in enumerate(losses):
        if value < best:
            best_i, best = i, value
        elif i - best_i >= patience:
            break
    return best_i + 1


def staged_val_loss(booster: lgb.Booster, X_val: np.ndarray, y_val: np.ndarray) -> np.ndarray:
    """Validation log loss after each boosting iteration."""
    n = booster.current_iteration()
    margin = np.zeros(len(X_val))
    losses = np.empty(n)
    for i in range(n):
        margin += booster.predict(X_val, raw_score=True, start_iteration=i, num_iteration=1)
        losses[i] = log_loss(y_val, 1.0 / (1.0 + np.exp(-margin)))
    return losses


_Validation = tuple[np.ndarray, np.ndarray] | None  # (X_val, y_val), or none


@dataclass(frozen=True)
class TrainingRows:
    """Rows to grow a booster on, as an engine holds them (`Trainer.rows`): the matrix and
    labels, and in process LightGBM's Dataset, binned by the first booster grown on it. A
    subset shares that binning (`lightgbm.Dataset.subset`): boosters grown on parts of the same
    rows bin them once, with the same bins, and copy neither the raw matrix (the Dataset frees
    it once binned) nor, until an engine asks for it, their rows of `X`."""

    source: np.ndarray  # the matrix these rows are taken from
    y: np.ndarray
    dataset: lgb.Dataset | None = None
    positions: np.ndarray | None = None  # rows of `source` (ascending); None: all of them

    @cached_property
    def X(self) -> np.ndarray:
        """The rows' matrix (copied from `source` on first use: the Dask engine's input)."""
        return self.source if self.positions is None else self.source[self.positions]

    def subset(self, positions: np.ndarray) -> TrainingRows:
        """The rows at `positions` (ascending) of these rows."""
        dataset = None if self.dataset is None else self.dataset.subset(positions.tolist())
        rows = positions if self.positions is None else self.positions[positions]
        return TrainingRows(self.source, self.y[positions], dataset, rows)


class Trainer:
    """Grows a booster on a matrix; the engines below differ only in `rows` and `_grow`. Use as
    a context manager (an engine may hold a cluster for the `with` block)."""

    engine = ""

    def __init__(self, catalog: tuple[Feature, ...], params: dict[str, Any], bag: int = 1) -> None:
        if bag < 1:
            raise ValueError(f"a bag needs at least one booster, got {bag}")
        self.catalog = catalog
        self.params = params
        self.bag = bag  # boosters averaged into each one `train` returns (`bag_size`)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def rows(self, X: np.ndarray, y: np.ndarray, bins: TrainingRows | None = None) -> TrainingRows:
        """Training rows for `train`; their subsets share what the engine derives from them.
        With `bins`, the rows are binned with the bins of those rows (in process), so that a
        booster grown on them splits where the boosters grown on `bins` can."""
        return TrainingRows(X, y)

    def train(
        self,
        rows: TrainingRows,
        *,
        rounds: int,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        patience: int = 100,
    ) -> BoosterFit:
        """Grow up to `rounds` trees; with a validation set, stop early after `patience`
        rounds without improvement and keep the best iteration.

        With a bag (`bag` > 1) the booster is the average of `bag` boosters grown alike but for
        their seeds (`bag_seeds`, from the `seed` parameter; `average_boosters`), each of the
        same number of rounds: `rounds`, or with a validation set the best iteration of the
        average's validation loss (each grown until its own loss has not improved for
        `patience` rounds; the average's best within the fewest rounds any of them grew, by
        the same patience). `BoosterFit.best_iteration` counts rounds of one booster."""
        validation = None if X_val is None or y_val is None else (X_val, y_val)
        if self.bag == 1:
            return self._grow(rows, rounds, validation, patience)
        members = [
            self._grow_all(rows, rounds, validation, patience, {**self.params, "seed": seed})
            for seed in bag_seeds(int(self.params.get("seed", 0)), self.bag)
        ]
        if validation is None:
            return BoosterFit(average_boosters(members), rounds, float("nan"))
        # each as early stopping leaves it, whether the engine stopped it or grew every round
        members = [_stopped(m, validation, patience) for m in members]
        losses = staged_log_loss(members, *validation)
        best = best_iteration_by_patience(losses, patience)
        kept = [_truncate(m, best) for m in members]
        return BoosterFit(average_boosters(kept), best, float(losses[best - 1]))

    def train_each(
        self, rows: Sequence[TrainingRows], *, rounds: int, at_once: int = 1
    ) -> Iterator[BoosterFit]:
        """`train` on each of `rows` without validation, in order. An engine may grow up to
        `at_once` of them at the same time; each booster is grown alone all the same, so they
        do not depend on it (this engine: one after the other)."""
        for r in rows:
            yield self.train(r, rounds=rounds)

    def _grow(
        self, rows: TrainingRows, rounds: int, validation: _Validation, patience: int
    ) -> BoosterFit:
        raise NotImplementedError

    def _grow_all(
        self,
        rows: TrainingRows,
        rounds: int,
        validation: _Validation,
        patience: int,
        params: dict[str, Any],
    ) -> lgb.Booster:
        """A booster of a bag, grown with `params` and not truncated: every iteration grown
        (with a validation set an engine may stop after `patience` rounds without
        improvement)."""
        raise NotImplementedError


class LocalTrainer(Trainer):
    """`lightgbm.train` in process, on one binned Dataset per `rows` call."""

    engine = "pandas"

    def rows(self, X: np.ndarray, y: np.ndarray, bins: TrainingRows | None = None) -> TrainingRows:
        reference = None if bins is None else bins.dataset
        return TrainingRows(X, y, self._dataset(X, y, reference))

    def train_each(
        self, rows: Sequence[TrainingRows], *, rounds: int, at_once: int = 1
    ) -> Iterator[BoosterFit]:
        """Up to `at_once` boosters at the same time, in threads (LightGBM releases the GIL
        while it grows a tree)."""
        if at_once <= 1:
            yield from super().train_each(rows, rounds=rounds)
            return
        for r in rows:  # their shared bins first, once, outside the threads
            if r.dataset is not None and r.dataset.reference is not None:
                r.dataset.reference.construct()
        with ThreadPoolExecutor(max_workers=at_once) as pool:
            yield from pool.map(lambda r: self.train(r, rounds=rounds), rows)

    def _dataset(
        self, X: np.ndarray, y: np.ndarray, reference: lgb.Dataset | None = None
    ) -> lgb.Dataset:
        return lgb.Dataset(
            X,
            y,
            reference=reference,  # its bins, when given (`rows`)
            feature_name=[f.name for f in self.catalog],
            categorical_feature=categorical_indices(self.catalog),
            params=self.params,  # binned with them, whichever booster constructs it first
            free_raw_data=True,  # the bins are kept; subsets need no copy of the raw rows
        )

    def _grow(
        self, rows: TrainingRows, rounds: int, validation: _Validation, patience: int
    ) -> BoosterFit:
        booster = self._grow_all(rows, rounds, validation, patience, self.params)
        if validation is None:
            return BoosterFit(booster, booster.current_iteration(), float("nan"))
        # cut at LightGBM's own best iteration (the same model text as lgb.train keeping only
        # the best: checked byte for byte)
        best = booster.best_iteration if booster.best_iteration > 0 else rounds
        loss = float(booster.best_score["val"]["binary_logloss"])
        return BoosterFit(_truncate(booster, best), best, loss)

    def _grow_all(
        self,
        rows: TrainingRows,
        rounds: int,
        validation: _Validation,
        patience: int,
        params: dict[str, Any],
    ) -> lgb.Booster:
        dfit = rows.dataset if rows.dataset is not None else self._dataset(rows.X, rows.y)
        if validation is None:
            return lgb.train(params, dfit, num_boost_round=rounds)
        return lgb.train(
            params,
            dfit,
            num_boost_round=rounds,
            valid_sets=[lgb.Dataset(*validation, reference=dfit)],
            valid_names=["val"],
            callbacks=[lgb.early_stopping(patience, first_metric_only=True, verbose=False)],
            keep_training_booster=True,  # every iteration grown, not only the best
        )


class DaskTrainer(Trainer):
    """`lightgbm.DaskLGBMClassifier` on a dask.distributed cluster: `scheduler` address, or a
    LocalCluster of `n_workers` single-threaded worker processes started (and stopped) by the
    `with` block. LightGBM's distributed training cannot stop early, so with a validation set
    it grows `rounds` trees and keeps the iteration early stopping with the same patience would
    keep."""

    engine = "dask"

    def __init__(
        self,
        catalog: tuple[Feature, ...],
        params: dict[str, Any],
        scheduler: str | None = None,
        n_workers: int = 2,
        bag: int = 1,
    ) -> None:
        super().__init__(catalog, params, bag)
        self.scheduler = scheduler
        self.n_workers = n_workers
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> Self:
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            self._cluster = LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
            )
            self._client = Client(self._cluster)
        else:
            self._client = Client(self.scheduler, timeout="30s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def _grow(
        self, rows: TrainingRows, rounds: int, validation: _Validation, patience: int
    ) -> BoosterFit:
        booster = self._grow_all(rows, rounds, validation, patience, self.params)
        if validation is None:
            return BoosterFit(booster, booster.current_iteration(), float("nan"))
        losses = staged_val_loss(booster, *validation)
        best = best_iteration_by_patience(losses, patience)
        return BoosterFit(_truncate(booster, best), best, float(losses[best - 1]))

    def _grow_all(
        self,
        rows: TrainingRows,
        rounds: int,
        validation: _Validation,
        patience: int,
        params: dict[str, Any],
    ) -> lgb.Booster:
        import dask.array as da

        X, y = rows.X, rows.y
        if self._client is None:
            raise RuntimeError("use DaskTrainer inside a `with` block")
        workers = max(1, len(self._client.scheduler_info()["workers"]))
        chunk = max(1, -(-len(X) // workers))
        dX = da.from_array(X, chunks=(chunk, X.shape[1]))
        dy = da.from_array(np.asarray(y, dtype=np.float64), chunks=(chunk,))
        grown = {k: v for k, v in params.items() if k not in ("num_threads", "metric")}
        model = lgb.DaskLGBMClassifier(
            client=self._client, n_estimators=rounds, tree_learner="data", **grown
        )
        with warnings.catch_warnings():
            # threads per worker come from the cluster; LightGBM warns about its own n_jobs
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(
                dX,
                dy,
                feature_name=[f.name for f in self.catalog],
                categorical_feature=categorical_indices(self.catalog),
            )
        return model.booster_


TUNED_SPACE = (
    "learning_rate",
    "num_leaves",
    "min_data_in_leaf",
    "feature_fraction",
    "bagging_fraction",
    "lambda_l2",
    "min_gain_to_split",
)


@dataclass(frozen=True)
class Search:
    """What `tune` found: the best parameter overrides, one record per trial, and the best
    trial's booster (grown with `base` and those overrides on the rows the search was given)."""

    best: dict[str, Any]
    trials: list[dict[str, Any]]
    best_fit: BoosterFit


def tune(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    catalog: tuple[Feature, ...],
    base: dict[str, Any],
    *,
    n_trials: int,
    seed: int,
    max_rounds: int,
    early_stopping_rounds: int,
    on_trial: Callable[[int], None] | None = None,
    timeout_seconds: float | None = None,
) -> Search:
    """Optuna (seeded TPE) search of `n_trials` trials minimising the validation log loss,
    stopping early once `timeout_seconds` have passed (after at least the first trial, the
    defaults). The best trial's booster is kept (`Search.best_fit`), so that a caller growing
    the same booster again need not."""
    import time

    import optuna

    started = time.monotonic()
    kept: dict[int, BoosterFit] = {}  # the first trial of least loss so far: number -> booster

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        overrides = {
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.15, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 7, 63),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 400, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
            "min_gain_to_split": trial.suggest_float("min_gain_to_split", 0.0, 1.0),
        }
        trainer = LocalTrainer(catalog, {**base, **overrides})
        fit = trainer.train(
            trainer.rows(X_fit, y_fit),
            rounds=max_rounds,
            X_val=X_val,
            y_val=y_val,
            patience=early_stopping_rounds,
        )
        trial.set_user_attr("best_iteration", fit.best_iteration)
        if not kept or fit.val_loss < next(iter(kept.values())).val_loss:
            kept.clear()
            kept[trial.number] = fit
        return fit.val_loss

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial({k: base[k] for k in TUNED_SPACE if k in base} | {"min_gain_to_split": 0.0})
    for i in range(n_trials):
        study.optimize(objective, n_trials=1)
        if on_trial is not None:
            on_trial(i + 1)
        if timeout_seconds is not None and time.monotonic() - started >= timeout_seconds:
            break
    records = [
        {
            "trial": t.number,
            "val_log_loss": t.value,
            "best_iteration": t.user_attrs.get("best_iteration"),
            **t.params,
        }
        for t in study.trials
    ]
    return Search(dict(study.best_params), records, kept[study.best_trial.number])
