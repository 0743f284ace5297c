"""The DuckDB warehouse: opening it (waiting for the single-writer lock), schema migrations,
idempotent ingest of run directories, and read queries.

The schema (migrations, views, named statements in ``embedsweep/sql``) is
:mod:`embedsweep.store_schema`'s; this module runs those statements, every value bound with ``?``.
A run directory is ingested whole or not at all.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from embedsweep.errors import ConfigError, EmbedsweepError
from embedsweep.records import REQUEST_COLUMNS, RunManifest
from embedsweep.store_schema import (
    Migration,
    check_current,
    migrate,
    migrations,
    scalar,
    statement,
)

__all__ = [
    "STORAGE_COMPATIBILITY_VERSION",
    "Migration",
    "ingest_run",
    "ingest_runs",
    "migrations",
    "open_warehouse",
    "query",
    "read_only_query",
    "record_sweep",
    "report_rows",
    "sandbox",
]

# DuckDB 2.0 writes storage version 69 by default, which the duckdb CLI on PyPI (duckdb-cli 1.5.x,
# the only pip-installable one) cannot open. Writing the 1.5 format keeps the warehouse readable by
# that CLI; it costs nothing the schema uses.
STORAGE_COMPATIBILITY_VERSION = "v1.5.0"

_LOCK_MESSAGE = "Could not set lock"
_MAX_LOCK_BACKOFF_S = 1.0
# The name requests.parquet is registered under for the length of one ingest; statements.sql
# reads from it.
_INCOMING_REQUESTS = "incoming_requests"
_INCOMING_SAMPLES = "incoming_gpu_samples"
# telemetry.parquet columns (embedsweep.telemetry writes them).
_SAMPLE_COLUMNS = (
    "run_id",
    "concurrency",
    "device",
    "t_ms",
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_mib",
    "mem_total_mib",
    "power_w",
)
# requests.parquet columns newer than the first release: a file without them is still valid.
_SCHEDULED = "scheduled_ns"
_ADDED_LATER = frozenset({_SCHEDULED})


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _utc_naive(moment: datetime) -> datetime:
    # Columns are zone-less UTC; a naive datetime is taken to be UTC already.
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _connect(path: Path, *, read_only: bool, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
    # DuckDB allows one writing process per file, and a reader also holds the lock; a cell loader
    # and a user's `embedsweep sql` may meet here, so wait for the other side rather than fail.
    config: dict[str, str | bool | int | float | list[str]] = (
        {} if read_only else {"storage_compatibility_version": STORAGE_COMPATIBILITY_VERSION}
    )
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            detail = _first_line(exc)
            if _LOCK_MESSAGE not in str(exc):
                raise ConfigError(f"cannot open warehouse {path}: {detail}") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbedsweepError(
                    f"warehouse {path} is locked by another process; gave up after "
                    f"{lock_timeout_s:g} s ({detail})",
                    code="warehouse_locked",
                ) from exc
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_LOCK_BACKOFF_S)


def open_warehouse(
    path: Path, *, read_only: bool = False, lock_timeout_s: float = 60.0
) -> duckdb.DuckDBPyConnection:
    """Open (creating when writing) the warehouse at ``path`` with its schema up to date.

    Waits up to ``lock_timeout_s`` for another process's lock, then raises
    ``EmbedsweepError(code="warehouse_locked")``. A read-only open of a missing file raises
    :class:`ConfigError`; one of a warehouse from an older version migrates it first.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise ConfigError(f"no warehouse at {path}; run a sweep first")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot open warehouse {path}: cannot create {path.parent} ({exc.strerror or exc})"
            ) from exc
    con = _connect(path, read_only=read_only, lock_timeout_s=lock_timeout_s)
    try:
        if read_only:
            try:
                check_current(con, path)
            except ConfigError:
                if not scalar(con, "has_schema_migrations"):
                    raise  # not an embedsweep warehouse: never add tables to someone's file
                # A warehouse written by an older embedsweep: bring its schema up to date once
                # (a short read-write open), then read it as asked.
                con.close()
                migrated = _connect(path, read_only=False, lock_timeout_s=lock_timeout_s)
                try:
                    migrate(migrated)
                finally:
                    migrated.close()
                con = _connect(path, read_only=True, lock_timeout_s=lock_timeout_s)
                check_current(con, path)
        else:
            migrate(con)
    except BaseException:
        con.close()
        raise
    return con


