"""The load client against a null server: a small asyncio HTTP/1.1 server in a thread that answers
``/v1/embeddings`` with a fixed body and reports what it saw (requests, bodies, connections).
Closed and open loop, in one process and split over several."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from embedsweep.errors import ConfigError
from embedsweep.loadgen import (
    LevelRecords,
    arrival_schedule,
    build_payloads,
    poisson_schedule,
    run_level,
    run_level_sync,
)
from embedsweep.records import REQUEST_COLUMNS

OK_BODY = (
    b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AAAAAAAAgD8="}],'
    b'"model":"m","usage":{"prompt_tokens": 7,"total_tokens":7}}'
)


@dataclass
class NullServerConfig:
    status: int = 200
    body: bytes = OK_BODY
    delay_s: float = 0.0
    # After this many responses on one connection: close it ("header": say so with
    # Connection: close; "abrupt": just drop it). 0 keeps connections open.
    close_after: int = 0
    close_mode: str = "header"
    chunked: bool = False


@dataclass
class NullServerStats:
    requests: int = 0
    connections_opened: int = 0
    open_connections: int = 0
    max_open_connections: int = 0
    bodies: list[bytes] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    paths: set[bytes] = field(default_factory=set)


class _NullProtocol(asyncio.Protocol):
    def __init__(self, server: NullServer) -> None:
        self._server = server
        self._buffer = b""
        self._served = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        stats = self._server.stats
        stats.connections_opened += 1
        stats.open_connections += 1
        stats.max_open_connections = max(stats.max_open_connections, stats.open_connections)
        self._server.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.stats.open_connections -= 1
        self._server.transports.discard(self._transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            body = self._buffer[head_end + 4 : end]
            self._buffer = self._buffer[end:]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        server = self._server
        stats = server.stats
        stats.requests += 1
        if len(stats.bodies) < 64:
            stats.bodies.append(body)
            stats.headers.append(head)
        stats.paths.add(head.split(b" ")[1])
        self._served += 1
        config = server.config
        closing = config.close_after > 0 and self._served % config.close_after == 0
        response = _response(config, close=closing and config.close_mode == "header")
        if config.delay_s:
            asyncio.get_running_loop().call_later(config.delay_s, self._send, response, closing)
        else:
            self._send(response, closing)

    def _send(self, response: bytes, closing: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        if closing:
            transport.close()


def _response(config: NullServerConfig, *, close: bool) -> bytes:
    reason = b"OK" if config.status < 300 else b"Error"
    lines = [b"HTTP/1.1 %d %s" % (config.status, reason), b"Content-Type: application/json"]
    if close:
        lines.append(b"Connection: close")
    if config.chunked:
        lines.append(b"Transfer-Encoding: chunked")
        # Split inside "prompt_tokens" so the client must join the chunks.
        cut = config.body.find(b"prompt_tok") + 6
        parts = [config.body[:cut], config.body[cut:]]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(config.body))
        payload = config.body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


class NullServer:
    """A null /v1/embeddings server on 127.0.0.1 in its own thread and event loop."""

    def __init__(self, config: NullServerConfig) -> None:
        self.config = config
        self.stats = NullServerStats()
        self.transports: set[asyncio.Transport] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self) -> NullServer:
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: _NullProtocol(self), "127.0.0.1", 0)
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for transport in list(self.transports):
                transport.abort()
            await self._server.wait_closed()
            await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@pytest.fixture
def null_server() -> Iterator[NullServer]:
    # Tests adjust server.config before sending: the server reads it per request.
    with NullServer(NullServerConfig()) as server:
        yield server


def _payloads(n: int = 8, batch: int = 1) -> list[bytes]:
    return build_payloads("m", [f"text {i}" for i in range(n * batch)], batch)


def test_records_count_equals_requests_and_tokens_are_read(null_server: NullServer) -> None:
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=4, requests=200)
    assert len(records) == 200
    assert records.status.tolist() == [200] * 200
    assert records.prompt_tokens.tolist() == [7] * 200
    assert records.expected_tokens.tolist() == [7] * 200
    assert records.error == [None] * 200
    assert null_server.stats.paths == {b"/v1/embeddings"}
    # Rows are in start order, relative to the level's clock start.
    assert (records.start_ns >= 0).all()
    assert (records.start_ns[1:] >= records.start_ns[:-1]).all()
    assert records.wall_ns >= int(records.latency_ns.max())


def test_the_standard_asyncio_loop_works_too(null_server: NullServer) -> None:
    # uvloop is optional (absent on Windows): the client must not depend on it.
    coro = run_level(null_server.url, _payloads(), 7, concurrency=3, requests=30)
    records = asyncio.run(coro)
    assert records.status.tolist() == [200] * 30
    assert records.prompt_tokens.tolist() == [7] * 30


def test_warmup_requests_are_sent_but_not_recorded(null_server: NullServer) -> None:
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=2, requests=10, warmup=6)
    assert len(records) == 10
    assert null_server.stats.requests == 16


@pytest.mark.parametrize("concurrency", [1, 3, 16])
def test_concurrency_is_respected(null_server: NullServer, concurrency: int) -> None:
    null_server.config.delay_s = 0.002
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=concurrency, requests=concurrency * 10
    )
    assert len(records) == concurrency * 10
    assert null_server.stats.connections_opened == concurrency
    assert null_server.stats.max_open_connections == concurrency


@pytest.mark.parametrize(
    "body",
    [
        # OpenAI / recent vLLM
        b'{"error":{"message":"This model\'s maximum context length is 512 tokens.",'
        b'"type":"BadRequestError","param":null,"code":400}}',
        # older vLLM / SGLang
        b'{"object":"error","message":"This model\'s maximum context length is 512 tokens.",'
        b'"type":"BadRequestError","param":null,"code":400}',
    ],
)
def test_http_400_becomes_an_error_record_with_the_servers_message(
    null_server: NullServer, body: bytes
) -> None:
    null_server.config.status = 400
    null_server.config.body = body
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=2, requests=6)
    assert records.status.tolist() == [400] * 6
    assert records.error == ["This model's maximum context length is 512 tokens."] * 6
    assert records.prompt_tokens.tolist() == [-1] * 6


def test_non_json_error_body_is_kept_as_text(null_server: NullServer) -> None:
    null_server.config.status = 503
    null_server.config.body = b"upstream unavailable"
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=1, requests=2)
    assert records.status.tolist() == [503, 503]
    assert records.error == ["upstream unavailable"] * 2


@pytest.mark.parametrize("close_mode", ["header", "abrupt"])
def test_server_closing_connections_is_survived(null_server: NullServer, close_mode: str) -> None:
    null_server.config.close_after = 5
    null_server.config.close_mode = close_mode
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=4, requests=100)
    assert len(records) == 100
    ok = int((records.status == 200).sum())
    if close_mode == "header":
        # Announced closes are clean: every request succeeds on a fresh connection.
        assert ok == 100
    else:
        # A request sent as the server drops the connection fails; the rest go through.
        assert ok >= 50
        failed = [e for e, s in zip(records.error, records.status.tolist(), strict=True) if not s]
        assert all(e is not None and e.startswith("connection:") for e in failed)
    # Every fifth answer ended its connection, and the client came back each time.
    assert null_server.stats.connections_opened >= ok // 5


def test_duration_mode_stops_on_time(null_server: NullServer) -> None:
    null_server.config.delay_s = 0.005
    started = time.perf_counter()
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=4, duration_s=0.5)
    elapsed = time.perf_counter() - started
    assert 0.5 <= records.wall_ns / 1e9 < 0.7
    assert elapsed < 1.5
    assert len(records) > 40
    assert int(records.start_ns.max()) < 500_000_000
    assert (records.status == 200).all()


def test_requests_and_duration_stop_at_whichever_comes_first(null_server: NullServer) -> None:
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=2, requests=20, duration_s=30
    )
    assert len(records) == 20


def test_batch_payloads_carry_batch_size_distinct_inputs(null_server: NullServer) -> None:
    texts = [f"word{i} other" for i in range(12)]
    payloads = build_payloads("m", texts, 4)
    assert len(payloads) == 3
    run_level_sync(null_server.url, payloads, 4 * 5, concurrency=1, requests=3)
    sent = [json.loads(body) for body in null_server.stats.bodies]
    assert [doc["input"] for doc in sent] == [texts[0:4], texts[4:8], texts[8:12]]
    assert all(doc["model"] == "m" and doc["encoding_format"] == "base64" for doc in sent)


def test_single_input_payload_is_a_string() -> None:
    (payload,) = build_payloads("m", ["hello"], 1)
    assert json.loads(payload) == {"model": "m", "input": "hello", "encoding_format": "base64"}


@pytest.mark.parametrize(("texts", "batch"), [(["a"], 2), (["a", "b"], 0)])
def test_payloads_that_cannot_be_built_are_config_errors(texts: list[str], batch: int) -> None:
    with pytest.raises(ConfigError):
        build_payloads("m", texts, batch)


def test_chunked_responses_are_joined(null_server: NullServer) -> None:
    null_server.config.chunked = True
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=2, requests=10)
    assert records.status.tolist() == [200] * 10
    assert records.prompt_tokens.tolist() == [7] * 10


def test_missing_usage_reads_as_minus_one(null_server: NullServer) -> None:
    null_server.config.body = b'{"object":"list","data":[]}'
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=1, requests=3)
    assert records.prompt_tokens.tolist() == [-1] * 3


def test_api_key_is_sent_as_a_bearer_token(null_server: NullServer) -> None:
    run_level_sync(null_server.url + "/v1", _payloads(), 7, concurrency=1, requests=1, api_key="k")
    assert b"\r\nAuthorization: Bearer k" in null_server.stats.headers[0]
    assert null_server.stats.paths == {b"/v1/embeddings"}


def test_slow_responses_become_timeout_records(null_server: NullServer) -> None:
    null_server.config.delay_s = 3.0
    started = time.perf_counter()
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=2, requests=2, timeout_s=0.2
    )
    assert time.perf_counter() - started < 1.5
    assert records.status.tolist() == [0, 0]
    assert all(e is not None and e.startswith("timeout:") for e in records.error)


def test_refused_connections_become_records_not_exceptions() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    records = run_level_sync(f"http://127.0.0.1:{port}", _payloads(), 7, concurrency=1, requests=3)
    assert records.status.tolist() == [0, 0, 0]
    assert all(e is not None and e.startswith("connection:") for e in records.error)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0, "requests": 1},
        {"concurrency": 1},
        {"concurrency": 1, "requests": 0},
        {"concurrency": 1, "duration_s": 0.0},
        {"concurrency": 1, "requests": 1, "warmup": -1},
        {"concurrency": 1, "requests": 1, "timeout_s": 0},
        {"concurrency": 1, "requests": 1, "rate": 0.0},
        {"concurrency": 1, "requests": 1, "rate": -5.0},
        {"concurrency": 1, "requests": 1, "rate": math.nan},
        {"concurrency": 1, "requests": 1, "rate": math.inf},
        {"concurrency": 2, "requests": 2, "processes": 0},
        # Every process needs a connection, and a closed loop's requests are split too.
        {"concurrency": 1, "requests": 4, "processes": 2},
        {"concurrency": 4, "requests": 1, "processes": 2},
        {"concurrency": 1, "duration_s": 1e6, "rate": 1e6},
    ],
)
def test_bad_level_arguments_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        run_level_sync("http://127.0.0.1:1", _payloads(), 7, **kwargs)


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:8000", "http://"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        run_level_sync(url, _payloads(), 7, concurrency=1, requests=1)


def test_to_arrow_has_the_request_columns_and_types() -> None:
    records = LevelRecords(
        concurrency=3,
        start_ns=np.array([5, 9], dtype=np.int64),
        latency_ns=np.array([100, 200], dtype=np.int64),
        status=np.array([200, 0], dtype=np.int16),
        prompt_tokens=np.array([7, -1], dtype=np.int32),
        expected_tokens=np.array([7, 7], dtype=np.int32),
        error=[None, "timeout: no response within 1s"],
        wall_ns=300,
    )
    table = records.to_arrow("run-1")
    assert tuple(table.column_names) == REQUEST_COLUMNS
    assert table.schema.types == [
        pa.string(),
        pa.int32(),
        pa.int64(),
        pa.int64(),
        pa.int64(),
        pa.int64(),
        pa.int16(),
        pa.int32(),
        pa.int32(),
        pa.string(),
    ]
    assert table.to_pylist()[1] == {
        "run_id": "run-1",
        "concurrency": 3,
        "seq": 1,
        "start_ns": 9,
        # A closed loop's records leave scheduled_ns out: each request was due when it started.
        "scheduled_ns": 9,
        "latency_ns": 200,
        "status": 0,
        "prompt_tokens": -1,
        "expected_tokens": 7,
        "error": "timeout: no response within 1s",
    }


# -- open loop and schedules ---------------------------------------------------------------------


def test_poisson_schedule_is_reproducible_sorted_and_at_the_rate() -> None:
    schedule = poisson_schedule(1000.0, seed=5, requests=20_000)
    assert schedule.dtype == np.int64
    assert len(schedule) == 20_000
    assert (np.diff(schedule) >= 0).all()
    assert schedule[0] > 0
    assert np.array_equal(schedule, poisson_schedule(1000.0, seed=5, requests=20_000))
    assert not np.array_equal(schedule, poisson_schedule(1000.0, seed=6, requests=20_000))
    gaps_ms = np.diff(schedule) / 1e6
    # Exponential gaps: mean 1 ms, and the standard deviation equals the mean.
    assert gaps_ms.mean() == pytest.approx(1.0, rel=0.03)
    assert gaps_ms.std() == pytest.approx(1.0, rel=0.05)


def _ks_statistic(sample: np.ndarray, cdf: Any) -> float:
    """Kolmogorov-Smirnov distance between SAMPLE's empirical distribution and CDF."""
    ordered = np.sort(sample)
    n = len(ordered)
    at = cdf(ordered)
    return float(max((np.arange(1, n + 1) / n - at).max(), (at - np.arange(n) / n).max()))


