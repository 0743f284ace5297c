"""The DuckDB warehouse on real files: migrations, idempotent all-or-nothing ingest, the report
view, read-only opens and the wait for another process's lock."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedsweep.errors import ConfigError, EmbedsweepError
from embedsweep.records import (
    LatencyMs,
    LevelSummary,
    PreflightResult,
    Reason,
    RunManifest,
)
from embedsweep.store import (
    STORAGE_COMPATIBILITY_VERSION,
    ingest_run,
    ingest_runs,
    migrations,
    open_warehouse,
    query,
    record_sweep,
    report_rows,
)
from embedsweep.store_schema import view_names, views_sql

REPO = Path(__file__).resolve().parents[2]
TABLES = ("runs", "preflight_reasons", "results", "requests")
REPORT_KEYS = {
    "sweep",
    "model",
    "engine",
    "planned_engine",
    "pool",
    "gpu_model",
    "chunk_size",
    "batch_size",
    "concurrency",
    "status",
    "reason",
    "message",
    "requests",
    "ok",
    "errors",
    "throughput_rps",
    "inputs_per_s",
    "input_tokens_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "prompt_tokens_mismatch",
    "valid",
    "cost_per_million_tokens",
    "run_id",
}


def level(concurrency: int, requests: int) -> LevelSummary:
    return LevelSummary(
        concurrency=concurrency,
        requests=requests,
        ok=requests - 1,
        errors=1,
        errors_by_cause={"context_overflow": 1},
        duration_s=2.0,
        throughput_rps=requests / 2.0,
        inputs_per_s=requests / 2.0,
        input_tokens_per_s=requests / 2.0 * 512,
        latency_ms=LatencyMs(mean=11.0, p50=10.0, p90=14.0, p95=15.0, p99=19.5, max=25.0),
        prompt_tokens_mismatch=0,
        achieved_concurrency=concurrency * 0.98,
        valid=True,
        cost_per_million_tokens=0.42,
    )


def manifest(run_id: str, **overrides: object) -> RunManifest:
    fields: dict[str, object] = {
        "run_id": run_id,
        "sweep_run_id": "sweep-1",
        "sweep_name": "nightly",
        "cell_id": f"cell-{run_id}",
        "model": "e5-base-v2",
        "model_ref": "intfloat/e5-base-v2",
        "engine": "vllm",
        "planned_engine": "vllm",
        "pool": "a100",
        "gpu_model": "NVIDIA A100-SXM4-80GB",
        "gpu_count": 1,
        "cost_per_gpu_hour": 1.8,
        "chunk_size": 512,
        "batch_size": 1,
        "status": "ok",
        "engine_version": "0.11.0",
        "max_input_tokens": 512,
        "time_to_healthy_s": 31.5,
        "seed": 7,
        "started_at": "2025-01-02T03:00:00+00:00",
        "finished_at": "2025-01-02T03:10:00+00:00",
        "preflight": [
            PreflightResult(
                model="e5-base-v2",
                engine="vllm",
                engine_version="0.11.0",
                architecture="BertModel",
                chunk_size=512,
                max_input_tokens=512,
                verdict="ok",
                reasons=[
                    Reason(code="non_commercial_license", severity="warn", message="cc-by-nc"),
                ],
            )
        ],
        "levels": [level(1, 6), level(4, 10)],
    }
    fields.update(overrides)
    return RunManifest.model_validate(fields)


def request_table(m: RunManifest) -> pa.Table:
    """The rows as a closed-loop run wrote them before open-loop load existed (no
    scheduled_ns): every test that uses it also checks that such files still ingest."""
    run_ids: list[str] = []
    conc: list[int] = []
    seq: list[int] = []
    for lvl in m.levels:
        run_ids += [m.run_id] * lvl.requests
        conc += [lvl.concurrency] * lvl.requests
        seq += list(range(lvl.requests))
    n = len(seq)
    return pa.table(
        {
            "run_id": pa.array(run_ids, pa.string()),
            "concurrency": pa.array(conc, pa.int32()),
            "seq": pa.array(seq, pa.int64()),
            "start_ns": pa.array([i * 1_000_000 for i in range(n)], pa.int64()),
            "latency_ns": pa.array([10_000_000 + i for i in range(n)], pa.int64()),
            "status": pa.array([200] * (n - 1) + [400], pa.int16()),
            "prompt_tokens": pa.array([512] * (n - 1) + [-1], pa.int32()),
            "expected_tokens": pa.array([512] * n, pa.int32()),
            "error": pa.array([None] * (n - 1) + ["context_overflow"], pa.string()),
        }
    )


def write_run(root: Path, m: RunManifest, requests: pa.Table | None = None) -> Path:
    run_dir = root / m.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(m.model_dump_json(), encoding="utf-8")
    (run_dir / "server.log").write_text("INFO ready\n", encoding="utf-8")
    if m.status == "ok":
        pq.write_table(
            request_table(m) if requests is None else requests, run_dir / "requests.parquet"
        )
    return run_dir


def blocked_manifest(run_id: str, **overrides: object) -> RunManifest:
    fields: dict[str, object] = {
        "model": "NV-Embed-v2",
        "model_ref": "nvidia/NV-Embed-v2",
        "engine": "sglang",
        "planned_engine": "sglang",
        "status": "blocked",
        "reason": "unsupported_architecture",
        "message": "NVEmbedModel is not in sglang 0.5's registry",
        "time_to_healthy_s": None,
        "preflight": [
            PreflightResult(
                model="NV-Embed-v2",
                engine="sglang",
                engine_version="0.5.0",
                architecture="NVEmbedModel",
                chunk_size=512,
                max_input_tokens=32768,
                verdict="blocked",
                reasons=[
                    Reason(
                        code="unsupported_architecture",
                        severity="block",
                        message="NVEmbedModel is not in sglang 0.5's registry",
                    ),
                    Reason(code="trust_remote_code_required", severity="block", message="custom"),
                ],
            )
        ],
        "levels": [],
    }
    fields.update(overrides)
    return manifest(run_id, **fields)


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in TABLES:
        _, rows = query(con, f"SELECT count(*) FROM {table}")
        out[table] = rows[0][0]
    return out


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = open_warehouse(tmp_path / "wh" / "embedsweep.duckdb")
    yield con
    con.close()


def test_ingest_twice_keeps_one_copy(warehouse: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "runs", manifest("r1"))

    assert ingest_run(warehouse, run_dir) is True
    first = counts(warehouse)
    assert ingest_run(warehouse, run_dir) is False

    assert first == {"runs": 1, "preflight_reasons": 1, "results": 2, "requests": 16}
    assert counts(warehouse) == first


def test_ingest_stores_the_run_as_written(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = manifest("r1", started_at="2025-01-02T05:00:00+02:00")
    ingest_run(warehouse, write_run(tmp_path, m))

    _, runs = query(warehouse, "SELECT started_at, status, seed FROM runs WHERE run_id = ?", ["r1"])
    _, res = query(
        warehouse,
        "SELECT concurrency, p99_ms, errors_by_cause->>'context_overflow' FROM results ORDER BY 1",
    )
    _, req = query(
        warehouse,
        "SELECT count(*), count(error), min(prompt_tokens) FROM requests WHERE concurrency = 4",
    )

    # The offset is applied, not dropped: 05:00+02:00 is 03:00 UTC.
    assert runs == [(datetime(2025, 1, 2, 3, 0), "ok", 7)]
    assert res == [(1, 19.5, "1"), (4, 19.5, "1")]
    assert req == [(10, 1, -1)]


def test_ingest_runs_counts_new_runs(warehouse: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    dirs = [write_run(tmp_path, manifest(f"r{i}")) for i in range(3)]

    assert ingest_runs(warehouse, dirs[:2]) == 2
    assert ingest_runs(warehouse, dirs) == 1
    assert counts(warehouse)["runs"] == 3


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "run.json"),
        (json.dumps({"run_id": "r1"}), "run.json"),
        (None, "run.json"),
        (manifest("r1", started_at="yesterday").model_dump_json(), "started_at"),
    ],
    ids=["malformed", "missing-fields", "absent", "bad-timestamp"],
)
def test_bad_run_json_is_refused_and_nothing_written(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path, content: str | None, fragment: str
) -> None:
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    if content is not None:
        (run_dir / "run.json").write_text(content, encoding="utf-8")
    pq.write_table(request_table(manifest("r1")), run_dir / "requests.parquet")

    with pytest.raises(EmbedsweepError, match=fragment) as caught:
        ingest_run(warehouse, run_dir)

    assert caught.value.code == "invalid_run_artifact"
    assert str(run_dir / "run.json") in str(caught.value)
    assert set(counts(warehouse).values()) == {0}


def _foreign_rows(m: RunManifest) -> pa.Table:
    table = request_table(m)
    ids = table.column("run_id").to_pylist()
    ids[-1] = "someone-else"
    return table.set_column(0, "run_id", pa.array(ids, pa.string()))


@pytest.mark.parametrize(
    "make",
    [
        _foreign_rows,
        lambda m: request_table(m).drop_columns(["latency_ns"]),
        lambda m: request_table(m).set_column(
            1, "concurrency", pa.array(["x"] * request_table(m).num_rows, pa.string())
        ),
    ],
    ids=["foreign-run-id", "missing-column", "wrong-type"],
)
def test_bad_requests_parquet_rolls_back_the_whole_run(
    warehouse: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    make: Callable[[RunManifest], pa.Table],
) -> None:
    m = manifest("r1")
    run_dir = write_run(tmp_path, m, requests=make(m))

    with pytest.raises(EmbedsweepError) as caught:
        ingest_run(warehouse, run_dir)

    assert caught.value.code == "invalid_run_artifact"
    assert "requests.parquet" in str(caught.value)
    assert set(counts(warehouse).values()) == {0}
    # The failed attempt left the connection usable and the run ingestible once repaired.
    (run_dir / "requests.parquet").unlink()
    pq.write_table(request_table(m), run_dir / "requests.parquet")
    assert ingest_run(warehouse, run_dir) is True


def test_corrupt_parquet_file_is_named(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    run_dir = write_run(tmp_path, manifest("r1"))
    (run_dir / "requests.parquet").write_bytes(b"not parquet at all")

    with pytest.raises(EmbedsweepError, match=r"requests\.parquet") as caught:
        ingest_run(warehouse, run_dir)

    assert caught.value.code == "invalid_run_artifact"
    assert counts(warehouse)["runs"] == 0


def test_blocked_run_gives_one_report_row_with_its_reason(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    run_dir = write_run(tmp_path, blocked_manifest("b1"))
    assert not (run_dir / "requests.parquet").exists()

    ingest_run(warehouse, run_dir)
    rows = report_rows(warehouse)
    _, blocked = query(
        warehouse, "SELECT run_id, reason, preflight_block_codes FROM v_blocked WHERE is_latest"
    )

    assert len(rows) == 1
    assert rows[0]["status"] == "blocked"
    assert rows[0]["reason"] == "unsupported_architecture"
    assert rows[0]["concurrency"] is None
    assert rows[0]["throughput_rps"] is None
    assert blocked == [
        ("b1", "unsupported_architecture", "trust_remote_code_required, unsupported_architecture")
    ]
    assert counts(warehouse) == {"runs": 1, "preflight_reasons": 2, "results": 0, "requests": 0}


def test_clean_preflight_keeps_its_verdict(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    clean = PreflightResult(
        model="e5-base-v2",
        engine="sglang",
        engine_version="0.5.0",
        architecture="BertModel",
        chunk_size=512,
        max_input_tokens=512,
        verdict="ok",
    )
    ingest_run(warehouse, write_run(tmp_path, manifest("r1", preflight=[clean])))

    _, rows = query(warehouse, "SELECT engine, verdict, code, severity FROM preflight_reasons")

    assert rows == [("sglang", "ok", None, None)]


def test_report_rows_take_the_latest_run_of_each_cell(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    old = manifest("old", cell_id="c1", sweep_run_id="s1", levels=[level(1, 4)])
    new = manifest(
        "new",
        cell_id="c1",
        sweep_run_id="s2",
        started_at="2025-01-03T03:00:00+00:00",
        levels=[level(1, 8), level(8, 8)],
    )
    other = blocked_manifest("blk", cell_id="c2", sweep_run_id="s1")
    ingest_runs(warehouse, [write_run(tmp_path, m) for m in (new, old, other)])

    latest = report_rows(warehouse)
    first_sweep = report_rows(warehouse, sweep_run_id="s1")

    assert [(r["run_id"], r["concurrency"]) for r in latest] == [
        ("blk", None),
        ("new", 1),
        ("new", 8),
    ]
    assert [(r["run_id"], r["concurrency"]) for r in first_sweep] == [("blk", None), ("old", 1)]
    assert report_rows(warehouse, sweep_run_id="no-such-sweep") == []
    row = latest[1]
    assert row.keys() >= REPORT_KEYS
    assert row["throughput_rps"] == 4.0
    assert row["input_tokens_per_s"] == 2048.0
    assert row["mean_ms"] == 11.0
    assert row["valid"] is True
    assert row["sweep"] == "nightly"
    assert row["started_at"] == "2025-01-03T03:00:00Z"
    assert json.loads(json.dumps(latest)) == latest


def test_views_answer_user_queries(warehouse: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    ingest_run(warehouse, write_run(tmp_path, manifest("r1")))

    _, req = query(
        warehouse,
        "SELECT model, count(*), count(*) FILTER (WHERE NOT ok), max(latency_ms) "
        "FROM v_requests GROUP BY model",
    )
    _, latest = query(
        warehouse, "SELECT count(*) FROM v_latest_results WHERE model = ?", ["e5-base-v2"]
    )

    assert req == [("e5-base-v2", 16, 1, 10.000015)]
    assert latest == [(2,)]


def test_migrations_are_recorded_and_not_reapplied(tmp_path: Path) -> None:
    path = tmp_path / "embedsweep.duckdb"
    con = open_warehouse(path)
    _, first = query(con, "SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")
    con.close()

    time.sleep(0.01)
    con = open_warehouse(path)
    _, again = query(con, "SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")
    con.close()

    assert [(v, n) for v, n, _ in first] == [(m.version, m.name) for m in migrations()]
    assert first[0][1] == "0001_init.sql"
    assert again == first


# -- the views (views.sql, re-created after migrating) ------------------------------------------

# views.sql as of the latest migration, without its comments and spacing. A writer re-creates the
# views of an existing warehouse after applying a migration, so a change to a view ships with one
# (a file holding only a comment on what changed will do); then pin the new pair here.
VIEWS_AS_OF = (10, "82b66b765de012fdaeb41c316591503e336e956814338ebe1a78bf7225cec014")


def views_digest() -> str:
    text = re.sub(r"--[^\n]*", "", views_sql())
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def test_a_change_to_the_views_ships_with_a_migration() -> None:
    assert (migrations()[-1].version, views_digest()) == VIEWS_AS_OF, (
        "views.sql changed: add a migration, then pin (its version, views_digest()) in VIEWS_AS_OF"
    )


def test_migrations_change_tables_and_views_sql_makes_every_view(tmp_path: Path) -> None:
    in_migrations = [
        m.name for m in migrations() if re.search(r"\bVIEW\b", re.sub(r"--[^\n]*", "", m.sql), re.I)
    ]
    warehouse = open_warehouse(tmp_path / "w.duckdb")
    _, views = query(warehouse, "SELECT view_name FROM duckdb_views() WHERE NOT internal")
    warehouse.close()

    assert in_migrations == []
    assert sorted(v for (v,) in views) == sorted(view_names())
    assert len(view_names()) == 12


def test_views_of_an_older_warehouse_are_replaced_when_it_migrates(tmp_path: Path) -> None:
    # As an older embedsweep left it: its migrations made the views, and one is out of date.
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(
        str(path), config={"storage_compatibility_version": STORAGE_COMPATIBILITY_VERSION}
    )
    con.execute(
        "CREATE TABLE schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    for mig in migrations()[:5]:
        con.execute(mig.sql)
        con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [mig.version, mig.name])
    con.execute("CREATE VIEW v_runs AS SELECT r.* FROM runs AS r")
    con.execute("CREATE VIEW v_results AS SELECT run_id, model FROM v_runs")
    con.close()

    reader = open_warehouse(path, read_only=True)
    try:
        _, columns = query(reader, "SELECT column_name FROM (DESCRIBE v_results)")
        _, compare = query(reader, "SELECT count(*) FROM v_compare")
    finally:
        reader.close()

    assert [c for (c,) in columns][-3:] == ["host_other_cpu_cores", "host_load_1m", "host_quiet"]
    assert compare == [(0,)]


def test_a_lost_view_comes_back_and_current_views_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    con = open_warehouse(path)
    # A view a writer re-created would lose its comment; one that is current keeps it (and two
    # writers of one process opening at once do not both replace it, which DuckDB refuses).
    con.execute("COMMENT ON VIEW v_servers IS 'kept'")
    con.close()
    con = open_warehouse(path)
    _, comment = query(con, "SELECT comment FROM duckdb_views() WHERE view_name = 'v_servers'")
    con.execute("DROP VIEW v_regressions")
    con.close()

    reader = open_warehouse(path, read_only=True)
    try:
        _, rows = query(reader, "SELECT count(*) FROM v_regressions")
    finally:
        reader.close()

    assert comment == [("kept",)]
    assert rows == [(0,)]


def test_read_only_open_of_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "embedsweep.duckdb"

    with pytest.raises(ConfigError, match=r"no warehouse at .*; run a sweep first"):
        open_warehouse(path, read_only=True)

    assert not path.parent.exists()


def test_read_only_open_reads_but_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "embedsweep.duckdb"
    con = open_warehouse(path)
    ingest_run(con, write_run(tmp_path / "runs", manifest("r1")))
    con.close()

    ro = open_warehouse(path, read_only=True)
    try:
        assert [r["run_id"] for r in report_rows(ro)] == ["r1", "r1"]
        with pytest.raises(duckdb.Error, match="read-only"):
            ro.execute("DELETE FROM runs")
    finally:
        ro.close()


def test_read_only_open_of_unmigrated_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.duckdb"
    duckdb.connect(str(path)).close()

    with pytest.raises(ConfigError, match=r"0001_init\.sql"):
        open_warehouse(path, read_only=True)


def test_record_sweep_upserts(warehouse: duckdb.DuckDBPyConnection) -> None:
    start = datetime(2025, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2)))
    record_sweep(
        warehouse,
        sweep_run_id="s1",
        sweep_name="nightly",
        spec_json='{"models": []}',
        started_at=start,
        finished_at=None,
    )
    record_sweep(
        warehouse,
        sweep_run_id="s1",
        sweep_name="nightly",
        spec_json='{"models": ["e5"]}',
        started_at=start,
        finished_at=datetime(2025, 1, 2, 4, 0, tzinfo=UTC),
    )

    _, rows = query(
        warehouse, "SELECT sweep_run_id, started_at, finished_at, spec->>'$.models[0]' FROM sweeps"
    )

    assert rows == [("s1", datetime(2025, 1, 2, 3, 0), datetime(2025, 1, 2, 4, 0), "e5")]


def test_record_sweep_refuses_a_spec_that_is_not_json(warehouse: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        record_sweep(
            warehouse,
            sweep_run_id="s1",
            sweep_name="nightly",
            spec_json="models: []",
            started_at=datetime(2025, 1, 2, tzinfo=UTC),
            finished_at=None,
        )


_HOLD_LOCK = """
import sys
import duckdb
con = duckdb.connect(sys.argv[1], config={"storage_compatibility_version": "v1.5.0"})
print("locked", flush=True)
sys.stdin.read()
con.close()
"""

_INGEST = """
import sys
from pathlib import Path
from embedsweep.store import ingest_run, open_warehouse
print("ready", flush=True)
con = open_warehouse(Path(sys.argv[1]), lock_timeout_s=60)
try:
    print(ingest_run(con, Path(sys.argv[2])), flush=True)
