"""HTML reports of the portfolio view: one self-contained file, charts as inline SVG.

Nothing external is referenced (no scripts, fonts, images or stylesheets), so a report opens
offline and can be archived as it is. Every page is rendered from the JSON summary written
beside it, so the two always show the same numbers; every bar of a chart carries its numbers in
``data-series``, ``data-label`` and ``data-value`` attributes.

`publish` writes the HTML and the JSON atomically (temporary files in the target folder, then
renames), optionally handing the finished files to a callback (the MLflow run) first: when
anything fails, nothing is left at the target paths.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BAND_COLORS",
    "Series",
    "grouped_bars",
    "horizontal_bars",
    "json_path_for",
    "publish",
    "render_backtest",
    "render_monitor",
]

BAND_COLORS = {"stable": "#2e7d32", "watch": "#f9a825", "act": "#c62828"}
PALETTE = ("#1f4e79", "#e07b39", "#6a994e", "#8e44ad")
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def pct(value: float | None, digits: int = 2) -> str:
    """A share as a percentage ("–" for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100.0 * value:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


# -- charts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One series of a bar chart: a value per label (None = no bar), optional (low, high)
    whiskers per label, a colour per series or per bar."""

    name: str
    values: Sequence[float | None]
    color: str = PALETTE[0]
    bar_colors: Sequence[str] | None = None
    whiskers: Sequence[tuple[float, float] | None] | None = None


def _nice_step(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is at least `value` (> 0)."""
    exp = math.floor(math.log10(value))
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = mantissa * 10.0**exp
        if step >= value * (1 - 1e-12):
            return step
    return 10.0 ** (exp + 1)


def axis(high: float, n: int = 4) -> list[float]:
    """Ticks from 0 to at least `high` at a round step, about `n` intervals (0..1 if no data)."""
    if not math.isfinite(high) or high <= 0:
        return [0.0, 0.25, 0.5, 0.75, 1.0]
    step = _nice_step(high / n)
    count = math.ceil(high / step - 1e-9)
    return [step * i for i in range(count + 1)]


def grouped_bars(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    y_title: str = "",
    width: int = 760,
    height: int = 300,
) -> str:
    """A vertical grouped bar chart as inline SVG (one group per label, one bar per series)."""
    left, right, top, bottom = 64, 16, 40, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    highs = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    highs += [w[1] for s in series for w in (s.whiskers or ()) if w is not None]
    ticks = axis(max(highs, default=0.0))
    y_max = ticks[-1]
    n = max(1, len(labels))
    group_w = plot_w / n
    bar_w = max(2.0, group_w * 0.8 / max(1, len(series)))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{_e(chart_id)}" '
        f'data-chart="{_e(chart_id)}" role="img" aria-label="{_e(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" style="{FONT}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="600">{_e(title)}</text>',
    ]
    for t in ticks:
        y = top + plot_h - plot_h * t / y_max
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_e(fmt(t))}</text>"
        )
    if y_title:
        parts.append(
            f'<text x="14" y="{top + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{_e(y_title)}</text>'
        )
    for i, label in enumerate(labels):
        gx = left + i * group_w + group_w * 0.1
        for k, s in enumerate(series):
            v = s.values[i]
            if v is None or not math.isfinite(v):
                continue
            h = plot_h * max(v, 0.0) / y_max
            x = gx + k * bar_w
            color = s.bar_colors[i] if s.bar_colors is not None else s.color
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{max(h, 0.0):.1f}" fill="{_e(color)}" data-series="{_e(s.name)}" '
                f'data-label="{_e(label)}" data-value="{v!r}"><title>{_e(s.name)}, {_e(label)}: '
                f"{_e(fmt(v))}</title></rect>"
            )
            w = s.whiskers[i] if s.whiskers is not None else None
            if w is not None:
                cx = x + (bar_w - 1) / 2
                y1 = top + plot_h - plot_h * min(w[1], y_max) / y_max
                y0 = top + plot_h - plot_h * max(w[0], 0.0) / y_max
                parts.append(
                    f'<path d="M{cx - 3:.1f},{y1:.1f}H{cx + 3:.1f}M{cx:.1f},{y1:.1f}V{y0:.1f}'
                    f'M{cx - 3:.1f},{y0:.1f}H{cx + 3:.1f}" stroke="#333" fill="none"/>'
                )
        parts.append(
            f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{top + plot_h + 16}" font-size="11" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#333"/>'
    )
    lx = left
    for s in series:
        parts.append(
            f'<rect x="{lx}" y="{height - 18}" width="10" height="10" fill="{_e(s.color)}"/>'
            f'<text x="{lx + 14}" y="{height - 9}" font-size="11">{_e(s.name)}</text>'
        )
        lx += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)


