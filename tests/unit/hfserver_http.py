"""The built-in server's real HTTP layer (``embedsweep.hfserver.http``) on a real port, its loop
in a thread, for unit tests of what is behind it. Import as ``from hfserver_http import ...`` from
tests under ``tests/unit``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from embedsweep.hfserver.http import Handler, start_server


@contextmanager
def serving(handler: Handler) -> Iterator[str]:
    """HANDLER served on 127.0.0.1 (a free port) until the block ends; yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        server = await start_server(handler, "127.0.0.1", 0)
        holder["port"] = server.sockets[0].getsockname()[1]
        holder["server"] = server
        ready.set()
        await server.serve_forever()

    thread = threading.Thread(target=lambda: _run(loop, main()), daemon=True)
    thread.start()
    assert ready.wait(10), "the server did not start"
    try:
        yield f"http://127.0.0.1:{holder['port']}"
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


def _run(loop: asyncio.AbstractEventLoop, main: Any) -> None:
    try:
        loop.run_until_complete(main)
    except (asyncio.CancelledError, RuntimeError):
        pass
    finally:
        loop.close()


@dataclass
class Answer:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass
class HttpClient:
    """POST and GET with urllib: the answer's status and body, whatever the status."""

    url: str

    def post(self, path: str, *, json: Any) -> Answer:
        body = _dumps(json)
        request = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"}
        )
        return _send(request)

    def get(self, path: str) -> Answer:
        return _send(urllib.request.Request(self.url + path))


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _send(request: urllib.request.Request) -> Answer:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read())


def raw_exchange(url: str, data: bytes, *, read_until_close: bool = False) -> bytes:
    """Send DATA as is on one connection; what came back (until the peer closes, or what one
    read gives)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)
