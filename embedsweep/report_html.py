"""The report as one self-contained HTML page: summary header, inline-SVG charts (throughput and
latency against load, cost), the blocked and failed cells and the full comparison table.

Opening the page fetches nothing: no scripts, fonts, images or stylesheets from anywhere, so it
works as a CI artifact or an e-mail attachment. Every string taken from the rows is escaped.
Pure: rows in, text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from embedsweep.report_charts import (
    PALETTE,
    SERIES_DASHES,
    LegendEntry,
    Line,
    bar_chart,
    compact,
    line_chart,
)
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

# Latency percentiles on one chart: (row field, legend name, dash).
_PERCENTILES = (("p50_ms", "p50", ""), ("p90_ms", "p90", "6 3"), ("p99_ms", "p99", "2 3"))


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
        key: (PALETTE[i % len(PALETTE)], SERIES_DASHES[(i // len(PALETTE)) % len(SERIES_DASHES)])
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


_Runs = dict[tuple[SeriesKey, str], list[ReportRow]]


def _runs_by_group(measured: Sequence[ReportRow]) -> dict[_Group, _Runs]:
    """The measured rows by chart group, then by run (series key and run id)."""
    # One line per run: a line joins the load levels of one run of one cell, never the levels
    # of two sweeps (or of two runs of a cell) that happen to share model, engine and pool.
    by_group: dict[_Group, _Runs] = {}
    for row in measured:
        group = _Group(row.get("chunk_size"), series_key(row)[5])
        run = (series_key(row), _run_of(row))
        by_group.setdefault(group, {}).setdefault(run, []).append(row)
    return by_group


def _group_charts(
    group: _Group, series: _Runs, styles: dict[SeriesKey, tuple[str, str]], show_batch: bool
) -> tuple[str | None, str | None]:
    """One group's throughput and latency charts; None for a chart with no point to draw."""
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
    throughput = latency = None
    if t_lines:
        throughput = line_chart(
            group.title("Throughput"), group.x_label, "input tokens/s", t_lines, t_legend
        )
    if l_lines:
        # Colour says which series, dash says which percentile.
        l_legend += [LegendEntry(name, "#555", p_dash) for _, name, p_dash in _PERCENTILES]
        latency = line_chart(
            group.title("Latency"),
            group.x_label,
            "latency ms",
            l_lines,
            l_legend,
            # A CPU model's seconds next to a GPU's milliseconds flatten the fast
            # series to the axis on a linear scale.
            y_log=True,
        )
    return throughput, latency


def _charts(rows: Sequence[ReportRow]) -> tuple[list[str], list[str]]:
    """The throughput charts and the latency charts, one of each per chart group."""
    measured = [r for r in rows if r.get("status") == "ok"]
    keys = sorted({series_key(r) for r in measured})
    styles = _styles(keys)
    show_batch = len({key[4] for key in keys}) > 1
    by_group = _runs_by_group(measured)

    def order(group: _Group) -> tuple[str, float]:
        return (group.mode, float(finite_number(group.chunk) or 0))

    throughput: list[str] = []
    latency: list[str] = []
    for group in sorted(by_group, key=order):
        t_chart, l_chart = _group_charts(group, by_group[group], styles, show_batch)
        if t_chart is not None:
            throughput.append(t_chart)
        if l_chart is not None:
            latency.append(l_chart)
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
        note = f"${cost:.3g} · {compact(1e6 / cost)} tokens/$" + (
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


def _load_sections(rows: Sequence[ReportRow], names: Sequence[str]) -> list[str]:
    """The throughput and latency sections, charts or a note that there is nothing to plot."""
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
    return [
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


def _run_sections(rows: Sequence[ReportRow]) -> list[str]:
    """The blocked and failed cells, and the servers and fidelity sections where rows have any."""
    problem_rows = problems(rows)
    sections = [
        _section(
            "problems",
            "Blocked and failed cells",
            _table(with_sweep(PROBLEM_COLUMNS, rows), problem_rows, "problems")
            if problem_rows
            else _note("None."),
        )
    ]
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
    return sections


def _header(rows: Sequence[ReportRow], names: Sequence[str], title: str) -> str:
    """The page header: title, sweeps, row count and the cells by status."""
    count_items = "".join(
        f'<li class="{escape(status, quote=True)}">{n} {escape(status)}</li>'
        for status, n in cell_counts(rows).items()
    )
    return (
        f"<header><h1>{escape(title)}</h1>"
        f"<p>Sweeps: {escape(', '.join(names)) if names else '-'} · {len(rows)} rows "
        f"(one per cell and load level)</p>"
        f'<ul class="counts" aria-label="cells by status">{count_items}</ul></header>'
    )


def render_html(rows: Sequence[ReportRow]) -> str:
    """The whole report as one HTML document with inline CSS and SVG and no external reference."""
    names = sweeps(rows)
    sections = _load_sections(rows, names)
    cost = _cost_chart(rows)
    sections.append(_section("cost", "Cost", cost if cost else _note(NO_PRICES_NOTE)))
    sections += _run_sections(rows)
    comparison = _comparison(rows) if rows else _note("No results.")
    for note in notes(rows):
        comparison += _note(note)
    sections.append(_section("comparison", "Comparison", comparison))
    title = "embedsweep report" + (f" — {', '.join(names)}" if names else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{_header(rows, names, title)}{''.join(sections)}</body></html>\n"
    )
