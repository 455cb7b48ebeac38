"""Monitoring (`serving.portfolio.monitor`, `scf-risk monitor`): migration, early warning, dates,
the training reference, the report and its JSON summary, MLflow logging, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.contract import Tables
from features.drift import PROFILE_ARTIFACT, SCORE
from serving.exceptions import ModelLoadFailed
from serving.portfolio.charts import Chart, Series
from serving.portfolio.monitor import (
    DEFAULTED,
    LEFT,
    MONITORING_EXPERIMENT,
    NEW,
    drift_profile,
    early_warnings,
    grade_distribution,
    matured_cohort,
    migration_counts,
    migration_matrix,
    months_before,
)
from serving.portfolio.report import page, publish
from tests.support.models import train_small_model
from tests.support.portfolio import (
    Profiled,
    broken_folder,
    cli,
    empty_population_folder,
    model_without_reference,
)
from tests.support.server import Browser, chromium_or_skip
from training.bundle import LoadedModel, client_for, load_model
from training.registry import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

SCALE = ("A", "B", "C", "D", "E", "F")


def frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["sme_id", "grade"])


# -- migration ------------------------------------------------------------------------------------
def test_migration_matrix_of_a_tiny_portfolio() -> None:
    scale = ("A", "B", "C", "D")
    before = frame([("S1", "A"), ("S2", "B"), ("S3", "B"), ("S4", "C"), ("S5", "D"), ("S6", "C")])
    after = frame([("S1", "A"), ("S2", "C"), ("S3", "A"), ("S4", "C"), ("S7", "B")])
    m = migration_matrix(before, after, scale, defaulted={"S5"})
    assert list(m.index) == ["A", "B", "C", "D", NEW]
    assert list(m.columns) == ["A", "B", "C", "D", DEFAULTED, LEFT]
    expected = [
        # A  B  C  D  dflt left
        [1, 0, 0, 0, 0, 0],  # A: S1 stays
        [1, 0, 1, 0, 0, 0],  # B: S3 up to A, S2 down to C
        [0, 0, 1, 0, 0, 1],  # C: S4 stays, S6 left the population
        [0, 0, 0, 0, 1, 0],  # D: S5 defaulted
        [0, 1, 0, 0, 0, 0],  # new: S7 enters in B
    ]
    assert m.to_numpy().tolist() == expected
    assert migration_counts(m, scale) == {"upgraded": 1, "unchanged": 2, "downgraded": 1}


def test_migration_rejects_unknown_grades_and_duplicates() -> None:
    with pytest.raises(ValueError, match=r"grade\(s\) \['Z'\] not on the master scale"):
        migration_matrix(frame([("S1", "Z")]), frame([]), SCALE)
    with pytest.raises(ValueError, match="before: SME S1 appears twice"):
        migration_matrix(frame([("S1", "A"), ("S1", "B")]), frame([]), SCALE)


def test_grade_distribution_lists_every_grade() -> None:
    dist = grade_distribution(pd.Series(["B", "B", "D", "A"]), SCALE)
    assert dist["count"].tolist() == [1, 2, 0, 1, 0, 0]
    assert dist["share"].tolist() == [0.25, 0.5, 0.0, 0.25, 0.0, 0.0]


# -- early warning --------------------------------------------------------------------------------
def test_early_warning_rules_on_hand_made_paths() -> None:
    before = pd.DataFrame(
        [
            ("S1", 0.02, "B"),  # -> D: down 2 grades
            ("S2", 0.02, "B"),  # -> C: down 1, not flagged
            ("S3", 0.08, "C"),  # -> PD 0.12: crossed 10 %
            ("S4", 0.12, "D"),  # already above 10 %: not a crossing
            ("S6", 0.01, "A"),  # -> E at 0.30: both rules
            ("S7", 0.11, "D"),  # -> B: upgraded, below again
            ("S8", 0.05, "B"),  # -> D at exactly 0.10: down 2 and crossed (at or above)
        ],
        columns=["sme_id", "pd", "grade"],
    )
    reasons = [{"feature": "dso_90d", "value": 80.0, "value_text": "80.0", "points": -9.0,
                "text": "Days sales outstanding"}]  # fmt: skip
    now = pd.DataFrame(
        [
            ("S1", 0.05, "D", reasons),
            ("S2", 0.04, "C", []),
            ("S3", 0.12, "C", []),
            ("S4", 0.15, "D", []),
            ("S5", 0.20, "E", []),  # new in the population, above the threshold
            ("S6", 0.30, "E", []),
            ("S7", 0.03, "B", []),
            ("S8", 0.10, "D", []),
        ],
        columns=["sme_id", "pd", "grade", "reasons"],
    )
    ew = early_warnings(now, before, SCALE, pd_threshold=0.10, min_notches=2)
    assert ew["sme_id"].tolist() == ["S6", "S5", "S3", "S8", "S1"]  # highest PD first
    assert ew["rule"].tolist() == [
        "down 4 grades; PD crossed 10.00%",
        "PD crossed 10.00%",
        "PD crossed 10.00%",
        "down 2 grades; PD crossed 10.00%",
        "down 2 grades",
    ]
    assert ew["notches_down"].tolist() == [4, 0, 0, 2, 2]
    assert ew["grade_before"].isna().tolist() == [False, True, False, False, False]
    assert np.isnan(ew["pd_before"].iloc[1])
    assert ew["reasons"].iloc[-1] == reasons
    # a stricter downgrade rule drops S1 (and keeps S8 for its PD)
    strict = early_warnings(now, before, SCALE, pd_threshold=0.10, min_notches=3)
    assert strict["sme_id"].tolist() == ["S6", "S5", "S3", "S8"]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        early_warnings(now, before, SCALE, pd_threshold=1.0)


# -- dates ----------------------------------------------------------------------------------------
def test_comparison_and_cohort_dates() -> None:
    assert months_before("2023-11-30") == pd.Timestamp("2023-08-31")
    assert months_before("2023-05-31") == pd.Timestamp("2023-02-28")
    assert months_before("2023-05-15") == pd.Timestamp("2023-02-15")
    # labels of cohort c are known when c + 365 days <= as-of
    assert matured_cohort("2023-12-31", "2022-01-01") == pd.Timestamp("2022-12-31")
    assert matured_cohort("2023-12-30", "2022-01-01") == pd.Timestamp("2022-11-30")
    assert matured_cohort("2022-12-30", "2022-01-01") is None


# -- data freshness on thin data ------------------------------------------------------------------
FRESH_AS_OF = pd.Timestamp("2024-06-30")


def sellers(
    n: int = 12,
    *,
    core_smes: int = 0,
    paid: bool = True,
    industry: object = "food",
    start: str = "2023-01-01",
) -> Tables:
    """`n` SMEs that only sell, an invoice a week each until the freshness date, to core C2 (the
    first `core_smes` to core C1, whose feed stopped 20 days before it); paid on the day of issue
    or (`paid` False) never. No invoice bought, no inventory snapshot, no loan. The first SME's
    industry is `industry`, the others' "food"."""
    smes = [f"S{i:02d}" for i in range(n)]
    ent = pd.DataFrame(
        {
            "enterprise_id": [*smes, "C1", "C2"],
            "role": ["sme"] * n + ["core", "core"],
            "industry": pd.Series([industry, *["food"] * (n - 1), None, None], dtype=object),
        }
    )
    rows = []
    for i, s in enumerate(smes):
        core = "C1" if i < core_smes else "C2"
        for d in pd.date_range(start, FRESH_AS_OF, freq="7D"):
            if core == "C1" and d > FRESH_AS_OF - pd.Timedelta(days=20):
                continue
            rows.append((f"I{len(rows)}", s, core, d, d if paid else pd.NaT))
    inv = pd.DataFrame(
        rows, columns=["invoice_id", "seller_id", "buyer_id", "issue_date", "paid_date"]
    )
    inv["paid_date"] = pd.to_datetime(inv["paid_date"])
    return Tables(enterprises=ent, invoices=inv)


