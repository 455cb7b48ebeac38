"""The scoring core as plain functions: modes, reasons, additivity, SHAP backends, replay."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.catalog import domain_of, format_value, reason_codes
from serving.audit.store import AuditStore
from serving.exceptions import InvalidInput, StoredFeaturesInvalid
from serving.online import OnlineFeatures
from serving.scoring import N_REASONS, replay, score, score_many
from serving.served import ServedModel, build_served
from tests.support.models import CHAMPION, Registry, synthetic_rows, with_reference
from training.bundle import LoadedModel
from training.model import ScoringModel

AS_OF = date(2024, 6, 30)


@pytest.fixture(scope="module")
def served(scoring_model: ScoringModel) -> ServedModel:
    loaded = LoadedModel(scoring_model, "sme-default-pd", "1", "run1", "models:/sme-default-pd/1")
    return build_served(loaded, "pred_contrib")


def random_requests(served: ServedModel, n: int, seed: int) -> list[Any]:
    """Requests with random subsets of features (numbers, categories, missing)."""
    rng = np.random.default_rng(seed)
    frame, _ = synthetic_rows(n, seed)
    out = []
    for i in range(n):
        values: dict[str, Any] = {}
        for f in served.model.catalog:
            if rng.random() < 0.3:
                continue  # not sent
            v: Any = frame.at[i, f.name]
            if f.kind == "categorical":
                values[f.name] = str(v) if rng.random() < 0.9 else None  # unseen ones: 422
            else:
                d = domain_of(f)  # in the domain, its ends included
                values[f.name] = None if pd.isna(v) else float(rng.choice([v, d.low, d.high]))
        out.append(
            served.request_model.model_validate(
                {"sme_id": f"S{i}", "as_of": AS_OF, "allow_sparse": True, "features": values}
            )
        )
    return out


def test_base_plus_points_is_the_score_over_many_random_inputs(served: ServedModel) -> None:
    decisions = score_many(served, random_requests(served, 400, seed=5))
    assert len(decisions) == 400
    gaps = [abs(d.base_points + sum(d.contributions.values()) - d.score) for d in decisions]
    assert max(gaps) <= 1e-6
    names = served.model.feature_names
    assert all(list(d.contributions) == names and list(d.features) == names for d in decisions)
    assert len({round(d.score, 9) for d in decisions}) > 100  # the inputs really differ


def test_decision_matches_the_model(served: ServedModel) -> None:
    req = random_requests(served, 1, seed=9)[0]
    d = score(served, req)
    X = served.model.prepare(pd.DataFrame([d.features]))
    assert d.pd == pytest.approx(float(served.model.predict(X)[0]), rel=1e-12)
    assert d.grade == served.model.master_scale.grade(np.array([d.pd]))[0]
    assert d.mode == "features" and d.as_of == AS_OF
    assert d.model == {"name": "sme-default-pd", "version": "1", "run_id": "run1"}


def test_reasons_are_the_top_risk_increasing_features_with_catalog_text(
    served: ServedModel,
) -> None:
    by_name = {f.name: f for f in served.model.catalog}
    for d in score_many(served, random_requests(served, 50, seed=13)):
        negative = sorted((p, n) for n, p in d.contributions.items() if p < 0)
        expected = [n for _, n in negative[:N_REASONS]]
        assert [r.feature for r in d.reasons] == expected
        for r in d.reasons:
            f = by_name[r.feature]
            codes = {rc.code: rc for rc in reason_codes(f).values()}
            assert r.text == codes[r.code].template.format(value=format_value(f, r.value))
            assert (r.value is None) == r.code.endswith("_MISSING")
            assert r.points == d.contributions[r.feature] < 0
            assert r.value == d.features[r.feature]


def test_unseen_category_is_refused_naming_the_known_ones(served: ServedModel) -> None:
    with pytest.raises(ValidationError, match="unknown category 'never-seen': expected one of"):
        served.request_model.model_validate(
            {
                "sme_id": "S1",
                "as_of": AS_OF,
                "allow_sparse": True,
                "features": {"industry": "never-seen"},
            }
        )


def test_pred_contrib_and_tree_shap_agree(served: ServedModel) -> None:
    frame, _ = synthetic_rows(200, seed=21)
    X = served.model.prepare(frame)
    a = served.model.explain(X, method="pred_contrib")
    b = served.model.explain(X, method="tree_shap")
    np.testing.assert_allclose(a.points.to_numpy(), b.points.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(a.base_points, b.base_points, atol=1e-6)
    np.testing.assert_allclose(a.score, b.score, atol=1e-9)


def materialise(store: AuditStore, *rows: dict[str, object]) -> None:
    """Write feature rows ({sme_id, as_of: YYYY-MM-DD, feature: value}) to the online table."""
    from serving.online import materialize

    panel = pd.DataFrame(list(rows))
    materialize(store, panel.assign(as_of=pd.to_datetime(panel["as_of"])))


def test_stored_mode_uses_the_latest_materialised_features(
    served: ServedModel, store: AuditStore
) -> None:
    materialise(
        store,
        {"sme_id": "S7", "as_of": "2024-01-31", "dso_90d": 10.0, "industry": "food"},
        {"sme_id": "S7", "as_of": "2024-02-29", "dso_90d": 80.0, "industry": "metals"},
    )
    req = served.request_model.model_validate(
        {"sme_id": "S7", "as_of": date(2024, 3, 15), "allow_sparse": True}
    )
    d = score(served, req, latest=OnlineFeatures(store).latest)
    assert d.mode == "stored" and d.as_of == date(2024, 3, 15)
    assert d.features_as_of == date(2024, 2, 29)
    assert d.features["dso_90d"] == 80.0 and d.features["industry"] == "metals"
    direct = score(
        served,
        served.request_model.model_validate(
            {
                "sme_id": "S7",
                "as_of": AS_OF,
                "allow_sparse": True,
                "features": {"dso_90d": 80.0, "industry": "metals"},
            }
        ),
    )
    assert d.score == direct.score and d.contributions == direct.contributions

    with pytest.raises(InvalidInput) as missing:
        score(
            served,
            served.request_model.model_validate(
                {"sme_id": "S8", "as_of": AS_OF, "allow_sparse": True}
            ),
            latest=OnlineFeatures(store).latest,
        )
    assert missing.value.loc == ("sme_id",)
    early = served.request_model.model_validate_json('{"sme_id": "S7", "as_of": "2024-01-31"}')
    with pytest.raises(InvalidInput) as after:
        score(served, early, latest=OnlineFeatures(store).latest)
    assert after.value.loc == ("as_of",)
    stale = served.request_model.model_validate(
        {"sme_id": "S7", "as_of": AS_OF, "allow_sparse": True}
    )
    with pytest.raises(InvalidInput, match="as of 2024-02-29, more than 45 days before"):
        score(served, stale, latest=OnlineFeatures(store).latest)


def test_stored_features_outside_their_domain_are_refused_not_scored(
    served: ServedModel, store: AuditStore
) -> None:
    """A materialised value outside its catalog domain (a share of 1.7, a category the model was
    not trained on) is the service's fault, not the caller's: a clear error, never a score."""
    materialise(
        store,
        {"sme_id": "S7", "as_of": "2024-06-28", "ar_90p_share": 1.7, "industry": "food"},
        {"sme_id": "S8", "as_of": "2024-06-28", "ar_90p_share": 0.2, "industry": "Textiles"},
    )
    latest = OnlineFeatures(store).latest
    for sme_id, name, value, domain in (
        ("S7", "ar_90p_share", 1.7, "[0, 1]"),
        ("S8", "industry", "Textiles", "one of 'chemicals', 'food', 'metals', 'textiles'"),
    ):
        req = served.request_model.model_validate(
            {"sme_id": sme_id, "as_of": AS_OF, "allow_sparse": True}
        )
        with pytest.raises(StoredFeaturesInvalid) as exc:
            score(served, req, latest=latest)
        assert exc.value.loc == ("sme_id",) and exc.value.kind == "stored_feature_out_of_domain"
        assert (exc.value.value, exc.value.domain) == (value, domain)
        said = f"features of {sme_id} as of 2024-06-28 hold {name} = {value!r}, outside its "
        assert said + f"domain {domain}" in exc.value.message, exc.value.message
        assert "not the request" in exc.value.message


def test_history_features_outside_their_domain_are_refused(
    scoring_model: ScoringModel, tmp_path: Path
) -> None:
    """History of an SME whose industry the model never saw: a 422-kind error naming the
    computed feature, its value and its domain (it used to become a silent missing value)."""
    from features.io import load_tables
    from serving.demo import history_of
    from tests.support.contract_folder import TODAY

    model = with_reference(scoring_model, tmp_path)
    served = build_served(LoadedModel(model, "m", "1", "run1", "models:/m/1"), "pred_contrib")
    tables = load_tables(tmp_path / "data", today=TODAY)
    body = {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True}
    req = served.request_model.model_validate_json(
        json.dumps({**body, "history": history_of(tables, "S1")})
    )
    with pytest.raises(InvalidInput) as exc:
        score(served, req)
    assert exc.value.loc == ("history",) and exc.value.kind == "computed_out_of_domain"
    assert exc.value.value == "parts" and exc.value.domain is not None
    assert "the history rows sent give industry = 'parts', outside its domain one of" in str(
        exc.value
    )


def test_never_materialised_unknown_and_core_ids_get_different_messages(
    scoring_model: ScoringModel, tmp_path: Path
) -> None:
    model = with_reference(scoring_model, tmp_path)
    served = build_served(LoadedModel(model, "m", "1", "run1", "models:/m/1"), "pred_contrib")

    def message(sme_id: str, on: ServedModel = served) -> str:
        req = on.request_model.model_validate(
            {"sme_id": sme_id, "as_of": AS_OF, "allow_sparse": True}
        )
        with pytest.raises(InvalidInput) as exc:
            score(on, req, latest=lambda _: None)
        assert exc.value.loc == ("sme_id",)
        return exc.value.message

    assert message("S2").startswith(
        "SME S2 is known to the model's reference data but its features were never materialised"
    )
    assert message("S404").startswith(
        "unknown SME S404: no materialised features and not in the model's reference data"
    )
    assert message("C1").startswith("C1 is a core enterprise in the model's reference data")
    bare = build_served(LoadedModel(scoring_model, "m", "1", "run1", "models:/m/1"), "pred_contrib")
    assert "the served model carries no reference data" in message("S2", bare)


def test_batch_errors_name_the_item(served: ServedModel) -> None:
    reqs = [
        served.request_model.model_validate(
            {"sme_id": "S1", "as_of": AS_OF, "allow_sparse": True, "features": {}}
        ),
        served.request_model.model_validate({"sme_id": "S2", "as_of": AS_OF, "allow_sparse": True}),
    ]
    with pytest.raises(InvalidInput) as exc:
        score_many(served, reqs, latest=lambda _: None)
    assert exc.value.loc == (1, "sme_id")


def test_replay_matches_exactly_and_detects_a_changed_record(
    served: ServedModel, registry: Registry, store: AuditStore
) -> None:
    reqs = random_requests(served, 5, seed=17)
    stored = store.append([d.body() for d in score_many(served, reqs)])
    for rec in stored:
        result = replay(rec, loader=registry, tracking_uri="unused")
        assert result.matches, str(result)
        assert result.model_uri == "models:/sme-default-pd/1"
    tampered = dict(stored[0])
    tampered["score"] = stored[0]["score"] + 1e-9
    result = replay(tampered, loader=registry, tracking_uri="unused")
    assert not result.matches and "score" in str(result)


def test_replay_uses_the_recorded_version_not_the_champion(
    served: ServedModel, registry: Registry, scoring_model_v2: ScoringModel
) -> None:
    rec = score(served, random_requests(served, 1, seed=3)[0]).body()
    registry.add(scoring_model_v2)  # a new champion
    assert registry(CHAMPION, "").version == "2"
    rec.update(decision_id="x")
    assert replay(rec, loader=registry, tracking_uri="").matches


def test_batch_scores_are_the_decisions_the_service_explains(scoring_model: ScoringModel) -> None:
    """`score_rows` (the batch: a frame as one matrix, on 1 thread or in pieces on 2) gives
    every row the PD, score, grade, base points and reasons `explain_rows` (the service) gives
    it, bit for bit: numbers, categories, unseen categories and missing values."""
    from serving.portfolio.batch import score_rows
    from serving.scoring import explain_rows

    model = scoring_model
    names = model.feature_names
    frame, _ = synthetic_rows(1200, 5)  # threads=2: pieces of PIPELINE_ROWS in 2 threads
    rng = np.random.default_rng(5)
    frame = frame.mask(rng.random(frame.shape) < 0.2)  # more missing values, categories too
    cat = next(f.name for f in model.catalog if f.kind == "categorical")
    frame.loc[frame.index[::7], cat] = "wood"  # a category the model was not trained on
    frame.insert(0, "sme_id", [f"S{i}" for i in range(len(frame))])
    frame.insert(1, "as_of", pd.Timestamp(AS_OF))
    records = [{k: v for k, v in r.items() if k in names} for r in frame.to_dict("records")]
    meta = [(s, AS_OF, "batch", "") for s in frame["sme_id"]]
    decisions, _ = explain_rows(model, records, method="fast", model_info={}, meta=meta)
    assert any(r.value is None for d in decisions for r in d.reasons)
    for threads in (1, 2):
        got = score_rows(model, frame, method="fast", threads=threads)
        assert got["pd"].tolist() == [d.pd for d in decisions]
        assert got["score"].tolist() == [d.score for d in decisions]
        assert got["base_points"].tolist() == [d.base_points for d in decisions]
        assert got["grade"].tolist() == [d.grade for d in decisions]
        assert got["reasons"].tolist() == [
            [
                {
                    "feature": r.feature,
                    "value": r.value if isinstance(r.value, float) else None,
                    "value_text": None
                    if r.value is None
                    else str(r.value)
                    if isinstance(r.value, str)
                    else repr(r.value),
                    "points": r.points,
                    "text": r.text,
                }
                for r in d.reasons
            ]
            for d in decisions
        ]


def test_a_batch_on_two_threads_decides_as_on_one(scoring_model: ScoringModel) -> None:
    """The batch route's threads (`SCF_RISK_BATCH_THREADS`): a batch large enough to be split
    (TreeSHAP, the reasons' side probes and the what-if margins over 2 numba threads) is
    recorded byte for byte as on one thread: the same canonical JSON of every decision."""
    from serving.audit.canonical import canonical_bytes
    from serving.scoring import decide, prepare
    from training.treeshap import PARALLEL_MIN_ROWS

    loaded = LoadedModel(scoring_model, "sme-default-pd", "1", "run1", "models:/sme-default-pd/1")
    fast = build_served(loaded, "fast", threads=2)
    requests = random_requests(fast, 3 * PARALLEL_MIN_ROWS, seed=8)
    inputs = [prepare(fast, r, None, loc=(i,)) for i, r in enumerate(requests)]
    one = [canonical_bytes(d.body()) for d in decide(fast, inputs, threads=1)]
    two = [canonical_bytes(d.body()) for d in decide(fast, inputs, threads=2)]
    assert one == two
    assert sum(b'"to":null' not in b for b in one) > 10  # what-ifs that move a grade
