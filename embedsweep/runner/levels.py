"""A cell's load levels against its running server: the calibrated request bodies
(:func:`calibrated_payloads`), every level in turn (:func:`run_levels`, then the fidelity probe
and the harness check), one level (:func:`run_level`), and what ends one (:func:`level_failure`,
an engine's death)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from embedsweep.engines import Launch
from embedsweep.engines.process import ServerProcess
from embedsweep.errors import EmbedsweepError, ServerError
from embedsweep.hub import ModelMeta
from embedsweep.runner.checks import fidelity_check, harness_check
from embedsweep.runner.manifest import Item, Measured
from embedsweep.runner.plan import CellPlan, Progress
from embedsweep.runner.run_folder import write_table

if TYPE_CHECKING:
    import pyarrow as pa

    from embedsweep.hostload import HostLoad
    from embedsweep.loadgen import LevelRecords
    from embedsweep.telemetry import GpuTelemetry

MAX_DISTINCT_PAYLOADS = 1024
# How long an API server whose engine died gets to exit before the run says so itself.
ENGINE_EXIT_WAIT_S = 10.0


def calibrated_payloads(
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


def level_failure(records: object, concurrency: int) -> ServerError | None:
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


def run_levels(
    item: Item,
    server: ServerProcess,
    launch: Launch,
    telemetry: GpuTelemetry,
    progress: Progress | None,
    out: Measured,
) -> None:
    """Every load level of ITEM's cell against the running SERVER; writes requests.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    plan = item.plan
    cell, load = plan.cell, plan.load
    assert item.meta is not None
    from embedsweep.engines import usage_counting

    out.usage_counting, out.usage_trusted = usage_counting(item.final.engine)
    payloads, expected, texts = calibrated_payloads(
        item.meta, plan, cell.model.display_name, out.usage_counting
    )
    tables: list[pa.Table] = []
    keep = _keeper(item, telemetry, out, tables)
    try:
        for concurrency in load.concurrency:
            if progress:
                progress(0, f"{cell.label}: concurrency {concurrency}")
            run_level(item, server, launch, telemetry, concurrency, payloads, expected, keep)
            if progress:
                progress(1, f"{cell.label}: concurrency {concurrency} done")
        _after_levels(item, server, launch, progress, out, texts)
    finally:
        if tables:
            write_table(pa.concat_tables(tables), item.run_dir / "requests.parquet", pq)
        samples = telemetry.to_arrow(item.run_id)
        if samples.num_rows:
            write_table(samples, item.run_dir / "telemetry.parquet", pq)


def _keeper(
    item: Item, telemetry: GpuTelemetry, out: Measured, tables: list[pa.Table]
) -> Callable[..., None]:
    """What keeps a level's records: its summary into OUT's levels, its rows into TABLES."""
    from embedsweep.metrics import summarize

    cell, load = item.plan.cell, item.plan.load

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

    return keep


def _after_levels(
    item: Item,
    server: ServerProcess,
    launch: Launch,
    progress: Progress | None,
    out: Measured,
    texts: Sequence[str],
) -> None:
    """The checks after the timed levels: the fidelity probe, and the built-in server's harness
    check."""
    cell, load = item.plan.cell, item.plan.load
    info = None
    if item.final.engine == "hf":
        from embedsweep.harness import server_info

        info = server_info(server.url)
    if load.fidelity:
        if progress:
            progress(0, f"{cell.label}: fidelity probe")
        out.fidelity = fidelity_check(item, server, launch, texts, info)
    if item.final.engine == "hf" and out.levels:
        if progress and load.harness_check:
            progress(0, f"{cell.label}: direct encode (harness check)")
        out.harness = harness_check(item, out.levels[-1], texts, info)


def run_level(
    item: Item,
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
    from embedsweep.hostload import HostSampler

    when = f"during the load at concurrency {concurrency}"
    assert server.proc is not None
    # The server leads its own session: its processes, with this one's, are the run's.
    host = HostSampler(server_session=server.proc.pid)
    host.start()
    records = _drive(item, server, launch, telemetry, concurrency, payloads, expected, when)
    seen = host.stop()
    if seen is not None:
        keep = _with_host_load(keep, seen)
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
    failure = level_failure(records, concurrency)
    if failure is not None:
        raise failure


def _drive(
    item: Item,
    server: ServerProcess,
    launch: Launch,
    telemetry: GpuTelemetry,
    concurrency: int,
    payloads: list[bytes],
    expected: int,
    when: str,
) -> LevelRecords:
    """The level's load itself, its GPU telemetry sampled; a load that fails because the server
    exited raises the server's exit error instead."""
    from embedsweep.loadgen import run_level_sync

    load = item.plan.load
    assert server.proc is not None
    try:
        with telemetry.level(concurrency):
            return run_level_sync(
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


def _with_host_load(hosted: Callable[..., None], seen: HostLoad) -> Callable[..., None]:
    """HOSTED (a level's keeper) with the host's load during the level (SEEN) added to each
    level it keeps."""
    loads = {
        "host_other_cpu_cores": seen.other_cpu_cores,
        "host_load_1m": seen.load_1m,
        "host_quiet": seen.quiet,
    }

    def keep(records: LevelRecords, concurrency: int, **update: object) -> None:
        hosted(records, concurrency, **loads, **update)

    return keep
