"""Load client for an OpenAI-compatible ``/v1/embeddings`` endpoint.

This module owns the request bytes (bodies and headers serialised before any clock starts), the
per-connection HTTP/1.1 client (an asyncio Protocol over ``httptools``), the level runner and the
columnar per-request records it returns. A level runs in one of two modes:

- closed loop: ``concurrency`` connections, each sending its next request as soon as the last one
  is answered;
- open loop: requests arrive as a Poisson process at ``rate`` per second, the schedule drawn from
  ``numpy.random.default_rng(seed)`` before the clock starts; each is sent at its time whether or
  not earlier ones have been answered, over at most ``concurrency`` connections. An arrival that
  finds no free connection waits for one, and that wait is recorded as client lag.

Either mode runs warm-up requests first (closed loop, not recorded), then a fixed number of
requests or a fixed duration, in one process or split over several (``processes``) when one core
cannot keep up. It measures the server, not itself: the hot path writes pre-built bytes, reads the
status and ``usage.prompt_tokens`` with a byte search, and never parses the embeddings; only error
bodies are decoded. A failed request is a record (status 0 for no response, with ``timeout: ...``
or ``connection: ...`` as its error), never an exception.
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, cast
from urllib.parse import urlsplit

import httptools
import numpy as np
import numpy.typing as npt

from embedsweep.errors import ConfigError, EmbedsweepError
from embedsweep.records import REQUEST_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "EMBEDDINGS_PATH",
    "LevelRecords",
    "build_payloads",
    "poisson_schedule",
    "run_level",
    "run_level_sync",
]

EMBEDDINGS_PATH = "/v1/embeddings"

# Longest error message kept per record: enough for an engine's explanation, not a whole page.
_MAX_ERROR_CHARS = 500
_PROMPT_TOKENS_KEY = b'"prompt_tokens"'
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_NO_DEADLINE = sys.maxsize
# A schedule is held in memory as one int64 per arrival: refuse one that would not fit sensibly.
_MAX_SCHEDULED = 100_000_000
# How far ahead of "now" the parent sets the shared start of a multi-process level: long enough
# for every worker to receive the start message and be waiting when it comes.
_START_MARGIN_NS = 100_000_000

# How a worker's connection ended its turn.
_DONE = 0
_RECONNECT = 1

# What _Phase.take answers instead of a due time (due times are perf_counter_ns values, >= 0).
_NOT_YET = -1
_EXHAUSTED = -2


def _no_schedule() -> npt.NDArray[np.int64]:
    return np.empty(0, dtype=np.int64)


@dataclass
class LevelRecords:
    """One load level's requests, one row per request in start order (columnar).

    Times are ns after the level's clock start. ``scheduled_ns`` is when each request was due: its
    drawn arrival in an open loop, its actual start in a closed loop (left empty, it is filled
    from ``start_ns``), so ``start_ns - scheduled_ns`` is the client's lag. ``offered_rps`` is the
    open loop's offered rate (None in a closed loop) and ``unsent`` the arrivals that never
    started because the level's duration ran out first.
    """

    concurrency: int
    start_ns: npt.NDArray[np.int64]
    latency_ns: npt.NDArray[np.int64]
    status: npt.NDArray[np.int16]
    prompt_tokens: npt.NDArray[np.int32]
    expected_tokens: npt.NDArray[np.int32]
    error: list[str | None]
    wall_ns: int
    scheduled_ns: npt.NDArray[np.int64] = field(default_factory=_no_schedule)
    offered_rps: float | None = None
    unsent: int = 0
    processes: int = 1
    # Why the level stopped before its end (the server died, or nothing answered), or None.
    halted: str | None = None

    def __post_init__(self) -> None:
        if len(self.scheduled_ns) == 0 and len(self.start_ns) > 0:
            self.scheduled_ns = self.start_ns.copy()
        if len(self.scheduled_ns) != len(self.start_ns):
            raise ValueError(
                f"{len(self.scheduled_ns)} scheduled times for {len(self.start_ns)} requests"
            )

    def __len__(self) -> int:
        return len(self.latency_ns)

    @property
    def mode(self) -> Literal["closed", "open"]:
        return "closed" if self.offered_rps is None else "open"

    def to_arrow(self, run_id: str) -> pa.Table:
        """The rows as a table with exactly the columns of ``REQUEST_COLUMNS``."""
        # Imported here: worker processes of a multi-process level never build tables, and
        # pyarrow is most of their start-up time.
        import pyarrow as pa

        n = len(self)
        columns = {
            "run_id": pa.array([run_id] * n, type=pa.string()),
            "concurrency": pa.array(np.full(n, self.concurrency, dtype=np.int32), type=pa.int32()),
            "seq": pa.array(np.arange(n, dtype=np.int64), type=pa.int64()),
            "start_ns": pa.array(self.start_ns, type=pa.int64()),
            "scheduled_ns": pa.array(self.scheduled_ns, type=pa.int64()),
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


def poisson_schedule(
    rate: float,
    *,
    seed: int,
    requests: int | None = None,
    duration_s: float | None = None,
) -> npt.NDArray[np.int64]:
    """Arrival times (ns after the clock start, ascending) of a Poisson process at ``rate`` per
    second: ``requests`` arrivals, or every arrival before ``duration_s``, or whichever set is
    smaller when both are given. The same arguments always give the same schedule."""
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"rate must be a positive number of requests/s, got {rate}")
    if duration_s is not None:
        expected = rate * duration_s if requests is None else min(rate * duration_s, requests)
    elif requests is not None:
        expected = requests
    else:
        raise ConfigError("give a number of requests or a duration")
    if expected > _MAX_SCHEDULED:
        raise ConfigError(
            f"{expected:.0f} arrivals is too long a schedule (at most {_MAX_SCHEDULED:,}); "
            "lower the rate or the duration"
        )
    rng = np.random.default_rng(seed)
    mean_gap_s = 1.0 / rate
    if duration_s is None:
        assert requests is not None
        arrivals_s = np.cumsum(rng.exponential(mean_gap_s, size=requests))
    else:
        # Enough gaps that running short is a six-sigma event; the loop covers it anyway.
        count = int(expected + 6 * math.sqrt(expected) + 16)
        arrivals_s = np.cumsum(rng.exponential(mean_gap_s, size=count))
        while arrivals_s[-1] < duration_s and (requests is None or len(arrivals_s) < requests):
            more = np.cumsum(rng.exponential(mean_gap_s, size=count)) + arrivals_s[-1]
            arrivals_s = np.concatenate([arrivals_s, more])
        arrivals_s = arrivals_s[arrivals_s < duration_s]
        if requests is not None:
            arrivals_s = arrivals_s[:requests]
    return np.asarray(np.floor(arrivals_s * 1e9), dtype=np.int64)


def _offered_rps(
    schedule_ns: npt.NDArray[np.int64], rate: float, requests: int | None, duration_s: float | None
) -> float:
    # Over a fixed duration the rate actually offered is the arrivals drawn over that window (a
    # short level's Poisson count is a few percent off the target, and the achieved rate should
    # be compared with what was offered, not with what was asked for). A schedule cut by a
    # request count has no window of its own: its offered rate is the target.
    if duration_s is not None and (requests is None or len(schedule_ns) < requests):
        return len(schedule_ns) / duration_s
    return rate


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
    """One closed-loop run of requests (warm-up or measured): its budget and the rows it
    produced. A request may start whenever a connection is free."""

    __slots__ = (
        "deadline_ns",
        "errors",
        "halted",
        "latencies",
        "prompt_tokens",
        "remaining",
        "scheduled",
        "starts",
        "statuses",
    )

    def __init__(self, requests: int | None, deadline_ns: int) -> None:
        self.remaining = requests if requests is not None else sys.maxsize
        self.deadline_ns = deadline_ns
        self.halted = False
        self.starts: list[int] = []
        self.scheduled: list[int] = []
        self.latencies: list[int] = []
        self.statuses: list[int] = []
        self.prompt_tokens: list[int] = []
        # Sparse: row index → message; almost every row has none.
        self.errors: dict[int, str] = {}

    def exhausted(self, now_ns: int) -> bool:
        return self.remaining <= 0 or now_ns >= self.deadline_ns

    def take(self, now_ns: int) -> int:
        """Claim the next request: the time it was due (here: now), or ``_EXHAUSTED``."""
        if self.remaining <= 0 or now_ns >= self.deadline_ns:
            return _EXHAUSTED
        self.remaining -= 1
        return now_ns

    def park(self, connection: _Connection) -> None:
        raise AssertionError("a closed loop never has to wait for a due time")

    def fail_connect(self, started_ns: int, end_ns: int, message: str) -> None:
        """Record the request a failed connection attempt was for."""
        if not self.exhausted(end_ns):
            self.remaining -= 1
            self.add_failure(started_ns, started_ns, end_ns, message)

    def add_failure(self, scheduled_ns: int, start_ns: int, end_ns: int, message: str) -> None:
        self.errors[len(self.latencies)] = message
        self.scheduled.append(scheduled_ns)
        self.starts.append(start_ns)
        self.latencies.append(end_ns - start_ns)
        self.statuses.append(0)
        self.prompt_tokens.append(-1)

    def unsent(self) -> int:
        # Requests a halted level never sent (a duration level has no count to leave).
        return self.remaining if self.halted and self.remaining != sys.maxsize else 0

    def halt(self) -> None:
        """End the phase now: nothing more is sent (the server is gone)."""
        self.halted = True
        self.deadline_ns = 0
        self.stop()

    def stop(self) -> None:
        """Release what the phase holds on to (nothing in a closed loop)."""


class _OpenPhase(_Phase):
    """An open-loop run: requests are due at the times of a fixed schedule.

    A connection that finishes a response takes the next arrival if it is due; otherwise it parks
    here, and one timer (for the earliest pending arrival) hands due arrivals to parked
    connections. An arrival due while every connection is busy waits for the next one to free
    up; its actual start minus its due time is the lag the records show.
    """

    __slots__ = ("_idle", "_loop", "_next", "_schedule", "_timer")

    def __init__(
        self, schedule_ns: array.array[int], deadline_ns: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(None, deadline_ns)
        self._schedule = schedule_ns
        self._next = 0
        self._loop = loop
        self._idle: list[_Connection] = []
        self._timer: asyncio.TimerHandle | None = None

    def exhausted(self, now_ns: int) -> bool:
        return self._next >= len(self._schedule) or now_ns >= self.deadline_ns

    def take(self, now_ns: int) -> int:
        at = self._next
        if at >= len(self._schedule) or now_ns >= self.deadline_ns:
            self.stop()
            return _EXHAUSTED
        due = self._schedule[at]
        if due > now_ns:
            return _NOT_YET
        self._next = at + 1
        if at + 1 == len(self._schedule):
            # The last arrival is out: connections still parked have nothing left to wait for.
            self.stop()
        return due

    def park(self, connection: _Connection) -> None:
        self._idle.append(connection)
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        if self._next >= len(self._schedule):
            return
        delay_s = (self._schedule[self._next] - time.perf_counter_ns()) / 1e9
        # Event-loop timers have millisecond granularity (libuv's, and epoll's timeout), so a
        # dispatch can be up to about a millisecond late; that shows in the lag rather than
        # being hidden by a busy wait that would take CPU from the server on a shared host.
        self._timer = self._loop.call_later(max(delay_s, 0.0), self._tick)

    def _tick(self) -> None:
        self._timer = None
        idle = self._idle
        while idle:
            now = time.perf_counter_ns()
            if self.exhausted(now):
                self.stop()
                return
            if self._schedule[self._next] > now:
                # The timer fired early (granularity); wait again for the same arrival.
                self._arm()
                return
            connection = idle.pop()
            if not connection.closed:
                # Takes the due arrival; a connection found dead here was already handed back to
                # its worker by connection_lost, which reconnects and parks the new one.
                connection.send_next()

    def fail_connect(self, started_ns: int, end_ns: int, message: str) -> None:
        due = self.take(end_ns)
        if due >= 0:
            self.add_failure(due, max(due, started_ns), end_ns, message)

    def unsent(self) -> int:
        return len(self._schedule) - self._next

    def halt(self) -> None:
        self.halted = True
        self.deadline_ns = 0
        self.stop()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.finish(_DONE)


class _Shared:
    """State all connections of a level share: the request bytes and where the cycle is."""

    __slots__ = (
        "answered",
        "halted",
        "live",
        "next_index",
        "phase",
        "refused_since_ns",
        "requests",
        "timeout_s",
        "watch_pid",
        "workers",
    )

    def __init__(
        self,
        requests: list[bytes],
        timeout_s: float,
        first_index: int = 0,
        watch_pid: int | None = None,
    ) -> None:
        self.requests = requests
        self.next_index = first_index % len(requests)
        self.timeout_s = timeout_s
        # The server's process: its death ends the level at once (see _halt).
        self.watch_pid = watch_pid
        self.halted: str | None = None
        self.phase: _Phase | None = None
        self.workers: Sequence[_Worker] = ()
        # When connections began to fail with no response since (None: the last one answered).
        self.refused_since_ns: int | None = None
        self.answered = False
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
        self.scheduled_ns = 0
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
        self.send_next()
        return await waiter

    def finish(self, outcome: int) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def send_next(self) -> None:
        phase = self._phase
        transport = self._transport
        if phase is None or transport is None or self.closed:
            self.finish(_DONE)
            return
        now = time.perf_counter_ns()
        due = phase.take(now)
        if due < 0:
            if due == _NOT_YET:
                phase.park(self)
            else:
                self.finish(_DONE)
            return
        shared = self._shared
        index = shared.next_index
        shared.next_index = index + 1 if index + 1 < len(shared.requests) else 0
        self.in_flight = True
        self._headers_done = False
        self.started_ns = now
        self.scheduled_ns = due
        transport.write(shared.requests[index])

    def fail_in_flight(self, message: str) -> None:
        """Record the request in flight as failed and drop the connection (it may be mid-way
        through a response, so it cannot carry another request)."""
        if self.in_flight and self._phase is not None:
            self.in_flight = False
            self._phase.add_failure(
                self.scheduled_ns, self.started_ns, time.perf_counter_ns(), message
            )
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        self.finish(_RECONNECT)

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
        self.finish(_RECONNECT)
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
        self._shared.refused_since_ns = None
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
        phase.scheduled.append(self.scheduled_ns)
        phase.latencies.append(end - self.started_ns)
        phase.statuses.append(status)
        phase.prompt_tokens.append(tokens)
        if parser.should_keep_alive():
            self.send_next()
        else:
            # "Connection: close" (or HTTP/1.0): this connection is spent.
            self.close()
            self.finish(_RECONNECT)


class _Worker:
    """One connection slot: keeps one connection open and reopens it after errors."""

    def __init__(self, target: _Target, shared: _Shared) -> None:
        self._target = target
        self._shared = shared
        self.connection: _Connection | None = None

    @property
    def shared(self) -> _Shared:
        return self._shared

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
        end = time.perf_counter_ns()
        phase.fail_connect(started, end, message)
        _check_server(self._shared, end, message)
        return None


async def _watch_timeouts(workers: Sequence[_Worker], timeout_s: float) -> None:
    """Fail requests that outlive ``timeout_s``; one sweep per tick costs far less than a timer
    per request."""
    timeout_ns = int(timeout_s * 1e9)
    tick = min(timeout_s / 4, 0.25)
    while True:
        await asyncio.sleep(tick)
        now = time.perf_counter_ns()
        if workers:
            # Between requests, in flight, warming up: a dead server ends the level within a tick.
            _check_server(workers[0].shared, now, None)
        for worker in workers:
            connection = worker.connection
            if (
                connection is not None
                and connection.in_flight
                and now - connection.started_ns > timeout_ns
            ):
                connection.fail_in_flight(f"timeout: no response within {timeout_s:g}s")


# Connections refused (or dropped before an answer) this long with no response in between end
# the level: the server is gone even where its process cannot be watched (``embedsweep load``).
UNREACHABLE_S = 3.0


def _pid_dead(pid: int) -> bool:
    """Whether process PID has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return state in (b"Z", b"X")


