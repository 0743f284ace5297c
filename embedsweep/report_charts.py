"""The report's inline-SVG charts: a line chart (ticked linear or log axes, hover titles, a
legend under the plot) and a horizontal bar chart, drawn in a colour-vision-safe palette.

Every string drawn is escaped and nothing is fetched: the SVG carries no URL, so a page that
inlines it stays self-contained. Pure: figures in, SVG text out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "SERIES_DASHES", "LegendEntry", "Line", "bar_chart", "compact", "line_chart"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and on white. Its yellow
# is left out: it vanishes on a white background.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
# Past the palette, lines repeat colours with a different dash so no two series look alike.
SERIES_DASHES = ("", "6 3", "2 3", "8 3 2 3")

_WIDTH = 620
_PLOT_TOP = 40
_PLOT_HEIGHT = 240
_MARGIN_LEFT = 70
_MARGIN_RIGHT = 20
_AXIS_SPACE = 50
_LEGEND_ROW = 18
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


@dataclass(frozen=True)
class Line:
    """One polyline on a chart: points sorted by x, drawn in ``colour`` with ``dash``."""

    label: str
    colour: str
    points: tuple[tuple[float, float], ...]
    dash: str = ""
    # The sweep the points come from, written as the series' data-sweep attribute.
    sweep: str | None = None


@dataclass(frozen=True)
class LegendEntry:
    label: str
    colour: str
    dash: str = ""


def compact(value: float) -> str:
    """A figure in at most three significant digits with a k/M/G suffix, for tick labels."""
    # Tick labels must stay short: 415,920 tokens/s reads as 416k.
    magnitude = abs(value)
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    if magnitude == 0 or magnitude >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _exact(value: float) -> str:
    # A hover title is where a reader goes for the figure itself: 13,298.42 tokens/s, not 1.33e+04.
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4g}"


def _nice_step(span: float, target: int = 5) -> float:
    # Steps of 1, 2 or 5 times a power of ten give ticks people read at a glance.
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _linear_ticks(high: float) -> tuple[float, list[float]]:
    """Axis top and ticks from 0; a degenerate range (all zeros) still gets an axis."""
    if high <= 0:
        high = 1.0
    step = _nice_step(high)
    top = math.ceil(high / step) * step
    count = round(top / step)
    return top, [i * step for i in range(count + 1)]


@dataclass(frozen=True)
class _Axis:
    low: float
    high: float
    log: bool
    ticks: tuple[float, ...]

    def position(self, value: float, length: float) -> float:
        """Distance of ``value`` from the axis start, for an axis ``length`` long."""
        if self.log:
            low, high, value = math.log(self.low), math.log(self.high), math.log(value)
        else:
            low, high = self.low, self.high
        return (value - low) / (high - low) * length if high > low else length / 2


def _x_axis(values: Sequence[float]) -> _Axis:
    low, high = min(values), max(values)
    # Concurrency sweeps double (1, 2, 4 ... 256): on a linear axis the first levels pile up at
    # the origin, so a wide positive range gets a log2 axis with a tick per power of two.
    if low > 0 and high / low >= 8:
        first, last = math.floor(math.log2(low)), math.ceil(math.log2(high))
        ticks = tuple(2.0**k for k in range(first, last + 1))
        return _Axis(ticks[0], ticks[-1], True, ticks)
    top, linear = _linear_ticks(high)
    return _Axis(0.0, top, False, tuple(linear))


def _y_axis(values: Sequence[float], log: bool) -> _Axis:
    low, high = min(values), max(values)
    if log and low > 0 and high / low >= 20:
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        # 1-2-5 ticks over more than three decades crowd the labels into each other.
        steps = (1, 2, 5) if last - first <= 3 else (1,)
        ticks = tuple(
            m * 10.0**k
            for k in range(first, last + 1)
            for m in steps
            if 10.0**first <= m * 10.0**k <= 10.0**last
        )
        return _Axis(10.0**first, 10.0**last, True, ticks)
    top, linear = _linear_ticks(high)
    return _Axis(0.0, top, False, tuple(linear))


def _legend(entries: Sequence[LegendEntry], top: float) -> list[str]:
    out = ['<g class="legend">']
    for i, entry in enumerate(entries):
        y = top + i * _LEGEND_ROW
        dash = f' stroke-dasharray="{entry.dash}"' if entry.dash else ""
        out.append(
            f'<g class="legend-entry"><line x1="{_MARGIN_LEFT}" y1="{y:.1f}" '
            f'x2="{_MARGIN_LEFT + 28}" y2="{y:.1f}" stroke="{entry.colour}" stroke-width="2.5"'
            f'{dash}/><text x="{_MARGIN_LEFT + 36}" y="{y + 4:.1f}">{escape(entry.label)}</text>'
            "</g>"
        )
    out.append("</g>")
    return out


def _svg_open(height: float, title: str) -> str:
    return (
        # Inline SVG in HTML needs no xmlns; leaving it out keeps the page free of any URL.
        f'<svg class="chart" role="img" '
        f'viewBox="0 0 {_WIDTH} {height:.0f}" width="{_WIDTH}" height="{height:.0f}" '
        f'font-family="{_FONT}" font-size="12" aria-label="{escape(title)}">'
        f'<text class="chart-title" x="{_MARGIN_LEFT}" y="22" font-size="14" '
        f'font-weight="600">{escape(title)}</text>'
    )


@dataclass(frozen=True)
class _Plot:
    """Where a line chart's figures land: its two axes and the plot area's size."""

    x_axis: _Axis
    y_axis: _Axis
    width: float
    bottom: float

    def px(self, x: float) -> float:
        """The SVG x coordinate of figure ``x``."""
        return _MARGIN_LEFT + self.x_axis.position(x, self.width)

    def py(self, y: float) -> float:
        """The SVG y coordinate of figure ``y``."""
        return self.bottom - self.y_axis.position(y, _PLOT_HEIGHT)


def _grid(plot: _Plot) -> list[str]:
    """The horizontal grid lines at the y ticks and the two axis lines."""
    bottom = plot.bottom
    out = ['<g class="axes" stroke="#d0d0d0" stroke-width="1">']
    for tick in plot.y_axis.ticks:
        out.append(
            f'<line x1="{_MARGIN_LEFT}" y1="{plot.py(tick):.1f}" x2="{_WIDTH - _MARGIN_RIGHT}" '
            f'y2="{plot.py(tick):.1f}"/>'
        )
    out.append(
        f'<line x1="{_MARGIN_LEFT}" y1="{bottom}" x2="{_WIDTH - _MARGIN_RIGHT}" y2="{bottom}" '
        'stroke="#444"/>'
        f'<line x1="{_MARGIN_LEFT}" y1="{_PLOT_TOP}" x2="{_MARGIN_LEFT}" y2="{bottom}" '
        'stroke="#444"/></g>'
    )
    return out


def _ticks(plot: _Plot) -> list[str]:
    """The tick labels of both axes, with the x axis's tick marks."""
    bottom = plot.bottom
    out = ['<g class="ticks" fill="#333">']
    for tick in plot.y_axis.ticks:
        out.append(
            f'<text x="{_MARGIN_LEFT - 6}" y="{plot.py(tick) + 4:.1f}" text-anchor="end">'
            f"{compact(tick)}</text>"
        )
    for tick in plot.x_axis.ticks:
        out.append(
            f'<line x1="{plot.px(tick):.1f}" y1="{bottom}" x2="{plot.px(tick):.1f}" '
            f'y2="{bottom + 5}" stroke="#444"/><text x="{plot.px(tick):.1f}" y="{bottom + 18}" '
            f'text-anchor="middle">{compact(tick)}</text>'
        )
    out.append("</g>")
    return out


