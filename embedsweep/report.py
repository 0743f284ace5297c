"""Rendering of warehouse report rows (``embedsweep.store.report_rows``) as a terminal table,
GitHub markdown, JSON or one self-contained HTML page (built in ``embedsweep.report_html``), and
of an ``embedsweep sql`` answer as text (``render_query``). Terminal text is as wide as it is
told, with no cell cut short. The columns, formatters, notes and summaries every format shares
live in ``embedsweep.report_model`` and are re-exported here. Pure: rows in, text out; no
warehouse access and no printing.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

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
    MISSING,
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
    precision_note,
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
    "markdown_text",
    "notes",
    "peaks",
    "precision_note",
    "problems",
    "render",
    "render_query",
    "series_key",
    "servers",
    "summary_line",
    "sweeps",
    "valid_runs",
    "with_sweep",
]

ReportFormat = Literal["table", "markdown", "json", "html"]


def markdown_text(text: str) -> str:
    # Markdown passes raw HTML through, and a Prefect artifact or a GitHub page would render a
    # model name like "<script>" as markup: escape it, as the HTML page does.
    text = html.escape(text, quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(columns: Sequence[Column], rows: Sequence[ReportRow]) -> str:
    lines = [
        "| " + " | ".join(markdown_text(c.header) for c in columns) + " |",
        "|" + "|".join("---:" if c.right else "---" for c in columns) + "|",
    ]
    lines.extend(
        "| " + " | ".join(markdown_text(c.cell(row)) for c in columns) + " |" for row in rows
    )
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


def _rich_table(title: str, columns: Sequence[Column], rows: Sequence[ReportRow]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in columns:
        # Figures, names and codes stay on one line; only prose wraps (and folds a word longer
        # than its column).
        table.add_column(
            column.header,
            justify="right" if column.right else "left",
            no_wrap=not column.wrap,
            overflow="fold" if column.wrap else "ellipsis",
        )
    for row in rows:
        table.add_row(*(column.cell(row) for column in columns))
    return table


# A wrapped column is given room for a few words at least, however short its longest word.
_PROSE_WIDTH = 24


def _table_width(columns: Sequence[Column], rows: Sequence[ReportRow]) -> int:
    """The narrowest a SIMPLE_HEAD table of these columns renders with no cell cut short: each
    column as wide as its header and its widest cell (a prose column as its longest word, or
    ``_PROSE_WIDTH``), one space of padding either side, a separator between columns and an
    edge at each end."""
    total = 1
    for column in columns:
        cells = [column.cell(row) for row in rows]
        if column.wrap:
            words = [cell_len(word) for cell in cells for word in cell.split()]
            longest = max(words, default=0)
            widest = max((cell_len(cell) for cell in cells), default=0)
            need = max(longest, min(widest, _PROSE_WIDTH))
        else:
            need = max((cell_len(cell) for cell in cells), default=0)
        total += max(need, cell_len(column.header)) + 3
    return total


def _fit(width: int, columns: Sequence[Column], rows: Sequence[ReportRow]) -> _Fitted:
    """The columns of a table no wider than WIDTH, with no cell cut short. While it is wider, a
    column that reads the same in every row is said once instead ("engine hf"), widest first,
    then columns are left out by their drop rank."""
    kept = list(columns)
    if _table_width(kept, rows) > width and len(rows) > 1:
        constant = [c for c in columns if not c.wrap and len({c.cell(r) for r in rows}) == 1]
        for column in sorted(constant, key=lambda c: -_table_width([c], rows)):
            if _table_width(kept, rows) <= width:
                break
            kept.remove(column)
    said = [c for c in columns if c not in kept]
    # A column of dashes is not something every row shares: no row has that figure at all.
    same = [f"{c.header} {c.cell(rows[0])}" for c in said if c.cell(rows[0]) not in (MISSING, "")]
    absent = [c.header for c in said if c.cell(rows[0]) in (MISSING, "")]
    left: list[str] = []
    for column in sorted((c for c in kept if c.drop), key=lambda c: -c.drop):
        if _table_width(kept, rows) <= width:
            break
        kept.remove(column)
        left.append(column.header)
    return _Fitted(kept, same, absent, left)


@dataclass(frozen=True)
class _Fitted:
    columns: list[Column]
    # "engine hf": what every row reads, said once above instead of in a column.
    same: list[str]
    # Columns no row has a figure for.
    absent: list[str]
    # Columns left out to fit, by drop rank.
    left: list[str]


def _print_records(
    console: Console, title: str, columns: Sequence[Column], rows: Sequence[ReportRow]
) -> None:
    console.print(title, justify="center")
    console.print()
    for row in rows:
        fields = " · ".join(f"{c.header} {c.cell(row)}" for c in columns if not c.wrap)
        console.print(Text(fields, overflow="fold"))
        for column in columns:
            if column.wrap:
                text = Text(f"{column.header}: {column.cell(row)}", overflow="fold")
                console.print(Padding(text, (0, 0, 0, 2)))
        console.print()


def _print_fitted(
    console: Console, title: str, columns: Sequence[Column], rows: Sequence[ReportRow]
) -> None:
    fitted = _fit(console.width, columns, rows)
    if _table_width(fitted.columns, rows) > console.width:
        # Too narrow for any table of these rows: one paragraph per row instead, every value
        # labelled and wrapped, none cut.
        _print_records(console, title, columns, rows)
        return
    console.print(_rich_table(title, fitted.columns, rows))
    said = []
    if fitted.same:
        said.append(f"The same in every row: {' · '.join(fitted.same)}.")
    if fitted.absent:
        said.append(f"No row has a figure for: {', '.join(fitted.absent)}.")
    if fitted.left:
        said.append(
            f"Left out to fit {console.width} columns: {', '.join(fitted.left)} (a wider "
            "terminal or COLUMNS shows them; --format markdown, html or json has every figure)."
        )
    for line in said:
        console.print(line)
    if said:
        console.print()


def _rich(rows: Sequence[ReportRow], width: int) -> str:
    buffer = io.StringIO()
    # A StringIO console is not a terminal: rich writes plain text with no colour codes.
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    if rows:
        columns = with_sweep(with_open_loop(COMPARISON_COLUMNS, rows), rows)
        _print_fitted(console, "Comparison", columns, rows)
        for note in notes(rows):
            console.print(note)
        if notes(rows):
            console.print()
    else:
        console.print("No results.")
    problem_rows = problems(rows)
    if problem_rows:
        _print_fitted(
            console, "Blocked and failed", with_sweep(PROBLEM_COLUMNS, rows), problem_rows
        )
    server_rows = servers(rows)
    if server_rows:
        title = "Servers (one per model, engine and pool)"
        _print_fitted(console, title, with_sweep(SERVER_COLUMNS, rows), server_rows)
    checked = fidelity_runs(rows)
    if checked:
        title = "Fidelity (served vectors vs a float32 CPU reference)"
        _print_fitted(console, title, with_sweep(FIDELITY_COLUMNS, rows), checked)
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


# --- an `embedsweep sql` answer as text ----------------------------------------------------------

_GAP = "  "


def _query_value(value: object) -> str:
    """A value as a person reads it: a float to four significant figures (415921 and 0.001235
    in full digits, 1.000 for 0.99999994), a timestamp to the second, NULL as nothing. The
    ``--json`` answer keeps every digit."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | Decimal):
        number = float(value)
        magnitude = abs(number)
        if not math.isfinite(number) or number == 0:
            return str(number) if number else "0"
        if magnitude >= 1e15 or magnitude < 1e-4:
            return f"{number:.3e}"
        return f"{number:.0f}" if magnitude >= 1000 else f"{number:#.4g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def _text_width(text: str) -> int:
    return max((cell_len(line) for line in text.replace("\t", " ").splitlines()), default=0)


