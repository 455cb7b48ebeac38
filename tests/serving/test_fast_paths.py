"""The fast paths of the score routes give what the plain ones give.

- the request body is read by orjson unless it holds an integer orjson may read differently: the
  values (and their types) equal the standard library's, for any JSON;
- the batch's answer, built from the stored payloads without FastAPI's response validation, is
  what `BatchScoreResponse` makes of them;
- the feature values recorded with each decision are those the loop recorded before it was
  tightened;
- the side of each reason (HIGH or LOW), its nearest splits searched in bulk, is the one the
  search one value at a time gave;
- the audit record's stored text and hash, built from one serialisation per record, are
  byte-identical to the canonical form of the whole payload (what `verify` re-derives);
- the what-ifs of a batch, their candidates computed in rounds that stop at the first grade up,
  are those of every candidate computed at once.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from serving import scoring
from serving.api.errors import validation_entries
from serving.api.routes.scores import _json_items
from serving.audit.canonical import canonical_bytes, canonical_json, json_value, record_hash
from serving.audit.store import chained_text
from serving.schemas import BatchScoreResponse, ScoreResponse, batch_response_json
from tests.support.requests import SPARSE_FEATURES, typed
from tests.support.strategies import near_splits


def _documents(largest: int) -> st.SearchStrategy[Any]:
    numbers = st.one_of(
        st.integers(min_value=-largest, max_value=largest),
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e-3, max_value=1e-3),
    )
    scalars = st.one_of(st.none(), st.booleans(), st.text(max_size=8), numbers)
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=20,
    )


documents = _documents(10**30)  # integers beyond 64 bits: JSON has them, orjson does not
payload_values = _documents(2**63 - 1)  # what the audit store's canonical form can hold


@settings(max_examples=300, deadline=None)
@given(documents)
def test_body_reads_as_the_standard_library_reads_it(doc: Any) -> None:
    body = json.dumps(doc).encode()
    assert typed(_json_items(body)) == typed(json.loads(body))


def test_long_fractions_stay_with_orjson_and_long_integers_do_not() -> None:
    for text, expected in [
        (b"[-0.0039273441335297005]", [-0.0039273441335297005]),
        (b"[12345678901234567890123]", [12345678901234567890123]),
        (b"[-9223372036854775809]", [-9223372036854775809]),
        (b'{"a": 18446744073709551616}', {"a": 18446744073709551616}),
        (b"[12345678901234567890.5, 1e0000000000000000001]", [1.2345678901234567e19, 10.0]),
    ]:
        assert typed(_json_items(text)) == typed(expected)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), payload_values, max_size=8), st.booleans())
def test_chained_text_is_the_canonical_form(body: dict[str, Any], with_prev: bool) -> None:
    payload = dict(body)
    payload.pop("record_hash", None)
    if with_prev:
        payload.update(prev_hash="0" * 64, sequence=3, decision_id="d")
    digest, text = chained_text(payload)
    assert digest == record_hash(payload)
    assert text == canonical_json({**payload, "record_hash": digest})
    assert canonical_bytes({**payload, "record_hash": digest}).decode() == text


def test_the_batch_answer_is_the_response_model_of_its_parts(
    client: TestClient, keys: dict[str, str]
) -> None:
    """The batch's answer skips FastAPI's response validation (`batch_response_json`): it must be
    what BatchScoreResponse makes of the stored payloads and the error entries, key order
    included, whatever value a failed item sent (a 100-digit integer, a list)."""
    svc = client.app.state.service  # type: ignore[attr-defined]
    served = svc.holder.get()
    caller = svc.keys.authenticate(keys["scorer"])
    good = [
        {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": SPARSE_FEATURES},
        {"sme_id": "S2", "as_of": "2024-06-30", "allow_sparse": True, "features": {}},
    ]
    bad = [
        {"sme_id": "S3", "as_of": "2024-06-30", "features": {"dso_90d": 10**100}},
        {"sme_id": "S4", "as_of": "2024-06-30", "features": {"dso_90d": [1, 2]}},
        {"sme_id": "S5", "as_of": "2024-06-30", "features": {"dso_90d": -5.0}},
    ]
    requests = [served.request_model.model_validate_json(json.dumps(b)) for b in good]
    stored = svc.record(scoring.score_many(served, requests, raw=good), caller)
    errors = []
    for i, item in enumerate(bad, start=len(good)):
        with pytest.raises(ValidationError) as caught:
            served.request_model.model_validate_json(json.dumps(item))
        entries = validation_entries(
            caught.value.errors(include_url=False), prefix=("body", i), index=i
        )
        errors.append({"index": i, "errors": entries, "error_count": len(entries)})
    results = [stored[0], None, stored[1], None, None]
    fast = batch_response_json(results, errors)
    adapter = TypeAdapter(BatchScoreResponse)
    doc = {"scored": 2, "failed": 3, "results": results, "errors": errors}
    slow = adapter.dump_json(adapter.validate_python(doc), by_alias=True)
    assert typed(json.loads(fast)) == typed(json.loads(slow))
    assert list(json.loads(fast)) == list(BatchScoreResponse.model_fields)
    assert list(json.loads(fast)["results"][0]) == list(ScoreResponse.model_fields)
    assert list(json.loads(fast)["errors"][0]["errors"][0]) == list(
        json.loads(slow)["errors"][0]["errors"][0]
    )


def test_the_batch_route_answers_with_its_parts(client: TestClient, headers: Any) -> None:
    items = [
        {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": SPARSE_FEATURES},
        {"sme_id": "S2", "as_of": "2024-06-30", "features": {"dso_90d": 10**100}},
    ]
    r = client.post("/v1/scores/batch", json=items, headers=headers("scorer"))
    assert r.status_code == 200, r.text
    doc = BatchScoreResponse.model_validate(r.json())
    assert (doc.scored, doc.failed) == (1, 1)
    assert doc.results[1] is None and doc.results[0] is not None
    assert doc.errors[0].index == 1 and doc.errors[0].errors[0].loc[:3] == ["body", 1, "features"]


def _recorded_as_before(model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`recorded_values` as it was written before its loop was tightened (the oracle)."""
    categorical = {
        f.name: frozenset(model.categories.get(f.name, ()))
        for f in model.catalog
        if f.kind == "categorical"
    }
    out = []
    for row in rows:
        rec: dict[str, Any] = {}
        for name in model.feature_names:
            v = row.get(name)
            if type(v) is float and name not in categorical:
                rec[name] = v if math.isfinite(v) else None
            elif name in categorical:
                text = None if v is None or (isinstance(v, float) and v != v) else str(v)
                rec[name] = text if text in categorical[name] else None
            else:
                rec[name] = json_value(v)
        out.append(rec)
    return out


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_recorded_values_are_what_they_were(scoring_model: Any, data: st.DataObject) -> None:
    """The values recorded with each decision (what replay compares) are those the loop gave
    before it was tightened, for any row: numbers of any kind, infinities, NaN, text in a
    number's place, known and unknown categories."""
    model = scoring_model
    value = st.one_of(
        st.none(),
        st.floats(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.booleans(),
        st.just(-0.0),
        st.sampled_from(["metals", "food", "textiles", "chemicals", "unknown", "5"]),
    )
    rows = data.draw(
        st.lists(st.dictionaries(st.sampled_from(model.feature_names), value), max_size=6)
    )
    assert typed(scoring.recorded_values(model, rows)) == typed(_recorded_as_before(model, rows))


def _sides_as_before(model: Any, M: np.ndarray, wanted: list[tuple[int, str, Any]]) -> dict:
    """`_sides` as it was written before it searched the splits in bulk (the oracle)."""
    view = scoring._view(model)
    out: dict[tuple[int, str], str] = {}
    probed = []
    for i, name, recorded in wanted:
        f = view.features[name]
        if f.kind == "categorical" or not scoring._present(recorded):
            continue
        if f.direction != 0:
            out[i, name] = "HIGH" if f.direction > 0 else "LOW"
            continue
        value = float(recorded)
        cuts = view.splits.get(name, scoring._NO_SPLITS)
        k = int(np.searchsorted(cuts, value, side="left"))
        probes = [value]
        if k > 0:
            probes.append(float(cuts[k - 1]))
        if k < len(cuts):
            probes.append(float(np.nextafter(cuts[k], np.inf)))
        probed.append((i, name, probes, k > 0, k < len(cuts)))
    margins = scoring._margins_varying(model, M, [(i, n, v) for i, n, v, _, _ in probed])
    for (i, name, _, has_below, has_above), margin in zip(probed, margins, strict=True):
        down = margin[1] if has_below else margin[0]
        up = margin[-1] if has_above else margin[0]
        out[i, name] = "HIGH" if down - margin[0] <= up - margin[0] else "LOW"
    return out


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_sides_are_what_they_were(scoring_model: Any, data: st.DataObject) -> None:
    """The side of every reason (HIGH or LOW: which code and sentence it gets) is what the
    one-value-at-a-time search gave, for values on, between, below and above the splits."""
    model = scoring_model
    view = scoring._view(model)
    free = [n for n in view.names if view.features[n].direction == 0 and len(view.splits[n])]
    assert free, "the test model has no unconstrained feature with splits"
    n_rows = data.draw(st.integers(1, 5))
    rows = []
    for _ in range(n_rows):
        row = {}
        for name in view.names:
            if view.features[name].kind == "categorical":
                continue
            row[name] = data.draw(near_splits(view.splits[name].tolist()))
        rows.append(row)
    M = model.records_matrix(rows)
    wanted = [
        (i, name, rows[i].get(name))
        for i in range(n_rows)
        for name in data.draw(st.lists(st.sampled_from(view.names), max_size=8, unique=True))
    ]
    assert scoring._sides(model, M, wanted) == _sides_as_before(model, M, wanted)
    for few in range(1, scoring.FEW_PROBES + 1):  # a single score's drivers: searched one by one
        assert scoring._sides(model, M, wanted[:few]) == _sides_as_before(model, M, wanted[:few])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_single_what_if_is_the_bulk_paths(scoring_model: Any, data: st.DataObject) -> None:
    """One (row, feature, values) ask, the what-if of a single score (its row repeated), gives
    the margins the bulk path (rows gathered, values concatenated, margins split) gives it."""
    model = scoring_model
    view = scoring._view(model)
    numeric = [n for n in view.names if view.features[n].kind != "categorical"]
    rows = [
        {n: data.draw(st.one_of(st.none(), st.floats(-1e3, 1e3))) for n in numeric}
        for _ in range(data.draw(st.integers(1, 3)))
    ]
    M = model.records_matrix(rows)
    asks = [
        (
            data.draw(st.integers(0, len(rows) - 1)),
            data.draw(st.sampled_from(numeric)),
            data.draw(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6)),
        )
        for _ in range(data.draw(st.integers(2, 4)))
    ]
    bulk = scoring._margins_varying(model, M, asks)
    for ask, margins in zip(asks, bulk, strict=True):
        (alone,) = scoring._margins_varying(model, M, [ask])
        assert alone.tobytes() == margins.tobytes()