def _axis_labels(plot: _Plot, x_label: str, y_label: str) -> str:
    """The two axis titles, each saying so where its axis is a log scale."""
    return (
        f'<text class="axis-label" x="{_MARGIN_LEFT + plot.width / 2:.1f}" '
        f'y="{plot.bottom + 38}" text-anchor="middle">{escape(x_label)}'
        f"{' (log scale)' if plot.x_axis.log else ''}</text>"
        f'<text class="axis-label" transform="translate(16 {_PLOT_TOP + _PLOT_HEIGHT / 2}) '
        f'rotate(-90)" text-anchor="middle">{escape(y_label)}'
        f"{' (log scale)' if plot.y_axis.log else ''}</text>"
    )


def _series(plot: _Plot, line: Line, x_label: str, y_label: str) -> list[str]:
    """One line's polyline and its points, each point with a hover title of its figures."""
    dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
    coords = " ".join(f"{plot.px(x):.1f},{plot.py(y):.1f}" for x, y in line.points)
    sweep = f' data-sweep="{escape(line.sweep, quote=True)}"' if line.sweep is not None else ""
    out = [
        f'<g class="series"{sweep}><polyline points="{coords}" fill="none" '
        f'stroke="{line.colour}" stroke-width="2"{dash}/>'
    ]
    for x, y in line.points:
        out.append(
            f'<circle cx="{plot.px(x):.1f}" cy="{plot.py(y):.1f}" r="3" fill="{line.colour}">'
            f"<title>{escape(line.label)}: {escape(x_label)} {x:g}, "
            f"{escape(y_label)} {_exact(y)}</title></circle>"
        )
    out.append("</g>")
    return out


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    lines: Sequence[Line],
    legend: Sequence[LegendEntry],
    *,
    y_log: bool = False,
) -> str:
    """An SVG line chart with ticked, labelled axes and a legend under the plot. Each point has a
    hover title with its exact values. ``lines`` must hold at least one point. ``y_log`` asks
    for a log y axis, used only where every y is positive and they span 20x or more."""
    xs = [x for line in lines for x, _ in line.points]
    ys = [y for line in lines for _, y in line.points]
    bottom = _PLOT_TOP + _PLOT_HEIGHT
    plot = _Plot(_x_axis(xs), _y_axis(ys, y_log), _WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT, bottom)
    height = bottom + _AXIS_SPACE + len(legend) * _LEGEND_ROW + 6
    out = [_svg_open(height, title), *_grid(plot), *_ticks(plot)]
    out.append(_axis_labels(plot, x_label, y_label))
    for line in lines:
        out += _series(plot, line, x_label, y_label)
    out += _legend(legend, bottom + _AXIS_SPACE + 8)
    out.append("</svg>")
    return "".join(out)


