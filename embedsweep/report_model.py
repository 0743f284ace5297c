"""What every report format shows, shared by the terminal table, markdown and JSON
(``embedsweep.report``) and the HTML page (``embedsweep.report_html``): the row formatters (each
figure's own in ``embedsweep.report_format``), the column sets (header, formatter, alignment),
the notes that explain the status marks, and the summaries over rows (cell counts, peaks,
cheapest levels, blocked and failed runs, servers).
Pure: rows in, values and strings out; no warehouse access and no printing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from embedsweep.report_format import (
    MISSING,
    finite_number,
    format_cores,
    format_cosine,
    format_integer,
    format_millis,
    format_money,
    format_rate,
    format_sci,
    format_text,
    format_tokens,
)

__all__ = [
    "BUSY_HOST",
    "BUSY_HOST_NOTE",
    "CHEAPEST_COLUMNS",
    "COMPARISON_COLUMNS",
    "FIDELITY_COLUMNS",
    "FIDELITY_FAILED",
    "FIDELITY_NOTE",
    "FIDELITY_SECTION_NOTE",
    "FULL_COLUMNS",
    "INVALID_NOTE",
    "MISSING",
    "NO_PRICES_NOTE",
    "OPEN_LOOP_COLUMNS",
    "PEAK_COLUMNS",
    "PRECISION_NOTE",
    "PROBLEM_COLUMNS",
    "SERVERS_NOTE",
    "SERVER_COLUMNS",
    "Column",
    "ReportRow",
    "SeriesKey",
    "cell_counts",
    "cheapest",
    "fidelity_runs",
    "finite_number",
    "notes",
    "peaks",
    "precision_note",
    "problems",
    "series_key",
    "servers",
    "summary_line",
    "sweeps",
    "valid_runs",
    "with_open_loop",
    "with_sweep",
]

ReportRow = dict[str, Any]


def _open_loop(row: ReportRow, field: str, fmt: Callable[[object], str]) -> str:
    """A figure only an open loop has (offered rate, lag behind the schedule): empty for a
    closed-loop level, where it does not apply (its requests start when they are due, so its lag
    reads 0 but means nothing), and a dash for a row with no level at all."""
    if row.get("mode") == "open":
        return fmt(row.get(field))
    return "" if finite_number(row.get("concurrency")) is not None else MISSING


def _status(row: ReportRow) -> str:
    # A level that ran but failed its own validity checks (token count mismatch, concurrency not
    # reached) must not read like a clean result; nor one whose served vectors are not the
    # model's (the fidelity probe failed): its figures measure something else.
    status = format_text(row.get("status"))
    if row.get("partial"):
        # The level the server's death cut short: its figures cover only what was measured.
        return f"{status} (partial)"
    if status != "ok":
        return status
    if row.get("fidelity_failed") or row.get("fidelity") == "failed":
        return FIDELITY_FAILED
    if row.get("valid") is False:
        return f"{status}*"
    # Measured while other processes used the cores: a figure of a shared host.
    return f"{status} {BUSY_HOST}" if row.get("host_quiet") is False else status


def _fidelity(row: ReportRow) -> str:
    """The fidelity verdict in a few characters: pass / FAIL with the smallest cosine."""
    verdict = row.get("fidelity")
    if verdict is None:
        return MISSING
    if verdict == "passed":
        return "pass"
    if verdict == "failed":
        return f"FAIL {format_cosine(row.get('fidelity_min_cosine'))}"
    return str(verdict).replace("not_checked", "unchecked")


def _finding_codes(row: ReportRow) -> str:
    findings = row.get("fidelity_findings") or []
    return ", ".join(str(f.get("code")) for f in findings if isinstance(f, dict)) or MISSING


@dataclass(frozen=True)
class Column:
    """One column of a report table: its header, how a row reads in it, and its alignment."""

    header: str
    cell: Callable[[ReportRow], str]
    right: bool = False
    # Its cells are codes (unsupported_architecture, tokens_without_special): one long word that
    # a table too narrow for it may break anywhere.
    code: bool = False
    # Where a terminal is too narrow for the whole table, columns are left out highest first;
    # 0 is never left out.
    drop: int = 0
    # Its cells are prose (a message, a list of findings) that a terminal table wraps over
    # lines; every other column keeps each cell on one line.
    wrap: bool = False


def _engine_route(row: ReportRow) -> str:
    engine, planned = row.get("engine"), row.get("planned_engine")
    shown = _engine(row)
    if planned and planned != engine:
        return (
            f"{shown[:-1]}; planned {planned})"
            if shown.endswith(")")
            else (f"{shown} (planned {planned})")
        )
    return shown


def _engine(row: ReportRow) -> str:
    """The engine; a built-in server figure says so, with how close that server came to direct
    encode of its model on the same host (the run's harness check)."""
    engine = format_text(row.get("engine"))
    if engine != "hf":
        return engine
    ratio = finite_number(row.get("harness_ratio"))
    return f"hf (built-in, {ratio:.2f}x direct)" if ratio is not None else "hf (built-in)"


# The terminal table, which must fit the terminal: too narrow a one leaves out the columns with
# a drop rank, highest first (a fidelity failure still shows in status, a reason in the blocked
# and failed table, requests/s are tokens/s over the chunk size).
COMPARISON_COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: format_text(r.get("model"))),
    Column("engine", _engine),
    Column("dtype", lambda r: format_text(r.get("dtype")), drop=1),
    Column("pool", lambda r: format_text(r.get("pool")), drop=4),
    Column("chunk", lambda r: format_integer(r.get("chunk_size")), True),
    Column("conc", lambda r: format_integer(r.get("concurrency")), True),
    Column("status", _status),
    Column("reason", lambda r: format_text(r.get("reason")), code=True, drop=3),
    Column("rps", lambda r: format_rate(r.get("throughput_rps")), True, drop=5),
    Column("tok/s", lambda r: format_tokens(r.get("input_tokens_per_s")), True),
    Column("p50 ms", lambda r: format_millis(r.get("p50_ms")), True, drop=2),
    Column("p99 ms", lambda r: format_millis(r.get("p99_ms")), True),
    Column("fidelity", _fidelity, drop=6),
)

