"""The report as one self-contained HTML page: summary header, inline-SVG charts (throughput and
latency against load, cost), the blocked and failed cells and the full comparison table.

Opening the page fetches nothing: no scripts, fonts, images or stylesheets from anywhere, so it
works as a CI artifact or an e-mail attachment. Every string taken from the rows is escaped.
Pure: rows in, text out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from embedsweep.report_model import (
    FIDELITY_COLUMNS,
    FIDELITY_FAILED,
    FIDELITY_SECTION_NOTE,
    FULL_COLUMNS,
    MISSING,
    NO_PRICES_NOTE,
    PROBLEM_COLUMNS,
    SERVER_COLUMNS,
    SERVERS_NOTE,
    Column,
    ReportRow,
    SeriesKey,
    cell_counts,
    cheapest,
    fidelity_runs,
    finite_number,
    notes,
    problems,
    series_key,
    servers,
    sweeps,
    with_sweep,
)

__all__ = ["LegendEntry", "Line", "bar_chart", "line_chart", "render_html"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and on white. Its yellow
# is left out: it vanishes on a white background.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
# Past the palette, lines repeat colours with a different dash so no two series look alike.
_SERIES_DASHES = ("", "6 3", "2 3", "8 3 2 3")
_PERCENTILES = (("p50_ms", "p50", ""), ("p90_ms", "p90", "6 3"), ("p99_ms", "p99", "2 3"))

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


def _compact(value: float) -> str:
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
    x_axis = _x_axis(xs)
    y_axis = _y_axis(ys, y_log)
    plot_w = _WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    bottom = _PLOT_TOP + _PLOT_HEIGHT
    height = bottom + _AXIS_SPACE + len(legend) * _LEGEND_ROW + 6

    def px(x: float) -> float:
        return _MARGIN_LEFT + x_axis.position(x, plot_w)

    def py(y: float) -> float:
        return bottom - y_axis.position(y, _PLOT_HEIGHT)

    out = [_svg_open(height, title)]
    out.append('<g class="axes" stroke="#d0d0d0" stroke-width="1">')
    for tick in y_axis.ticks:
        out.append(
            f'<line x1="{_MARGIN_LEFT}" y1="{py(tick):.1f}" x2="{_WIDTH - _MARGIN_RIGHT}" '
            f'y2="{py(tick):.1f}"/>'
        )
    out.append(
        f'<line x1="{_MARGIN_LEFT}" y1="{bottom}" x2="{_WIDTH - _MARGIN_RIGHT}" y2="{bottom}" '
        'stroke="#444"/>'
        f'<line x1="{_MARGIN_LEFT}" y1="{_PLOT_TOP}" x2="{_MARGIN_LEFT}" y2="{bottom}" '
        'stroke="#444"/></g>'
    )
    out.append('<g class="ticks" fill="#333">')
    for tick in y_axis.ticks:
        out.append(
            f'<text x="{_MARGIN_LEFT - 6}" y="{py(tick) + 4:.1f}" text-anchor="end">'
            f"{_compact(tick)}</text>"
        )
    for tick in x_axis.ticks:
        out.append(
            f'<line x1="{px(tick):.1f}" y1="{bottom}" x2="{px(tick):.1f}" y2="{bottom + 5}" '
            f'stroke="#444"/><text x="{px(tick):.1f}" y="{bottom + 18}" text-anchor="middle">'
            f"{_compact(tick)}</text>"
        )
    out.append("</g>")
    out.append(
        f'<text class="axis-label" x="{_MARGIN_LEFT + plot_w / 2:.1f}" y="{bottom + 38}" '
        f'text-anchor="middle">{escape(x_label)}{" (log scale)" if x_axis.log else ""}</text>'
        f'<text class="axis-label" transform="translate(16 {_PLOT_TOP + _PLOT_HEIGHT / 2}) '
        f'rotate(-90)" text-anchor="middle">{escape(y_label)}'
        f"{' (log scale)' if y_axis.log else ''}</text>"
    )
    for line in lines:
        dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line.points)
        sweep = f' data-sweep="{escape(line.sweep, quote=True)}"' if line.sweep is not None else ""
        out.append(
            f'<g class="series"{sweep}><polyline points="{coords}" fill="none" '
            f'stroke="{line.colour}" stroke-width="2"{dash}/>'
        )
        for x, y in line.points:
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{line.colour}">'
                f"<title>{escape(line.label)}: {escape(x_label)} {x:g}, "
                f"{escape(y_label)} {_exact(y)}</title></circle>"
            )
        out.append("</g>")
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
            f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">{_compact(tick)}</text>'
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


# --- the page ---------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:16px;color:#1a1a1a;
background:#fff;line-height:1.4}
h1{margin:0 0 4px;font-size:24px}h2{margin:28px 0 8px;font-size:19px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{margin:12px 0 4px;font-size:15px}
.counts{display:flex;gap:10px;list-style:none;padding:0;margin:8px 0}
.counts li{padding:4px 10px;border-radius:4px;font-weight:600;background:#eee}
.counts .ok{background:#d8f0df;color:#0b5d23}.counts .blocked{background:#fbe9c8;color:#7a4b00}
.counts .failed,.counts .cancelled{background:#f8d7d7;color:#8a1111}
.grid{display:flex;flex-wrap:wrap;gap:16px}
.chart{background:#fff;border:1px solid #e3e3e3;border-radius:6px;max-width:100%;height:auto}
.note{color:#555;font-style:italic}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:3px;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0;white-space:normal;vertical-align:bottom;font-size:11px}
td.num{text-align:right}
td.txt{white-space:normal}td.code{white-space:normal;overflow-wrap:anywhere}td.msg{white-space:normal;max-width:520px}
tr.s-blocked td{background:#fff8eb}
tr.s-failed td,tr.s-cancelled td,tr.s-fidelity_failed td{background:#fdf0f0}
"""


