"""Request and response examples of the scoring operations, for the OpenAPI document.

One request per mode (``features``, ``sme_id`` alone, ``history``) and a batch of the three; ids
follow the simulator's (cores ``C01``..., SMEs ``S00001``...), so the examples are accepted by a
service trained on `scf-risk generate` data (a test sends each of them).
"""

from __future__ import annotations

from typing import Any

AS_OF = "2023-12-31"

FEATURES_REQUEST: dict[str, Any] = {
    "sme_id": "S00001",
    "as_of": AS_OF,
    "features": {
        "ar_90p_share": 0.04,
        "dso_90d": 48.0,
        "ap_days_beyond_terms_365d": 12.5,
        "ap_late_rate_365d": 0.18,
        "sales_amount_365d": 1_250_000.0,
        "sales_growth_yoy": 0.06,
        "months_since_first_invoice": 41.0,
        "main_core_rating_ordinal": 3.0,
        "firm_age_years": 9.0,
        "industry": "textiles",
    },
    "allow_sparse": True,
}
STORED_REQUEST: dict[str, Any] = {"sme_id": "S00001", "as_of": AS_OF}
HISTORY_REQUEST: dict[str, Any] = {
    "sme_id": "S00001",
    "as_of": AS_OF,
    "history": {
        "invoices": [
            {
                "invoice_id": f"EX-{month:02d}",
                "seller_id": "S00001",
                "buyer_id": "C01",
                "issue_date": f"2023-{month:02d}-05",
                "due_date": f"2023-{month + 2:02d}-04",
                "amount": 40_000.0 + 1_000.0 * month,
                **(
                    {
                        "paid_date": f"2023-{month + 2:02d}-10",
                        "paid_amount": 40_000.0 + 1_000.0 * month,
                    }
                    if month <= 8
                    else {}
                ),
            }
            for month in range(1, 11)
        ],
    },
    "allow_sparse": True,
}

REQUESTS: dict[str, dict[str, Any]] = {
    "features": {
        "summary": "Features mode: the values the caller has",
        "description": "Feature values by name, each within its catalog domain; features not "
        "sent are missing. Below the service's minimum coverage a request needs allow_sparse "
        "(the decision records it).",
        "value": FEATURES_REQUEST,
    },
    "sme_id": {
        "summary": "sme_id-only mode: the latest materialised features",
        "description": "Neither features nor history: the SME's features materialised by "
        "`scf-risk score` or `monthly`, dated at most SCF_RISK_MAX_FEATURE_AGE_DAYS before "
        "as_of (the response gives their date as features_as_of).",
        "value": STORED_REQUEST,
    },
    "history": {
        "summary": "History mode: the SME's own contract rows",
        "description": "The SME's rows of the data contract's tables; the service computes the "
        "features with the training pipeline's code and the model's reference data.",
        "value": HISTORY_REQUEST,
    },
}
BATCH_REQUESTS: dict[str, dict[str, Any]] = {
    "one_of_each_mode": {
        "summary": "A batch: one request of each mode",
        "description": "Each item is validated and scored on its own; an invalid item gets its "
        "own error (with its index) and the others are scored.",
        "value": [FEATURES_REQUEST, STORED_REQUEST, HISTORY_REQUEST],
    }
}


def _response(mode: str, features_as_of: str | None) -> dict[str, Any]:
    return {
        "decision_id": "3f6c1e0a-5b7d-4c2e-9a41-0d8e7f6a5b4c",
        "sme_id": "S00001",
        "as_of": AS_OF,
        "pd": 0.0213,
        "score": 588.4,
        "grade": "G05",
        "reasons": [
            {
                "code": "AP_DAYS_BEYOND_TERMS_365D_HIGH",
                "feature": "ap_days_beyond_terms_365d",
                "value": 12.5,
                "points": -9.3,
                "text": "Pays its suppliers 12.5 days beyond terms on average over the last year",
            }
        ],
        "model": {"name": "sme-default-pd", "version": "3", "run_id": "8e1d3c5b2a4f"},
        "mode": mode,
        "base_points": 596.1,
        "coverage": {
            "present": 10,
            "of": 93,
            "gain_share": 0.41,
            "missing_top": ["ar_paid_late_share_365d", "dpo_365d"],
        },
        "allow_sparse": mode != "stored",
        "features_as_of": features_as_of,
        "grade_band": {
            "grade": "G05",
            "rank": 5,
            "of": 10,
            "pd_low": 0.015,
            "pd_high": 0.025,
            "text": "Grade G05 (5 of 10, best first): probability of default within 365 days "
            "above 1.50% and up to 2.50%",
        },
        "improvement": {
            "feature": "ap_days_beyond_terms_365d",
            "from": 12.5,
            "to": 6.0,
            "grade": "G04",
            "text": "Lowering ap_days_beyond_terms_365d from 12.5 days to 6 days would move the "
            "SME from G05 to G04",
        },
        "receipt": {
            "sequence": 1042,
            "record_hash": "9b2f...e41a",
            "signature": "MEUCIQ...",
            "key_id": "k1",
        },
    }


RESPONSES: dict[str, dict[str, Any]] = {
    "features": {"summary": "Features mode", "value": _response("features", None)},
    "sme_id": {"summary": "sme_id-only mode", "value": _response("stored", "2023-12-31")},
    "history": {"summary": "History mode", "value": _response("history", None)},
}
BATCH_RESPONSES: dict[str, dict[str, Any]] = {
    "one_failed": {
        "summary": "Two items scored, one refused",
        "value": {
            "scored": 2,
            "failed": 1,
            "results": [_response("features", None), _response("stored", "2023-12-31"), None],
            "errors": [
                {
                    "index": 2,
                    "errors": [
                        {
                            "loc": ["body", 2, "as_of"],
                            "msg": "Field required",
                            "type": "missing",
                            "index": 2,
                            "value": None,
                            "domain": None,
                        }
                    ],
                    "error_count": 1,
                }
            ],
        },
    }
}


OPERATIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "/v1/scores": (REQUESTS, RESPONSES),
    "/v1/scores/batch": (BATCH_REQUESTS, BATCH_RESPONSES),
}
"""Path -> (request examples, 200 response examples)."""


def add_examples(openapi: dict[str, Any]) -> None:
    """Put the examples into an OpenAPI document's scoring operations (after FastAPI built it:
    its document drops null members, and a response example keeps them)."""
    for path, (requests, responses) in OPERATIONS.items():
        operation = openapi["paths"][path]["post"]
        operation["requestBody"]["content"]["application/json"]["examples"] = requests
        ok = operation["responses"]["200"]["content"]["application/json"]
        ok["examples"] = responses
