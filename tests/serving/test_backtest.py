"""The dynamic-versus-static backtest (`serving.portfolio.backtest`, `scf-risk backtest`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from features.contract import RATING_SCALE
from features.exceptions import FeatureError
from serving.portfolio.backtest import (
    lead_summary,
    lead_times,
    matched_threshold,
    static_flags,
    whole_months,
)
from tests.support.portfolio import Profiled, cli
from tests.support.server import Browser, chromium_or_skip


def month_ends(start: str, end: str) -> list[pd.Timestamp]:
    return list(pd.date_range(start, end, freq="ME"))


def test_whole_calendar_months() -> None:
    t = pd.Timestamp
    assert whole_months(t("2023-01-31"), t("2023-04-30")) == 3  # Jan 31 + 3 months = Apr 30
    assert whole_months(t("2023-01-31"), t("2023-04-29")) == 2
    assert whole_months(t("2023-02-28"), t("2023-05-28")) == 3
    assert whole_months(t("2023-01-31"), t("2023-06-15")) == 4
    assert whole_months(t("2023-03-31"), t("2023-03-01")) == 0


def test_matched_threshold_flags_the_same_share() -> None:
    p = np.array([0.1, 0.5, 0.3, 0.2, 0.4])
    assert matched_threshold(p, 0.4) == 0.4  # k = 2: the 2nd highest PD
    assert (p >= matched_threshold(p, 0.4)).mean() == 0.4
    assert matched_threshold(p, 1.0) == 0.1
    assert matched_threshold(p, 0.0) == math.inf


def test_static_flags_use_the_rating_scale() -> None:
    enterprises = pd.DataFrame(
        {
            "enterprise_id": ["S1", "S2", "S3", "S4", "C1"],
            "role": ["sme", "sme", "sme", "sme", "core"],
            "external_rating": pd.Series(["B+", "BB", None, "CCC", "AA"], dtype="str"),
        }
    )
    ids = pd.Series(["S1", "S2", "S3", "S4", "S1"])
    assert static_flags(ids, enterprises, "B+").tolist() == [True, False, False, True, True]
    assert static_flags(ids, enterprises, "BB").tolist() == [True, True, False, True, True]
    with pytest.raises(FeatureError, match="cutoff 'Z' is not on the rating scale"):
        static_flags(ids, enterprises, "Z")


def test_lead_times_on_a_hand_made_portfolio() -> None:
    rows: list[tuple[str, pd.Timestamp, bool]] = []

    def path(sme: str, dates: list[pd.Timestamp], flagged: list[bool]) -> None:
        rows.extend((sme, d, f) for d, f in zip(dates, flagged, strict=True))

    # A defaults 2023-06-15; alerts on 2022-08-31 alone, then from 2023-01-31 on without a gap:
    # the run starts 2023-01-31 -> 4 whole months (Jan 31 + 4 = May 31 <= Jun 15 < Jun 30)
    a = month_ends("2022-05-31", "2023-05-31")
    path("A", a, [d == pd.Timestamp("2022-08-31") or d >= pd.Timestamp("2023-01-31") for d in a])
    # B defaults 2023-03-10; flagged every month except the last one before default -> 0
    b = month_ends("2022-01-31", "2023-02-28")
    path("B", b, [d < pd.Timestamp("2023-02-28") for d in b])
    # C defaults 2023-04-30, always flagged since 2022-01: the lookback starts 2022-04-30 -> 12
    c = month_ends("2022-01-31", "2023-03-31")
    path("C", c, [True] * len(c))
    # D defaults 2023-05-01 but was last scored 2021-12-31: outside the lookback, not counted
    path("D", [pd.Timestamp("2021-12-31")], [True])
    # E never defaults; F defaults 2023-03-31 after two flagged month ends -> 2
    path("E", month_ends("2022-01-31", "2023-06-30"), [True] * 18)
    path("F", month_ends("2023-01-31", "2023-02-28"), [True, True])
    frame = pd.DataFrame(rows, columns=["sme_id", "as_of", "flagged"])
    defaults = pd.Series(
        pd.to_datetime(["2023-06-15", "2023-03-10", "2023-04-30", "2023-05-01", "2023-03-31"]),
        index=["A", "B", "C", "D", "F"],
    )
    leads = lead_times(frame, defaults, lookback_months=12)
    assert leads["sme_id"].tolist() == ["A", "B", "C", "F"]
    assert leads["lead_months"].tolist() == [4, 0, 12, 2]
    assert leads["first_alert"].tolist()[0] == pd.Timestamp("2023-01-31")
    assert pd.isna(leads["first_alert"].iloc[1])
    assert leads["first_alert"].iloc[2] == pd.Timestamp("2022-04-30")
    summary = lead_summary(leads, alert_rate=0.5, lookback_months=12, ahead_months=3)
    assert summary["lead_counts"] == [1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert summary["share_flagged"] == 0.75
    assert summary["share_ahead"] == 0.5  # A (4) and C (12) of 4 defaulters
    assert summary["median_lead_months"] == 3.0  # median of 0, 2, 4, 12


BACKTEST_SCRIPT = """
JSON.stringify((() => {
  const bars = Array.from(document.querySelectorAll('#chart-lead rect.bar')).map(r => ({
    series: r.dataset.series, label: r.dataset.label, value: Number(r.dataset.value),
    height: r.getBoundingClientRect().height}));
  const svg = document.querySelector('#chart-lead').getBoundingClientRect();
  return {bars, width: svg.width, height: svg.height};
})())
"""


def test_backtest_command_on_simulated_data(tmp_path, monkeypatch, profiled: Profiled) -> None:
    out = tmp_path / "bt" / "backtest.html"
    result = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "backtest", "--data", str(profiled.data), "--out", str(out), "--model", profiled.uri,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.with_suffix(".json").read_text())
    # the same alert rate for both rules: the dynamic threshold flags round(rate·N) SME-months
    n = doc["sme_months"]
    assert round(doc["dynamic"]["alert_rate"] * n) == round(doc["static"]["alert_rate"] * n)
    assert 0 < doc["static"]["alert_rate"] < 1 and doc["pd_threshold"] > 0
    assert doc["defaulters"] == len(doc["defaulter_rows"]) > 0
    for rule in ("static", "dynamic"):
        assert sum(doc[rule]["lead_counts"]) == doc["defaulters"]
        ahead = sum(r[f"lead_{rule}"] >= 3 for r in doc["defaulter_rows"]) / doc["defaulters"]
        assert doc[rule]["share_ahead"] == ahead
    # a defaulter's static lead is 0 exactly when its static rating is better than B+
    for r in doc["defaulter_rows"]:
        rating = r["static_rating"]
        bad = rating is not None and RATING_SCALE.index(rating) >= RATING_SCALE.index("B+")
        assert (r["lead_static"] > 0) == bad
    assert sorted(p.name for p in out.parent.iterdir()) == ["backtest.html", "backtest.json"]

    binary = chromium_or_skip()
    with Browser(binary) as browser:
        page = browser.visit(out.resolve().as_uri(), headers={}, script=BACKTEST_SCRIPT)
    assert page["width"] > 300 and page["height"] > 150
    got = {(b["series"], b["label"]): b["value"] for b in page["bars"]}
    for series, rule in (("dynamic grade", "dynamic"), ("static rating", "static")):
        for month, count in zip(doc["lead_months"], doc[rule]["lead_counts"], strict=True):
            assert got[(series, str(month))] == count


def test_backtest_bad_input_exits_nonzero_and_writes_nothing(
    tmp_path, monkeypatch, profiled: Profiled
) -> None:
    out = tmp_path / "bt" / "backtest.html"
    for args, message in (
        (["--static-cutoff", "Z"], "cutoff 'Z' is not on the rating scale"),
        (["--from", "2023-12-01"], "fewer than two month ends"),
        (["--static-cutoff", "D"], "no SME-month is flagged by the static rule"),
    ):
        result = cli(
            tmp_path, monkeypatch, profiled.tracking_uri,
            "backtest", "--data", str(profiled.data), "--out", str(out), "--model", profiled.uri,
            *args,
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert not out.parent.exists()