# What an open-loop level adds to the terminal table: its offered rate (its "conc" is then
# only the cap on connections) and the client's lag behind the schedule.
OPEN_LOOP_COLUMNS: tuple[Column, ...] = (
    Column("offered rps", lambda r: _open_loop(r, "offered_rps", format_rate), True),
    Column("lag p99 ms", lambda r: _open_loop(r, "lag_p99_ms", format_millis), True, drop=1),
)

# Every figure a row carries, for the formats read in a browser (markdown artifact, HTML page),
# where a wide table scrolls instead of wrapping.
FULL_COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: format_text(r.get("model")), False),
    Column("engine", lambda r: _engine_route(r), False),
    Column("dtype", lambda r: format_text(r.get("dtype")), False),
    Column("pool", lambda r: format_text(r.get("pool")), False),
    Column("gpu", lambda r: format_text(r.get("gpu_model")), False),
    Column("chunk", lambda r: format_integer(r.get("chunk_size")), True),
    Column("batch", lambda r: format_integer(r.get("batch_size")), True),
    Column("mode", lambda r: format_text(r.get("mode")), False),
    Column("conc", lambda r: format_integer(r.get("concurrency")), True),
    Column("offered rps", lambda r: _open_loop(r, "offered_rps", format_rate), True),
    Column("status", _status, False),
    Column("reason", lambda r: format_text(r.get("reason")), code=True),
    Column("rps", lambda r: format_rate(r.get("throughput_rps")), True),
    Column("inputs/s", lambda r: format_rate(r.get("inputs_per_s")), True),
    Column("tok/s", lambda r: format_tokens(r.get("input_tokens_per_s")), True),
    Column("p50 ms", lambda r: format_millis(r.get("p50_ms")), True),
    Column("p90 ms", lambda r: format_millis(r.get("p90_ms")), True),
    Column("p95 ms", lambda r: format_millis(r.get("p95_ms")), True),
    Column("p99 ms", lambda r: format_millis(r.get("p99_ms")), True),
    Column("max ms", lambda r: format_millis(r.get("max_ms")), True),
    Column("mean ms", lambda r: format_millis(r.get("mean_ms")), True),
    Column("$/M tok", lambda r: format_money(r.get("cost_per_million_tokens")), True),
    Column("lag p99 ms", lambda r: _open_loop(r, "lag_p99_ms", format_millis), True),
    Column("tok mismatch", lambda r: format_integer(r.get("prompt_tokens_mismatch")), True),
    Column("usage counts", lambda r: format_text(r.get("usage_counting")), code=True),
    Column("other cores", lambda r: format_cores(r.get("host_other_cpu_cores")), True),
    Column("fidelity", _fidelity, False),
    Column("min cosine", lambda r: format_cosine(r.get("fidelity_min_cosine")), True),
)

