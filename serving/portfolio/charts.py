"""Charts of the portfolio reports: matplotlib figures rendered to inline SVG.

A `Chart` is a matplotlib figure on the Agg canvas (set explicitly, per figure: no pyplot, no
global backend) whose `svg` is an inline ``<svg>`` element ready for an HTML page:

- **offline and CSP-clean**: no scripts, no external references, text as ``<text>`` (no embedded
  fonts), no XML prolog or metadata;
- **deterministic**: the SVG's ids are hashed with the chart's id as salt (``svg.hashsalt``) and
  no date is written, so the same numbers give the same bytes;
- **one page, many charts**: every id in the SVG (and every reference to one) is prefixed with
  the chart's id, so charts never share an id;
- **readable by tests and people**: every bar drawn by `Chart.bars` (and every artist given to
  `Chart.tag`) is a ``<g class="bar">`` carrying its numbers in ``data-series``, ``data-label``
  and ``data-value``, with a ``<title>`` tooltip.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BAND_COLORS", "PALETTE", "Chart", "Series"]

BAND_COLORS = {"stable": "#2e7d32", "watch": "#f9a825", "act": "#c62828"}
PALETTE = ("#1f4e79", "#e07b39", "#6a994e", "#8e44ad")
RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "semibold",
    "axes.titlelocation": "left",
}
NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def escape(value: object) -> str:
    """`value` as text safe inside HTML or SVG text and attribute values."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Series:
    """One series of a bar chart: a value per label (None = no bar), optional (low, high)
    whiskers per label, a colour per series or per bar."""

    name: str
    values: Sequence[float | None]
    color: str = PALETTE[0]
    bar_colors: Sequence[str] | None = None
    whiskers: Sequence[tuple[float, float] | None] | None = None


class Chart:
    """A matplotlib figure of `rows` stacked axes (`axes`), to be drawn on and turned into
    inline SVG by `svg`. `width` and `height` are in inches at 96 px each."""

    def __init__(
        self,
        chart_id: str,
        title: str,
        *,
        rows: int = 1,
        width: float = 7.9,
        height: float = 3.2,
        height_ratios: Sequence[float] | None = None,
    ) -> None:
        from matplotlib import rc_context
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.chart_id = chart_id
        self.title = title
        self._tags: dict[str, dict[str, str]] = {}
        with rc_context(RC):
            self.figure = Figure(figsize=(width, height), dpi=96, layout="constrained")
            FigureCanvasAgg(self.figure)
            axes = self.figure.subplots(rows, 1, squeeze=False, height_ratios=height_ratios)
        self.axes: list[Any] = [a for (a,) in axes]
        self.figure.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="semibold")

    def bars(
        self,
        ax: Any,
        labels: Sequence[str],
        series: Sequence[Series],
        *,
        fmt: Callable[[float], str] = lambda v: f"{v:g}",
        horizontal: bool = False,
        cap: float | None = None,
        value_text: bool = False,
        counts: bool = False,
    ) -> None:
        """Grouped bars on `ax`: one group per label, one bar per series (horizontal: labels top
        down). With `cap` the value axis ends there at most (longer bars run to its end); with
        `value_text` each bar's value is printed beside it; with `counts` the value axis has
        whole-number ticks."""
        from matplotlib import rc_context
        from matplotlib.ticker import MaxNLocator

        n = max(1, len(series))
        width = 0.8 / n
        positions = list(range(len(labels)))
        with rc_context(RC):
            for k, s in enumerate(series):
                named = False
                for i, label in enumerate(labels):
                    v = s.values[i]
                    if v is None or not math.isfinite(v):
                        continue
                    at = i - 0.4 + width * (k + 0.5)
                    color = s.bar_colors[i] if s.bar_colors is not None else s.color
                    draw = ax.barh if horizontal else ax.bar
                    (patch,) = draw(
                        at, v, width * 0.92, color=color, label=None if named else s.name
                    )
                    named = True
                    self.tag(patch, s.name, label, v, fmt)
                    w = s.whiskers[i] if s.whiskers is not None else None
                    if w is not None:
                        spread = [[v - w[0]], [w[1] - v]]
                        ax.errorbar(
                            v if horizontal else at,
                            at if horizontal else v,
                            xerr=spread if horizontal else None,
                            yerr=None if horizontal else spread,
                            fmt="none",
                            ecolor="#333",
                            capsize=3,
                            linewidth=1,
                        )
                    if value_text:
                        shown = min(v, cap) if cap is not None else v
                        ax.annotate(
                            fmt(v),
                            (shown, at) if horizontal else (at, shown),
                            xytext=(3 if v >= 0 else -3, 0) if horizontal else (0, 2),
                            textcoords="offset points",
                            ha=("left" if v >= 0 else "right") if horizontal else "center",
                            va="center" if horizontal else "bottom",
                            fontsize=7,
                        )
            if horizontal:
                ax.set_yticks(positions, list(labels))
                ax.invert_yaxis()
                ax.set_ylim(len(labels) - 0.5, -0.5)
                if cap is not None and ax.get_xlim()[1] > cap:
                    ax.set_xlim(0, cap)
                ax.grid(axis="x", color="#ddd", linewidth=0.6)
            else:
                ax.set_xticks(positions, list(labels))
                ax.grid(axis="y", color="#ddd", linewidth=0.6)
            ax.set_axisbelow(True)
            if counts:
                (ax.xaxis if horizontal else ax.yaxis).set_major_locator(MaxNLocator(integer=True))
            if len(series) > 1:
                ax.legend(frameon=False, fontsize=8)

    def tag(
        self,
        artist: Any,
        series: str,
        label: str,
        value: float,
        fmt: Callable[[float], str],
        *,
        kind: str = "bar",
    ) -> None:
        """Mark `artist` (a bar, a point) in the SVG: ``<g class="{kind}">`` with its series,
        label and value as data attributes and a tooltip."""
        gid = f"mark-{len(self._tags)}"
        artist.set_gid(gid)
        self._tags[gid] = {
            "kind": kind,
            "series": series,
            "label": label,
            "value": repr(float(value)),
            "title": f"{series}, {label}: {fmt(value)}",
        }

    def svg(self) -> str:
        """The figure as an inline ``<svg class="chart">`` element (module docstring)."""
        from matplotlib import rc_context

        buf = io.StringIO()
        with rc_context({**RC, "svg.hashsalt": self.chart_id}):
            self.figure.savefig(buf, format="svg", metadata=NO_METADATA)
        text = buf.getvalue()
        text = text[text.index("<svg") :]
        prefix = f"{self.chart_id}-"
        text = re.sub(r'(\sid=")([^"]+)"', lambda m: f'{m[1]}{prefix}{m[2]}"', text)
        text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m[1]})", text)
        text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m[1]}"', text)
        for gid, tag in self._tags.items():
            opening = f'<g id="{prefix}{gid}">'
            if text.count(opening) != 1:
                raise RuntimeError(f"chart {self.chart_id}: bar {gid} not found once in its SVG")
            text = text.replace(
                opening,
                f'<g id="{prefix}{gid}" class="{tag["kind"]}" '
                f'data-series="{escape(tag["series"])}" '
                f'data-label="{escape(tag["label"])}" data-value="{tag["value"]}">'
                f"<title>{escape(tag['title'])}</title>",
            )
        return text.replace(
            "<svg ",
            f'<svg class="chart" id="{escape(self.chart_id)}" data-chart="{escape(self.chart_id)}" '
            f'role="img" aria-label="{escape(self.title)}" ',
            1,
        )
