"""The scoring core: a validated request and the served model in, an explained decision out.

Plain functions, no HTTP: the routes are thin wrappers over `score` / `score_many`, and
`replay` re-scores a stored decision with its recorded model version and features.

Three request modes: ``features`` (values as given; missing ones are missing), ``history`` (the
SME's own contract rows, turned into features by the pipeline's single-SME path with the reference
data stored with the model), ``stored`` (neither: the SME's latest materialised features).
"""

from __future__ import annotations

import hashlib
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from features.catalog import Feature, ReasonCode, ReasonSide
from features.exceptions import ContractError, FeatureError
from serving.audit.canonical import canonical_bytes, json_value
from serving.exceptions import InvalidInput, StoredFeaturesInvalid
from serving.schemas import ScoreRequestBase, request_models, today

if TYPE_CHECKING:
    from serving.api.keys import Caller
    from serving.served import Loader, ServedModel
    from training.model import ScoringModel

log = logging.getLogger("scf_risk.serving")
N_REASONS = 4
FEW_PROBES = N_REASONS
"""Up to this many values probed (`_sides`), each value's nearest splits are searched one by
one (fewer array calls); more, in bulk per feature. The same bounds either way."""
WHAT_IF_FIRST = 2
"""Candidates of each what-if computed in its first round (`_first_moves`); then windows of
twice as many, 4, 8, ..., for the asks that have not moved a grade yet."""
DEFAULT_MIN_COVERAGE = 0.5
DEFAULT_MAX_FEATURE_AGE_DAYS = 45
Side = Literal["HIGH", "LOW"]
"""Which level of a present number adds risk (`_sides`)."""
LatestLookup = Callable[[str], "tuple[date, dict[str, Any]] | None"]


@dataclass(frozen=True)
class Reason:
    """One risk driver: a feature that lowers the score, its stable code (catalog), its value,
    its points and the code's sentence with the value written for a person."""

    code: str
    feature: str
    value: float | str | None
    points: float
    text: str


@dataclass(frozen=True)
class Limits:
    """The service's refusal thresholds (settings): minimum coverage (share of the model's gain
    importance carried by the features present) and the oldest materialised features accepted."""

    min_coverage: float = DEFAULT_MIN_COVERAGE
    max_feature_age_days: int = DEFAULT_MAX_FEATURE_AGE_DAYS


@dataclass(frozen=True)
class Decision:
    """An explained score, before it is stored: every feature value and every feature's points."""

    sme_id: str
    as_of: date
    mode: str
    inputs_hash: str
    features: dict[str, float | str | None]
    contributions: dict[str, float]
    base_points: float
    pd: float
    score: float
    grade: str
    reasons: tuple[Reason, ...]
    model: dict[str, str | None]
    explain_method: str
    coverage: dict[str, Any] = field(default_factory=dict)
    allow_sparse: bool = False
    features_as_of: date | None = None
    grade_band: dict[str, Any] = field(default_factory=dict)
    improvement: dict[str, Any] | None = None
    input: dict[str, Any] = field(default_factory=dict)

    def body(self, caller: Caller | None = None) -> dict[str, Any]:
        """The JSON-able record the audit store chains (it adds id, sequence, time, hashes)."""
        who = {} if caller is None else {"key_id": caller.key_id, "name": caller.name}
        if caller is not None:
            who["role"] = caller.role
        return {
            "caller": who,
            "sme_id": self.sme_id,
            "as_of": self.as_of.isoformat(),
            "mode": self.mode,
            "inputs_hash": self.inputs_hash,
            "features": dict(self.features),
            "contributions": dict(self.contributions),
            "base_points": self.base_points,
            "pd": self.pd,
            "score": self.score,
            "grade": self.grade,
            "reasons": [dict(vars(r)) for r in self.reasons],  # asdict, without its deep copy
            "model": dict(self.model),
            "explain_method": self.explain_method,
            "coverage": dict(self.coverage),
            "allow_sparse": self.allow_sparse,
            "features_as_of": (
                None if self.features_as_of is None else self.features_as_of.isoformat()
            ),
            "grade_band": dict(self.grade_band),
            "improvement": self.improvement,
            "input": dict(self.input),
        }


@dataclass(frozen=True)
class _Inputs:
    sme_id: str
    as_of: date
    mode: str
    features: dict[str, Any]
    inputs_hash: str
    features_as_of: date | None = None
    coverage: dict[str, Any] = field(default_factory=dict)
    allow_sparse: bool = False
    input: dict[str, Any] = field(default_factory=dict)


def score(
    served: ServedModel,
    request: ScoreRequestBase,
    *,
    latest: LatestLookup | None = None,
    limits: Limits = Limits(),
    raw: Any = None,
) -> Decision:
    """Score one validated request (see the module docstring for the three modes); `raw` is
    what the caller sent (kept in the record beside the normalised request)."""
    return score_many(served, [request], latest=latest, batch=False, limits=limits, raw=[raw])[0]


def score_many(
    served: ServedModel,
    requests: Sequence[ScoreRequestBase],
    *,
    latest: LatestLookup | None = None,
    batch: bool = True,
    limits: Limits = Limits(),
    raw: Sequence[Any] | None = None,
) -> list[Decision]:
    """Score several requests with one explanation call (one decision per request, in order).

    Errors name the field; in a batch the location starts with the item's index.
    """
    raws = list(raw) if raw is not None else [None] * len(requests)
    inputs = [
        prepare(served, req, latest, loc=(i,) if batch else (), limits=limits, raw=raws[i])
        for i, req in enumerate(requests)
    ]
    return decide(served, inputs)


