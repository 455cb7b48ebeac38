"""Request and response models of the HTTP API.

The scoring request is generated from the served model's catalog (`request_models`): one optional
field per feature (finite float for numeric features, string for categoricals), unknown names
forbidden; the ``history`` rows are generated from the data contract's table declarations. Nothing
lists feature names by hand.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Annotated, Any, Union, get_args, get_origin

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    TypeAdapter,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from features.catalog import Feature, domain_of
from features.contract import TABLES, Column, Table

SME_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
DECISION_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
MAX_TEXT = 256

FIRST_DATE = date(1900, 1, 1)
LAST_DATE = date(2262, 4, 11)  # pandas' datetime64[ns] ends on 2262-04-11


def _supported_date(value: date) -> date:
    if not FIRST_DATE <= value <= LAST_DATE:
        raise ValueError(
            f"date {value.isoformat()} outside the supported range "
            f"{FIRST_DATE.isoformat()} to {LAST_DATE.isoformat()}"
        )
    return value


FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
IsoDate = Annotated[date, Strict(), AfterValidator(_supported_date)]
Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT)]
SmeId = Annotated[str, Field(pattern=SME_ID_PATTERN, description="The SME's enterprise_id.")]
DecisionId = Annotated[str, Field(pattern=DECISION_ID_PATTERN, description="A decision's UUID.")]
FeatureValue = float | str | None


def today() -> date:
    """The server's calendar date (the default as-of date, and the limit for as-of dates)."""
    return date.today()


class ScoreRequestBase(BaseModel):
    """The fields every scoring request has; `request_models` adds ``features`` and ``history``."""

    model_config = ConfigDict(extra="forbid")

    sme_id: SmeId
    as_of: IsoDate = Field(
        description="The as-of date (YYYY-MM-DD, required, from 1900-01-01, not in the future)."
    )
    allow_sparse: bool = Field(
        default=False,
        description="Score even when the features present carry less of the model's gain "
        "importance than the service's minimum coverage; the decision records it.",
    )

    @field_validator("as_of")
    @classmethod
    def _not_future(cls, value: date) -> date:
        if value > today():
            raise ValueError(f"as_of {value.isoformat()} is in the future (today is {today()})")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> ScoreRequestBase:
        if (
            getattr(self, "features", None) is not None
            and getattr(self, "history", None) is not None
        ):
            raise ValueError("give either features or history, not both")
        return self

    @property
    def mode(self) -> str:
        """``features``, ``history`` or ``stored`` (neither: the latest materialised features)."""
        if getattr(self, "features", None) is not None:
            return "features"
        if getattr(self, "history", None) is not None:
            return "history"
        return "stored"


def _column_type(column: Column) -> Any:
    base: Any = {
        "str": Text,
        "date": IsoDate,
        "float": FiniteFloat,
        "bool": Annotated[bool, Strict()],
    }[column.kind]
    if column.nullable or not column.required:
        return (base | None, None)
    return (base, ...)


class _FinancialsExtras(BaseModel):
    """Financials rows take any extra numeric columns (they become ``fin_*`` features)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _numeric_extras(self) -> _FinancialsExtras:
        for name, value in (self.model_extra or {}).items():
            ok = value is None or (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and float("-inf") < float(value) < float("inf")
            )
            if not ok:
                raise ValueError(
                    f"financials column {name}: expected a finite number, got {value!r}"
                )
        return self


def _row_model(table: Table) -> type[BaseModel]:
    fields: dict[str, Any] = {c.name: _column_type(c) for c in table.columns}
    if table.extra_numeric:
        return create_model(f"{table.name.title()}Row", __base__=_FinancialsExtras, **fields)
    return create_model(f"{table.name.title()}Row", __config__=ConfigDict(extra="forbid"), **fields)


def history_model() -> type[BaseModel]:
    """The ``history`` body: the SME's own rows of each contract table."""
    fields: dict[str, Any] = {}
    for t in TABLES:
        row: Any = _row_model(t)
        fields[t.name] = (list[row], Field(default_factory=list))
    return create_model("History", __config__=ConfigDict(extra="forbid"), **fields)


OUT_OF_DOMAIN = "out_of_domain"
"""The error type of a value outside its feature's catalog domain."""


def _in_domain(feature: Feature, categories: Sequence[str]) -> Any:
    domain = domain_of(feature)
    numeric, low, high = not domain.categorical, domain.low, domain.high

    def check(value: Any) -> Any:
        # called for every feature of every request: a number inside its range returns at once
        if numeric and type(value) is float and low <= value <= high:
            return value
        if value is not None:
            problem = domain.violation(value, categories)
            if problem is not None:
                context = {"reason": problem, "domain": domain.describe(categories)}
                raise PydanticCustomError(OUT_OF_DOMAIN, "{reason}", context)
        return value

    return AfterValidator(check)