def test_a_per_core_feed_without_a_record_with_a_core_is_checked() -> None:
    """SMEs that only sell to cores, with no inventory snapshot (and, unpaid, no payment on a
    core's invoice): contract-valid data where a per-core feed (invoices bought, payments made)
    has no record with a core. Counting its cores ran into a ValueError (no core, one empty
    piece), and with it every `scf-risk monitor` run."""
    from serving.portfolio.monitor import FEEDS, freshness, freshness_references

    for paid in (True, False):
        tables = sellers(paid=paid)
        for feed in FEEDS:
            counts = silent_counts_of(tables, feed.name)
            has = feed.name == "invoices_sold" or (paid and feed.name == "payments_received")
            assert (not counts.empty) == has, (feed.name, counts)
        found = freshness(
            tables, FRESH_AS_OF, freshness_references(FRESH_AS_OF, months_before(FRESH_AS_OF))
        )
        assert set(found.tests["feed"]) == (
            {"invoices_sold", "payments_received"} if paid else {"invoices_sold"}
        )
        assert (found.tests["signal"] == "stable").all()


def silent_counts_of(tables: Tables, feed: str) -> pd.DataFrame:
    from serving.portfolio.monitor import FEEDS, FeedData, silent_counts

    return silent_counts(FeedData.of(tables), next(f for f in FEEDS if f.name == feed), FRESH_AS_OF)


def checked(tables: Tables, as_of: pd.Timestamp = FRESH_AS_OF) -> dict[str, Any]:
    from serving.portfolio.monitor import freshness, freshness_doc, freshness_references

    return freshness_doc(
        freshness(tables, as_of, freshness_references(as_of, months_before(as_of))), as_of
    )


def quiet(fresh: dict[str, Any]) -> list[str]:
    """The actions of a monitoring summary with nothing to act on but this freshness part."""
    from serving.portfolio.monitor import actions

    doc = {
        "compare": "2024-03-31",
        "psi": {"score": {"band": "stable", "psi": 0.02}, "features": [], "coverage": "known"},
        "score_shift": {"by_feature": [], "change": 0.0},
        "segments": {"baseline": None, "segments": []},
        "realised_by_grade": {"grades": []},
        "early_warning": {"count": 0},
        "freshness": fresh,
    }
    return actions(doc)


@pytest.mark.parametrize("paid", [True, False])
def test_smes_that_only_sell_are_checked_and_the_empty_feeds_said(paid: bool) -> None:
    """SMEs that only sell to cores, with no inventory snapshot (and, unpaid, no payment on a
    core's invoice): contract-valid data where a per-core feed has no record with a core. The
    check ran into a ValueError (no core, one empty piece) and with it every `scf-risk monitor`
    run. It tests the feeds that have records and says which it could not test."""
    fresh = checked(sellers(paid=paid))
    tested = {t["feed"] for t in fresh["tests"]}
    assert tested == ({"invoices_sold", "payments_received"} if paid else {"invoices_sold"})
    assert {(t["kind"], t["group"]) for t in fresh["tests"]} == {
        ("population", "all"), ("industry", "food"), ("core", "C2"),
    }  # fmt: skip
    assert all(t["signal"] == "stable" for t in fresh["tests"]), fresh["tests"]
    assert fresh["complete"] is False and fresh["act"] == 0
    empty = ["invoices bought", "payments made", "inventory snapshots"]
    empty += [] if paid else ["payments received"]
    for text in empty:
        assert any(s.startswith(f"{text}: no SME of the population") for s in fresh["not_checked"])
    assert len(fresh["not_checked"]) == len(empty)
    lines = quiet(fresh)
    assert lines[0].startswith("Nothing to act on in the model")
    assert (
        "no data feed fell silent" not in lines[0] and "not every feed could be tested" in lines[0]
    )
    (unchecked,) = [a for a in lines if a.startswith("UNCHECKED data: ")]
    assert all(text in unchecked for text in empty)