def decide(served: ServedModel, inputs: Sequence[_Inputs], *, threads: int = 1) -> list[Decision]:
    """Explain prepared inputs (see `prepare`) with one call: one decision each, in order.
    ``threads`` > 1: the fast engine's TreeSHAP and what-if margins of a large batch are
    split over that many threads (the same values).

    The decisions `explain_rows` and `improvements` give, each built once. A batch's reasons
    are found column by column (`matrix_reasons`) and its side and what-if probes start from
    the rows' leaf values (the fast engine's, kept by its explanation): the same reasons and
    what-ifs (tests/serving/test_scoring_batch.py)."""
    if not inputs:
        return []
    model = served.model
    rows = [x.features for x in inputs]
    ex = _explain(model, rows, method=served.explain_method, threads=threads, batch=len(rows) > 1)
    firsts = [r[0] if r else None for r in ex.reasons]
    what_ifs = _what_ifs(model, rows, firsts, ex.grades, ex.M, threads=threads, leaves=ex.leaves)
    bands = {g: grade_band(model, g) for g in set(ex.grades)}
    method, info = served.explain_method, served.info
    return [
        ex.decision(
            i,
            x.sme_id,
            x.as_of,
            x.mode,
            x.inputs_hash,
            info,
            method,
            coverage=x.coverage,
            allow_sparse=x.allow_sparse,
            features_as_of=x.features_as_of,
            grade_band=bands[ex.grades[i]],
            improvement=what_ifs[i],
            input=x.input,
        )
        for i, x in enumerate(inputs)
    ]


@dataclass(frozen=True)
class _Explained:
    """Rows explained (`_explain`): the matrix, each row's recorded values, reasons and the
    explanation's numbers as Python lists; the leaf values when the fast engine kept them."""

    M: np.ndarray
    names: list[str]
    values: list[dict[str, float | str | None]]
    reasons: list[tuple[Reason, ...]]
    points: list[list[float]]
    base: list[float]
    pd: list[float]
    score: list[float]
    grades: list[str]
    leaves: np.ndarray | None

    def decision(
        self,
        i: int,
        sme_id: str,
        as_of: date,
        mode: str,
        inputs_hash: str,
        model_info: dict[str, str | None],
        method: str,
        **served: Any,
    ) -> Decision:
        """Row `i`'s decision; ``served``: the fields a served decision adds (coverage, grade
        band, what-if, input, ...)."""
        return Decision(
            sme_id=sme_id,
            as_of=as_of,
            mode=mode,
            inputs_hash=inputs_hash,
            features=self.values[i],
            contributions=dict(zip(self.names, self.points[i], strict=True)),
            base_points=self.base[i],
            pd=self.pd[i],
            score=self.score[i],
            grade=self.grades[i],
            reasons=self.reasons[i],
            model=dict(model_info),
            explain_method=method,
            **served,
        )


def _explain(
    model: ScoringModel,
    rows: Sequence[dict[str, Any]],
    *,
    method: str,
    threads: int = 1,
    batch: bool = False,
) -> _Explained:
    """Explain feature rows ({feature: value}, any subset): `explain_rows` without its
    decisions. ``batch``: the reasons come from `matrix_reasons` (the fast engine's leaf
    values kept for its side probes and for the caller's what-ifs) wherever each driver's value
    read back from the matrix is the value as recorded (always, but for values the matrix
    holds as another type, e.g. a numeric string): else from `_driver_reasons`, as a single
    row's."""
    from training.exceptions import ModelInputError

    keep = batch and method == "fast"
    try:
        M = model.records_matrix(rows)
        expl = model.explain_matrix(M, method, threads=threads, leaves=keep)
    except ModelInputError as exc:
        raise InvalidInput(("features",), str(exc)) from exc
    names = _view(model).names
    values = recorded_values(model, rows)
    points = expl.point_values  # the model's feature order, as `names`
    found: list[tuple[Reason, ...] | None] = (
        _batch_reasons(model, M, points, values, leaves=expl.leaves, threads=threads)
        if batch
        else [None] * len(rows)
    )
    redo = [i for i, r in enumerate(found) if r is None]  # rows whose reasons go row by row
    if redo:
        at = slice(None) if len(redo) == len(rows) else np.asarray(redo)
        again = _driver_reasons(
            model,
            M[at],
            points[at],
            lambda rs, cols: [
                values[redo[i]][names[j]] for i, j in zip(rs.tolist(), cols.tolist(), strict=True)
            ],
            threads=threads,
        )
        for i, row_reasons in zip(redo, again, strict=True):
            found[i] = row_reasons
    reasons: list[tuple[Reason, ...]] = []
    for r in found:
        assert r is not None  # every row's, once `redo` is filled
        reasons.append(r)
    # Python numbers once for the batch (the same values as float() of each numpy element)
    return _Explained(
        M=M,
        names=names,
        values=values,
        reasons=reasons,
        points=points.tolist(),
        base=expl.base_points.tolist(),
        pd=expl.pd.tolist(),
        score=expl.score.tolist(),
        grades=[str(g) for g in expl.grade.tolist()],
        leaves=expl.leaves,
    )


def _batch_reasons(
    model: ScoringModel,
    M: np.ndarray,
    points: np.ndarray,
    values: Sequence[dict[str, float | str | None]],
    *,
    leaves: np.ndarray | None,
    threads: int,
) -> list[tuple[Reason, ...] | None]:
    """Each row's reasons from `matrix_reasons`; None for a row where a driver's value read
    back from the matrix is not the recorded one (same type, value and sign): its text could
    differ from `_driver_reasons`', which the caller uses for that row alone."""
    found = matrix_reasons(model, M, points, leaves=leaves, threads=threads)
    out: list[list[Reason] | None] = [[] for _ in range(len(points))]
    for i, code, name, value, p, text in found.entries():
        row = out[i]
        if row is None:
            continue
        recorded = values[i][name]
        if not _same_value(recorded, value):
            out[i] = None
            continue
        row.append(Reason(code, name, recorded, p, text))
    return [None if r is None else tuple(r) for r in out]


def _same_value(a: float | str | None, b: float | str | None) -> bool:
    """Whether two recorded values are written alike (None, or one type, value and sign)."""
    if a is None or b is None:
        return a is b
    if type(a) is not type(b) or a != b:
        return False
    return isinstance(a, str) or a != 0.0 or math.copysign(1.0, a) == math.copysign(1.0, b)  # type: ignore[arg-type]