def record_sweep(
    con: duckdb.DuckDBPyConnection,
    *,
    sweep_run_id: str,
    sweep_name: str,
    spec_json: str,
    started_at: datetime,
    finished_at: datetime | None,
) -> None:
    """Insert or update one sweep run (call it at the start and again at the end)."""
    try:
        json.loads(spec_json)
    except ValueError as exc:
        raise ConfigError(f"sweep {sweep_run_id}: spec_json is not JSON ({exc})") from exc
    con.execute(
        statement("upsert_sweep"),
        [
            sweep_run_id,
            sweep_name,
            _utc_naive(started_at),
            None if finished_at is None else _utc_naive(finished_at),
            spec_json,
        ],
    )


def _invalid(path: Path, why: str) -> EmbedsweepError:
    return EmbedsweepError(f"invalid run artifact {path}: {why}", code="invalid_run_artifact")


def _read_manifest(path: Path) -> RunManifest:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _invalid(path, exc.strerror or type(exc).__name__) from exc
    try:
        return RunManifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        raise _invalid(
            path, f"{exc.error_count()} error(s), first at {where}: {first['msg']}"
        ) from exc


def _timestamp(value: str, field: str, path: Path) -> datetime:
    try:
        return _utc_naive(datetime.fromisoformat(value))
    except ValueError as exc:
        raise _invalid(path, f"{field} is not an ISO-8601 time: {value!r}") from exc