def test_poisson_gaps_pass_a_ks_test_at_the_rate_and_a_wrong_rate_fails_it() -> None:
    rate, n = 250.0, 5_000
    gaps_s = np.diff(arrival_schedule(rate, seed=11, requests=n)) / 1e9
    critical = 1.36 / math.sqrt(len(gaps_s))  # 5% level
    assert _ks_statistic(gaps_s, lambda x: 1 - np.exp(-rate * x)) < critical
    # The test can fail: the same gaps against a rate 10% off are rejected.
    assert _ks_statistic(gaps_s, lambda x: 1 - np.exp(-1.1 * rate * x)) > critical


def test_gamma_gaps_keep_the_mean_and_burstiness_sets_their_spread() -> None:
    from scipy import stats

    rate = 100.0
    for burstiness in (0.25, 1.0, 4.0):
        gaps_s = np.diff(arrival_schedule(rate, seed=3, kind="gamma", burstiness=burstiness,
                                          requests=20_000)) / 1e9  # fmt: skip
        assert gaps_s.mean() == pytest.approx(1 / rate, rel=0.05)
        # A gamma of shape k: the coefficient of variation is 1/sqrt(k).
        assert gaps_s.std() / gaps_s.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.06)
        cdf = stats.gamma(burstiness, scale=1 / (rate * burstiness)).cdf
        # Arrivals are whole nanoseconds: a gap is off by up to 1 ns, which moves the CDF of a
        # bursty (shape < 1) gamma near zero by cdf(2 ns), ~1.5% at shape 0.25.
        slack = float(cdf(2e-9))
        assert _ks_statistic(gaps_s, cdf) < 1.36 / math.sqrt(len(gaps_s)) + slack
    # Burstiness 1 is the Poisson process's distribution.
    gaps_s = np.diff(arrival_schedule(rate, seed=4, kind="gamma", requests=5_000)) / 1e9
    assert _ks_statistic(gaps_s, lambda x: 1 - np.exp(-rate * x)) < 1.36 / math.sqrt(4_999)


