"""The packaged all-MiniLM-L6-v2 on the real vLLM CPU build: one server for the module.

What is checked against the engine itself, not against strings: the install's mends (it
starts at all), the limit vLLM derives (256, from sentence_bert_config.json), the vectors (the
model's own, as sentence-transformers computes them), calibrated inputs counted exactly as vLLM
counts them, vLLM's own over-length answer and its classification, where the adapter puts
vLLM's internal address and compile cache, and the live registry against the snapshot.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from vllm_support import level, running, vllm_launch

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.diagnose import diagnose_error_body
from embedsweep.engine_envs import InstalledEngine
from embedsweep.engines.process import ServerProcess

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

NAME = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def served(
    vllm_cpu: InstalledEngine, minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # Compiled, as a sweep starts it: this file checks the compile cache's place.
    launch = vllm_launch(vllm_cpu, minilm_dir, name=NAME, max_len=256, eager=False)
    yield from running(launch, tmp_path_factory.mktemp("vllm-minilm") / "server.log")


def _post(server: ServerProcess, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    key = server.env["VLLM_API_KEY"]
    request = urllib.request.Request(
        f"{server.url}/v1/embeddings",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_vllm_derives_the_models_limit(served: ServerProcess) -> None:
    request = urllib.request.Request(
        f"{served.url}/v1/models",
        headers={"Authorization": f"Bearer {served.env['VLLM_API_KEY']}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        models = json.loads(response.read())["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(NAME, 256)]


def test_served_vectors_are_the_models(served: ServerProcess, minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [
        "hello world",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "embedding servers must not change the vectors " * 20,
        "短い日本語の文です。",
    ]
    status, body = _post(served, {"model": NAME, "input": texts, "encoding_format": "base64"})
    assert status == 200, body
    data = body["data"]
    assert isinstance(data, list)
    got = np.stack(
        [np.frombuffer(base64.b64decode(row["embedding"]), dtype=np.float32) for row in data]
    )
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    assert got.shape == reference.shape == (4, 384)
    cosine = (got * reference).sum(1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() > 0.9999, cosine
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("tokens", [32, 128, 256])
def test_calibrated_inputs_are_counted_exactly_by_vllm(
    served: ServerProcess, minilm_dir: Path, tokens: int
) -> None:
    texts = Calibrator(load_tokenizer(minilm_dir)).texts(tokens, 24, 0)
    records = level(served, NAME, texts, tokens, requests=48, warmup=4)
    assert records.status.tolist() == [200] * 48
    assert records.prompt_tokens.tolist() == [tokens] * 48


def test_one_token_over_the_limit_gets_vllms_400(served: ServerProcess, minilm_dir: Path) -> None:
    [text] = Calibrator(load_tokenizer(minilm_dir)).texts(257, 1, 0)
    status, body = _post(served, {"model": NAME, "input": text})
    assert status == 400
    message = str(body["error"]["message"])  # type: ignore[index]
    assert "maximum context length is 256 tokens" in message
    assert "257 input tokens" in message
    found = diagnose_error_body(status, json.dumps(body))
    assert found.cause == "context_overflow"


def test_adapter_keeps_vllms_internals_on_loopback_and_in_the_state_folder(
    served: ServerProcess,
) -> None:
    log = served.log_path.read_text(encoding="utf-8", errors="replace")
    env_line = next(line for line in log.splitlines() if line.startswith("# embedsweep env: "))
    assert "VLLM_CPU_KVCACHE_SPACE=1" in env_line
    assert "VLLM_HOST_IP=127.0.0.1" in env_line
    assert served.env["VLLM_API_KEY"] not in log
    # vLLM's own report of where its engine and workers talk to each other.
    assert "mq_connect_ip=127.0.0.1" in log
    assert "reserved_cpus=" in log or "reserve_cpu_num" in log
    # The compile cache is embedsweep's (the tests' state folder), not ~/.cache/vllm.
    cache = Path(served.env["VLLM_CACHE_ROOT"])
    assert cache == Path(os.environ["EMBEDSWEEP_STATE_DIR"]) / "vllm-cache"
    assert (cache / "torch_compile_cache").is_dir()


def test_registry_check_against_the_installed_engine(vllm_cpu: InstalledEngine) -> None:
    cli = Path(sys.executable).parent / "embedsweep"
    done = subprocess.run(
        [str(cli), "registry", "check", "--engine", "vllm", "--python", vllm_cpu.python],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The committed snapshot was generated from the same wheel: the live registry agrees.
    assert done.stdout.splitlines()[-1] == "vllm 0.32.0 installed, snapshot 0.32.0: 0 difference(s)"