def _read_requests(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise _invalid(path, _first_line(exc)) from exc
    present = set(table.column_names)
    missing = [c for c in REQUEST_COLUMNS if c not in present and c not in _ADDED_LATER]
    if missing:
        raise _invalid(path, f"missing column(s) {', '.join(missing)}")
    if _SCHEDULED not in present:
        # Written before open-loop load: every request was due when it started.
        table = table.append_column(_SCHEDULED, table.column("start_ns"))
    return table


def _run_row(manifest: RunManifest, path: Path) -> list[object]:
    m = manifest
    return [
        m.run_id,
        m.sweep_run_id,
        m.sweep_name,
        m.cell_id,
        m.model,
        m.model_ref,
        m.engine,
        m.planned_engine,
        m.pool,
        m.gpu_model,
        m.gpu_count,
        m.cost_per_gpu_hour,
        m.chunk_size,
        m.batch_size,
        m.status,
        m.reason,
        m.message,
        m.engine_version,
        m.max_input_tokens,
        m.time_to_healthy_s,
        m.seed,
        _timestamp(m.started_at, "started_at", path),
        _timestamp(m.finished_at, "finished_at", path),
        _now(),
        m.host,
        ",".join(m.devices) or None,
        m.port_released,
        m.gpu_memory_released,
        m.server_id,
        m.fidelity.verdict if m.fidelity else None,
        m.usage_counting,
        m.usage_trusted,
        m.dtype_requested,
        m.dtype,
        m.served_dtype,
        m.dtype_note,
        m.startup,
    ]


def _fidelity_row(manifest: RunManifest) -> list[object] | None:
    f = manifest.fidelity
    if f is None:
        return None
    return [
        manifest.run_id,
        f.probe_version,
        f.reference,
        f.served_dtype,
        f.threshold,
        f.texts,
        f.dimension,
        f.reference_dimension,
        f.min_cosine,
        f.mean_cosine,
        f.max_abs_diff,
        f.norm_min,
        f.norm_max,
        f.normalized,
        f.reference_normalized,
        f.invariance_min_cosine,
        f.invariance_max_abs_diff,
        f.dimensions_request,
        f.overlength,
        f.verdict,
        json.dumps([finding.model_dump() for finding in f.findings]),
    ]


def _harness_row(manifest: RunManifest) -> list[object] | None:
    h = manifest.harness
    if h is None:
        return None
    return [
        manifest.run_id,
        h.chunk_size,
        h.concurrency,
        h.batch,
        h.server_inputs_per_s,
        h.direct_inputs_per_s,
        h.ratio,
        h.direct_threads,
        h.dtype,
        h.device,
        h.runtime,
        h.model_threads,
        h.model_threads_now,
        h.thread_changes,
        h.frontend,
        h.note,
    ]


def _preflight_rows(manifest: RunManifest) -> list[list[object]]:
    rows: list[list[object]] = []
    for p in manifest.preflight:
        head: list[object] = [
            manifest.run_id,
            p.engine,
            p.engine_version,
            p.architecture,
            p.verdict,
            p.max_input_tokens,
            p.fallback_engine,
        ]
        # A clean preflight still gets a row: the verdict is the finding worth keeping.
        reasons: list[list[object]] = [[r.code, r.severity, r.message] for r in p.reasons]
        rows.extend(head + reason for reason in reasons or [[None, None, None]])
    return rows


def _result_rows(manifest: RunManifest) -> list[list[object]]:
    return [
        [
            manifest.run_id,
            level.concurrency,
            level.requests,
            level.ok,
            level.errors,
            json.dumps(level.errors_by_cause, sort_keys=True),
            level.duration_s,
            level.throughput_rps,
            level.inputs_per_s,
            level.input_tokens_per_s,
            level.latency_ms.mean,
            level.latency_ms.p50,
            level.latency_ms.p90,
            level.latency_ms.p95,
            level.latency_ms.p99,
            level.latency_ms.max,
            level.prompt_tokens_mismatch,
            level.achieved_concurrency,
            level.valid,
            level.cost_per_million_tokens,
            level.mode,
            level.offered_rps,
            level.lag_mean_ms,
            level.lag_p99_ms,
            level.lag_max_ms,
            level.unsent,
            level.gpu_util_mean_pct,
            level.gpu_mem_used_max_mib,
            level.gpu_power_mean_w,
            level.partial,
            level.stopped_reason,
            level.host_other_cpu_cores,
            level.host_load_1m,
            level.host_quiet,
        ]
        for level in manifest.levels
    ]


def _run_exists(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    return bool(scalar(con, "run_exists", [run_id]))


def _write_run(
    con: duckdb.DuckDBPyConnection,
    manifest: RunManifest,
    run_row: list[object],
    requests_path: Path | None,
    samples: pa.Table | None = None,
) -> bool:
    con.begin()
    try:
        # Asked again inside the transaction: another cursor of this process may have ingested
        # the same run while the parquet file was being read.
        if _run_exists(con, manifest.run_id):
            con.rollback()
            return False
        con.execute(statement("insert_run"), run_row)
        preflight = _preflight_rows(manifest)
        if preflight:
            con.executemany(statement("insert_preflight_reason"), preflight)
        results = _result_rows(manifest)
        if results:
            con.executemany(statement("insert_result"), results)
        fidelity = _fidelity_row(manifest)
        if fidelity is not None:
            con.execute(statement("insert_fidelity"), fidelity)
        harness = _harness_row(manifest)
        if harness is not None:
            con.execute(statement("insert_harness"), harness)
        if samples is not None:
            con.execute(statement("insert_gpu_samples"))
        if requests_path is not None:
            # Arrow in, one set-based INSERT: executemany per row is ~1,000x slower.
            try:
                con.execute(statement("insert_requests"))
            except (duckdb.ConversionException, duckdb.ConstraintException) as exc:
                raise _invalid(requests_path, _first_line(exc)) from exc
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return True


def ingest_run(con: duckdb.DuckDBPyConnection, run_dir: Path) -> bool:
    """Load one run directory (``run.json`` and, when present, ``requests.parquet``).

    Returns False, writing nothing, when the run is already in the warehouse. Everything for the
    run is written in one transaction, so a failure leaves no part of it behind. A malformed
    artifact raises ``EmbedsweepError(code="invalid_run_artifact")`` naming the file. Call it
    outside a transaction of your own.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / "run.json"
    manifest = _read_manifest(manifest_path)
    run_row = _run_row(manifest, manifest_path)
    if _run_exists(con, manifest.run_id):
        return False
    samples = _read_samples(run_dir / "telemetry.parquet")
    if samples is not None:
        ids = samples.column("run_id").to_pylist()
        foreign_samples = sum(1 for value in ids if value != manifest.run_id)
        if foreign_samples:
            raise _invalid(
                run_dir / "telemetry.parquet",
                f"{foreign_samples} row(s) do not belong to run {manifest.run_id}",
            )
        con.register(_INCOMING_SAMPLES, samples)
    try:
        requests_path = run_dir / "requests.parquet"
        if not requests_path.exists():
            return _write_run(con, manifest, run_row, None, samples)
        requests = _read_requests(requests_path)
        # Registered outside the transaction: unregistering inside an aborted one is refused.
        con.register(_INCOMING_REQUESTS, requests)
        try:
            # Checked before the transaction opens: a mixed-up file is refused untouched.
            foreign = scalar(con, "foreign_request_rows", [manifest.run_id])
            if foreign:
                raise _invalid(
                    requests_path, f"{foreign} row(s) do not belong to run {manifest.run_id}"
                )
            return _write_run(con, manifest, run_row, requests_path, samples)
        finally:
            con.unregister(_INCOMING_REQUESTS)
    finally:
        if samples is not None:
            con.unregister(_INCOMING_SAMPLES)


def _read_samples(path: Path) -> pa.Table | None:
    """NVML samples of a run (``telemetry.parquet``; absent on machines without a GPU)."""
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise _invalid(path, _first_line(exc)) from exc
    missing = [c for c in _SAMPLE_COLUMNS if c not in table.column_names]
    if missing:
        raise _invalid(path, f"missing column(s) {', '.join(missing)}")
    return table.select(list(_SAMPLE_COLUMNS))


def ingest_runs(con: duckdb.DuckDBPyConnection, run_dirs: Iterable[Path]) -> int:
    """Ingest each run directory in turn; returns how many were new."""
    return sum(1 for run_dir in run_dirs if ingest_run(con, run_dir))


def query(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement and return its column names and all its rows."""
    cursor = con.execute(sql, list(params) if params is not None else None)
    if cursor.description is None:
        return [], []
    columns = [str(d[0]) for d in cursor.description]
    return columns, list(cursor.fetchall())


# What ``embedsweep sql`` runs: queries, never statements that write, load or configure.
# (A PIVOT parses as MULTI: the SELECT it is rewritten into, with its temporary types.)
_READ_STATEMENTS = frozenset(
    {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.MULTI}
)


def sandbox(con: duckdb.DuckDBPyConnection, readable: Sequence[Path]) -> None:
    """Lock CON (a read-only warehouse connection) to its own database plus the folders
    READABLE (the run folders, for queries over requests.parquet): no other file is read or
    written, no extension is installed or loaded, nothing leaves the machine, and the settings
    cannot be changed back."""
    con.execute("SET allowed_directories = ?", [[f"{Path(p).resolve()}/" for p in readable]])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def read_only_query(
    con: duckdb.DuckDBPyConnection, sql: str
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One or more SELECT / EXPLAIN statements on a :func:`sandbox`-ed connection; the rows of
    the last. Anything else (COPY, EXPORT, ATTACH, INSTALL, SET, PRAGMA, CALL, a write) is a
    ConfigError naming it, before any statement runs."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConfigError(_first_line(exc)) from exc
    if not statements:
        raise ConfigError("no SQL statement given")
    for parsed in statements:
        if parsed.type not in _READ_STATEMENTS:
            kind = parsed.type.name
            raise ConfigError(
                f"refused: embedsweep sql is read-only and runs SELECT and EXPLAIN only "
                f"(this is {kind})"
            )
    result: tuple[list[str], list[tuple[Any, ...]]] = ([], [])
    for parsed in statements:
        result = query(con, parsed.query)
    return result


def _jsonable(value: object) -> object:
    if isinstance(value, float):
        # NaN and infinities are not JSON; a missing figure is.
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def report_rows(
    con: duckdb.DuckDBPyConnection, *, sweep_run_id: str | None = None
) -> list[dict[str, Any]]:
    """One row per cell and load level for the latest run of each cell (within one sweep run when
    ``sweep_run_id`` is given); a cell with no load levels gives one row with concurrency None.
    """
    columns, rows = query(con, statement("report_rows"), [sweep_run_id, sweep_run_id])
    out = [
        {column: _jsonable(value) for column, value in zip(columns, row, strict=True)}
        for row in rows
    ]
    for row in out:
        # A JSON column comes back as its text: the report wants the list.
        findings = row.get("fidelity_findings")
        if isinstance(findings, str):
            row["fidelity_findings"] = json.loads(findings)
    return out
