"""The sweep flow: expand the sweep into cells, preflight them all, run each cell (here, or on the
pool's GPU hosts through their ``benchmark-cell`` deployments), ingest every run into the
warehouse (this flow is its only writer), and show the outcome in the Prefect UI: a progress
artifact while it runs, then a results table, a markdown list of blocked / failed / cancelled
cells and regressions, and a link to the HTML report. Wiring only: the work is in
``embedsweep.runner`` and ``embedsweep.store``.
"""

from __future__ import annotations

import contextvars
import json
import queue
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.events import emit_event
from pydantic import Field
from rich.progress import Progress

from embedsweep import placement, report, report_sweep, store
from embedsweep.config import Cell, SweepSpec
from embedsweep.engines import pidfiles
from embedsweep.placement import Slot, cell_deployment_name
from embedsweep.records import PreflightResult, RunManifest
from embedsweep.runner import (
    CellPlan,
    Preflighted,
    build_manifest,
    finalize_run,
    finalize_unfinished,
    group_cells,
    write_manifest,
)
from flows.terminal import sweep_bar
from tasks.cells import ingest_run_task, preflight_task, run_group_task

__all__ = ["sweep"]

Mode = Literal["local", "distributed"]
RegressionThreshold = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        description=(
            "A level whose input tokens/s fell by more than this fraction against the previous "
            "run of the same cell is a regression (flagged, and emitted as a Prefect event)."
        ),
    ),
]
REGRESSION_EVENT = "embedsweep.regression.detected"
_STATUSES = ("ok", "blocked", "failed", "cancelled")


def _flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return ctx.flow_run.id.hex if ctx and ctx.flow_run else None


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
            spec_json=spec.redacted_json(),
            started_at=started,
            finished_at=finished,
        )
    finally:
        con.close()


class _Tracker:
    """Counts finished cells, drives the terminal bar and the UI's progress artifact."""

    def __init__(self, total_cells: int, total_levels: int, bar: Progress) -> None:
        self.total_cells = max(total_cells, 1)
        self.total_levels = total_levels
        self.done = 0
        self.bar = bar
        self.job = bar.add_task("sweep", total=total_levels)
        self.lock = threading.Lock()
        self.artifact: UUID | None = None
        try:
            created = create_progress_artifact(
                0.0, key="sweep-progress", description=f"0 of {total_cells} cells done"
            )
            self.artifact = created if isinstance(created, UUID) else None
        except Exception:  # the UI's progress is a nicety; a sweep does not fail over it
            get_run_logger().debug("progress artifact unavailable", exc_info=True)

    def advance(self, levels: int, description: str) -> None:
        with self.lock:
            self.bar.update(self.job, advance=levels, description=description)

    def finish(self, description: str) -> None:
        # The bar stays on the screen: full (a failed cell skips its levels), saying what was
        # done rather than naming the last cell.
        with self.lock:
            self.bar.update(self.job, completed=self.total_levels, description=description)

    def cell_done(self) -> None:
        with self.lock:
            self.done += 1
            if self.artifact is not None:
                update_progress_artifact(
                    self.artifact,
                    100.0 * self.done / self.total_cells,
                    description=f"{self.done} of {self.total_cells} cells done",
                )


def _plan(spec: SweepSpec, cell: Cell, sweep_run_id: str, owner: str) -> CellPlan:
    return CellPlan(
        cell=cell,
        sweep_name=spec.name,
        sweep_run_id=sweep_run_id,
        load=spec.load,
        artifacts=spec.artifacts,
        startup_timeout_s=spec.startup_timeout_s,
        fallback_engine=spec.fallback_engine,
        owner=owner,
    )


def _ingest(db: Path, run_dir: Path) -> None:
    ingest_run_task(db, run_dir)


# --- distributed mode -------------------------------------------------------------------------


def _sweep_tag(sweep_run_id: str) -> str:
    """Tag of every cell flow run a distributed sweep starts (its hooks find them by it)."""
    return f"embedsweep-sweep-{sweep_run_id}"


