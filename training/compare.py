"""Champion against challenger on the same rows, rows that neither model trained on.

A row (SME, as-of t) is unseen by a model when its as-of month is none of the model's training
months and no training label of the model records an outcome after t: a training row at s has
its label window (s, s + horizon], so every training month must end at least one horizon before
t (``t >= last training month end + horizon_days``). Each bundle knows its ``train_months`` and
``horizon_days``; a bundle without training months cannot be judged and is refused.

Rows come from a labelled feature panel (`scf-risk compare --data DIR` builds it from the data
given; by default the newest `months` matured months that both models have not seen), or from
the OOT rows both training runs logged (`rows_from_logged`), again restricted to rows unseen by
both. The comparison reports, per model, AUC with its DeLong interval, KS, Brier score, ECE and
the default rates by grade, and the AUC difference with DeLong's paired interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.pipeline import LABEL
from training import metrics as m
from training.exceptions import ComparisonError
from training.model import ScoringModel
from training.split import months

KEYS = ["sme_id", "as_of"]
DEFAULT_MONTHS = 6


@dataclass(frozen=True)
class Contender:
    """A model in a comparison: its role (champion, challenger), registry version and bundle."""

    role: str
    version: str
    model: ScoringModel


def unseen_from(contender: Contender) -> pd.Timestamp:
    """The first as-of date no training label of the model overlaps (module docstring)."""
    model = contender.model
    if not model.train_months:
        raise ComparisonError(
            f"the {contender.role} (version {contender.version}) does not record its training "
            "months: it cannot be compared on rows it did not train on (retrain it with this "
            "release)"
        )
    last = pd.Period(max(model.train_months), "M").end_time.normalize()
    return last + pd.Timedelta(days=int(model.horizon_days))


def unseen_rows(
    rows: pd.DataFrame, contenders: list[Contender], n_months: int | None = DEFAULT_MONTHS
) -> pd.DataFrame:
    """The matured rows of `rows` that no contender trained on (module docstring), the newest
    `n_months` as-of months of them (None: all). Raises `ComparisonError` when none is left."""
    missing = [c for c in (*KEYS, LABEL) if c not in rows.columns]
    if missing:
        raise ComparisonError(f"the comparison rows lack the column(s) {missing}")
    data = rows.loc[rows[LABEL].notna()].copy()
    data["as_of"] = pd.to_datetime(data["as_of"])
    data["sme_id"] = data["sme_id"].astype("str")
    data[LABEL] = pd.to_numeric(data[LABEL]).astype("int64")
    cutoff = max(unseen_from(c) for c in contenders)
    trained = set().union(*(set(c.model.train_months) for c in contenders))
    month = months(data["as_of"])
    keep = (data["as_of"] >= cutoff).to_numpy() & ~pd.Series(month).isin(trained).to_numpy()
    if not keep.any():
        span = (
            f"as-of {data['as_of'].min().date()} .. {data['as_of'].max().date()}"
            if len(data)
            else "no matured rows"
        )
        raise ComparisonError(
            f"the data holds no matured rows unseen by both models ({span}): a row must be "
            f"on or after {cutoff.date()} (the last training month of either model plus its "
            "label horizon) with its label matured; give newer data with --data"
        )
    data = data.loc[keep]
    if n_months is not None:
        newest = sorted(set(months(data["as_of"])))[-n_months:]
        data = data.loc[pd.Series(months(data["as_of"]), index=data.index).isin(newest)]
    data = data.sort_values(KEYS, kind="stable").reset_index(drop=True)
    y = data[LABEL].to_numpy()
    if not 0 < y.sum() < y.size:
        raise ComparisonError(
            f"the {y.size} rows unseen by both models hold one class only ({int(y.sum())} "
            "defaults): AUC needs defaults and non-defaults"
        )
    return data


def rows_from_logged(champion_rows: pd.DataFrame, challenger_rows: pd.DataFrame) -> pd.DataFrame:
    """The OOT rows both training runs logged (same SME and as-of date): keys and label, the
    challenger's logged features, and the champion's logged features it alone uses."""

    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.drop(columns=[c for c in ("pd", "score", "grade", "pd_true") if c in frame])
        out = out.assign(sme_id=out["sme_id"].astype("str"), as_of=pd.to_datetime(out["as_of"]))
        return out

    a, b = keyed(challenger_rows), keyed(champion_rows)
    extra = [c for c in b.columns if c not in a.columns]
    return a.merge(b[[*KEYS, *extra]], on=KEYS, how="inner", validate="one_to_one")


@dataclass
class Comparison:
    """What `compare` measured, per model and for the difference."""

    rows: int
    defaults: int
    months: tuple[str, ...]
    versions: dict[str, str]
    metrics: dict[str, dict[str, float]]  # role -> auc, auc_low, auc_high, ks, brier, ece
    auc_difference: dict[str, float]  # challenger - champion: diff, low, high, p_value
    grades: pd.DataFrame  # per grade and model: n, defaults, observed rate, mean PD
    pds: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def table(self) -> str:
        """The side-by-side table `scf-risk compare` prints."""
        roles = list(self.metrics)
        head = f"{'':28}" + "".join(f"{r + ' v' + self.versions[r]:>24}" for r in roles)
        lines = [
            f"{self.rows:,} rows ({self.defaults:,} defaults), as-of months "
            f"{self.months[0]} .. {self.months[-1]}, unseen by both models",
            head,
        ]

        def row(label: str, fmt: Any) -> None:
            lines.append(f"{label:28}" + "".join(f"{fmt(self.metrics[r]):>24}" for r in roles))

        row("AUC [95% DeLong CI]", lambda x: f"{x['auc']:.4f} [{x['auc_low']:.3f}, "
            f"{x['auc_high']:.3f}]")  # fmt: skip
        row("KS", lambda x: f"{x['ks']:.4f}")
        row("Brier score", lambda x: f"{x['brier']:.5f}")
        row("ECE (10 equal-count bins)", lambda x: f"{x['ece']:.4f}")
        row("mean PD / default rate", lambda x: f"{x['mean_pd']:.4f} / {x['default_rate']:.4f}")
        d = self.auc_difference
        if d:
            lines.append(
                f"AUC challenger - champion: {d['diff']:+.4f} [95% CI {d['low']:+.4f}, "
                f"{d['high']:+.4f}], p = {d['p_value']:.3f}"
            )
        lines.append("")
        lines.append("default rate by grade (n, observed rate, mean PD)")
        lines.append(f"{'grade':8}" + "".join(f"{r:>30}" for r in roles))
        for _, g in self.grades.iterrows():
            cells = []
            for r in roles:
                n = int(g[f"n_{r}"])
                cells.append(
                    f"{n:>8,} {g[f'rate_{r}']:>9.4f} {g[f'mean_pd_{r}']:>9.4f}"
                    if n
                    else f"{'-':>8}{'':>20}"
                )
            lines.append(f"{g['grade']:8}" + "".join(f"{c:>30}" for c in cells))
        return "\n".join(lines)

    def flat(self) -> dict[str, float]:
        """Metrics as `name_role` -> value (MLflow metrics of a promotion)."""
        out = {f"{k}_{r}": v for r, vals in self.metrics.items() for k, v in vals.items()}
        out.update({f"auc_difference_{k}": v for k, v in self.auc_difference.items()})
        out["rows"] = float(self.rows)
        out["defaults"] = float(self.defaults)
        return out


def score_rows(model: ScoringModel, rows: pd.DataFrame) -> np.ndarray:
    """PDs of `rows` by `model`; a feature the rows lack is missing (NaN) for the model."""
    names = model.feature_names
    frame = rows.reindex(columns=names)
    return np.asarray(model.predict(frame), dtype=np.float64)


def compare(contenders: list[Contender], rows: pd.DataFrame) -> Comparison:
    """Score every contender on the same `rows` (already restricted by `unseen_rows`)."""
    y = rows[LABEL].to_numpy(dtype=np.float64)
    pds = {c.role: score_rows(c.model, rows) for c in contenders}
    metrics: dict[str, dict[str, float]] = {}
    grade_frames = []
    for c in contenders:
        p = pds[c.role]
        auc, low, high = m.auc_ci(y, p)
        n_bins = int(c.model.params.get("train", {}).get("ece_bins", 10))
        metrics[c.role] = {
            "auc": auc,
            "auc_low": low,
            "auc_high": high,
            "ks": m.ks(y, p),
            "brier": m.brier(y, p),
            "ece": m.ece(y, p, n_bins),
            "mean_pd": float(p.mean()),
            "default_rate": float(y.mean()),
        }
        g = m.by_grade(y, p, c.model.master_scale)[["grade", "n", "observed_rate", "mean_pd"]]
        grade_frames.append(
            g.rename(
                columns={
                    "n": f"n_{c.role}",
                    "observed_rate": f"rate_{c.role}",
                    "mean_pd": f"mean_pd_{c.role}",
                }
            ).set_index("grade")
        )
    grades = pd.concat(grade_frames, axis=1).reset_index()
    roles = [c.role for c in contenders]
    difference: dict[str, float] = {}
    if len(roles) == 2:
        diff, low, high, p_value = m.auc_difference(y, pds[roles[1]], pds[roles[0]])
        difference = {"diff": diff, "low": low, "high": high, "p_value": p_value}
    return Comparison(
        rows=len(rows),
        defaults=int(y.sum()),
        months=tuple(sorted(set(months(rows["as_of"])))),
        versions={c.role: c.version for c in contenders},
        metrics=metrics,
        auc_difference=difference,
        grades=grades,
        pds=pds,
    )
