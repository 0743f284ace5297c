"""Rendering of warehouse report rows (``embedsweep.store.report_rows``) as a terminal table,
GitHub markdown or JSON. Pure: rows in, text out; no warehouse access and no printing.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

from embedsweep.errors import ConfigError

__all__ = ["COMPARISON_COLUMNS", "ReportFormat", "ReportRow", "render"]

ReportFormat = Literal["table", "markdown", "json"]
ReportRow = dict[str, Any]

_DASH = "-"


def _number(value: object) -> float | int | None:
    # bool is an int to Python but never a figure here; NaN and infinities print as missing.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _integer(value: object) -> str:
    number = _number(value)
    return _DASH if number is None else f"{number:,}"


def _rate(value: object) -> str:
    # Requests per second of a small CPU model are single digits; one decimal keeps them apart.
    number = _number(value)
    return _DASH if number is None else f"{number:,.1f}"


def _tokens(value: object) -> str:
    number = _number(value)
    return _DASH if number is None else f"{number:,.0f}"


def _millis(value: object) -> str:
    # Sub-10 ms latencies differ in the second decimal; above that it is noise.
    number = _number(value)
    if number is None:
        return _DASH
    return f"{number:.2f}" if abs(number) < 10 else f"{number:,.1f}"


def _text(value: object) -> str:
    return _DASH if value is None or value == "" else str(value)


def _status(row: ReportRow) -> str:
    # A level that ran but failed its own validity checks (token count mismatch, concurrency not
    # reached) must not read like a clean result.
    status = _text(row.get("status"))
    return f"{status}*" if status == "ok" and row.get("valid") is False else status


# (header, formatter, right-aligned) for the comparison table shared by markdown and table.
COMPARISON_COLUMNS: tuple[tuple[str, Callable[[ReportRow], str], bool], ...] = (
    ("model", lambda r: _text(r.get("model")), False),
    ("engine", lambda r: _text(r.get("engine")), False),
    ("pool", lambda r: _text(r.get("pool")), False),
    ("chunk", lambda r: _integer(r.get("chunk_size")), True),
    ("conc", lambda r: _integer(r.get("concurrency")), True),
    ("status", _status, False),
    ("reason", lambda r: _text(r.get("reason")), False),
    ("rps", lambda r: _rate(r.get("throughput_rps")), True),
    ("tok/s", lambda r: _tokens(r.get("input_tokens_per_s")), True),
    ("p50 ms", lambda r: _millis(r.get("p50_ms")), True),
    ("p99 ms", lambda r: _millis(r.get("p99_ms")), True),
)

_PROBLEM_COLUMNS: tuple[tuple[str, Callable[[ReportRow], str]], ...] = (
    ("model", lambda r: _text(r.get("model"))),
    ("engine", lambda r: _engine_route(r)),
    ("pool", lambda r: _text(r.get("pool"))),
    ("chunk", lambda r: _integer(r.get("chunk_size"))),
    ("status", lambda r: _text(r.get("status"))),
    ("reason", lambda r: _text(r.get("reason"))),
    ("message", lambda r: _text(r.get("message"))),
)

_INVALID_NOTE = "ok* = the level ran but failed its validity checks (token counts or concurrency)."


def _engine_route(row: ReportRow) -> str:
    engine, planned = row.get("engine"), row.get("planned_engine")
    if planned and planned != engine:
        return f"{_text(engine)} (planned {planned})"
    return _text(engine)


def _problems(rows: Sequence[ReportRow]) -> list[ReportRow]:
    # A failed run that finished some levels has one row per level; list the run once.
    seen: set[object] = set()
    out: list[ReportRow] = []
    for row in rows:
        if row.get("status") == "ok":
            continue
        key = row.get("run_id") or id(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(headers: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in headers) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    lines.extend("| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in body)
    return "\n".join(lines)


def _markdown(rows: Sequence[ReportRow]) -> str:
    parts = ["## Comparison", ""]
    if rows:
        parts.append(
            _md_table(
                [h for h, _, _ in COMPARISON_COLUMNS],
                [[fmt(row) for _, fmt, _ in COMPARISON_COLUMNS] for row in rows],
                [r for _, _, r in COMPARISON_COLUMNS],
            )
        )
        if any(_status(row) == "ok*" for row in rows):
            parts += ["", _INVALID_NOTE]
    else:
        parts.append("No results.")
    parts += ["", "## Blocked and failed", ""]
    problems = _problems(rows)
    if problems:
        parts.append(
            _md_table(
                [h for h, _ in _PROBLEM_COLUMNS],
                [[fmt(row) for _, fmt in _PROBLEM_COLUMNS] for row in problems],
                [h == "chunk" for h, _ in _PROBLEM_COLUMNS],
            )
        )
    else:
        parts.append("None.")
    return "\n".join(parts) + "\n"


def _rich(rows: Sequence[ReportRow], width: int) -> str:
    buffer = io.StringIO()
    # A StringIO console is not a terminal: rich writes plain text with no colour codes.
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    comparison = Table(title="Comparison", box=box.SIMPLE_HEAD)
    for header, _, right in COMPARISON_COLUMNS:
        comparison.add_column(header, justify="right" if right else "left")
    for row in rows:
        comparison.add_row(*(fmt(row) for _, fmt, _ in COMPARISON_COLUMNS))
    if rows:
        console.print(comparison)
        if any(_status(row) == "ok*" for row in rows):
            console.print(_INVALID_NOTE)
    else:
        console.print("No results.")
    problems = _problems(rows)
    if problems:
        blocked = Table(title="Blocked and failed", box=box.SIMPLE_HEAD)
        for header, _ in _PROBLEM_COLUMNS:
            blocked.add_column(
                header,
                justify="right" if header == "chunk" else "left",
                overflow="fold",
            )
        for row in problems:
            blocked.add_row(*(fmt(row) for _, fmt in _PROBLEM_COLUMNS))
        console.print(blocked)
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
    raise ConfigError(f"unknown report format {fmt!r}; use table, markdown or json")