@dataclass(frozen=True)
class _Group:
    """The charts for one chunk size and load mode: closed loops plot against concurrency, open
    loops against offered requests per second, so the two never share an axis."""

    chunk: object
    mode: str

    @property
    def x_field(self) -> str:
        return "offered_rps" if self.mode == "open" else "concurrency"

    @property
    def x_label(self) -> str:
        return "offered requests/s" if self.mode == "open" else "concurrency"

    def title(self, what: str) -> str:
        chunk = finite_number(self.chunk)
        size = f"chunk {chunk:g} tokens" if chunk is not None else "chunk -"
        return f"{what} · {size}" + (" · open loop" if self.mode == "open" else "")


def _series_label(key: SeriesKey, show_batch: bool) -> str:
    sweep, model, engine, pool, batch, _ = key
    batch_part = f" · batch {batch}" if show_batch else ""
    return f"{model} · {engine} · {pool}{batch_part} · sweep {sweep}"


def _run_of(row: ReportRow) -> str:
    # A run is one cell's levels at one chunk size; a row without a run id stands for itself.
    return str(row.get("run_id") or row.get("cell_id") or id(row))


def _styles(keys: Sequence[SeriesKey]) -> dict[SeriesKey, tuple[str, str]]:
    # One colour per series across every chart, so a model reads the same everywhere.
    return {
        key: (PALETTE[i % len(PALETTE)], _SERIES_DASHES[(i // len(PALETTE)) % len(_SERIES_DASHES)])
        for i, key in enumerate(keys)
    }


def _points(
    rows: Sequence[ReportRow], x_field: str, y_field: str
) -> tuple[tuple[float, float], ...]:
    points: dict[float, float] = {}
    for row in rows:
        x, y = finite_number(row.get(x_field)), finite_number(row.get(y_field))
        # A log axis cannot place x <= 0; a negative figure is not a rate.
        if x is not None and y is not None and x > 0 and y >= 0:
            points[float(x)] = float(y)
    return tuple(sorted(points.items()))


def _run_labels(
    series: dict[tuple[SeriesKey, str], list[ReportRow]], show_batch: bool
) -> dict[tuple[SeriesKey, str], str]:
    """The legend label of each run on one chart: its series, and where two runs of one series
    share the chart (two engine versions, or two runs of one cell), what tells them apart."""
    labels: dict[tuple[SeriesKey, str], str] = {}
    # Where the chart's runs were served at different dtypes, each label names its own.
    dtypes = {str(rows[0].get("dtype")) for rows in series.values()}
    for key, run_id in series:
        label = _series_label(key, show_batch)
        if len(dtypes) > 1:
            label += f" · {series[(key, run_id)][0].get('dtype') or 'dtype unknown'}"
        twins = [run for run in series if run[0] == key]
        if len(twins) > 1:
            versions = {str(series[run][0].get("engine_version")) for run in twins}
            version = series[(key, run_id)][0].get("engine_version")
            if len(versions) == len(twins) and version:
                label += f" · {key[2]} {version}"
            else:
                label += f" · run {run_id[:8]}"
        labels[(key, run_id)] = label
    return labels


def _charts(rows: Sequence[ReportRow]) -> tuple[list[str], list[str]]:
    measured = [r for r in rows if r.get("status") == "ok"]
    keys = sorted({series_key(r) for r in measured})
    styles = _styles(keys)
    show_batch = len({key[4] for key in keys}) > 1
    # One line per run: a line joins the load levels of one run of one cell, never the levels
    # of two sweeps (or of two runs of a cell) that happen to share model, engine and pool.
    by_group: dict[_Group, dict[tuple[SeriesKey, str], list[ReportRow]]] = {}
    for row in measured:
        group = _Group(row.get("chunk_size"), series_key(row)[5])
        run = (series_key(row), _run_of(row))
        by_group.setdefault(group, {}).setdefault(run, []).append(row)

    def order(group: _Group) -> tuple[str, float]:
        return (group.mode, float(finite_number(group.chunk) or 0))

    throughput: list[str] = []
    latency: list[str] = []
    for group in sorted(by_group, key=order):
        series = by_group[group]
        labels = _run_labels(series, show_batch)
        t_lines, t_legend, l_lines, l_legend = [], [], [], []
        for run in sorted(series):
            key, levels = run[0], series[run]
            colour, dash = styles[key]
            label = labels[run]
            if any(r.get("fidelity_failed") for r in levels):
                # Its figures are drawn, but never as a clean series.
                label += f" ({FIDELITY_FAILED})"
            points = _points(levels, group.x_field, "input_tokens_per_s")
            if points:
                t_lines.append(Line(label, colour, points, dash, sweep=key[0]))
                t_legend.append(LegendEntry(label, colour, dash))
            drew = False
            for field, name, p_dash in _PERCENTILES:
                points = _points(levels, group.x_field, field)
                if points:
                    l_lines.append(Line(f"{label} {name}", colour, points, p_dash, sweep=key[0]))
                    drew = True
            if drew:
                l_legend.append(LegendEntry(label, colour))
        if t_lines:
            throughput.append(
                line_chart(
                    group.title("Throughput"), group.x_label, "input tokens/s", t_lines, t_legend
                )
            )
        if l_lines:
            # Colour says which series, dash says which percentile.
            l_legend += [LegendEntry(name, "#555", p_dash) for _, name, p_dash in _PERCENTILES]
            latency.append(
                line_chart(
                    group.title("Latency"),
                    group.x_label,
                    "latency ms",
                    l_lines,
                    l_legend,
                    # A CPU model's seconds next to a GPU's milliseconds flatten the fast
                    # series to the axis on a linear scale.
                    y_log=True,
                )
            )
    return throughput, latency


def _cost_chart(rows: Sequence[ReportRow]) -> str | None:
    cheap = cheapest(rows)
    if not cheap:
        return None
    keys = sorted({series_key(r) for r in rows if r.get("status") == "ok"})
    styles = _styles(keys)
    show_batch = len({key[4] for key in keys}) > 1
    bars = []
    for row in cheap:
        key = series_key(row)
        cost = float(finite_number(row.get("cost_per_million_tokens")) or 0)
        chunk = finite_number(row.get("chunk_size"))
        label = _series_label(key, show_batch) + (f" · chunk {chunk:g}" if chunk else "")
        conc = finite_number(row.get("concurrency"))
        note = f"${cost:.3g} · {_compact(1e6 / cost)} tokens/$" + (
            f" · conc {conc:g}" if conc is not None else ""
        )
        bars.append((label, cost, styles[key][0], note))
    return bar_chart(
        "Lowest cost per million input tokens (shorter is cheaper)", "$ per million tokens", bars
    )


def _table(columns: Sequence[Column], rows: Sequence[ReportRow], css_class: str) -> str:
    # A header's longest word sets a narrow column's width: "mismatch" may break too.
    head = "".join(
        f"<th>{escape(c.header).replace('mismatch', 'mis&shy;match')}</th>" for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for column in columns:
            kind = "num" if column.right else "code" if column.code else "txt"
            if column.header == "message":
                kind = "msg"
            cells.append(f'<td class="{kind}">{escape(column.cell(row))}</td>')
        status = escape(str(row.get("status") or ""), quote=True)
        if row.get("fidelity_failed"):
            status = FIDELITY_FAILED
        body.append(f'<tr class="s-{status}">' + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _comparison(rows: Sequence[ReportRow]) -> str:
    # Every figure a row carries, in a table that fits a 1400 px window: a column no row has a
    # figure for (offered rate and lag without an open loop, fidelity without a probe) is left
    # out and named under the table, rather than drawn as a column of dashes.
    # A column that reads the same in every row (batch 1, mode closed, no token mismatch) is
    # said once above the table.
    columns = with_sweep(FULL_COLUMNS, rows)
    kept, same, empty = [], [], []
    for column in columns:
        cells = {column.cell(row) for row in rows}
        if cells <= {MISSING, ""}:
            empty.append(column.header)
        elif len(cells) == 1 and len(rows) > 1:
            same.append(f"{column.header} {cells.pop()}")
        else:
            kept.append(column)
    out = _note(f"The same in every row: {' · '.join(same)}.") if same else ""
    out += _table(kept, rows, "comparison")
    if empty:
        out += _note(f"Left out, no row has a figure for them: {', '.join(empty)}.")
    return out


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def render_html(rows: Sequence[ReportRow]) -> str:
    """The whole report as one HTML document with inline CSS and SVG and no external reference."""
    names = sweeps(rows)
    counts = cell_counts(rows)
    throughput, latency = _charts(rows)
    no_points = _note("No measured load levels to plot.")
    several = (
        _note(
            f"These rows come from {len(names)} sweeps ({', '.join(names)}): each line is one "
            "run of one sweep, named in its legend; two sweeps are never joined into one line."
        )
        if len(names) > 1 and throughput
        else ""
    )
    sections: list[str] = [
        _section(
            "throughput",
            "Throughput vs load",
            several
            + (f'<div class="grid">{"".join(throughput)}</div>' if throughput else no_points),
        ),
        _section(
            "latency",
            "Latency percentiles vs load (p50 solid, p90 dashed, p99 dotted)",
            f'<div class="grid">{"".join(latency)}</div>' if latency else no_points,
        ),
    ]
    cost = _cost_chart(rows)
    sections.append(_section("cost", "Cost", cost if cost else _note(NO_PRICES_NOTE)))
    problem_rows = problems(rows)
    sections.append(
        _section(
            "problems",
            "Blocked and failed cells",
            _table(with_sweep(PROBLEM_COLUMNS, rows), problem_rows, "problems")
            if problem_rows
            else _note("None."),
        )
    )
    server_rows = servers(rows)
    if server_rows:
        sections.append(
            _section(
                "servers",
                "Servers",
                _note(SERVERS_NOTE)
                + _table(with_sweep(SERVER_COLUMNS, rows), server_rows, "servers"),
            )
        )
    checked = fidelity_runs(rows)
    if checked:
        sections.append(
            _section(
                "fidelity",
                "Fidelity",
                _note(FIDELITY_SECTION_NOTE)
                + _table(with_sweep(FIDELITY_COLUMNS, rows), checked, "fidelity"),
            )
        )
    comparison = _comparison(rows) if rows else _note("No results.")
    for note in notes(rows):
        comparison += _note(note)
    sections.append(_section("comparison", "Comparison", comparison))

    count_items = "".join(
        f'<li class="{escape(status, quote=True)}">{n} {escape(status)}</li>'
        for status, n in counts.items()
    )
    title = "embedsweep report" + (f" — {', '.join(names)}" if names else "")
    header = (
        f"<header><h1>{escape(title)}</h1>"
        f"<p>Sweeps: {escape(', '.join(names)) if names else '-'} · {len(rows)} rows "
        f"(one per cell and load level)</p>"
        f'<ul class="counts" aria-label="cells by status">{count_items}</ul></header>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{header}{''.join(sections)}</body></html>\n"
    )