def features_model(
    catalog: Iterable[Feature], categories: Mapping[str, Sequence[str]] | None = None
) -> type[BaseModel]:
    """One optional field per catalog feature, named by the feature, described by the catalog,
    checked against the feature's domain (a categorical against the model's trained categories:
    an unknown one is an error, never silently missing)."""
    categories = categories or {}
    fields: dict[str, Any] = {}
    for i, f in enumerate(catalog):
        kind: Any = Text if f.kind == "categorical" else FiniteFloat
        known = tuple(categories.get(f.name, ()))
        domain = domain_of(f)
        where = domain.describe(known) if (known or not domain.categorical) else "a category"
        fields[f"f{i}"] = (
            Annotated[kind | None, _in_domain(f, known)],
            Field(
                default=None,
                alias=f.name,
                description=f"{f.description} [{f.unit}; {where}]",
            ),
        )
    return create_model(
        "Features", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields
    )


def request_models(
    catalog: Iterable[Feature], categories: Mapping[str, Sequence[str]] | None = None
) -> tuple[type[ScoreRequestBase], type[RootModel[Any]]]:
    """The single and batch scoring request models of a catalog (and the model's categories)."""
    Features: Any = features_model(catalog, categories)
    History: Any = history_model()
    ScoreRequest = create_model(
        "ScoreRequest",
        __base__=ScoreRequestBase,
        features=(
            Features | None,
            Field(default=None, description="Feature values by name; missing ones allowed."),
        ),
        history=(
            History | None,
            Field(default=None, description="The SME's rows of the contract's tables."),
        ),
    )
    item: Any = ScoreRequest
    BatchRequest = create_model("BatchScoreRequest", __base__=RootModel[list[item]])
    return ScoreRequest, BatchRequest


def request_features(request: BaseModel) -> dict[str, Any]:
    """The ``features`` of a request as {feature name: value} (only the ones given)."""
    features = getattr(request, "features", None)
    if features is None:
        return {}
    return dict(features.model_dump(by_alias=True, exclude_none=True))


# -- responses ------------------------------------------------------------------------------------
class Reason(BaseModel):
    code: str = Field(default="", description="Stable reason code (GET /v1/reason-codes).")
    feature: str
    value: FeatureValue
    points: float = Field(description="Score points of this feature (negative = more risk).")
    text: str = Field(description="The code's sentence, with the value written for a person.")


class Coverage(BaseModel):
    present: int = Field(description="Features with a value.")
    of: int = Field(description="Features of the model.")
    gain_share: float = Field(description="Share of the model's gain importance present.")
    missing_top: list[str] = Field(description="The most important missing features.")


class GradeBand(BaseModel):
    grade: str
    rank: int = Field(description="1 = the best grade.")
    of: int
    pd_low: float = Field(description="Lower end of the grade's PD band (exclusive).")
    pd_high: float = Field(description="Upper end of the grade's PD band (inclusive).")
    text: str


class Improvement(BaseModel):
    """For the top reason: the nearest value of its feature that moves the SME one grade up,
    the model held fixed (``to`` and ``grade`` null when no change of it alone does)."""

    feature: str
    from_: FeatureValue = Field(alias="from")
    to: float | None
    grade: str | None
    text: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ReasonCodeInfo(BaseModel):
    code: str
    feature: str
    side: str = Field(description="HIGH, LOW, CATEGORY or MISSING.")
    template: str = Field(description="The sentence; {value} is the value written by unit.")


class RecordedInput(BaseModel):
    raw: Any = Field(description="The request item exactly as the caller sent it (parsed JSON).")
    normalised: dict[str, Any] = Field(description="The request as validated.")


class ModelInfo(BaseModel):
    name: str
    version: str | None
    run_id: str | None


class Receipt(BaseModel):
    """The caller's proof that its decision is in the audit chain: the record's sequence number
    and hash, signed by the service's key (check with `scf-risk audit verify-receipt`)."""

    sequence: int
    record_hash: str
    signature: str
    key_id: str


class ScoreResponse(BaseModel):
    decision_id: str
    sme_id: str
    as_of: date
    pd: float
    score: float
    grade: str
    reasons: list[Reason]
    model: ModelInfo
    mode: str = Field(description="features, history or stored (latest materialised features).")
    base_points: float
    coverage: Coverage
    allow_sparse: bool
    features_as_of: date | None = Field(
        description="stored mode: the as-of date of the materialised features used."
    )
    grade_band: GradeBand
    improvement: Improvement | None
    receipt: Receipt | None = Field(
        default=None, description="Signed proof of the audit record (sequence, hash)."
    )


_Plan = tuple[tuple[str, Any, bool, Any], ...]
"""Per field of a response model: its key (the alias, as FastAPI writes it), its default, whether
it is required, and the plan of a nested model (None for a plain value)."""


@functools.cache
def _plan(model: type[BaseModel]) -> _Plan:
    out = []
    for name, info in model.model_fields.items():
        out.append((info.alias or name, info.default, info.is_required(), _nested(info.annotation)))
    return tuple(out)


