"""The built-in server as a user gets it on a CPU: the packaged model through torch.compile
(the suite's other servers run eager, see tests/conftest.py). Compiled at start-up, one graph
for every batch and one per thread count the governor may choose, so serving never recompiles;
the vectors are still the model's. Where compiling fails (here: a C++ compiler that fails), the
server says why and serves eager."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hfserver_calls import API_KEY, embed, served_info

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port
from embedsweep.hfserver.placement import given_cores
from embedsweep.loadgen import build_payloads, run_level_sync

pytestmark = pytest.mark.integration
RECOMPILED = "Recompiling function"


def _launch(minilm_dir: Path, **env: str) -> Launch:
    return Launch(
        model_path=minilm_dir, served_name="m", port=free_port(), api_key=API_KEY,
        max_input_tokens=256, devices=("cpu",), env={"EMBEDSWEEP_HF_COMPILE": "on", **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # TORCH_LOGS=recompiles: torch writes a line to the log for every recompilation.
    launch = _launch(minilm_dir, TORCH_LOGS="recompiles")
    with server_for("hf", launch, tmp_path_factory.mktemp("hf") / "server.log") as proc:
        proc.wait_healthy(300)
        yield proc


def _recompiles_after_start(server: ServerProcess) -> list[str]:
    log = server.log_path.read_text(errors="replace")
    assert "serving m on http" in log
    return [
        line for line in log.split("serving m on http", 1)[1].splitlines() if RECOMPILED in line
    ]


def test_compiled_at_start_and_every_batch_shape_is_the_models_without_recompiling(
    server: ServerProcess, minilm_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    info = served_info(server)
    assert "compiled (Inductor, frozen weights" in info["runtime"]
    assert info["startup"] in ("compiled", "cached")
    compiled_before = info["compiled_batches"]
    # Start-up compiled a graph per thread count: the second is a recompilation, logged (which
    # shows that this log would show one while serving too).
    started = server.log_path.read_text(errors="replace").split("serving m on http", 1)[0]
    assert started.count(RECOMPILED) == (1 if len(given_cores()) > 1 else 0)
    calibrator = Calibrator(load_tokenizer(minilm_dir))
    reference_model = SentenceTransformer(str(minilm_dir), device="cpu")
    # One row, a few, a full batch; 8 to 256 tokens (the served limit): shapes the warm-up never
    # ran, each a batch of its own.
    for rows, tokens in ((1, 8), (3, 100), (16, 32), (2, 256), (1, 255)):
        texts = calibrator.texts(tokens, rows, seed=rows * 1000 + tokens)
        served = embed(server, texts)
        reference = reference_model.encode(texts)
        cosines = (served * reference).sum(1) / np.linalg.norm(reference, axis=1)
        assert cosines.min() >= 0.999, (rows, tokens)  # the fidelity probe's half precision
        np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    # Each of those was a batch of the graph.
    assert served_info(server)["compiled_batches"] >= compiled_before + 5
    assert _recompiles_after_start(server) == []
    # A one-token row (token ids as given): a length the graph does not take runs eager at once.
    one = embed(server, [[7592]])
    assert one.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    assert len(_recompiles_after_start(server)) <= 1  # looked at, not compiled


@pytest.mark.skipif(len(given_cores()) < 2, reason="one core: the model has one thread anyway")
def test_the_governors_one_thread_has_its_own_graph(
    server: ServerProcess, minilm_dir: Path
) -> None:
    before = served_info(server)
    texts = Calibrator(load_tokenizer(minilm_dir)).texts(32, 64, seed=1)
    cores = len(given_cores())
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores - 1)]
    try:
        time.sleep(0.5)
        run_level_sync(
            server.url, build_payloads("m", texts, 1), 32, concurrency=4, duration_s=4.0,
            api_key=API_KEY,
        )  # fmt: skip
        during = served_info(server)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert during["model_threads_now"] == 1
    assert during["compiled_batches"] > before["compiled_batches"]  # the graph ran, not eager
    assert _recompiles_after_start(server) == []


def test_a_failed_compile_serves_eager_and_says_why(minilm_dir: Path, tmp_path: Path) -> None:
    # A C++ compiler that fails, and an empty cache (a cached graph would need no compiler).
    launch = _launch(minilm_dir, CXX="/bin/false", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "ic"))
    with server_for("hf", launch, tmp_path / "server.log") as proc:
        proc.wait_healthy(300)
        assert "eager" in served_info(proc)["runtime"]
        assert embed(proc, ["still served"]).shape == (1, 384)
        log = proc.log_path.read_text(errors="replace")
    assert "torch.compile failed (InductorError" in log
    assert "the model runs eager" in log