def test_an_sme_without_industry_is_in_no_industry_group() -> None:
    """An SME whose industry is not given (NaN in the table) is in no industry's group: not in
    one named "nan"."""
    from serving.portfolio.monitor import FEEDS, FeedData, silent_counts

    for missing in (np.nan, None):
        data = FeedData.of(sellers(industry=missing))
        assert data.industry[0] is None
        groups = set(silent_counts(data, FEEDS[0], FRESH_AS_OF)["group"])
        assert groups == {"all", "food", "C2"}, groups


def test_a_group_too_small_to_test_is_untested_not_stable() -> None:
    """Core C1's 6 SMEs, whose feed stopped 20 days ago, are fewer than `FRESHNESS_MIN_SMES`:
    their tests have no p-value and are untested, not stable; the summary counts them and names
    the core, and does not claim plainly that no data feed fell silent."""
    fresh = checked(sellers(200, core_smes=6))
    c1 = [t for t in fresh["tests"] if t["group"] == "C1"]
    assert c1 and all(t["signal"] == "untested" and t["p"] is None for t in c1), c1
    assert any(t["active_as_of"] == 0 for t in c1)  # it did fall silent
    assert fresh["untested"] == len(c1) and fresh["tested"] == len(fresh["tests"]) - len(c1)
    assert fresh["untested_groups"] == ["core C1 (invoices sold, payments received)"]
    line = quiet(fresh)[0]
    assert "too few SMEs to test the feeds of core C1 (invoices sold, payments received)" in line


def test_young_data_tests_nothing_and_says_so() -> None:
    """On data younger than the reference dates (none has a population) the check makes no test:
    it says so, and no line claims that no data feed fell silent."""
    as_of = pd.Timestamp("2023-01-31")
    fresh = checked(sellers(start="2022-12-01"), as_of)
    assert fresh["tests"] == [] and fresh["tested"] == 0 and fresh["references"] == []
    assert fresh["complete"] is False
    (gap,) = fresh["not_checked"]
    assert gap.startswith("every feed: no reference date has a population")
    lines = quiet(fresh)
    assert "no data feed fell silent" not in " ".join(lines)
    assert any(
        a.startswith("UNCHECKED data: the freshness check could not test every feed") for a in lines
    )


def test_skipped_windows_are_said_in_the_actions() -> None:
    """At a mid-month date against month ends, the inventory's monthly snapshots are not compared
    in windows shorter than 1.5 months: every inventory window skipped, and said."""
    tables = sellers(paid=True)
    days = pd.date_range("2023-01-31", FRESH_AS_OF, freq="ME")
    stock = pd.DataFrame(
        [(s, d) for s in tables.enterprises["enterprise_id"][:12] for d in days],
        columns=["sme_id", "snapshot_date"],
    )
    from dataclasses import replace

    from serving.portfolio.monitor import freshness, freshness_doc, freshness_references

    as_of = pd.Timestamp("2024-06-15")
    found = freshness(
        replace(tables, inventory=stock),
        as_of,
        freshness_references(as_of, pd.Timestamp("2024-03-31")),
    )
    fresh = freshness_doc(found, as_of)
    assert not any(t["feed"] == "inventory" for t in fresh["tests"])
    assert any(
        s.startswith("inventory snapshots: the 7/14/30-day windows") for s in fresh["not_checked"]
    )
    assert fresh["complete"] is False
    (unchecked,) = [a for a in quiet(fresh) if a.startswith("UNCHECKED")]
    assert "inventory snapshots: the 7/14/30-day windows" in unchecked


def test_every_feed_tested_is_said_plainly() -> None:
    """When every feed's whole population was tested in every window (and no group is too small)
    the summary says no data feed fell silent, and lists nothing unchecked."""
    tables = sellers(paid=True)
    smes = list(tables.enterprises["enterprise_id"][:12])
    days = pd.date_range("2023-01-01", FRESH_AS_OF, freq="7D")
    stock = pd.DataFrame([(s, d) for s in smes for d in days], columns=["sme_id", "snapshot_date"])
    inv = tables.invoices
    bought = inv.assign(
        invoice_id=inv["invoice_id"] + "b", seller_id="C2", buyer_id=inv["seller_id"]
    )
    from dataclasses import replace

    full = replace(tables, invoices=pd.concat([inv, bought], ignore_index=True), inventory=stock)
    fresh = checked(full)
    assert fresh["complete"] is True and fresh["not_checked"] == [] and fresh["untested"] == 0
    assert fresh["tested"] == len(fresh["tests"]) > 0
    lines = quiet(fresh)
    assert lines == [lines[0]] and lines[0].endswith(", no data feed fell silent.")


# -- the training reference -----------------------------------------------------------------------
def test_a_model_without_training_reference_is_refused(tmp_path) -> None:
    loaded = LoadedModel(train_small_model(seed=5, rounds=5), "m", None, None, str(tmp_path))
    with pytest.raises(ModelLoadFailed, match="carries no training reference"):
        drift_profile(loaded)


def test_the_profile_travels_in_the_bundle(profiled: Profiled) -> None:
    loaded = load_model(profiled.uri, profiled.tracking_uri)
    assert drift_profile(loaded) == profiled.profile
    assert loaded.model.drift_profile == profiled.profile


