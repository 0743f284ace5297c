"""Level metrics on hand-computed cases (percentiles: numpy's linear interpolation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embedsweep.loadgen import LevelRecords
from embedsweep.metrics import error_cause, summarize

MS = 1_000_000


def _records(
    status: list[int],
    latency_ms: list[float],
    prompt_tokens: list[int],
    expected: int,
    wall_s: float,
    error: list[str | None] | None = None,
) -> LevelRecords:
    n = len(status)
    return LevelRecords(
        concurrency=4,
        start_ns=np.arange(n, dtype=np.int64),
        latency_ns=np.array([round(v * MS) for v in latency_ms], dtype=np.int64),
        status=np.array(status, dtype=np.int16),
        prompt_tokens=np.array(prompt_tokens, dtype=np.int32),
        expected_tokens=np.full(n, expected, dtype=np.int32),
        error=error if error is not None else [None] * n,
        wall_ns=round(wall_s * 1e9),
    )


CASES: list[tuple[str, LevelRecords, dict[str, Any], dict[str, Any]]] = [
    (
        "all ok, batch 2, priced",
        _records([200] * 4, [10, 20, 30, 40], [8] * 4, 8, 1.0),
        {"batch_size": 2, "cost_per_gpu_hour": 3.6, "gpu_count": 2},
        {
            "requests": 4,
            "ok": 4,
            "errors": 0,
            "errors_by_cause": {},
            "duration_s": 1.0,
            "throughput_rps": 4.0,
            "inputs_per_s": 8.0,
            "input_tokens_per_s": 32.0,
            "latency_ms": {
                "mean": 25.0,
                "p50": 25.0,
                "p90": 37.0,
                "p95": 38.5,
                "p99": 39.7,
                "max": 40.0,
            },
            "prompt_tokens_mismatch": 0,
            "achieved_concurrency": 0.1,
            "valid": True,
            # 3.6 $/h × 2 GPUs = 0.002 $/s; / 32 tokens/s × 1e6
            "cost_per_million_tokens": 62.5,
        },
    ),
    (
        "every kind of error, one token mismatch",
        _records(
            [200, 400, 0, 0, 503, 200],
            [100] * 6,
            [5, -1, -1, -1, -1, 6],
            5,
            2.0,
            [None, "too long", "timeout: no response within 1s", "connection: reset", "busy", None],
        ),
        {"batch_size": 1},
        {
            "requests": 6,
            "ok": 2,
            "errors": 4,
            "errors_by_cause": {"connection": 1, "http_400": 1, "http_503": 1, "timeout": 1},
            "duration_s": 2.0,
            "throughput_rps": 1.0,
            "inputs_per_s": 1.0,
            "input_tokens_per_s": 5.5,
            "latency_ms": {
                "mean": 100.0,
                "p50": 100.0,
                "p90": 100.0,
                "p95": 100.0,
                "p99": 100.0,
                "max": 100.0,
            },
            "prompt_tokens_mismatch": 1,
            "achieved_concurrency": 0.3,
            "valid": False,
            "cost_per_million_tokens": None,
        },
    ),
    (
        "nothing ok: zeros, invalid, no cost even when priced",
        _records([503, 503], [5, 7], [-1, -1], 9, 0.5),
        {"batch_size": 8, "cost_per_gpu_hour": 2.0},
        {
            "requests": 2,
            "ok": 0,
            "errors": 2,
            "errors_by_cause": {"http_503": 2},
            "throughput_rps": 0.0,
            "inputs_per_s": 0.0,
            "input_tokens_per_s": 0.0,
            "latency_ms": dict.fromkeys(("mean", "p50", "p90", "p95", "p99", "max"), 0.0),
            "prompt_tokens_mismatch": 0,
            "achieved_concurrency": 0.024,
            "valid": False,
            "cost_per_million_tokens": None,
        },
    ),
    (
        "ok without usage: unverified, so a mismatch, and no tokens counted",
        _records([200, 200, 200], [1, 2, 3], [-1, 4, -1], 4, 1.0),
        {"batch_size": 1, "cost_per_gpu_hour": 1.0},
        {
            "ok": 3,
            "input_tokens_per_s": 4.0,
            "prompt_tokens_mismatch": 2,
            "latency_ms": {
                "mean": 2.0,
                "p50": 2.0,
                "p90": 2.8,
                "p95": 2.9,
                "p99": 2.98,
                "max": 3.0,
            },
            "valid": False,
            # 1 $/h = 1/3600 $/s; / 4 tokens/s × 1e6
            "cost_per_million_tokens": 1e6 / 3600 / 4,
        },
    ),
    (
        "an empty level",
        _records([], [], [], 4, 0.0),
        {"batch_size": 1},
        {
            "requests": 0,
            "ok": 0,
            "errors": 0,
            "duration_s": 0.0,
            "throughput_rps": 0.0,
            "achieved_concurrency": 0.0,
            "valid": False,
        },
    ),
]


@pytest.mark.parametrize(
    ("records", "kwargs", "expected"),
    [pytest.param(r, k, e, id=name) for name, r, k, e in CASES],
)
def test_summarize(records: LevelRecords, kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    summary = summarize(records, **kwargs).model_dump()
    assert summary["concurrency"] == 4
    for key, value in expected.items():
        if key == "latency_ms" or isinstance(value, float):
            assert summary[key] == pytest.approx(value), key
        else:
            assert summary[key] == value, key


@pytest.mark.parametrize(
    ("status", "error", "cause"),
    [
        (400, "This model's maximum context length is 512 tokens.", "http_400"),
        (503, None, "http_503"),
        (0, "timeout: no response within 120s", "timeout"),
        (0, "connection: ConnectionResetError: reset", "connection"),
        (0, "something else", "connection"),
        (0, None, "connection"),
    ],
)
def test_error_cause(status: int, error: str | None, cause: str) -> None:
    assert error_cause(status, error) == cause