def explain_rows(
    model: ScoringModel,
    rows: Sequence[dict[str, Any]],
    *,
    method: str,
    model_info: dict[str, str | None],
    meta: Sequence[tuple[str, date, str, str]],
    threads: int = 1,
) -> tuple[list[Decision], np.ndarray]:
    """Explain feature rows ({feature: value}, any subset) and build one `Decision` per row
    (``meta``: sme_id, as_of, mode, inputs hash of each row); also the matrix it explained (one
    row per input, for the what-if). ``threads``: as `ScoringModel.explain_matrix`. The
    reasons are found row by row (`_driver_reasons`), whatever the number of rows."""
    ex = _explain(model, rows, method=method, threads=threads)
    decisions = [
        ex.decision(i, sme_id, as_of, mode, inputs_hash, model_info, method)
        for i, (sme_id, as_of, mode, inputs_hash) in enumerate(meta)
    ]
    return decisions, ex.M


@dataclass(frozen=True)
class ReasonColumns:
    """The reasons of many rows column by column (`matrix_reasons`): one entry per reason, the
    rows in order and each row's most negative first; ``rows[k]`` is the row of entry ``k``.
    The fields of `Reason`, without a Python object per reason."""

    rows: list[int]
    codes: list[str]
    features: list[str]
    values: list[float | str | None]
    points: list[float]
    texts: list[str]

    def entries(self) -> Iterator[tuple[int, str, str, float | str | None, float, str]]:
        """Each reason as (row, code, feature, value, points, text), in order."""
        return zip(
            self.rows, self.codes, self.features, self.values, self.points, self.texts, strict=True
        )


def matrix_reasons(
    model: ScoringModel,
    M: np.ndarray,
    points: np.ndarray,
    *,
    leaves: np.ndarray | None = None,
    threads: int = 1,
) -> ReasonColumns:
    """The reasons of each row of the model's matrix `M` (`ScoringModel.matrix`) given its
    points: those `explain_rows` gives the same rows (tests/serving/test_fast_paths.py), the
    values read back from the matrix (numbers as they are, categories from their codes, None
    for missing). For batches, where nothing needs each row's values as a dict: the drivers,
    values and sides are found with array operations (`_high_sides`; ``leaves``: the rows' leaf
    values, `Explanation.leaves`, so that the side probes need not route the rows again), and
    each distinct (feature, code, value) is written once. ``threads``: as `_high_sides`."""
    from features.catalog import format_value

    view = _view(model)
    names = view.names
    feats = [view.features[n] for n in names]
    rows, cols, kept = drivers(points)
    x = M[rows, cols]
    categorical = np.array([f.kind == "categorical" for f in feats], dtype=bool)[cols]
    direction = np.array([f.direction for f in feats], dtype=np.int64)[cols]
    missing = np.isnan(x)
    number = ~(missing | categorical)
    free = number & (direction == 0)
    high = direction > 0
    if free.any():
        high[free] = _high_sides(
            model, M, rows[free], cols[free], x[free], leaves=leaves, threads=threads
        )
    # the code of each reason: 0 MISSING, 1 CATEGORY, 2 HIGH, 3 LOW
    side = np.where(missing, 0, np.where(categorical, 1, np.where(high, 2, 3))).tolist()
    sides: tuple[ReasonSide, ...] = ("MISSING", "CATEGORY", "HIGH", "LOW")
    levels = [model.categories.get(n) for n in names]
    written: dict[tuple[int, int, Any], tuple[float | str | None, str, str]] = {}
    values: list[float | str | None] = []
    codes: list[str] = []
    texts: list[str] = []
    for j, v, k in zip(cols.tolist(), x.tolist(), side, strict=True):
        # -0.0 equals 0.0 as a key: zeros are keyed by their text, NaN (missing) by nothing
        key = (j, k, None if k == 0 else v if v or k == 1 else repr(v))
        hit = written.get(key)
        if hit is None:
            value: float | str | None = None if k == 0 else v
            if k == 1:
                value = levels[j][int(v)]
            rc = view.codes[names[j]][sides[k]]
            hit = written[key] = (
                value,
                rc.code,
                rc.template.format(value=format_value(feats[j], value)),
            )
        values.append(hit[0])
        codes.append(hit[1])
        texts.append(hit[2])
    return ReasonColumns(
        rows=rows.tolist(),
        codes=codes,
        features=[names[j] for j in cols.tolist()],
        values=values,
        points=kept,
        texts=texts,
    )