def _nested(annotation: Any) -> Any:
    """The plan of a field holding a model, ``("list", plan)`` for a list of models, else None
    (optional models are unwrapped: None stays None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _plan(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args:
        inner = _nested(args[0])
        return None if inner is None else ("list", inner)
    if origin in (Union, types.UnionType):
        plans = [p for p in (_nested(a) for a in args if a is not type(None)) if p is not None]
        return plans[0] if len(plans) == 1 else None
    return None


def _project(plan: _Plan, payload: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, default, required, nested in plan:
        if key in payload:
            value = payload[key]
        elif required:
            raise KeyError(f"the payload has no {key!r}, which the response requires")
        else:
            value = default
        if nested is not None and value is not None:
            if isinstance(nested[0], str):
                value = [_project(nested[1], item) for item in value]
            else:
                value = _project(nested, value)
        out[key] = value
    return out


def response_json(model: type[BaseModel], payload: Mapping[str, Any]) -> bytes:
    """The JSON of `model` for a payload the service built itself (a stored decision): the
    model's fields only, by alias and in its order, nested models alike, without validating
    again what the scoring core and the audit store produced (FastAPI's response validation
    costs more than the rest of the response). The same document as
    ``TypeAdapter(model).dump_json(payload, by_alias=True)``: dates as ISO text, floats in
    their shortest round-trip form, NaN and infinities as null (tests/serving/test_api.py)."""
    return orjson.dumps(_project(_plan(model), payload), option=orjson.OPT_SERIALIZE_NUMPY)


class ErrorEntry(BaseModel):
    """One problem: where (``loc``: body/query/path, then the field's path; in a batch the
    item's index follows ``body``), what is wrong, and for a value outside its domain the value
    and the domain."""

    loc: list[str | int]
    msg: str
    type: str = Field(description="The problem's kind, e.g. missing, out_of_domain.")
    index: int | None = Field(description="The batch item's index (null outside a batch).")
    value: Any = Field(description="The offending value (null when absent or large).")
    domain: str | None = Field(description="The catalog domain the value lies outside of.")


class ItemError(BaseModel):
    index: int = Field(description="The item's position in the batch (0-based).")
    errors: list[ErrorEntry] = Field(description="The item's problems (capped).")
    error_count: int = Field(description="How many problems the item has in all.")


class BatchScoreResponse(BaseModel):
    scored: int
    failed: int
    results: list[ScoreResponse | None] = Field(
        description="One entry per item, in order: its decision, or null when it failed."
    )
    errors: list[ItemError] = Field(description="The failed items, each with its index.")


@functools.cache
def _item_errors() -> TypeAdapter[list[ItemError]]:
    return TypeAdapter(list[ItemError])


def batch_response_json(
    results: Sequence[Mapping[str, Any] | None], errors: Sequence[Mapping[str, Any]]
) -> bytes:
    """The JSON of `BatchScoreResponse`: ``scored`` and ``failed`` counted from `results` (the
    stored payloads, None for a failed item) and `errors` (each failed item's entries). Each
    decision is projected as `response_json` projects a single one (no validation of what the
    service built itself); the error entries, a few, go through their model as FastAPI's
    response validation would take them (their ``value`` is whatever the caller sent). The same
    document as ``TypeAdapter(BatchScoreResponse).dump_json`` (tests/serving/test_fast_paths.py)."""
    plan = _plan(ScoreResponse)
    option = orjson.OPT_SERIALIZE_NUMPY
    items = b",".join(
        b"null" if p is None else orjson.dumps(_project(plan, p), option=option) for p in results
    )
    adapter = _item_errors()
    errs = adapter.dump_json(adapter.validate_python(list(errors)))
    scored = sum(p is not None for p in results)
    failed = len(results) - scored
    return b'{"scored":%d,"failed":%d,"results":[%b],"errors":%b}' % (scored, failed, items, errs)


class CallerInfo(BaseModel):
    key_id: str
    name: str
    role: str


class DecisionRecord(BaseModel):
    """A stored decision, exactly as chained in the audit store."""

    decision_id: str
    sequence: int
    created_at: str
    caller: CallerInfo
    sme_id: str
    as_of: date
    mode: str
    inputs_hash: str
    features: dict[str, FeatureValue]
    contributions: dict[str, float]
    base_points: float
    pd: float
    score: float
    grade: str
    reasons: list[Reason]
    model: ModelInfo
    explain_method: str
    coverage: Coverage | None = None
    allow_sparse: bool = False
    features_as_of: date | None = None
    grade_band: GradeBand | None = None
    improvement: Improvement | None = None
    input: RecordedInput | None = None
    prev_hash: str
    record_hash: str


class DecisionList(BaseModel):
    sme_id: str
    decisions: list[DecisionRecord]


class ServedModelInfo(BaseModel):
    name: str
    version: str | None
    run_id: str | None
    uri: str
    loaded_at: str
    explain_method: str
    # a metric undefined on the model's data (a segment without defaults) is null
    metrics: dict[str, float | None]
    catalog: list[dict[str, Any]]
    scale: dict[str, Any]
    master_scale: dict[str, Any]


class ReloadResponse(BaseModel):
    reloaded: bool
    previous: ModelInfo | None
    model: ModelInfo


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model: ModelInfo | None
    model_error: str | None
    audit_store_writable: bool