def _check_server(shared: _Shared, now_ns: int, failure: str | None) -> None:
    """Halt the level when the server is gone: its watched process exited, or (after a failed
    connection) nothing has answered for UNREACHABLE_S."""
    if shared.halted is not None or shared.phase is None:
        return
    pid = shared.watch_pid
    if pid is not None and _pid_dead(pid):
        _halt(shared, f"the server process (pid {pid}) exited")
        return
    if failure is None:
        return
    if shared.refused_since_ns is None:
        shared.refused_since_ns = now_ns
    elif now_ns - shared.refused_since_ns > UNREACHABLE_S * 1e9:
        _halt(shared, f"no answer for {UNREACHABLE_S:g} s ({failure})")


def _halt(shared: _Shared, reason: str) -> None:
    """Stop the phase: no more requests; those in flight fail now (they cannot be answered)."""
    shared.halted = reason
    phase = shared.phase
    if phase is not None:
        phase.halt()
    for worker in shared.workers:
        connection = worker.connection
        if connection is not None and connection.in_flight:
            connection.fail_in_flight(f"connection: the level stopped: {reason}")


async def _run_phase(workers: Sequence[_Worker], phase: _Phase) -> None:
    shared = workers[0].shared
    shared.phase = phase
    if shared.halted is not None:
        phase.halt()
    try:
        await asyncio.gather(*(worker.run(phase) for worker in workers))
    finally:
        phase.stop()