def _run_remote(
    spec: SweepSpec,
    cells: list[Cell],
    slot: Slot,
    sweep_run_id: str,
    run_ids: list[str],
    stop: threading.Event,
) -> str | None:
    """Run one server's cells through their pool's benchmark-cell deployment on ``slot``'s
    host; returns the cell flow run's final state name (None when it could not be followed to
    the end)."""
    from prefect.deployments import run_deployment

    parameters = {
        "cells": [cell.model_dump(mode="json") for cell in cells],
        "sweep_name": spec.name,
        "sweep_run_id": sweep_run_id,
        "run_ids": run_ids,
        "load": spec.load.model_dump(mode="json"),
        "artifacts": str(spec.artifacts),
        "artifacts_url": spec.artifacts_url,
        "host": slot.host,
        "devices": list(slot.devices),
        "startup_timeout_s": spec.startup_timeout_s,
        "fallback_engine": spec.fallback_engine,
    }
    flow_run = run_deployment(
        name=cell_deployment_name(slot.pool),
        parameters=parameters,
        work_queue_name=slot.host,
        job_variables={"env": {"CUDA_VISIBLE_DEVICES": ",".join(slot.devices)}},
        tags=[_sweep_tag(sweep_run_id)],
        timeout=0,
    )
    assert isinstance(flow_run, FlowRun)  # called from sync code: not a coroutine
    return _wait_final(flow_run.id, stop)


def _wait_final(flow_run_id: UUID, stop: threading.Event, poll_s: float = 1.0) -> str | None:
    """Poll a flow run until its state is final; API hiccups are waited out (up to a minute)."""
    from prefect.client.orchestration import get_client

    misses = 0
    with get_client(sync_client=True) as client:
        while not stop.is_set():
            try:
                run = client.read_flow_run(flow_run_id)
            except Exception:
                misses += 1
                if misses * poll_s > 60:
                    return None
            else:
                misses = 0
                if run.state is not None and run.state.is_final():
                    return run.state.name
            stop.wait(poll_s)
    return None


def _collect(
    spec: SweepSpec,
    cell: Cell,
    checks: list[PreflightResult],
    sweep_run_id: str,
    run_id: str,
    state: str | None,
    host: str,
    error: str | None = None,
) -> Path:
    """The run directory of a dispatched cell, fetched from shared storage when needed; a cell
    that left nothing behind gets a manifest saying what its flow run ended as."""
    from embedsweep.storage import download_run

    run_dir = spec.artifacts / sweep_run_id / run_id
    if spec.artifacts_url and not (run_dir / "run.json").exists():
        download_run(spec.artifacts_url, sweep_run_id, run_id, spec.artifacts)
    if state is not None:
        # The cell's flow run is over: a pending.json left behind is a run that never finished.
        finalize_run(run_dir)
    if not (run_dir / "run.json").exists():
        cancelled = state in ("Cancelled", "Cancelling")
        # The runner's own manifest builder, so this record carries every field a measured one
        # does (host, seed, max_input_tokens, ...), with the host the cell was dispatched to.
        plan = replace(_plan(spec, cell, sweep_run_id, sweep_run_id), host=host)
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        manifest = build_manifest(
            plan,
            run_id=run_id,
            engine=checks[-1].engine,
            checks=checks,
            started_at=stamp,
            finished_at=stamp,
            status="cancelled" if cancelled else "failed",
            reason="cancelled" if cancelled else "unknown",
            message=(
                f"the cell's flow run ended {state} and left no run directory"
                if state is not None
                else f"the cell could not be dispatched or followed: {error or 'no state'}"
            ),
        )
        write_manifest(run_dir, manifest)
    return run_dir


