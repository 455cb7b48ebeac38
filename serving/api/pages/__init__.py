"""Auditor pages: server-rendered HTML (Jinja2, autoescaped) with an inline SVG waterfall.

No JavaScript, no external CSS: one ``<style>`` block allowed by a per-response CSP nonce.
The waterfall goes from the base points through each feature's points to the score; every bar
carries its exact value in ``data-points`` so that a browser test can compare it with the API.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

TOP_BARS = 12
ROW_HEIGHT = 24
LABEL_WIDTH = 300
PLOT_WIDTH = 440
VALUE_WIDTH = 90
TOP_MARGIN = 28


@dataclass(frozen=True)
class Bar:
    """One bar of the waterfall (SVG coordinates already computed)."""

    label: str
    kind: str  # base | up | down | other | total
    points: float  # the bar's own value: base points, a feature's points, or the score
    start: float  # running total before the bar
    end: float  # running total after it
    x: float
    y: float
    width: float
    text: str


@dataclass(frozen=True)
class Waterfall:
    bars: list[Bar]
    width: int
    height: int
    axis_y: float
    ticks: list[tuple[float, str]]
    left: int
    plot_width: int
    axis_from: float  # the axis starts here, not at 0: the chart marks the break


def _fmt(points: float, signed: bool = True) -> str:
    """Points for a person: two decimals, a real minus sign, never a negative zero."""
    if round(points, 2) == 0:
        return "0.00"
    text = f"{points:+.2f}" if signed else f"{points:.2f}"
    return text.replace("-", "\u2212")


def points_class(points: float) -> str:
    """`neg` (more risk), `pos` (less risk) or `zero` for points that round to 0.00."""
    if round(points, 2) == 0:
        return "zero"
    return "neg" if points < 0 else "pos"


def format_feature(name: str, value: Any) -> str:
    """A feature's value written by its unit (`features.catalog.format_value`); a value of a
    feature the catalog does not know is shown with at most 6 significant digits."""
    from features.catalog import format_value, get_feature
    from features.exceptions import FeatureError

    try:
        feature = get_feature(name)
    except (FeatureError, KeyError):
        if value is None:
            return "missing"
        return value if isinstance(value, str) else f"{float(value):,.6g}"
    return format_value(feature, value)


def waterfall(
    base_points: float, contributions: dict[str, float], score: float, *, top: int = TOP_BARS
) -> Waterfall:
    """Lay out the waterfall: base, the `top` features by |points|, the rest summed, the score."""
    ranked = sorted(contributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    shown, rest = ranked[:top], ranked[top:]
    steps: list[tuple[str, str, float]] = [
        (name, "up" if p >= 0 else "down", p) for name, p in shown
    ]
    if rest:
        steps.append((f"{len(rest)} other features", "other", math.fsum(p for _, p in rest)))
    running = [base_points]
    for _, _, p in steps:
        running.append(running[-1] + p)
    lo = min([*running, score])
    hi = max([*running, score])
    pad = max((hi - lo) * 0.08, 1.0)
    lo, hi = lo - pad, hi + pad
    scale = PLOT_WIDTH / (hi - lo)

    def x_of(v: float) -> float:
        return LABEL_WIDTH + (v - lo) * scale

    bars: list[Bar] = []
    y = float(TOP_MARGIN)
    bars.append(
        Bar("base points", "base", base_points, lo, base_points, x_of(lo), y,
            x_of(base_points) - x_of(lo), _fmt(base_points, signed=False))
    )  # fmt: skip
    for (label, kind, p), before, after in zip(steps, running[:-1], running[1:], strict=True):
        y += ROW_HEIGHT
        left = min(before, after)
        bars.append(
            Bar(label, kind, p, before, after, x_of(left), y,
                max(abs(x_of(after) - x_of(before)), 1.0), _fmt(p))
        )  # fmt: skip
    y += ROW_HEIGHT
    bars.append(
        Bar("score", "total", score, lo, score, x_of(lo), y, x_of(score) - x_of(lo),
            _fmt(score, signed=False))
    )  # fmt: skip
    height = int(y + ROW_HEIGHT + 24)
    step = _nice_step((hi - lo) / 5)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi:
        ticks.append((x_of(t), f"{t:.0f}" if step >= 1 else f"{t:.1f}"))
        t += step
    return Waterfall(
        bars=bars,
        width=LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH,
        height=height,
        axis_y=y + ROW_HEIGHT,
        ticks=ticks,
        left=LABEL_WIDTH,
        plot_width=PLOT_WIDTH,
        axis_from=lo,
    )


def _nice_step(raw: float) -> float:
    exp = math.floor(math.log10(raw)) if raw > 0 else 0
    for m in (1.0, 2.0, 5.0, 10.0):
        if raw <= m * 10**exp:
            return m * 10**exp
    return 10.0 ** (exp + 1)


def _pretty(obj: Any) -> str | None:
    """Indented JSON of a recorded input (None when the record has none)."""
    import json

    return None if obj is None else json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)


def new_nonce() -> str:
    """A fresh CSP nonce for one response."""
    return secrets.token_urlsafe(16)


def csp(nonce: str) -> str:
    """The Content-Security-Policy of our pages: nothing but our own nonce'd style block."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


class Pages:
    """The page templates (built by the app factory, not at import)."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("serving.api.pages", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def decision(self, record: dict[str, Any], catalog: dict[str, str], nonce: str) -> str:
        """The page of one stored decision: summary, waterfall, reasons, every feature."""
        chart = waterfall(record["base_points"], record["contributions"], record["score"])
        rows = [
            {
                "name": name,
                "description": catalog.get(name, ""),
                "value": format_feature(name, record["features"].get(name)),
                "points": points,
            }
            for name, points in sorted(
                record["contributions"].items(), key=lambda kv: (kv[1], kv[0])
            )
        ]
        inputs = record.get("input") or {}
        return self.env.get_template("decision.html").render(
            d=record,
            chart=chart,
            rows=rows,
            nonce=nonce,
            fmt=_fmt,
            points_class=points_class,
            value_of=format_feature,
            raw_input=_pretty(inputs.get("raw")),
            normalised_input=_pretty(inputs.get("normalised")),
        )

    def index(
        self,
        records: list[dict[str, Any]],
        *,
        sme_id: str | None,
        grade: str | None,
        grades: list[str],
        limit: int,
        nonce: str,
    ) -> str:
        """Recent decisions, filterable by SME and grade."""
        return self.env.get_template("index.html").render(
            records=records, sme_id=sme_id, grade=grade, grades=grades, limit=limit, nonce=nonce
        )

    def login(self, *, next_url: str, error: str | None, nonce: str) -> str:
        """The form where an auditor enters a key (kept in an HttpOnly cookie, not the URL)."""
        return self.env.get_template("login.html").render(
            next_url=next_url, error=error, nonce=nonce
        )