@dataclass(frozen=True)
class _Share:
    """What one process drives: everything :func:`_drive` needs, picklable for a worker
    process. ``schedule_ns`` (open loop) holds arrival offsets from the clock start."""

    url: str
    payloads: list[bytes]
    api_key: str | None
    concurrency: int
    requests: int | None
    duration_s: float | None
    warmup: int
    timeout_s: float
    schedule_ns: npt.NDArray[np.int64] | None
    first_payload: int = 0
    watch_pid: int | None = None


@dataclass
class _Rows:
    """One process's rows, times relative to the level's clock start, in completion order."""

    starts: npt.NDArray[np.int64]
    scheduled: npt.NDArray[np.int64]
    latencies: npt.NDArray[np.int64]
    statuses: npt.NDArray[np.int16]
    prompt_tokens: npt.NDArray[np.int32]
    errors: dict[int, str]
    wall_ns: int
    unsent: int
    halted: str | None = None


async def _start_now() -> int:
    return time.perf_counter_ns()


async def _drive(share: _Share, start_gate: Callable[[], Awaitable[int]]) -> _Rows:
    """Warm up, wait for ``start_gate`` to give the clock start (a perf_counter_ns value), then
    run the measured phase from it."""
    target = _parse_url(share.url)
    shared = _Shared(
        _request_bytes(target, share.payloads, share.api_key),
        share.timeout_s,
        share.first_payload,
        share.watch_pid,
    )
    workers = [_Worker(target, shared) for _ in range(share.concurrency)]
    shared.workers = workers
    watchdog = asyncio.create_task(_watch_timeouts(workers, share.timeout_s))
    try:
        if share.warmup:
            await _run_phase(workers, _Phase(share.warmup, _NO_DEADLINE))
        clock_start = await start_gate()
        deadline = (
            clock_start + int(share.duration_s * 1e9)
            if share.duration_s is not None
            else _NO_DEADLINE
        )
        phase: _Phase
        if share.schedule_ns is None:
            phase = _Phase(share.requests, deadline)
        else:
            # array.array: indexing gives plain ints (several times cheaper in the hot path than
            # numpy scalars) at 8 bytes an arrival (a list of ints takes about 40).
            due = array.array("q", (share.schedule_ns + clock_start).astype(np.int64).tobytes())
            phase = _OpenPhase(due, deadline, asyncio.get_running_loop())
        await _run_phase(workers, phase)
        wall_ns = time.perf_counter_ns() - clock_start
    finally:
        watchdog.cancel()
        await _close_all(shared, watchdog)
    return _Rows(
        starts=np.asarray(phase.starts, dtype=np.int64) - clock_start,
        scheduled=np.asarray(phase.scheduled, dtype=np.int64) - clock_start,
        latencies=np.asarray(phase.latencies, dtype=np.int64),
        statuses=np.asarray(phase.statuses, dtype=np.int16),
        prompt_tokens=np.asarray(phase.prompt_tokens, dtype=np.int32),
        errors=phase.errors,
        wall_ns=wall_ns,
        unsent=phase.unsent(),
        halted=shared.halted,
    )


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
    parts: Sequence[_Rows],
    *,
    concurrency: int,
    expected_tokens: int,
    offered_rps: float | None,
) -> LevelRecords:
    """Merge the rows of one or more processes (same clock start) into start order."""
    starts = np.concatenate([p.starts for p in parts])
    scheduled = np.concatenate([p.scheduled for p in parts])
    n = len(starts)
    errors: list[str | None] = [None] * n
    offset = 0
    for part in parts:
        for row, message in part.errors.items():
            errors[offset + row] = message
        offset += len(part.starts)
    # Rows were appended as responses completed; store them in the order requests started (and
    # in due order among requests that started in the same nanosecond).
    order = np.lexsort((scheduled, starts))
    return LevelRecords(
        concurrency=concurrency,
        start_ns=starts[order],
        scheduled_ns=scheduled[order],
        latency_ns=np.concatenate([p.latencies for p in parts])[order],
        status=np.concatenate([p.statuses for p in parts])[order],
        prompt_tokens=np.concatenate([p.prompt_tokens for p in parts])[order],
        expected_tokens=np.full(n, expected_tokens, dtype=np.int32),
        error=[errors[i] for i in order.tolist()],
        wall_ns=max(p.wall_ns for p in parts),
        offered_rps=offered_rps,
        unsent=sum(p.unsent for p in parts),
        processes=len(parts),
        halted=next((p.halted for p in parts if p.halted), None),
    )