def drivers(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The drivers of each row of `points` (rows x features): the `N_REASONS` lowest points of
    the row in a stable sort (ties in column order), those below 0, most negative first. Row
    by row: their rows, their columns (numpy integer arrays) and their points.

    One row (a single score) is sorted in Python: its negative points sorted stably by value
    are the first of the whole row's stable sort (every negative sorts before 0, -0.0, any
    positive and NaN, which numpy sorts last), so the drivers are the same columns in the same
    order as the numpy path's, without its dozen array calls. Several rows are partitioned,
    not sorted (tests/serving/test_fast_paths.py: both against a stable sort of each row)."""
    if len(points) == 1:
        row = points[0].tolist()
        negative = [j for j, p in enumerate(row) if p < 0]
        negative.sort(key=row.__getitem__)  # stable
        cols = negative[:N_REASONS]
        return np.zeros(len(cols), np.intp), np.array(cols, np.intp), [row[j] for j in cols]
    # the candidates: each row's negative points not above its N_REASONS-th lowest (a
    # partition, not a sort of the row; NaN partitions last and is no candidate), which hold
    # the first N_REASONS of the row's stable sort that are negative; those sorted stably by
    # row then value (the columns ascending within ties, as `np.nonzero` gives them)
    k = min(N_REASONS, points.shape[1])
    candidate = points < 0
    if points.shape[1] > k:
        kth = np.partition(points, k - 1, axis=1)[:, k - 1 : k]
        candidate &= ~(points > kth)
    at_rows, at_cols = np.nonzero(candidate)
    values = points[at_rows, at_cols]
    order = np.lexsort((values, at_rows))
    at_rows, at_cols, values = at_rows[order], at_cols[order], values[order]
    first = np.flatnonzero(np.r_[True, at_rows[1:] != at_rows[:-1]]) if len(at_rows) else at_rows
    rank = np.arange(len(at_rows)) - np.repeat(first, np.diff(np.r_[first, len(at_rows)]))
    keep = rank < N_REASONS
    return at_rows[keep], at_cols[keep], values[keep].tolist()


def _driver_reasons(
    model: ScoringModel,
    M: np.ndarray,
    points: np.ndarray,
    values_at: Callable[[np.ndarray, np.ndarray], list[Any]],
    *,
    threads: int = 1,
) -> list[tuple[Reason, ...]]:
    """Each row's reasons: its `N_REASONS` most negative points (only those below 0), most
    negative first, with their codes and sentences. `values_at(rows, columns)`: the values as
    recorded of those cells. The order and sides are found for all rows at once (``threads``:
    as `_sides`)."""
    from features.catalog import format_value

    view = _view(model)
    names = view.names
    rows, cols, kept = drivers(points)
    values = values_at(rows, cols)
    row_list, col_list = rows.tolist(), cols.tolist()
    wanted = [(i, names[j], v) for i, j, v in zip(row_list, col_list, values, strict=True)]
    sides = _sides(model, M, wanted, threads=threads)
    out: list[list[Reason]] = [[] for _ in range(len(points))]
    for (i, name, value), p in zip(wanted, kept, strict=True):
        f, codes = view.features[name], view.codes[name]
        if value is None:
            rc = codes["MISSING"]
        elif f.kind == "categorical":
            rc = codes["CATEGORY"]
        else:
            rc = codes[sides[i, name]]
        text = rc.template.format(value=format_value(f, value))
        out[i].append(Reason(rc.code, name, value, p, text))
    return [tuple(r) for r in out]


def recorded_values(
    model: ScoringModel, rows: Sequence[dict[str, Any]]
) -> list[dict[str, float | str | None]]:
    """Every feature value as the model used it, per row: finite floats, trained categories,
    None for missing (absent, NaN, or a category the model was not trained on)."""
    plan = _view(model).recorded
    out: list[dict[str, float | str | None]] = []
    for row in rows:
        get = row.get
        rec: dict[str, float | str | None] = {}
        for name, known in plan:
            v = get(name)
            if known is None:  # a number
                if type(v) is float:  # the common case, kept cheap
                    rec[name] = v if v - v == 0.0 else None  # NaN and infinities: None
                else:
                    rec[name] = None if v is None else json_value(v)
            else:
                text = None if v is None or (isinstance(v, float) and v != v) else str(v)
                rec[name] = text if text in known else None
        out.append(rec)
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()


def prepare(
    served: ServedModel,
    request: ScoreRequestBase,
    latest: LatestLookup | None,
    *,
    loc: tuple[str | int, ...],
    limits: Limits = Limits(),
    raw: Any = None,
) -> _Inputs:
    """A request's feature values (by mode), checked for coverage and staleness; raises
    `InvalidInput` naming the field when it cannot be scored."""
    mode = request.mode
    received = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    record_input = {"raw": raw, "normalised": received}
    as_of = request.as_of
    features_as_of: date | None = None
    if mode == "features":
        values = dict(received["features"])  # `request_features`, from the dump at hand
        digest = _hash({"mode": mode, "as_of": as_of.isoformat(), "request": received})
    elif mode == "history":
        values = history_features(served.model, request, as_of, loc=loc)
        found = out_of_domain(served.model, values)
        if found:
            _, value, domain = found[0]
            raise InvalidInput(
                (*loc, "history"),
                f"the history rows sent give {_outside(found)}: no decision made; check the "
                "rows, or send features",
                value,
                domain=domain,
                kind="computed_out_of_domain",
            )
        digest = _hash({"mode": mode, "as_of": as_of.isoformat(), "request": received})
    else:
        features_as_of, values = _stored(served, request, latest, loc=loc, limits=limits)
        digest = _hash(
            {
                "mode": mode,
                "request": received,
                "materialized": {"as_of": features_as_of.isoformat(), "features": values},
            }
        )
    cov = coverage(served.model, values)
    if cov["gain_share"] < limits.min_coverage and not request.allow_sparse:
        field_name = {"features": "features", "history": "history"}.get(mode, "sme_id")
        raise InvalidInput(
            (*loc, field_name),
            f"coverage too low: the {cov['present']} feature(s) present carry "
            f"{cov['gain_share']:.1%} of the model's gain importance, below the minimum "
            f"{limits.min_coverage:.0%}; send more features or set allow_sparse to true "
            f"(missing: {', '.join(cov['missing_top'])})",
        )
    return _Inputs(
        request.sme_id,
        as_of,
        mode,
        values,
        digest,
        features_as_of=features_as_of,
        coverage=cov,
        allow_sparse=request.allow_sparse,
        input=record_input,
    )


def _stored(
    served: ServedModel,
    request: ScoreRequestBase,
    latest: LatestLookup | None,
    *,
    loc: tuple[str | int, ...],
    limits: Limits,
) -> tuple[date, dict[str, Any]]:
    found = latest(request.sme_id) if latest is not None else None
    if found is None:
        raise InvalidInput((*loc, "sme_id"), never_materialised(served.model, request.sme_id))
    stored_as_of, stored = found
    if stored_as_of > request.as_of:
        raise InvalidInput(
            (*loc, "as_of"),
            f"the latest materialised features of {request.sme_id} are as of "
            f"{stored_as_of.isoformat()}, after the requested as_of {request.as_of.isoformat()}: "
            "send features or history",
        )
    oldest = request.as_of - timedelta(days=limits.max_feature_age_days)
    if stored_as_of < oldest:
        raise InvalidInput(
            (*loc, "as_of"),
            f"the latest materialised features of {request.sme_id} are as of "
            f"{stored_as_of.isoformat()}, more than {limits.max_feature_age_days} days before "
            f"the requested as_of {request.as_of.isoformat()} (stale): send features or history",
        )
    known_names = set(served.model.feature_names)
    values = {k: v for k, v in stored.items() if k in known_names}
    outside = out_of_domain(served.model, values)
    if outside:
        _, value, domain = outside[0]
        message = (
            f"the materialised features of {request.sme_id} as of {stored_as_of.isoformat()} "
            f"hold {_outside(outside)}: the online feature table is wrong, not the request; no "
            "decision made (materialise again with scf-risk score or monthly, or send features "
            "or history)"
        )
        log.error("%s", message)
        raise StoredFeaturesInvalid((*loc, "sme_id"), message, value, domain=domain)
    return stored_as_of, values


def never_materialised(model: ScoringModel, sme_id: str) -> str:
    """Why an SME without materialised features cannot be scored from them, by what the model's
    reference data knows of it: an SME never materialised, a core enterprise, or unknown."""
    reference = model.reference
    if reference is None:
        return (
            f"no materialised features for {sme_id}, and the served model carries no reference "
            "data to say whether it is known: send features or history"
        )
    ent = reference.enterprises
    roles = ent.loc[ent["enterprise_id"].astype(str) == sme_id, "role"].astype(str).tolist()
    if "sme" in roles:
        return (
            f"SME {sme_id} is known to the model's reference data but its features were never "
            "materialised (run scf-risk score or monthly): send features or history"
        )
    if roles:
        return (
            f"{sme_id} is a {roles[0]} enterprise in the model's reference data, not an SME, "
            "and has no materialised features: send features or history"
        )
    return (
        f"unknown SME {sme_id}: no materialised features and not in the model's reference "
        "data: send features or history"
    )


def out_of_domain(model: ScoringModel, values: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The present values outside their feature's catalog domain (categories: the model's
    trained ones), as (feature, value, domain) in catalog order. Features computed from history
    or read from the online table are checked as strictly as those a caller sends."""
    from features.catalog import domain_of

    found = []
    for f in model.catalog:
        value = values.get(f.name)
        if value is None or not _present(value):
            continue
        known = tuple(model.categories.get(f.name, ()))
        domain = domain_of(f)
        if domain.violation(value, known) is not None:
            found.append((f.name, value, domain.describe(known)))
    return found


