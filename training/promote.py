"""Promotion: move the alias `champion` to a candidate version only when its gates pass.

Gates, all recomputed from the registry's artifacts (never taken from the candidate's own claims),
on rows NEITHER model trained on (`training.compare`): the panel built from `--data`, else the
OOT rows both training runs logged, restricted to rows unseen by both:
- AUC: the candidate's AUC is not worse than the current champion's by more than
  `max_auc_drop` (0.005) on those rows;
- calibration: the candidate's ECE (equal-count bins) on those rows is at most `max_ece` (0.02);
- monotonicity: the candidate passes the monotonicity check on those rows.
With no champion yet the AUC gate passes and the first model is judged on its own gates, on
rows it did not train on. Promoting the current champion changes nothing and says so.
Every decision is recorded: a run in the `promotions` experiment (params, metrics, tags,
decision.json) and tags on the candidate's model version (tags describe the version they sit
on: only the candidate is tagged with the decision; a replaced champion gets `superseded_by`).
Nothing is recorded when the comparison itself cannot be made (bad input).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.bundle import MODEL_NAME, LoadedModel, load_model
from training.compare import Comparison, Contender, compare, rows_from_logged, unseen_rows
from training.exceptions import ComparisonError, ModelLoadError, PromotionRejectedError
from training.monotone import check_monotonicity
from training.registry import (
    CHALLENGER,
    CHAMPION,
    PROMOTIONS_EXPERIMENT,
    check_tracking,
    load_oot_rows,
    recorded_run,
)
from training.thresholds import MAX_AUC_DROP, MAX_ECE


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
    noop: bool = False  # the candidate already is the champion: nothing was done
    comparison: str = ""  # the side-by-side table the gates were read from

    @property
    def reasons(self) -> list[str]:
        return [f"{g.name}: {g.detail}" for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("comparison")
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
        auc_gate = Gate("auc", True, f"no champion yet; candidate AUC {auc_candidate:.4f}")
    else:
        drop = auc_champion - auc_candidate
        auc_gate = Gate(
            "auc",
            bool(np.isfinite(auc_candidate) and drop <= max_auc_drop),
            f"candidate AUC {auc_candidate:.4f} vs champion {auc_champion:.4f} on the same "
            f"rows, unseen by both (drop {drop:+.4f}, allowed {max_auc_drop})",
        )
    ece_gate = Gate(
        "ece",
        bool(np.isfinite(ece_candidate) and ece_candidate <= max_ece),
        f"candidate ECE {ece_candidate:.4f} on rows it did not train on (allowed {max_ece})",
    )
    mono_gate = Gate(
        "monotonicity",
        monotonic,
        "verified on rows it did not train on" if monotonic else f"violated: {monotonic_detail}",
    )
    return auc_gate, ece_gate, mono_gate


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_contenders(
    client: Any,
    tracking_uri: str,
    model_name: str,
    candidate_version: str,
    champion_version: str | None,
) -> list[LoadedModel]:
    """The champion (when there is one) and the candidate, in that order."""
    versions = [v for v in (champion_version, candidate_version) if v is not None]
    return [load_model(f"models:/{model_name}/{v}", tracking_uri) for v in versions]


def comparison_rows(
    client: Any, loaded: list[LoadedModel], contenders: list[Contender], panel: pd.DataFrame | None
) -> pd.DataFrame:
    """Rows unseen by every contender: from `panel` (built from --data) when given, else the
    OOT rows every training run logged (`training.compare`)."""
    if panel is not None:
        from features.contract import HORIZON_ATTR

        horizon = panel.attrs.get(HORIZON_ATTR)
        for c in contenders:
            if horizon is not None and int(horizon) != c.model.horizon_days:
                raise ComparisonError(
                    f"the {c.role} (version {c.version}) predicts defaults within "
                    f"{c.model.horizon_days} days; the data's labels were built with {horizon}"
                )
        return unseen_rows(panel, contenders)
    frames = []
    for lm, c in zip(loaded, contenders, strict=True):
        if lm.run_id is None:
            raise ModelLoadError(f"version {c.version} has no training run (no logged OOT rows)")
        frames.append(load_oot_rows(client, lm.run_id))
    rows = frames[0] if len(frames) == 1 else rows_from_logged(frames[0], frames[1])
    try:
        return unseen_rows(rows, contenders, n_months=None)
    except ComparisonError as exc:
        raise ComparisonError(
            f"{exc} (the rows both models logged as OOT; give --data DIR to compare on data "
            "neither trained on)"
        ) from None


def compare_registered(
    tracking_uri: str,
    *,
    panel: pd.DataFrame | None = None,
    model_name: str = MODEL_NAME,
) -> Comparison:
    """`scf-risk compare`: the champion against the challenger on rows neither trained on.
    Reads only: a missing store, champion or challenger is a `ComparisonError`."""
    client = check_tracking(tracking_uri, create=False)
    champion_version = _alias_version(client, model_name, CHAMPION)
    challenger_version = _alias_version(client, model_name, CHALLENGER)
    if champion_version is None:
        raise ComparisonError(
            f"registered model {model_name!r} has no {CHAMPION!r}: nothing to compare with "
            "(promote a first model with `scf-risk promote`)"
        )
    if challenger_version is None:
        raise ComparisonError(f"registered model {model_name!r} has no {CHALLENGER!r}")
    if challenger_version == champion_version:
        raise ComparisonError(
            f"the challenger is the champion (version {champion_version}): nothing to compare"
        )
    loaded = load_contenders(client, tracking_uri, model_name, challenger_version, champion_version)
    contenders = [
        Contender(CHAMPION, champion_version, loaded[0].model),
        Contender(CHALLENGER, challenger_version, loaded[1].model),
    ]
    return compare(contenders, comparison_rows(client, loaded, contenders, panel))


def promote(
    tracking_uri: str,
    version: str | int | None = None,
    *,
    panel: pd.DataFrame | None = None,
    model_name: str = MODEL_NAME,
    max_auc_drop: float = MAX_AUC_DROP,
    max_ece: float = MAX_ECE,
) -> PromotionDecision:
    """Judge `version` (default: the `challenger` alias) against the `champion` on rows neither
    trained on (`panel`, else the OOT rows both logged) and move `champion` to it when every
    gate passes. Records the decision; raises `PromotionRejectedError` (after recording) when a
    gate fails, `ComparisonError` (recording nothing) when the comparison cannot be made."""
    from mlflow.entities import Metric, Param, RunTag

    client = check_tracking(tracking_uri, create=False)
    if version is None:
        candidate_version = _alias_version(client, model_name, CHALLENGER)
        if candidate_version is None:
            raise ModelLoadError(
                f"registered model {model_name!r} has no version with alias {CHALLENGER!r}: "
                "train one first (scf-risk train), or give --version"
            )
    else:
        candidate_version = str(version)
    champion_version = _alias_version(client, model_name, CHAMPION)
    if champion_version == candidate_version:
        return PromotionDecision(
            model_name=model_name,
            version=candidate_version,
            champion_version=champion_version,
            promoted=False,
            gates=(),
            noop=True,
        )
    loaded = load_contenders(client, tracking_uri, model_name, candidate_version, champion_version)
    candidate = loaded[-1]
    if candidate.run_id is None:
        raise ModelLoadError(f"version {candidate_version} of {model_name} has no training run")
    contenders = [Contender("candidate", candidate_version, candidate.model)]
    if champion_version is not None:
        contenders.insert(0, Contender(CHAMPION, champion_version, loaded[0].model))
    rows = comparison_rows(client, loaded, contenders, panel)
    comparison = compare(contenders, rows)
    cand = comparison.metrics["candidate"]
    metrics = {
        "auc_candidate": cand["auc"],
        "auc_candidate_low": cand["auc_low"],
        "auc_candidate_high": cand["auc_high"],
        "ece_candidate": cand["ece"],
        "brier_candidate": cand["brier"],
        "rows": float(comparison.rows),
        "defaults": float(comparison.defaults),
    }
    auc_champion: float | None = None
    if champion_version is not None:
        auc_champion = comparison.metrics[CHAMPION]["auc"]
        d = comparison.auc_difference
        metrics.update(
            {
                "auc_champion": auc_champion,
                "ece_champion": comparison.metrics[CHAMPION]["ece"],
                "auc_delta": d["diff"],
                "auc_delta_low": d["low"],
                "auc_delta_high": d["high"],
                "auc_delta_p_value": d["p_value"],
            }
        )
    features = rows.reindex(columns=candidate.model.feature_names)
    mono = check_monotonicity(
        lambda M: np.asarray(candidate.model.booster.predict(M, raw_score=True)),
        candidate.model.matrix(features),
        candidate.model.catalog,
        seed=int(candidate.model.params.get("train", {}).get("seed", 0)),
    )
    metrics["monotonicity_ok"] = 1.0 if mono.ok else 0.0
    gates = evaluate_gates(
        metrics["auc_candidate"],
        auc_champion,
        metrics["ece_candidate"],
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
        comparison=comparison.table(),
    )

    # record the decision, then act on it
    with recorded_run(
        client,
        PROMOTIONS_EXPERIMENT,
        tracking_uri,
        name=f"promote-v{candidate_version}",
        kind="promotion",
    ) as run:
        run_id = run.info.run_id
        decision = PromotionDecision(**{**decision.__dict__, "run_id": run_id})
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
                Param("rows", "--data panel" if panel is not None else "logged OOT rows"),
                Param("months", f"{comparison.months[0]}..{comparison.months[-1]}"),
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
            table = Path(tmp) / "comparison.txt"
            table.write_text(comparison.table() + "\n", encoding="utf-8")
            client.log_artifact(run_id, str(table))
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
            if champion_version is not None:
                client.set_model_version_tag(
                    model_name, champion_version, "superseded_by", candidate_version
                )
    if not promoted:
        raise PromotionRejectedError(candidate_version, decision.reasons, decision.comparison)
    return decision


def reload_service(url: str, admin_key: str | None, timeout: float = 30.0) -> dict[str, Any]:
    """Ask a running service to load the current champion (`POST /v1/admin/reload`)."""
    import requests

    if not admin_key:
        raise ComparisonError(
            "--reload needs an admin API key in SCF_RISK_ADMIN_KEY (create one with "
            "`scf-risk keys add --role admin`)"
        )
    endpoint = f"{url.rstrip('/')}/v1/admin/reload"
    try:
        response = requests.post(endpoint, headers={"X-API-Key": admin_key}, timeout=timeout)
    except requests.RequestException as exc:
        raise ModelLoadError(f"reload at {endpoint} failed: {exc}") from None
    if response.status_code != 200:
        raise ModelLoadError(
            f"reload at {endpoint} answered {response.status_code}: {response.text[:300]}"
        )
    body: dict[str, Any] = response.json()
    return body
