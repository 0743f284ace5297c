"""What the command line prints for people on the terminal, beside the report renderers: the
preflight matrix of a sweep, a fidelity probe's answer, and the outcome of a finished sweep
(its comparison table, counts and paths). ``--json`` prints none of these."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from embedsweep.errors import EmbedsweepError

if TYPE_CHECKING:
    from embedsweep.matrix import MatrixRow
    from embedsweep.records import FidelityResult

__all__ = ["print_fidelity", "print_matrix", "print_outcome"]


def print_matrix(rows: Sequence[MatrixRow]) -> None:
    """The dry run of a sweep: one row per cell (ok, rerouted to another engine, or blocked with
    its codes), then the counts."""
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "engine", "pool", "chunk", "outcome", "max input", "codes")
    styles = {"ok": "green", "rerouted": "yellow", "blocked": "red"}
    for row in rows:
        outcome = row.outcome
        label = f"→ {row.final.engine}" if outcome == "rerouted" else outcome
        table.add_row(
            row.cell.model.display_name,
            row.cell.engine,
            row.cell.pool.name,
            str(row.cell.chunk_size),
            f"[{styles[outcome]}]{label}[/]",
            str(row.checks[0].max_input_tokens or "-"),
            ", ".join(row.codes) or "-",
        )
    # A pipe reports 80 columns; the matrix stays readable in a log file at a fixed width.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(table)
    counts = {k: sum(1 for r in rows if r.outcome == k) for k in ("ok", "rerouted", "blocked")}
    console.print(
        f"{len(rows)} cells: {counts['ok']} ok, {counts['rerouted']} rerouted, "
        f"{counts['blocked']} blocked"
    )


def print_fidelity(result: FidelityResult) -> None:
    """A probe that ran (passed or failed): its figures, then each finding on a line."""

    def num(value: float | None, spec: str = ".6f") -> str:
        return "-" if value is None else format(value, spec)

    typer.echo(
        f"fidelity: {result.verdict} (threshold {result.threshold} for {result.served_dtype})"
    )
    if result.verdict in ("passed", "failed"):
        typer.echo(
            f"  {result.texts} texts vs {result.reference}: min cosine "
            f"{num(result.min_cosine)}, mean {num(result.mean_cosine)}, max |diff| "
            f"{num(result.max_abs_diff, '.1e')}"
        )
        typer.echo(
            f"  batch / order / concurrency: min cosine {num(result.invariance_min_cosine)}, "
            f"max |diff| {num(result.invariance_max_abs_diff, '.1e')}"
        )
        typer.echo(
            f"  dimension {result.dimension} (model {result.reference_dimension}); unit norm "
            f"{result.normalized} (model normalises: {result.reference_normalized}); "
            f"dimensions: {result.dimensions_request}; over-length input: {result.overlength}"
        )
    for finding in result.findings:
        typer.echo(f"  {finding.code}: {finding.message}")


def print_outcome(name: str, summary: Mapping[str, Any]) -> None:
    """What a finished ``embedsweep run`` prints on stdout: the sweep's comparison table (the
    ``embedsweep report`` table of this sweep run), the counts, then the HTML report's and the
    warehouse's paths, each on a line of its own."""
    import shutil

    from embedsweep import report as report_mod
    from embedsweep import store

    try:
        con = store.open_warehouse(Path(summary["warehouse"]), read_only=True)
        try:
            rows = store.report_rows(con, sweep_run_id=summary["sweep_run_id"])
        finally:
            con.close()
    except EmbedsweepError as exc:
        # The sweep ran and is recorded; a table that cannot be read now is not its failure.
        typer.echo(f"warning: no results table: {exc.message}", err=True)
    else:
        # COLUMNS, else the terminal's width, else 160 (a pipe or a file).
        width = shutil.get_terminal_size((160, 24)).columns
        typer.echo("")
        typer.echo(report_mod.render(rows, "table", width=width).rstrip("\n"))
    counts = [f"{summary[status]} {status}" for status in ("ok", "blocked", "failed")]
    counts += [f"{summary[key]} {key}" for key in ("cancelled", "regressions") if summary.get(key)]
    typer.echo("")
    typer.echo(f"sweep {name}: {', '.join(counts)} (sweep run {summary['sweep_run_id']})")
    typer.echo("the HTML report and the warehouse:")
    typer.echo(summary["report"])
    typer.echo(summary["warehouse"])