def horizontal_bars(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    colors: Sequence[str],
    fmt: Callable[[float], str] = lambda v: f"{v:.3f}",
    marks: Sequence[tuple[float, str]] = (),
    cap: float | None = None,
    width: int = 760,
    row: int = 18,
) -> str:
    """A horizontal bar chart (one bar per label) with vertical reference `marks`. With `cap`,
    the axis ends there at most and longer bars end in an arrow (their value is printed)."""
    left, right, top, bottom = 230, 70, 36, 24
    height = top + bottom + row * max(1, len(labels))
    plot_w = width - left - right
    finite = [v for v in values if math.isfinite(v)]
    x_max = axis(max([*finite, *(m for m, _ in marks)], default=0.0))[-1]
    if cap is not None:
        x_max = min(x_max, cap)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{_e(chart_id)}" '
        f'data-chart="{_e(chart_id)}" role="img" aria-label="{_e(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" style="{FONT}">',
        f'<text x="8" y="18" font-size="14" font-weight="600">{_e(title)}</text>',
    ]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        w = plot_w * min(max(v, 0.0), x_max) / x_max
        parts.append(
            f'<text x="{left - 6}" y="{y + row * 0.7:.1f}" font-size="11" text-anchor="end">'
            f"{_e(label)}</text>"
            f'<rect class="bar" x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" '
            f'fill="{_e(colors[i])}" data-series="{_e(title)}" data-label="{_e(label)}" '
            f'data-value="{v!r}"><title>{_e(label)}: {_e(fmt(v))}</title></rect>'
            + (
                f'<path d="M{left + w:.1f},{y + 2}l6,{(row - 4) / 2:.1f}l-6,{(row - 4) / 2:.1f}z" '
                f'fill="{_e(colors[i])}"/>'
                if v > x_max
                else ""
            )
            + f'<text x="{left + w + 8:.1f}" y="{y + row * 0.7:.1f}" font-size="10">'
            f"{_e(fmt(v))}</text>"
        )
    for m, name in marks:
        x = left + plot_w * m / x_max
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{height - bottom}" '
            f'stroke="#555" stroke-dasharray="4 3"/><text x="{x + 2:.1f}" y="{top - 6}" '
            f'font-size="10">{_e(name)}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="#333"/>'
        f'<text x="{left}" y="{height - 6}" font-size="10">0</text>'
        f'<text x="{left + plot_w}" y="{height - 6}" font-size="10" text-anchor="end">'
        f"{_e(fmt(x_max))}</text></svg>"
    )
    return "".join(parts)


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
.band-act{color:#c62828;font-weight:600}.chart{display:block;margin:8px 0}
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
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="meta">{meta}</p>{"".join(sections)}</body></html>'
    )


def _band(band: str) -> str:
    return f'<span class="band-{_e(band)}">{_e(band)}</span>'


def _reasons(reasons: Sequence[dict[str, Any]]) -> str:
    if not reasons:
        return "–"
    items = "".join(
        f"<li>{_e(r['text'])} = {_e(r.get('value_text') or '–')} "
        f"({num(r.get('points'), 1)} points)</li>"
        for r in reasons
    )
    return f'<ul class="reasons">{items}</ul>'


def _model_line(model: dict[str, Any]) -> str:
    return (
        f"model {_e(model.get('name'))} version {_e(model.get('version'))} "
        f"(run {_e(model.get('run_id'))}, {_e(model.get('uri'))})"
    )


# -- the monitoring report ------------------------------------------------------------------------
PSI_CHART_ROWS = 30


