"""The built-in server with the real packaged model, run as a real subprocess."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port
from embedsweep.errors import ServerError

pytestmark = pytest.mark.integration
API_KEY = "test-key-not-secret"


def _launch(model_dir: Path, **kw: Any) -> Launch:
    return Launch(
        model_path=model_dir,
        served_name="minilm",
        port=free_port(),
        api_key=API_KEY,
        max_input_tokens=256,
        **kw,
    )


@pytest.fixture(scope="module")
def server(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    launch = _launch(minilm_dir)
    proc = server_for("hf", launch, tmp_path_factory.mktemp("hf") / "server.log")
    with proc:
        proc.wait_healthy(120)
        yield proc


def _post(
    server: ServerProcess, body: dict[str, Any], key: str = API_KEY
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"{server.url}/v1/embeddings",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _bert_count(minilm_dir: Path, text: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    return len(tok(text, truncation=False)["input_ids"])


def test_models_lists_the_served_length(server: ServerProcess) -> None:
    with urllib.request.urlopen(f"{server.url}/v1/models", timeout=10) as resp:
        data = json.loads(resp.read())
    assert data["data"][0]["id"] == "minilm"
    assert data["data"][0]["max_model_len"] == 256


def test_embeddings_count_special_tokens_like_vllm(server: ServerProcess, minilm_dir: Path) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    status, body = _post(server, {"model": "minilm", "input": [text, "hello"]})
    assert status == 200
    assert body["usage"]["prompt_tokens"] == _bert_count(minilm_dir, text) + 3  # hello = CLS x SEP
    vec = np.array(body["data"][0]["embedding"])
    assert vec.shape == (384,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-3  # the model's Normalize module ran


def test_base64_matches_float(server: ServerProcess) -> None:
    _, floats = _post(server, {"model": "minilm", "input": "same text"})
    _, b64 = _post(server, {"model": "minilm", "input": "same text", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], atol=1e-6)


def test_over_long_input_is_rejected_not_truncated(server: ServerProcess) -> None:
    # Each "word" is one WordPiece token: 300 words + CLS/SEP = 302 tokens, over the 256 limit.
    status, body = _post(server, {"model": "minilm", "input": "word " * 300})
    assert status == 400
    assert body["error"]["message"] == (
        "This model's maximum context length is 256 tokens. However, your prompt contains "
        "302 input tokens. Please reduce the length of the input."
    )
    # Exactly the limit is accepted, as vLLM accepts it.
    status, body = _post(server, {"model": "minilm", "input": "word " * 254})
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 256


def test_wrong_key_and_wrong_model(server: ServerProcess) -> None:
    assert _post(server, {"input": "x"}, key="nope")[0] == 401
    status, body = _post(server, {"model": "other", "input": "x"})
    assert status == 404
    assert "does not exist" in body["error"]["message"]


def test_concurrent_requests_share_batches(server: ServerProcess) -> None:
    before = _batches(server)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: _post(server, {"input": f"text number {i} " * 20}), range(64))
        )
    took = time.monotonic() - started
    assert all(status == 200 for status, _ in results)
    after = _batches(server)
    used = after["batches"] - before["batches"]
    assert used < 64, f"64 concurrent requests took {used} model batches"
    assert after["inputs"] - before["inputs"] == 64
    # The model thread's time in those batches: some, and never more than the whole exchange.
    busy = after["model_busy_s"] - before["model_busy_s"]
    assert 0 < busy <= took


def _batches(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.url}/metrics/batches", timeout=10) as resp:
        counts: dict[str, float] = json.loads(resp.read())
    return counts


def test_api_key_never_reaches_the_log(server: ServerProcess) -> None:
    log = server.log_path.read_text()
    assert "# embedsweep:" in log
    assert API_KEY not in log


def test_start_failure_is_server_crashed(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    launch = _launch(tmp_path)
    proc = server_for("hf", launch, tmp_path / "server.log")
    with proc, pytest.raises(ServerError) as err:
        proc.wait_healthy(120)
    assert err.value.code == "server_crashed"


def test_missing_engine_command(tmp_path: Path) -> None:
    proc = ServerProcess(
        ["/nonexistent/vllm", "serve"],
        env={},
        log_path=tmp_path / "server.log",
        host="127.0.0.1",
        port=1,
    )
    with pytest.raises(ServerError) as err:
        proc.start()
    assert err.value.code == "engine_not_installed"


def _default_sigint() -> None:
    # A runner started in the background may ignore SIGINT, and children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie has exited; it only waits to be reaped


def test_ctrl_c_stops_the_whole_server_group(minilm_dir: Path, tmp_path: Path) -> None:
    """A parent holding a server gets SIGINT: the server (in its own session) must not survive."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from embedsweep.engines import Launch, server_for
        from embedsweep.engines.process import free_port
        launch = Launch(model_path=Path({str(minilm_dir)!r}), served_name="m", port=free_port(),
                        api_key="k", max_input_tokens=256)
        with server_for("hf", launch, Path({str(tmp_path / "server.log")!r})) as server:
            server.wait_healthy(120)
            print(server.proc.pid, launch.port, flush=True)
            import time
            time.sleep(120)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=_default_sigint,
    ) as parent:
        assert parent.stdout is not None
        server_pid, port = (int(x) for x in parent.stdout.readline().split())
        assert _alive(server_pid)
        parent.send_signal(signal.SIGINT)
        assert parent.wait(timeout=60) != 0
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server_pid)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the port is free again