# -- report writing -------------------------------------------------------------------------------
def bar_chart(chart_id: str) -> str:
    chart = Chart(chart_id, "A <title> & more")
    chart.bars(
        chart.axes[0],
        ["a", "b", "c"],
        [Series("one", [0.1, None, 0.3]), Series("two", [0.2, 0.25, 0.0], whiskers=[None] * 3)],
    )
    return chart.svg()


def test_charts_are_deterministic_offline_and_share_no_id() -> None:
    import re

    first, again, other = bar_chart("chart-a"), bar_chart("chart-a"), bar_chart("chart-b")
    assert first == again  # no date, ids hashed with the chart's id as salt
    assert first.startswith('<svg class="chart" id="chart-a"') and first.rstrip().endswith("</svg>")
    assert 'aria-label="A &lt;title&gt; &amp; more"' in first
    for svg in (first, other):
        assert "<script" not in svg and "<metadata" not in svg and "<?xml" not in svg
        assert not re.search(r'(href|src)="(?!#)', svg) and "url(http" not in svg
        refs = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', svg))
        assert refs <= set(re.findall(r' id="([^"]+)"', svg))  # every reference resolves
    ids_a = re.findall(r' id="([^"]+)"', first)
    ids_b = re.findall(r' id="([^"]+)"', other)
    assert len(ids_a) == len(set(ids_a)) and not set(ids_a) & set(ids_b)
    # one tagged bar per value shown (None draws nothing), with its numbers
    tagged = r'class="bar" data-series="([^"]+)" data-label="([^"]+)" data-value="([^"]+)"'
    bars = re.findall(tagged, first)
    assert bars == [
        ("one", "a", "0.1"), ("one", "c", "0.3"),
        ("two", "a", "0.2"), ("two", "b", "0.25"), ("two", "c", "0.0"),
    ]  # fmt: skip


def test_the_report_page_forbids_scripts_and_external_loads(tmp_path) -> None:
    """The CSP the report declares bites (and the browser helper sees it): an inline script and
    an external image in a report page are blocked and reported; the page without them is
    clean (tests below check every real report for no errors)."""
    bad = tmp_path / "bad.html"
    bad.write_text(page("t", "m", ['<img src="https://example.invalid/x.png"><script>1</script>']))
    good = tmp_path / "good.html"
    good.write_text(page("t", "m", [bar_chart("chart-a"), '<p style="color:red">x</p>']))
    binary = chromium_or_skip()
    with Browser(binary) as browser:
        browser.visit(bad.as_uri(), headers={}, script="JSON.stringify(1)")
        blocked = [e["text"] for e in browser.console]
        browser.visit(good.as_uri(), headers={}, script="JSON.stringify(1)")
        clean = browser.console
    assert len(blocked) == 2 and all("Content Security Policy" in t for t in blocked)
    assert clean == []


def test_publish_leaves_nothing_when_a_step_fails(tmp_path) -> None:
    names = ["r-extra.csv", "r.html", "r.json"]

    def fail(files: list[Path]) -> None:
        assert sorted(f.name for f in files) == names and all(f.exists() for f in files)
        raise RuntimeError("MLflow down")

    with pytest.raises(RuntimeError):
        publish("<html></html>", {"a": 1}, tmp_path / "r.html", extra={"r-extra.csv": "x"},
                before_publish=fail)  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="plain names"):
        publish("<html></html>", {"a": 1}, tmp_path / "r.html", extra={"../r.csv": "x"})
    with pytest.raises(ValueError, match="plain names"):
        publish("<html></html>", {"a": 1}, tmp_path / "r.html", extra={"r.json": "x"})
    assert list(tmp_path.iterdir()) == []
    html_path, json_path = publish(
        "<html></html>", {"a": 1}, tmp_path / "r.html", extra={"r-extra.csv": "x"}
    )
    assert json.loads(json_path.read_text()) == {"a": 1} and html_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert (tmp_path / "r-extra.csv").read_text() == "x"


# -- the command ----------------------------------------------------------------------------------
REPORT_SCRIPT = """
JSON.stringify((() => {
  const marks = (id, kind) => Array.from(document.querySelectorAll(`#${id} .${kind}`)).map(r => ({
    series: r.dataset.series, label: r.dataset.label, value: Number(r.dataset.value),
    width: r.getBoundingClientRect().width, height: r.getBoundingClientRect().height}));
  const bars = (id) => marks(id, 'bar');
  const charts = Array.from(document.querySelectorAll('svg.chart')).map(s => {
    const b = s.getBoundingClientRect(); const st = getComputedStyle(s);
    return {id: s.id, width: b.width, height: b.height, display: st.display,
            visibility: st.visibility};
  });
  const cells = (id) => Array.from(document.querySelectorAll(`#${id} tr`)).slice(1).map(
    tr => Array.from(tr.children).map(c => c.textContent.trim()));
  const heads = (id) => Array.from(document.querySelectorAll(`#${id} th`)).map(
    c => c.textContent.trim());
  return {title: document.title, charts, psi: bars('chart-psi'), grades: bars('chart-grades'),
          realised: bars('chart-realised'), shift: bars('chart-score-shift'),
          performance: marks('chart-performance', 'point'),
          migration: cells('table-migration'), warnings: cells('table-warnings'),
          psiTable: cells('table-psi'), psiHeads: heads('table-psi'),
          segments: cells('table-segments'), realisedTable: cells('table-realised'),
          performanceTable: cells('table-performance'), freshness: cells('table-freshness'),
          actions: Array.from(document.querySelectorAll('#list-actions li')).map(
            li => li.textContent),
          sections: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
          ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
          external: document.querySelectorAll(
            'script, link[href], img[src], iframe').length};
})())
"""

