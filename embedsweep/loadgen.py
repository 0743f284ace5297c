"""Closed-loop load client for an OpenAI-compatible ``/v1/embeddings`` endpoint.

This module owns the request bytes (bodies and headers serialised before any clock starts), the
per-connection HTTP/1.1 client (an asyncio Protocol over ``httptools``), the level runner
(warm-up, then a fixed number of requests or a fixed duration at a fixed concurrency) and the
columnar per-request records it returns. It measures the server, not itself: the hot path writes
pre-built bytes, reads the status and ``usage.prompt_tokens`` with a byte search, and never parses
the embeddings; only error bodies are decoded. A failed request is a record (status 0 for no
response, with ``timeout: ...`` or ``connection: ...`` as its error), never an exception.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from embedsweep.errors import ConfigError
from embedsweep.records import REQUEST_COLUMNS

__all__ = [
    "EMBEDDINGS_PATH",
    "LevelRecords",
    "build_payloads",
    "run_level",
    "run_level_sync",
]

EMBEDDINGS_PATH = "/v1/embeddings"

# Longest error message kept per record: enough for an engine's explanation, not a whole page.
_MAX_ERROR_CHARS = 500
_PROMPT_TOKENS_KEY = b'"prompt_tokens"'
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_NO_DEADLINE = sys.maxsize

# How a worker's connection ended its turn.
_DONE = 0
_RECONNECT = 1


@dataclass
class LevelRecords:
    """One load level's requests, one row per request in start order (columnar)."""

    concurrency: int
    start_ns: npt.NDArray[np.int64]
    latency_ns: npt.NDArray[np.int64]
    status: npt.NDArray[np.int16]
    prompt_tokens: npt.NDArray[np.int32]
    expected_tokens: npt.NDArray[np.int32]
    error: list[str | None]
    wall_ns: int

    def __len__(self) -> int:
        return len(self.latency_ns)

    def to_arrow(self, run_id: str) -> pa.Table:
        """The rows as a table with exactly the columns of ``REQUEST_COLUMNS``."""
        n = len(self)
        columns = {
            "run_id": pa.array([run_id] * n, type=pa.string()),
            "concurrency": pa.array(np.full(n, self.concurrency, dtype=np.int32), type=pa.int32()),
            "seq": pa.array(np.arange(n, dtype=np.int64), type=pa.int64()),
            "start_ns": pa.array(self.start_ns, type=pa.int64()),
            "latency_ns": pa.array(self.latency_ns, type=pa.int64()),
            "status": pa.array(self.status, type=pa.int16()),
            "prompt_tokens": pa.array(self.prompt_tokens, type=pa.int32()),
            "expected_tokens": pa.array(self.expected_tokens, type=pa.int32()),
            "error": pa.array(self.error, type=pa.string()),
        }
        return pa.table([columns[name] for name in REQUEST_COLUMNS], names=list(REQUEST_COLUMNS))


def build_payloads(model: str, texts: Sequence[str], batch_size: int) -> list[bytes]:
    """JSON request bodies, ``batch_size`` distinct texts each (a plain string when 1).

    Texts that do not fill a last whole batch are left out, so every request carries the same
    number of inputs and the same expected token count.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if len(texts) < batch_size:
        raise ConfigError(f"{len(texts)} texts cannot fill one batch of {batch_size}")
    payloads: list[bytes] = []
    for first in range(0, len(texts) - batch_size + 1, batch_size):
        chunk = list(texts[first : first + batch_size])
        request: dict[str, Any] = {
            "model": model,
            "input": chunk[0] if batch_size == 1 else chunk,
            # base64 keeps the response small and skips float formatting on the server.
            "encoding_format": "base64",
        }
        payloads.append(json.dumps(request, separators=(",", ":")).encode())
    return payloads


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    ssl: ssl.SSLContext | None
    path: str
    host_header: str


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"load URL must be http(s)://host[:port][/prefix], got {url!r}")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:
        raise ConfigError(f"bad port in load URL {url!r}") from exc
    prefix = parts.path.rstrip("/")
    # OpenAI clients take base URLs ending in /v1; accept that spelling too.
    if prefix.endswith("/v1"):
        prefix = prefix[: -len("/v1")]
    default_port = port == (443 if secure else 80)
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if not default_port:
        host_header = f"{host_header}:{port}"
    return _Target(
        host=host,
        port=port,
        ssl=ssl.create_default_context() if secure else None,
        path=prefix + EMBEDDINGS_PATH,
        host_header=host_header,
    )


def _request_bytes(target: _Target, payloads: Sequence[bytes], api_key: str | None) -> list[bytes]:
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (
        f"POST {target.path} HTTP/1.1\r\n"
        f"Host: {target.host_header}\r\n"
        "User-Agent: embedsweep\r\n"
        "Accept: application/json\r\n"
        "Content-Type: application/json\r\n"
        f"{auth}"
    )
    return [
        f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body for body in payloads
    ]


def _error_message(status: int, body: bytes) -> str:
    """The server's own explanation from an error body: OpenAI ``error.message``, vLLM's flat
    ``message``, FastAPI's ``detail``; else the start of the body."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    message: str | None = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
        elif isinstance(doc.get("message"), str):
            message = doc["message"]
        elif "detail" in doc:
            detail = doc["detail"]
            message = detail if isinstance(detail, str) else json.dumps(detail)
    if message is None:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status} with an empty body"
    return message[:_MAX_ERROR_CHARS]