def _fold(text: str, width: int) -> list[str]:
    """TEXT's lines, each cut into pieces of at most WIDTH cells (nothing is dropped)."""
    out: list[str] = []
    for line in text.replace("\t", " ").splitlines() or [""]:
        while cell_len(line) > width:
            cut = width
            while cell_len(line[:cut]) > width:
                cut -= 1
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return out


def _query_block(
    headers: Sequence[str], cells: Sequence[Sequence[str]], right: Sequence[bool], cap: int
) -> list[str]:
    # As wide as its header and widest line, at most CAP (longer values fold), never narrower
    # than its header (unless the header itself is longer than the line).
    widths = [
        min(cap, max([_text_width(h), *(_text_width(row[i]) for row in cells)]))
        for i, h in enumerate(headers)
    ]

    def lines_of(values: Sequence[str]) -> list[str]:
        folded = [_fold(v, w) for v, w in zip(values, widths, strict=True)]
        out = []
        for k in range(max(len(f) for f in folded)):
            parts = []
            for f, w, r in zip(folded, widths, right, strict=True):
                text = f[k] if k < len(f) else ""
                pad = " " * (w - cell_len(text))
                parts.append(pad + text if r else text + pad)
            out.append(_GAP.join(parts).rstrip())
        return out

    block = lines_of(headers)
    block.append(_GAP.join("─" * w for w in widths))
    for row in cells:
        block.extend(lines_of(row))
    return block


def render_query(
    columns: Sequence[str], rows: Sequence[Sequence[object]], *, width: int = 160
) -> str:
    """An SQL answer as a table no wider than WIDTH, headers whole and figures rounded for
    people. Columns that do not fit side by side are shown in groups, one after the other,
    each led by the row number; a value longer than the line folds onto the next lines."""
    width = max(width, 20)
    cells = [[_query_value(v) for v in row] for row in rows]
    right = [
        bool(rows)
        and all(
            v is None or (isinstance(v, int | float | Decimal) and not isinstance(v, bool))
            for v in (row[i] for row in rows)
        )
        for i in range(len(columns))
    ]
    natural = [
        max([_text_width(h), *(_text_width(row[i]) for row in cells)])
        for i, h in enumerate(columns)
    ]
    lines: list[str] = []
    if sum(natural) + len(_GAP) * (len(columns) - 1) <= width:
        lines = _query_block(columns, cells, right, width)
    else:
        number_w = max(1, len(str(len(rows))))
        cap = width - number_w - len(_GAP)
        groups: list[list[int]] = [[]]
        used = number_w
        for i, w in enumerate(natural):
            need = len(_GAP) + min(w, cap)
            if groups[-1] and used + need > width:
                groups.append([])
                used = number_w
            groups[-1].append(i)
            used += need
        for g, group in enumerate(groups):
            if g:
                lines.append("")
            first, last = group[0] + 1, group[-1] + 1
            span = f"columns {first}-{last}" if last > first else f"column {first}"
            lines.append(f"{span} of {len(columns)}")
            lines.extend(
                _query_block(
                    ["#", *(columns[i] for i in group)],
                    [[str(n + 1), *(row[i] for i in group)] for n, row in enumerate(cells)],
                    [True, *(right[i] for i in group)],
                    cap,
                )
            )
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines) + "\n"
