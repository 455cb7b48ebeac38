"""The scoring model: what training logs in MLflow and what serving loads (interfaces.md).

Score math (exact additivity). The booster gives a raw margin ``m`` (log-odds). Calibration on the
log-odds gives the calibrated log-odds of default ``z = a + b·m`` and ``PD = sigmoid(z)``. The score
is ``offset + factor·ln(odds of good) = offset − factor·z``. With SHAP ``m = φ0 + Σφi``, feature
``i`` is worth ``points_i = −factor·b·φi`` and ``base_points = offset − factor·(a + b·φ0)``, so
``base_points + Σ points_i = score`` exactly (to float rounding).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit

from features.catalog import Feature
from features.contract import DEFAULT_HORIZON_DAYS
from features.drift import PROFILE_ARTIFACT, TrainingProfile
from training.exceptions import ModelInputError, ModelLoadError

if TYPE_CHECKING:
    from features.reference import Reference
    from training.treeshap import TreeShap

FORMAT_VERSION = 2
"""2: the bundle carries its label horizon, training and OOT months, thresholds, drift profile."""
CHECKSUMS = "checksums.json"
"""sha256 of every file of a saved model, written last by `save` and checked first by `load`."""
KEY_COLUMNS: tuple[str, ...] = ("sme_id", "as_of", "default_12m")
"""Panel columns that are not features; `prepare` ignores them."""
EXPLAIN_METHODS: tuple[str, ...] = ("pred_contrib", "tree_shap", "fast")
DEFAULT_EXPLAIN_METHOD = "fast"
"""The compiled exact TreeSHAP of `training.treeshap`: pred_contrib to 1e-9, about 10x faster."""
Frame = pd.DataFrame  # `Explanation` has a field named `pd`
Labels = pd.Index


@dataclass(frozen=True)
class ScoreScale:
    """Points to double the odds: ``score = offset + factor·ln(odds of good)``, factor = PDO/ln 2,
    ``base_score`` points at odds of good ``base_odds``:1 (defaults: PDO 20, 600 at 50:1)."""

    pdo: float = 20.0
    base_score: float = 600.0
    base_odds: float = 50.0

    def __post_init__(self) -> None:
        if not (self.pdo > 0 and self.base_odds > 0 and math.isfinite(self.base_score)):
            raise ValueError(f"invalid score scale: {self}")

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def score(self, logodds_default: np.ndarray | float) -> np.ndarray:
        """The score of calibrated log-odds of default ``z`` (higher score = safer)."""
        return self.offset - self.factor * np.asarray(logodds_default, dtype=np.float64)


DEFAULT_UPPER_PD: tuple[float, ...] = (
    0.002, 0.004, 0.007, 0.012, 0.02, 0.03, 0.045, 0.065, 0.10, 0.15, 0.25, 1.0,
)  # fmt: skip


@dataclass(frozen=True)
class MasterScale:
    """The rating scale: grades best first, each with the upper end of its PD band (inclusive).
    Grade ``k`` holds ``upper_pd[k-1] < PD <= upper_pd[k]``; the last band ends at 1."""

    grades: tuple[str, ...] = tuple(f"G{i:02d}" for i in range(1, len(DEFAULT_UPPER_PD) + 1))
    upper_pd: tuple[float, ...] = DEFAULT_UPPER_PD

    def __post_init__(self) -> None:
        if len(self.grades) < 10 or len(self.grades) != len(self.upper_pd):
            raise ValueError("a master scale needs >= 10 grades, one upper PD each")
        if len(set(self.grades)) != len(self.grades):
            raise ValueError("master scale grades must be distinct")
        bounds = np.asarray(self.upper_pd)
        if not (np.all(np.diff(bounds) > 0) and bounds[0] > 0 and bounds[-1] == 1.0):
            raise ValueError("master scale upper PDs must increase strictly and end at 1.0")

    def grade(self, pd_: np.ndarray) -> np.ndarray:
        """The grade of each PD (object array of grade names)."""
        p = np.asarray(pd_, dtype=np.float64)
        if np.isnan(p).any():
            raise ValueError("cannot grade a missing PD")
        idx = np.searchsorted(np.asarray(self.upper_pd), p, side="left")
        idx = np.minimum(idx, len(self.grades) - 1)
        return np.asarray(self.grades, dtype=object)[idx]

    def lower_pd(self) -> tuple[float, ...]:
        """The lower end (exclusive) of each grade's PD band."""
        return (0.0, *self.upper_pd[:-1])


