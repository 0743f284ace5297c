"""The cells that share one engine server: how they are grouped (:func:`server_key`,
:func:`group_cells`), and running them (:func:`run_group`, one server start for all of them;
:func:`run_cell`, the group of one). Preflight, start the server, drive each cell's levels,
and write each cell's run directory.

A blocked cell is a result: it gets a run directory with its reasons, like a measured one.

While a cell runs, its run directory holds ``pending.json``: the manifest the run gets if it never
finishes (status ``cancelled``). A normal end replaces it with ``run.json``; an interrupt
(SIGINT, Prefect's cancellation SIGTERM) promotes it; and if the process was killed outright,
:func:`~embedsweep.runner.run_folder.finalize_unfinished` promotes it later.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from embedsweep import precision
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess
from embedsweep.errors import EmbedsweepError, ServerError
from embedsweep.records import PreflightResult, RunManifest
from embedsweep.runner.launch import (
    build_launch,
    memory_returned,
    served_precision,
    server_port_released,
)
from embedsweep.runner.levels import run_levels
from embedsweep.runner.manifest import Item, Measured
from embedsweep.runner.plan import CellPlan, Progress, now
from embedsweep.runner.preflight import Preflighted, preflight_cell, served_engine
from embedsweep.runner.run_folder import CANCELLED_MESSAGE

_log = logging.getLogger(__name__)


def server_key(plan: CellPlan, final: PreflightResult) -> tuple[object, ...]:
    """What a server is started with, apart from its length limit: cells with equal keys share
    one server (:func:`run_group`)."""
    cell, model = plan.cell, plan.cell.model
    return (
        model.display_name,
        model.source,
        model.revision,
        model.dtype,
        model.trust_remote_code,
        served_engine(cell, final),
        final.engine_version,
        cell.pool.name,
        plan.devices,
        plan.host,
    )


def group_cells(
    items: Sequence[tuple[CellPlan, list[PreflightResult]]],
) -> list[list[int]]:
    """Indices of ITEMS (runnable cells and their preflight results) grouped by server key, in
    the order each key first appears; a blocked cell is a group of its own."""
    groups: dict[tuple[object, ...], list[int]] = {}
    out: list[list[int]] = []
    for index, (plan, checks) in enumerate(items):
        if checks[-1].verdict != "ok":
            out.append([index])
            continue
        key = server_key(plan, checks[-1])
        if key not in groups:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(index)
    return out


@dataclass
class GroupServer:
    """The group's server as far as it got (filled in by :func:`_measure_group`)."""

    server: ServerProcess | None = None
    devices: tuple[str, ...] = ()
    memory_before: dict[str, float] | None = None


def _measure_group(
    items: list[Item], progress: Progress | None, outs: list[Measured], state: GroupServer
) -> None:
    """Start one server for ITEMS and run each item's levels on it, recording each item as it
    ends. Raises what stops the server from serving at all (start-up, device, install); what
    ends one cell is recorded there and the next cell goes on, unless the server died."""
    from embedsweep.engines import pidfiles
    from embedsweep.gpus import DeviceAllocator, resolve_devices
    from embedsweep.telemetry import memory_used_mib

    first = items[0]
    plan, cell = first.plan, first.plan.cell
    assert first.meta is not None
    final = first.final
    # A server whose owner died without stopping it may still hold a device whose lock died
    # with that owner: stop such orphans before taking a device.
    pidfiles.reap()
    devices = resolve_devices(list(plan.devices or cell.pool.devices))
    if progress:
        progress(0, f"{cell.label}: waiting for a device")
    with DeviceAllocator().acquire(
        devices,
        cell.pool.tensor_parallel_size,
        owner=f"{plan.owner or plan.sweep_run_id} {cell.label}",
        timeout_s=plan.device_wait_s,
    ) as allocation:
        taken = state.devices = tuple(allocation.devices)
        for out in outs:
            out.devices = taken
        # One server for every chunk size of the group: its limit is the longest of them.
        limit = max(item.plan.cell.chunk_size for item in items)
        launch = build_launch(plan, first.meta, final, taken, limit)
        for out in outs:  # kept by a run whose server never became healthy too
            out.dtype_requested, out.dtype = cell.model.dtype, launch.dtype
        gpu = launch.devices != ("cpu",)
        state.memory_before = memory_used_mib(launch.devices) if gpu else None
        log = first.run_dir / "server.log"
        server = state.server = server_for(final.engine, launch, log, owner=plan.owner)
        server_id = uuid.uuid4().hex
        with server:
            if progress:
                progress(0, f"{cell.label}: starting {final.engine}")
            healthy_s = server.wait_healthy(plan.startup_timeout_s)
            outs[0].time_to_healthy_s = healthy_s
            served, startup = served_precision(final.engine, server)
            for out in outs:
                out.served_dtype, out.startup = served, startup
                out.dtype_note = precision.served_mismatch(launch.dtype, served)
            if outs[0].dtype_note:
                _log.warning("%s: %s", cell.label, outs[0].dtype_note)
            _measure_on(items, outs, server, launch, progress, server_id)