# One line per probed run: are the served vectors the model's?
FIDELITY_COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: format_text(r.get("model")), False),
    Column("engine", lambda r: _engine_route(r), False),
    Column("pool", lambda r: format_text(r.get("pool")), False),
    Column("chunk", lambda r: format_integer(r.get("chunk_size")), True),
    Column("verdict", lambda r: format_text(r.get("fidelity")), False),
    Column("min cosine", lambda r: format_cosine(r.get("fidelity_min_cosine")), True),
    Column("needs", lambda r: format_cosine(r.get("fidelity_threshold")), True, drop=1),
    Column("max |diff|", lambda r: format_sci(r.get("fidelity_max_abs_diff")), True, drop=3),
    Column(
        "batch/order cos",
        lambda r: format_cosine(r.get("fidelity_invariance_min_cosine")),
        True,
        drop=2,
    ),
    Column("findings", _finding_codes, code=True, wrap=True),
)

PROBLEM_COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: format_text(r.get("model")), False),
    Column("engine", lambda r: _engine_route(r), False),
    Column("pool", lambda r: format_text(r.get("pool")), False),
    Column("chunk", lambda r: format_integer(r.get("chunk_size")), True),
    Column("status", lambda r: format_text(r.get("status")), False),
    Column("reason", lambda r: format_text(r.get("reason")), code=True),
    Column("message", lambda r: format_text(r.get("message")), wrap=True),
)

# One line per (series, chunk size): the level with the most tokens per second.
PEAK_COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: format_text(r.get("model")), False),
    Column("engine", _engine, False),
    Column("dtype", lambda r: format_text(r.get("dtype")), False),
    Column("pool", lambda r: format_text(r.get("pool")), False),
    Column("chunk", lambda r: format_integer(r.get("chunk_size")), True),
    Column("batch", lambda r: format_integer(r.get("batch_size")), True),
    Column("mode", lambda r: format_text(r.get("mode")), False),
    Column("at conc", lambda r: format_integer(r.get("concurrency")), True),
    Column("tok/s", lambda r: format_tokens(r.get("input_tokens_per_s")), True),
    Column("inputs/s", lambda r: format_rate(r.get("inputs_per_s")), True),
    Column("p50 ms", lambda r: format_millis(r.get("p50_ms")), True),
    Column("p99 ms", lambda r: format_millis(r.get("p99_ms")), True),
    Column("status", _status, False),
)

CHEAPEST_COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: format_text(r.get("model")), False),
    Column("engine", _engine, False),
    Column("dtype", lambda r: format_text(r.get("dtype")), False),
    Column("pool", lambda r: format_text(r.get("pool")), False),
    Column("chunk", lambda r: format_integer(r.get("chunk_size")), True),
    Column("batch", lambda r: format_integer(r.get("batch_size")), True),
    Column("at conc", lambda r: format_integer(r.get("concurrency")), True),
    Column("$/M tok", lambda r: format_money(r.get("cost_per_million_tokens")), True),
    Column("tokens per $", lambda r: format_tokens(_tokens_per_dollar(r)), True),
    Column("tok/s", lambda r: format_tokens(r.get("input_tokens_per_s")), True),
)

# One line per engine server: every chunk size of a (model, engine, pool) ran on one.
SERVER_COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: format_text(r.get("model")), False),
    Column("engine", lambda r: format_text(r.get("engine")), False),
    Column("pool", lambda r: format_text(r.get("pool")), False),
    Column("dtype", lambda r: format_text(r.get("dtype")), False),
    Column("chunk sizes", lambda r: ", ".join(str(c) for c in r.get("chunk_sizes", ())), False),
    Column("start", lambda r: format_text(r.get("startup")), False),
    Column("healthy after s", lambda r: format_rate(r.get("server_startup_s")), True),
)

