"""HTML reports of the portfolio view: one self-contained file, charts as inline SVG.

Nothing external is referenced (no scripts, fonts, images or stylesheets), so a report opens
offline and can be archived as it is; the page declares so in its Content-Security-Policy
(`REPORT_CSP`: nothing may load, no script may run; inline styles only). Every page is rendered
from the JSON summary written beside it, so the two always show the same numbers. Charts are
matplotlib figures (`serving.portfolio.charts`), whose bars carry their numbers in
``data-series``, ``data-label`` and ``data-value`` attributes.

`publish` writes the HTML, the JSON and any extra files (the backtest's full list of defaulters)
atomically (temporary files in the target folder, then renames), optionally handing the finished
files to a callback (the MLflow run) first: when anything fails, nothing is left at the target
paths.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from serving.portfolio.charts import BAND_COLORS, PALETTE, Chart, Series
from serving.portfolio.charts import escape as _e

__all__ = [
    "REPORT_CSP",
    "defaulters_path_for",
    "json_path_for",
    "publish",
    "render_backtest",
    "render_monitor",
]

REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'"
)


def pct(value: float | None, digits: int = 2) -> str:
    """A share as a percentage ("–" for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100.0 * value:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


# -- page parts -----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.meta{color:#555;font-size:13px}.note{color:#555;font-size:13px;max-width:900px}
.band-stable{color:#2e7d32;font-weight:600}.band-watch{color:#b58100;font-weight:600}
.band-act{color:#c62828;font-weight:600}
.band-time-like,.band-filled-in,.band-window-filling,.band-negligible{color:#777}
.band-untested{color:#b58100;font-style:italic}
.chart{display:block;margin:8px 0}
.kpi{display:inline-block;margin:4px 18px 4px 0}.kpi b{font-size:20px;display:block}
ul.reasons{margin:0;padding-left:16px;text-align:left}
"""


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    table_id: str,
    left: int = 1,
    raw: bool = False,
) -> str:
    """An HTML table; the first `left` columns align left. With `raw`, cells are HTML already."""
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(headers)
    )
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="{"l" if i < left else ""}">{c if raw else _e(c)}</td>'
            for i, c in enumerate(r)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="{_e(table_id)}"><tr>{head}</tr>{"".join(body)}</table>'


def page(title: str, meta: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="meta">{meta}</p>{"".join(sections)}</body></html>'
    )


def _band_text(band: str, text: str) -> str:
    """`text` in the colour of `band` (stable, watch, act, time-like, filled-in, window-filling,
    negligible)."""
    return f'<span class="band-{_e(band)}">{_e(text)}</span>'


def _band(band: str) -> str:
    return _band_text(band, band)


def _listed(items: Sequence[str]) -> str:
    """A compact list in a table cell ("–" when empty); `items` are HTML already."""
    if not items:
        return "–"
    return f'<ul class="reasons">{"".join(f"<li>{i}</li>" for i in items)}</ul>'


def _reasons(reasons: Sequence[dict[str, Any]]) -> str:
    return _listed(
        [
            f"{_e(r['text'])} = {_e(r.get('value_text') or '–')} ({num(r.get('points'), 1)} points)"
            for r in reasons
        ]
    )


def _model_line(model: dict[str, Any]) -> str:
    return (
        f"model {_e(model.get('name'))} version {_e(model.get('version'))} "
        f"(run {_e(model.get('run_id'))}, {_e(model.get('uri'))})"
    )


def _signed_colors(values: Sequence[float]) -> list[str]:
    return [BAND_COLORS["act"] if v < 0 else BAND_COLORS["stable"] for v in values]


def _kpis(items: Sequence[tuple[str, object]]) -> str:
    return "".join(f'<span class="kpi">{label}<b>{value}</b></span>' for label, value in items)


# -- the monitoring report ------------------------------------------------------------------------
PSI_CHART_ROWS = 30


def render_monitor(doc: dict[str, Any]) -> str:
    """The monitoring report of a `serving.portfolio.monitor.summary` document (and of the
    monthly run's, which adds the estimated performance)."""
    psi = doc["psi"]
    segments = doc["segments"]["segments"]
    sections = [
        "<h2>Summary</h2>"
        + _kpis(
            (
                ("SMEs scored", f"{doc['population']['as_of']:,}"),
                ("mean PD", pct(doc["mean_pd"]["as_of"])),
                ("score PSI", f"{num(psi['score']['psi'])} {_band(psi['score']['band'])}"),
                ("features to act on", psi["band_counts"]["act"]),
                ("features to watch", psi["band_counts"]["watch"]),
                ("segments to act on", sum(s["signal"] == "act" for s in segments)),
                ("segments to watch", sum(s["signal"] == "watch" for s in segments)),
                ("early warnings", doc["early_warning"]["count"]),
                ("data feeds to act on", doc["freshness"]["act"] if "freshness" in doc else "–"),
            )
        ),
        "<h2>What to do</h2>"
        + '<ol id="list-actions">'
        + "".join(f"<li>{_e(a)}</li>" for a in doc["actions"])
        + "</ol>",
        _freshness_section(doc),
        _stability_section(doc),
        _score_shift_section(doc),
        _segments_section(doc),
        _performance_section(doc),
        _realised_section(doc),
        _grades_section(doc),
        f"<h2>Rating migration {_e(doc['compare'])} → {_e(doc['as_of'])}</h2>"
        f'<p class="note">Rows: grade at {_e(doc["compare"])} ((new): entered the population '
        f"since); columns: grade at {_e(doc['as_of'])} ((defaulted): a loan default in between; "
        f"(left): no longer in the population). Of the SMEs scored at both dates, "
        f"{doc['migration']['upgraded']} moved to a better grade, {doc['migration']['unchanged']} "
        f"kept their grade and {doc['migration']['downgraded']} moved to a worse one.</p>"
        + _migration_table(doc["migration"]),
        _warnings_section(doc),
    ]
    meta = (
        f"As of {_e(doc['as_of'])}, compared with {_e(doc['compare'])}. "
        f"{_model_line(doc['model'])}."
    )
    return page(f"Portfolio monitoring {doc['as_of']}", meta, sections)


def _stability_section(doc: dict[str, Any]) -> str:
    psi = doc["psi"]
    feats = psi["features"]
    shown = feats[:PSI_CHART_ROWS]
    rows = [{"name": "score", "psi": psi["score"]["psi"], "band": psi["score"]["band"]}, *shown]
    chart = Chart(
        "chart-psi",
        "PSI against the training reference",
        height=0.9 + 0.17 * len(rows),
    )
    ax = chart.axes[0]
    chart.bars(
        ax,
        [r["name"] for r in rows],
        [
            Series(
                "PSI",
                [float(r["psi"]) for r in rows],
                bar_colors=[BAND_COLORS[r["band"]] for r in rows],
            )
        ],
        fmt=lambda v: f"{v:.3f}",
        horizontal=True,
        cap=1.0,
        value_text=True,
    )
    for mark in (0.1, 0.25):
        ax.axvline(mark, color="#555", linestyle="--", linewidth=0.8)
    ax.set_xlabel("PSI (dashed: 0.1 watch, 0.25 act)")
    return (
        "<h2>Population stability, ranked by effect on the score</h2>"
        f'<p class="note">PSI = Σ (actual − expected)·ln(actual / expected) over the training '
        f"bins: {_e(psi['binning'])}. Bands: stable &lt; 0.1, watch 0.1–0.25, act &gt; 0.25. "
        f"Training reference: {psi['training_rows']:,} rows, as of "
        f"{_e(psi['training_as_of'][0])} to {_e(psi['training_as_of'][1])}; window coverage: "
        f"{_e(psi.get('coverage', 'unknown'))}. Signals: {_e(psi['signals'])}. The chart "
        f"shows the score and the {len(shown)} features ranked "
        "first (axis cut at 1: longer bars run to its end, their value printed); the table lists "
        "all, with each feature's share of the model's attributions and its mean point change "
        f"since {_e(doc['compare'])}.</p>"
        + chart.svg()
        + table(
            [
                "feature",
                "kind",
                "signal",
                "PSI",
                "band",
                "PSI on like coverage",
                "attribution share",
                "impact (PSI × share)",
                "points change",
                "missing (training)",
                "missing (now)",
                "missing on like coverage",
            ],
            [
                [
                    _e(f["name"]),
                    _e(f["kind"]),
                    _band(f["signal"]),
                    num(f["psi"], 4),
                    _band(f["band"]),
                    num(f.get("psi_like_coverage"), 4),
                    pct(f["attribution_share"], 1),
                    num(f["impact"], 4),
                    _signed(f["points_change"]),
                    pct(f["expected_missing"], 1),
                    pct(f["actual_missing"], 1),
                    pct(f.get("missing_like_coverage"), 1),
                ]
                for f in feats
            ],
            table_id="table-psi",
            left=2,
            raw=True,
        )
    )


def _freshness_section(doc: dict[str, Any]) -> str:
    """The data freshness check: every test of the whole population, then every group's test
    at act (a table per reading: the population's feeds, then what stopped where)."""
    fresh = doc.get("freshness")
    if fresh is None:
        return ""
    tests = fresh["tests"]
    shown = [t for t in tests if t["kind"] == "population" or t["signal"] == "act"]
    cadence = "; ".join(
        f"{f['text']} every {num(f['cadence_days'], 0)} days" for f in fresh["feeds"]
    )
    gaps = fresh.get("not_checked", fresh["skipped"])
    skipped = f" Not tested: {_e('; '.join(gaps))}." if gaps else ""
    groups = fresh.get("untested_groups") or []
    if groups:
        skipped += f" Too few SMEs to test: {_e('; '.join(groups))}."
    counted = (
        f"{fresh['tested']} tested, {fresh['untested']} untested"
        if "tested" in fresh
        else f"of {len(tests)}"
    )

    def group(t: dict[str, Any]) -> str:
        if t["kind"] == "core":
            return f"SMEs trading with core {t['group']}"
        if t["kind"] == "industry":
            return f"industry {t['group']}"
        return "population"

    def share(active: int, n: int) -> str:
        return f"{active} of {n} ({pct(active / n if n else None, 0)})"

    return (
        "<h2>Data freshness</h2>"
        f'<p class="note">A feed that stops shows as SMEs without a record: per feed, the SMEs '
        f"of the population expected in it and how many had a record in the last "
        f"{'/'.join(str(w) for w in fresh['windows'])} days at {_e(fresh['as_of'])}, against "
        f"the same at a reference date. Method: {_e(fresh['method'])}. Reference: "
        f"{_e(fresh['reference_note'])}. Typical gap between an SME's records: {_e(cadence)}."
        f"{skipped} The table lists every test of the whole population and every industry's "
        f"or core's test at act ({fresh['act']} at act in all; {counted}).</p>"
        + table(
            [
                "feed",
                "SMEs",
                "window (days)",
                f"with a record at {fresh['as_of']}",
                "reference date",
                "with a record then",
                "silent share rise",
                "q",
                "signal",
            ],
            [
                [
                    _e(t["text"]),
                    _e(group(t)),
                    str(t["window_days"]),
                    share(t["active_as_of"], t["n_as_of"]),
                    _e(t["reference"]),
                    share(t["active_compare"], t["n_compare"]),
                    _signed(100.0 * t["rise"]) + " pts",
                    "–" if t["q"] is None else f"{t['q']:.2g}",
                    _band(t["signal"]),
                ]
                for t in shown
            ],
            table_id="table-freshness",
            left=2,
            raw=True,
        )
    )


def _signed(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _score_shift_section(doc: dict[str, Any]) -> str:
    shift = doc["score_shift"]
    movers = shift["by_feature"]
    body = (
        f'<p class="note">Mean score {num(shift["mean_score_compare"], 1)} on '
        f"{_e(doc['compare'])}, {num(shift['mean_score_as_of'], 1)} on {_e(doc['as_of'])}: "
        f"{_signed(shift['change'])} points; {_e(shift['note'])}. The score's PSI against "
        f"training is {num(doc['psi']['score']['psi'])} ({_band(doc['psi']['score']['band'])}).</p>"
    )
    if movers:
        values = [float(m["points_change"]) for m in movers]
        chart = Chart(
            "chart-score-shift",
            f"Mean point change by feature, {doc['compare']} → {doc['as_of']}",
            height=0.9 + 0.22 * len(movers),
        )
        chart.bars(
            chart.axes[0],
            [m["name"] for m in movers],
            [Series("points change", values, bar_colors=_signed_colors(values))],
            fmt=lambda v: f"{v:+.2f}",
            horizontal=True,
            value_text=True,
        )
        chart.axes[0].axvline(0, color="#333", linewidth=0.8)
        chart.axes[0].set_xlabel("points (negative: riskier)")
        body += chart.svg() + table(
            ["feature", "points change"],
            [[m["name"], _signed(m["points_change"], 2)] for m in movers],
            table_id="table-score-shift",
        )
    return "<h2>What moved the score</h2>" + body


def _segments_section(doc: dict[str, Any]) -> str:
    seg = doc["segments"]
    rows = [
        [
            _e(s["kind"]),
            _e(s["segment"]),
            s["n"],
            _band(s["signal"]),
            num(s["odds_ratio"], 2),
            _signed(s["score_change"]),
            num(s["score_q"], 4),
            f"{s['adverse_features']} ({s['large_features']} large)",
            ", ".join(f"{_e(m['feature'])} ({m['effect']:+.1f} sd)" for m in s["moved"]) or "–",
            ", ".join(f"{_e(d['feature'])} ({d['points_change']:+.1f})" for d in s["drivers"])
            or "–",
        ]
        for s in seg["segments"]
    ]
    baseline = f"since {_e(seg['baseline'])}" if seg["baseline"] else "(no baseline)"
    return (
        "<h2>Segments: industries and core enterprises' SMEs</h2>"
        f'<p class="note">{_e(seg["note"])}. Method: {_e(seg["method"])}. Changes {baseline}; '
        "odds ratio: the segment's odds of default against the rest's (above 1: riskier).</p>"
        + table(
            [
                "kind",
                "segment",
                "SMEs",
                "signal",
                "odds ratio",
                "score change",
                "score q",
                "measures riskier",
                "moved features",
                "points fallen most",
            ],
            rows,
            table_id="table-segments",
            left=2,
            raw=True,
        )
    )


PERFORMANCE_METRICS: tuple[tuple[str, str, Callable[[float | None], str]], ...] = (
    ("default_rate", "default rate", lambda v: pct(v, 2)),
    ("auc", "AUC", lambda v: num(v, 3)),
    ("ece", "ECE", lambda v: num(v, 4)),
)


PERFORMANCE_ROLES: dict[str, str] = {
    "trained": "training window",
    "overlap": "after training (embargo)",
    "unseen": "out of time",
    "unknown": "model's window unknown",
}


def _not_trained(by_role: dict[str, list[int]]) -> tuple[int, int]:
    """(inside, months) summed over the roles of months the model did not train on."""
    pairs = [by_role[r] for r in ("overlap", "unseen") if r in by_role]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def _performance_section(doc: dict[str, Any]) -> str:
    perf = doc.get("performance")
    head = "<h2>Estimated performance before labels mature</h2>"
    if perf is None:
        return (
            head + '<p class="note">Not estimated by this run: <code>scf-risk monthly</code> '
            "estimates the default rate, AUC and calibration of every month whose labels have not "
            "matured, and sets the realised values beside them once they have.</p>"
        )
    months = perf["months"]
    chart = Chart(
        "chart-performance",
        f"Estimated ({perf['level']:.0%} interval) and realised, by month end",
        rows=2,
        height=4.6,
    )
    x = list(range(len(months)))
    for ax, (metric, label, fmt) in zip(chart.axes, PERFORMANCE_METRICS[:2], strict=True):
        est = [m[metric] for m in months]
        ax.fill_between(
            x,
            [_nan(e["low"]) for e in est],
            [_nan(e["high"]) for e in est],
            color=PALETTE[0],
            alpha=0.18,
            linewidth=0,
            label=f"{perf['level']:.0%} interval",
        )
        ax.plot(x, [_nan(e["estimate"]) for e in est], color=PALETTE[0], label="estimated")
        for i, (m, e) in enumerate(zip(months, est, strict=True)):
            if e["realised"] is None:
                continue
            (point,) = ax.plot(
                [i], [e["realised"]], "o", color=PALETTE[1], markersize=4,
                label="realised" if i == 0 else None,
            )  # fmt: skip
            chart.tag(point, f"{label} realised", m["as_of"], e["realised"], fmt, kind="point")
        ax.set_ylabel(label)
        ax.grid(axis="y", color="#ddd", linewidth=0.6)
        ax.set_xticks(x, [m["as_of"][:7] if i % 3 == 0 else "" for i, m in enumerate(months)])
    chart.axes[0].legend(frameon=False, fontsize=8)
    rows = []
    for m in months:
        role = m.get("role", "unknown")
        cells: list[object] = [
            m["as_of"],
            f"{m['n']:,}",
            "yes" if m["mature"] else "no",
            _e(
                f"{PERFORMANCE_ROLES.get(role, role)}; {m.get('interval', 'sampling')}"
                + (f"; {m['fallback']}" if m.get("fallback") not in (None, "in-sample") else "")
            ),
        ]
        for metric, _, fmt in PERFORMANCE_METRICS:
            e = m[metric]
            cells.append(f"{fmt(e['estimate'])} [{fmt(e['low'])} – {fmt(e['high'])}]")
            real = fmt(e["realised"])
            if e["within"] is not False:
                cells.append(real)
            elif role == "trained":  # in sample: the model fits these months' labels
                cells.append(_e(f"{real} outside (in sample)"))
            else:
                cells.append(_band_text("act", f"{real} outside"))
        rows.append(cells)
    judged = []
    for metric, label, _ in PERFORMANCE_METRICS:
        inside, count = _not_trained(perf.get("coverage", {}).get(metric, {}))
        if count:
            judged.append(f"{label} {inside}/{count}")
    coverage = (
        f" Realised inside the interval in the matured months the model did not train on: "
        f"{', '.join(judged)}."
        if judged
        else ""
    )
    return (
        head + f'<p class="note">{_e(perf["note"])}.{_e(coverage)} A realised value outside its '
        "interval in a month the model did not train on means that month behaved unlike the "
        "reference months (the model has drifted, or its defaults were correlated, e.g. a "
        "downturn).</p>"
        + chart.svg()
        + table(
            [
                "month end",
                "SMEs",
                "mature",
                "model; estimate",
                *(
                    f"{label} {kind}"
                    for _, label, _ in PERFORMANCE_METRICS
                    for kind in ("estimated [interval]", "realised")
                ),
            ],
            rows,
            table_id="table-performance",
            raw=True,
        )
    )


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _realised_section(doc: dict[str, Any]) -> str:
    real = doc["realised_by_grade"]
    body = f'<p class="note">{_e(real["note"])}.</p>'
    rows = [g for g in real["grades"] if g["n"] > 0]
    if rows:
        failed = [g["grade"] for g in rows if not g["jeffreys_pass"]]
        body += (
            '<p class="note">Jeffreys test per grade (one-sided: does the grade default more '
            "often than its mean PD predicts?): "
            + (
                _band_text("act", f"failed by {', '.join(failed)}")
                if failed
                else _band_text("stable", "every grade passes")
            )
            + ".</p>"
        )
        chart = Chart(
            "chart-realised",
            f"Predicted PD and realised default rate by grade, cohort {real['cohort']}",
        )
        chart.bars(
            chart.axes[0],
            [g["grade"] for g in rows],
            [
                Series("mean predicted PD", [g["mean_pd"] for g in rows], PALETTE[1]),
                Series(
                    "realised default rate (95% CI)",
                    [g["observed_rate"] for g in rows],
                    PALETTE[0],
                    whiskers=[(g["ci_low"], g["ci_high"]) for g in rows],
                ),
            ],
            fmt=lambda v: pct(v, 1),
        )
        chart.axes[0].set_ylabel("probability of default")
        body += chart.svg() + table(
            [
                "grade",
                "SMEs",
                "defaults",
                "mean PD",
                "realised rate",
                "95% CI",
                "PD within CI",
                "Jeffreys p",
                "Jeffreys test",
            ],
            [
                [
                    _e(g["grade"]),
                    g["n"],
                    g["defaults"],
                    pct(g["mean_pd"]),
                    pct(g["observed_rate"]),
                    f"{pct(g['ci_low'])} – {pct(g['ci_high'])}",
                    "yes" if g["within_ci"] else "no",
                    num(g["jeffreys_p_value"], 3),
                    _band_text("stable", "pass")
                    if g["jeffreys_pass"]
                    else _band_text("act", "FAIL"),
                ]
                for g in rows
            ],
            table_id="table-realised",
            raw=True,
        )
    return "<h2>Realised default rate by grade</h2>" + body


def _grades_section(doc: dict[str, Any]) -> str:
    dist = doc["grade_distribution"]
    chart = Chart("chart-grades", f"Share of SMEs by grade: {doc['compare']} and {doc['as_of']}")
    chart.bars(
        chart.axes[0],
        [d["grade"] for d in dist],
        [
            Series(doc["compare"], [d["share_compare"] for d in dist], PALETTE[1]),
            Series(doc["as_of"], [d["share_as_of"] for d in dist], PALETTE[0]),
        ],
        fmt=lambda v: pct(v, 1),
    )
    chart.axes[0].set_ylabel("share of SMEs")
    return (
        "<h2>Grade distribution</h2>"
        + chart.svg()
        + table(
            ["grade", f"SMEs {doc['compare']}", "share", f"SMEs {doc['as_of']}", "share"],
            [
                [
                    d["grade"],
                    d["count_compare"],
                    pct(d["share_compare"], 1),
                    d["count_as_of"],
                    pct(d["share_as_of"], 1),
                ]
                for d in dist
            ],
            table_id="table-grades",
        )
    )


def _drivers(drivers: Sequence[dict[str, Any]]) -> str:
    return _listed(
        [
            f"{_e(d['feature'])}: {_signed(d['points_before'])} → {_signed(d['points_now'])} "
            f"({_signed(d['change'])} points)"
            for d in drivers
        ]
    )


def _warnings_section(doc: dict[str, Any]) -> str:
    ew = doc["early_warning"]
    return (
        "<h2>Early warning</h2>"
        f'<p class="note">SMEs down {ew["min_notches"]} or more grades since {_e(doc["compare"])}, '
        f"or whose PD reached {pct(ew['pd_threshold'])} or more while it was below it (or the "
        f"SME was not scored) on {_e(doc['compare'])}: {ew['count']} SMEs, with the reasons of "
        "their score now (the features lowering it most) and what changed: the features whose "
        "points fell most between the two dates.</p>"
        + table(
            [
                "SME",
                "rule",
                "grade before",
                "grade now",
                "PD before",
                "PD now",
                "reasons now",
                "what changed",
            ],
            [
                [
                    _e(s["sme_id"]),
                    _e(s["rule"]),
                    _e(s["grade_before"] or "–"),
                    _e(s["grade_now"]),
                    pct(s["pd_before"]),
                    pct(s["pd_now"]),
                    _reasons(s["reasons"]),
                    _drivers(s["drivers"]),
                ]
                for s in ew["smes"]
            ],
            table_id="table-warnings",
            left=2,
            raw=True,
        )
    )


def _migration_table(mig: dict[str, Any]) -> str:
    counts = mig["counts"]
    head = "".join(f"<th>{_e(c)}</th>" for c in mig["to"])
    rows = []
    for name, row in zip(mig["from"], counts, strict=True):
        total = sum(row)
        cells = []
        for j, v in enumerate(row):
            share = v / total if total else 0.0
            shade = f"rgba(31,78,121,{0.08 + 0.7 * share:.2f})" if v else "transparent"
            diag = " font-weight:700;" if j < len(mig["from"]) - 1 and mig["to"][j] == name else ""
            cells.append(f'<td style="background:{shade};{diag}">{v}</td>')
        rows.append(f'<tr><th class="l">{_e(name)}</th>{"".join(cells)}<td>{total}</td></tr>')
    return (
        f'<table id="table-migration"><tr><th class="l">from \\ to</th>{head}<th>total</th></tr>'
        f"{''.join(rows)}</table>"
    )


# -- the backtest report --------------------------------------------------------------------------
DEFAULTER_ROWS = 25


def render_backtest(doc: dict[str, Any], *, defaulters_file: str) -> str:
    """The dynamic-versus-static backtest report of a `serving.portfolio.backtest.backtest`
    summary; `defaulters_file` names the CSV beside it that lists every defaulter."""
    rules = doc["rules"]
    dyn, stat = doc["dynamic"], doc["static"]
    months = [str(m) for m in doc["lead_months"]]
    observable = doc["observable"]
    lookback = doc["lookback_months"]
    chart = Chart(
        "chart-lead",
        "Defaulters by months of warning before default (0 = not flagged)",
        rows=2,
        height=4.8,
        height_ratios=(2, 1),
    )
    chart.bars(
        chart.axes[0],
        months,
        [
            Series("dynamic grade", [float(c) for c in dyn["lead_counts"]], PALETTE[0]),
            Series("static rating", [float(c) for c in stat["lead_counts"]], PALETTE[1]),
        ],
        counts=True,
    )
    chart.axes[0].set_ylabel("defaulters")
    chart.bars(
        chart.axes[1],
        months,
        [Series("observable", [float(c) for c in observable], "#999999")],
        counts=True,
    )
    chart.axes[1].set_ylabel("could show it")
    chart.axes[1].set_xlabel(
        "months of warning; below: defaulters whose window holds that many months before default"
    )
    rows = doc["defaulter_rows"]
    shown = rows[:DEFAULTER_ROWS]
    sections = [
        "<h2>The question</h2>"
        f'<p class="note">How many months before its default did each defaulter get flagged, by '
        f"the dynamic grade (the model's PD at each month end) and by the static rating (the "
        f"rating the bank assigned at onboarding), when both rules flag the same share of "
        f"SME-months? Static rule: {_e(rules['static'])}. Dynamic rule: {_e(rules['dynamic'])}. "
        f"Lead time: {_e(rules['lead_time'])}</p>"
        + _kpis(
            (
                ("SME-months scored", f"{doc['sme_months']:,}"),
                ("alert rate (static)", pct(stat["alert_rate"])),
                ("alert rate (dynamic)", pct(dyn["alert_rate"])),
                ("defaulters", doc["defaulters"]),
                ("flagged ≥ 3 months ahead (dynamic)", pct(dyn["share_ahead"], 1)),
                ("flagged ≥ 3 months ahead (static)", pct(stat["share_ahead"], 1)),
            )
        ),
        _in_sample_section(doc),
        "<h2>Lead time distribution</h2>"
        f'<p class="note" id="note-censoring">The window censors long lead times: a defaulter '
        f"can show L months of warning only if the window holds a scored month end L months "
        f"before its default. Of the {doc['defaulters']} defaulters, {observable[1]} could show "
        f"1 month, {observable[min(3, lookback)]} could show {min(3, lookback)} and "
        f"{observable[lookback]} could show {lookback} (lower panel, and the table's last row): "
        "read each count against them, not against all defaulters. The full lookback of "
        f"{lookback} months needs a scored month end exactly {lookback} months before the "
        "default, i.e. a default on a month end.</p>"
        + chart.svg()
        + table(
            ["months of warning", *months],
            [
                ["dynamic grade", *dyn["lead_counts"]],
                ["static rating", *stat["lead_counts"]],
                ["defaulters who could show it", *observable],
            ],
            table_id="table-lead",
        )
        + table(
            [
                "rule",
                "alert rate",
                "flagged at all",
                f"flagged ≥ {doc['ahead_months']} months ahead",
                "median months of warning",
            ],
            [
                [
                    name,
                    pct(r["alert_rate"]),
                    pct(r["share_flagged"], 1),
                    pct(r["share_ahead"], 1),
                    num(r["median_lead_months"], 1),
                ]
                for name, r in (("dynamic grade", dyn), ("static rating", stat))
            ],
            table_id="table-rules",
        ),
        "<h2>Defaulters</h2>"
        f'<p class="note" id="note-defaulters">The first {len(shown)} of {len(rows)} defaulters '
        f"by default date; the counts by months of warning are above. Every defaulter is listed "
        f'in <a href="{_e(defaulters_file)}">{_e(defaulters_file)}</a> beside this report.</p>'
        + table(
            [
                "SME",
                "default date",
                "static rating",
                "months warned (dynamic)",
                "months warned (static)",
                "most the window could show",
            ],
            [
                [
                    d["sme_id"],
                    d["default_date"],
                    d["static_rating"] or "–",
                    d["lead_dynamic"],
                    d["lead_static"],
                    d["max_lead"],
                ]
                for d in shown
            ],
            table_id="table-defaulters",
        ),
    ]
    meta = f"Month ends {_e(doc['from'])} to {_e(doc['to'])}. {_model_line(doc['model'])}."
    return page("Dynamic grade versus static rating: early warning backtest", meta, sections)


def _in_sample_section(doc: dict[str, Any]) -> str:
    info = doc["in_sample"]
    trained = info["train_months"]
    span = f"{trained[0]} to {trained[-1]}" if trained else "not recorded"
    text = (
        _band_text("act", doc["note"])
        if doc["note"]
        else _band_text("stable", "None of these month ends is in the model's training months.")
    )
    return (
        "<h2>In-sample months</h2>"
        f'<p class="note" id="note-in-sample">{text} Training months: {_e(span)}; out-of-time '
        f"months: {_e(', '.join(info['oot_months']) or 'not recorded')}.</p>"
    )


# -- writing --------------------------------------------------------------------------------------
def json_path_for(out: Path) -> Path:
    """The JSON summary beside an HTML report: same folder and stem, ``.json``."""
    return out.with_suffix(".json")


def defaulters_path_for(out: Path) -> Path:
    """The CSV of every defaulter beside a backtest report: ``<stem>-defaulters.csv``."""
    return out.with_name(f"{out.stem}-defaulters.csv")


def publish(
    html_text: str,
    doc: dict[str, Any],
    out: Path,
    *,
    extra: Mapping[str, str] | None = None,
    before_publish: Callable[[list[Path]], object] | None = None,
) -> tuple[Path, Path]:
    """Write the report, its JSON summary and the `extra` files (name beside the report ->
    text) atomically; `before_publish` receives the finished temporary files (named like the
    targets) before they are moved into place."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report must be an .html file, got {out}")
    target_json = json_path_for(out)
    texts = {
        target_json.name: json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False),
        **(extra or {}),
        out.name: html_text,  # last: the report appears once everything it refers to is there
    }
    if len(texts) != 2 + len(extra or {}) or any(Path(n).name != n for n in texts):
        raise ValueError(f"extra files must be plain names other than the report's: {extra}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".scf-risk-report-", dir=out.parent) as tmp:
        staged = [Path(tmp) / name for name in texts]
        for path, text in zip(staged, texts.values(), strict=True):
            path.write_text(text, encoding="utf-8")
        if before_publish is not None:
            before_publish(staged)
        placed: list[Path] = []
        try:
            for path in staged:
                os.replace(path, out.parent / path.name)
                placed.append(out.parent / path.name)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
    return out, target_json
