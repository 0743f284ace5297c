"""Load client for an OpenAI-compatible ``/v1/embeddings`` endpoint.

This package owns the request bytes (bodies and headers serialised before any clock starts), the
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

Where things are:

- ``level``: :func:`run_level` and :func:`run_level_sync`, a level end to end (arguments checked,
  schedule drawn, shares driven, rows merged) and SIGTERM handling;
- ``connection``: the request bytes (:func:`build_payloads`, headers), the raw HTTP/1.1 client
  connection, the slot that reopens it, request timeouts and the dead-server watch;
- ``phases``: the closed-loop and open-loop phases, and one process's share of a level (warm-up,
  start gate, measured phase);
- ``schedule``: the open loop's arrival schedule (:func:`arrival_schedule`: Poisson, gamma of a
  burstiness, or constant; :func:`poisson_schedule`);
- ``processes``: the multi-process fan-out (shares, ``spawn`` workers, one agreed start instant);
- ``records``: :class:`LevelRecords` (and its Arrow table) and the merge of processes' rows.
"""

from __future__ import annotations

from embedsweep.loadgen.connection import EMBEDDINGS_PATH, build_payloads
from embedsweep.loadgen.connection import UNREACHABLE_S as UNREACHABLE_S
from embedsweep.loadgen.level import run_level, run_level_sync
from embedsweep.loadgen.records import LevelRecords
from embedsweep.loadgen.schedule import ARRIVALS, arrival_schedule, poisson_schedule

__all__ = [
    "ARRIVALS",
    "EMBEDDINGS_PATH",
    "LevelRecords",
    "arrival_schedule",
    "build_payloads",
    "poisson_schedule",
    "run_level",
    "run_level_sync",
]