INVALID_NOTE = "ok* = the level ran but failed its validity checks (token counts or concurrency)."
FIDELITY_FAILED = "fidelity_failed"
BUSY_HOST = "(busy host)"
BUSY_HOST_NOTE = (
    "(busy host) = other processes kept more than a quarter of a core busy during the level "
    "(from /proc): its figures are of a shared host; rerun it on a quiet one."
)
BUILT_IN_NOTE = (
    "hf (built-in, Nx direct) = measured on embedsweep's own server; N is its inputs/s at the "
    "run's top concurrency over direct sentence-transformers encode of the same texts, same dtype "
    "and batch, on the same host, measured once per run (table harness_checks). Near 1: the "
    "figures are the model's; well below: the harness, not the model, set them; above 1: the "
    "server ran faster kernels than sentence-transformers as shipped (its own attention kernel "
    "on a CPU, or torch.compile with --compile on)."
)
FIDELITY_NOTE = (
    "fidelity_failed = the level ran, but the served vectors are not the model's (the fidelity "
    "probe's smallest cosine with a CPU reference, or between batches, orders and concurrent "
    "requests, is below the dtype's threshold): its figures do not measure this model."
)
FIDELITY_SECTION_NOTE = (
    "After its levels, every run sends fixed probe texts to the served model and compares the "
    "vectors with sentence-transformers in float32 on the CPU (each text alone), and with "
    "themselves in one batch, a shuffled batch and concurrent requests."
)
SERVERS_NOTE = (
    "Each engine server served every chunk size of its model and pool; 'healthy after' is its "
    "start-up, from launch to a healthy /health; 'start' is how the built-in server started its "
    "model: eager, compiled (torch.compile, compiled at this start) or cached (compiled graphs "
    "reused from an earlier start)."
)
PRECISION_NOTE = (
    "Mixed precision: {which}. Figures measured at different dtypes compare the precisions as "
    "much as the engines; pin one dtype for the model (dtype: in the sweep file) to compare like "
    "for like."
)
NO_PRICES_NOTE = (
    "No prices were given (cost_per_gpu_hour is 0 for every pool that ran), so there is no cost "
    "comparison."
)


def valid_runs(rows: Sequence[ReportRow]) -> int:
    """Runs with at least one valid measurement: status ok, a level that passed its own checks,
    and served vectors that are the model's (or were not checked)."""
    return len(
        {
            _cell_key(row)
            for row in rows
            if row.get("status") == "ok"
            and row.get("valid") is True
            and not row.get("fidelity_failed")
            and not row.get("partial")
        }
    )


