"""The commands about sweep files and their runs: ``embedsweep run`` (the preflight matrix, then
the Prefect flow), ``embedsweep validate`` and ``embedsweep ingest`` (finished run folders into
the warehouse)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from embedsweep.cli._app import DEFAULT_WAREHOUSE, JsonFlag, WarehouseOpt, app, echo_json, fail
from embedsweep.cli._session import (
    RUN_WORKER_ENV,
    prefect_environment,
    run_in_own_session,
    terminate_like_ctrl_c,
)
from embedsweep.errors import ConfigError, EmbedsweepError
from embedsweep.report_terminal import print_matrix, print_outcome

if TYPE_CHECKING:
    from embedsweep.config import SweepSpec

__all__ = ["PREFECT_PARAMETERS_MAX_BYTES", "ingest", "run", "validate"]

# Prefect's limit on a flow run's parameters is 524,288 bytes; the sweep leaves room for the rest.
PREFECT_PARAMETERS_MAX_BYTES = 500_000


@app.command()
def run(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file.", metavar="SWEEP.yaml")],
    warehouse: Annotated[
        Path | None, typer.Option("--warehouse", "-w", help="Override the sweep's warehouse.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Run a sweep: the preflight matrix first, then the Prefect flow (local mode, no server to
    start). Exit 0 when at least one cell produced a valid measurement; 1 when none did (every
    cell blocked, failed, cut short, invalid, or fidelity_failed: all still recorded); 2 bad
    input; 130 interrupted."""
    if not os.environ.get(RUN_WORKER_ENV) and sys.argv[1:2] == ["run"]:
        run_in_own_session()
    from embedsweep.matrix import preflight_sweep

    spec = _checked_sweep(sweep_file, warehouse)
    # The dry run first: what will run, what is rerouted, what is blocked and why.
    rows = preflight_sweep(spec)
    if not as_json:
        print_matrix(rows)
    summary = _run_flow(spec, warehouse, progress)
    if as_json:
        echo_json(summary)
    else:
        print_outcome(spec.name, summary)
    if not any(row.runnable for row in rows):
        typer.echo("error: no cell of this sweep can run (blocked cells recorded)", err=True)
        raise typer.Exit(1)
    if not summary.get("valid"):
        # CI and cron must tell: every cell failed, was cut short, or measured something else.
        typer.echo("error: no cell produced a valid measurement (see embedsweep report)", err=True)
        raise typer.Exit(1)


def _checked_sweep(sweep_file: Path, warehouse: Path | None) -> SweepSpec:
    """The sweep of SWEEP_FILE, once it is known to fit in a flow run's parameters and its
    results have somewhere to go; bad input exits 2 and leaves nothing behind."""
    from embedsweep import store
    from embedsweep.config import load_sweep

    try:
        spec = load_sweep(sweep_file)
    except ConfigError as exc:
        fail(exc.message)
    # The sweep travels to Prefect as a flow-run parameter, and Prefect refuses parameters over
    # 512 KiB with a traceback after the warehouse was created: say so first, writing nothing.
    size = len(spec.model_dump_json())
    if size > PREFECT_PARAMETERS_MAX_BYTES:
        fail(
            f"{sweep_file}: the sweep is {size:,} bytes as JSON, more than the "
            f"{PREFECT_PARAMETERS_MAX_BYTES:,} Prefect takes as a flow run's parameters; split it "
            "(fewer models or cells, a shorter description)"
        )
    # Where the results go, checked before anything starts: a typo fails in one line, not in a
    # traceback after the preflight. The artifacts folder first, so a bad one leaves no warehouse.
    made = not spec.artifacts.exists()
    problem = _unwritable_folder(spec.artifacts, "artifacts folder")
    if problem:
        fail(problem)
    try:
        store.open_warehouse(warehouse or spec.warehouse).close()  # the sweep's first step anyway
    except EmbedsweepError as exc:
        if made:
            # Nothing ran: leave no empty artifacts folder behind either.
            with contextlib.suppress(OSError):
                spec.artifacts.rmdir()
        fail(exc.message)
    return spec


def _unwritable_folder(path: Path, what: str) -> str | None:
    """Why the folder ``path`` cannot be written, or None: found by creating it and a probe file
    in it (permission bits say nothing for root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".embedsweep-probe-"):
            pass
    except OSError as exc:
        return f"{what} {path}: cannot write to it ({exc.strerror or exc})"
    return None


def _run_flow(spec: SweepSpec, warehouse: Path | None, progress: bool) -> dict[str, Any]:
    """The sweep flow, run here in Prefect's local mode: its summary."""
    # SIGTERM (a `kill`, a container stop) unwinds like Ctrl-C, so every `finally` runs and the
    # engine servers, each in its own session, are stopped rather than orphaned.
    signal.signal(signal.SIGTERM, terminate_like_ctrl_c)
    # A bar only on a terminal: CI logs and pipes get Prefect's log lines, one per event.
    show_bar = progress and sys.stderr.isatty()
    prefect_environment(show_bar)
    # The one place the library starts its Prefect shell (flows/ imports the library, never the
    # other way round): imported only here, once the Prefect settings above are made.
    from flows.sweep import sweep  # noqa: TID251

    return sweep(spec, warehouse=str(warehouse) if warehouse else None, show_progress=show_bar)


@app.command()
def validate(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file.", metavar="SWEEP.yaml")],
) -> None:
    """Check a sweep file without running anything."""
    from embedsweep.config import load_sweep

    try:
        spec = load_sweep(sweep_file)
    except ConfigError as exc:
        fail(exc.message)
    typer.echo(f"{sweep_file}: ok ({len(spec.cells())} cells)")


@app.command()
def ingest(
    runs: Annotated[
        Path,
        typer.Argument(
            help="A run directory, or a folder of them (searched recursively).",
            metavar="RUNS_DIR",
        ),
    ],
    warehouse: WarehouseOpt = DEFAULT_WAREHOUSE,
    as_json: JsonFlag = False,
) -> None:
    """Load finished run directories (run.json + requests.parquet) into the warehouse.

    Sweeps ingest their own runs; this is for runs left in shared storage by cells of a cancelled
    distributed sweep, or copied from another machine. Runs already there are skipped.
    """
    from embedsweep import store

    if not runs.exists():
        fail(f"{runs}: no such file or folder")
    run_dirs = sorted(p.parent for p in runs.rglob("run.json")) if runs.is_dir() else []
    if (runs / "run.json").is_file() and runs not in run_dirs:
        run_dirs.insert(0, runs)
    try:
        con = store.open_warehouse(warehouse)
    except EmbedsweepError as exc:
        fail(exc.message)
    try:
        new = store.ingest_runs(con, run_dirs)
    except EmbedsweepError as exc:
        fail(exc.message, code=1)
    finally:
        con.close()
    if as_json:
        echo_json({"found": len(run_dirs), "ingested": new, "warehouse": str(warehouse)})
    else:
        typer.echo(f"{new} new run(s) of {len(run_dirs)} found → {warehouse}")