def _check_level(
    payloads: list[bytes],
    *,
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    timeout_s: float,
    rate: float | None,
    processes: int,
) -> None:
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
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"rate must be a positive number of requests/s, got {rate}")
    if processes < 1:
        raise ConfigError(f"processes must be >= 1, got {processes}")
    if concurrency < processes:
        raise ConfigError(
            f"concurrency {concurrency} cannot be split over {processes} processes "
            "(each needs a connection)"
        )
    if requests is not None and rate is None and requests < processes:
        raise ConfigError(f"{requests} requests cannot be split over {processes} processes")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _shares(
    url: str,
    payloads: list[bytes],
    *,
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    timeout_s: float,
    api_key: str | None,
    schedule_ns: npt.NDArray[np.int64] | None,
    processes: int,
    watch_pid: int | None = None,
) -> list[_Share]:
    """Split a level over ``processes``: connections, warm-up and requests as evenly as they go,
    an open loop's arrivals round-robin (so each process sees every N-th arrival and the union is
    exactly the drawn schedule). Each process starts its payload cycle at a different place, so
    they do not send the same text at the same moment."""
    connections = _split(concurrency, processes)
    warmups = _split(warmup, processes)
    counts: list[int | None] = (
        list(_split(requests, processes))
        if requests is not None and schedule_ns is None
        else [None] * processes
    )
    return [
        _Share(
            url=url,
            payloads=payloads,
            api_key=api_key,
            concurrency=connections[i],
            requests=counts[i],
            duration_s=duration_s,
            warmup=warmups[i],
            timeout_s=timeout_s,
            schedule_ns=None if schedule_ns is None else schedule_ns[i::processes],
            first_payload=i * len(payloads) // processes,
            watch_pid=watch_pid,
        )
        for i in range(processes)
    ]


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
    rate: float | None = None,
    seed: int = 0,
    watch_pid: int | None = None,
) -> LevelRecords:
    """Drive ``url`` + ``/v1/embeddings`` in this process's running event loop.

    Without ``rate``, a closed loop of ``concurrency`` connections; with ``rate``, an open loop of
    Poisson arrivals at ``rate`` per second (schedule from ``seed``) over at most ``concurrency``
    connections. ``warmup`` requests run first (closed loop) and are not recorded; then the clock
    starts and the level runs ``requests`` requests, or for ``duration_s`` seconds (no request
    starts after it), or until whichever comes first when both are given. ``expected_tokens`` is
    what each request sends (tokens per input × inputs per request), stored with every row.

    The level ends early, keeping what it measured (``halted`` says why), when the server is gone:
    the process ``watch_pid`` exited (checked at every failed connection and every quarter
    second), or connections failed for ``UNREACHABLE_S`` with no response in between.
    """
    _check_level(
        payloads,
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        warmup=warmup,
        timeout_s=timeout_s,
        rate=rate,
        processes=1,
    )
    _parse_url(url)
    schedule = (
        None
        if rate is None
        else poisson_schedule(rate, seed=seed, requests=requests, duration_s=duration_s)
    )
    (share,) = _shares(
        url,
        payloads,
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        warmup=warmup,
        timeout_s=timeout_s,
        api_key=api_key,
        schedule_ns=schedule,
        processes=1,
        watch_pid=watch_pid,
    )
    rows = await _drive(share, _start_now)
    return _records(
        [rows],
        concurrency=concurrency,
        expected_tokens=expected_tokens,
        offered_rps=_offered(schedule, rate, requests, duration_s),
    )