MONITOR_SECTIONS = [
    "Summary",
    "What to do",
    "Data freshness",
    "Population stability, ranked by effect on the score",
    "What moved the score",
    "Segments: industries and core enterprises' SMEs",
    "Estimated performance before labels mature",
    "Realised default rate by grade",
    "Grade distribution",
    "Early warning",
]


def visit_report(path: Path, screenshot: Path) -> dict[str, Any]:
    """The report as headless Chromium shows it; no console or CSP error on the way."""
    binary = chromium_or_skip()
    with Browser(binary) as browser:
        page = browser.visit(path.resolve().as_uri(), headers={}, script=REPORT_SCRIPT,
                             screenshot=screenshot)  # fmt: skip
        assert browser.console == []
    assert page["external"] == 0 and len(page["ids"]) == len(set(page["ids"]))
    assert all(s in page["sections"] for s in MONITOR_SECTIONS), page["sections"]
    for chart in page["charts"]:
        assert chart["width"] > 300 and chart["height"] > 150, chart
        assert chart["display"] != "none" and chart["visibility"] == "visible"
    return dict(page)


def assert_freshness_shown(page: dict[str, Any], doc: dict[str, Any]) -> None:
    """The report's freshness table is the JSON's: every test of the whole population (every
    feed, every window) and every group's test at act, with its counts and signal."""
    fresh = doc["freshness"]
    shown = [t for t in fresh["tests"] if t["kind"] == "population" or t["signal"] == "act"]
    assert {t["feed"] for t in shown} == {f["feed"] for f in fresh["feeds"]}
    assert [(r[0], r[2], r[3], r[4], r[5], r[-1]) for r in page["freshness"]] == [
        (
            t["text"],
            str(t["window_days"]),
            f"{t['active_as_of']} of {t['n_as_of']} "
            f"({100 * t['active_as_of'] / t['n_as_of']:.0f}%)",
            t["reference"],
            f"{t['active_compare']} of {t['n_compare']} "
            f"({100 * t['active_compare'] / t['n_compare']:.0f}%)",
            t["signal"],
        )
        for t in shown
    ]


def test_monitor_command_writes_report_json_and_mlflow_run(
    tmp_path, monkeypatch, profiled: Profiled
) -> None:
    out = tmp_path / "reports" / "monitor.html"
    result = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "monitor", "--data", str(profiled.data), "--as-of", "2023-12-31", "--out", str(out),
        "--model", profiled.uri, "--pd-threshold", "0.02",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["monitor.html", "monitor.json"]
    assert doc["as_of"] == "2023-12-31" and doc["compare"] == "2023-09-30"
    assert doc["model"]["uri"] == profiled.uri
    names = [f["name"] for f in doc["psi"]["features"]]
    assert sorted(names) == sorted(b.name for b in profiled.profile.features)
    signals = ("stable", "watch", "act", "time-like", "filled-in", "window-filling", "negligible")
    assert doc["psi"]["band_counts"] == {
        b: sum(f["signal"] == b for f in doc["psi"]["features"]) for b in signals
    }
    for f in doc["psi"]["features"]:
        # a counted signal is the PSI band of a feature that is not time-like and matters (the
        # lower of it and its like-coverage band, when its training windows were mostly partial)
        if f["signal"] in ("watch", "act"):
            assert not f["time_like"] and f["attribution_share"] >= 0.02
            like = f["psi_like_coverage"]
            assert f["band"] == f["signal"] or (like is not None and like <= 0.25), f
        if f["signal"] == "filled-in":  # only the missing share fell; the values as trained
            assert f["actual_missing"] < f["expected_missing"] and f["psi_present"] < 0.1
        if f["signal"] == "window-filling":  # drifted, but not on like window coverage
            assert f["band"] != "stable" and f["psi_like_coverage"] < 0.1
            assert f["training_full_share"] < 0.5
    assert doc["psi"]["coverage"].startswith(f"{profiled.profile.rows:,} training rows")
    time_like = {f["name"] for f in doc["psi"]["features"] if f["signal"] == "time-like"}
    assert time_like == {"firm_age_years", "months_since_first_invoice", "financials_age_days"}
    # the features' mean point changes add up to the mean score's change
    shift = doc["score_shift"]
    assert shift["change"] == pytest.approx(
        shift["mean_score_as_of"] - shift["mean_score_compare"], abs=1e-6
    )
    assert doc["actions"]
    grades = doc["grade_distribution"]
    assert sum(g["count_as_of"] for g in grades) == doc["population"]["as_of"]
    counts = np.array(doc["migration"]["counts"])
    n_grades = len(grades)
    # every SME of the comparison date is in one row; every SME of the as-of date in one column
    assert counts[:n_grades].sum() == doc["population"]["compare"]
    assert counts[:, :n_grades].sum() == doc["population"]["as_of"]
    ew = doc["early_warning"]
    assert ew["pd_threshold"] == 0.02 and ew["count"] == len(ew["smes"]) > 0
    for s in ew["smes"]:
        assert ("PD crossed" in s["rule"] and s["pd_now"] >= 0.02) or s["notches_down"] >= 2
        assert 1 <= len(s["reasons"]) <= 4 and all(r["points"] < 0 for r in s["reasons"])
        for d in s["drivers"]:
            assert d["change"] < 0
            assert d["change"] == pytest.approx(d["points_now"] - d["points_before"])
    realised = doc["realised_by_grade"]
    assert realised["cohort"] == "2022-12-31" and realised["grades"]
    assert sum(g["n"] for g in realised["grades"]) > 0

    client = client_for(profiled.tracking_uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # the UI opens on runs
    runs = client.search_runs([experiment.experiment_id])
    run = next(r for r in runs if r.info.run_id in result.output)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["psi_score"] == pytest.approx(doc["psi"]["score"]["psi"])
    assert run.data.metrics["freshness_act"] == doc["freshness"]["act"]
    assert run.data.params["as_of"] == "2023-12-31"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"monitor.html", "monitor.json"}

    page = visit_report(out, tmp_path / "monitor.png")
    assert page["title"] == "Portfolio monitoring 2023-12-31"
    assert {c["id"] for c in page["charts"]} == {
        "chart-psi", "chart-score-shift", "chart-grades", "chart-realised"
    }  # fmt: skip
    # what was only in the JSON is on the page: the actions, the drift ranking with attribution
    # shares, the score's decomposition, the segments, Jeffreys per grade, what changed per SME
    assert page["actions"] == doc["actions"]
    assert "attribution share" in page["psiHeads"] and "signal" in page["psiHeads"]
    share = page["psiHeads"].index("attribution share")
    assert [(r[0], r[share]) for r in page["psiTable"]] == [
        (f["name"], f"{100 * f['attribution_share']:.1f}%") for f in doc["psi"]["features"]
    ]
    like = page["psiHeads"].index("missing on like coverage")
    assert [r[like] for r in page["psiTable"]] == [
        "–" if f["missing_like_coverage"] is None else f"{100 * f['missing_like_coverage']:.1f}%"
        for f in doc["psi"]["features"]
    ]
    assert_freshness_shown(page, doc)
    assert [(b["label"], b["value"]) for b in page["shift"]] == [
        (m["name"], m["points_change"]) for m in doc["score_shift"]["by_feature"]
    ]
    assert [(r[0], r[1], r[3]) for r in page["segments"]] == [
        (g["kind"], g["segment"], g["signal"]) for g in doc["segments"]["segments"]
    ]
    assert [r[-1] for r in page["realisedTable"]] == [
        "pass" if g["jeffreys_pass"] else "FAIL" for g in realised["grades"] if g["n"]
    ]
    for row, s in zip(page["warnings"], ew["smes"], strict=True):
        assert all(d["feature"] in row[-1] for d in s["drivers"])
    assert any(s["drivers"] for s in ew["smes"])
    # the chart's numbers are the JSON's: the score, then the features with the highest PSI
    shown = [("score", doc["psi"]["score"]["psi"])] + [
        (f["name"], f["psi"]) for f in doc["psi"]["features"][: len(page["psi"]) - 1]
    ]
    assert [(b["label"], b["value"]) for b in page["psi"]] == shown
    assert all(b["width"] > 0 for b in page["psi"] if b["value"] > 0.005)
    by_series = {(b["series"], b["label"]): b["value"] for b in page["grades"]}
    for g in grades:
        assert by_series[(doc["as_of"], g["grade"])] == g["share_as_of"]
        assert by_series[(doc["compare"], g["grade"])] == g["share_compare"]
    migration = [[int(c) for c in row[1:-1]] for row in page["migration"]]
    assert migration == doc["migration"]["counts"]
    assert [row[0] for row in page["warnings"]] == [s["sme_id"] for s in ew["smes"]]
    realised_bars = {(b["series"], b["label"]): b["value"] for b in page["realised"]}
    for g in realised["grades"]:
        if g["n"]:
            assert realised_bars[("mean predicted PD", g["grade"])] == g["mean_pd"]


