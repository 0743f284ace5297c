"""One cell on one GPU host: the flow behind each pool's ``benchmark-cell-<pool>`` deployment.

The sweep flow (distributed mode) starts it with ``run_deployment`` on the host's work queue and
names the devices. It holds each device's strict global concurrency limit while it runs (a missing
limit is an error, not a silent pass), runs the cell with the library, and leaves the run
directory in the shared artifacts folder (or uploads it to ``artifacts_url``). It never writes the
warehouse: the sweep flow is the only writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext

from embedsweep.config import Cell, LoadSpec
from embedsweep.engines import pidfiles
from embedsweep.placement import concurrency_limit_name
from embedsweep.runner import CellPlan, finalize_run
from tasks.cells import preflight_task, run_cell_task

__all__ = ["benchmark_cell"]


def _upload(artifacts: str, artifacts_url: str | None, sweep_run_id: str, run_id: str) -> None:
    if not artifacts_url:
        return
    from embedsweep.storage import upload_run

    run_dir = Path(artifacts) / sweep_run_id / run_id
    if run_dir.is_dir():
        upload_run(run_dir, artifacts_url, sweep_run_id)


def _stopped(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation / on_crashed: stop this run's engine servers, record the cell
    ``cancelled`` and hand its directory to the sweep (which ingests it)."""
    pidfiles.reap(owner=flow_run.id.hex)
    params = flow_run.parameters
    try:
        run_dir = Path(params["artifacts"]) / params["sweep_run_id"] / params["run_id"]
    except KeyError:
        return
    finalize_run(run_dir)
    _upload(params["artifacts"], params.get("artifacts_url"), params["sweep_run_id"], run_dir.name)


@flow(name="benchmark-cell", on_cancellation=[_stopped], on_crashed=[_stopped])
def benchmark_cell(
    cell: Cell,
    sweep_name: str,
    sweep_run_id: str,
    run_id: str,
    load: LoadSpec,
    artifacts: str,
    host: str,
    devices: list[str],
    artifacts_url: str | None = None,
    startup_timeout_s: float = 600.0,
    fallback_engine: str | None = None,
) -> dict[str, Any]:
    """Run one cell on ``devices`` of ``host``; returns its status and run directory."""
    logger = get_run_logger()
    ctx = FlowRunContext.get()
    owner = ctx.flow_run.id.hex if ctx and ctx.flow_run else run_id
    limits = [concurrency_limit_name(cell.pool.name, host, d) for d in devices]
    plan = CellPlan(
        cell=cell,
        sweep_name=sweep_name,
        sweep_run_id=sweep_run_id,
        load=load,
        artifacts=Path(artifacts),
        startup_timeout_s=startup_timeout_s,
        fallback_engine=fallback_engine,
        host=host,
        devices=tuple(devices),
        owner=owner,
    )
    logger.info("%s on %s, devices %s (limits %s)", cell.label, host, devices, limits)
    with concurrency(limits, occupy=1, strict=True):
        checked = preflight_task(cell, fallback_engine)
        manifest = run_cell_task(plan, checked, run_id=run_id)
    _upload(artifacts, artifacts_url, sweep_run_id, run_id)
    logger.info("%s: %s %s", cell.label, manifest.status, manifest.reason or "")
    return {
        "run_id": manifest.run_id,
        "status": manifest.status,
        "reason": manifest.reason,
        "run_dir": str(Path(artifacts) / sweep_run_id / run_id),
    }