def fidelity_runs(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """One row per run that the fidelity probe checked, in row order."""
    seen: set[object] = set()
    out: list[ReportRow] = []
    for row in rows:
        if row.get("fidelity") is None:
            continue
        key = _cell_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _tokens_per_dollar(row: ReportRow) -> float | None:
    cost = finite_number(row.get("cost_per_million_tokens"))
    return 1e6 / cost if cost is not None and cost > 0 else None


def _cell_key(row: ReportRow) -> object:
    # A run has one row per load level; a row without a run id stands for itself.
    return row.get("run_id") or id(row)


def problems(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """One row per blocked, failed or cancelled run, in row order."""
    # A failed run that finished some levels has one row per level; list the run once.
    seen: set[object] = set()
    out: list[ReportRow] = []
    for row in rows:
        if row.get("status") == "ok":
            continue
        key = _cell_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def cell_counts(rows: Sequence[ReportRow]) -> dict[str, int]:
    """Runs (cells) per status: ok, blocked and failed always present, any other status (such as
    cancelled) after them when some run has it."""
    status_of: dict[object, str] = {}
    for row in rows:
        status_of.setdefault(_cell_key(row), format_text(row.get("status")))
    counts = dict.fromkeys(("ok", "blocked", "failed"), 0)
    for status in status_of.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def sweeps(rows: Sequence[ReportRow]) -> list[str]:
    """The sweep names the rows come from, in first-seen order."""
    return list(dict.fromkeys(format_text(row.get("sweep")) for row in rows))


def _measured(row: ReportRow) -> bool:
    return row.get("status") == "ok" and finite_number(row.get("concurrency")) is not None


SeriesKey = tuple[str, str, str, str, str, str]


def series_key(row: ReportRow) -> SeriesKey:
    """What one line on a chart follows across load levels: sweep, model, engine, pool, batch,
    mode. The sweep is part of it: two sweeps of the same model, engine and pool are two
    measurements (another day, another host), never one curve or one best level."""
    return (
        format_text(row.get("sweep")),
        format_text(row.get("model")),
        format_text(row.get("engine")),
        format_text(row.get("pool")),
        format_integer(row.get("batch_size")),
        format_text(row.get("mode") or "closed"),
    )


def peaks(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """Per series and chunk size, the measured level with the most input tokens per second."""
    best: dict[tuple[object, ...], ReportRow] = {}
    for row in rows:
        tokens = finite_number(row.get("input_tokens_per_s"))
        if not _measured(row) or tokens is None:
            continue
        key = (*series_key(row), row.get("chunk_size"))
        held = best.get(key)
        if held is None or tokens > (finite_number(held.get("input_tokens_per_s")) or 0):
            best[key] = row
    return list(best.values())


def cheapest(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """Per series and chunk size, the measured level with the lowest positive cost per million
    tokens, cheapest first; empty when no pool had a price."""
    best: dict[tuple[object, ...], ReportRow] = {}
    for row in rows:
        cost = finite_number(row.get("cost_per_million_tokens"))
        if not _measured(row) or cost is None or cost <= 0:
            continue
        key = (*series_key(row), row.get("chunk_size"))
        held = best.get(key)
        if held is None or cost < (finite_number(held.get("cost_per_million_tokens")) or 0):
            best[key] = row
    return sorted(best.values(), key=lambda r: finite_number(r.get("cost_per_million_tokens")) or 0)


def with_sweep(columns: Sequence[Column], rows: Sequence[ReportRow]) -> tuple[Column, ...]:
    """``columns`` with a leading sweep column when the rows come from more than one sweep (the
    same model, engine and chunk size can then appear once per sweep)."""
    if len(sweeps(rows)) <= 1:
        return tuple(columns)
    return (Column("sweep", lambda r: format_text(r.get("sweep"))), *columns)


def with_open_loop(columns: Sequence[Column], rows: Sequence[ReportRow]) -> tuple[Column, ...]:
    """``columns`` with ``OPEN_LOOP_COLUMNS`` after "conc" when some row is an open-loop level."""
    if not any(row.get("mode") == "open" for row in rows):
        return tuple(columns)
    out: list[Column] = []
    for column in columns:
        out.append(column)
        if column.header == "conc":
            out.extend(OPEN_LOOP_COLUMNS)
    return tuple(out)


def servers(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """One row per engine server the rows were measured on: model, engine (with its version),
    pool, sweep, the chunk sizes it served and its time to healthy (``server_startup_s``)."""
    found: dict[str, ReportRow] = {}
    for row in rows:
        server = row.get("server_id")
        if not server:
            continue
        if server not in found:
            version = row.get("engine_version")
            engine = format_text(row.get("engine")) + (f" {version}" if version else "")
            found[server] = {
                "sweep": row.get("sweep"),
                "model": row.get("model"),
                "engine": engine,
                "pool": row.get("pool"),
                "dtype": row.get("dtype"),
                "chunk_sizes": [],
                "startup": row.get("startup"),
                "server_startup_s": row.get("server_startup_s"),
            }
        chunks = found[server]["chunk_sizes"]
        if row.get("chunk_size") not in chunks:
            chunks.append(row.get("chunk_size"))
    return list(found.values())


def summary_line(rows: Sequence[ReportRow]) -> str:
    """Sweeps and cell counts in one line, for the top of a report."""
    counts = ", ".join(f"{n} {status}" for status, n in cell_counts(rows).items())
    names = ", ".join(sweeps(rows)) or MISSING
    return f"Sweeps: {names} · cells: {counts} · {len(rows)} rows"


def precision_note(rows: Sequence[ReportRow]) -> str | None:
    """One note when measured rows that a table compares (one model, one chunk size) were served
    at different dtypes, or an engine served another dtype than it was started with; None when
    every comparison is like for like."""
    by_model: dict[tuple[object, object], dict[str, set[str]]] = {}
    mismatches: list[str] = []
    for row in rows:
        dtype = row.get("dtype")
        if not _measured(row) or not isinstance(dtype, str):
            continue
        engines = by_model.setdefault((row.get("model"), row.get("chunk_size")), {})
        engines.setdefault(dtype, set()).add(format_text(row.get("engine")))
        note = row.get("dtype_note")
        if isinstance(note, str) and note:
            found = f"{format_text(row.get('engine'))} {note}"
            if found not in mismatches:
                mismatches.append(found)
    parts: list[str] = []
    seen: set[str] = set()
    for (model, _), dtypes in by_model.items():
        if len(dtypes) < 2:
            continue
        served = ", ".join(
            f"{'/'.join(sorted(engines))} {dtype}" for dtype, engines in sorted(dtypes.items())
        )
        part = f"{format_text(model)} was served as {served}"
        if part not in seen:
            seen.add(part)
            parts.append(part)
    parts += mismatches
    return PRECISION_NOTE.format(which="; ".join(parts)) if parts else None


def notes(rows: Sequence[ReportRow]) -> list[str]:
    """The notes that explain the marks in ROWS' status column."""
    marks = {_status(row) for row in rows}
    found = [
        note
        for mark, note in (("ok*", INVALID_NOTE), (FIDELITY_FAILED, FIDELITY_NOTE))
        if mark in marks
    ]
    if any(BUSY_HOST in mark for mark in marks):
        found.append(BUSY_HOST_NOTE)
    if any(row.get("engine") == "hf" and row.get("concurrency") is not None for row in rows):
        found.append(BUILT_IN_NOTE)
    mixed = precision_note(rows)
    if mixed:
        found.append(mixed)
    return found