@dataclass(frozen=True)
class LogOddsCalibration:
    """Platt scaling on the log-odds: calibrated log-odds of default ``z = a + b·margin``."""

    a: float
    b: float

    def logodds(self, margin: np.ndarray) -> np.ndarray:
        return self.a + self.b * np.asarray(margin, dtype=np.float64)


@dataclass
class Explanation:
    """PD, score, grade and each feature's score points for every row.

    ``base_points + points.sum(axis=1) == score`` (to 1e-6). The per-feature values are kept as
    arrays (``point_values``, ``shap_values``: n × every feature, in the model's order); the
    labelled frames ``points`` and ``shap`` are built only when asked for (the per-request path
    never needs them)."""

    pd: np.ndarray
    score: np.ndarray
    grade: np.ndarray
    point_values: np.ndarray  # n × every feature: score points per feature
    base_points: np.ndarray  # n (the same value on each row)
    logodds: np.ndarray  # calibrated log-odds of default z
    shap_values: np.ndarray  # n × every feature: raw-margin SHAP values φi
    columns: Labels  # the feature names, in the model's order
    index: Labels | None = None  # the rows' labels (a RangeIndex when None)
    leaves: np.ndarray | None = None  # asked of the "fast" engine: each row's leaf value in
    # every tree (n × trees), the base of `TreeShap.margin_varied`'s probes of these rows

    @cached_property
    def points(self) -> Frame:
        """Score points per feature (n × every feature, the model's order)."""
        return pd.DataFrame(self.point_values, columns=self.columns, index=self.index)

    @cached_property
    def shap(self) -> Frame:
        """Raw-margin SHAP values per feature."""
        return pd.DataFrame(self.shap_values, columns=self.columns, index=self.index)


