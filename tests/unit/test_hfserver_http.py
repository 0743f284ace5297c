"""The built-in server's HTTP layer on a real port: keep-alive, order of pipelined answers, the
errors of the HTTP level in vLLM's body, HEAD, and what it refuses before reading it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hfserver_http import raw_exchange, serving

from embedsweep.hfserver.http import MAX_BODY_BYTES, Reply, Request


async def _echo(request: Request) -> Reply:
    # Later requests of a connection answer sooner: only the server's ordering keeps them in turn.
    delay = float(json.loads(request.body or b"{}").get("delay", 0))
    await asyncio.sleep(delay)
    if request.path == "/boom":
        raise RuntimeError("handler failed")
    payload = {"method": request.method, "path": request.path, "body": request.body.decode()}
    return Reply(200, json.dumps(payload).encode())


@pytest.fixture
def url() -> Iterator[str]:
    with serving(_echo) as base:
        yield base


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def _bodies(raw: bytes) -> list[bytes]:
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.startswith(b"content-length")
        )
        out.append(rest[:length])
        raw = rest[length:]
    return out


def test_pipelined_requests_are_answered_in_the_order_sent(url: str) -> None:
    requests = b"".join(
        _post(f"/r{i}", json.dumps({"delay": 0.05 * (3 - i)}).encode()) for i in range(3)
    )
    raw = raw_exchange(
        url, requests + _post("/last", b"{}", b"Connection: close\r\n"), read_until_close=True
    )
    answers = [json.loads(b)["path"] for b in _bodies(raw)]
    assert answers == ["/r0", "/r1", "/r2", "/last"]
    assert raw.count(b"HTTP/1.1 200 OK") == 4
    # The last asked to close: the server closed after answering it (read_until_close returned).
    assert raw.rstrip().endswith(b'"}')


def test_a_handler_failure_is_a_500_and_the_connection_serves_on(url: str) -> None:
    raw = raw_exchange(
        url,
        _post("/boom", b"{}") + _post("/ok", b"{}", b"Connection: close\r\n"),
        read_until_close=True,
    )
    first, second = _bodies(raw)
    assert json.loads(first) == {
        "error": {
            "message": "handler failed",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    assert json.loads(second)["path"] == "/ok"


def test_a_malformed_request_is_a_400_and_the_connection_closes(url: str) -> None:
    raw = raw_exchange(url, b"NOT HTTP AT ALL\r\n\r\n", read_until_close=True)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"connection: close" in raw
    body = json.loads(_bodies(raw)[0])
    assert body["error"]["code"] == 400
    assert body["error"]["message"].startswith("malformed HTTP request")


def test_a_body_over_the_limit_is_refused_before_it_is_read(url: str) -> None:
    head = f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    raw = raw_exchange(url, head + b"{", read_until_close=True)
    assert raw.startswith(b"HTTP/1.1 413 Request Entity Too Large")
    assert json.loads(_bodies(raw)[0])["error"]["code"] == 413


def test_head_has_the_length_and_no_body(url: str) -> None:
    raw = raw_exchange(
        url, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read_until_close=True
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: " in head
    assert not head.endswith(b"content-length: 0")
    assert rest == b""


def test_http_10_without_keep_alive_is_closed_after_one_answer(url: str) -> None:
    raw = raw_exchange(url, b"GET /old HTTP/1.0\r\n\r\n", read_until_close=True)
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(_bodies(raw)[0])["path"] == "/old"
