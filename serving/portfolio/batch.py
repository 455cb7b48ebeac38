"""Batch scoring of a population: every SME in the population at some dates, scored and explained.

The features are the pipeline's (`features.reference.feature_rows` with the reference built from
the same tables, exactly as `scf-risk features` computes them); the explanations and reasons are
the scoring service's (`serving.scoring.explain_rows`: PD, score, grade, the top 4 risk-increasing
features). Two engines give identical frames:

- ``pandas``: features for every SME in one process, explained in chunks;
- ``dask``: the SMEs are cut into partitions (`features.engines.partition_smes`: contiguous runs of
  sorted ids); each worker gets its partition's own rows (`features.engines.split_tables`), the
  reference data and the model, and computes the features *and* the explanations of its SMEs.

Every value depends only on the SME's own rows and the reference, and LightGBM explains each row
alone, so the partitioning never changes a number.

Output of `scf-risk score` (Parquet, one row per SME): ``sme_id``, ``as_of``, ``pd``, ``score``,
``grade``, ``base_points``, ``reasons`` (a list of up to 4 structs: ``feature``, ``value`` (the
number, null when missing or categorical), ``value_text`` (the value as text, null when missing),
``points``, ``text``), ``model_name``, ``model_version``, ``model_run_id``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from features.exceptions import FeatureError
from features.own import META_MAIN_CORE
from features.pipeline import LABEL, as_of_days, data_range, finish_panel
from features.scratch import sibling
from training.model import DEFAULT_EXPLAIN_METHOD

if TYPE_CHECKING:
    from features.contract import Tables
    from features.reference import Reference
    from training.bundle import LoadedModel
    from training.model import ScoringModel

Engine = Literal["pandas", "dask"]
Progress = Callable[[int], Callable[[], object]]
"""``progress(total)`` returns a callback called once per finished unit of work."""

EXPLAIN_CHUNK = 2000
"""Rows explained per call on the pandas engine (one progress tick each)."""
PIPELINE_ROWS = 500
"""Rows per piece when `score_rows` explains in several threads."""

SCORE_COLUMNS: tuple[str, ...] = ("pd", "score", "grade", "base_points", "reasons")
MODEL_COLUMNS: tuple[str, ...] = ("model_name", "model_version", "model_run_id")
REASON_TYPE = pa.struct(
    [
        ("feature", pa.string()),
        ("value", pa.float64()),
        ("value_text", pa.string()),
        ("points", pa.float64()),
        ("text", pa.string()),
    ]
)
REASONS_TYPE = pa.list_(REASON_TYPE)


@dataclass(frozen=True)
class Scored:
    """A scored population: one row per (SME, as-of date) of the population, same order in both
    frames (as_of, then sme_id).

    `scores`: sme_id, as_of, pd, score, grade, base_points, reasons (a list of dicts per row,
    empty when not explained), model_name/version/run_id. `features`: sme_id, as_of, every
    feature of the data's catalog, default_12m (NA when immature at `data_end`). `main_core`: each
    row's main core enterprise (largest trade of the last 365 days; NA for none), the segment
    monitoring groups suppliers and dealers by."""

    scores: pd.DataFrame
    features: pd.DataFrame
    main_core: pd.Series


def model_info(loaded: LoadedModel) -> dict[str, str | None]:
    """name, version and run_id of a loaded model (as recorded with every decision)."""
    return {
        "name": loaded.name,
        "version": None if loaded.version is None else str(loaded.version),
        "run_id": loaded.run_id,
    }


def default_threads() -> int:
    """Threads `score_population` explains on unless told: 2 on a machine with 2 cores or
    more, else 1. Two, not every core: TreeSHAP runs without the GIL, the reasons' Python does
    not, so a third thread finds the GIL held (one thread's reasons while another's TreeSHAP
    runs is what there is to overlap)."""
    return min(2, os.cpu_count() or 1)


def score_rows(
    model: ScoringModel,
    rows: pd.DataFrame,
    *,
    method: str = DEFAULT_EXPLAIN_METHOD,
    explain: bool = True,
    threads: int = 1,
) -> pd.DataFrame:
    """Score feature rows (`sme_id`, `as_of`, feature columns; other columns ignored): a frame
    with the same index and the columns pd, score, grade, base_points, reasons.

    With `explain`, the service's explanation (`ScoringModel.explain_matrix`, reasons = top 4
    risk-increasing features by `serving.scoring.matrix_reasons`: those `explain_rows` gives):
    the model's matrix of the whole frame at once (pandas, column by column), then pieces of
    `PIPELINE_ROWS` rows explained (`_explained`), in ``threads`` threads when > 1, so that one
    thread's TreeSHAP and side probes (compiled, without the GIL) run while another writes its
    reasons; one frame of the pieces at the end. Every row is scored alone: the same values
    however the rows are cut. Without `explain`, PD/score/grade only (reasons empty,
    base_points NaN)."""
    from serving.exceptions import InvalidInput
    from training.exceptions import ModelInputError

    names = [n for n in model.feature_names if n in rows.columns]
    if rows.empty:
        return _score_frame(rows.index, [], [], [], [], [])
    if not explain:
        z = model.predict_logodds(rows[names])
        pd_ = 1.0 / (1.0 + np.exp(-z))
        return _score_frame(
            rows.index,
            pd_.tolist(),
            model.scale.score(z).tolist(),
            [str(g) for g in model.master_scale.grade(pd_)],
            [np.nan] * len(rows),
            [[] for _ in range(len(rows))],
        )
    try:
        M = model.matrix(rows[names])
    except ModelInputError as exc:
        raise InvalidInput(("features",), str(exc)) from exc
    starts = range(0, len(M), PIPELINE_ROWS)
    if threads > 1 and len(starts) > 1:
        model.treeshap()  # parsed once, before the threads
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(
                pool.map(lambda at: _explained(model, M[at : at + PIPELINE_ROWS], method), starts)
            )
    else:
        parts = [_explained(model, M[at : at + PIPELINE_ROWS], method) for at in starts]
    return _score_frame(
        rows.index,
        np.concatenate([p.pd for p in parts]),
        np.concatenate([p.score for p in parts]),
        [g for p in parts for g in p.grade],
        np.concatenate([p.base_points for p in parts]),
        [r for p in parts for r in p.reasons],
    )


@dataclass(frozen=True)
class _Piece:
    """`_explained`'s answer: a piece of rows scored and explained."""

    pd: np.ndarray
    score: np.ndarray
    grade: list[str]
    base_points: np.ndarray
    reasons: list[list[dict[str, Any]]]