class _Phase:
    """One run of requests (warm-up or measured): its budget and the rows it produced."""

    __slots__ = (
        "deadline_ns",
        "errors",
        "latencies",
        "prompt_tokens",
        "remaining",
        "starts",
        "statuses",
    )

    def __init__(self, requests: int | None, deadline_ns: int) -> None:
        self.remaining = requests if requests is not None else sys.maxsize
        self.deadline_ns = deadline_ns
        self.starts: list[int] = []
        self.latencies: list[int] = []
        self.statuses: list[int] = []
        self.prompt_tokens: list[int] = []
        # Sparse: row index → message; almost every row has none.
        self.errors: dict[int, str] = {}

    def exhausted(self, now_ns: int) -> bool:
        return self.remaining <= 0 or now_ns >= self.deadline_ns

    def add_failure(self, start_ns: int, end_ns: int, message: str) -> None:
        self.errors[len(self.latencies)] = message
        self.starts.append(start_ns)
        self.latencies.append(end_ns - start_ns)
        self.statuses.append(0)
        self.prompt_tokens.append(-1)


class _Shared:
    """State all connections of a level share: the request bytes and where the cycle is."""

    __slots__ = ("live", "next_index", "requests", "timeout_s")

    def __init__(self, requests: list[bytes], timeout_s: float) -> None:
        self.requests = requests
        self.next_index = 0
        self.timeout_s = timeout_s
        # Every connection whose transport has not reported connection_lost yet, replaced ones
        # included, so the level can wait for all its sockets to close.
        self.live: set[_Connection] = set()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight.

    Requests are chained from the response callback itself (no coroutine switch per request):
    that is what lets one process drive tens of thousands of requests per second.
    """

    def __init__(self, shared: _Shared, loop: asyncio.AbstractEventLoop) -> None:
        self._shared = shared
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._phase: _Phase | None = None
        self._waiter: asyncio.Future[int] | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.in_flight = False
        self.started_ns = 0
        self._headers_done = False

    # -- driving -----------------------------------------------------------------------------

    async def drive(self, phase: _Phase) -> int:
        """Send requests back to back until the phase is exhausted (``_DONE``) or this
        connection can no longer be used (``_RECONNECT``)."""
        if self.closed:
            return _RECONNECT
        self._phase = phase
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._waiter = waiter
        self._send_next()
        return await waiter

    def _finish(self, outcome: int) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def _send_next(self) -> None:
        phase = self._phase
        transport = self._transport
        now = time.perf_counter_ns()
        if phase is None or transport is None or self.closed or phase.exhausted(now):
            self._finish(_DONE)
            return
        phase.remaining -= 1
        shared = self._shared
        index = shared.next_index
        shared.next_index = index + 1 if index + 1 < len(shared.requests) else 0
        self.in_flight = True
        self._headers_done = False
        self.started_ns = now
        transport.write(shared.requests[index])

    def fail_in_flight(self, message: str) -> None:
        """Record the request in flight as failed and drop the connection (it may be mid-way
        through a response, so it cannot carry another request)."""
        if self.in_flight and self._phase is not None:
            self.in_flight = False
            self._phase.add_failure(self.started_ns, time.perf_counter_ns(), message)
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        self._finish(_RECONNECT)

    def close(self) -> None:
        # Marked closed at once, not when connection_lost arrives, so nothing is written to a
        # transport that is already shutting down.
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._shared.live.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail_in_flight(f"connection: malformed HTTP response ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.in_flight:
            reason = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by the server"
            where = "mid-response" if self._headers_done else "before a response"
            self.fail_in_flight(f"connection: {reason} ({where})")
        self._finish(_RECONNECT)
        self._shared.live.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        end = time.perf_counter_ns()
        if not self.in_flight or self._phase is None:
            # A response nobody asked for (the request was already failed): ignore it.
            self._chunks = []
            return
        self.in_flight = False
        chunks = self._chunks
        self._chunks = []
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        parser = self._parser
        status: int = parser.get_status_code()
        tokens = -1
        # usage comes after the (long) data array: find the key from the end, then match there
        # rather than scanning all the base64 with the regex.
        at = body.rfind(_PROMPT_TOKENS_KEY)
        if at >= 0:
            found = _PROMPT_TOKENS.match(body, at)
            if found is not None:
                tokens = int(found.group(1))
        phase = self._phase
        if not 200 <= status < 300:
            phase.errors[len(phase.latencies)] = _error_message(status, body)
        phase.starts.append(self.started_ns)
        phase.latencies.append(end - self.started_ns)
        phase.statuses.append(status)
        phase.prompt_tokens.append(tokens)
        if parser.should_keep_alive():
            self._send_next()
        else:
            # "Connection: close" (or HTTP/1.0): this connection is spent.
            self.close()
            self._finish(_RECONNECT)


class _Worker:
    """One concurrency slot: keeps one connection open and reopens it after errors."""

    def __init__(self, target: _Target, shared: _Shared) -> None:
        self._target = target
        self._shared = shared
        self.connection: _Connection | None = None

    async def run(self, phase: _Phase) -> None:
        failures = 0
        while not phase.exhausted(time.perf_counter_ns()):
            connection = self.connection
            if connection is None or connection.closed:
                connection = await self._connect(phase)
                if connection is None:
                    failures += 1
                    # A refused connection fails in microseconds: back off so a dead server
                    # costs a few records per second, not a busy loop.
                    await asyncio.sleep(min(0.01 * 2**failures, 1.0))
                    continue
                failures = 0
                self.connection = connection
            if await connection.drive(phase) == _DONE:
                return

    async def _connect(self, phase: _Phase) -> _Connection | None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        target = self._target
        try:
            async with asyncio.timeout(self._shared.timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self._shared, loop),
                    target.host,
                    target.port,
                    ssl=target.ssl,
                )
        except TimeoutError:
            message = f"timeout: no connection within {self._shared.timeout_s:g}s"
        except OSError as exc:
            message = f"connection: {type(exc).__name__}: {exc}"
        else:
            return protocol
        # The request this connection was for counts as sent and failed.
        if not phase.exhausted(time.perf_counter_ns()):
            phase.remaining -= 1
            phase.add_failure(started, time.perf_counter_ns(), message)
        return None


async def _watch_timeouts(workers: Sequence[_Worker], timeout_s: float) -> None:
    """Fail requests that outlive ``timeout_s``; one sweep per tick costs far less than a timer
    per request."""
    timeout_ns = int(timeout_s * 1e9)
    tick = min(timeout_s / 4, 0.25)
    while True:
        await asyncio.sleep(tick)
        now = time.perf_counter_ns()
        for worker in workers:
            connection = worker.connection
            if (
                connection is not None
                and connection.in_flight
                and now - connection.started_ns > timeout_ns
            ):
                connection.fail_in_flight(f"timeout: no response within {timeout_s:g}s")


async def _run_phase(workers: Sequence[_Worker], phase: _Phase) -> None:
    await asyncio.gather(*(worker.run(phase) for worker in workers))


async def run_level(
    url: str,
    payloads: list[bytes],
    expected_tokens: int,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup: int = 0,
    timeout_s: float = 120.0,
    api_key: str | None = None,
) -> LevelRecords:
    """Drive ``url`` + ``/v1/embeddings`` with ``concurrency`` closed-loop connections.

    ``warmup`` requests run first and are not recorded; then the clock starts and the level runs
    ``requests`` requests, or for ``duration_s`` seconds (no request starts after it), or until
    whichever comes first when both are given. ``expected_tokens`` is what each request sends
    (tokens per input × inputs per request), stored with every row.
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    if not payloads:
        raise ConfigError("no payloads to send")
    if requests is None and duration_s is None:
        raise ConfigError("give a number of requests or a duration")
    if requests is not None and requests < 1:
        raise ConfigError(f"requests must be >= 1, got {requests}")
    if duration_s is not None and duration_s <= 0:
        raise ConfigError(f"duration must be > 0 s, got {duration_s}")
    if warmup < 0:
        raise ConfigError(f"warm-up must be >= 0 requests, got {warmup}")
    if timeout_s <= 0:
        raise ConfigError(f"timeout must be > 0 s, got {timeout_s}")
    target = _parse_url(url)
    shared = _Shared(_request_bytes(target, payloads, api_key), timeout_s)
    workers = [_Worker(target, shared) for _ in range(concurrency)]
    watchdog = asyncio.create_task(_watch_timeouts(workers, timeout_s))
    try:
        if warmup:
            await _run_phase(workers, _Phase(warmup, _NO_DEADLINE))
        clock_start = time.perf_counter_ns()
        deadline = clock_start + int(duration_s * 1e9) if duration_s is not None else _NO_DEADLINE
        phase = _Phase(requests, deadline)
        await _run_phase(workers, phase)
        wall_ns = time.perf_counter_ns() - clock_start
    finally:
        watchdog.cancel()
        await _close_all(shared, watchdog)
    return _records(phase, clock_start, wall_ns, concurrency, expected_tokens)


