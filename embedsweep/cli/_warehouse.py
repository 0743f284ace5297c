"""The commands that read the warehouse: ``embedsweep report`` (the comparison, as a table,
markdown, JSON or HTML) and ``embedsweep sql`` (read-only SQL in a sandbox)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from embedsweep.cli._app import DEFAULT_WAREHOUSE, JsonFlag, WarehouseOpt, app, echo_json, fail
from embedsweep.errors import ConfigError, EmbedsweepError

__all__ = ["report", "sql"]


@app.command()
def report(
    warehouse: WarehouseOpt = DEFAULT_WAREHOUSE,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="table, markdown, json, or html (one self-contained file)."
        ),
    ] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    sweep_run_id: Annotated[
        str | None, typer.Option(help="Only this sweep run (default: latest run of every cell).")
    ] = None,
) -> None:
    """Compare results: one row per cell and load level."""
    import shutil

    from embedsweep import report as report_mod
    from embedsweep import store

    if fmt not in ("table", "markdown", "json", "html"):
        fail(f"--format must be table, markdown, json or html, not {fmt!r}")
    try:
        con = store.open_warehouse(warehouse, read_only=True)
    except EmbedsweepError as exc:
        fail(exc.message)
    try:
        rows = store.report_rows(con, sweep_run_id=sweep_run_id)
    finally:
        con.close()
    # The table is as wide as COLUMNS, else the terminal; a pipe or a file gets 160.
    width = shutil.get_terminal_size((160, 24)).columns
    text = report_mod.render(rows, fmt, width=width)  # type: ignore[arg-type]
    if output:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        typer.echo(text)


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="SQL to run (read-only).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the SQL from a file.")
    ] = None,
    warehouse: WarehouseOpt = DEFAULT_WAREHOUSE,
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--runs",
            help="A run folder queries may read (requests.parquet); repeat for more. Default: "
            "runs/ beside the warehouse file.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run read-only SQL (SELECT, EXPLAIN) against the warehouse.

    The query sees the warehouse and the run folders only: writes, COPY / EXPORT, ATTACH,
    INSTALL / LOAD, settings, and any other file or network access are refused (exit 2)."""
    import shutil

    from embedsweep import report as report_mod

    columns, rows = _read_only(_sql_text(query, file), warehouse, runs)
    if as_json:
        echo_json([dict(zip(columns, r, strict=True)) for r in rows])
        return
    # As wide as COLUMNS, else the terminal; a pipe or a file gets 160. Floats are rounded for
    # people here; --json has every digit.
    width = shutil.get_terminal_size((160, 24)).columns
    typer.echo(report_mod.render_query(columns, rows, width=width), nl=False)


def _sql_text(query: str | None, file: Path | None) -> str:
    """The SQL given on the command line or read from FILE (exactly one of them)."""
    if (query is None) == (file is None):
        fail("give a query or --file, not both or neither")
    if file is not None:
        try:
            query = file.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"{file}: {exc.strerror or exc}")
    assert query is not None
    return query


def _read_only(
    query: str, warehouse: Path, runs: list[Path] | None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """QUERY's columns and rows, run on the warehouse opened read-only and sandboxed to the run
    folders (default: runs/ beside it); a refused or failing query is bad input."""
    import duckdb

    from embedsweep import store

    try:
        con = store.open_warehouse(warehouse, read_only=True)
    except EmbedsweepError as exc:
        fail(exc.message)
    try:
        store.sandbox(con, runs if runs else [warehouse.parent / "runs"])
        return store.read_only_query(con, query)
    except ConfigError as exc:
        fail(exc.message)
    except duckdb.PermissionException as exc:
        fail(
            "refused: embedsweep sql reads the warehouse and its run folders only ("
            + str(exc).splitlines()[0]
            + ")"
        )
    except duckdb.Error as exc:
        fail(str(exc).splitlines()[0])
    finally:
        con.close()
