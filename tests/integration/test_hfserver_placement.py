"""The built-in server's placement for real: the packaged model on this CPU, in the dtype the CPU
computes natively, its vectors still the model's; and under a real busy process the model gives
up a thread, and takes it back when the process ends."""

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
from embedsweep.precision import resolve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    launch = Launch(
        model_path=minilm_dir, served_name="m", port=free_port(), api_key=API_KEY,
        max_input_tokens=256, devices=("cpu",),
    )  # fmt: skip
    with server_for("hf", launch, tmp_path_factory.mktemp("hf") / "server.log") as proc:
        proc.wait_healthy(120)
        yield proc


def _load(server: ServerProcess, minilm_dir: Path, seconds: float) -> None:
    texts = Calibrator(load_tokenizer(minilm_dir)).texts(32, 64, seed=1)
    records = run_level_sync(
        server.url, build_payloads("m", texts, 1), 32, concurrency=4, duration_s=seconds,
        api_key=API_KEY,
    )  # fmt: skip
    assert len(records) > 0


def test_the_default_dtype_is_the_cpus_native_half_and_the_vectors_are_the_models(
    server: ServerProcess, minilm_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    info = served_info(server)
    assert info["device"] == "cpu"
    assert info["dtype"] == resolve("auto", on_gpu=False)  # bfloat16 only where it is faster
    assert info["cores"] == len(given_cores())
    assert info["model_threads"] == len(given_cores())
    assert "torch" in info["runtime"]
    texts = ["hello world", "The quick brown fox jumps over the lazy dog.", "Привет, мир"]
    served = embed(server, texts)
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    cosines = (served * reference).sum(1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999  # the half-precision threshold of the fidelity probe
    # Unit length as the model's Normalize promises, to float32's precision, not bfloat16's.
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


@pytest.mark.skipif(len(given_cores()) < 2, reason="one core: the model has one thread anyway")
def test_a_busy_process_takes_a_thread_and_gives_it_back(
    server: ServerProcess, minilm_dir: Path
) -> None:
    cores = len(given_cores())
    before = served_info(server)
    assert before["model_threads_now"] == cores
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores - 1)]
    try:
        time.sleep(0.5)
        _load(server, minilm_dir, 4.0)
        during = served_info(server)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert during["model_threads_now"] == 1
    assert during["thread_changes"] > before["thread_changes"]
    # One thread has a core of its own (the last given), as vLLM's CPU worker is bound.
    all_cores = ",".join(str(c) for c in given_cores())
    assert before["model_cores"] == all_cores
    assert during["model_cores"] == str(given_cores()[-1])
    _load(server, minilm_dir, 4.0)
    after = served_info(server)
    assert after["model_threads_now"] == cores
    assert after["thread_changes"] > during["thread_changes"]
    assert after["model_cores"] == all_cores
    log = server.log_path.read_text()
    assert "the model now runs 1 thread(s)" in log


def test_the_servers_own_tokenizing_is_the_wrappers(minilm_dir: Path) -> None:
    from transformers import AutoTokenizer

    from embedsweep.hfserver.embedder import tokenizer_function

    wrapper = AutoTokenizer.from_pretrained(str(minilm_dir))
    texts = ["hello world", "Привет мир 你好", "word " * 300, "", "tabs\tand\nnewlines  two"]
    expected = wrapper(texts, add_special_tokens=True, truncation=False, padding=False)
    got = tokenizer_function(wrapper)(texts)
    assert got == {key: list(values) for key, values in expected.items()}
    assert len(got["input_ids"][2]) == 302  # tokenizer.json truncates at 128: not here
    assert tokenizer_function(wrapper)(["word " * 300]) == {
        key: [values[2]] for key, values in got.items()
    }
