"""The thresholds a model is gated and monitored with: declared once here, recorded in every
model bundle (`ScoringModel.thresholds`), read by promotion and by the monitor."""

from __future__ import annotations

from collections.abc import Mapping

from features.drift import ACT_ABOVE, STABLE_BELOW

MAX_AUC_DROP = 0.005
"""Promotion: the largest loss of AUC against the champion, on rows neither trained on."""
MAX_ECE = 0.02
"""Promotion: the largest expected calibration error allowed."""
EARLY_WARNING_PD = 0.10
"""PD above which `scf-risk monitor` lists an SME as an early warning (unless told otherwise)."""
MODEL_THRESHOLDS: Mapping[str, float] = {
    "promotion_max_auc_drop": MAX_AUC_DROP,
    "promotion_max_ece": MAX_ECE,
    "monitor_early_warning_pd": EARLY_WARNING_PD,
    "drift_psi_watch": STABLE_BELOW,
    "drift_psi_act": ACT_ABOVE,
}
"""The thresholds a model is gated and monitored with, recorded in its bundle."""