def _offered(
    schedule: npt.NDArray[np.int64] | None,
    rate: float | None,
    requests: int | None,
    duration_s: float | None,
) -> float | None:
    if schedule is None or rate is None:
        return None
    return _offered_rps(schedule, rate, requests, duration_s)


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
    rate: float | None = None,
    seed: int = 0,
    processes: int = 1,
    watch_pid: int | None = None,
) -> LevelRecords:
    """:func:`run_level` on a fresh event loop (uvloop when installed), or on ``processes``
    worker processes with one event loop each, for when one core cannot keep up.

    Split over processes, each gets an even share of the connections and warm-up requests, and
    of the requests (closed loop) or every N-th arrival of the one drawn schedule (open loop);
    all start their measured phase at one agreed instant and their records are merged on that
    clock, so the result reads exactly like a one-process level.

    In the main thread SIGTERM stops the level promptly (worker processes included) and is then
    handed to whoever handled it before.
    """
    _check_level(
        payloads,
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        warmup=warmup,
        timeout_s=timeout_s,
        rate=rate,
        processes=processes,
    )
    _parse_url(url)
    if processes > 1:
        schedule = (
            None
            if rate is None
            else poisson_schedule(rate, seed=seed, requests=requests, duration_s=duration_s)
        )
        shares = _shares(
            url,
            payloads,
            concurrency=concurrency,
            requests=requests,
            duration_s=duration_s,
            warmup=warmup,
            timeout_s=timeout_s,
            api_key=api_key,
            schedule_ns=schedule,
            processes=processes,
            watch_pid=watch_pid,
        )
        parts = _run_processes_stoppable(shares)
        return _records(
            parts,
            concurrency=concurrency,
            expected_tokens=expected_tokens,
            offered_rps=_offered(schedule, rate, requests, duration_s),
        )
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
        rate=rate,
        seed=seed,
        watch_pid=watch_pid,
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _redeliver_sigterm(previous)