def _drivers_in_bulk(points: np.ndarray) -> tuple[list[int], list[int], list[float]]:
    """The drivers by their definition, a stable sort of each row (the oracle)."""
    orders = np.argsort(points, axis=1, kind="stable")[:, : scoring.N_REASONS]
    kept = np.take_along_axis(points, orders, axis=1)
    rows, ranks = np.nonzero(kept < 0)
    return rows.tolist(), orders[rows, ranks].tolist(), kept[rows, ranks].tolist()


POINT_VALUES = st.sampled_from([-2.5, -1.0, -1e-300, -0.0, 0.0, 1e-300, 1.0, 3.0, math.nan])


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda k: st.lists(
            st.lists(st.one_of(POINT_VALUES, st.floats(-5, 5)), min_size=k, max_size=k),
            min_size=1,
            max_size=4,
        )
    )
)
def test_a_single_rows_drivers_are_the_bulk_paths(matrix: list[list[float]]) -> None:
    """One row's drivers, sorted in Python (`scoring.drivers`), are the columns, order and
    points the numpy path gives that row (ties, zeros of both signs and NaN included); and
    several rows (partitioned, not sorted) give the rows' stable sorts' drivers."""
    points = np.array(matrix, dtype=np.float64)
    for i in range(len(points)):
        rows, cols, kept = scoring.drivers(points[i : i + 1])
        assert rows.dtype == cols.dtype == np.intp
        want_rows, want_cols, want_kept = _drivers_in_bulk(points[i : i + 1])
        assert (rows.tolist(), cols.tolist()) == (want_rows, want_cols)
        assert np.array_equal(kept, want_kept) and all(
            math.copysign(1, a) == math.copysign(1, b) for a, b in zip(kept, want_kept, strict=True)
        )
    rows, cols, kept = scoring.drivers(points)
    assert rows.dtype == cols.dtype == np.intp
    assert (rows.tolist(), cols.tolist(), kept) == _drivers_in_bulk(points)


