"""What goes over the wire, and the raw HTTP/1.1 client connection.

The request bytes (JSON bodies and HTTP/1.1 headers, serialised before any clock starts), the
parsed load URL, one keep-alive connection per slot (an asyncio Protocol over ``httptools`` that
chains the next request from the response callback, reads the status and
``usage.prompt_tokens`` with a byte search and decodes only error bodies), the slot that reopens
it after errors, the per-request timeout sweep, and the watch that ends a level when the server
is gone (its process exited, or nothing answered for ``UNREACHABLE_S``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import httptools

from embedsweep.errors import ConfigError

if TYPE_CHECKING:
    from embedsweep.loadgen.phases import Phase


EMBEDDINGS_PATH = "/v1/embeddings"

# Longest error message kept per record: enough for an engine's explanation, not a whole page.
_MAX_ERROR_CHARS = 500
_PROMPT_TOKENS_KEY = b'"prompt_tokens"'
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')

# How a worker's connection ended its turn.
DONE = 0
_RECONNECT = 1

# What Phase.take answers instead of a due time (due times are perf_counter_ns values, >= 0).
NOT_YET = -1
EXHAUSTED = -2


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


def parse_url(url: str) -> _Target:
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


def request_bytes(target: _Target, payloads: Sequence[bytes], api_key: str | None) -> list[bytes]:
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


class Shared:
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
        self.phase: Phase | None = None
        self.workers: Sequence[Worker] = ()
        # When connections began to fail with no response since (None: the last one answered).
        self.refused_since_ns: int | None = None
        self.answered = False
        # Every connection whose transport has not reported connection_lost yet, replaced ones
        # included, so the level can wait for all its sockets to close.
        self.live: set[Connection] = set()


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight.

    Requests are chained from the response callback itself (no coroutine switch per request):
    that is what lets one process drive tens of thousands of requests per second.
    """

    def __init__(self, shared: Shared, loop: asyncio.AbstractEventLoop) -> None:
        self._shared = shared
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._phase: Phase | None = None
        self._waiter: asyncio.Future[int] | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.in_flight = False
        self.started_ns = 0
        self.scheduled_ns = 0
        self._headers_done = False

    # -- driving -----------------------------------------------------------------------------

    async def drive(self, phase: Phase) -> int:
        """Send requests back to back until the phase is exhausted (``DONE``) or this
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
            self.finish(DONE)
            return
        now = time.perf_counter_ns()
        due = phase.take(now)
        if due < 0:
            if due == NOT_YET:
                phase.park(self)
            else:
                self.finish(DONE)
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


class Worker:
    """One connection slot: keeps one connection open and reopens it after errors."""

    def __init__(self, target: _Target, shared: Shared) -> None:
        self._target = target
        self._shared = shared
        self.connection: Connection | None = None

    @property
    def shared(self) -> Shared:
        return self._shared

    async def run(self, phase: Phase) -> None:
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
            if await connection.drive(phase) == DONE:
                return

    async def _connect(self, phase: Phase) -> Connection | None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        target = self._target
        try:
            async with asyncio.timeout(self._shared.timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: Connection(self._shared, loop),
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


async def watch_timeouts(workers: Sequence[Worker], timeout_s: float) -> None:
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


def _check_server(shared: Shared, now_ns: int, failure: str | None) -> None:
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


def _halt(shared: Shared, reason: str) -> None:
    """Stop the phase: no more requests; those in flight fail now (they cannot be answered)."""
    shared.halted = reason
    phase = shared.phase
    if phase is not None:
        phase.halt()
    for worker in shared.workers:
        connection = worker.connection
        if connection is not None and connection.in_flight:
            connection.fail_in_flight(f"connection: the level stopped: {reason}")
