"""Promotion: move the alias `champion` to a candidate version only when its gates pass.

Gates, all recomputed from the registry's artifacts (never taken from the candidate's own claims):
- AUC: the candidate's OOT AUC is not worse than the current champion's by more than
  `max_auc_drop` (0.005), both scored on the SAME rows, the candidate's logged OOT rows;
- calibration: the candidate's OOT ECE (equal-count bins) is at most `max_ece` (0.02);
- monotonicity: the candidate passes the monotonicity check on its OOT rows.
With no champion yet the AUC gate passes and the first model is judged on its own gates.
Every decision is recorded: a run in the `promotions` experiment (params, metrics, tags,
decision.json) and tags on the candidate's model version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training import metrics as m
from training.bundle import MODEL_NAME, LoadedModel, load_model
from training.exceptions import ModelLoadError, PromotionRejectedError
from training.monotone import check_monotonicity
from training.registry import (
    CHALLENGER,
    CHAMPION,
    PROMOTIONS_EXPERIMENT,
    check_tracking,
    ensure_experiment,
    load_oot_rows,
)

MAX_AUC_DROP = 0.005
MAX_ECE = 0.02


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class PromotionDecision:
    model_name: str
    version: str
    champion_version: str | None  # the champion before the decision
    promoted: bool
    gates: tuple[Gate, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the promotions run recording the decision

    @property
    def reasons(self) -> list[str]:
        return [f"{g.name}: {g.detail}" for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = self.reasons
        out["metrics"] = {k: (v if np.isfinite(v) else None) for k, v in self.metrics.items()}
        return out


def evaluate_gates(
    auc_candidate: float,
    auc_champion: float | None,
    ece_candidate: float,
    monotonic: bool,
    *,
    max_auc_drop: float = MAX_AUC_DROP,
    max_ece: float = MAX_ECE,
    monotonic_detail: str = "",
) -> tuple[Gate, ...]:
    """The three gates of a promotion (module docstring)."""
    if auc_champion is None:
        auc_gate = Gate("auc", True, f"no champion yet; candidate OOT AUC {auc_candidate:.4f}")
    else:
        drop = auc_champion - auc_candidate
        auc_gate = Gate(
            "auc",
            bool(np.isfinite(auc_candidate) and drop <= max_auc_drop),
            f"candidate OOT AUC {auc_candidate:.4f} vs champion {auc_champion:.4f} on the same "
            f"rows (drop {drop:+.4f}, allowed {max_auc_drop})",
        )
    ece_gate = Gate(
        "ece",
        bool(np.isfinite(ece_candidate) and ece_candidate <= max_ece),
        f"candidate OOT ECE {ece_candidate:.4f} (allowed {max_ece})",
    )
    mono_gate = Gate(
        "monotonicity",
        monotonic,
        "verified on OOT rows" if monotonic else f"violated: {monotonic_detail}",
    )
    return auc_gate, ece_gate, mono_gate


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(
    tracking_uri: str,
    version: str | int | None = None,
    *,
    model_name: str = MODEL_NAME,
    max_auc_drop: float = MAX_AUC_DROP,
    max_ece: float = MAX_ECE,
) -> PromotionDecision:
    """Judge `version` (default: the `challenger` alias) against the `champion` and move
    `champion` to it when every gate passes. Records the decision; raises
    `PromotionRejectedError` (after recording) when a gate fails."""
    from mlflow.entities import Metric, Param, RunTag

    client = check_tracking(tracking_uri)
    if version is None:
        candidate_version = _alias_version(client, model_name, CHALLENGER)
        if candidate_version is None:
            raise ModelLoadError(
                f"registered model {model_name!r} has no version with alias {CHALLENGER!r}: "
                "train one first (scf-risk train), or give --version"
            )
    else:
        candidate_version = str(version)
    candidate = load_model(f"models:/{model_name}/{candidate_version}", tracking_uri)
    if candidate.run_id is None:
        raise ModelLoadError(f"version {candidate_version} of {model_name} has no training run")
    rows = load_oot_rows(client, candidate.run_id)
    champion_version = _alias_version(client, model_name, CHAMPION)

    y = rows["default_12m"].to_numpy(dtype=np.float64)
    p_candidate = candidate.model.predict(_features_for(candidate, rows))
    n_bins = int(candidate.model.params.get("train", {}).get("ece_bins", 10))
    metrics = {
        "auc_candidate_oot": m.auc(y, p_candidate),
        "ece_candidate_oot": m.ece(y, p_candidate, n_bins),
        "rows_oot": float(len(rows)),
    }
    auc_champion: float | None = None
    if champion_version is not None:
        if champion_version == candidate_version:
            auc_champion = metrics["auc_candidate_oot"]
        else:
            champion = load_model(f"models:/{model_name}/{champion_version}", tracking_uri)
            auc_champion = m.auc(y, champion.model.predict(_features_for(champion, rows)))
        metrics["auc_champion_oot"] = auc_champion
        metrics["auc_delta_oot"] = metrics["auc_candidate_oot"] - auc_champion
    mono = check_monotonicity(
        lambda M: np.asarray(candidate.model.booster.predict(M, raw_score=True)),
        candidate.model.matrix(_features_for(candidate, rows)),
        candidate.model.catalog,
        seed=int(candidate.model.params.get("train", {}).get("seed", 0)),
    )
    metrics["monotonicity_ok"] = 1.0 if mono.ok else 0.0
    gates = evaluate_gates(
        metrics["auc_candidate_oot"],
        auc_champion,
        metrics["ece_candidate_oot"],
        mono.ok,
        max_auc_drop=max_auc_drop,
        max_ece=max_ece,
        monotonic_detail="; ".join(mono.violations()),
    )
    promoted = all(g.passed for g in gates)
    decision = PromotionDecision(
        model_name=model_name,
        version=candidate_version,
        champion_version=champion_version,
        promoted=promoted,
        gates=gates,
        metrics=metrics,
    )

    # record the decision, then act on it
    experiment_id = ensure_experiment(client, PROMOTIONS_EXPERIMENT, tracking_uri)
    run = client.create_run(
        experiment_id,
        run_name=f"promote-v{candidate_version}",
        tags={"scf_risk.kind": "promotion"},
    )
    run_id = run.info.run_id
    decision = PromotionDecision(**{**decision.__dict__, "run_id": run_id})
    status = "FAILED"
    try:
        now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
        reasons = "; ".join(decision.reasons) or "all gates passed"
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)],
            params=[
                Param("model_name", model_name),
                Param("candidate_version", candidate_version),
                Param("champion_version", str(champion_version)),
                Param("candidate_run_id", candidate.run_id),
                Param("max_auc_drop", str(max_auc_drop)),
                Param("max_ece", str(max_ece)),
            ],
            tags=[
                RunTag("decision", "promoted" if promoted else "rejected"),
                RunTag("reasons", reasons[:5000]),
            ],
        )
        with tempfile.TemporaryDirectory(prefix="scf-risk-promote-") as tmp:
            path = Path(tmp) / "decision.json"
            path.write_text(json.dumps(decision.to_json(), indent=2), encoding="utf-8")
            client.log_artifact(run_id, str(path))
        stamp = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
        for key, value in (
            ("promotion_decision", "promoted" if promoted else "rejected"),
            ("promotion_reasons", reasons[:5000]),
            ("promotion_run_id", run_id),
            ("promotion_time", stamp),
        ):
            client.set_model_version_tag(model_name, candidate_version, key, value)
        if promoted:
            client.set_registered_model_alias(model_name, CHAMPION, candidate_version)
            if champion_version is not None and champion_version != candidate_version:
                client.set_model_version_tag(
                    model_name, champion_version, "superseded_by", candidate_version
                )
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    if not promoted:
        raise PromotionRejectedError(candidate_version, decision.reasons)
    return decision


def _features_for(loaded: LoadedModel, rows: pd.DataFrame) -> pd.DataFrame:
    """The columns of `rows` that `loaded`'s model knows (others are the candidate's features
    or outputs); a feature the rows lack is missing (NaN) for that model."""
    names = [n for n in loaded.model.feature_names if n in rows.columns]
    return rows[names]
