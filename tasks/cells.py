"""Prefect tasks around the library's cell entrypoints: retries, timeouts and names only.

Retry policy: a transient server failure (a port taken between choosing and binding it, one
start-up timeout) is retried with backoff; everything deterministic (unsupported architecture,
context overflow, missing model, out of memory) is recorded once and never retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from embedsweep import store
from embedsweep.config import Cell
from embedsweep.errors import ServerError
from embedsweep.records import RunManifest
from embedsweep.runner import CellPlan, Preflighted, Progress, preflight_cell, run_cell, run_group

__all__ = ["ingest_run_task", "preflight_task", "run_cell_task", "run_group_task"]

CELL_RETRIES = 2


def _transient_only(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except ServerError as exc:
        return exc.transient
    except Exception:
        return False
    return False


@task(
    name="preflight",
    cache_policy=NO_CACHE,
    task_run_name="preflight {cell.engine}/{cell.chunk_size}",
)
def preflight_task(cell: Cell, fallback_engine: str | None) -> Preflighted:
    return preflight_cell(cell, fallback_engine=fallback_engine)


# Cell runs retry transient start-up failures only, with backoff (module docstring).
_RETRY_TRANSIENT: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": CELL_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient_only,
}


@task(name="run-cell", **_RETRY_TRANSIENT)
def run_cell_task(
    plan: CellPlan,
    checked: Preflighted,
    progress: Progress | None = None,
    run_id: str | None = None,
) -> RunManifest:
    # The last attempt records a transient failure instead of raising it. Without a run id each
    # attempt is a run directory of its own; with one (a dispatched cell, whose directory the
    # sweep must find) the attempts share it and its server.log.
    last_attempt = int(task_run.run_count or 1) > CELL_RETRIES
    return run_cell(
        plan, checked=checked, progress=progress, raise_transient=not last_attempt, run_id=run_id
    )


@task(
    name="run-cells",
    task_run_name="run {plans[0].cell.model.display_name} on {plans[0].cell.engine}",
    **_RETRY_TRANSIENT,
)
def run_group_task(
    plans: list[CellPlan],
    checked: list[Preflighted],
    progress: Progress | None = None,
    run_ids: list[str] | None = None,
) -> list[RunManifest]:
    """The cells of one server (same model, engine, pool; any chunk sizes): one start, then
    every cell's levels. A transient start-up failure retries the whole group; with RUN_IDS
    (dispatched cells, whose directories the sweep must find) the attempts share them."""
    last_attempt = int(task_run.run_count or 1) > CELL_RETRIES
    return run_group(
        plans,
        checked=list(checked),
        progress=progress,
        raise_transient=not last_attempt,
        run_ids=run_ids,
    )


@task(name="ingest", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2)
def ingest_run_task(warehouse: Path, run_dir: Path) -> bool:
    con = store.open_warehouse(warehouse)
    try:
        return store.ingest_run(con, run_dir)
    finally:
        con.close()