def render_monitor(doc: dict[str, Any]) -> str:
    """The monitoring report of a `serving.portfolio.monitor.summary` document."""
    psi = doc["psi"]
    feats = psi["features"]
    shown = feats[:PSI_CHART_ROWS]
    psi_rows = [{"name": "score", "psi": psi["score"]["psi"], "band": psi["score"]["band"]}, *shown]
    sections = [
        "<h2>Summary</h2>"
        + "".join(
            f'<span class="kpi">{label}<b>{value}</b></span>'
            for label, value in (
                ("SMEs scored", f"{doc['population']['as_of']:,}"),
                ("mean PD", pct(doc["mean_pd"]["as_of"])),
                ("score PSI", f"{num(psi['score']['psi'])} {_band(psi['score']['band'])}"),
                ("features to act on", psi["band_counts"]["act"]),
                ("features to watch", psi["band_counts"]["watch"]),
                ("early warnings", doc["early_warning"]["count"]),
            )
        ),
        "<h2>Population stability</h2>"
        f'<p class="note">PSI = Σ (actual − expected)·ln(actual / expected) over the training '
        f"bins: {_e(psi['binning'])}. Bands: stable &lt; 0.1, watch 0.1–0.25, act &gt; 0.25. "
        f"Training reference: {psi['training_rows']:,} rows, as of "
        f"{_e(psi['training_as_of'][0])} to {_e(psi['training_as_of'][1])}. The chart shows the "
        f"score and the {len(shown)} features with the highest PSI (axis cut at 1: longer bars "
        "end in an arrow); the table lists all.</p>"
        + horizontal_bars(
            "chart-psi",
            "PSI against the training reference",
            [r["name"] for r in psi_rows],
            [float(r["psi"]) for r in psi_rows],
            colors=[BAND_COLORS[r["band"]] for r in psi_rows],
            marks=[(0.1, "0.1"), (0.25, "0.25")],
            cap=1.0,
        )
        + table(
            ["feature", "kind", "PSI", "band", "missing (training)", "missing (now)"],
            [
                [
                    _e(f["name"]),
                    _e(f["kind"]),
                    num(f["psi"], 4),
                    _band(f["band"]),
                    pct(f["expected_missing"], 1),
                    pct(f["actual_missing"], 1),
                ]
                for f in feats
            ],
            table_id="table-psi",
            left=2,
            raw=True,
        ),
    ]
    dist = doc["grade_distribution"]
    sections.append(
        "<h2>Grade distribution</h2>"
        + grouped_bars(
            "chart-grades",
            f"Share of SMEs by grade: {doc['compare']} and {doc['as_of']}",
            [d["grade"] for d in dist],
            [
                Series(doc["compare"], [d["share_compare"] for d in dist], PALETTE[1]),
                Series(doc["as_of"], [d["share_as_of"] for d in dist], PALETTE[0]),
            ],
            fmt=lambda v: pct(v, 0),
            y_title="share of SMEs",
        )
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
    mig = doc["migration"]
    sections.append(
        f"<h2>Rating migration {doc['compare']} → {doc['as_of']}</h2>"
        f'<p class="note">Rows: grade at {doc["compare"]} ((new): entered the population since); '
        f"columns: grade at {doc['as_of']} ((defaulted): a loan default in between; (left): no "
        f"longer in the population). Of the SMEs scored at both dates, {mig['upgraded']} moved "
        f"to a better grade, {mig['unchanged']} kept their grade and {mig['downgraded']} moved "
        "to a worse one.</p>" + _migration_table(mig)
    )
    ew = doc["early_warning"]
    sections.append(
        "<h2>Early warning</h2>"
        f'<p class="note">SMEs down {ew["min_notches"]} or more grades since {doc["compare"]}, '
        f"or whose PD reached {pct(ew['pd_threshold'])} or more while it was below it (or the "
        f"SME was not scored) on {doc['compare']}: {ew['count']} SMEs, with the reasons of "
        "their score (the features lowering it most).</p>"
        + table(
            ["SME", "rule", "grade before", "grade now", "PD before", "PD now", "reasons"],
            [
                [
                    _e(s["sme_id"]),
                    _e(s["rule"]),
                    _e(s["grade_before"] or "–"),
                    _e(s["grade_now"]),
                    pct(s["pd_before"]),
                    pct(s["pd_now"]),
                    _reasons(s["reasons"]),
                ]
                for s in ew["smes"]
            ],
            table_id="table-warnings",
            left=2,
            raw=True,
        )
    )
    real = doc["realised_by_grade"]
    body = f'<p class="note">{_e(real["note"])}.</p>'
    if real["grades"]:
        rows = [g for g in real["grades"] if g["n"] > 0]
        body += grouped_bars(
            "chart-realised",
            f"Predicted PD and realised default rate by grade, cohort {real['cohort']}",
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
            y_title="probability of default",
        ) + table(
            ["grade", "SMEs", "defaults", "mean PD", "realised rate", "95% CI", "PD within CI"],
            [
                [
                    g["grade"],
                    g["n"],
                    g["defaults"],
                    pct(g["mean_pd"]),
                    pct(g["observed_rate"]),
                    f"{pct(g['ci_low'])} – {pct(g['ci_high'])}",
                    "yes" if g["within_ci"] else "no",
                ]
                for g in rows
            ],
            table_id="table-realised",
        )
    sections.append("<h2>Realised default rate by grade</h2>" + body)
    meta = (
        f"As of {_e(doc['as_of'])}, compared with {_e(doc['compare'])}. "
        f"{_model_line(doc['model'])}."
    )
    return page(f"Portfolio monitoring {doc['as_of']}", meta, sections)


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
def render_backtest(doc: dict[str, Any]) -> str:
    """The dynamic-versus-static backtest report of a `serving.portfolio.backtest.summary`
    document."""
    rules = doc["rules"]
    dyn, stat = doc["dynamic"], doc["static"]
    months = [str(m) for m in doc["lead_months"]]
    sections = [
        "<h2>The question</h2>"
        f'<p class="note">How many months before its default did each defaulter get flagged, by '
        f"the dynamic grade (the model's PD at each month end) and by the static rating (the "
        f"rating the bank assigned at onboarding), when both rules flag the same share of "
        f"SME-months? Static rule: {_e(rules['static'])}. Dynamic rule: {_e(rules['dynamic'])}. "
        f"Lead time: {_e(rules['lead_time'])}</p>"
        + "".join(
            f'<span class="kpi">{label}<b>{value}</b></span>'
            for label, value in (
                ("SME-months scored", f"{doc['sme_months']:,}"),
                ("alert rate (static)", pct(stat["alert_rate"])),
                ("alert rate (dynamic)", pct(dyn["alert_rate"])),
                ("defaulters", doc["defaulters"]),
                ("flagged ≥ 3 months ahead (dynamic)", pct(dyn["share_ahead"], 1)),
                ("flagged ≥ 3 months ahead (static)", pct(stat["share_ahead"], 1)),
            )
        ),
        "<h2>Lead time distribution</h2>"
        + grouped_bars(
            "chart-lead",
            "Defaulters by months of warning before default (0 = not flagged)",
            months,
            [
                Series("dynamic grade", [float(c) for c in dyn["lead_counts"]], PALETTE[0]),
                Series("static rating", [float(c) for c in stat["lead_counts"]], PALETTE[1]),
            ],
            fmt=lambda v: f"{v:g}",
            y_title="defaulters",
        )
        + table(
            ["months of warning", *months],
            [
                ["dynamic grade", *dyn["lead_counts"]],
                ["static rating", *stat["lead_counts"]],
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
        + table(
            [
                "SME",
                "default date",
                "static rating",
                "months warned (dynamic)",
                "months warned (static)",
            ],
            [
                [
                    d["sme_id"],
                    d["default_date"],
                    d["static_rating"] or "–",
                    d["lead_dynamic"],
                    d["lead_static"],
                ]
                for d in doc["defaulter_rows"]
            ],
            table_id="table-defaulters",
        ),
    ]
    meta = (
        f"Month ends {_e(doc['from'])} to {_e(doc['to'])}. {_model_line(doc['model'])}. "
        f"{_e(doc['note'])}"
    )
    return page("Dynamic grade versus static rating: early warning backtest", meta, sections)


# -- writing --------------------------------------------------------------------------------------
def json_path_for(out: Path) -> Path:
    """The JSON summary beside an HTML report: same folder and stem, ``.json``."""
    return out.with_suffix(".json")


def publish(
    html_text: str,
    doc: dict[str, Any],
    out: Path,
    *,
    before_publish: Callable[[list[Path]], object] | None = None,
) -> tuple[Path, Path]:
    """Write the report and its JSON summary atomically; `before_publish` receives the finished
    temporary files (named like the targets) before they are moved into place."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report must be an .html file, got {out}")
    target_json = json_path_for(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".scf-risk-report-", dir=out.parent) as tmp:
        staged_html = Path(tmp) / out.name
        staged_json = Path(tmp) / target_json.name
        staged_html.write_text(html_text, encoding="utf-8")
        staged_json.write_text(
            json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False), encoding="utf-8"
        )
        if before_publish is not None:
            before_publish([staged_html, staged_json])
        os.replace(staged_json, target_json)
        try:
            os.replace(staged_html, out)
        except BaseException:
            target_json.unlink(missing_ok=True)
            raise
    return out, target_json