def _measure_on(
    items: list[Item],
    outs: list[Measured],
    server: ServerProcess,
    launch: Launch,
    progress: Progress | None,
    server_id: str,
) -> None:
    """Each item's levels on the group's healthy SERVER, in turn, recording each as it ends;
    once the server died, the rest are recorded failed without a measurement."""
    first = items[0]
    died: ServerError | None = None
    for item, out in zip(items, outs, strict=True):
        out.server_id = server_id
        if died is not None:
            item.result = item.manifest(
                "failed",
                reason=died.code,
                message="not measured: the server died in an earlier cell: "
                + died.message.splitlines()[0],
                **out.fields(),
            )
        else:
            if item is not first:
                # Its own measurement starts now (the first one's start includes
                # the device wait and the server's start-up).
                item.started_at = now()
            item.result = _measure_item(item, server, launch, progress, out)
            if item.result.status == "failed" and (
                server.exited() is not None or item.result.reason == "server_crashed"
            ):
                died = ServerError(item.result.message or "", code=item.result.reason)
        # Each run directory holds the log its diagnosis read (secrets redacted).
        server.copy_log(item.run_dir / "server.log")
        # Written now while the server serves on; the last cell, and every cell
        # from a death on, after the stop, with whether the port was released.
        if died is None and item is not items[-1]:
            item.folder.commit(item.result)


def _measure_item(
    item: Item,
    server: ServerProcess,
    launch: Launch,
    progress: Progress | None,
    out: Measured,
) -> RunManifest:
    """One cell's levels on a healthy server, as its manifest (failed when something ended it).
    Each cell samples its own GPU telemetry, so its telemetry.parquet holds its levels only."""
    from embedsweep.telemetry import GpuTelemetry

    telemetry = GpuTelemetry(launch.devices if launch.devices != ("cpu",) else ())
    try:
        run_levels(item, server, launch, telemetry, progress, out)
    except EmbedsweepError as exc:
        return item.manifest("failed", reason=exc.code, message=exc.message, **out.fields())
    except Exception as exc:
        # A bug or an environment problem (disk full, ...): this cell failed, the sweep goes on.
        _log.exception("%s: unexpected error", item.plan.cell.label)
        return item.manifest(
            "failed",
            reason="unknown",
            message=f"unexpected {type(exc).__name__}: {exc}",
            **out.fields(),
        )
    finally:
        telemetry.close()
    return item.manifest("ok", **out.fields())


def _finish(items: list[Item], outs: list[Measured], code: str, message: str) -> None:
    """Record every item of the group that has no result yet as failed with CODE."""
    for item, out in zip(items, outs, strict=True):
        if item.result is None:
            item.result = item.manifest("failed", reason=code, message=message, **out.fields())