finally:
    con.close()
"""


@pytest.mark.integration
def test_open_gives_up_on_a_held_lock(tmp_path: Path) -> None:
    path = tmp_path / "embedsweep.duckdb"
    open_warehouse(path).close()
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(EmbedsweepError, match="locked by another process") as caught:
            open_warehouse(path, lock_timeout_s=0.5)
        waited = time.monotonic() - started
        holder.communicate(input="", timeout=30)

    assert caught.value.code == "warehouse_locked"
    assert 0.5 <= waited < 5


@pytest.mark.integration
def test_two_processes_ingesting_at_once_both_land(tmp_path: Path) -> None:
    path = tmp_path / "embedsweep.duckdb"
    ms = [manifest("p1"), manifest("p2", levels=[level(2, 30)])]
    dirs = [write_run(tmp_path / "runs", m) for m in ms]
    # This process holds the lock until both loaders are about to open the file, so both must
    # wait for it, and then for each other.
    holder = open_warehouse(path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _INGEST, str(path), str(d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for d in dirs
    ]
    outputs: list[tuple[int, str, str]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        holder.close()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            outputs.append((proc.returncode, out.strip(), err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert [(rc, out) for rc, out, _ in outputs] == [(0, "True"), (0, "True")], outputs
    con = open_warehouse(path, read_only=True)
    try:
        _, rows = query(
            con,
            "SELECT run_id, (SELECT count(*) FROM requests q WHERE q.run_id = r.run_id), "
            "(SELECT count(*) FROM results s WHERE s.run_id = r.run_id) FROM runs r ORDER BY 1",
        )
    finally:
        con.close()
    assert rows == [("p1", 16, 2), ("p2", 30, 1)]


# -- open-loop columns (migration 0002) ---------------------------------------------------------


def open_level(concurrency: int, requests: int) -> LevelSummary:
    return level(concurrency, requests).model_copy(
        update={
            "mode": "open",
            "offered_rps": 250.0,
            "lag_mean_ms": 0.4,
            "lag_p99_ms": 2.5,
            "lag_max_ms": 9.0,
            "unsent": 3,
        }
    )


def with_schedule(table: pa.Table, lag_ns: int) -> pa.Table:
    start = table.column("start_ns")
    scheduled = pa.array([v - lag_ns for v in start.to_pylist()], pa.int64())
    return table.add_column(table.column_names.index("start_ns") + 1, "scheduled_ns", scheduled)


def test_open_loop_rows_keep_their_schedule_and_lag(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = manifest("r1", levels=[open_level(64, 6)])
    ingest_run(
        warehouse, write_run(tmp_path, m, requests=with_schedule(request_table(m), 2_000_000))
    )

    _, req = query(
        warehouse,
        "SELECT min(start_ns - scheduled_ns), max(lag_ms), min(scheduled_ms) FROM v_requests",
    )
    _, res = query(
        warehouse,
        "SELECT mode, offered_rps, lag_mean_ms, lag_p99_ms, lag_max_ms, unsent "
        "FROM v_latest_results",
    )

    assert req == [(2_000_000, 2.0, -2.0)]
    assert res == [("open", 250.0, 0.4, 2.5, 9.0, 3)]


def test_rows_written_before_scheduled_ns_existed_are_due_when_they_started(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = manifest("r1")
    table = request_table(m)
    assert "scheduled_ns" not in table.column_names
    ingest_run(warehouse, write_run(tmp_path, m, requests=table))

    _, rows = query(
        warehouse, "SELECT count(*), count(*) FILTER (WHERE scheduled_ns <> start_ns) FROM requests"
    )

    assert rows == [(16, 0)]


def test_run_json_written_before_open_loop_levels_reads_as_closed_loop(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = manifest("r1")
    run_dir = write_run(tmp_path, m)
    doc = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    for lvl in doc["levels"]:
        for key in ("mode", "offered_rps", "lag_mean_ms", "lag_p99_ms", "lag_max_ms", "unsent"):
            del lvl[key]
    (run_dir / "run.json").write_text(json.dumps(doc), encoding="utf-8")

    assert ingest_run(warehouse, run_dir) is True
    _, rows = query(warehouse, "SELECT DISTINCT mode, offered_rps, lag_p99_ms, unsent FROM results")

    assert rows == [("closed", None, 0.0, 0)]


def test_a_warehouse_from_before_0002_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    (first,) = [mig for mig in migrations() if mig.version == 1]
    con = duckdb.connect(
        str(path), config={"storage_compatibility_version": STORAGE_COMPATIBILITY_VERSION}
    )
    con.execute(
        "CREATE TABLE schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    con.execute(first.sql)
    con.execute("INSERT INTO schema_migrations VALUES (1, ?, now())", [first.name])
    con.execute("INSERT INTO requests VALUES ('old', 4, 0, 1500, 9000, 200, 512, 512, NULL)")
    con.execute(
        "INSERT INTO results VALUES "
        "('old', 4, 1, 1, 0, '{}', 1, 1, 1, 512, 9, 9, 9, 9, 9, 9, 0, 1, true, NULL)"
    )
    con.close()

    # A read-only open (embedsweep report, sql) brings an older warehouse up to date first.
    reader = open_warehouse(path, read_only=True)
    try:
        assert query(reader, "SELECT scheduled_ns FROM requests")[1] == [(1500,)]
    finally:
        reader.close()
    con = open_warehouse(path)
    try:
        _, req = query(con, "SELECT start_ns, scheduled_ns FROM requests")
        _, res = query(con, "SELECT mode, offered_rps, lag_max_ms, unsent FROM results")
        _, versions = query(con, "SELECT version FROM schema_migrations ORDER BY 1")
        # The dropped default: a row that does not say when it was due is refused.
        with pytest.raises(duckdb.ConstraintException):
            con.execute(
                "INSERT INTO requests (run_id, concurrency, seq, start_ns, latency_ns, status, "
                "prompt_tokens, expected_tokens) VALUES ('x', 1, 0, 0, 1, 200, 1, 1)"
            )
    finally:
        con.close()

    assert req == [(1500, 1500)]
    assert res == [("closed", None, 0.0, 0)]
    assert versions == [(m.version,) for m in migrations()]


# -- the views of migration 0003 ----------------------------------------------------------------


def at_speed(concurrency: int, input_tokens_per_s: float, **update: object) -> LevelSummary:
    return level(concurrency, 6).model_copy(
        update={"input_tokens_per_s": input_tokens_per_s, **update}
    )


def nightly_runs(root: Path, speeds: list[dict[int, float]]) -> list[Path]:
    """One run of the same cell per night, in order; each dict maps concurrency to tokens/s."""
    return [
        write_run(
            root,
            manifest(
                f"n{night}",
                cell_id="cell-a",
                sweep_run_id=f"sweep-{night}",
                started_at=f"2025-01-0{night + 1}T03:00:00+00:00",
                finished_at=f"2025-01-0{night + 1}T03:10:00+00:00",
                levels=[at_speed(c, tps) for c, tps in by_level.items()],
            ),
        )
        for night, by_level in enumerate(speeds)
    ]


@pytest.mark.parametrize(
    ("tonight", "flagged"),
    [
        (1200.0, False),  # faster
        (950.0, False),  # -5 %: within the noise
        (900.0, False),  # exactly -10 %: the threshold is "more than"
        (899.0, True),
        (500.0, True),
    ],
)
def test_regressions_are_drops_of_more_than_ten_percent(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path, tonight: float, flagged: bool
) -> None:
    ingest_runs(warehouse, nightly_runs(tmp_path, [{4: 1000.0}, {4: tonight}]))

    _, rows = query(warehouse, "SELECT prev_run_id, run_id, concurrency FROM v_regressions")

    assert rows == ([("n0", "n1", 4)] if flagged else [])


def test_nightly_trend_pairs_each_level_with_the_previous_run_of_its_cell(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    runs = nightly_runs(tmp_path, [{1: 100.0, 4: 400.0}, {1: 110.0, 4: 300.0}, {1: 99.0}])
    # Another cell at the same level is never anybody's previous run.
    other = manifest("x", cell_id="cell-b", started_at="2025-01-02T12:00:00+00:00")
    ingest_runs(warehouse, [*runs, write_run(tmp_path, other)])

    _, rows = query(
        warehouse,
        "SELECT run_id, concurrency, prev_run_id, prev_input_tokens_per_s, "
        "round(tokens_per_s_change, 3), nightly, is_latest "
        "FROM v_nightly_trend WHERE cell_id = 'cell-a' ORDER BY concurrency, started_at",
    )

    assert rows == [
        ("n0", 1, None, None, None, True, False),
        ("n1", 1, "n0", 100.0, 0.1, True, False),
        ("n2", 1, "n1", 110.0, -0.1, True, True),
        ("n0", 4, None, None, None, True, False),
        ("n1", 4, "n0", 400.0, -0.25, True, False),
    ]


def test_an_invalid_level_is_not_a_regression(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    first, _ = nightly_runs(tmp_path / "a", [{4: 1000.0}, {4: 0.0}])
    broken = manifest(
        "n1",
        cell_id="cell-a",
        started_at="2025-01-02T03:00:00+00:00",
        levels=[at_speed(4, 10.0, valid=False)],
    )
    ingest_runs(warehouse, [first, write_run(tmp_path / "b", broken)])

    _, trend = query(warehouse, "SELECT run_id FROM v_nightly_trend")
    _, regressions = query(warehouse, "SELECT count(*) FROM v_regressions")

    assert trend == [("n0",)]
    assert regressions == [(0,)]


@pytest.mark.parametrize(
    ("gpu_count", "cost_per_gpu_hour", "expected"),
    [
        # 1800 tok/s on 2 GPUs at $1.8/h: $3.6/h, 500 tok/s per dollar-hour, $0.5556 per M tok.
        (2, 1.8, (3.6, 500.0, 0.5556, 3.0, 900.0)),
        (1, 1.8, (1.8, 1000.0, 0.2778, 6.0, 1800.0)),
        # A pool priced at 0 has no cost figures rather than a division by zero.
        (1, 0.0, (0.0, None, None, 6.0, 1800.0)),
        (0, 0.0, (0.0, None, None, None, None)),
    ],
)
def test_efficiency_prices_throughput_by_the_gpu_hour(
    warehouse: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    gpu_count: int,
    cost_per_gpu_hour: float,
    expected: tuple[object, ...],
) -> None:
    m = manifest(
        "r1",
        gpu_count=gpu_count,
        cost_per_gpu_hour=cost_per_gpu_hour,
        levels=[at_speed(4, 1800.0, inputs_per_s=6.0)],
    )
    ingest_run(warehouse, write_run(tmp_path, m))

    _, rows = query(
        warehouse,
        "SELECT usd_per_hour, tokens_per_s_per_usd_hour, round(usd_per_million_tokens, 4), "
        "inputs_per_s_per_gpu, input_tokens_per_s_per_gpu FROM v_efficiency",
    )

    assert rows == [expected]


def test_failures_by_reason_counts_runs_and_cells_with_the_newest_message(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    old = blocked_manifest("b1", cell_id="c1", message="old wording")
    new = blocked_manifest(
        "b2", cell_id="c1", message="new wording", started_at="2025-01-03T03:00:00+00:00"
    )
    other = blocked_manifest("b3", cell_id="c2", model="gte-Qwen2", message="another model")
    cancelled = manifest("c", status="cancelled", levels=[], preflight=[])
    ingest_runs(warehouse, [write_run(tmp_path, m) for m in (old, new, other, cancelled)])

    _, rows = query(
        warehouse,
        "SELECT reason, status, engine, pool, runs, cells, cells_now, models, example_message "
        "FROM v_failures_by_reason ORDER BY reason",
    )

    assert rows == [
        ("cancelled", "cancelled", "vllm", "a100", 1, 1, 1, "e5-base-v2", None),
        (
            "unsupported_architecture",
            "blocked",
            "sglang",
            "a100",
            3,
            2,
            2,
            "NV-Embed-v2, gte-Qwen2",
            "new wording",
        ),
    ]


def test_compare_is_the_latest_levels_in_long_form(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    ms = [
        manifest("v", levels=[at_speed(4, 900.0)]),
        manifest("s", engine="sglang", planned_engine="sglang", levels=[at_speed(4, 1000.0)]),
        blocked_manifest("b"),
    ]
    ingest_runs(warehouse, [write_run(tmp_path, m) for m in ms])

    _, rows = query(
        warehouse,
        "SELECT model, chunk_size, concurrency, engine_pool, input_tokens_per_s FROM v_compare",
    )

    assert rows == [
        ("e5-base-v2", 512, 4, "sglang@a100", 1000.0),
        ("e5-base-v2", 512, 4, "vllm@a100", 900.0),
    ]


def test_a_fidelity_probe_is_stored_and_marks_the_figures(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    from embedsweep.records import FidelityFinding, FidelityResult

    bad = FidelityResult(
        probe_version=1,
        reference="sentence-transformers float32 cpu",
        served_dtype="float32",
        threshold=0.9999,
        texts=19,
        dimension=384,
        reference_dimension=384,
        min_cosine=0.31,
        mean_cosine=0.45,
        max_abs_diff=0.77,
        normalized=True,
        reference_normalized=True,
        invariance_min_cosine=1.0,
        dimensions_request="refused",
        overlength="rejected",
        verdict="failed",
        findings=[FidelityFinding(code="vectors_differ", message="cosine 0.31 < 0.9999")],
    )
    m = manifest("run-unfaithful", fidelity=bad)
    ingest_run(warehouse, write_run(tmp_path, m, request_table(m)))
    ingest_run(warehouse, write_run(tmp_path, manifest("run-unprobed", cell_id="c2")))

    [(verdict, cosine, findings)] = warehouse.execute(
        "SELECT verdict, min_cosine, findings FROM fidelity_checks"
    ).fetchall()
    assert (verdict, cosine) == ("failed", 0.31)
    assert json.loads(findings) == [{"code": "vectors_differ", "message": "cosine 0.31 < 0.9999"}]
    compare = warehouse.execute(
        "SELECT run_id, status, fidelity, fidelity_failed, fidelity_min_cosine FROM v_compare "
        "ORDER BY run_id"
    ).fetchall()
    assert {r[0]: r[1:] for r in compare} == {
        "run-unfaithful": ("ok", "failed", True, 0.31),
        "run-unprobed": ("ok", None, None, None),
    }
    rows = {r["run_id"]: r for r in report_rows(warehouse)}
    assert rows["run-unfaithful"]["fidelity_failed"] is True
    assert rows["run-unfaithful"]["fidelity_findings"][0]["code"] == "vectors_differ"
    assert rows["run-unprobed"]["fidelity_failed"] is False


def test_a_harness_check_is_stored_and_reaches_the_report_rows(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    from embedsweep.records import HarnessCheck

    check = HarnessCheck(
        chunk_size=32,
        concurrency=16,
        batch=16,
        server_inputs_per_s=320.0,
        direct_inputs_per_s=350.0,
        ratio=320.0 / 350.0,
        direct_threads=2,
        dtype="bfloat16",
        device="cpu",
        runtime="torch eager, sdpa attention",
        model_threads=2,
        model_threads_now=2,
        thread_changes=0,
        frontend="asyncio loop and tokenizer between the model's batches",
    )
    m = manifest("run-hf", harness=check)
    ingest_run(warehouse, write_run(tmp_path, m, request_table(m)))
    ingest_run(warehouse, write_run(tmp_path, manifest("run-other", cell_id="c2")))
    [(ratio, dtype, threads)] = warehouse.execute(
        "SELECT ratio, dtype, model_threads FROM harness_checks WHERE run_id = 'run-hf'"
    ).fetchall()
    assert (round(ratio, 4), dtype, threads) == (0.9143, "bfloat16", 2)
    rows = {r["run_id"]: r for r in report_rows(warehouse)}
    assert rows["run-hf"]["harness_ratio"] == pytest.approx(320 / 350)
    assert rows["run-hf"]["harness_direct_inputs_per_s"] == 350.0
    assert rows["run-hf"]["harness_concurrency"] == 16
    assert rows["run-other"]["harness_ratio"] is None