TUNED = """
import gc, json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from serving.api.app import create_app
from serving.api.service import GC_THRESHOLDS
from serving.settings import Settings
from tests.support.load import make_keys, make_signing_key
from tests.support.models import Registry, train_small_model

root = Path(sys.argv[1])
make_signing_key(root)
make_keys(root / "keys.json")
settings = Settings(
    mlflow_tracking_uri=f"sqlite:///{root}/mlflow.db", audit_db=f"sqlite:///{root}/audit.db",
    api_keys=root / "keys.json", env="test",
)
registry = Registry()
registry.add(train_small_model(seed=3))
before = gc.get_freeze_count(), gc.get_threshold()
with TestClient(create_app(settings, loader=registry, tune_gc=sys.argv[2] == "tuned")) as c:
    assert c.get("/readyz").status_code == 200
    after = gc.get_freeze_count(), gc.get_threshold()
print(json.dumps([before[0], before[1], after[0], after[1], GC_THRESHOLDS]))
"""


@pytest.mark.parametrize("mode", ["tuned", "plain"])
def test_only_a_serving_process_tunes_the_collector(tmp_path: Any, mode: str) -> None:
    """`app_from_env` (a uvicorn worker) freezes the heap once the model is loaded and raises the
    young-collection threshold; an app built in a shared process (tests, tools) leaves the
    collector alone. In a subprocess: the collector is the whole process's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", TUNED, str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    frozen_before, before, frozen_after, after, tuned = json.loads(last)
    assert frozen_before == 0
    if mode == "tuned":
        assert frozen_after > 10_000 and after == tuned
    else:
        assert frozen_after == 0 and after == before


SETTLED = """
import gc, json, weakref
from serving.api.service import settle_heap