def _outside(found: Sequence[tuple[str, Any, str]]) -> str:
    return "; ".join(f"{name} = {value!r}, outside its domain {d}" for name, value, d in found)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def coverage(model: ScoringModel, values: dict[str, Any]) -> dict[str, Any]:
    """How much of the model the values cover: features present, and the share of the
    booster's total gain importance those features carry (1.0 for a model without splits)."""
    view = _view(model)
    get = values.get
    present = [
        n for n in view.names if (v := get(n)) is not None and not (isinstance(v, float) and v != v)
    ]  # `_present`, inline: this runs for every feature of every request
    # the gains summed in the model's order, as ever (the same float)
    share = (
        1.0 if view.total_gain <= 0 else sum(map(view.gains.__getitem__, present)) / view.total_gain
    )
    here = set(present)
    missing = list(islice((n for n in view.by_gain if n not in here), 5))
    return {
        "present": len(present),
        "of": len(view.names),
        "gain_share": round(share, 6),
        "missing_top": missing,
    }


def gain_importance(model: ScoringModel) -> dict[str, float]:
    """The booster's gain importance per feature (computed once per booster)."""
    return _view(model).gains


def split_points(model: ScoringModel) -> dict[str, np.ndarray]:
    """The sorted numeric split thresholds of each feature over all trees (computed once per
    booster): the only values at which the model's output for that feature can change."""
    return _view(model).splits


@dataclass(frozen=True)
class _View:
    """What the scoring path reads of a model on every request, derived once per booster."""

    names: list[str]
    slots: dict[str, int]  # column of each feature in the matrix
    features: dict[str, Feature]
    codes: dict[str, dict[ReasonSide, ReasonCode]]  # reason codes of each feature, by side
    gains: dict[str, float]  # gain importance
    total_gain: float
    by_gain: list[str]  # features with gain, most first (ties in model order)
    splits: dict[str, np.ndarray]  # sorted numeric split thresholds
    # `recorded_values`' plan: each feature, in model order, with its trained categories (None
    # for a number)
    recorded: tuple[tuple[str, frozenset[str] | None], ...]


_VIEWS: weakref.WeakKeyDictionary[Any, _View] = weakref.WeakKeyDictionary()
"""Each live booster's `_View`; an entry goes with its booster (a reload does not keep the old
model alive)."""
_NO_SPLITS = np.array([])


def _view(model: ScoringModel) -> _View:
    """The model's `_View` (cached by booster, for as long as the booster lives)."""
    hit = _VIEWS.get(model.booster)
    if hit is None:
        hit = _build_view(model)
        _VIEWS[model.booster] = hit
    return hit