def _redeliver_sigterm(previous: Any) -> NoReturn:
    if callable(previous):
        signal.raise_signal(signal.SIGTERM)
    # No Python handler to hand it to (SIG_DFL would end the process without cleanup).
    raise KeyboardInterrupt("SIGTERM")


# -- several processes -----------------------------------------------------------------------
#
# Clock: every record is relative to one start instant that all processes agree on. perf_counter
# is only promised to be consistent within a process; time.monotonic is the clock the OS keeps
# system-wide (CLOCK_MONOTONIC on Linux, where the two are in fact the same clock). So the parent
# names the start as a monotonic_ns instant a little in the future, and each worker converts it
# into its own perf_counter_ns frame (two back-to-back reads) and keeps timing with perf_counter.
# Wall-clock time (time.time) is not used: NTP may step it during a level.


class _Terminated(Exception):
    """SIGTERM arrived while the parent waited for its worker processes."""


def _run_processes_stoppable(shares: list[_Share]) -> list[_Rows]:
    if threading.current_thread() is not threading.main_thread():
        return _run_processes(shares)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        # The parent only waits on pipes here (no event loop), so raising from the handler is
        # safe and leaves through _run_processes' clean-up, which stops the workers.
        raise _Terminated

    signal.signal(signal.SIGTERM, on_term)
    try:
        return _run_processes(shares)
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    _redeliver_sigterm(previous)