class Model:  # a cycle, as a served model's request classes are
    def __init__(self): self.me = self

old = Model()
gone = weakref.ref(old)
settle_heap()  # start-up: the old model is frozen with the rest
del old  # a reload replaced it
settle_heap()
print(json.dumps(gone() is None))
"""


def test_a_model_a_reload_replaced_is_collected_not_frozen_for_good(tmp_path: Any) -> None:
    """`settle_heap` runs after every model load: frozen objects are never collected, so a
    replaced model's cycles would stay for good if the heap were not unfrozen first. In a
    subprocess (the collector is the whole process's)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", SETTLED], capture_output=True, text=True, timeout=120, cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) is True


def test_a_models_view_goes_with_its_booster() -> None:
    """The scoring view is cached per live booster: once the model is dropped (a reload), the
    cache does not keep its booster alive."""
    import gc
    import weakref

    from tests.support.models import train_small_model

    model = train_small_model(seed=5, rounds=5)
    scoring._view(model)
    booster = weakref.ref(model.booster)
    assert booster() in scoring._VIEWS
    del model
    gc.collect()
    assert booster() is None


VOLATILE = ("decision_id", "receipt")
"""What differs between two decisions on the same request: its id and its record's receipt."""


def _comparable(response: Any) -> tuple[int, dict[str, str], Any]:
    """A response without what differs between two occurrences (a decision's id and receipt,
    an error's instance id, the date header)."""
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "content-length")}
    doc = response.json()
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k not in (*VOLATILE, "instance")}
    return response.status_code, headers, typed(doc)


def test_the_score_route_skips_no_declared_dependency(
    client: TestClient, keys: dict[str, str]
) -> None:
    """`handle_score` resolves `post_score`'s own dependencies only: a router given more
    dependencies is refused when the route is built, and an app's dependency override is
    honoured (the route then runs FastAPI's own handler)."""
    from fastapi import APIRouter, Depends, HTTPException

    from serving.api.deps import service
    from serving.api.routes.scores import ScoreRoute, post_score

    def deny() -> None:
        raise HTTPException(status_code=418)

    with pytest.raises(RuntimeError, match="would be skipped"):
        APIRouter(dependencies=[Depends(deny)]).add_api_route(
            "/v1/scores", post_score, methods=["POST"], route_class_override=ScoreRoute
        )

    def refused() -> None:
        raise HTTPException(status_code=503, detail="overridden")

    good = {
        "sme_id": "S1",
        "as_of": "2024-06-30",
        "features": SPARSE_FEATURES,
        "allow_sparse": True,
    }
    headers = {"X-API-Key": keys["scorer"], "Content-Type": "application/json"}
    client.app.dependency_overrides[service] = refused  # type: ignore[attr-defined]
    try:
        r = client.post("/v1/scores", content=json.dumps(good), headers=headers)
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert r.status_code == 503, r.text
    assert client.post("/v1/scores", content=json.dumps(good), headers=headers).status_code == 200