def _distributed(
    spec: SweepSpec,
    work: list[tuple[Cell, list[PreflightResult]]],
    sweep_run_id: str,
    db: Path,
    tracker: _Tracker,
    counts: dict[str, int],
) -> None:
    """Every slot of every pool takes the pool's servers one at a time (a server: every chunk
    size of one model on one engine, run by one cell flow with one server start); each cell flow
    also holds its devices' strict global concurrency limits, so other sweeps never share them."""
    logger = get_run_logger()
    slots = placement.slots(spec, {cell.pool.name for cell, _ in work})
    Group = list[tuple[Cell, list[PreflightResult]]]
    queues: dict[str, queue.Queue[Group]] = {}
    keyed = [(_plan(spec, cell, sweep_run_id, sweep_run_id), checks) for cell, checks in work]
    for indices in group_cells(keyed):
        group = [work[i] for i in indices]
        queues.setdefault(group[0][0].pool.name, queue.Queue()).put(group)
    ingest_lock = threading.Lock()
    stop = threading.Event()

    def one_group(slot: Slot, group: Group) -> None:
        cells = [cell for cell, _ in group]
        run_ids = [uuid.uuid4().hex for _ in group]
        label = cells[0].label if len(cells) == 1 else f"{cells[0].label} (+{len(cells) - 1})"
        tracker.advance(0, f"{label} → {slot.host} {','.join(slot.devices)}")
        state: str | None = None
        error: str | None = None
        try:
            state = _run_remote(spec, cells, slot, sweep_run_id, run_ids, stop)
        except Exception as exc:  # the deployment could not be started: record why
            logger.error("%s: could not dispatch: %s", label, exc)
            error = f"{type(exc).__name__}: {exc}"
        if stop.is_set():
            return
        for (cell, checks), run_id in zip(group, run_ids, strict=True):
            try:
                run_dir = _collect(
                    spec, cell, checks, sweep_run_id, run_id, state, slot.host, error
                )
                manifest = RunManifest.model_validate_json((run_dir / "run.json").read_text())
                with ingest_lock:
                    _ingest(db, run_dir)
                    counts[manifest.status] += 1
            except Exception:
                # One cell's bookkeeping failing must not strand the other cells of its server.
                logger.exception("%s: lost while collecting its results", cell.label)
                continue
            tracker.advance(
                len(spec.load.concurrency), f"{cell.label}: {manifest.status} on {slot.host}"
            )
            tracker.cell_done()
            logger.info("%s on %s: %s %s", cell.label, slot.host, manifest.status, manifest.reason)

    def slot_loop(slot: Slot) -> None:
        pending = queues[slot.pool]
        while not stop.is_set():
            try:
                group = pending.get_nowait()
            except queue.Empty:
                return
            try:
                one_group(slot, group)
            except Exception:
                # One server's bookkeeping failing must not strand the slot's other cells.
                logger.exception("%s: lost while collecting its results", group[0][0].label)

    executor = ThreadPoolExecutor(max_workers=len(slots))
    try:
        # Each thread runs in its own copy of this flow run's context (run_deployment links the
        # cell runs to this flow run through it).
        futures = [executor.submit(contextvars.copy_context().run, slot_loop, s) for s in slots]
        for future in futures:
            future.result()
    except BaseException:
        # Cancelled or interrupted: dispatch nothing more; the hook cancels the running cells.
        stop.set()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()


# --- what the UI shows at the end --------------------------------------------------------------


def _regressions(db: Path, sweep_run_id: str, threshold: float) -> list[dict[str, Any]]:
    con = store.open_warehouse(db, read_only=True)
    try:
        return report_sweep.regressions(con, sweep_run_id, threshold)
    finally:
        con.close()


def _report_rows(db: Path, sweep_run_id: str) -> list[dict[str, Any]]:
    con = store.open_warehouse(db, read_only=True)
    try:
        return store.report_rows(con, sweep_run_id=sweep_run_id)
    finally:
        con.close()