@pytest.mark.parametrize("case", ["reference", "empty", "broken", "compare", "threshold"])
def test_monitor_bad_input_exits_nonzero_and_writes_nothing(
    tmp_path, monkeypatch, profiled: Profiled, case: str
) -> None:
    data, as_of, model, extra = profiled.data, "2023-12-31", profiled.uri, []
    if case == "reference":
        model = str(model_without_reference(tmp_path / "model"))
    elif case == "empty":
        data, as_of = empty_population_folder(tmp_path / "data"), "2021-12-31"
    elif case == "broken":
        data = broken_folder(tmp_path / "data")
    elif case == "compare":
        extra = ["--compare", "2024-01-31"]
    else:
        extra = ["--pd-threshold", "1.5"]
    out = tmp_path / "reports" / "monitor.html"
    client = client_for(profiled.tracking_uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    before = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    result = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "monitor", "--data", str(data), "--as-of", as_of, "--out", str(out), "--model", model,
        *extra,
    )  # fmt: skip
    assert result.exit_code == (2 if case == "threshold" else 1), result.output
    expected = {
        "reference": f"carries no training reference for drift monitoring ({PROFILE_ARTIFACT}",
        "empty": "as-of date 2021-12-31: no SME is in the population",
        "broken": "invoices, line 2 (data row 1), column amount",
        "compare": "must be before the as-of date",
        "threshold": "expected a PD strictly between 0 and 1",
    }[case]
    assert expected in result.output
    assert not out.parent.exists()
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    after = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    assert after == before


def test_a_month_without_matured_labels_has_no_cohort_and_no_realised_rates(
    profiled: Profiled,
) -> None:
    """A month whose labels have not matured: drift only. (That the score's PSI is stable on
    data from the training process is tested on the 800-SME twin a year after its training
    months, test_segments. This fixture's months are all in the data's first year, where every
    SME's history is months old and grows month by month, so one month's scores differ from the
    pooled training months by construction: score PSI 0.25-0.34 at 2022-06..12 once windowed
    rates divide by the days of history they cover; 0.21 at 2022-09 before.)"""
    from features.io import load_tables
    from serving.portfolio.monitor import monitor

    loaded = load_model(profiled.uri, profiled.tracking_uri)
    result = monitor(load_tables(profiled.data), loaded, profiled.profile, "2022-09-30")
    score_psi = float(result.psi.loc[result.psi["name"] == SCORE, "psi"].iloc[0])
    assert np.isfinite(score_psi) and score_psi >= 0
    assert result.cohort is None and result.realised is None


