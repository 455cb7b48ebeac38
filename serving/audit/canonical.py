"""The canonical form of an audit record: what is hashed, and how values are stored."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd

_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def canonical_bytes(obj: Any) -> bytes:
    """The one serialisation that is hashed (orjson): sorted keys, compact, UTF-8, floats in
    their shortest round-trip form, NaN and infinities as null."""
    return orjson.dumps(obj, option=_CANONICAL)


def canonical_json(obj: Any) -> str:
    """`canonical_bytes` as text (what the payload column stores)."""
    return canonical_bytes(obj).decode("utf-8")


def record_hash(payload: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a payload without its own ``record_hash``."""
    body = {k: v for k, v in payload.items() if k != "record_hash"}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def legacy_record_hash(payload: Mapping[str, Any]) -> str:
    """The record hash of stores written before the canonical form moved to orjson (the
    standard library's ``json.dumps``, sorted keys, compact): `verify` accepts either, so an
    upgrade leaves older chains verifiable. Floats are the one difference (``1e-05`` there,
    ``1e-5`` here)."""
    body = {k: v for k, v in payload.items() if k != "record_hash"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_value(value: Any) -> Any:
    """A feature value as stored in JSON: finite float, str, or None for missing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    return str(value)
