"""Level metrics on hand-computed cases (percentiles: numpy's linear interpolation), and the
goodput search against synthetic servers (pure latency models, no server)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embedsweep.errors import ConfigError
from embedsweep.loadgen import LevelRecords
from embedsweep.metrics import error_cause, meets_slo, slo_search, summarize
from embedsweep.records import LatencyMs, LevelSummary

MS = 1_000_000


def _records(
    status: list[int],
    latency_ms: list[float],
    prompt_tokens: list[int],
    expected: int,
    wall_s: float,
    error: list[str | None] | None = None,
    lag_ms: list[float] | None = None,
    offered_rps: float | None = None,
    unsent: int = 0,
) -> LevelRecords:
    n = len(status)
    start_ns = np.arange(n, dtype=np.int64) * 1_000 * MS
    scheduled_ns = (
        start_ns - np.array([round(v * MS) for v in lag_ms], dtype=np.int64)
        if lag_ms is not None
        else np.empty(0, dtype=np.int64)
    )
    return LevelRecords(
        concurrency=4,
        start_ns=start_ns,
        scheduled_ns=scheduled_ns,
        offered_rps=offered_rps,
        unsent=unsent,
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
            # A closed loop: no offered rate, and every request was due when it started.
            "mode": "closed",
            "offered_rps": None,
            "lag_mean_ms": 0.0,
            "lag_p99_ms": 0.0,
            "lag_max_ms": 0.0,
            "unsent": 0,
        },
    ),
    (
        "open loop: lag over every request sent, failed ones too; arrivals never sent",
        _records(
            [200, 200, 200, 0, 200],
            [10] * 5,
            [8] * 4 + [-1],
            8,
            1.0,
            [None, None, None, "timeout: no response within 1s", None],
            lag_ms=[0.0, 1.0, 2.0, 10.0, 7.0],
            offered_rps=6.0,
            unsent=1,
        ),
        {"batch_size": 1},
        {
            "mode": "open",
            "offered_rps": 6.0,
            "requests": 5,
            "ok": 4,
            "throughput_rps": 4.0,
            "lag_mean_ms": 4.0,
            # sorted 0, 1, 2, 7, 10: rank 0.99 × 4 = 3.96 → 7 + 0.96 × 3
            "lag_p99_ms": 9.88,
            "lag_max_ms": 10.0,
            "unsent": 1,
            "valid": False,  # the request without usage is unverified
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


# -- goodput: the highest rate that meets the SLO ------------------------------------------------


def _level(rate: float, *, throughput: float, p99_ms: float, **fields: Any) -> LevelSummary:
    values: dict[str, Any] = {
        "concurrency": 64,
        "requests": 1000,
        "ok": 1000,
        "errors": 0,
        "duration_s": 10.0,
        "throughput_rps": throughput,
        "inputs_per_s": throughput,
        "input_tokens_per_s": throughput * 512,
        "latency_ms": LatencyMs(
            mean=p99_ms / 4,
            p50=p99_ms / 5,
            p90=p99_ms / 2,
            p95=p99_ms / 1.5,
            p99=p99_ms,
            max=p99_ms,
        ),
        "prompt_tokens_mismatch": 0,
        "achieved_concurrency": 8.0,
        "valid": True,
        "mode": "open",
        "offered_rps": rate,
    }
    values.update(fields)
    return LevelSummary.model_validate(values)


def mm1(capacity_rps: float) -> Callable[[float], LevelSummary]:
    """An M/M/1 server: response time is exponential with rate (capacity - arrival rate), so
    p99 = ln(100) / (capacity - rate); at or past capacity it falls behind for good."""

    def run(rate: float) -> LevelSummary:
        if rate >= capacity_rps:
            return _level(rate, throughput=capacity_rps, p99_ms=60_000.0)
        return _level(rate, throughput=rate, p99_ms=math.log(100) / (capacity_rps - rate) * 1e3)

    return run


def shedding(capacity_rps: float) -> Callable[[float], LevelSummary]:
    """A server that answers what it can fast and drops (never answers) the rest."""

    def run(rate: float) -> LevelSummary:
        return _level(rate, throughput=min(rate, capacity_rps), p99_ms=5.0)

    return run


def test_slo_search_finds_the_knee_of_an_mm1_server() -> None:
    # p99 <= 46.05 ms  <=>  1000 - rate >= 100  <=>  rate <= 900 /s.
    slo = math.log(100) / 100 * 1e3
    best, summaries = slo_search(mm1(1000.0), slo, 10.0, 100_000.0, rel_tol=0.02)

    assert best is not None
    assert 900 / 1.02 <= best <= 900 + 1e-9
    rates = [s.offered_rps for s in summaries]
    # Doubling from 10 until the first failure (1280), then bisection between 640 and 1280.
    assert rates[:8] == [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0]
    assert all(640 <= r <= 1280 for r in rates[8:] if r is not None)
    assert len(summaries) <= 16


def test_slo_search_stops_where_the_server_stops_keeping_up() -> None:
    # Latency looks fine at any rate, but above 700/0.95 = 736.8 /s it answers < 95 % of arrivals.
    best, _ = slo_search(shedding(700.0), 50.0, 100.0, 10_000.0)

    assert best is not None
    assert 736.8 / 1.05 <= best <= 736.9


@pytest.mark.parametrize(
    ("run", "expected_best", "expected_rates"),
    [
        # The top of the range passes: the answer is the range's top, after doubling to it.
        (mm1(1e9), 100.0, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]),
        # Even the bottom of the range fails: no rate meets the SLO, one level run.
        (mm1(0.5), None, [1.0]),
        # Token counts that do not match make every level invalid, however fast.
        (
            lambda r: _level(r, throughput=r, p99_ms=1.0, prompt_tokens_mismatch=3, valid=False),
            None,
            [1.0],
        ),
    ],
    ids=["top-passes", "bottom-fails", "invalid"],
)
def test_slo_search_edges(
    run: Callable[[float], LevelSummary], expected_best: float | None, expected_rates: list[float]
) -> None:
    best, summaries = slo_search(run, 50.0, 1.0, 100.0)
    assert best == expected_best
    assert [s.offered_rps for s in summaries] == expected_rates


def test_slo_search_runs_at_most_max_levels() -> None:
    best, summaries = slo_search(mm1(1000.0), 46.0, 1.0, 1e6, max_levels=4)
    assert len(summaries) == 4
    assert best == 8.0


@pytest.mark.parametrize(
    ("fields", "kwargs", "expected"),
    [
        ({}, {}, True),
        ({"latency_ms": LatencyMs(mean=1, p50=1, p90=1, p95=1, p99=50.1, max=60)}, {}, False),
        ({"throughput_rps": 94.0}, {}, False),
        ({"throughput_rps": 94.0}, {"keep_up": 0.9}, True),
        ({"errors": 10, "ok": 990}, {}, False),
        ({"errors": 10, "ok": 990}, {"max_error_rate": 0.01}, True),
        ({"valid": False}, {}, False),
        ({"requests": 0, "ok": 0}, {}, False),
        # A closed-loop summary has no offered rate of its own: the caller's is used.
        ({"offered_rps": None, "mode": "closed"}, {"offered_rps": 200.0}, False),
    ],
)
def test_meets_slo(fields: dict[str, Any], kwargs: dict[str, Any], expected: bool) -> None:
    summary = _level(100.0, throughput=fields.pop("throughput_rps", 100.0), p99_ms=20.0, **fields)
    options: dict[str, Any] = {"offered_rps": 100.0, **kwargs}
    assert meets_slo(summary, 50.0, **options) is expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lo": 0.0, "hi": 10.0},
        {"lo": 20.0, "hi": 10.0},
        {"lo": 1.0, "hi": math.inf},
        {"slo_p99_ms": 0.0},
        {"growth": 1.0},
        {"rel_tol": 0.0},
        {"max_levels": 0},
    ],
)
def test_slo_search_bad_arguments_are_config_errors(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"slo_p99_ms": 50.0, "lo": 1.0, "hi": 10.0, **kwargs}
    with pytest.raises(ConfigError):
        slo_search(mm1(100.0), **args)