def _build_view(model: ScoringModel) -> _View:
    from features.catalog import reason_codes

    names = list(model.feature_names)
    found: dict[str, set[float]] = {n: set() for n in names}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            if node.get("decision_type") == "<=":
                found[names[node["split_feature"]]].add(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in model.booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    raw = model.booster.feature_importance(importance_type="gain")
    gains = dict(zip(names, map(float, raw), strict=True))
    return _View(
        names=names,
        slots={n: j for j, n in enumerate(names)},
        features={f.name: f for f in model.catalog},
        codes={f.name: reason_codes(f) for f in model.catalog},
        gains=gains,
        total_gain=sum(gains.values()),
        by_gain=sorted((n for n in names if gains[n] > 0), key=lambda n: -gains[n]),
        splits={n: np.array(sorted(v)) for n, v in found.items()},
        recorded=tuple(
            (
                f.name,
                frozenset(model.categories.get(f.name, ())) if f.kind == "categorical" else None,
            )
            for f in model.catalog
        ),
    )


def _margins_varying(
    model: ScoringModel,
    M: np.ndarray,
    asks: Sequence[tuple[int, str, Sequence[float]]],
    *,
    threads: int = 1,
    leaves: np.ndarray | None = None,
) -> list[np.ndarray]:
    """For each (row, feature, values): the raw margins of row `row` of `M` with that feature
    set to each of `values` (the others as they are), all through the compiled trees in one call
    (`TreeShap.margin_varied`: each probe walks only the trees that split on its feature;
    ``leaves``: `M`'s leaf values, when the caller has them)."""
    if not asks:
        return []
    engine = model.treeshap().with_threads(threads)
    counts = [len(v) for _, _, v in asks]
    slots = _view(model).slots
    rows = np.repeat(np.array([r for r, _, _ in asks], dtype=np.intp), counts)
    cols = np.repeat(np.array([slots[n] for _, n, _ in asks], dtype=np.intp), counts)
    values = np.concatenate([np.asarray(v, np.float64) for _, _, v in asks])
    margins = engine.margin_varied(M, rows, cols, values, leaves=leaves)
    return [margins] if len(asks) == 1 else np.split(margins, np.cumsum(counts)[:-1])


def _grades_of(model: ScoringModel, margin: np.ndarray) -> np.ndarray:
    """The grade of each raw margin."""
    from scipy.special import expit

    return model.master_scale.grade(expit(model.calibration.logodds(margin)))


def _sides(
    model: ScoringModel,
    M: np.ndarray,
    wanted: Sequence[tuple[int, str, Any]],
    *,
    threads: int = 1,
    leaves: np.ndarray | None = None,
) -> dict[tuple[int, str], Side]:
    """The side of each (row, feature, value as recorded) of `wanted` whose value is a present
    number: HIGH when its level adds risk because it is high (declared by the catalog's
    direction; for an unconstrained feature, probed at the nearest splits, all rows in one
    call). `M`: the rows' matrix.

    A probed value's margin is compared with the margins at the nearest split below it and
    just above the nearest split at or above it (the value itself where there is none: no
    change); the nearest splits of all values of a feature are found in one search. ``threads``
    > 1: the probes of many values are split over numba's threads (the same margins);
    ``leaves``: `M`'s leaf values when the caller has them (`Explanation.leaves`)."""
    view = _view(model)
    out: dict[tuple[int, str], Side] = {}
    rows: list[int] = []
    names: list[str] = []
    values: list[float] = []
    for i, name, recorded in wanted:
        f = view.features[name]
        if f.kind == "categorical" or not _present(recorded):
            continue
        if f.direction != 0:
            out[i, name] = "HIGH" if f.direction > 0 else "LOW"
            continue
        rows.append(i)
        names.append(name)
        values.append(float(recorded))
    if not rows:
        return out
    n = len(rows)
    if n > FEW_PROBES:  # in bulk: the nearest splits of all values of a feature in one search
        high = _high_sides(
            model,
            M,
            np.array(rows, dtype=np.intp),
            np.array([view.slots[name] for name in names], dtype=np.intp),
            np.array(values, dtype=np.float64),
            leaves=leaves,
            threads=threads,
        ).tolist()
    else:  # a single score's drivers: each value's nearest splits one by one
        probes: list[float] = []
        for name, v in zip(names, values, strict=True):
            cuts = view.splits.get(name, _NO_SPLITS)
            j = int(cuts.searchsorted(v, side="left"))  # cuts[:j] < v <= cuts[j:]
            probes += (
                v,
                cuts[j - 1] if j > 0 else v,
                np.nextafter(cuts[j], np.inf) if j < len(cuts) else v,
            )
        at = np.repeat(np.array(rows, dtype=np.intp), 3)
        cols = np.repeat(np.array([view.slots[name] for name in names], dtype=np.intp), 3)
        engine = model.treeshap().with_threads(threads)
        probed = np.asarray(probes, dtype=np.float64)
        margin = engine.margin_varied(M, at, cols, probed, leaves=leaves).reshape(n, 3)
        high = (margin[:, 1] - margin[:, 0] <= margin[:, 2] - margin[:, 0]).tolist()
    for i, name, h in zip(rows, names, high, strict=True):
        out[i, name] = "HIGH" if h else "LOW"
    return out


def _high_sides(
    model: ScoringModel,
    M: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    *,
    leaves: np.ndarray | None = None,
    threads: int = 1,
) -> np.ndarray:
    """`_sides` of present numbers of unconstrained features, in bulk: for each (row of `M`,
    column, value), whether its level adds risk because it is high. The value's margin against
    those at the nearest split below it and just above the nearest split at or above it (the
    value itself where there is none); the splits of each feature searched once for all its
    values. ``leaves``: `M`'s leaf values (`TreeShap.margin_varied`), ``threads``: as there."""
    view = _view(model)
    below, above = values.copy(), values.copy()
    for j in np.unique(cols).tolist():
        cuts = view.splits.get(view.names[j], _NO_SPLITS)
        if not len(cuts):
            continue
        at = np.flatnonzero(cols == j)
        k = np.searchsorted(cuts, values[at], side="left")  # cuts[:k] < value <= cuts[k:]
        has_below, has_above = k > 0, k < len(cuts)
        below[at[has_below]] = cuts[k[has_below] - 1]
        above[at[has_above]] = np.nextafter(cuts[k[has_above]], np.inf)
    probes = np.column_stack([values, below, above]).ravel()
    engine = model.treeshap().with_threads(threads)
    margin = engine.margin_varied(
        M, np.repeat(rows, 3), np.repeat(cols, 3), probes, leaves=leaves
    ).reshape(len(values), 3)
    high: np.ndarray = margin[:, 1] - margin[:, 0] <= margin[:, 2] - margin[:, 0]
    return high


def reason(
    model: ScoringModel,
    name: str,
    row: dict[str, Any],
    points: float,
    *,
    base: np.ndarray | None = None,
) -> Reason:
    """One risk driver with its catalog code and sentence (`base`: the row's matrix row, when
    the caller has it)."""
    M = model.records_matrix([row]) if base is None else base[None, :]
    side = _sides(model, M, [(0, name, row.get(name))]).get((0, name))
    return _reason(model, name, row.get(name), points, side)


def _reason(
    model: ScoringModel,
    name: str,
    value: Any,
    points: float,
    side: Side | None,
    *,
    view: _View | None = None,
) -> Reason:
    """A risk driver from its value's side (`_sides`; None for a missing or categorical value).
    `view`: the model's `_view`, when the caller has it."""
    from features.catalog import format_value

    view = view or _view(model)
    f, codes = view.features[name], view.codes[name]
    if not _present(value):
        rc = codes["MISSING"]
    elif f.kind == "categorical":
        rc = codes["CATEGORY"]
    else:
        assert side is not None
        rc = codes[side]
    return Reason(rc.code, name, value, points, rc.template.format(value=format_value(f, value)))


def grade_band(model: ScoringModel, grade: str) -> dict[str, Any]:
    """What a grade means: its PD band (lower end exclusive, upper inclusive)."""
    scale = model.master_scale
    k = list(scale.grades).index(grade)
    low, high = scale.lower_pd()[k], scale.upper_pd[k]
    days = model.horizon_days
    return {
        "grade": grade,
        "rank": k + 1,
        "of": len(scale.grades),
        "pd_low": low,
        "pd_high": high,
        "text": f"Grade {grade} ({k + 1} of {len(scale.grades)}, best first): probability of "
        f"default within {days} days above {low:.2%} and up to {high:.2%}",
    }


def improvements(
    model: ScoringModel,
    values: Sequence[dict[str, Any]],
    decisions: Sequence[Decision],
    M: np.ndarray,
    *,
    threads: int = 1,
) -> list[dict[str, Any] | None]:
    """For the top reason of each decision: the nearest value of that feature, along its
    monotone direction, that moves the SME one grade up with the model held fixed (None when
    there is no reason). `values`: each row's features, `M`: their matrix; the candidate values
    go through the compiled trees in rounds (`_first_moves`), each row's stopping at its first
    grade up."""
    firsts = [d.reasons[0] if d.reasons else None for d in decisions]
    return _what_ifs(model, values, firsts, [d.grade for d in decisions], M, threads=threads)


def _what_ifs(
    model: ScoringModel,
    values: Sequence[dict[str, Any]],
    firsts: Sequence[Reason | None],
    grades: Sequence[str],
    M: np.ndarray,
    *,
    threads: int = 1,
    leaves: np.ndarray | None = None,
) -> list[dict[str, Any] | None]:
    """`improvements` of rows given each one's top reason (`firsts`, None: no reason) and
    grade; ``leaves``: `M`'s leaf values (`Explanation.leaves`), so that the candidates' probes
    need not route the rows again (the same margins, `TreeShap.margin_varied`)."""
    from features.catalog import domain_of, format_value

    rank = {g: r for r, g in enumerate(model.master_scale.grades)}  # 0 = the best grade
    view = _view(model)
    out: list[dict[str, Any] | None] = [None] * len(firsts)
    asks: list[tuple[int, str, list[float]]] = []
    for i, (row, first, grade) in enumerate(zip(values, firsts, grades, strict=True)):
        if first is None:
            continue
        name = first.feature
        f = view.features[name]
        base = {"feature": name, "from": first.value, "to": None, "grade": None}
        value = row.get(name)
        out[i] = {**base, "text": "no change of this feature alone moves it up a grade"}
        if rank[grade] == 0:
            out[i] = {**base, "text": "already in the best grade"}
            continue
        if f.kind == "categorical" or f.direction == 0 or not _present(value):
            why = (
                "its value is missing"
                if not _present(value)
                else "it has no monotone direction in the model"
            )
            out[i] = {**base, "text": f"no what-if for {name}: {why}"}
            continue
        domain = domain_of(f)
        cuts = view.splits.get(name, _NO_SPLITS)
        current = float(value)  # type: ignore[arg-type]
        if f.direction > 0:  # less is better: go left of each split below the value, nearest first
            below = cuts[cuts < current][::-1]
            candidates = below[below >= domain.low].tolist()
        else:  # more is better: go right of each split at or above the value, nearest first
            above = cuts[cuts >= current]
            candidates = np.nextafter(above[above < domain.high], np.inf).tolist()
        if candidates:
            asks.append((i, name, candidates))
    moved = _first_moves(model, M, asks, [rank[g] for g in grades], rank, threads, leaves)
    for a, (i, name, _) in enumerate(asks):
        if a in moved:  # the nearest
            to, grade = moved[a]
            f, current = view.features[name], float(values[i][name])
            verb = "Lowering" if f.direction > 0 else "Raising"
            out[i] = {
                **(out[i] or {}),
                "to": to,
                "grade": grade,
                "text": f"{verb} {name} from {format_value(f, current)} to "
                f"{format_value(f, to)} would move the SME from {grades[i]} to {grade}",
            }
    return out


def _first_moves(
    model: ScoringModel,
    M: np.ndarray,
    asks: Sequence[tuple[int, str, list[float]]],
    ranks: Sequence[int],
    rank: dict[str, int],
    threads: int,
    leaves: np.ndarray | None = None,
) -> dict[int, tuple[float, str]]:
    """For each ask (row, feature, candidates nearest first) of `improvements`: its first
    candidate whose grade ranks better than the row's (`ranks`, by row), with that grade; asks
    without one are left out. The candidates go through the trees in rounds, the first
    `WHAT_IF_FIRST` of every ask, then windows twice as long, of the asks still without a
    move: most move within a few candidates of the nearest, so most of the candidates further
    out are never computed. Each margin is its row's alone (`_margins_varying`), so the answer
    is the one of computing every candidate at once (``leaves``: as `_margins_varying`)."""
    found: dict[int, tuple[float, str]] = {}
    pending = list(range(len(asks)))
    start, size = 0, WHAT_IF_FIRST
    while pending:
        stop = start + size
        part = [(asks[a][0], asks[a][1], asks[a][2][start:stop]) for a in pending]
        margins = _margins_varying(model, M, part, threads=threads, leaves=leaves)
        grades = _grades_of(model, np.concatenate(margins)).tolist()
        at, still = 0, []
        for a, (i, _, window) in zip(pending, part, strict=True):
            k = ranks[i]
            hit = next(
                (
                    (c, g)
                    for c, g in zip(window, grades[at : at + len(window)], strict=True)
                    if rank[g] < k
                ),
                None,
            )
            at += len(window)
            if hit is not None:
                found[a] = hit
            elif len(asks[a][2]) > stop:
                still.append(a)
        pending, start, size = still, stop, 2 * size
    return found


def history_features(
    model: ScoringModel, request: ScoreRequestBase, as_of: date, *, loc: tuple[str | int, ...]
) -> dict[str, Any]:
    """Features of one SME from its own contract rows: the pipeline's single-SME path with the
    reference data stored with the model (the same code as the batch panel)."""
    from features.io import validate_frames
    from features.reference import sme_features

    reference = model.reference
    if reference is None:
        raise InvalidInput(
            (*loc, "history"),
            "the served model carries no reference data, so history cannot be scored: "
            "send features instead",
        )
    history = getattr(request, "history", None)
    assert history is not None
    frames = history_frames(history.model_dump(mode="python"))
    try:
        tables = validate_frames(
            frames,
            source="history",
            history_of=request.sme_id,
            known_enterprises=reference.enterprises.astype(
                {"enterprise_id": object, "role": object}
            ),
            today=today(),
        )
        rows = sme_features(tables, pd.Timestamp(as_of), reference, sme_id=request.sme_id)
    except ContractError as exc:
        first = exc.violations[0] if exc.violations else None
        where: tuple[str | int, ...] = (*loc, "history")
        if first is not None:
            where = (*where, first.table)
            if first.row is not None:
                where = (*where, first.row - 1)
            if first.column is not None:
                where = (*where, first.column)
        raise InvalidInput(where, str(exc)) from exc
    except FeatureError as exc:
        raise InvalidInput((*loc, "history"), str(exc)) from exc
    if len(rows) != 1:
        raise InvalidInput((*loc, "history"), f"expected one feature row, got {len(rows)}")
    known = set(model.feature_names)
    return {k: v for k, v in rows.iloc[0].to_dict().items() if k in known}


def history_frames(history: dict[str, list[dict[str, Any]]]) -> dict[str, pd.DataFrame]:
    """The ``history`` body's rows as raw frames per contract table (validated afterwards).
    Tables without rows are left out, except ``invoices`` (required by the contract)."""
    from features.contract import TABLES_BY_NAME, empty_frame

    frames: dict[str, pd.DataFrame] = {}
    for name, rows in history.items():
        if rows:
            frames[name] = pd.DataFrame(rows)
        elif name == "invoices":
            frames[name] = empty_frame(TABLES_BY_NAME[name])
    return frames


# -- replay ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayResult:
    """Whether re-scoring a stored decision gives exactly the same result."""

    decision_id: str
    model_uri: str
    matches: bool
    differences: list[str] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.matches:
            head = f"decision {self.decision_id}: replayed with {self.model_uri}: matches exactly"
            return "\n".join([head] + [f"  {c}" for c in self.compared])
        lines = [f"decision {self.decision_id}: replayed with {self.model_uri}: DIFFERS"]
        lines += [f"  {c}" for c in self.compared]
        return "\n".join(lines + [f"  {d}" for d in self.differences])


def replay(stored: dict[str, Any], *, loader: Loader, tracking_uri: str) -> ReplayResult:
    """Re-score a stored decision with its recorded model version, features and method."""
    model_rec = stored["model"]
    uri = (
        f"models:/{model_rec['name']}/{model_rec['version']}"
        if model_rec.get("version") is not None
        else str(model_rec.get("uri") or model_rec["name"])
    )
    loaded = loader(uri, tracking_uri)
    info = {
        "name": loaded.name,
        "version": None if loaded.version is None else str(loaded.version),
        "run_id": loaded.run_id,
    }
    features: dict[str, Any] = stored["features"]
    from_inputs: list[str] = []
    sent = history_inputs(stored)
    if sent is not None:
        features, from_inputs = _features_from_inputs(stored, sent, loaded.model)
    (decision,), _ = explain_rows(
        loaded.model,
        [features],
        method=stored["explain_method"],
        model_info=info,
        meta=[
            (
                stored["sme_id"],
                date.fromisoformat(stored["as_of"]),
                stored["mode"],
                stored["inputs_hash"],
            )
        ],
    )
    again = decision.body()
    diffs = [
        f"{key}: stored {stored.get(key)!r}, replayed {again[key]!r}"
        for key in ("features", "base_points", "pd", "score", "grade", "model")
        if stored.get(key) != again[key]
    ]
    if stored.get("contributions") != again["contributions"]:
        changed = [
            k
            for k in again["contributions"]
            if stored.get("contributions", {}).get(k) != again["contributions"][k]
        ]
        diffs.append(f"contributions differ for {len(changed)} feature(s): {changed[:10]}")
    if stored.get("reasons") != again["reasons"]:
        diffs.append(f"reasons: stored {stored.get('reasons')!r}, replayed {again['reasons']!r}")
    diffs = from_inputs + diffs
    compared = [
        f"{key}: stored {stored.get(key)!r}, replayed {again[key]!r}"
        for key in ("pd", "score", "grade")
    ]
    if sent is not None:
        compared.insert(0, "features recomputed from the recorded history rows")
    return ReplayResult(str(stored["decision_id"]), uri, not diffs, diffs, compared)


def history_inputs(stored: dict[str, Any]) -> dict[str, Any] | None:
    """The object whose sha256 is a history decision's ``inputs_hash``: its mode, as-of date
    and the request as the service normalised it (kept in the record's ``input``); None for
    the other modes or a record without its input."""
    recorded = stored.get("input")
    if stored.get("mode") != "history" or not isinstance(recorded, dict):
        return None
    normalised = recorded.get("normalised")
    if not isinstance(normalised, dict):
        return None
    return {"mode": "history", "as_of": stored["as_of"], "request": normalised}


def _features_from_inputs(
    stored: dict[str, Any], inputs: dict[str, Any], model: ScoringModel
) -> tuple[dict[str, Any], list[str]]:
    """A history decision's features recomputed from the rows its caller sent (checked against
    the recorded inputs hash first), and the problems found."""
    problems: list[str] = []
    if _hash(inputs) != stored.get("inputs_hash"):
        problems.append("inputs: the recorded rows do not match the recorded inputs hash")
    single, _ = request_models(model.catalog)
    request = single.model_validate_json(canonical_bytes(inputs["request"]))
    values = history_features(model, request, date.fromisoformat(inputs["as_of"]), loc=())
    return values, problems
