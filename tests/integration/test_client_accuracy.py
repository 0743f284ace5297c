"""The load client's own error, measured against a server whose answer takes a known time.

The server is a separate process (so the client's event loop and the server's never share a
core's time slice in one interpreter): a plain asyncio HTTP/1.1 server that answers every
``/v1/embeddings`` request 20 ms after it arrived, without blocking, with a JSON body carrying
``usage``. Whatever the client reports beyond 20 ms is the server's timer slack plus the client's
own overhead; the server says how long it really held the answers (``GET /held``: on a loaded host
its timers fire late), and the client's error is what it reports beyond that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from embedsweep.loadgen import build_payloads, run_level_sync
from embedsweep.metrics import summarize

pytestmark = pytest.mark.integration

DELAY_MS = 20.0
TOKENS = 7

_SERVER = r"""
import asyncio, sys, time

DELAY_S = float(sys.argv[1])
TOKENS = int(sys.argv[2])
BODY = (
    b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AAAAAAAAgD8="}],'
    b'"model":"m","usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (TOKENS, TOKENS)
)
HELD = []  # seconds each answer was held, since the last GET /held
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    + BODY
)


class Delayed(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    def data_received(self, data):
        arrived = time.perf_counter()
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            head, self.buffer = self.buffer[:head_end], self.buffer[end:]
            if head.startswith(b"GET /held "):
                self.report()
            else:
                self.loop.call_later(DELAY_S, self.answer, arrived)

    def report(self):
        # How long the answers since the last report were really held (timer slack included).
        body = b'{"mean_ms":%f,"n":%d}' % (1000 * sum(HELD) / max(len(HELD), 1), len(HELD))
        HELD.clear()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body
        )

    def answer(self, arrived):
        # Loop timers have millisecond granularity and libuv's may fire a little early: never
        # answer before the full delay has passed.
        left = DELAY_S - (time.perf_counter() - arrived)
        if left > 0:
            self.loop.call_later(left, self.answer, arrived)
        elif not self.transport.is_closing():
            self.transport.write(RESPONSE)
            HELD.append(time.perf_counter() - arrived)


async def main():
    server = await asyncio.get_running_loop().create_server(Delayed, "127.0.0.1", 0, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Runs until the test closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


try:
    # uvloop writes a burst of 64 answers several times faster than the standard loop, so less
    # of the server's own queueing shows up in what the client measures.
    import uvloop
except ImportError:
    asyncio.run(main())
else:
    uvloop.run(main())
"""


@pytest.fixture(scope="module")
def delayed_server() -> Iterator[str]:
    with subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(DELAY_MS / 1000), str(TOKENS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.communicate(input="", timeout=10)


def _held_ms(url: str, *, reset: bool = False) -> float:
    """The mean time the server held its answers since it was last asked (warm-up included)."""
    with urllib.request.urlopen(f"{url}/held", timeout=10) as answer:
        held = json.load(answer)
    if reset:
        return 0.0
    assert held["n"] > 0
    mean: float = held["mean_ms"]
    assert mean >= DELAY_MS  # never answered early
    return mean


def _payloads() -> list[bytes]:
    return build_payloads("m", [f"text {i}" for i in range(64)], 1)


@pytest.mark.parametrize("processes", [1, 2])
def test_closed_loop_mean_latency_is_the_servers_20_ms(delayed_server: str, processes: int) -> None:
    _held_ms(delayed_server, reset=True)  # forget what earlier tests left
    records = run_level_sync(
        delayed_server,
        _payloads(),
        TOKENS,
        concurrency=64,
        duration_s=1.5,
        warmup=128,
        processes=processes,
    )
    summary = summarize(records, batch_size=1)
    held = _held_ms(delayed_server)

    assert summary.valid
    assert summary.errors == 0
    assert summary.latency_ms.mean == pytest.approx(held, abs=2.0)
    assert summary.latency_ms.p50 >= DELAY_MS
    # Closed loop: every request was due when it started.
    assert summary.lag_max_ms == 0.0
    assert records.processes == processes
    # 64 connections each busy back to back: about 64 × 1000/20 requests per second, and about
    # 64 in flight (Little's law over the merged records: it only adds up when every process's
    # times share one clock start).
    assert summary.throughput_rps == pytest.approx(64 * 1000 / held, rel=0.15)
    assert summary.achieved_concurrency == pytest.approx(64, rel=0.1)
    assert (np.diff(records.start_ns) >= 0).all()
    assert int(records.start_ns.max()) < 1_500_000_000


@pytest.mark.parametrize("processes", [1, 2])
def test_open_loop_keeps_up_with_a_modest_rate(delayed_server: str, processes: int) -> None:
    _held_ms(delayed_server, reset=True)  # forget what earlier tests left
    records = run_level_sync(
        delayed_server,
        _payloads(),
        TOKENS,
        concurrency=64,
        duration_s=2.0,
        warmup=64,
        rate=500.0,
        seed=3,
        processes=processes,
    )
    summary = summarize(records, batch_size=1)

    assert summary.mode == "open"
    assert summary.valid
    assert summary.errors == 0
    assert summary.unsent == 0
    assert summary.offered_rps is not None
    assert summary.offered_rps == pytest.approx(500, rel=0.1)
    # Achieved falls short of offered only by the last responses' 20 ms in the wall time.
    assert summary.throughput_rps == pytest.approx(summary.offered_rps, rel=0.03)
    assert summary.latency_ms.mean == pytest.approx(_held_ms(delayed_server), abs=2.0)
    # At 500/s × 20 ms about 10 requests are in flight, far below the 64 connections: any lag
    # is the client's own (timer granularity, scheduling), and it must be small: the mean under
    # 3 ms. Its p99 is the host's scheduling as much as the client's:
    # 3.8 and 7.8-8.1 ms were seen in CI on the shared 2-core host (under 3 ms alone), so it is
    # held to a fraction of the 20 ms the server holds each request, not to a quiet host's 3 ms.
    assert summary.lag_p99_ms < 10.0
    assert summary.lag_mean_ms < 3.0
    lag = records.start_ns - records.scheduled_ns
    assert (lag >= 0).all()
    # Every drawn arrival was sent, at or after its time: the scheduled column is the schedule.
    assert len(records) == round(summary.offered_rps * 2.0)
