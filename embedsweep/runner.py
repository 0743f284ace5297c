"""Cells from start to artifacts: preflight (with fallback routing), serve the model, calibrate
the texts, drive every load level, and write each cell's run directory (run.json,
requests.parquet, server.log). :func:`run_group` runs the cells that share one engine server
(every chunk size of a model on an engine and pool, :func:`group_cells`) on one server start;
:func:`run_cell` is the group of one. Prefect tasks wrap them; the library does not know they
exist.

A blocked cell is a result: it gets a run directory with its reasons, like a measured one.

While a cell runs, its run directory holds ``pending.json``: the manifest the run gets if it never
finishes (status ``cancelled``). A normal end replaces it with ``run.json``; an interrupt
(SIGINT, Prefect's cancellation SIGTERM) promotes it; and if the process was killed outright,
:func:`finalize_unfinished` promotes it later (the flow's cancellation and crash hooks call it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedsweep import precision
from embedsweep.config import Cell, EngineCommand, LoadSpec, PoolSpec, split_engine
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port, port_is_free
from embedsweep.errors import EmbedsweepError, ModelError, ServerError
from embedsweep.hub import ModelMeta, is_hub_id, resolve_model
from embedsweep.preflight import PoolLimits, run_preflight
from embedsweep.records import (
    FidelityResult,
    HarnessCheck,
    LevelSummary,
    PreflightResult,
    Reason,
    RunManifest,
)
from embedsweep.registry import LiveArchitectures, live_architectures

if TYPE_CHECKING:
    import pyarrow as pa

    from embedsweep.loadgen import LevelRecords
    from embedsweep.telemetry import GpuTelemetry

__all__ = [
    "CellPlan",
    "Progress",
    "engine_command",
    "finalize_run",
    "finalize_unfinished",
    "group_cells",
    "preflight_cell",
    "run_cell",
    "run_group",
    "server_key",
    "write_manifest",
]

# Called with (load levels just completed, a short description of what runs now).
Progress = Callable[[int, str], None]
MAX_DISTINCT_PAYLOADS = 1024
_log = logging.getLogger(__name__)
# After a stop, a device's used memory within this much of its level before the start counts as
# returned (the driver's own bookkeeping moves a little).
GPU_MEMORY_SLACK_MIB = 256.0
CANCELLED_MESSAGE = "the run was stopped before it finished (cancelled, or its process was killed)"


@dataclass(frozen=True)
class CellPlan:
    """A cell plus the sweep-level settings it runs with."""

    cell: Cell
    sweep_name: str
    sweep_run_id: str
    load: LoadSpec
    artifacts: Path
    startup_timeout_s: float = 600.0
    fallback_engine: str | None = None
    # Placement: the host (a distributed pool's work queue) and the devices to choose from;
    # None = this machine and the pool's devices. The server gets devices from the host's
    # file-lock allocator either way, so two cells never share one.
    host: str | None = None
    devices: tuple[str, ...] | None = None
    device_wait_s: float | None = None
    # Written into each server's pid file, so hooks can stop exactly this run's servers.
    owner: str = ""

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id(self.sweep_name)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _pool_limits(cell: Cell) -> PoolLimits:
    pool = cell.pool
    return PoolLimits(
        gpu_memory_gb=0.0 if pool.is_cpu else pool.gpu_memory_gb,
        gpu_memory_utilization=pool.gpu_memory_utilization,
        tensor_parallel_size=pool.tensor_parallel_size,
    )


def engine_command(pool: PoolSpec, ref: str) -> EngineCommand | None:
    """How ``pool`` starts engine ``ref`` (``vllm`` or ``vllm@0.33.0``), or None.

    The pool's own entry for ``ref`` wins; a pinned version without one is looked up among the
    engines installed with ``embedsweep engine install``; an unpinned name uses the pool's entry
    for the bare name (None: the engine's default command, e.g. ``vllm`` on the PATH).
    """
    name, pin = split_engine(ref)
    if ref in pool.engines:
        command = pool.engines[ref]
        return (
            command if command.version or not pin else command.model_copy(update={"version": pin})
        )
    if pin is None:
        return pool.engines.get(name)
    from embedsweep import engine_envs

    installed = engine_envs.lookup(name, pin)
    if installed is not None:
        return EngineCommand(
            command=list(installed.command),
            version=pin,
            python=str(installed.python),
            build="cpu" if installed.build == "cpu" else None,
        )
    bare = pool.engines.get(name)
    if bare is not None and bare.version == pin:
        return bare
    return None


def _engine_version(cell: Cell, ref: str) -> str | None:
    pin = split_engine(ref)[1]
    if pin:
        return pin
    command = engine_command(cell.pool, ref)
    return command.version if command else None


def _unresolvable(cell: Cell, engine: str, error: ModelError) -> PreflightResult:
    return PreflightResult(
        model=cell.model.display_name,
        engine=split_engine(engine)[0],
        engine_version=_engine_version(cell, engine),
        architecture=None,
        chunk_size=cell.chunk_size,
        max_input_tokens=None,
        verdict="blocked",
        reasons=[Reason(code=error.code, severity="block", message=error.message)],
    )


def _live(engine: str, python: str) -> LiveArchitectures | None:
    try:
        return live_architectures(engine, python)
    except EmbedsweepError:
        # An engine that cannot even be imported will fail to start too: the run records that;
        # the preflight falls back to the snapshot.
        return None


def preflight_cell(
    cell: Cell, *, fallback_engine: str | None = None, metadata_dir: Path | None = None
) -> tuple[list[PreflightResult], ModelMeta | None]:
    """Preflight the cell's engine and, when it routes there, the fallback engine.

    The last result decides: ok → run on its engine; blocked → the cell is blocked.
    ``metadata_dir`` is a local mirror of hub models' metadata (see ``hub.resolve_model``).
    """
    try:
        meta = resolve_model(cell.model.source, cell.model.revision, metadata_dir=metadata_dir)
    except ModelError as exc:
        return [_unresolvable(cell, cell.engine, exc)], None

    def check(ref: str, fallback: str | None) -> PreflightResult:
        name = split_engine(ref)[0]
        command = engine_command(cell.pool, ref)
        live = _live(name, command.python) if command and command.python else None
        return run_preflight(
            meta,
            model=cell.model.display_name,
            engine=name,
            engine_version=_engine_version(cell, ref),
            chunk_size=cell.chunk_size,
            pool=_pool_limits(cell),
            trust_remote_code=cell.model.trust_remote_code,
            # The dtype the engine will be started with (auto resolved): the memory it needs.
            dtype=precision.resolve(
                cell.model.dtype,
                on_gpu=list(cell.pool.devices) != ["cpu"],
                stored_dtype=meta.stored_dtype,
            ),
            fallback_engine=fallback,
            live=live,
        )

    first = check(cell.engine, fallback_engine)
    if first.fallback_engine is None:
        return [first], meta
    return [first, check(first.fallback_engine, None)], meta


def write_manifest(run_dir: Path, manifest: RunManifest, *, name: str = "run.json") -> Path:
    """Write run.json atomically; its presence marks the run directory complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _manifest(
    plan: CellPlan,
    *,
    run_id: str,
    engine: str,
    checks: list[PreflightResult],
    started_at: str,
    **fields: object,
) -> RunManifest:
    cell = plan.cell
    pool = cell.pool
    final = checks[-1]
    base: dict[str, object] = {
        "run_id": run_id,
        "sweep_run_id": plan.sweep_run_id,
        "sweep_name": plan.sweep_name,
        "cell_id": plan.cell_id,
        "model": cell.model.display_name,
        "model_ref": cell.model.source,
        "engine": engine,
        "planned_engine": cell.engine_name,
        "pool": pool.name,
        "gpu_model": pool.gpu_model,
        "gpu_count": pool.tensor_parallel_size,
        "cost_per_gpu_hour": pool.cost_per_gpu_hour,
        "chunk_size": cell.chunk_size,
        "batch_size": plan.load.batch_size,
        "engine_version": final.engine_version,
        "max_input_tokens": final.max_input_tokens,
        "seed": plan.load.seed,
        "started_at": started_at,
        "finished_at": _now(),
        "preflight": checks,
        "host": plan.host or socket.gethostname(),
    }
    base.update(fields)
    return RunManifest.model_validate(base)


def _calibrated_payloads(
    meta: ModelMeta, plan: CellPlan, served_name: str, usage_counting: str = "tokens"
) -> tuple[list[bytes], int, list[str]]:
    """The level's request bodies, and the ``usage.prompt_tokens`` each must report in the
    engine's counting rule. Every text is exactly the chunk size by embedsweep's own count (the
    calibrator verifies it); an engine that counts without the special tokens (Infinity) must
    report that many fewer per input. The texts come back too (the fidelity probe sends the
    first of them)."""
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.loadgen import build_payloads

    load = plan.load
    wanted = (load.requests or MAX_DISTINCT_PAYLOADS) + load.warmup_requests
    count = min(wanted, MAX_DISTINCT_PAYLOADS) * load.batch_size
    calibrator = Calibrator(load_tokenizer(meta.path))
    texts = calibrator.texts(plan.cell.chunk_size, count, load.seed)
    payloads = build_payloads(served_name, texts, load.batch_size)
    per_input = plan.cell.chunk_size
    if usage_counting == "tokens_without_special":
        per_input -= calibrator.special_tokens
    return payloads, per_input * load.batch_size, texts


@dataclass
class _Measured:
    """What a measured run adds to its manifest (filled in as the run goes)."""

    levels: list[LevelSummary]
    time_to_healthy_s: float | None = None
    devices: tuple[str, ...] = ()
    port_released: bool | None = None
    gpu_memory_released: bool | None = None
    server_id: str | None = None
    fidelity: FidelityResult | None = None
    harness: HarnessCheck | None = None
    usage_counting: str | None = None
    usage_trusted: bool | None = None
    dtype_requested: str | None = None
    dtype: str | None = None
    served_dtype: str | None = None
    dtype_note: str | None = None
    startup: str | None = None

    def fields(self) -> dict[str, object]:
        return {
            "dtype_requested": self.dtype_requested,
            "dtype": self.dtype,
            "served_dtype": self.served_dtype,
            "dtype_note": self.dtype_note,
            "startup": self.startup,
            # A failed run keeps the levels it measured (the last one marked partial).
            "levels": self.levels,
            "fidelity": self.fidelity,
            "harness": self.harness,
            "usage_counting": self.usage_counting,
            "usage_trusted": self.usage_trusted,
            "devices": list(self.devices),
            "port_released": self.port_released,
            "gpu_memory_released": self.gpu_memory_released,
            "server_id": self.server_id,
            "time_to_healthy_s": self.time_to_healthy_s,
        }


def _served_engine(cell: Cell, final: PreflightResult) -> str:
    """The engine reference a cell is served by: the sweep's (pin included), or its fallback."""
    return cell.engine if final.engine == cell.engine_name else final.engine


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
        _served_engine(cell, final),
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


def _level_failure(records: object, concurrency: int) -> ServerError | None:
    """A level where no request succeeded although the server is up: the first error body says
    why (a 400 context message → ``context_overflow``, …); None when something succeeded."""
    from embedsweep.diagnose import diagnose_error_body
    from embedsweep.loadgen import LevelRecords

    assert isinstance(records, LevelRecords)
    status = records.status
    if len(status) == 0 or bool(((status >= 200) & (status < 300)).any()):
        return None
    first = next((i for i, e in enumerate(records.error) if e), 0)
    code, error = int(status[first]), records.error[first] or ""
    found = diagnose_error_body(code, error) if code else None
    cause = found.cause if found else "server_crashed"
    what = f"HTTP {code}" if code else "no response"
    return ServerError(
        f"every request at concurrency {concurrency} failed ({what}): {error[:300]}",
        code=cause,
    )


# How long an API server whose engine died gets to exit before the run says so itself.
ENGINE_EXIT_WAIT_S = 10.0


def _engine_death(records: object) -> str | None:
    """The first error answer of a level that says the engine behind the server is dead."""
    from embedsweep.diagnose import says_engine_dead
    from embedsweep.loadgen import LevelRecords

    assert isinstance(records, LevelRecords)
    # Only a body that names a dead engine: a 502/503 of an overloaded server is an error of
    # the level, not the end of the server.
    for status, error in zip(records.status.tolist(), records.error, strict=True):
        if status >= 500 and error and says_engine_dead(error):
            return f"HTTP {status} {error[:300]}"
    return None


def _wait_exit(server: ServerProcess, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while (code := server.exited()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return code


def _memory_returned(devices: tuple[str, ...], before: dict[str, float] | None) -> bool | None:
    from embedsweep.telemetry import memory_used_mib

    if before is None:
        return None
    deadline = time.monotonic() + 10.0
    while True:
        after = memory_used_mib(devices)
        if after is None:
            return None
        if all(after.get(d, 0.0) <= before.get(d, 0.0) + GPU_MEMORY_SLACK_MIB for d in devices):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _launch(
    plan: CellPlan,
    meta: ModelMeta,
    final: PreflightResult,
    devices: tuple[str, ...],
    max_input_tokens: int,
) -> Launch:
    cell = plan.cell
    ref = _served_engine(cell, final)
    command = engine_command(cell.pool, ref)
    if command is None and split_engine(ref)[1]:
        name, pin = split_engine(ref)
        raise ServerError(
            f"{ref} is not installed (embedsweep engine install {name}=={pin}) and pool "
            f"{cell.pool.name!r} names no command for it",
            code="engine_not_installed",
        )
    return Launch(
        model_path=cell.model.source if is_hub_id(cell.model.source) else meta.path,
        served_name=cell.model.display_name,
        port=free_port(),
        api_key=secrets.token_urlsafe(24),
        max_input_tokens=max_input_tokens,
        # One precision per comparison: auto resolved once, the same for every engine.
        dtype=precision.resolve(
            cell.model.dtype, on_gpu=devices != ("cpu",), stored_dtype=meta.stored_dtype
        ),
        revision=cell.model.revision,
        trust_remote_code=cell.model.trust_remote_code,
        tensor_parallel_size=cell.pool.tensor_parallel_size,
        gpu_memory_utilization=cell.pool.gpu_memory_utilization,
        devices=devices,
        command=tuple(command.command) if command else (),
        version=final.engine_version,
        env=dict(command.env) if command else {},
        build=command.build if command else None,
        extra_args=tuple(command.args) if command else (),
    )


@dataclass
class _Item:
    """One cell of a group on its way to a manifest."""

    plan: CellPlan
    checks: list[PreflightResult]
    meta: ModelMeta | None
    run_id: str
    started_at: str
    result: RunManifest | None = None

    @property
    def run_dir(self) -> Path:
        return self.plan.artifacts / self.plan.sweep_run_id / self.run_id

    def manifest(self, status: str, **fields: object) -> RunManifest:
        return _manifest(
            self.plan,
            run_id=self.run_id,
            engine=self.checks[-1].engine,
            checks=self.checks,
            started_at=self.started_at,
            status=status,
            **fields,
        )


def _run_levels(
    item: _Item,
    server: ServerProcess,
    launch: Launch,
    telemetry: GpuTelemetry,
    progress: Progress | None,
    out: _Measured,
) -> None:
    """Every load level of ITEM's cell against the running SERVER; writes requests.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedsweep.metrics import summarize

    plan = item.plan
    cell, load = plan.cell, plan.load
    assert item.meta is not None
    from embedsweep.engines import usage_counting

    out.usage_counting, out.usage_trusted = usage_counting(item.checks[-1].engine)
    payloads, expected, texts = _calibrated_payloads(
        item.meta, plan, cell.model.display_name, out.usage_counting
    )
    tables: list[pa.Table] = []

    def keep(records: LevelRecords, concurrency: int, **update: object) -> None:
        # What a level measured is kept, whole or not (a partial one is marked and never valid).
        summary = summarize(
            records,
            batch_size=load.batch_size,
            cost_per_gpu_hour=cell.pool.cost_per_gpu_hour,
            gpu_count=cell.pool.tensor_parallel_size,
        )
        if out.usage_counting != "tokens":
            # The engine's own count leaves tokens out (Infinity: the special tokens): tokens/s
            # is what embedsweep sent, so it compares with the other engines.
            tokens_per_s = summary.inputs_per_s * cell.chunk_size
            price = cell.pool.cost_per_gpu_hour * cell.pool.tensor_parallel_size
            update = {
                "input_tokens_per_s": tokens_per_s,
                "cost_per_million_tokens": price / 3600 / tokens_per_s * 1e6
                if price > 0 and tokens_per_s > 0
                else None,
                **update,
            }
        gpu_summary = telemetry.summary(concurrency)
        out.levels.append(summary.model_copy(update={**gpu_summary, **update}))
        tables.append(records.to_arrow(item.run_id))

    try:
        for concurrency in load.concurrency:
            if progress:
                progress(0, f"{cell.label}: concurrency {concurrency}")
            _run_level(item, server, launch, telemetry, concurrency, payloads, expected, keep)
            if progress:
                progress(1, f"{cell.label}: concurrency {concurrency} done")
        info = None
        if item.checks[-1].engine == "hf":
            from embedsweep.harness import server_info

            info = server_info(server.url)
        if load.fidelity:
            if progress:
                progress(0, f"{cell.label}: fidelity probe")
            out.fidelity = _fidelity(item, server, launch, texts, info)
        if item.checks[-1].engine == "hf" and out.levels:
            if progress:
                progress(0, f"{cell.label}: direct encode (harness check)")
            out.harness = _harness(item, out.levels[-1], texts, info)
    finally:
        if tables:
            _write_table(pa.concat_tables(tables), item.run_dir / "requests.parquet", pq)
        samples = telemetry.to_arrow(item.run_id)
        if samples.num_rows:
            _write_table(samples, item.run_dir / "telemetry.parquet", pq)


def _run_level(
    item: _Item,
    server: ServerProcess,
    launch: Launch,
    telemetry: GpuTelemetry,
    concurrency: int,
    payloads: list[bytes],
    expected: int,
    keep: Callable[..., None],
) -> None:
    """One level; what it measured goes to KEEP even when it ends in the server's death (then
    marked partial), and the death is raised after."""
    from embedsweep.loadgen import run_level_sync

    load = item.plan.load
    from embedsweep.hostload import HostSampler

    when = f"during the load at concurrency {concurrency}"
    assert server.proc is not None
    # The server leads its own session: its processes, with this one's, are the run's.
    host = HostSampler(server_session=server.proc.pid)
    host.start()
    try:
        with telemetry.level(concurrency):
            records = run_level_sync(
                server.url,
                payloads,
                expected,
                concurrency=concurrency,
                requests=load.requests,
                duration_s=load.duration_s,
                warmup=load.warmup_requests,
                timeout_s=load.request_timeout_s,
                api_key=launch.api_key,
                # The server's death ends the level at once, whatever its moment.
                watch_pid=server.proc.pid,
            )
    except EmbedsweepError:
        code = server.exited()
        if code is not None:
            raise server.exit_error(code, when, tail_lines=20) from None
        raise
    seen = host.stop()
    if seen is not None:
        hosted = keep
        loads = {
            "host_other_cpu_cores": seen.other_cpu_cores,
            "host_load_1m": seen.load_1m,
            "host_quiet": seen.quiet,
        }

        def keep(records: LevelRecords, concurrency: int, **update: object) -> None:
            hosted(records, concurrency, **loads, **update)

    dead = _engine_death(records)
    if records.halted is not None or dead is not None:
        reason = records.halted or f"the engine died (its API server answered: {dead})"
        if len(records):
            keep(records, concurrency, partial=True, valid=False, stopped_reason=reason)
        # The API server answers for an engine that died (vLLM: 500 EngineDeadError), and exits
        # soon after; a dead process is reaped by now or in a moment.
        code = _wait_exit(server, ENGINE_EXIT_WAIT_S)
        if code is not None:
            raise server.exit_error(code, when, tail_lines=20)
        raise ServerError(
            f"the server stopped {when}: {reason}" + server.log_tail(), code="server_crashed"
        )
    keep(records, concurrency)
    code = server.exited()
    if code is not None:
        raise server.exit_error(code, f"after the load at concurrency {concurrency}", tail_lines=20)
    failure = _level_failure(records, concurrency)
    if failure is not None:
        raise failure


def _reference_budget_bytes() -> int:
    """The largest model (weights on disk) the CPU reference loads: a third of this machine's
    memory, so the reference never pushes the host into swap next to a running server."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 3
    except (ValueError, OSError):
        return 8 << 30


def _harness(
    item: _Item, top: LevelSummary, texts: Sequence[str], info: dict[str, Any] | None
) -> HarnessCheck:
    """The built-in server's inputs/s at its last (highest) level against direct encode of the
    same texts (``embedsweep.harness``), the server idle meanwhile."""
    from embedsweep import harness

    plan, meta = item.plan, item.meta
    assert meta is not None
    return harness.check(
        meta.path,
        texts,
        chunk_size=plan.cell.chunk_size,
        concurrency=top.concurrency,
        batch_size=plan.load.batch_size,
        server_inputs_per_s=top.inputs_per_s,
        info=info,
        trust_remote_code=plan.cell.model.trust_remote_code,
    )


def _fidelity(
    item: _Item,
    server: ServerProcess,
    launch: Launch,
    run_texts: Sequence[str],
    info: dict[str, Any] | None = None,
) -> FidelityResult:
    """The fidelity probe of ITEM's cell against the running server (``embedsweep.fidelity``),
    RUN_TEXTS the texts its levels sent: outside the timed levels; what it cannot check is a
    verdict, never an exception."""
    from embedsweep import fidelity
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.hfserver.request import matryoshka_of

    plan, cell, meta = item.plan, item.plan.cell, item.meta
    assert meta is not None
    # What the server says it computes in (the built-in server's info, vLLM's start-up log),
    # else each engine's rule.
    dtype = (info or {}).get("dtype") or fidelity.logged_dtype(server.log_path)
    if not isinstance(dtype, str):
        dtype = fidelity.served_dtype(
            item.checks[-1].engine, launch.dtype, launch.devices != ("cpu",), meta.stored_dtype
        )
    if meta.weight_bytes and meta.weight_bytes > _reference_budget_bytes():
        return fidelity.unchecked(
            dtype,
            f"{meta.weight_bytes / 2**30:.1f} GiB of weights is too large for a CPU reference "
            f"on this host ({_reference_budget_bytes() / 2**30:.1f} GiB budget)",
        )
    try:
        trusted = cell.model.trust_remote_code
        reference = fidelity.reference_for(meta.path, trust_remote_code=trusted)
        calibrator = Calibrator(load_tokenizer(meta.path))
        texts = fidelity.probe_texts(
            reference.count,
            cell.chunk_size,
            run_texts,
            lambda n: calibrator.texts(n, 1, fidelity.PROBE_SEED)[0],
        )
        try:
            overlength: str | None = calibrator.texts(
                launch.max_input_tokens + 8, 1, fidelity.PROBE_SEED
            )[0]
        except EmbedsweepError:
            overlength = None
        vectors = reference.encode(texts)
    except Exception as exc:
        _log.warning("%s: no fidelity reference", cell.label, exc_info=True)
        why = f"the reference could not be encoded: {type(exc).__name__}: {exc}"
        return fidelity.unchecked(dtype, why)
    endpoint = fidelity.Endpoint(
        server.url, cell.model.display_name, launch.api_key, plan.load.request_timeout_s
    )
    return fidelity.probe(
        endpoint,
        texts,
        vectors,
        reference_name=reference.name,
        reference_normalized=reference.normalized,
        dtype=dtype,
        overlength_text=overlength,
        matryoshka=matryoshka_of(meta.config)[0],
    )


@dataclass
class _GroupServer:
    """The group's server as far as it got (filled in by :func:`_measure_group`)."""

    server: ServerProcess | None = None
    devices: tuple[str, ...] = ()
    memory_before: dict[str, float] | None = None


def _measure_group(
    items: list[_Item], progress: Progress | None, outs: list[_Measured], state: _GroupServer
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
    final = first.checks[-1]
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
        launch = _launch(plan, first.meta, final, taken, limit)
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
            served, startup = _served_precision(final.engine, server)
            for out in outs:
                out.served_dtype, out.startup = served, startup
                out.dtype_note = precision.served_mismatch(launch.dtype, served)
            if outs[0].dtype_note:
                _log.warning("%s: %s", cell.label, outs[0].dtype_note)
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
                        item.started_at = _now()
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
                    write_manifest(item.run_dir, item.result)
                    _discard_pending(item.run_dir)


def _served_precision(engine: str, server: ServerProcess) -> tuple[str | None, str | None]:
    """The dtype a healthy server says it computes in (the built-in server's info, vLLM's
    start-up log; None when it does not say), and for the built-in server how its model started
    (compiled, cached or eager)."""
    from embedsweep import fidelity

    if engine == "hf":
        from embedsweep.harness import server_info

        info = server_info(server.url) or {}
        dtype, startup = info.get("dtype"), info.get("startup")
        return (
            dtype if isinstance(dtype, str) else None,
            startup if isinstance(startup, str) else None,
        )
    return fidelity.logged_dtype(server.log_path), None


def _measure_item(
    item: _Item,
    server: ServerProcess,
    launch: Launch,
    progress: Progress | None,
    out: _Measured,
) -> RunManifest:
    """One cell's levels on a healthy server, as its manifest (failed when something ended it).
    Each cell samples its own GPU telemetry, so its telemetry.parquet holds its levels only."""
    from embedsweep.telemetry import GpuTelemetry

    telemetry = GpuTelemetry(launch.devices if launch.devices != ("cpu",) else ())
    try:
        _run_levels(item, server, launch, telemetry, progress, out)
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


def _released(server: ServerProcess) -> bool | None:
    if server.proc is None:
        return None
    return port_is_free(server.host, server.port)


def _write_table(table: object, path: Path, pq: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)  # type: ignore[attr-defined]
    os.replace(tmp, path)


def finalize_run(run_dir: Path) -> bool:
    """Promote ``run_dir``'s ``pending.json`` to ``run.json`` (status ``cancelled``) when the run
    never wrote one (its process was cancelled or killed); True when it did so. Call it after
    the run's servers are stopped (``pidfiles.reap``)."""
    pending = run_dir / "pending.json"
    if (run_dir / "run.json").exists():
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        return False
    try:
        os.replace(pending, run_dir / "run.json")
    except FileNotFoundError:
        return False
    return True


def finalize_unfinished(sweep_dir: Path) -> list[Path]:
    """:func:`finalize_run` for every run directory of a sweep run (local mode: every cell ran
    in the sweep's own process, so an unfinished one is one that process left behind)."""
    if not sweep_dir.is_dir():
        return []
    return [p.parent for p in sorted(sweep_dir.glob("*/pending.json")) if finalize_run(p.parent)]


def _finish(items: list[_Item], outs: list[_Measured], code: str, message: str) -> None:
    """Record every item of the group that has no result yet as failed with CODE."""
    for item, out in zip(items, outs, strict=True):
        if item.result is None:
            item.result = item.manifest("failed", reason=code, message=message, **out.fields())


def _written(item: _Item) -> bool:
    return (item.run_dir / "run.json").exists()


def _run_runnable(items: list[_Item], progress: Progress | None, raise_transient: bool) -> None:
    for item in items:
        pending = item.manifest("cancelled", reason="cancelled", message=CANCELLED_MESSAGE)
        write_manifest(item.run_dir, pending, name="pending.json")
    outs = [_Measured(levels=[]) for _ in items]
    state = _GroupServer()
    try:
        _measure_group(items, progress, outs, state)
    except ServerError as exc:
        if exc.transient and raise_transient and all(item.result is None for item in items):
            # Retried as a new run: these directories are no runs. Their server.log is in the
            # error (its last lines), which the retry logs; the directory goes, or a sweep with
            # three attempts would leave two folders holding only a log.
            for item in items:
                _discard_pending(item.run_dir)
                _remove_attempt(item.run_dir)
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
            if not _written(item):
                # A cell that finished before the interrupt keeps its result.
                cancelled = item.result or item.manifest(
                    "cancelled", reason="cancelled", message=CANCELLED_MESSAGE, **out.fields()
                )
                write_manifest(item.run_dir, cancelled)
            _discard_pending(item.run_dir)
        raise
    # The server is stopped by now: did it give back its port and the devices' memory?
    try:
        released = _released(state.server) if state.server is not None else None
        gpu = state.server is not None and state.devices not in ((), ("cpu",))
        freed = _memory_returned(state.devices, state.memory_before) if gpu else None
    except BaseException:
        # Interrupted while checking: every cell has its result; keep them without the checks.
        for item in items:
            if not _written(item) and item.result is not None:
                write_manifest(item.run_dir, item.result)
                _discard_pending(item.run_dir)
        raise
    for item in items:
        if _written(item):
            continue
        assert item.result is not None
        update: dict[str, object] = {"port_released": released, "gpu_memory_released": freed}
        item.result = item.result.model_copy(update=update)
        write_manifest(item.run_dir, item.result)
        _discard_pending(item.run_dir)


def run_group(
    plans: Sequence[CellPlan],
    *,
    checked: Sequence[tuple[list[PreflightResult], ModelMeta | None] | None] | None = None,
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
        items.append(_Item(plan, checks, meta, run_id, _now()))
    runnable = []
    for item in items:
        final = item.checks[-1]
        if final.verdict == "blocked" or item.meta is None:
            blocking = final.blocking or item.checks[0].blocking
            item.result = item.manifest(
                "blocked",
                reason=blocking[0].code if blocking else "unknown",
                message="; ".join(r.message for r in blocking) or None,
            )
            write_manifest(item.run_dir, item.result)
        else:
            runnable.append(item)
    if len({server_key(item.plan, item.checks[-1]) for item in runnable}) > 1:
        raise ValueError("run_group: these cells need different servers (see group_cells)")
    if runnable:
        _run_runnable(runnable, progress, raise_transient)
    results = [item.result for item in items]
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def run_cell(
    plan: CellPlan,
    *,
    checked: tuple[list[PreflightResult], ModelMeta | None] | None = None,
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


def _remove_attempt(run_dir: Path) -> None:
    """Delete RUN_DIR if it holds nothing but a server log (an attempt that will be retried)."""
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return
    if names <= {"server.log"}:
        with contextlib.suppress(OSError):
            (run_dir / "server.log").unlink(missing_ok=True)
            run_dir.rmdir()


def _discard_pending(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "pending.json").unlink()
