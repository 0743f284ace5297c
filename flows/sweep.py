"""The sweep flow: expand the sweep into cells, preflight them all, run each cell, ingest each run
into the warehouse as soon as it is written, and record the sweep. Wiring only: the work is in
``embedsweep.runner`` and ``embedsweep.store``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from embedsweep import store
from embedsweep.config import SweepSpec
from embedsweep.runner import CellPlan
from tasks.cells import ingest_run_task, preflight_task, run_cell_task

__all__ = ["sweep"]


def _record_sweep(
    warehouse: Path,
    spec: SweepSpec,
    sweep_run_id: str,
    started: datetime,
    finished: datetime | None,
) -> None:
    con = store.open_warehouse(warehouse)
    try:
        store.record_sweep(
            con,
            sweep_run_id=sweep_run_id,
            sweep_name=spec.name,
            spec_json=spec.model_dump_json(),
            started_at=started,
            finished_at=finished,
        )
    finally:
        con.close()


@flow(name="sweep", log_prints=True)
def sweep(
    spec: SweepSpec, warehouse: str | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Run every cell of a sweep and load the results into DuckDB."""
    logger = get_run_logger()
    sweep_run_id = uuid.uuid4().hex
    db = Path(warehouse) if warehouse else spec.warehouse
    started = datetime.now(UTC)
    _record_sweep(db, spec, sweep_run_id, started, None)

    cells = spec.cells()
    checked = [preflight_task(cell, spec.fallback_engine) for cell in cells]
    runnable = sum(1 for checks, _ in checked if checks[-1].verdict == "ok")
    logger.info(
        "sweep %s: %d cells, %d runnable, %d blocked by preflight",
        spec.name,
        len(cells),
        runnable,
        len(cells) - runnable,
    )
    counts = {"ok": 0, "blocked": 0, "failed": 0, "cancelled": 0}
    total_levels = runnable * len(spec.load.concurrency) + (len(cells) - runnable)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not show_progress) as bar:
        job = bar.add_task("sweep", total=total_levels)

        def advance(levels: int, description: str) -> None:
            bar.update(job, advance=levels, description=description)

        for cell, check in zip(cells, checked, strict=True):
            plan = CellPlan(
                cell=cell,
                sweep_name=spec.name,
                sweep_run_id=sweep_run_id,
                load=spec.load,
                artifacts=spec.artifacts,
                startup_timeout_s=spec.startup_timeout_s,
                fallback_engine=spec.fallback_engine,
            )
            manifest = run_cell_task(plan, check, progress=advance)
            if manifest.status != "ok":
                advance(1, f"{cell.label}: {manifest.status} ({manifest.reason})")
            counts[manifest.status] += 1
            ingest_run_task(db, spec.artifacts / sweep_run_id / manifest.run_id)
            logger.info(
                "%s: %s%s",
                cell.label,
                manifest.status,
                f" ({manifest.reason})" if manifest.reason else "",
            )
    _record_sweep(db, spec, sweep_run_id, started, datetime.now(UTC))
    summary = {"sweep_run_id": sweep_run_id, "warehouse": str(db), "cells": len(cells), **counts}
    logger.info("sweep finished: %s", json.dumps(summary))
    return summary