def test_constant_arrivals_are_evenly_spaced_to_the_nanosecond() -> None:
    schedule = arrival_schedule(40.0, seed=0, kind="constant", duration_s=2.0)
    assert len(schedule) == 79  # 25 ms, 50 ms, ... 1.975 s: every arrival before 2 s
    assert np.abs(schedule - 25_000_000 * np.arange(1, 80)).max() <= 1
    assert np.array_equal(schedule, arrival_schedule(40.0, seed=9, kind="constant", requests=79))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "uniform"}, "arrival kind must be one of poisson, gamma, constant"),
        ({"kind": "gamma", "burstiness": 0.0}, "burstiness must be a positive number"),
        ({"kind": "gamma", "burstiness": math.inf}, "burstiness must be a positive number"),
    ],
)
def test_bad_arrivals_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        arrival_schedule(10.0, seed=0, requests=5, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "low", "high"),
    [
        ({"requests": 50}, 50, 50),
        ({"duration_s": 10.0}, 9_500, 10_500),
        # Both: whichever set of arrivals is smaller.
        ({"requests": 50, "duration_s": 10.0}, 50, 50),
        ({"requests": 50_000, "duration_s": 1.0}, 900, 1_100),
    ],
)
def test_poisson_schedule_length(kwargs: dict[str, Any], low: int, high: int) -> None:
    schedule = poisson_schedule(1000.0, seed=1, **kwargs)
    assert low <= len(schedule) <= high
    if "duration_s" in kwargs:
        assert int(schedule.max()) < kwargs["duration_s"] * 1e9


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 0.0, "requests": 1}, {"rate": math.nan, "requests": 1}, {"rate": 10.0}],
)
def test_bad_schedules_are_config_errors(kwargs: dict[str, Any]) -> None:
    rate = kwargs.pop("rate")
    with pytest.raises(ConfigError):
        poisson_schedule(rate, seed=0, **kwargs)


