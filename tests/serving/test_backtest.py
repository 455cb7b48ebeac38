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
    in_sample,
    in_sample_note,
    lead_summary,
    lead_times,
    matched_threshold,
    observable,
    static_flags,
    whole_months,
)
from serving.portfolio.report import DEFAULTER_ROWS
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
    # censoring: the most months of warning each defaulter's scored month ends could show
    # (A from 2022-06-30, B from 2022-03-31: 11; C from 2022-04-30: 12; F from 2023-01-31: 2)
    assert leads["max_lead"].tolist() == [11, 11, 12, 2]
    assert (leads["lead_months"] <= leads["max_lead"]).all()
    assert observable(leads, lookback_months=12) == [4, 4, 4] + [3] * 9 + [1]
    summary = lead_summary(leads, alert_rate=0.5, lookback_months=12, ahead_months=3)
    assert summary["lead_counts"] == [1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert summary["share_flagged"] == 0.75
    assert summary["share_ahead"] == 0.5  # A (4) and C (12) of 4 defaulters
    assert summary["median_lead_months"] == 3.0  # median of 0, 2, 4, 12


def test_in_sample_months_are_the_window_months_the_model_trained_on() -> None:
    window = month_ends("2022-06-30", "2022-11-30")
    trained = tuple(f"2022-{m:02d}" for m in range(1, 9))
    assert in_sample(window, trained) == ["2022-06", "2022-07", "2022-08"]
    assert in_sample(window, ("2021-12",)) == []
    note = in_sample_note(in_sample(window, trained), recorded=True)
    assert note is not None and "trained on 3 of these months (2022-06, 2022-07, 2022-08)" in note
    assert in_sample_note([], recorded=True) is None
    # a bundle without its months cannot tell: it says so rather than staying silent
    unknown = in_sample_note([], recorded=False)
    assert unknown is not None and "does not record its training months" in unknown


BACKTEST_SCRIPT = """
JSON.stringify((() => {
  const bars = Array.from(document.querySelectorAll('#chart-lead .bar')).map(r => ({
    series: r.dataset.series, label: r.dataset.label, value: Number(r.dataset.value),
    height: r.getBoundingClientRect().height}));
  const svg = document.querySelector('#chart-lead').getBoundingClientRect();
  const text = (id) => (document.getElementById(id) || {textContent: ''}).textContent;
  return {bars, width: svg.width, height: svg.height,
          defaulters: document.querySelectorAll('#table-defaulters tr').length - 1,
          lead: Array.from(document.querySelectorAll('#table-lead tr')).map(
            tr => tr.children[0].textContent),
          censoring: text('note-censoring'), inSample: text('note-in-sample'),
          listed: document.querySelector('#note-defaulters a').getAttribute('href'),
          csp: document.querySelector('meta[http-equiv="Content-Security-Policy"]').content,
          ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
          external: document.querySelectorAll('script, link[href], img[src], iframe').length};
})())
"""


def run_backtest(tmp_path, monkeypatch, profiled: Profiled, name: str, *args: str):
    out = tmp_path / name / "backtest.html"
    result = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "backtest", "--data", str(profiled.data), "--out", str(out), "--model", profiled.uri,
        *args,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads(out.with_suffix(".json").read_text())


def test_backtest_command_on_simulated_data(tmp_path, monkeypatch, profiled: Profiled) -> None:
    out, output, doc = run_backtest(tmp_path, monkeypatch, profiled, "bt")
    # the same alert rate for both rules: the dynamic threshold is the round(rate·N)-th highest
    # PD, so it flags that many SME-months, and a few more where PDs tie at the threshold (2 of
    # 9,172 once: SME-months with identical features)
    n = doc["sme_months"]
    flagged = round(doc["dynamic"]["alert_rate"] * n)
    target = round(doc["static"]["alert_rate"] * n)
    assert target <= flagged <= target + max(3, n // 1000), (flagged, target, n)
    assert 0 < doc["static"]["alert_rate"] < 1 and doc["pd_threshold"] > 0
    assert doc["defaulters"] == len(doc["defaulter_rows"]) > DEFAULTER_ROWS
    for rule in ("static", "dynamic"):
        assert sum(doc[rule]["lead_counts"]) == doc["defaulters"]
        ahead = sum(r[f"lead_{rule}"] >= 3 for r in doc["defaulter_rows"]) / doc["defaulters"]
        assert doc[rule]["share_ahead"] == ahead
        # censoring: no more defaulters warned L months or more than could be
        counts = doc[rule]["lead_counts"]
        for lead, could in enumerate(doc["observable"]):
            assert sum(counts[lead:]) <= could
    assert doc["observable"][0] == doc["defaulters"]
    assert doc["observable"] == sorted(doc["observable"], reverse=True)
    assert doc["observable"][-1] < doc["defaulters"]  # the window censors the longest leads
    # a defaulter's static lead is 0 exactly when its static rating is better than B+
    for r in doc["defaulter_rows"]:
        rating = r["static_rating"]
        bad = rating is not None and RATING_SCALE.index(rating) >= RATING_SCALE.index("B+")
        assert (r["lead_static"] > 0) == bad
        assert r["lead_dynamic"] <= r["max_lead"] and r["lead_static"] <= r["max_lead"]
    # the whole data holds the training months: the warning names the overlapping ones
    info = doc["in_sample"]
    assert info["train_months"] and info["overlap"] == info["train_months"]
    assert ", ".join(info["overlap"]) in doc["note"] and doc["note"] in output
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "backtest-defaulters.csv", "backtest.html", "backtest.json"
    ]  # fmt: skip
    listed = pd.read_csv(out.parent / "backtest-defaulters.csv", dtype={"sme_id": str})
    assert listed["sme_id"].tolist() == [r["sme_id"] for r in doc["defaulter_rows"]]

    binary = chromium_or_skip()
    with Browser(binary) as browser:
        page = browser.visit(out.resolve().as_uri(), headers={}, script=BACKTEST_SCRIPT)
        errors = browser.console
    assert errors == [] and page["external"] == 0
    assert "default-src 'none'" in page["csp"]
    assert len(page["ids"]) == len(set(page["ids"]))  # charts share no id
    assert page["width"] > 300 and page["height"] > 150
    got = {(b["series"], b["label"]): b["value"] for b in page["bars"]}
    for series, rule in (("dynamic grade", "dynamic"), ("static rating", "static")):
        for month, count in zip(doc["lead_months"], doc[rule]["lead_counts"], strict=True):
            assert got[(series, str(month))] == count
    for month, could in zip(doc["lead_months"], doc["observable"], strict=True):
        assert got[("observable", str(month))] == could
    assert all(b["height"] > 0 for b in page["bars"] if b["value"] > 0)
    # the long list is bounded; the full one is the CSV the page links to
    assert page["defaulters"] == DEFAULTER_ROWS and page["listed"] == "backtest-defaulters.csv"
    assert "defaulters who could show it" in page["lead"]
    assert f"could show {doc['lookback_months']}" in page["censoring"]
    assert "trained on" in page["inSample"] and info["overlap"][0] in page["inSample"]


def test_backtest_after_the_training_months_warns_of_nothing(
    tmp_path, monkeypatch, profiled: Profiled
) -> None:
    from training.bundle import load_model

    trained = load_model(profiled.uri, profiled.tracking_uri).model.train_months
    start = (pd.Period(max(trained), "M") + 1).end_time.normalize()
    out, output, doc = run_backtest(
        tmp_path, monkeypatch, profiled, "after", "--from", f"{start:%Y-%m-%d}"
    )
    assert doc["from"] == f"{start:%Y-%m-%d}" and doc["in_sample"]["train_months"] == list(trained)
    assert doc["in_sample"]["overlap"] == [] and doc["note"] is None
    assert "trained on" not in output
    page = out.read_text()
    assert "None of these month ends is in the model" in page and "trained on" not in page


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
