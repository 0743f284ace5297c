"""A CPU sweep with three real engines, as a user runs it (``embedsweep run``): all-MiniLM-L6-v2
on the built-in ``hf`` server, on vLLM 0.32.0 (CPU build) and on Infinity 0.0.78, three chunk
sizes each (one blocked). Every run passes the fidelity probe, its figures stored.

One server per engine serves every chunk size (counted two ways: the warehouse's server ids and
the distinct server starts in the logs); all three land side by side in the report, its HTML
and ``v_compare``; and every vLLM figure comes from levels where vLLM's own
``usage.prompt_tokens`` equalled the target on every request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from vllm_support import VLLM_VERSION

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EMBEDSWEEP, *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


def _sql(db: Path, query: str, env: dict[str, str]) -> list[dict[str, Any]]:
    done = _cli("sql", "--json", "--warehouse", str(db), query, env=env)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory,
    vllm_cpu: Any,
    infinity_cpu: Any,
    prefect_server: str,
    own_state: Any,
) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("three-engines")
    spec = yaml.safe_load((Path(__file__).parents[2] / "sweeps" / "local-engines.yaml").read_text())
    spec["load"].update(
        {"chunk_sizes": [32, 128, 512], "concurrency": [1, 4], "requests_per_level": 60}
    )
    # dtype left unset (the file pins float32): auto is resolved once, for all three engines.
    spec["models"][0].pop("dtype", None)
    spec.update(warehouse=str(tmp / "w.duckdb"), artifacts=str(tmp / "runs"))
    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "EMBEDSWEEP_ENGINES_ROOT": str(Path(vllm_cpu.prefix).parent),
        "EMBEDSWEEP_STATE_DIR": own_state(tmp / "state"),
        "PREFECT_API_URL": prefect_server,
    }
    done = _cli("run", str(sweep), "--no-progress", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp, env


def test_one_server_per_engine_for_all_chunk_sizes(swept: tuple[Path, dict[str, str]]) -> None:
    tmp, env = swept
    rows = _sql(
        tmp / "w.duckdb",
        "SELECT engine, count(DISTINCT server_id) AS servers, count(time_to_healthy_s) AS starts, "
        "list(chunk_size ORDER BY chunk_size) FILTER (WHERE status = 'ok') AS ran "
        "FROM runs GROUP BY engine ORDER BY engine",
        env,
    )
    assert rows == [
        {"engine": "hf", "servers": 1, "starts": 1, "ran": [32, 128]},
        {"engine": "infinity", "servers": 1, "starts": 1, "ran": [32, 128]},
        {"engine": "vllm", "servers": 1, "starts": 1, "ran": [32, 128]},
    ]
    # Independently of the warehouse: every server start writes one header line with its own
    # command line (its port differs); the run directories hold copies of three logs only.
    headers = {
        next(line for line in log.read_text().splitlines() if line.startswith("# embedsweep: "))
        for log in (tmp / "runs").rglob("server.log")
    }
    assert len(headers) == 3
    assert sum("vllm.entrypoints.openai.api_server" in h for h in headers) == 1
    assert sum("infinity_emb v2" in h for h in headers) == 1
    blocked = _sql(
        tmp / "w.duckdb", "SELECT engine, reason FROM runs WHERE status = 'blocked'", env
    )
    assert sorted(r["engine"] for r in blocked) == ["hf", "infinity", "vllm"]
    assert {r["reason"] for r in blocked} == {"exceeds_context"}


def test_every_vllm_figure_has_exact_token_counts(swept: tuple[Path, dict[str, str]]) -> None:
    tmp, env = swept
    [counts] = _sql(
        tmp / "w.duckdb",
        "SELECT count(*) AS requests, count(*) FILTER (WHERE q.prompt_tokens <> r.chunk_size) "
        "AS off, count(*) FILTER (WHERE q.status <> 200) AS errors FROM requests AS q "
        "JOIN runs AS r USING (run_id) WHERE r.engine = 'vllm'",
        env,
    )
    assert counts["requests"] > 0
    assert (counts["off"], counts["errors"]) == (0, 0)
    done = _cli("report", "--warehouse", str(tmp / "w.duckdb"), "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    vllm = [r for r in report if r["engine"] == "vllm" and r["status"] == "ok"]
    assert len(vllm) == 4  # 2 chunk sizes x 2 concurrency levels
    for row in vllm:
        assert row["engine_version"] == VLLM_VERSION
        assert row["valid"] is True
        assert row["prompt_tokens_mismatch"] == 0
        assert row["throughput_rps"] > 0
        assert row["server_startup_s"] > 0


def test_the_three_engines_side_by_side(swept: tuple[Path, dict[str, str]]) -> None:
    tmp, env = swept
    compare = _sql(
        tmp / "w.duckdb",
        "SELECT DISTINCT engine FROM v_compare WHERE status = 'ok' ORDER BY engine",
        env,
    )
    assert [r["engine"] for r in compare] == ["hf", "infinity", "vllm"]
    done = _cli("report", "--warehouse", str(tmp / "w.duckdb"), env={**env, "COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    assert "Servers" in done.stdout
    assert "vllm 0.32.0" in done.stdout
    page = tmp / "report.html"
    done = _cli(
        "report", "--warehouse", str(tmp / "w.duckdb"), "--format", "html", "-o", str(page),
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert 'id="servers"' in text
    # The engines are series of the same charts (the legend names each, and the sweep).
    charts = text.split('id="throughput"')[1].split('id="cost"')[0]
    assert ">all-MiniLM-L6-v2 · hf · cpu · sweep " in charts
    assert ">all-MiniLM-L6-v2 · vllm · cpu · sweep " in charts
    assert ">all-MiniLM-L6-v2 · infinity · cpu · sweep " in charts


def test_every_engine_serves_the_models_vectors(swept: tuple[Path, dict[str, str]]) -> None:
    tmp, env = swept
    rows = _sql(
        tmp / "w.duckdb",
        "SELECT engine, chunk_size, verdict, min_cosine, invariance_min_cosine, dimension, "
        "normalized, overlength, texts, reference FROM v_fidelity ORDER BY engine, chunk_size",
        env,
    )
    assert [(r["engine"], r["chunk_size"]) for r in rows] == [
        (e, c) for e in ("hf", "infinity", "vllm") for c in (32, 128)
    ]
    from embedsweep.fidelity import threshold_for
    from embedsweep.precision import resolve

    # Served at the sweep's one precision: its threshold.
    needed = threshold_for(resolve("auto", on_gpu=False))
    for row in rows:
        assert row["verdict"] == "passed", row
        assert row["min_cosine"] >= needed
        assert row["invariance_min_cosine"] >= needed
        assert (row["dimension"], row["normalized"]) == (384, True)
        assert row["texts"] >= 12
        assert row["reference"].startswith("sentence-transformers")
    # What each engine does with an input past its limit: two refuse it, Infinity truncates.
    over = {r["engine"]: r["overlength"] for r in rows}
    assert over == {"hf": "rejected", "infinity": "truncated", "vllm": "rejected"}


def test_an_infinity_level_is_labelled_with_its_counting_rule(
    swept: tuple[Path, dict[str, str]],
) -> None:
    tmp, env = swept
    done = _cli("report", "--warehouse", str(tmp / "w.duckdb"), "--format", "json", env=env)
    rows = [r for r in json.loads(done.stdout) if r["status"] == "ok"]
    rules = {(r["engine"], r["usage_counting"], r["usage_trusted"]) for r in rows}
    assert rules == {
        ("hf", "tokens", True),
        ("vllm", "tokens", True),
        ("infinity", "tokens_without_special", False),
    }
    assert all(r["valid"] for r in rows)
    markdown = _cli("report", "--warehouse", str(tmp / "w.duckdb"), "--format", "markdown",
                    env=env).stdout  # fmt: skip
    assert "tokens_without_special" in markdown


def test_dtype_unset_serves_every_engine_at_one_precision(
    swept: tuple[Path, dict[str, str]],
) -> None:
    from embedsweep.precision import resolve

    tmp, env = swept
    want = resolve("auto", on_gpu=False)  # bfloat16 only where this CPU computes it faster
    runs = _sql(
        tmp / "w.duckdb",
        "SELECT engine, any_value(dtype_requested) AS asked, any_value(dtype) AS started, "
        "any_value(served_dtype) AS served, count(dtype_note) AS notes FROM runs "
        "WHERE status = 'ok' GROUP BY engine ORDER BY engine",
        env,
    )
    assert [(r["engine"], r["asked"], r["started"]) for r in runs] == [
        ("hf", "auto", want),
        ("infinity", "auto", want),
        ("vllm", "auto", want),
    ]
    served = {r["engine"]: r["served"] for r in runs}
    # The built-in server's info and vLLM's own start-up log say what they computed in;
    # Infinity does not say.
    assert served == {"hf": want, "infinity": None, "vllm": want}
    assert all(r["notes"] == 0 for r in runs)
    compare = _sql(tmp / "w.duckdb", "SELECT DISTINCT dtype FROM v_compare", env)
    assert compare == [{"dtype": want}]
    done = _cli("report", "--warehouse", str(tmp / "w.duckdb"), "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    measured = [r for r in json.loads(done.stdout) if r["status"] == "ok"]
    assert {r["dtype"] for r in measured} == {want}
    table = _cli("report", "--warehouse", str(tmp / "w.duckdb"), env={**env, "COLUMNS": "200"})
    assert "Mixed precision" not in table.stdout