def bar_chart(title: str, value_label: str, bars: Sequence[tuple[str, float, str, str]]) -> str:
    """A horizontal SVG bar chart of (label, value, colour, annotation) from a zero baseline;
    the label is cut to fit and kept whole in a hover title."""
    label_w = 260
    row_h = 24
    plot_w = _WIDTH - label_w - 200
    top = _PLOT_TOP + 10
    x_top, ticks = _linear_ticks(max(value for _, value, _, _ in bars))
    height = top + len(bars) * row_h + _AXIS_SPACE
    out = [_svg_open(height, title)]
    axis_y = top + len(bars) * row_h
    out.append('<g class="ticks" fill="#333">')
    for tick in ticks:
        x = label_w + tick / x_top * plot_w
        out.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#e0e0e0"/>'
            f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">{compact(tick)}</text>'
        )
    out.append(
        f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{axis_y}" stroke="#444"/></g>'
        f'<text class="axis-label" x="{label_w + plot_w / 2:.1f}" y="{axis_y + 36}" '
        f'text-anchor="middle">{escape(value_label)}</text>'
    )
    for i, (label, value, colour, note) in enumerate(bars):
        y = top + i * row_h
        shown = label if len(label) <= 40 else label[:39] + "…"
        width = value / x_top * plot_w
        out.append(
            f'<g class="bar"><title>{escape(label)}: {escape(note)}</title>'
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(shown)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 8}" '
            f'fill="{colour}"/><text x="{label_w + width + 6:.1f}" y="{y + 15}">'
            f"{escape(note)}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)
