"""A lean HTTP/1.1 server for the built-in server's few routes: an asyncio protocol over
``httptools`` (the parser uvicorn uses), keep-alive, requests of one connection answered in order.

Measured with no model work (``benchmarks/bench_hfserver.py --null-model``), uvicorn with Starlette
spent about 0.44 ms of CPU per request: on two cores that is CPU the model's threads lose, and on a
GPU it caps one process near 2,000-3,000 requests/s. Here a request is parsed, routed and answered
with a few allocations and no framework layers.

A handler is ``async (Request) -> Reply``. A malformed request is answered 400 and its connection
closed; a handler that raises is answered 500 in the same body shape; a body larger than
:data:`MAX_BODY_BYTES` is refused (413) before it is read whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

__all__ = ["MAX_BODY_BYTES", "Handler", "Reply", "Request", "serve", "start_server"]

MAX_BODY_BYTES = 64 << 20
# Requests one connection may have waiting (pipelined) before it stops reading.
_MAX_PENDING = 64
_log = logging.getLogger("embedsweep.hfserver")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Reply]]


def error_reply(status: int, message: str, kind: str) -> Reply:
    """vLLM's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return Reply(status, json.dumps(body).encode())


def _head(status: int, reply: Reply, keep_alive: bool) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    lines = [
        f"HTTP/1.1 {status} {phrase}".encode(),
        b"content-type: " + reply.content_type,
        b"content-length: " + str(len(reply.body)).encode(),
    ]
    lines += [name + b": " + value for name, value in reply.headers]
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._pending: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._closing = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not served")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._fail(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY_BYTES:
            self._fail(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        path = httptools.parse_url(self._url).path.decode("latin-1")
        method = self._parser.get_method().decode("latin-1")
        request = Request(method, path, self._headers, b"".join(self._body))
        self._pending.append((request, self._parser.should_keep_alive()))
        if len(self._pending) >= _MAX_PENDING and self._transport is not None:
            self._transport.pause_reading()
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._answer_pending())

    # -- answering
    def _fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed or taken, and close the connection."""
        if self._transport is None or self._closing:
            return
        self._closing = True
        reply = error_reply(status, message, HTTPStatus(status).phrase)
        self._transport.write(_head(status, reply, False) + reply.body)
        self._transport.close()

    async def _answer_pending(self) -> None:
        try:
            while self._pending and not self._closing:
                request, keep_alive = self._pending.popleft()
                try:
                    reply = await self._handler(request)
                except Exception as exc:  # a handler's failure is this request's 500
                    _log.exception("request %s %s failed", request.method, request.path)
                    reply = error_reply(500, str(exc) or type(exc).__name__, "InternalServerError")
                transport = self._transport
                if transport is None or self._closing:
                    return
                head = _head(reply.status, reply, keep_alive)
                transport.write(head if request.method == "HEAD" else head + reply.body)
                if not keep_alive:
                    self._closing = True
                    transport.close()
                    return
                if len(self._pending) < _MAX_PENDING // 2:
                    transport.resume_reading()
        finally:
            self._busy = False


async def start_server(handler: Handler, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Connection(handler), host, port, reuse_address=True, backlog=2048
    )


def serve(handler: Handler, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (uvloop where installed)."""
    import signal

    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def main() -> None:
        server = await start_server(handler, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        _log.info("listening on http://%s:%d", host, port)
        try:
            await stop.wait()
        finally:
            server.close()
            _log.info("shutting down")

    runner(main())