def _explained(model: ScoringModel, M: np.ndarray, method: str) -> _Piece:
    """PD, score, grade, base points and reasons (records as `score_rows` writes them) of the
    rows of the model's matrix `M`. The fast engine keeps the rows' leaf values for the
    reasons' side probes (`serving.scoring.matrix_reasons`): each row is routed through the
    trees once."""
    from serving.exceptions import InvalidInput
    from serving.scoring import matrix_reasons
    from training.exceptions import ModelInputError

    try:
        expl = model.explain_matrix(M, method, leaves=method == "fast")
    except ModelInputError as exc:
        raise InvalidInput(("features",), str(exc)) from exc
    found = matrix_reasons(model, M, expl.point_values, leaves=expl.leaves)
    reasons: list[list[dict[str, Any]]] = [[] for _ in range(len(M))]
    for i, feature, value, points, text in zip(
        found.rows, found.features, found.values, found.points, found.texts, strict=True
    ):
        reasons[i].append(
            {
                "feature": feature,
                "value": value if isinstance(value, float) else None,
                "value_text": None if value is None else _text(value),
                "points": points,
                "text": text,
            }
        )
    return _Piece(expl.pd, expl.score, expl.grade.tolist(), expl.base_points, reasons)


def _text(value: float | str) -> str:
    return value if isinstance(value, str) else repr(float(value))


def _score_frame(
    index: pd.Index,
    pd_: Sequence[float] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    grade: Sequence[str],
    base: Sequence[float] | np.ndarray,
    reasons: Sequence[list[dict[str, Any]]],
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pd": np.asarray(pd_, dtype=np.float64),
            "score": np.asarray(score, dtype=np.float64),
            "grade": pd.Series(list(grade), dtype="str", index=index),
            "base_points": np.asarray(base, dtype=np.float64),
            "reasons": pd.Series(list(reasons), dtype=object, index=index),
        },
        index=index,
    )


def _partition_scored(
    part: Tables,
    days: list[int],
    reference: Reference,
    sme_ids: list[str],
    horizon_days: int,
    model: ScoringModel,
    method: str,
    explain: bool,
) -> pd.DataFrame:
    """One partition's population rows with their scores (runs on a Dask worker)."""
    from features.reference import feature_rows

    rows = feature_rows(
        part, days, reference, sme_ids=sme_ids, horizon_days=horizon_days, population_only=True
    )
    return rows.join(score_rows(model, rows, method=method, explain=explain))