def test_closed_loop_requests_are_due_when_they_start(null_server: NullServer) -> None:
    records = run_level_sync(null_server.url, _payloads(), 7, concurrency=4, requests=50)
    assert records.mode == "closed"
    assert records.offered_rps is None
    assert records.unsent == 0
    assert records.processes == 1
    assert np.array_equal(records.scheduled_ns, records.start_ns)


def test_open_loop_sends_each_request_at_its_drawn_time(null_server: NullServer) -> None:
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=8, requests=100, rate=1000.0, seed=5
    )
    schedule = poisson_schedule(1000.0, seed=5, requests=100)

    assert records.mode == "open"
    # A request-count level has no window of its own: it offered the target rate.
    assert records.offered_rps == 1000.0
    assert records.status.tolist() == [200] * 100
    assert np.array_equal(np.sort(records.scheduled_ns), schedule)
    lag = records.start_ns - records.scheduled_ns
    assert (lag >= 0).all()
    # Nothing waited for a connection here: the lag is timer granularity, a millisecond or so.
    assert float(np.median(lag)) < 2e6
    assert null_server.stats.requests == 100


def test_open_loop_does_not_wait_for_answers(null_server: NullServer) -> None:
    null_server.config.delay_s = 0.1
    started = time.perf_counter()
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=32, requests=20, rate=200.0, seed=2
    )
    elapsed = time.perf_counter() - started

    assert records.status.tolist() == [200] * 20
    # 20 arrivals about 5 ms apart, each answered after 100 ms: overlapping, not one by one
    # (a closed loop on one connection would need 2 s).
    assert elapsed < 1.0
    assert null_server.stats.max_open_connections > 5
    # No arrival waited for an answer (that would lag it by the 100 ms hold); opening a new
    # connection on a busy 2-core host can take ~10 ms, so the bound is half the hold.
    assert int((records.start_ns - records.scheduled_ns).max()) < 50_000_000


