"""The failure classifier over server.log excerpts of vLLM and SGLang releases and over HTTP error
bodies: each fixture file is named ``<expected cause>__<what>.log``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedsweep.diagnose import (
    LOG_TAIL_BYTES,
    MAX_EVIDENCE_CHARS,
    RULES,
    Diagnosis,
    diagnose_error_body,
    diagnose_log,
    diagnose_text,
)

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "logs"
FIXTURES = sorted(LOGS.glob("*.log"))

# The deciding line of each fixture (a piece of it): the classifier must name this line, not merely
# land on the right code through some other line.
EVIDENCE: dict[str, str | None] = {
    "context_overflow__sglang05_input_longer.log": "The input (930 tokens) is longer",
    "context_overflow__vllm010_requested_tokens.log": "you requested 930 tokens in the input",
    "context_overflow__vllm015_request_has.log": "your request has 930 input tokens",
    "context_overflow__vllm033_prompt_contains.log": "your prompt contains at least 930",
    "engine_not_installed__command_not_found.log": "/bin/sh: vllm: command not found",
    "engine_not_installed__no_module_sglang.log": "No module named 'sglang'",
    "exceeds_context__vllm033_max_model_len.log": "User-specified max_model_len (1024)",
    "gated_model__vllm033_hub_gated.log": "Cannot access gated repo for url",
    "invalid_model_files__hf_missing_weights.log": "Error no file named model.safetensors",
    "invalid_model_files__hf_truncated_safetensors.log": "Error while deserializing header",
    "model_not_found__sglang05_not_a_model_identifier.log": "/models/bge-m4 is not a local",
    "model_not_found__vllm010_hub_missing.log": "Repository Not Found for url",
    "out_of_memory__sglang05_mem_fraction_static.log": "RuntimeError: Not enough memory.",
    "out_of_memory__vllm033_cuda_oom_then_engine_core_failed.log": "torch.OutOfMemoryError: CUDA",
    "out_of_memory__vllm033_free_memory_below_utilization.log": "Free memory on device (31.22",
    "out_of_memory__vllm09_no_cache_blocks.log": "ValueError: No available memory for the cache",
    "port_in_use__sglang05_uvicorn_bind.log": "[Errno 98] error while attempting to bind",
    "port_in_use__vllm033_uvicorn_bind.log": "[Errno 98] error while attempting to bind",
    "server_crashed__sglang05_initialization_failed.log": "RuntimeError: CUDA error: an illegal",
    "server_crashed__vllm033_nv_embed_v2_trust_remote_code.log": "TypeError: _LazyConfigMapping",
    "server_crashed__vllm09_engine_core_failed_no_traceback.log": "EngineCore failed to start.",
    "trust_remote_code_required__vllm033_custom_code.log": "contains custom code which must be",
    "unknown__empty.log": None,
    "unknown__vllm033_info_only.log": None,
    "unsupported_architecture__sglang05_missing_is_embedding.log": "does not appear to be an emb",
    "unsupported_architecture__sglang05_nv_embed_v2.log": "architectures ['NVEmbedModel'] are",
    "unsupported_architecture__vllm010_nv_embed_v2_failed_inspection.log": "failed to be inspected",
    "unsupported_architecture__vllm033_nv_embed_v2.log": "Model architectures ['NVEmbedModel'] are",
    "unsupported_architecture__vllm09_arch_removed.log": "was supported in vLLM until v0.8.5",
    # Real vLLM 0.32 CPU logs (an NVEmbedModel folder; see tests/engines/test_vllm_seed.py).
    "unsupported_architecture__vllm032cpu_nv_embed_transformers_fallback.log": (
        "has no vLLM implementation, falling back to Transformers implementation"
    ),
    "server_crashed__vllm032cpu_worker_killed.log": "Worker proc VllmWorker-0 died unexpectedly",
    "trust_remote_code_required__vllm032cpu_custom_code.log": (
        "contains custom code which must be executed"
    ),
    # Real Infinity 0.0.78 start-up deaths on this CPU, each provoked through its adapter.
    "model_not_found__infinity078_missing_folder.log": "HFValidationError: Repo id must be",
    "model_not_found__infinity078_hub_id_offline.log": "LocalEntryNotFoundError: An error",
    "invalid_model_files__infinity078_no_config_json.log": "/empty-folder/config.json'",
    "invalid_model_files__infinity078_missing_weights.log": "Error no file named pytorch_model",
    "invalid_model_files__infinity078_truncated_safetensors.log": "Error while deserializing",
    "trust_remote_code_required__infinity078_custom_code.log": "contains custom code which must",
    "port_in_use__infinity078_uvicorn_bind.log": "[Errno 98] error while attempting to bind",
}

# Only these failures can pass on a retry of the same cell (tasks/ retries them).
TRANSIENT = {
    "port_in_use__sglang05_uvicorn_bind.log",
    "port_in_use__vllm033_uvicorn_bind.log",
    "port_in_use__infinity078_uvicorn_bind.log",
    "out_of_memory__vllm033_free_memory_below_utilization.log",
}

KNOWN_CODES = {
    "unsupported_architecture",
    "exceeds_context",
    "trust_remote_code_required",
    "insufficient_gpu_memory",
    "model_not_found",
    "invalid_model_files",
    "gated_model",
    "startup_timeout",
    "server_crashed",
    "out_of_memory",
    "context_overflow",
    "port_in_use",
    "engine_not_installed",
    "cancelled",
    "unknown",
}


def test_every_fixture_names_its_deciding_line() -> None:
    assert {path.name for path in FIXTURES} == set(EVIDENCE)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: path.stem)
def test_fixture_log(path: Path) -> None:
    result = diagnose_log(path)
    assert result.cause == path.name.split("__")[0]
    assert result.transient == (path.name in TRANSIENT)
    expected = EVIDENCE[path.name]
    if expected is None:
        assert result.evidence is None
        return
    assert result.evidence is not None
    assert expected in result.evidence
    # The evidence is one line of the log as written, at most cut short, never composed.
    head = result.evidence.removesuffix(" …")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    assert any(line.startswith(head) for line in lines)
    assert len(result.evidence) <= MAX_EVIDENCE_CHARS + 2


def test_rule_table_uses_only_documented_codes() -> None:
    assert {rule.cause for rule in RULES} <= KNOWN_CODES


def test_long_evidence_is_cut() -> None:
    result = diagnose_log(LOGS / "unsupported_architecture__vllm033_nv_embed_v2.log")
    assert result.evidence is not None
    assert result.evidence.endswith(" …")


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        # An OOM, then the engine core's generic failure: the first root cause wins.
        (
            "ValueError: No available memory for the cache blocks.\n"
            "RuntimeError: Engine core initialization failed. See root cause above.",
            "out_of_memory",
        ),
        # Two known causes on different lines: the earlier line wins, although out_of_memory
        # comes after port_in_use in the table (a bind retry after an OOM is a consequence).
        ("CUDA out of memory. Tried to allocate 2.00 GiB\naddress already in use", "out_of_memory"),
        ("address already in use\nCUDA out of memory. Tried to allocate 2.00 GiB", "port_in_use"),
        # Two causes on one line: the table order (most specific first) decides.
        (
            "OSError: You are trying to access a gated repo. Repository Not Found for url: x",
            "gated_model",
        ),
    ],
)
def test_first_root_cause_wins(text: str, cause: str) -> None:
    assert diagnose_text(text).cause == cause


OVERFLOW = (
    "(APIServer pid=1) ERROR 11-26 15:20:25 [serving_embedding.py:247] Traceback (most recent "
    "call last):\n"
    '(APIServer pid=1) ERROR 11-26 15:20:25 [serving_embedding.py:247]   File "renderer.py"\n'
    "(APIServer pid=1) ERROR 11-26 15:20:25 [serving_embedding.py:247] ValueError: This model's "
    "maximum context length is 512 tokens. However, your request has 930 input tokens.\n"
    '(APIServer pid=1) INFO:     127.0.0.1:5 - "POST /v1/embeddings HTTP/1.1" 400 Bad Request\n'
)


@pytest.mark.parametrize(
    ("later", "cause", "evidence"),
    [
        # A server that served 400s and then died failed for the later, server-level reason.
        ("CUDA out of memory. Tried to allocate 2.00 GiB", "out_of_memory", "CUDA out of memory"),
        (
            "Traceback (most recent call last):\n  File \"x.py\"\nKeyError: 'pooler'",
            "server_crashed",
            "KeyError: 'pooler'",
        ),
        # Nothing else went wrong: the rejected requests are the failure.
        ("INFO:     Shutting down", "context_overflow", "your request has 930 input tokens"),
    ],
)
def test_request_level_causes_rank_below_server_failures(
    later: str, cause: str, evidence: str
) -> None:
    result = diagnose_text(OVERFLOW + later)
    assert result.cause == cause
    assert result.evidence is not None
    assert evidence in result.evidence


def test_traceback_source_lines_do_not_decide() -> None:
    # The quoted source names a known cause; the exception actually raised is another one.
    text = (
        "Traceback (most recent call last):\n"
        '  File "kv_cache_utils.py", line 551, in check\n'
        '    raise ValueError("No available memory for the cache blocks.")\n'
        "triton.runtime.errors.OutOfResources: out of resource: shared memory\n"
    )
    assert diagnose_text(text) == Diagnosis(
        "server_crashed",
        "triton.runtime.errors.OutOfResources: out of resource: shared memory",
        False,
    )


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        # The not-found hint mentions gated repos; it must not read as a gated model.
        (
            "If you are trying to access a private or gated repo, make sure you are authenticated.",
            "unknown",
        ),
        # Argument dumps mention trust_remote_code and memory flags on every start.
        ("INFO non-default args: {'trust_remote_code': True}", "unknown"),
        ("# embedsweep: vllm serve m --trust-remote-code --mem-fraction-static 0.5", "unknown"),
        ("bash: line 1: sglang: command not found", "engine_not_installed"),
        (
            "FileNotFoundError: [Errno 2] No such file or directory: '/venv/bin/vllm'",
            "engine_not_installed",
        ),
        ("ModuleNotFoundError: No module named 'vllm'", "engine_not_installed"),
        ("ERROR: [Errno 48] error while attempting to bind on address", "port_in_use"),
        (
            "ValueError: User-specified context_length (1024) is greater than the derived "
            "context_length (512).",
            "exceeds_context",
        ),
        (
            "ValueError: NVEmbedModel has no vLLM implementation and the Transformers "
            "implementation is not compatible with vLLM.",
            "unsupported_architecture",
        ),
        ("OSError: m does not appear to have a file named config.json.", "invalid_model_files"),
        ("\x1b[31mERROR\x1b[0m CUDA out of memory", "out_of_memory"),
    ],
)
def test_single_lines(text: str, cause: str) -> None:
    assert diagnose_text(text).cause == cause


def test_colour_codes_are_not_in_the_evidence() -> None:
    assert diagnose_text("\x1b[31mCUDA out of memory\x1b[0m") == Diagnosis(
        "out_of_memory", "CUDA out of memory", False
    )


def test_bad_utf8_is_read(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"\xff\xfe garbage \xc3\x28\nRuntimeError: CUDA out of memory \xe2\x82\n")
    result = diagnose_log(log)
    assert result.cause == "out_of_memory"
    assert result.evidence == "RuntimeError: CUDA out of memory \ufffd"


def test_only_the_tail_is_read(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    # A cause beyond the tail is not seen; the line the cut lands in is dropped, not half-read.
    head = b"address already in use\n" + b"x" * (LOG_TAIL_BYTES - 10)
    log.write_bytes(head + b" CUDA out of memory\nINFO ok\n")
    assert diagnose_log(log).cause == "unknown"
    log.write_bytes(head + b"\nCUDA out of memory\n")
    assert diagnose_log(log).cause == "out_of_memory"


def test_missing_log_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        diagnose_log(tmp_path / "absent.log")


def _vllm_error(message: str, code: int, kind: str) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _flat_error(message: str, code: int) -> str:
    # vLLM before the nested error object, and SGLang.
    return json.dumps(
        {
            "object": "error",
            "message": message,
            "type": "BadRequestError",
            "param": None,
            "code": code,
        }
    )


@pytest.mark.parametrize(
    ("status", "body", "cause", "evidence"),
    [
        (
            400,
            _vllm_error(
                "This model's maximum context length is 512 tokens. However, your prompt contains "
                "at least 930 input tokens. Please reduce the length of the input prompt.",
                400,
                "BadRequestError",
            ),
            "context_overflow",
            "This model's maximum context length is 512 tokens.",
        ),
        (
            400,
            _flat_error(
                "This model's maximum context length is 512 tokens. However, you requested 930 "
                "tokens in the input for embedding generation. Please reduce the length of the "
                "input.",
                400,
            ),
            "context_overflow",
            "you requested 930 tokens",
        ),
        (
            400,
            _flat_error(
                "The input (930 tokens) is longer than the model's context length (512 tokens).",
                400,
            ),
            "context_overflow",
            "The input (930 tokens)",
        ),
        (
            404,
            _vllm_error("The model `e5` does not exist.", 404, "NotFoundError"),
            "model_not_found",
            "The model `e5` does not exist.",
        ),
        (404, json.dumps({"detail": "Not Found"}), "unknown", "Not Found"),
        (401, json.dumps({"error": "Unauthorized"}), "unknown", "Unauthorized"),
        (503, "", "server_crashed", None),
        (502, "<html>Bad Gateway</html>", "server_crashed", "<html>Bad Gateway</html>"),
        (
            500,
            _vllm_error(
                "CUDA out of memory. Tried to allocate 8.00 GiB", 500, "InternalServerError"
            ),
            "out_of_memory",
            "CUDA out of memory",
        ),
        (
            500,
            # The engine behind the API server is gone (seen on vLLM 0.32 with its worker killed).
            _vllm_error("EngineDeadError", 500, "InternalServerError"),
            "server_crashed",
            "EngineDeadError",
        ),
        (400, _flat_error("bad encoding_format", 400), "unknown", "bad encoding_format"),
        (400, "[1, 2]", "unknown", "[1, 2]"),
    ],
)
def test_error_body(status: int, body: str, cause: str, evidence: str | None) -> None:
    result = diagnose_error_body(status, body)
    assert result.cause == cause
    assert result.transient is False
    if evidence is None:
        assert result.evidence is None
    else:
        assert result.evidence is not None
        assert evidence in result.evidence


def test_transformers_fallback_that_served_then_crashed_is_no_architecture_problem() -> None:
    """The fallback warning decides only for a server that never came up."""
    text = (
        "WARNING [utils.py:312] FooModel has no vLLM implementation, falling back to "
        "Transformers implementation. Some features may not be supported\n"
        "INFO [entry.py:140] Starting vLLM server on http://127.0.0.1:8000\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "RuntimeError: worker died\n"
    )
    found = diagnose_text(text)
    assert found.cause == "server_crashed"
    assert found.evidence == "RuntimeError: worker died"
    serving = "INFO [entry.py:140] Starting vLLM server on http://127.0.0.1:8000\n"
    assert diagnose_text(text.replace(serving, "")).cause == "unsupported_architecture"


def test_cpu_backend_memory_reservation_is_out_of_memory() -> None:
    line = (
        "ValueError: Available memory on node 0 (8.68/10.59 GiB) on startup is less than desired "
        "CPU memory utilization (0.92, 9.74 GiB)"
    )
    found = diagnose_text(line)
    assert (found.cause, found.transient) == ("out_of_memory", True)


def test_an_api_server_answering_for_a_dead_engine_is_a_crash() -> None:
    body = (
        '{"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the '
        'root cause.", "type": "InternalServerError", "code": 500}}'
    )
    assert diagnose_error_body(500, body).cause == "server_crashed"
    assert diagnose_error_body(500, '{"error": {"message": "boom"}}').cause == "unknown"


def test_only_a_body_naming_a_dead_engine_says_the_engine_is_dead() -> None:
    from embedsweep.diagnose import says_engine_dead

    assert says_engine_dead(_vllm_error("EngineDeadError", 500, "InternalServerError"))
    # An overloaded server's 503 is classified server_crashed by status, but is no death.
    assert diagnose_error_body(503, "Service Unavailable").cause == "server_crashed"
    assert not says_engine_dead("Service Unavailable")