def test_like_coverage_sees_the_training_histories_and_real_drift(profiled: Profiled) -> None:
    """The training months of this 24-month simulation hold only partly covered 365-day windows.
    `cut_history` gives data as if they had begun h days before the as-of date (no SME's history
    longer than h; loans and statements kept); on the pooled cuts the windowed rates compare with
    training like for like and do not drift, while on the full windows PSI alone would alarm. On
    data where SMEs really dispute more of last year's invoices, or hold more stock, the
    like-coverage comparison still drifts ('act'), and the monitor counts it at act."""
    from dataclasses import replace

    from features.drift import history_days, psi_band, psi_table
    from features.io import load_tables
    from features.pipeline import build_features
    from serving.portfolio.monitor import cut_history, like_coverage_psi, monitor, summary

    profile = profiled.profile
    coverage = profile.coverage
    assert coverage is not None and coverage.rows == profile.rows
    names = ["dispute_rate_365d", "ap_late_rate_365d", "ap_days_beyond_terms_365d"]
    assert all(coverage.partial(n) for n in names)
    tables = load_tables(profiled.data)
    as_of = pd.Timestamp("2023-12-31")
    h = coverage.history_days[2]
    cut = cut_history(tables, as_of - pd.Timedelta(days=h - 1))
    assert len(cut.loans) == len(tables.loans) and len(cut.financials) == len(tables.financials)
    assert 0 < len(cut.invoices) < len(tables.invoices)
    assert (cut.invoices["issue_date"] > as_of - pd.Timedelta(days=h)).all()
    rows = build_features(cut, [as_of])
    assert (history_days(rows["months_since_first_invoice"]) <= h).all()

    now = build_features(tables, [as_of])
    full = psi_table(profile, now[names]).set_index("name")["psi"]
    like = like_coverage_psi(tables, profile, as_of, now["sme_id"], names, 365)
    assert set(like) == set(names)
    assert all(psi_band(like[n]) == "stable" for n in names), like
    assert full.max() > 0.25 and all(like[n] < full[n] for n in names), (full, like)

    rng = np.random.default_rng(0)
    invoices = tables.invoices.copy()
    recent = invoices["issue_date"] > as_of - pd.Timedelta(days=365)
    invoices.loc[recent & (rng.random(len(invoices)) < 0.25), "disputed"] = True
    disputes = replace(tables, invoices=invoices)
    worse = like_coverage_psi(disputes, profile, as_of, now["sme_id"], names[:1], 365)
    assert psi_band(worse["dispute_rate_365d"]) == "act", worse
    # end to end: SMEs' stock piles up (three times the inventory of last year's snapshots);
    # the model's inventory turnover falls on like coverage too, and the monitor counts it
    inventory = tables.inventory.copy()
    recent = inventory["snapshot_date"] > as_of - pd.Timedelta(days=365)
    inventory.loc[recent, "inventory_value"] *= 3.0
    loaded = load_model(profiled.uri, profiled.tracking_uri)
    doc = summary(monitor(replace(tables, inventory=inventory), loaded, profile, as_of))
    found = {f["name"]: f for f in doc["psi"]["features"]}
    turnover = found["inventory_turnover_180d"]
    assert coverage.partial("inventory_turnover_180d") and turnover["attribution_share"] >= 0.02
    assert turnover["signal"] == "act" and turnover["psi_like_coverage"] > 0.25, turnover
    assert any(a.startswith("ACT: inventory_turnover_180d") for a in doc["actions"])


def test_an_old_profile_without_coverage_is_monitored_as_before(profiled: Profiled) -> None:
    """A bundle whose profile predates the coverage record: windowed features judged on their PSI
    alone (no window-filling), and the summary says the coverage is unknown."""
    from dataclasses import replace

    from features.io import load_tables
    from serving.portfolio.monitor import monitor, summary

    loaded = load_model(profiled.uri, profiled.tracking_uri)
    old = replace(profiled.profile, coverage=None)
    doc = summary(monitor(load_tables(profiled.data), loaded, old, "2023-12-31"))
    assert doc["psi"]["coverage"].startswith("unknown")
    assert doc["psi"]["band_counts"]["window-filling"] == 0
    assert all(f["psi_like_coverage"] is None for f in doc["psi"]["features"])
    windowed = [f for f in doc["psi"]["features"] if f["signal"] in ("watch", "act")]
    windowed = [f for f in windowed if f["window_days"] is not None]
    assert windowed  # this fixture's full windows drift from its partial training windows
    for f in windowed:
        line = next(a for a in doc["actions"] if f": {f['name']} drifted" in a)
        assert "training window coverage is unknown" in line


def test_a_model_trained_with_a_180_day_horizon_is_monitored_with_180_days(
    profiled: Profiled, tmp_path: Path
) -> None:
    """The label horizon travels in the bundle: saved and loaded back, a 180-day model's matured
    cohort is the one 180 days back, not 365."""
    from dataclasses import replace

    from features.io import load_tables
    from features.pipeline import data_range
    from serving.portfolio.monitor import monitor
    from training.model import ScoringModel

    loaded = load_model(profiled.uri, profiled.tracking_uri)
    short = replace(loaded.model, horizon_days=180)
    short.save(tmp_path / "bundle")
    reloaded = ScoringModel.load(tmp_path / "bundle")
    assert reloaded.horizon_days == 180
    tables = load_tables(profiled.data)
    as_of = "2023-06-30"
    start, _ = data_range(tables)
    result = monitor(tables, replace(loaded, model=reloaded), profiled.profile, as_of)
    assert result.cohort == matured_cohort(as_of, start, 180)
    assert result.cohort != matured_cohort(as_of, start, 365)
    assert "within 180 days" in result.realised_note
    # the 365-day model, on the same data and date, uses its own horizon
    default = monitor(tables, loaded, profiled.profile, as_of)
    assert default.cohort == matured_cohort(as_of, start, 365)