@dataclass
class ScoringModel:
    """The model bundle: everything that decides how a model scores, is monitored or is replayed
    (booster, calibration, catalog, scales, trained categories, reference data of the single-SME
    path, training metrics, label horizon, training and OOT months, thresholds, drift profile).
    Read back through `training.bundle.load_model` only."""

    booster: lgb.Booster
    catalog: tuple[Feature, ...]
    categories: dict[str, tuple[str, ...]]
    calibration: LogOddsCalibration
    scale: ScoreScale = field(default_factory=ScoreScale)
    master_scale: MasterScale = field(default_factory=MasterScale)
    reference: Reference | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    horizon_days: int = DEFAULT_HORIZON_DAYS  # the label's horizon: default within this many days
    train_months: tuple[str, ...] = ()  # as-of months (YYYY-MM) of the training rows
    oot_months: tuple[str, ...] = ()  # as-of months of the out-of-time evaluation rows
    thresholds: dict[str, float] = field(default_factory=dict)  # what it was gated/monitored with
    drift_profile: TrainingProfile | None = None  # training-decile bins for drift monitoring
    _slots: dict[str, tuple[int, dict[str, int] | None]] = field(
        init=False, repr=False, compare=False
    )
    _columns: pd.Index = field(init=False, repr=False, compare=False)
    _explainer: Any = field(default=None, init=False, repr=False, compare=False)
    _treeshap: TreeShap | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.catalog]
        if list(self.booster.feature_name()) != names:
            raise ValueError("the booster's features differ from the catalog's, in name or order")
        for f in self.catalog:
            if f.kind == "categorical" and f.name not in self.categories:
                raise ValueError(f"no trained categories for categorical feature {f.name}")
        self._columns = pd.Index(names)
        # column of each feature in the matrix, and the codes of a categorical's trained levels
        self._slots = {
            f.name: (
                j,
                {c: k for k, c in enumerate(self.categories[f.name])}
                if f.kind == "categorical"
                else None,
            )
            for j, f in enumerate(self.catalog)
        }

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.catalog]

    # -- inputs ------------------------------------------------------------------------------
    def prepare(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model's input frame from any subset of feature columns: missing features -> NaN,
        categoricals -> the trained categories (unseen values -> NaN), numeric -> float64, in the
        model's column order. `sme_id`, `as_of`, `default_12m` are ignored; other unknown columns
        are an error."""
        return prepare_frame(features, self.catalog, self.categories)

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        """The float matrix LightGBM sees: numeric values, categorical codes (NaN = missing)."""
        prepared = self.prepare(features)
        return to_matrix(prepared, self.catalog)

    def records_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """`matrix(pd.DataFrame(rows))` without pandas, for the per-request path: the same values
        and the same errors (unknown features, non-numbers, infinities) from a plain loop over the
        values given ({feature: value}, any subset; None or NaN = missing). The values are
        set in Python lists and made one array at the end: setting them one by one in the
        array took most of the time of a batch's matrix (a 1,000 x 97 batch: ~100k numpy
        scalar stores)."""
        width = len(self._slots)
        blank = [math.nan] * width
        table: list[list[float]] = []
        unknown: set[str] = set()
        for i, row in enumerate(rows):
            M = blank.copy()
            table.append(M)
            for name, value in row.items():
                slot = self._slots.get(name)
                if slot is None:
                    if name not in KEY_COLUMNS:
                        unknown.add(name)
                    continue
                j, codes = slot
                if codes is None and type(value) is float:  # the common case, kept cheap
                    if value == value:  # NaN is missing
                        M[j] = _number(value, name, i) if math.isinf(value) else value
                    continue
                if value is None or (not isinstance(value, str) and pd.isna(value)):
                    continue
                if codes is not None:
                    code = codes.get(value if isinstance(value, str) else str(value))
                    if code is not None:  # unseen categories are missing
                        M[j] = float(code)
                else:
                    M[j] = _number(value, name, i)
        if unknown:
            raise ModelInputError(
                f"unknown feature column(s) {sorted(unknown)}: the model knows "
                f"{len(self.catalog)} catalog features"
            )
        if not table:
            return np.full((0, width), np.nan)
        return np.array(table, dtype=np.float64)

    # -- predictions -------------------------------------------------------------------------
    def predict_margin(self, X: pd.DataFrame) -> np.ndarray:
        """The booster's raw margin (uncalibrated log-odds of default)."""
        return np.asarray(self.booster.predict(self.matrix(X), raw_score=True), dtype=np.float64)

    def predict_logodds(self, X: pd.DataFrame) -> np.ndarray:
        return self.calibration.logodds(self.predict_margin(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The calibrated probability of default within the horizon."""
        return np.asarray(expit(self.predict_logodds(X)), dtype=np.float64)

    def score(self, X: pd.DataFrame) -> np.ndarray:
        return self.scale.score(self.predict_logodds(X))

    def explain(self, X: pd.DataFrame, method: str = DEFAULT_EXPLAIN_METHOD) -> Explanation:
        """PD, score, grade and score points per feature. ``method``: "pred_contrib" (LightGBM's
        TreeSHAP), "tree_shap" (shap.TreeExplainer) or "fast" (`training.treeshap`, LightGBM's
        TreeSHAP compiled with numba); all give the same points."""
        return self.explain_matrix(self.matrix(X), method, index=X.index)

    def explain_records(
        self, rows: Sequence[Mapping[str, Any]], method: str = DEFAULT_EXPLAIN_METHOD
    ) -> Explanation:
        """`explain` for feature records ({feature: value}): the per-request fast path."""
        return self.explain_matrix(self.records_matrix(rows), method)

    def explain_matrix(
        self,
        M: np.ndarray,
        method: str = DEFAULT_EXPLAIN_METHOD,
        *,
        index: pd.Index | None = None,
        threads: int = 1,
        leaves: bool = False,
    ) -> Explanation:
        """`explain` on LightGBM's matrix (see `matrix` / `records_matrix`). ``threads`` > 1:
        the "fast" engine splits a large batch over that many threads (the same values).
        ``leaves`` ("fast" only): keep each row's leaf values (`Explanation.leaves`)."""
        if method not in EXPLAIN_METHODS:
            raise ValueError(f"explain method must be one of {EXPLAIN_METHODS}, got {method!r}")
        k = len(self.catalog)
        margin: np.ndarray | None = None
        leaf: np.ndarray | None = None
        if leaves and method != "fast":
            raise ValueError(f"leaf values come from the fast engine only, not {method!r}")
        if method == "pred_contrib":
            contrib = np.asarray(self.booster.predict(M, pred_contrib=True), dtype=np.float64)
            phi, phi0 = contrib[:, :k], contrib[:, k]
        elif method == "fast":
            engine = self.treeshap().with_threads(threads)
            # one pass: the margin is `engine.margin`'s bit for bit, booster.predict's to rounding
            phi, phi0, margin, leaf = engine.explain(M, leaves=leaves)
        else:
            values = self._shap_explainer()(M)
            phi = np.asarray(values.values, dtype=np.float64)
            phi0 = np.broadcast_to(np.asarray(values.base_values, np.float64), (len(M),))
        if phi.shape != (len(M), k):
            raise RuntimeError(f"unexpected SHAP shape {phi.shape} for {len(M)} rows, {k} features")
        if margin is None:
            margin = np.asarray(self.booster.predict(M, raw_score=True), dtype=np.float64)
        z = self.calibration.logodds(margin)
        score = self.scale.score(z)
        factor, b = self.scale.factor, self.calibration.b
        points = -factor * b * phi
        base = self.scale.offset - factor * (self.calibration.a + b * phi0)
        pd_ = np.asarray(expit(z), dtype=np.float64)
        return Explanation(
            pd=pd_,
            score=score,
            grade=self.master_scale.grade(pd_),
            point_values=points,
            base_points=base,
            logodds=z,
            shap_values=phi,
            columns=self._columns,
            index=index,
            leaves=leaf,
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the cached TreeExplainer and TreeShap engine (rebuilt on demand where
        the model lands)."""
        return {**self.__dict__, "_explainer": None, "_treeshap": None}

    def treeshap(self) -> TreeShap:
        """The "fast" explanation engine (`training.treeshap.TreeShap`) of the booster, parsed
        and its kernels compiled (or loaded from numba's cache) once, on first use."""
        if self._treeshap is None:
            from training.treeshap import TreeShap  # numba: imported when first used

            engine = TreeShap.from_booster(self.booster)
            engine.warm_up()
            self._treeshap = engine
        return self._treeshap

    def _shap_explainer(self) -> Any:
        """shap's TreeExplainer of the booster, built once (it parses every tree)."""
        if self._explainer is None:
            import shap

            self._explainer = shap.TreeExplainer(self.booster)
        return self._explainer

    # -- description and persistence ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-able card: catalog, scales, calibration, training metrics, parameters."""
        return {
            "format_version": FORMAT_VERSION,
            "feature_names": self.feature_names,
            "catalog": [asdict(f) for f in self.catalog],
            "categories": {k: list(v) for k, v in self.categories.items()},
            "calibration": asdict(self.calibration),
            "scale": {
                **asdict(self.scale),
                "factor": self.scale.factor,
                "offset": self.scale.offset,
            },
            "master_scale": {
                "grades": list(self.master_scale.grades),
                "upper_pd": list(self.master_scale.upper_pd),
            },
            "metrics": dict(self.metrics),
            "params": dict(self.params),
            "horizon_days": self.horizon_days,
            "train_months": list(self.train_months),
            "oot_months": list(self.oot_months),
            "thresholds": dict(self.thresholds),
        }

    def save(self, folder: Path) -> None:
        """Write the model to a folder: booster.txt, model.json and reference/ (when present)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "booster.txt").write_text(self.booster.model_to_string(), encoding="utf-8")
        card = self.describe()
        card["has_reference"] = self.reference is not None
        (folder / "model.json").write_text(
            json.dumps(card, indent=2, sort_keys=True, default=_json_default), encoding="utf-8"
        )
        if self.reference is not None:
            self.reference.to_dir(folder / "reference")
        if self.drift_profile is not None:
            (folder / PROFILE_ARTIFACT).write_text(self.drift_profile.to_json(), encoding="utf-8")
        (folder / CHECKSUMS).write_text(
            json.dumps(_digests(folder), indent=2, sort_keys=True), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path) -> ScoringModel:
        """Read a model written by `save`."""
        card_path = folder / "model.json"
        booster_path = folder / "booster.txt"
        if not (card_path.is_file() and booster_path.is_file()):
            raise ModelLoadError(
                f"{folder} does not hold a scoring model (model.json, booster.txt)"
            )
        _verify_digests(folder)
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if card.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(
                f"{folder}: model format {card.get('format_version')!r}, expected {FORMAT_VERSION} "
                "(a bundle that carries its label horizon and months): retrain the model"
            )
        booster = lgb.Booster(model_str=booster_path.read_text(encoding="utf-8"))
        reference = None
        if card.get("has_reference"):
            from features.reference import Reference

            reference = Reference.from_dir(folder / "reference")
        scale = card["scale"]
        return cls(
            booster=booster,
            catalog=tuple(Feature(**f) for f in card["catalog"]),
            categories={k: tuple(v) for k, v in card["categories"].items()},
            calibration=LogOddsCalibration(**card["calibration"]),
            scale=ScoreScale(scale["pdo"], scale["base_score"], scale["base_odds"]),
            master_scale=MasterScale(
                tuple(card["master_scale"]["grades"]), tuple(card["master_scale"]["upper_pd"])
            ),
            reference=reference,
            metrics={k: float(v) for k, v in card["metrics"].items()},
            params=dict(card["params"]),
            horizon_days=int(card["horizon_days"]),
            train_months=tuple(card["train_months"]),
            oot_months=tuple(card["oot_months"]),
            thresholds={k: float(v) for k, v in card["thresholds"].items()},
            drift_profile=_read_profile(folder / PROFILE_ARTIFACT),
        )


def _read_profile(path: Path) -> TrainingProfile | None:
    """The bundle's drift profile (None when it was saved without one)."""
    if not path.is_file():
        return None
    try:
        return TrainingProfile.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: unreadable drift profile: {exc}") from None


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under a model folder (but the checksums file), by relative path."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    }


def _verify_digests(folder: Path) -> None:
    """Refuse a model whose files are not exactly those `save` wrote (altered, added, missing):
    a silently corrupted booster would otherwise load and score wrong."""
    path = folder / CHECKSUMS
    try:
        expected = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{folder}: no {CHECKSUMS}, so the model's files cannot be proven intact"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{folder}: {CHECKSUMS} is unreadable: {exc}") from None
    actual = _digests(folder)
    if not isinstance(expected, dict) or expected != actual:
        known = expected if isinstance(expected, dict) else {}
        differ = sorted(k for k in known.keys() | actual.keys() if known.get(k) != actual.get(k))
        raise ModelLoadError(
            f"{folder}: file(s) {differ} do not match the sha256 recorded when the model was "
            "saved (corrupt or altered); refusing to load it"
        )


def prepare_frame(
    features: pd.DataFrame,
    catalog: tuple[Feature, ...],
    categories: dict[str, tuple[str, ...]],
) -> pd.DataFrame:
    """`ScoringModel.prepare` for a catalog and its trained categories."""
    known = {f.name for f in catalog}
    unknown = [c for c in features.columns if c not in known and c not in KEY_COLUMNS]
    if unknown:
        raise ModelInputError(
            f"unknown feature column(s) {unknown}: the model knows {len(catalog)} catalog features"
        )
    n = len(features)
    cols: dict[str, Any] = {}
    for f in catalog:
        if f.kind == "categorical":
            cats = list(categories[f.name])
            if f.name in features:
                raw = features[f.name]
                text = raw.astype("object").where(raw.isna(), raw.astype("str"))
                seen = text.isin(cats)  # unseen categories become missing
                cols[f.name] = pd.Categorical(text.where(seen, None), categories=cats)
            else:
                cols[f.name] = pd.Categorical([None] * n, categories=cats)
        elif f.name in features:
            cols[f.name] = _numeric(features[f.name], f.name)
        else:
            cols[f.name] = np.full(n, np.nan)
    return pd.DataFrame(cols, index=features.index)


def to_matrix(prepared: pd.DataFrame, catalog: tuple[Feature, ...]) -> np.ndarray:
    """A prepared frame (categoricals as pandas categoricals) as LightGBM's float matrix."""
    out = np.empty((len(prepared), len(catalog)), dtype=np.float64)
    for j, f in enumerate(catalog):
        col = prepared[f.name]
        if f.kind == "categorical":
            codes = np.asarray(col.cat.codes, dtype=np.float64)
            codes[codes < 0] = np.nan
            out[:, j] = codes
        else:
            out[:, j] = np.asarray(col, dtype=np.float64)
    return out


def _numeric(series: pd.Series, name: str) -> np.ndarray:
    if series.dtype == bool:
        return np.asarray(series, dtype=np.float64)
    try:
        values = pd.to_numeric(series, errors="raise")
    except (ValueError, TypeError):
        bad = pd.to_numeric(series, errors="coerce").isna() & series.notna()
        first = series[bad].iloc[0] if bad.any() else None
        raise ModelInputError(
            f"feature {name}: expected numbers, got {first!r} (row {series.index[bad][0]!r})"
        ) from None
    arr = pd.Series(values).to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(arr).any():
        row = series.index[np.isinf(arr)][0]
        raise ModelInputError(f"feature {name}: infinite value at row {row!r}; use NaN for missing")
    return arr


def _number(value: object, name: str, row: int) -> float:
    """One numeric feature value of a record as `_numeric` reads it (bools and numeric strings
    included), or ModelInputError naming the feature."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ModelInputError(
            f"feature {name}: expected numbers, got {value!r} (row {row!r})"
        ) from None
    if math.isinf(number):
        raise ModelInputError(f"feature {name}: infinite value at row {row!r}; use NaN for missing")
    return number


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