def test_open_loop_arrivals_wait_for_a_free_connection_as_lag(null_server: NullServer) -> None:
    null_server.config.delay_s = 0.02
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=1, requests=15, rate=500.0, seed=4
    )
    lag_ms = (records.start_ns - records.scheduled_ns) / 1e6

    assert null_server.stats.max_open_connections == 1
    assert records.status.tolist() == [200] * 15
    # Arrivals every ~2 ms into a single connection that takes 20 ms per request: each waits
    # for the one before, and the wait grows by about 18 ms per request.
    assert (np.diff(records.start_ns) >= 20_000_000).all()
    assert lag_ms[-1] > 150
    assert (np.diff(lag_ms[1:]) > 0).all()


def test_open_loop_duration_counts_arrivals_it_could_not_send(null_server: NullServer) -> None:
    null_server.config.delay_s = 0.02
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=2, duration_s=0.3, rate=500.0, seed=8
    )
    schedule = poisson_schedule(500.0, seed=8, duration_s=0.3)

    # Two connections at 20 ms serve ~100/s of the ~500/s offered; the rest never started.
    assert len(records) + records.unsent == len(schedule)
    assert records.unsent > len(schedule) // 2
    assert int(records.start_ns.max()) < 300_000_000
    assert records.offered_rps == pytest.approx(len(schedule) / 0.3)


