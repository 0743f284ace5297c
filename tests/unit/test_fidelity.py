"""The fidelity probe's comparisons, against a small HTTP endpoint whose faults are chosen by
the test (a wrong vector, rows of a batch mixed up, no normalisation, ``dimensions`` ignored, an
over-length input answered 200). The real engines' probes are in tests/engines and
tests/integration; here each fault must be found, and only it."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from embedsweep import fidelity
from embedsweep.fidelity import (
    Endpoint,
    logged_dtype,
    probe,
    probe_texts,
    served_dtype,
    threshold_for,
)

DIM = 16
LIMIT = 40


def _vector(text: str) -> npt.NDArray[np.float64]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


class _Endpoint:
    """What the fake server does wrong; all False is a faithful server."""

    def __init__(self) -> None:
        self.wrong_vectors = False
        self.mix_batches = False
        self.unnormalised = False
        self.dimensions = "refuse"  # refuse | ignore | honour
        self.truncate = False
        self.wrong_dim = False
        self.requests = 0


class _Handler(BaseHTTPRequestHandler):
    state: _Endpoint

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        state = self.state
        state.requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = body["input"]
        if any(len(t.split()) > LIMIT for t in texts) and not state.truncate:
            self._send(400, {"error": {"message": "too long", "type": "BadRequestError"}})
            return
        if "dimensions" in body and state.dimensions == "refuse":
            self._send(400, {"error": {"message": "not a matryoshka model"}})
            return
        vectors = [_vector(t) for t in texts]
        if state.wrong_vectors:
            vectors = [_vector(t + " (pooled wrong)") for t in texts]
        if state.unnormalised:
            vectors = [v * 3.0 for v in vectors]
        if state.mix_batches and len(texts) > 1:
            vectors = vectors[1:] + vectors[:1]
        if state.wrong_dim:
            vectors = [v[: DIM // 2] for v in vectors]
        if "dimensions" in body and state.dimensions == "honour":
            vectors = [v[: body["dimensions"]] for v in vectors]
        data = [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        self._send(200, {"data": data, "usage": {"prompt_tokens": 1}})


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, _Endpoint]]:
    state = _Endpoint()
    handler = type("Handler", (_Handler,), {"state": state})
    # A listen backlog of 5 (the default) drops the concurrent pass's connects for a second.
    server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 64})
    server = server_class(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}", "m"), state
    finally:
        server.shutdown()
        server.server_close()


TEXTS = [f"text number {i} " + "word " * i for i in range(10)]
OVERLONG = "word " * (LIMIT + 5)


def _run(ep: Endpoint, normalised: bool = True, **kw: object) -> fidelity.FidelityResult:
    reference = np.stack([_vector(t) for t in TEXTS])
    return probe(
        ep,
        TEXTS,
        reference,
        reference_name="test reference",
        reference_normalized=normalised,
        dtype=str(kw.pop("dtype", "float32")),
        overlength_text=OVERLONG,
        **kw,  # type: ignore[arg-type]
    )


def test_a_faithful_server_passes(endpoint: tuple[Endpoint, _Endpoint]) -> None:
    ep, state = endpoint
    result = _run(ep)
    assert result.verdict == "passed"
    assert result.findings == []
    assert result.min_cosine == pytest.approx(1.0, abs=1e-12)
    assert result.max_abs_diff == pytest.approx(0.0, abs=1e-12)
    assert result.invariance_min_cosine == pytest.approx(1.0, abs=1e-12)
    assert (result.dimension, result.reference_dimension) == (DIM, DIM)
    assert result.normalized is True
    assert (result.dimensions_request, result.overlength) == ("refused", "rejected")
    # alone (10) + batch + shuffled batch + concurrent (20) + dimensions + over-length
    assert state.requests == 10 + 1 + 1 + 20 + 1 + 1


def test_wrong_vectors_fail_with_their_cosine(endpoint: tuple[Endpoint, _Endpoint]) -> None:
    ep, state = endpoint
    state.wrong_vectors = True
    result = _run(ep)
    assert result.verdict == "failed"
    assert [f.code for f in result.findings] == ["vectors_differ"]
    assert result.min_cosine is not None
    assert result.min_cosine < 0.9
    assert "10 of 10" in result.findings[0].message


def test_rows_mixed_up_in_a_batch_are_their_own_finding(
    endpoint: tuple[Endpoint, _Endpoint],
) -> None:
    ep, state = endpoint
    state.mix_batches = True
    result = _run(ep)
    assert result.verdict == "failed"
    codes = {f.code for f in result.findings}
    # Each text alone is right: only the batched passes differ.
    assert codes == {"batch_variance"}
    assert result.min_cosine == pytest.approx(1.0, abs=1e-12)
    assert result.invariance_min_cosine is not None
    assert result.invariance_min_cosine < 0.9


def test_a_lost_normalisation_fails_though_cosines_agree(
    endpoint: tuple[Endpoint, _Endpoint],
) -> None:
    ep, state = endpoint
    state.unnormalised = True
    result = _run(ep)
    assert result.verdict == "failed"
    assert [f.code for f in result.findings] == ["normalization_differs"]
    assert result.min_cosine == pytest.approx(1.0, abs=1e-12)
    assert result.norm_min == pytest.approx(3.0)
    # The same vectors for a model that does not normalise are faithful.
    assert _run(ep, normalised=False).verdict == "passed"


def test_a_different_dimension_fails(endpoint: tuple[Endpoint, _Endpoint]) -> None:
    ep, state = endpoint
    state.wrong_dim = True
    result = _run(ep)
    assert result.verdict == "failed"
    assert "dimension_mismatch" in {f.code for f in result.findings}


def test_what_the_server_does_with_dimensions(endpoint: tuple[Endpoint, _Endpoint]) -> None:
    ep, state = endpoint
    state.dimensions = "ignore"
    ignored = _run(ep)
    assert ignored.dimensions_request == "ignored"
    assert [f.code for f in ignored.findings] == ["dimensions_ignored"]
    assert ignored.verdict == "passed"  # reported, not a wrong vector
    state.dimensions = "honour"
    assert _run(ep).dimensions_request == "honoured"
    state.dimensions = "refuse"
    refused = _run(ep, matryoshka=True)
    assert [f.code for f in refused.findings] == ["dimensions_refused"]


def test_an_over_length_input_answered_200_is_a_truncation(
    endpoint: tuple[Endpoint, _Endpoint],
) -> None:
    ep, state = endpoint
    state.truncate = True
    result = _run(ep)
    assert result.overlength == "truncated"
    assert [f.code for f in result.findings] == ["truncates_overlength"]


def test_no_server_is_an_error_verdict_not_an_exception() -> None:
    result = _run(Endpoint("http://127.0.0.1:9", "m", timeout_s=2))
    assert result.verdict == "error"
    assert result.findings[0].code == "probe_error"
    assert result.min_cosine is None


def test_thresholds_follow_the_served_dtype() -> None:
    assert threshold_for("float32") == 0.9999
    assert threshold_for("float16") == threshold_for("bfloat16") == 0.999
    assert served_dtype("vllm", "auto", on_gpu=True, stored="float32") == "float16"
    assert served_dtype("vllm", "auto", on_gpu=True, stored="bfloat16") == "bfloat16"
    # vLLM 0.32's CPU build serves a float32 pooling model in float16 too (its start-up line in
    # the test below says so).
    assert served_dtype("vllm", "auto", on_gpu=False, stored="float32") == "float16"
    assert served_dtype("hf", "float16", on_gpu=True, stored="float32") == "float16"
    assert served_dtype("hf", "auto", on_gpu=True, stored="float32") == "float16"
    assert served_dtype("infinity", "auto", on_gpu=False, stored="float32") == "float32"


def test_the_dtype_an_engine_logged_wins(tmp_path: Path) -> None:
    # vLLM 0.32.0's CPU build serving all-MiniLM-L6-v2 with --dtype auto (its EngineCore line,
    # shortened).
    log = tmp_path / "server.log"
    log.write_text(
        "(APIServer pid=7389) WARNING 12-02 18:01:52 [cpu.py:224] Triton is not installed.\n"
        "(EngineCore pid=7497) INFO 12-02 18:01:59 [core.py:133] Initializing a V1 LLM engine "
        "(v0.32.0) with config: model='/m', speculative_config=None, tokenizer='/m', "
        "trust_remote_code=False, dtype=torch.float16, max_seq_len=256, download_dir=None\n"
    )
    assert logged_dtype(log) == "float16"
    log.write_text("INFO nothing about dtypes here, dtype=auto\n")
    assert logged_dtype(log) is None
    assert logged_dtype(tmp_path / "missing.log") is None


def test_cosine_just_below_the_threshold_fails(endpoint: tuple[Endpoint, _Endpoint]) -> None:
    ep, _ = endpoint
    # A reference rotated by a small angle: cosine 0.9998 passes float16, fails float32.
    reference = np.stack([_vector(t) for t in TEXTS])
    noise = np.stack([_vector(t + "!") for t in TEXTS])
    noise -= (noise * reference).sum(axis=1, keepdims=True) * reference
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = np.arccos(0.9998)
    tilted = np.cos(angle) * reference + np.sin(angle) * noise

    def run(dtype: str) -> str:
        return probe(
            ep,
            TEXTS,
            tilted,
            reference_name="r",
            reference_normalized=True,
            dtype=dtype,
        ).verdict

    assert (run("float32"), run("float16")) == ("failed", "passed")


def test_probe_texts_fit_the_cell_and_keep_the_run_texts() -> None:
    count = lambda text: len(text.split()) + 2  # noqa: E731 - a tokenizer with two specials
    texts = probe_texts(count, 8, run_texts=["r1 r2", "r1 r2", "x " * 20], calibrated=None)
    assert all(count(t) <= 8 for t in texts)
    assert "hello world" in texts
    assert texts.count("r1 r2") == 1
    made = probe_texts(count, 16, calibrated=lambda n: " ".join(["w"] * (n - 2)))
    assert {count(t) for t in made} >= {4, 8, 16}
