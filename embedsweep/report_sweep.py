"""What a finished sweep reports beside its table: the cells that did not run, the runs whose
vectors were not the model's, and the regressions against the previous run of each cell
(:func:`regressions` reads them; :func:`problems_markdown` writes the markdown the sweep flow
publishes as a Prefect artifact). Every value goes through :func:`report.markdown_text`, which
escapes HTML: a Prefect artifact renders markdown's raw HTML, and a model name is user input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from embedsweep import report, store
from embedsweep.store_schema import statement

__all__ = ["problems_markdown", "regressions"]


def regressions(
    con: duckdb.DuckDBPyConnection, sweep_run_id: str, threshold: float
) -> list[dict[str, Any]]:
    """The levels of SWEEP_RUN_ID whose input tokens/s fell more than THRESHOLD (0.1 = 10%)
    since the previous run of their cell, worst first."""
    columns, rows = store.query(con, statement("sweep_regressions"), [sweep_run_id, -threshold])
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _table(header: Sequence[str], right: Sequence[bool], rows: list[list[object]]) -> list[str]:
    """A markdown table, every cell escaped."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    for row in rows:
        cells = ("" if value is None else report.markdown_text(str(value)) for value in row)
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _problem_rows(rows: list[dict[str, Any]]) -> list[list[object]]:
    out: list[list[object]] = []
    for row in report.problems(rows):
        message = str(row.get("message") or "").splitlines()[0:1]
        text = (message[0] if message else "")[:200]
        fields = ("model", "engine", "pool", "chunk_size", "status")
        out.append([*(row.get(f) for f in fields), row.get("reason") or "", text])
    return out


def _unfaithful_rows(rows: list[dict[str, Any]]) -> list[list[object]]:
    out: list[list[object]] = []
    for row in report.fidelity_runs(rows):
        if row.get("fidelity") != "failed":
            continue
        codes = ", ".join(str(f.get("code")) for f in row.get("fidelity_findings") or [])
        fields = ("model", "engine", "pool", "chunk_size", "fidelity_min_cosine")
        out.append([*(row.get(f) for f in fields), row.get("fidelity_threshold"), codes])
    return out


def _regression_rows(found: list[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            r["model"],
            f"{r['engine']} {r['engine_version'] or ''}",
            r["pool"],
            r["chunk_size"],
            r["concurrency"],
            f"{r['prev_input_tokens_per_s']:.0f}",
            f"{r['input_tokens_per_s']:.0f}",
            f"{r['tokens_per_s_change']:+.1%}",
        ]
        for r in found
    ]


def problems_markdown(
    rows: list[dict[str, Any]], found: list[dict[str, Any]], threshold: float
) -> str:
    """The sweep's summary line, its mixed-precision note, then a table each of the cells that
    did not run or finish, the fidelity failures and the regressions (FOUND)."""
    lines = [f"# {report.markdown_text(report.summary_line(rows))}", ""]
    mixed = report.precision_note(rows)
    if mixed:
        lines += [report.markdown_text(mixed), ""]
    problems = _problem_rows(rows)
    if problems:
        lines += ["## Cells that did not run or did not finish", ""]
        lines += _table(
            ("model", "engine", "pool", "tokens", "status", "reason", "message"),
            [False] * 3 + [True] + [False] * 3,
            problems,
        )
    else:
        lines += ["Every cell ran.", ""]
    unfaithful = _unfaithful_rows(rows)
    if unfaithful:
        lines += ["## Fidelity failed: the served vectors are not the model's", ""]
        lines += _table(
            ("model", "engine", "pool", "tokens", "min cosine", "needs", "findings"),
            [False] * 3 + [True] * 3 + [False],
            unfaithful,
        )
    if found:
        lines += [f"## Regressions (input tokens/s down more than {threshold:.0%})", ""]
        lines += _table(
            ("model", "engine", "pool", "tokens", "concurrency", "before", "now", "change"),
            [False] * 3 + [True] * 5,
            _regression_rows(found),
        )
    return "\n".join(lines)
