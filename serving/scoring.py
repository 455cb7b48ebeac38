"""The scoring core: a validated request and the served model in, an explained decision out.

Plain functions, no HTTP: the routes are thin wrappers over `score` / `score_many`, and
`replay` re-scores a stored decision with its recorded model version and features.

Three request modes: ``features`` (values as given; missing ones are missing), ``history`` (the
SME's own contract rows, turned into features by the pipeline's single-SME path with the reference
data stored with the model), ``stored`` (neither: the SME's latest materialised features).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.exceptions import ContractError, FeatureError
from serving.audit.canonical import canonical_bytes, json_value
from serving.exceptions import InvalidInput
from serving.schemas import ScoreRequestBase, request_features, request_models, today

if TYPE_CHECKING:
    from serving.api.keys import Caller
    from serving.served import Loader, ServedModel
    from training.model import ScoringModel

N_REASONS = 4
LatestLookup = Callable[[str], "tuple[date, dict[str, Any]] | None"]


@dataclass(frozen=True)
class Reason:
    """One risk driver: a feature that lowers the score, its value, its points, its description."""

    feature: str
    value: float | str | None
    points: float
    text: str


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
    # history mode: what the caller sent (the object whose hash is ``inputs_hash``), kept so
    # `replay` recomputes the features from the raw rows
    inputs: dict[str, Any] | None = None

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
            "reasons": [asdict(r) for r in self.reasons],
            "model": dict(self.model),
            "explain_method": self.explain_method,
            **({"inputs": self.inputs} if self.inputs is not None else {}),
        }


@dataclass(frozen=True)
class _Inputs:
    sme_id: str
    as_of: date
    mode: str
    features: dict[str, Any]
    inputs_hash: str
    raw: dict[str, Any] | None = None


def score(
    served: ServedModel, request: ScoreRequestBase, *, latest: LatestLookup | None = None
) -> Decision:
    """Score one validated request (see the module docstring for the three modes)."""
    return score_many(served, [request], latest=latest, batch=False)[0]


def score_many(
    served: ServedModel,
    requests: Sequence[ScoreRequestBase],
    *,
    latest: LatestLookup | None = None,
    batch: bool = True,
) -> list[Decision]:
    """Score several requests with one explanation call (one decision per request, in order).

    Errors name the field; in a batch the location starts with the item's index.
    """
    inputs = [
        _inputs(served, req, latest, loc=(i,) if batch else ()) for i, req in enumerate(requests)
    ]
    decisions = explain_rows(
        served.model,
        [x.features for x in inputs],
        method=served.explain_method,
        model_info=served.info,
        meta=[(x.sme_id, x.as_of, x.mode, x.inputs_hash) for x in inputs],
    )
    return [
        d if x.raw is None else replace(d, inputs=x.raw)
        for d, x in zip(decisions, inputs, strict=True)
    ]


def explain_rows(
    model: ScoringModel,
    rows: Sequence[dict[str, Any]],
    *,
    method: str,
    model_info: dict[str, str | None],
    meta: Sequence[tuple[str, date, str, str]],
) -> list[Decision]:
    """Explain feature rows ({feature: value}, any subset) and build one `Decision` per row
    (``meta``: sme_id, as_of, mode, inputs hash of each row)."""
    from training.exceptions import ModelInputError

    try:
        expl = model.explain_records(rows, method=method)
    except ModelInputError as exc:
        raise InvalidInput(("features",), str(exc)) from exc
    names = list(model.feature_names)
    by_name = {f.name: f for f in model.catalog}
    values = recorded_values(model, rows)
    points = expl.point_values  # the model's feature order, as `names`
    decisions: list[Decision] = []
    for i, (sme_id, as_of, mode, inputs_hash) in enumerate(meta):
        row_points = points[i]
        order = np.argsort(row_points, kind="stable")
        reasons = tuple(
            Reason(
                names[j], values[i][names[j]], float(row_points[j]), by_name[names[j]].description
            )
            for j in order[:N_REASONS]
            if row_points[j] < 0
        )
        decisions.append(
            Decision(
                sme_id=sme_id,
                as_of=as_of,
                mode=mode,
                inputs_hash=inputs_hash,
                features=values[i],
                contributions=dict(zip(names, row_points.tolist(), strict=True)),
                base_points=float(expl.base_points[i]),
                pd=float(expl.pd[i]),
                score=float(expl.score[i]),
                grade=str(expl.grade[i]),
                reasons=reasons,
                model=dict(model_info),
                explain_method=method,
            )
        )
    return decisions


def recorded_values(
    model: ScoringModel, rows: Sequence[dict[str, Any]]
) -> list[dict[str, float | str | None]]:
    """Every feature value as the model used it, per row: finite floats, trained categories,
    None for missing (absent, NaN, or a category the model was not trained on)."""
    categorical = {
        f.name: frozenset(model.categories.get(f.name, ()))
        for f in model.catalog
        if f.kind == "categorical"
    }
    out: list[dict[str, float | str | None]] = []
    for row in rows:
        rec: dict[str, float | str | None] = {}
        for name in model.feature_names:
            v = row.get(name)
            if type(v) is float and name not in categorical:  # the common case, kept cheap
                rec[name] = v if math.isfinite(v) else None
            elif name in categorical:
                text = None if v is None or (isinstance(v, float) and v != v) else str(v)
                rec[name] = text if text in categorical[name] else None
            else:
                rec[name] = json_value(v)
        out.append(rec)
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()


def _inputs(
    served: ServedModel,
    request: ScoreRequestBase,
    latest: LatestLookup | None,
    *,
    loc: tuple[str | int, ...],
) -> _Inputs:
    mode = request.mode
    received = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    if mode == "features":
        as_of = request.as_of or today()
        return _Inputs(
            request.sme_id,
            as_of,
            mode,
            request_features(request),
            _hash({"mode": mode, "as_of": as_of.isoformat(), "request": received}),
        )
    if mode == "history":
        as_of = request.as_of or today()
        values = history_features(served.model, request, as_of, loc=loc)
        raw = {"mode": mode, "as_of": as_of.isoformat(), "request": received}
        return _Inputs(request.sme_id, as_of, mode, values, _hash(raw), raw)
    found = latest(request.sme_id) if latest is not None else None
    if found is None:
        raise InvalidInput(
            (*loc, "sme_id"),
            f"no materialised features for SME {request.sme_id}: send features or history",
        )
    stored_as_of, stored = found
    if request.as_of is not None and stored_as_of > request.as_of:
        raise InvalidInput(
            (*loc, "as_of"),
            f"the latest materialised features of {request.sme_id} are as of "
            f"{stored_as_of.isoformat()}, after the requested as_of {request.as_of.isoformat()}: "
            "send features or history",
        )
    known = set(served.model.feature_names)
    values = {k: v for k, v in stored.items() if k in known}
    digest = _hash(
        {
            "mode": mode,
            "request": received,
            "materialized": {"as_of": stored_as_of.isoformat(), "features": values},
        }
    )
    return _Inputs(request.sme_id, stored_as_of, mode, values, digest)


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
    if stored.get("inputs") is not None:
        features, from_inputs = _features_from_inputs(stored, loaded.model)
    decision = explain_rows(
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
    )[0]
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
    if stored.get("inputs") is not None:
        compared.insert(0, "features recomputed from the recorded history rows")
    return ReplayResult(str(stored["decision_id"]), uri, not diffs, diffs, compared)


def _features_from_inputs(
    stored: dict[str, Any], model: ScoringModel
) -> tuple[dict[str, Any], list[str]]:
    """A history decision's features recomputed from the rows its caller sent (checked against
    the recorded inputs hash first), and the problems found."""
    inputs = stored["inputs"]
    problems: list[str] = []
    if _hash(inputs) != stored.get("inputs_hash"):
        problems.append("inputs: the recorded rows do not match the recorded inputs hash")
    single, _ = request_models(model.catalog)
    request = single.model_validate_json(canonical_bytes(inputs["request"]))
    values = history_features(model, request, date.fromisoformat(inputs["as_of"]), loc=())
    return values, problems
