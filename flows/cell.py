"""The cells of one engine server on one GPU host: the flow behind each pool's
``benchmark-cell-<pool>`` deployment.

The sweep flow (distributed mode) starts it with ``run_deployment`` on the host's work queue and
names the devices, with every chunk size of one (model, engine, pool): they share one server
start (``runner.run_group``). It holds each device's strict global concurrency limit while it
runs (a missing limit is an error, not a silent pass), runs the cells with the library, and
leaves their run directories in the shared artifacts folder (or uploads them to
``artifacts_url``). It never writes the warehouse: the sweep flow is the only writer.
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
from tasks.cells import preflight_task, run_group_task

__all__ = ["benchmark_cell"]


def _upload(artifacts: str, artifacts_url: str | None, sweep_run_id: str, run_id: str) -> None:
    if not artifacts_url:
        return
    from embedsweep.storage import upload_run

    run_dir = Path(artifacts) / sweep_run_id / run_id
    if run_dir.is_dir():
        upload_run(run_dir, artifacts_url, sweep_run_id)


def _stopped(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation / on_crashed: stop this run's engine servers, record the cells that did
    not finish ``cancelled`` and hand their directories to the sweep (which ingests them)."""
    pidfiles.reap(owner=flow_run.id.hex)
    params = flow_run.parameters
    try:
        runs = Path(params["artifacts"]) / params["sweep_run_id"]
        run_ids = list(params["run_ids"])
    except (KeyError, TypeError):
        return
    for run_id in run_ids:
        finalize_run(runs / run_id)
        _upload(params["artifacts"], params.get("artifacts_url"), params["sweep_run_id"], run_id)


@flow(name="benchmark-cell", on_cancellation=[_stopped], on_crashed=[_stopped])
def benchmark_cell(
    cells: list[Cell],
    sweep_name: str,
    sweep_run_id: str,
    run_ids: list[str],
    load: LoadSpec,
    artifacts: str,
    host: str,
    devices: list[str],
    artifacts_url: str | None = None,
    startup_timeout_s: float = 600.0,
    fallback_engine: str | None = None,
) -> list[dict[str, Any]]:
    """Run CELLS (the chunk sizes of one model on one engine and pool: one server) on
    ``devices`` of ``host``, cell i into run ``run_ids[i]``; returns each one's status and run
    directory."""
    logger = get_run_logger()
    if len(cells) != len(run_ids) or not cells:
        raise ValueError("benchmark-cell needs one run id per cell, and at least one cell")
    ctx = FlowRunContext.get()
    owner = ctx.flow_run.id.hex if ctx and ctx.flow_run else run_ids[0]
    pool = cells[0].pool.name
    limits = [concurrency_limit_name(pool, host, d) for d in devices]
    plans = [
        CellPlan(
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
        for cell in cells
    ]
    labels = ", ".join(cell.label for cell in cells)
    logger.info("%s on %s, devices %s (limits %s)", labels, host, devices, limits)
    with concurrency(limits, occupy=1, strict=True):
        checked = [preflight_task(cell, fallback_engine) for cell in cells]
        manifests = run_group_task(plans, checked, run_ids=run_ids)
    out = []
    for cell, manifest in zip(cells, manifests, strict=True):
        _upload(artifacts, artifacts_url, sweep_run_id, manifest.run_id)
        logger.info("%s: %s %s", cell.label, manifest.status, manifest.reason or "")
        out.append(
            {
                "run_id": manifest.run_id,
                "status": manifest.status,
                "reason": manifest.reason,
                "run_dir": str(Path(artifacts) / sweep_run_id / manifest.run_id),
            }
        )
    return out