async def _close_all(shared: _Shared, watchdog: asyncio.Task[None]) -> None:
    connections = list(shared.live)
    for connection in connections:
        connection.close()
    # Wait for the transports to finish closing so no socket outlives the level.
    pending = [c.lost for c in connections if not c.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    await asyncio.gather(watchdog, return_exceptions=True)


def _records(
    phase: _Phase, clock_start: int, wall_ns: int, concurrency: int, expected_tokens: int
) -> LevelRecords:
    starts = np.asarray(phase.starts, dtype=np.int64) - clock_start
    # Rows were appended as responses completed; store them in the order requests started.
    order = np.argsort(starts, kind="stable")
    errors: list[str | None] = [None] * len(starts)
    for row, message in phase.errors.items():
        errors[row] = message
    n = len(starts)
    return LevelRecords(
        concurrency=concurrency,
        start_ns=starts[order],
        latency_ns=np.asarray(phase.latencies, dtype=np.int64)[order],
        status=np.asarray(phase.statuses, dtype=np.int16)[order],
        prompt_tokens=np.asarray(phase.prompt_tokens, dtype=np.int32)[order],
        expected_tokens=np.full(n, expected_tokens, dtype=np.int32),
        error=[errors[i] for i in order.tolist()],
        wall_ns=wall_ns,
    )


def run_level_sync(
    url: str,
    payloads: list[bytes],
    expected_tokens: int,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup: int = 0,
    timeout_s: float = 120.0,
    api_key: str | None = None,
) -> LevelRecords:
    """:func:`run_level` on a fresh event loop (uvloop when installed)."""
    coro = run_level(
        url,
        payloads,
        expected_tokens,
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        warmup=warmup,
        timeout_s=timeout_s,
        api_key=api_key,
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        if threading.current_thread() is not threading.main_thread():
            return runner.run(coro)
        return _run_stoppable(runner, coro)


def _run_stoppable(runner: asyncio.Runner, coro: Coroutine[Any, Any, LevelRecords]) -> LevelRecords:
    """Run ``coro`` so that SIGTERM stops the load promptly and then reaches whoever handled
    SIGTERM before (a Prefect flow's bridge, the CLI's handler).

    A Python-level signal handler that raises while the event loop is inside a callback is lost
    to the loop's exception handler, so the load would run to its end; instead the loop itself
    catches SIGTERM, cancels the level, and the signal is delivered again outside the loop.
    """
    loop = runner.get_loop()
    previous = signal.getsignal(signal.SIGTERM)
    received: list[int] = []

    async def main() -> LevelRecords:
        task = asyncio.current_task()
        assert task is not None

        def on_term() -> None:
            received.append(signal.SIGTERM)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        return await coro

    try:
        return runner.run(main())
    except asyncio.CancelledError:
        if not received:
            raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)
    if callable(previous):
        signal.raise_signal(signal.SIGTERM)
    # No Python handler to hand it to (SIG_DFL would end the process without cleanup).
    raise KeyboardInterrupt("SIGTERM")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