def _run_runnable(items: list[Item], progress: Progress | None, raise_transient: bool) -> None:
    for item in items:
        item.folder.begin(item.manifest("cancelled", reason="cancelled", message=CANCELLED_MESSAGE))
    outs = [Measured(levels=[]) for _ in items]
    state = GroupServer()
    try:
        _measure_group(items, progress, outs, state)
    except ServerError as exc:
        if exc.transient and raise_transient and all(item.result is None for item in items):
            # Retried as a new run: these directories are no runs. Their server.log is in the
            # error (its last lines), which the retry logs; the directory goes, or a sweep with
            # three attempts would leave two folders holding only a log.
            for item in items:
                item.folder.discard_attempt()
            raise
        _finish(items, outs, exc.code, exc.message)
    except EmbedsweepError as exc:
        _finish(items, outs, exc.code, exc.message)
    except Exception as exc:
        _log.exception("%s: unexpected error", items[0].plan.cell.label)
        _finish(items, outs, "unknown", f"unexpected {type(exc).__name__}: {exc}")
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM, Prefect's cancellation): record what did not finish,
        # then let it go on.
        for item, out in zip(items, outs, strict=True):
            if item.folder.committed:
                item.folder.discard_pending()
                continue
            # A cell that finished before the interrupt keeps its result.
            cancelled = item.result or item.manifest(
                "cancelled", reason="cancelled", message=CANCELLED_MESSAGE, **out.fields()
            )
            item.folder.commit(cancelled)
        raise
    # The server is stopped by now: did it give back its port and the devices' memory?
    try:
        released = server_port_released(state.server) if state.server is not None else None
        gpu = state.server is not None and state.devices not in ((), ("cpu",))
        freed = memory_returned(state.devices, state.memory_before) if gpu else None
    except BaseException:
        # Interrupted while checking: every cell has its result; keep them without the checks.
        for item in items:
            if not item.folder.committed and item.result is not None:
                item.folder.commit(item.result)
        raise
    for item in items:
        if item.folder.committed:
            continue
        assert item.result is not None
        update: dict[str, object] = {"port_released": released, "gpu_memory_released": freed}
        item.result = item.result.model_copy(update=update)
        item.folder.commit(item.result)


def run_group(
    plans: Sequence[CellPlan],
    *,
    checked: Sequence[Preflighted | None] | None = None,
    progress: Progress | None = None,
    raise_transient: bool = False,
    run_ids: Sequence[str | None] | None = None,
) -> list[RunManifest]:
    """Run cells that share one server (equal :func:`server_key`; see :func:`group_cells`) and
    write each cell's run directory; returns their manifests in order.

    The server starts once, with the longest chunk size of the group as its limit, and every
    cell's levels run against it; the time to healthy is stored on the run that started it, the
    ``server_id`` on all of them, and the server's log is copied into each run directory when
    its cell ends. A cell whose levels fail while the server stays up (every request refused:
    ``context_overflow``) is recorded failed and the next cell goes on; a server that dies
    ends the group: the remaining cells are recorded failed with its cause, and nothing is
    restarted. Blocked cells are recorded without a server. ``checked``, ``raise_transient``
    and ``run_ids`` are per cell as in :func:`run_cell`; a transient start-up failure is
    raised only while no cell has a result yet.
    """
    items = []
    for index, plan in enumerate(plans):
        got = checked[index] if checked else None
        checks, meta = got or preflight_cell(plan.cell, fallback_engine=plan.fallback_engine)
        run_id = (run_ids[index] if run_ids else None) or uuid.uuid4().hex
        items.append(Item(plan, checks, meta, run_id, now()))
    runnable = []
    for item in items:
        final = item.final
        if final.verdict == "blocked" or item.meta is None:
            blocking = final.blocking or item.checks[0].blocking
            item.result = item.manifest(
                "blocked",
                reason=blocking[0].code if blocking else "unknown",
                message="; ".join(r.message for r in blocking) or None,
            )
            item.folder.commit(item.result)
        else:
            runnable.append(item)
    if len({server_key(item.plan, item.final) for item in runnable}) > 1:
        raise ValueError("run_group: these cells need different servers (see group_cells)")
    if runnable:
        _run_runnable(runnable, progress, raise_transient)
    results = [item.result for item in items]
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def run_cell(
    plan: CellPlan,
    *,
    checked: Preflighted | None = None,
    progress: Progress | None = None,
    raise_transient: bool = False,
    run_id: str | None = None,
) -> RunManifest:
    """Run one cell and write its run directory; returns the manifest (also in run.json).

    With ``raise_transient`` a transient server failure (port taken, start-up timeout) is raised
    instead of recorded, so a caller with retries can try again. ``checked`` is this cell's
    :func:`preflight_cell` answer when the caller already has it. An interrupt (KeyboardInterrupt,
    SystemExit, Prefect's cancellation) records the run ``cancelled`` and is re-raised.
    ``run_id`` lets a caller that dispatches the cell elsewhere know its run directory up front.
    """
    return run_group(
        [plan],
        checked=[checked],
        progress=progress,
        raise_transient=raise_transient,
        run_ids=[run_id],
    )[0]