def test_the_score_route_answers_as_its_declared_endpoint(
    client: TestClient, keys: dict[str, str]
) -> None:
    """``POST /v1/scores`` resolves its caller, body and service itself (`handle_score`), not
    through FastAPI's dependency graph: every answer, success or error, and the order of the
    checks (key before role before Content-Type before the body) are those of `post_score`
    declared as a plain route."""
    from fastapi.routing import APIRoute

    from serving.api.routes.scores import ScoreRoute, post_score, router

    route = next(r for r in router.routes if getattr(r, "path", None) == "/v1/scores")
    assert isinstance(route, ScoreRoute)
    client.app.add_api_route("/v1/scores-declared", post_score, methods=["POST"])  # type: ignore[attr-defined]
    declared = client.app.routes[-1]  # type: ignore[attr-defined]
    assert type(declared) is APIRoute
    good = {
        "sme_id": "S1",
        "as_of": "2024-06-30",
        "features": SPARSE_FEATURES,
        "allow_sparse": True,
    }
    as_json = {"Content-Type": "application/json"}
    cases: list[tuple[dict[str, str], bytes]] = [
        ({"X-API-Key": keys["scorer"], **as_json}, json.dumps(good).encode()),
        ({"X-API-Key": keys["scorer"], **as_json}, json.dumps({**good, "sme_id": "S2"}).encode()),
        (as_json, json.dumps(good).encode()),  # no key
        ({"X-API-Key": "", **as_json}, json.dumps(good).encode()),  # empty key
        ({"X-API-Key": "sk_wrong", **as_json}, json.dumps(good).encode()),
        ({"X-API-Key": keys["auditor"], **as_json}, json.dumps(good).encode()),  # wrong role
        ({"X-API-Key": keys["scorer"], "Content-Type": "text/plain"}, json.dumps(good).encode()),
        ({"X-API-Key": keys["scorer"]}, json.dumps(good).encode()),  # no Content-Type
        ({"Content-Type": "text/plain"}, b"not json"),  # no key and not JSON: 401 first
        ({"X-API-Key": keys["auditor"], "Content-Type": "text/plain"}, b"{}"),  # 403 first
        ({"X-API-Key": keys["scorer"], **as_json}, b"{not json"),
        ({"X-API-Key": keys["scorer"], **as_json}, b""),
        ({"X-API-Key": keys["scorer"], **as_json}, json.dumps({**good, "extra": 1}).encode()),
        (
            {"X-API-Key": keys["scorer"], **as_json},
            json.dumps({**good, "features": {"dso_90d": -5.0}}).encode(),
        ),
        (
            {"X-API-Key": keys["scorer"], **as_json},
            json.dumps({**good, "features": {"nope": 1.0}}).encode(),
        ),
        ({"X-API-Key": keys["scorer"], **as_json}, json.dumps({"sme_id": "S9"}).encode()),
        ({"X-API-Key": keys["scorer"], **as_json}, json.dumps(good | {"sme_id": "S3"}).encode()),
        (  # too few features without allow_sparse
            {"X-API-Key": keys["scorer"], **as_json},
            json.dumps({**good, "allow_sparse": False}).encode(),
        ),
    ]
    statuses = set()
    for headers, body in cases:
        fast = client.post("/v1/scores", content=body, headers=headers)
        plain = client.post("/v1/scores-declared", content=body, headers=headers)
        assert _comparable(fast) == _comparable(plain), (headers, body)
        statuses.add(fast.status_code)
    assert statuses == {200, 401, 403, 415, 422}