def test_monthly_command_writes_one_folder_of_reports(
    tmp_path, monkeypatch, profiled: Profiled
) -> None:
    out = tmp_path / "month"
    result = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "monthly", "--data", str(profiled.data), "--as-of", "2023-12-31", "--out", str(out),
        "--model", profiled.uri,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["scores.parquet", "monitor.html", "monitor.json", "early_warnings.csv", "performance.csv"]
    )
    doc = json.loads((out / "monitor.json").read_text())
    assert doc["kind"] == "monthly" and doc["actions"]
    perf = pd.read_csv(out / "performance.csv")
    assert len(perf) == 24  # every month end of the data up to the as-of date
    assert perf["mature"].sum() == 12 and perf.loc[perf["mature"], "auc_realised"].notna().all()
    # months inside the training window show plain CBPE; the others say how they were estimated
    method = doc["performance"]["method"]
    assert (perf.loc[perf["role"] == "trained", "interval"] == "sampling").all()
    assert (perf.loc[~perf["mature"], "interval"] == method["interval"]).all()
    judged = perf[perf["mature"] & (perf["role"] != "trained")]  # each without its own labels
    assert set(judged["interval"]) <= {"recalibrated-leave-out", "sampling"}
    assert ((judged["interval"] == "sampling") == (judged["reference_months"] == 0)).all()
    note = doc["performance"]["note"]
    if method["interval"] == "sampling":
        assert "NOT corrected" in note
    else:
        assert f"fitted on {method['reference_months']} matured months" in note
    # the report shows the estimated performance per month, realised where mature
    months = doc["performance"]["months"]
    assert [m["as_of"] for m in months] == perf["as_of"].tolist()
    page = visit_report(out / "monitor.html", tmp_path / "monthly.png")
    assert "chart-performance" in {c["id"] for c in page["charts"]}
    assert [r[0] for r in page["performanceTable"]] == perf["as_of"].tolist()
    assert_freshness_shown(page, doc)
    assert [r[2] for r in page["performanceTable"]] == [
        "yes" if m else "no" for m in perf["mature"]
    ]
    assert [r[3].split("; ")[1] for r in page["performanceTable"]] == perf["interval"].tolist()
    realised_points = [p for p in page["performance"] if p["series"] == "default rate realised"]
    assert [(p["label"], p["value"]) for p in realised_points] == [
        (m["as_of"], m["default_rate"]["realised"]) for m in months if m["mature"]
    ]
    warnings = pd.read_csv(out / "early_warnings.csv")
    assert len(warnings) == doc["early_warning"]["count"]
    # numbers are rounded for people: no 16-digit PDs
    assert all(len(str(v).split(".")[-1]) <= 4 for v in warnings["pd_now"])
    # a second run into the same, now full, folder is refused and changes nothing
    again = cli(
        tmp_path, monkeypatch, profiled.tracking_uri,
        "monthly", "--data", str(profiled.data), "--as-of", "2023-12-31", "--out", str(out),
        "--model", profiled.uri,
    )  # fmt: skip
    assert again.exit_code == 1 and "not an empty folder" in again.output


def test_the_report_says_what_the_freshness_check_could_not_test() -> None:
    """The report's freshness section counts the tests made and untested, and names the feeds
    not checked and the groups too small to test; an untested test reads untested."""
    from serving.portfolio.report import _freshness_section

    fresh = checked(sellers(200, core_smes=6))
    html = _freshness_section({"freshness": fresh})
    assert f"{fresh['tested']} tested, {fresh['untested']} untested" in html
    assert "Not tested: invoices bought: no SME of the population had one" in html
    assert "Too few SMEs to test: core C1 (invoices sold, payments received)." in html


def test_the_monitor_completes_on_smes_that_only_sell_with_no_inventory(
    profiled: Profiled,
) -> None:
    """Contract-valid data where SMEs only sell to cores, no core pays (no payment recorded)
    and no inventory snapshot is delivered: the monitor ran into a ValueError in the freshness
    check (a per-core feed with no record with a core), so `scf-risk monitor` died with a
    traceback. It completes, tests the feed it can (invoices sold) and says which it could not,
    in the JSON and in the actions."""
    from dataclasses import replace

    from features.io import load_tables
    from serving.portfolio.monitor import monitor, summary

    tables = load_tables(profiled.data)
    role = tables.enterprises.set_index("enterprise_id")["role"]
    inv = tables.invoices
    sold = (inv["seller_id"].map(role) == "sme") & (inv["buyer_id"].map(role) == "core")
    inv = inv[sold].assign(paid_date=pd.NaT, paid_amount=np.nan).reset_index(drop=True)
    thin = replace(tables, invoices=inv, inventory=tables.inventory.iloc[:0])
    loaded = load_model(profiled.uri, profiled.tracking_uri)
    doc = summary(monitor(thin, loaded, profiled.profile, "2022-09-30"))
    fresh = doc["freshness"]
    assert {t["feed"] for t in fresh["tests"]} == {"invoices_sold"}
    assert fresh["complete"] is False and fresh["tested"] > 0
    for text in ("invoices bought", "payments received", "payments made", "inventory snapshots"):
        assert any(s.startswith(f"{text}: no SME of the population") for s in fresh["not_checked"])
    (line,) = [a for a in doc["actions"] if a.startswith("UNCHECKED data: ")]
    assert "inventory snapshots" in line and "payments received" in line
    assert not any("no data feed fell silent" in a for a in doc["actions"])