def test_open_loop_on_the_standard_asyncio_loop(null_server: NullServer) -> None:
    coro = run_level(null_server.url, _payloads(), 7, concurrency=4, requests=40, rate=2000.0)
    records = asyncio.run(coro)
    assert records.status.tolist() == [200] * 40
    assert (records.start_ns >= records.scheduled_ns).all()


# -- several processes ---------------------------------------------------------------------------


def test_closed_loop_split_over_processes(null_server: NullServer) -> None:
    records = run_level_sync(
        null_server.url, _payloads(), 7, concurrency=4, requests=101, warmup=6, processes=2
    )

    assert records.processes == 2
    assert records.concurrency == 4
    assert len(records) == 101
    assert records.status.tolist() == [200] * 101
    assert null_server.stats.requests == 107
    assert null_server.stats.connections_opened == 4
    assert (np.diff(records.start_ns) >= 0).all()
    assert (records.start_ns >= 0).all()
    assert records.wall_ns >= int((records.start_ns + records.latency_ns).max())


def test_open_loop_split_over_processes_sends_the_whole_schedule(null_server: NullServer) -> None:
    records = run_level_sync(
        null_server.url,
        _payloads(),
        7,
        concurrency=4,
        requests=200,
        rate=2000.0,
        seed=9,
        processes=2,
    )
    lag = records.start_ns - records.scheduled_ns

    assert np.array_equal(
        np.sort(records.scheduled_ns), poisson_schedule(2000.0, seed=9, requests=200)
    )
    # Each process converts the agreed start into its own clock: were they misaligned, the lag
    # would be off by the difference (or negative). A spawned worker (a fresh interpreter that
    # imports the client) takes far longer than 20 ms to start, so 20 ms still tells a misaligned
    # clock from a busy host's late sends (2 ms flaked in CI: a median of 2.96 ms).
    assert (lag >= 0).all()
    assert float(np.median(lag)) < 20e6


_STOPPABLE = """
import signal, sys
from embedsweep.loadgen import build_payloads, run_level_sync

def on_term(signum, frame):
    print("handler", flush=True)
    sys.exit(3)

signal.signal(signal.SIGTERM, on_term)
print("start", flush=True)
run_level_sync(sys.argv[1], build_payloads("m", ["a", "b"], 1), 7, concurrency=2,
               duration_s=60, processes=2)
print("finished", flush=True)
"""


def test_sigterm_stops_every_process_and_reaches_the_previous_handler(
    null_server: NullServer,
) -> None:
    null_server.config.delay_s = 0.005
    with subprocess.Popen(
        [sys.executable, "-c", _STOPPABLE, null_server.url], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        deadline = time.monotonic() + 30
        while null_server.stats.requests < 50:
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 3
    assert out.strip() == "handler"
    # The worker processes are gone with their connections: the server hears nothing more.
    time.sleep(0.3)
    seen = null_server.stats.requests
    time.sleep(0.3)
    assert null_server.stats.requests == seen
    assert null_server.stats.open_connections == 0