def _emit_regressions(
    spec: SweepSpec, sweep_run_id: str, regressions: list[dict[str, Any]]
) -> None:
    for r in regressions:
        emit_event(
            event=REGRESSION_EVENT,
            resource={
                "prefect.resource.id": f"embedsweep.cell.{r['cell_id']}",
                "prefect.resource.name": (
                    f"{r['model']} on {r['engine']}/{r['pool']} @ {r['chunk_size']} tok"
                ),
            },
            payload={
                "sweep": spec.name,
                "sweep_run_id": sweep_run_id,
                "concurrency": r["concurrency"],
                "input_tokens_per_s": r["input_tokens_per_s"],
                "previous_input_tokens_per_s": r["prev_input_tokens_per_s"],
                "change": r["tokens_per_s_change"],
                "previous_run_id": r["prev_run_id"],
            },
        )


def _publish(
    spec: SweepSpec, db: Path, sweep_run_id: str, threshold: float
) -> tuple[int, Path, int]:
    """Report artifacts of the sweep run; (regressions, HTML path, runs with a valid
    measurement)."""
    rows = _report_rows(db, sweep_run_id)
    regressions = _regressions(db, sweep_run_id, threshold)
    html_path = (spec.artifacts / sweep_run_id / "report.html").resolve()
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(report.render(rows, "html"), encoding="utf-8")
    table_columns = [
        "model",
        "engine",
        "engine_version",
        "dtype",
        "pool",
        "chunk_size",
        "concurrency",
        "status",
        "reason",
        "throughput_rps",
        "input_tokens_per_s",
        "p50_ms",
        "p99_ms",
        "fidelity",
        "fidelity_min_cosine",
        "host_quiet",
    ]
    create_table_artifact(
        # A run whose served vectors are not the model's keeps its figures, never as "ok".
        [
            {
                c: (
                    report.FIDELITY_FAILED
                    if c == "status" and row.get("fidelity_failed")
                    else row.get(c)
                )
                for c in table_columns
            }
            for row in rows
        ],
        key="sweep-results",
        description=f"{spec.name}: one row per cell and load level",
    )
    create_markdown_artifact(
        report_sweep.problems_markdown(rows, regressions, threshold),
        key="sweep-problems",
        description=f"{spec.name}: blocked, failed and cancelled cells; regressions",
    )
    create_link_artifact(
        html_path.as_uri(),
        link_text=f"{spec.name} report (HTML)",
        key="sweep-report",
        description="Self-contained HTML report with charts, on the sweep host's disk",
    )
    _emit_regressions(spec, sweep_run_id, regressions)
    return len(regressions), html_path, report.valid_runs(rows)


# --- cancellation and crashes -----------------------------------------------------------------