def _run_processes(shares: list[_Share]) -> list[_Rows]:
    # spawn, not fork: the caller may have threads (Prefect, the engine supervisor), and forking
    # a threaded process can deadlock the child on a lock some other thread held.
    context = multiprocessing.get_context("spawn")
    pipes: list[multiprocessing.connection.Connection] = []
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        for index, share in enumerate(shares):
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=_process_main,
                args=(child_end, share),
                name=f"embedsweep-load-{index}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(proc)
        _collect(pipes, procs, "ready")
        origin = time.monotonic_ns() + _START_MARGIN_NS
        for pipe in pipes:
            pipe.send(("go", origin))
        return [cast(_Rows, payload) for payload in _collect(pipes, procs, "rows")]
    finally:
        for started in procs:
            if started.is_alive():
                started.terminate()
        for started in procs:
            started.join(timeout=5)
            if started.is_alive():
                started.kill()
                started.join()
        for pipe in pipes:
            pipe.close()


def _collect(
    pipes: list[multiprocessing.connection.Connection],
    procs: list[multiprocessing.process.BaseProcess],
    kind: str,
) -> list[object]:
    """One ``kind`` message from every worker, failing as soon as one reports an error or
    dies."""
    received: dict[int, object] = {}
    while len(received) < len(pipes):
        waiting = {pipes[i]: i for i in range(len(pipes)) if i not in received}
        sentinels = {procs[i].sentinel: i for i in waiting.values()}
        ready = multiprocessing.connection.wait([*waiting, *sentinels])
        for item in ready:
            if isinstance(item, int):
                index = sentinels[item]
                if index in received or pipes[index].poll():
                    continue  # it exited after sending; the pipe is read below
                raise EmbedsweepError(
                    f"load process {index} exited with code {procs[index].exitcode} "
                    f"before sending its {kind}",
                    code="load_client_failed",
                )
            index = waiting[cast(multiprocessing.connection.Connection, item)]
            message = pipes[index].recv()
            if message[0] == "error":
                _, name, text, code = message
                if code == ConfigError.code:
                    raise ConfigError(text)
                raise EmbedsweepError(
                    f"load process {index} failed: {name}: {text}", code="load_client_failed"
                )
            received[index] = message[1]
    return [received[i] for i in range(len(pipes))]


def _process_main(pipe: multiprocessing.connection.Connection, share: _Share) -> None:
    """A worker process: drive ``share`` on its own event loop and send back its rows."""
    # Ctrl-C reaches the whole process group: let the parent decide (it stops the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def start_gate() -> int:
        pipe.send(("ready", None))
        # In a thread so the loop keeps serving the warm connections' events meanwhile.
        _, origin_mono = await asyncio.to_thread(pipe.recv)
        origin = time.perf_counter_ns() + (origin_mono - time.monotonic_ns())
        # A loop timer may fire up to a millisecond early (libuv's clock is in whole, cached
        # milliseconds): sleep again until the start has really come, so no row is timed
        # before it. (Nothing could set an Event at that instant: it is a time, not an event.)
        while (wait_ns := origin - time.perf_counter_ns()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait_ns / 1e9)
        return cast(int, origin)

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            rows = runner.run(_drive(share, start_gate))
    except BaseException as exc:
        code = exc.code if isinstance(exc, EmbedsweepError) else "load_client_failed"
        pipe.send(("error", type(exc).__name__, str(exc), code))
        raise
    pipe.send(("rows", rows))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