def _moves_all_at_once(
    model: Any, M: np.ndarray, asks: list[tuple[int, str, list[float]]], ranks: list[int]
) -> dict[int, tuple[float, str]]:
    """The first grade-improving candidate of each ask with every candidate of every ask
    computed in one call, as `improvements` did before it went in rounds (the oracle)."""
    rank = {g: r for r, g in enumerate(model.master_scale.grades)}
    margins = scoring._margins_varying(model, M, asks)
    got = iter(scoring._grades_of(model, np.concatenate(margins)).tolist() if margins else [])
    out: dict[int, tuple[float, str]] = {}
    for a, (i, _, candidates) in enumerate(asks):
        grades = [next(got) for _ in candidates]
        moved = [(c, g) for c, g in zip(candidates, grades, strict=True) if rank[g] < ranks[i]]
        if moved:
            out[a] = moved[0]
    return out


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_what_ifs_in_rounds_are_those_of_every_candidate_at_once(
    scoring_model: Any, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The what-if of each decision of a batch, its candidates computed in rounds that stop at
    the first grade up, is the nearest move every candidate computed at once gives: the same
    value, grade and text (and none where none moves), whatever the first round's width."""
    from features.catalog import domain_of
    from tests.support.models import synthetic_rows

    model = scoring_model
    frame, _ = synthetic_rows(300, seed)
    rows = [
        {k: v for k, v in r.items() if not (isinstance(v, float) and v != v)}
        for r in frame.to_dict(orient="records")
    ]
    meta = [(f"S{i}", scoring.date(2024, 1, 31), "features", "") for i in range(len(rows))]
    decisions, M = scoring.explain_rows(
        model, rows, method="fast", model_info={"name": None}, meta=meta
    )
    rank = {g: r for r, g in enumerate(model.master_scale.grades)}
    ranks = [rank[d.grade] for d in decisions]
    seen: list[list[dict[str, Any] | None]] = []
    for first in (1, 2, 3, 10_000):  # 10,000: every candidate in the first round
        monkeypatch.setattr(scoring, "WHAT_IF_FIRST", first)
        seen.append(scoring.improvements(model, rows, decisions, M))
    assert all(s == seen[0] for s in seen[1:])
    # the oracle: every candidate of every ask at once
    asks_all: list[tuple[int, str, list[float]]] = []
    view = scoring._view(model)
    for i, (row, d) in enumerate(zip(rows, decisions, strict=True)):
        what_if = seen[0][i]
        if what_if is None or not d.reasons:
            continue
        name = d.reasons[0].feature
        f = view.features[name]
        value = row.get(name)
        if ranks[i] == 0 or f.kind == "categorical" or f.direction == 0 or value is None:
            continue
        domain, cuts, current = domain_of(f), view.splits[name], float(value)
        if f.direction > 0:
            below = cuts[cuts < current][::-1]
            candidates = below[below >= domain.low].tolist()
        else:
            above = cuts[cuts >= current]
            candidates = np.nextafter(above[above < domain.high], np.inf).tolist()
        if candidates:
            asks_all.append((i, name, candidates))
    expected = _moves_all_at_once(model, M, asks_all, ranks)
    assert len(expected) > 10 and any(len(c) > 3 for _, _, c in asks_all)
    for a, (i, _, _) in enumerate(asks_all):
        got = seen[0][i]
        assert got is not None
        if a in expected:
            assert (got["to"], got["grade"]) == expected[a]
        else:
            assert got["to"] is None and got["grade"] is None


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_batchs_reasons_are_the_services(scoring_model: Any, data: st.DataObject) -> None:
    """`matrix_reasons` (the batch: values read back from the matrix, sides in bulk, each
    distinct value written once, with and without the rows' leaf values) gives every row the
    reasons `explain_rows` (the service) gives it: codes, features, values (zeros of both
    signs), points bit for bit and texts; values on, beside and between the splits, missing,
    known and unseen categories, repeated values."""
    model = scoring_model
    view = scoring._view(model)
    n_rows = data.draw(st.integers(1, 12))
    rows: list[dict[str, Any]] = []
    for _ in range(n_rows):
        row: dict[str, Any] = {}
        for name in view.names:
            f = view.features[name]
            if f.kind == "categorical":
                known = list(model.categories[name])
                row[name] = data.draw(st.one_of(st.sampled_from(known), st.just("wood"), st.none()))
                continue
            zeros = st.sampled_from([0.0, -0.0])
            row[name] = data.draw(near_splits(view.splits[name].tolist(), zeros))
        rows.append(row)
    rows += rows[: data.draw(st.integers(0, n_rows))]  # repeated values
    meta = [(f"S{i}", scoring.date(2025, 1, 31), "batch", "") for i in range(len(rows))]
    decisions, M = scoring.explain_rows(model, rows, method="fast", model_info={}, meta=meta)
    want = [
        [(r.code, r.feature, repr(r.value), repr(r.points), r.text) for r in d.reasons]
        for d in decisions
    ]
    expl = model.explain_matrix(M, "fast", leaves=True)
    for leaves in (None, expl.leaves):
        found = scoring.matrix_reasons(model, M, expl.point_values, leaves=leaves)
        got: list[list[tuple[str, str, str, str, str]]] = [[] for _ in rows]
        for i, code, feature, value, points, text in found.entries():
            got[i].append((code, feature, repr(value), repr(points), text))
        assert got == want
