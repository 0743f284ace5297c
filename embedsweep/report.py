"""Rendering of warehouse report rows (``embedsweep.store.report_rows``) as a terminal table,
GitHub markdown, JSON or one self-contained HTML page (built in ``embedsweep.report_html``). The
columns, formatters, notes and summaries every format shares live in ``embedsweep.report_model``
and are re-exported here. Pure: rows in, text out; no warehouse access and no printing.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table

from embedsweep.errors import ConfigError
from embedsweep.report_html import render_html
from embedsweep.report_model import (
    CHEAPEST_COLUMNS,
    COMPARISON_COLUMNS,
    FIDELITY_COLUMNS,
    FIDELITY_FAILED,
    FIDELITY_NOTE,
    FIDELITY_SECTION_NOTE,
    FULL_COLUMNS,
    INVALID_NOTE,
    NO_PRICES_NOTE,
    PEAK_COLUMNS,
    PROBLEM_COLUMNS,
    SERVER_COLUMNS,
    SERVERS_NOTE,
    Column,
    ReportRow,
    cell_counts,
    cheapest,
    fidelity_runs,
    finite_number,
    notes,
    peaks,
    problems,
    series_key,
    servers,
    summary_line,
    sweeps,
    valid_runs,
    with_open_loop,
    with_sweep,
)

__all__ = [
    "COMPARISON_COLUMNS",
    "FIDELITY_COLUMNS",
    "FIDELITY_FAILED",
    "FIDELITY_NOTE",
    "FIDELITY_SECTION_NOTE",
    "FULL_COLUMNS",
    "INVALID_NOTE",
    "NO_PRICES_NOTE",
    "PROBLEM_COLUMNS",
    "SERVERS_NOTE",
    "SERVER_COLUMNS",
    "Column",
    "ReportFormat",
    "ReportRow",
    "cell_counts",
    "cheapest",
    "fidelity_runs",
    "finite_number",
    "notes",
    "peaks",
    "problems",
    "render",
    "series_key",
    "servers",
    "summary_line",
    "sweeps",
    "valid_runs",
    "with_sweep",
]

ReportFormat = Literal["table", "markdown", "json", "html"]


def _md_cell(text: str) -> str:
    # Markdown passes raw HTML through, and a Prefect artifact or a GitHub page would render a
    # model name like "<script>" as markup: escape it, as the HTML page does.
    text = html.escape(text, quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(columns: Sequence[Column], rows: Sequence[ReportRow]) -> str:
    lines = [
        "| " + " | ".join(_md_cell(c.header) for c in columns) + " |",
        "|" + "|".join("---:" if c.right else "---" for c in columns) + "|",
    ]
    lines.extend("| " + " | ".join(_md_cell(c.cell(row)) for c in columns) + " |" for row in rows)
    return "\n".join(lines)


def _markdown(rows: Sequence[ReportRow]) -> str:
    # Sections in the order a reader asks: what ran, how fast at best, at what price, what did
    # not run, then every level. Charts have no markdown form; the peak table stands in for them.
    parts = ["# embedsweep report", "", summary_line(rows), "", "## Peak throughput", ""]
    peak_rows = peaks(rows)
    parts.append(
        _md_table(with_sweep(PEAK_COLUMNS, rows), peak_rows) if peak_rows else "No measured levels."
    )
    parts += ["", "## Cost", ""]
    cheap_rows = cheapest(rows)
    parts.append(
        _md_table(with_sweep(CHEAPEST_COLUMNS, rows), cheap_rows) if cheap_rows else NO_PRICES_NOTE
    )
    parts += ["", "## Blocked and failed", ""]
    problem_rows = problems(rows)
    parts.append(
        _md_table(with_sweep(PROBLEM_COLUMNS, rows), problem_rows) if problem_rows else "None."
    )
    server_rows = servers(rows)
    if server_rows:
        parts += ["", "## Servers", "", SERVERS_NOTE, ""]
        parts.append(_md_table(with_sweep(SERVER_COLUMNS, rows), server_rows))
    checked = fidelity_runs(rows)
    if checked:
        parts += ["", "## Fidelity", "", FIDELITY_SECTION_NOTE, ""]
        parts.append(_md_table(with_sweep(FIDELITY_COLUMNS, rows), checked))
    parts += ["", "## Comparison", ""]
    if rows:
        parts.append(_md_table(with_sweep(FULL_COLUMNS, rows), rows))
        for note in notes(rows):
            parts += ["", note]
    else:
        parts.append("No results.")
    return "\n".join(parts) + "\n"


def _print_table(
    console: Console,
    title: str,
    columns: Sequence[Column],
    rows: Sequence[ReportRow],
    *,
    fold: bool = False,
) -> None:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(
            column.header,
            justify="right" if column.right else "left",
            overflow="fold" if fold else "ellipsis",
        )
    for row in rows:
        table.add_row(*(column.cell(row) for column in columns))
    console.print(table)


def _rich(rows: Sequence[ReportRow], width: int) -> str:
    buffer = io.StringIO()
    # A StringIO console is not a terminal: rich writes plain text with no colour codes.
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    if rows:
        columns = with_sweep(with_open_loop(COMPARISON_COLUMNS, rows), rows)
        _print_table(console, "Comparison", columns, rows)
        for note in notes(rows):
            console.print(note)
    else:
        console.print("No results.")
    problem_rows = problems(rows)
    if problem_rows:
        columns = with_sweep(PROBLEM_COLUMNS, rows)
        _print_table(console, "Blocked and failed", columns, problem_rows, fold=True)
    server_rows = servers(rows)
    if server_rows:
        title = "Servers (one per model, engine and pool)"
        _print_table(console, title, with_sweep(SERVER_COLUMNS, rows), server_rows)
    checked = fidelity_runs(rows)
    if checked:
        title = "Fidelity (served vectors vs a float32 CPU reference)"
        _print_table(console, title, with_sweep(FIDELITY_COLUMNS, rows), checked, fold=True)
    # rich pads every line to the console width; the padding is noise in a file or a diff.
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def render(rows: list[ReportRow], fmt: ReportFormat, *, width: int = 160) -> str:
    """Render report rows; ``width`` only applies to the ``table`` format."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "markdown":
        return _markdown(rows)
    if fmt == "table":
        return _rich(rows, width)
    if fmt == "html":
        return render_html(rows)
    raise ConfigError(f"unknown report format {fmt!r}; use table, markdown, json or html")
