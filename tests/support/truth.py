"""The simulator's ground truth read the way the monitor reads a segment: how much the segment's
true odds of default moved against the rest's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.simulate import TRUTH_FILE


def true_odds_ratio(
    data: Path, members: pd.Index, population: pd.Index, baseline: str, as_of: str
) -> float:
    """``exp(mean change of logit pd_true in the segment - the rest's)`` from `baseline` to
    `as_of`: the paired difference in differences `serving.portfolio.segments` computes on the
    model's score, on the simulator's Bayes PD. `members`: the segment's SMEs; `population`: the
    SMEs the monitor paired (segment and rest); only those alive in the truth at both dates."""
    truth = pd.read_parquet(data / TRUTH_FILE)
    truth["as_of"] = pd.to_datetime(truth["as_of"])
    at = {
        when: truth[truth["as_of"] == pd.Timestamp(when)].set_index("sme_id")["pd_true"]
        for when in (baseline, as_of)
    }
    both = population.intersection(at[baseline].index).intersection(at[as_of].index)
    if len(both) == 0:
        raise ValueError(f"no SME of the population is in the truth at {baseline} and {as_of}")

    def logit(p: pd.Series) -> np.ndarray:
        q = p.loc[both].to_numpy(dtype=np.float64)
        return np.log(q / (1.0 - q))

    change = logit(at[as_of]) - logit(at[baseline])
    inside = both.isin(members)
    if inside.all() or not inside.any():
        raise ValueError("the segment must hold some, not all, of the population's SMEs")
    return float(np.exp(change[inside].mean() - change[~inside].mean()))