def _stopped(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation / on_crashed: stop every engine this run started, record the cell that
    was running as ``cancelled``, ingest it, and close the sweep's record. It may run in this
    flow's process or in the worker's, so it works from the flow run's parameters alone."""
    sweep_run_id = flow_run.id.hex
    pidfiles.reap(owner=sweep_run_id)
    try:
        spec = SweepSpec.model_validate(flow_run.parameters["spec"])
    except Exception:
        return
    db = Path(flow_run.parameters.get("warehouse") or spec.warehouse)
    if flow_run.parameters.get("mode", "local") == "local":
        sweep_dir = spec.artifacts / sweep_run_id
        finalize_unfinished(sweep_dir)
        # The interrupted cell usually wrote its own `cancelled` run.json on the way out; either
        # way every finished run directory goes in (ingest skips the ones already there).
        run_dirs = sorted(p.parent for p in sweep_dir.glob("*/run.json"))
        if run_dirs:
            con = store.open_warehouse(db)
            try:
                store.ingest_runs(con, run_dirs)
            finally:
                con.close()
    else:
        _cancel_cells(sweep_run_id)
    started = flow_run.start_time or datetime.now(UTC)
    _record_sweep(db, spec, sweep_run_id, started, datetime.now(UTC))


def _cancel_cells(sweep_run_id: str) -> None:
    """Cancel the cell flow runs of a distributed sweep that are not over yet (their own hooks
    stop their engines and leave their runs `cancelled` in the artifacts)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[_sweep_tag(sweep_run_id)]))
        )
        for run in runs:
            if run.state is None or not run.state.is_final():
                client.set_flow_run_state(run.id, Cancelling(), force=True)


@flow(
    name="sweep",
    log_prints=True,
    on_cancellation=[_stopped],
    on_crashed=[_stopped],
)
def sweep(
    spec: SweepSpec,
    warehouse: str | None = None,
    mode: Mode = "local",
    regression_threshold: RegressionThreshold = 0.10,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Run every cell of a sweep and load the results into DuckDB.

    mode: "local" runs the cells here, one at a time per device; "distributed" sends each cell
    to its pool's benchmark-cell deployment on one of the pool's hosts (work queues).
    """
    logger = get_run_logger()
    cells = spec.cells()
    if mode == "distributed":
        # Refuse a sweep that cannot be placed before anything is recorded or started.
        placement.slots(spec, {cell.pool.name for cell in cells})
    sweep_run_id = _flow_run_id() or uuid.uuid4().hex
    stale = pidfiles.reap()
    if stale:
        logger.warning("stopped %d orphaned engine server(s) of earlier runs", len(stale))
    db = Path(warehouse) if warehouse else spec.warehouse
    started = datetime.now(UTC)
    _record_sweep(db, spec, sweep_run_id, started, None)

    checked = [preflight_task(cell, spec.fallback_engine) for cell in cells]
    runnable = [
        (cell, check.checks) for cell, check in zip(cells, checked, strict=True)
        if check.final.verdict == "ok"
    ]  # fmt: skip
    logger.info(
        "sweep %s (%s): %d cells, %d runnable, %d blocked by preflight",
        spec.name,
        mode,
        len(cells),
        len(runnable),
        len(cells) - len(runnable),
    )
    counts = dict.fromkeys(_STATUSES, 0)
    total_levels = len(runnable) * len(spec.load.concurrency) + (len(cells) - len(runnable))
    with sweep_bar(show_progress) as bar:
        tracker = _Tracker(len(cells), total_levels, bar)
        remote = []
        here: list[tuple[CellPlan, Preflighted]] = []
        for cell, check in zip(cells, checked, strict=True):
            if mode == "distributed" and check.final.verdict == "ok":
                remote.append((cell, check.checks))
                continue
            # Blocked cells are recorded here in either mode; local cells run here.
            here.append((_plan(spec, cell, sweep_run_id, sweep_run_id), check))
        # One server per (model, engine, pool): every chunk size of it runs on that server.
        for group in group_cells([(plan, check.checks) for plan, check in here]):
            plans = [here[i][0] for i in group]
            manifests = run_group_task(plans, [here[i][1] for i in group], progress=tracker.advance)
            for plan, manifest in zip(plans, manifests, strict=True):
                cell = plan.cell
                if manifest.status != "ok":
                    tracker.advance(1, f"{cell.label}: {manifest.status} ({manifest.reason})")
                counts[manifest.status] += 1
                _ingest(db, spec.artifacts / sweep_run_id / manifest.run_id)
                tracker.cell_done()
                logger.info(
                    "%s: %s%s",
                    cell.label,
                    manifest.status,
                    f" ({manifest.reason})" if manifest.reason else "",
                )
        if remote:
            _distributed(spec, remote, sweep_run_id, db, tracker, counts)
        tracker.finish(f"sweep {spec.name}: {len(cells)} cells done")
    _record_sweep(db, spec, sweep_run_id, started, datetime.now(UTC))
    regressions, html, valid = _publish(spec, db, sweep_run_id, regression_threshold)
    summary = {
        "sweep_run_id": sweep_run_id,
        "warehouse": str(db),
        "cells": len(cells),
        **counts,
        # Runs with a valid measurement (ok, checks passed, the model's own vectors).
        "valid": valid,
        "regressions": regressions,
        "report": str(html),
    }
    logger.info("sweep finished: %s", json.dumps(summary))
    return summary