def score_population(
    tables: Tables,
    as_of_dates: Iterable[object],
    loaded: LoadedModel,
    *,
    engine: Engine = "pandas",
    scheduler: str | None = None,
    n_workers: int | None = None,
    partitions: int | None = None,
    method: str = DEFAULT_EXPLAIN_METHOD,
    explain: bool = True,
    horizon_days: int | None = None,
    data_end: object | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> Scored:
    """Score every SME in the population at each as-of date (see the module docstring).

    FeatureError for a date outside the data's range or an empty population; the model's input
    errors as the service reports them. `data_end` (default: the data's last date) decides which
    labels are mature. Dask: connect to `scheduler` if given, else a LocalCluster of `n_workers`
    processes (default one per core). The labels' horizon is the model's own (its bundle's)
    unless `horizon_days` says otherwise. ``threads`` (pandas): as `score_rows`; by default
    `default_threads()` (both cores of a machine that has them: the same frame as one
    thread, tests/serving/test_scoring.py)."""
    if threads is None:
        threads = default_threads()
    if horizon_days is None:
        horizon_days = loaded.model.horizon_days
    from features.engines import ENGINES, default_partitions, partition_smes, split_tables
    from features.reference import build_reference, feature_rows, sme_ids_of

    if engine not in ENGINES:
        raise FeatureError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    start, end = data_range(tables)
    if data_end is not None:
        end = pd.Timestamp(data_end).normalize().as_unit("ns")  # type: ignore[arg-type]
    days = as_of_days(as_of_dates, start, end)
    reference = build_reference(tables)
    model = loaded.model
    info = model_info(loaded)

    if engine == "pandas":
        rows = feature_rows(
            tables, days, reference, horizon_days=horizon_days, population_only=True
        )
        chunks = range(0, len(rows), EXPLAIN_CHUNK)
        tick = progress(max(1, len(chunks))) if progress is not None else None
        parts = []
        for at in chunks:
            piece = rows.iloc[at : at + EXPLAIN_CHUNK]
            parts.append(score_rows(model, piece, method=method, explain=explain, threads=threads))
            if tick is not None:
                tick()
        scored = rows.join(pd.concat(parts)) if parts else rows
    else:
        from distributed import Client, LocalCluster, as_completed

        with ExitStack() as stack:
            if scheduler is not None:
                client = stack.enter_context(Client(scheduler, set_as_default=False))
            else:
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=n_workers or os.cpu_count() or 1,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                    )
                )
                client = stack.enter_context(Client(cluster, set_as_default=False))
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            groups = partition_smes(sme_ids_of(tables), partitions or default_partitions(workers))
            pieces = split_tables(tables, groups)
            tick = progress(len(groups)) if progress is not None else None
            ref = client.scatter(reference, broadcast=True)
            shared = client.scatter(model, broadcast=True)
            futures = [
                client.submit(
                    _partition_scored,
                    client.scatter(piece),
                    days,
                    ref,
                    smes,
                    horizon_days,
                    shared,
                    method,
                    explain,
                    pure=False,
                )
                for smes, piece in zip(groups, pieces, strict=True)
            ]
            position = {f.key: i for i, f in enumerate(futures)}
            results: dict[int, pd.DataFrame] = {}
            for future in as_completed(futures, loop=client.loop):
                results[position[future.key]] = future.result()
                if tick is not None:
                    tick()
        frames = [results[i] for i in range(len(futures))]
        scored = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if scored.empty:
        dates = ", ".join(pd.Timestamp(np.datetime64(d, "D")).date().isoformat() for d in days)
        raise FeatureError(
            f"no SME is in the population at {dates}: none has an invoice in the 365 days "
            "before and no earlier default"
        )
    panel = finish_panel(scored, horizon_days, end, keep=(META_MAIN_CORE,))
    main_core = panel.pop(META_MAIN_CORE).astype("str").rename("main_core")
    feature_cols = [c for c in panel.columns if c not in SCORE_COLUMNS]
    scores = panel[["sme_id", "as_of", *SCORE_COLUMNS]].copy()
    for col, key in zip(MODEL_COLUMNS, ("name", "version", "run_id"), strict=True):
        scores[col] = pd.Series([info[key]] * len(scores), dtype="str", index=scores.index)
    features = panel[feature_cols]
    assert LABEL in features.columns
    return Scored(scores=scores, features=features, main_core=main_core)


def scores_table(scores: pd.DataFrame) -> pa.Table:
    """A scores frame as an Arrow table, ``reasons`` typed as `REASONS_TYPE`."""
    table = pa.Table.from_pandas(scores.drop(columns=["reasons"]), preserve_index=False)
    reasons = pa.array(reasons_of(scores), type=REASONS_TYPE)
    at = list(scores.columns).index("reasons")
    return table.add_column(at, pa.field("reasons", REASONS_TYPE), reasons)


def write_scores(scores: pd.DataFrame, out: str | Path) -> Path:
    """Write a scores frame to Parquet atomically: a temporary file beside `out`, then a rename;
    on failure nothing is left at `out` (nor a temporary file)."""
    import pyarrow.parquet as pq

    table = scores_table(scores)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(target, ".tmp", folder=False)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def reasons_of(scores: pd.DataFrame) -> list[list[dict[str, Any]]]:
    """The reasons column as plain Python lists of dicts (one list per row)."""
    column = scores["reasons"]
    if isinstance(column.dtype, pd.ArrowDtype):
        return list(pa.array(column).to_pylist())
    return [[dict(r) for r in reasons] for reasons in column]
