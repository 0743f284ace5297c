"""Dynamic batching: requests arriving while the model is busy are embedded together.

The model's thread does nothing but model work. Each request is tokenized where it arrives (the
event loop's thread; a large one in a helper thread), over-long inputs are refused there, and its
token ids are queued. The model thread takes everything queued, waiting briefly when fewer rows
are queued than its last batch held (a closed loop's clients come back one by one after a batch
is answered: without the wait the model runs a small batch, then a large one, in turn), sorts the
rows by length so padding wastes little, and runs them in padded sub-batches bounded by
``max_batch_tokens`` (rows times the longest, padding included).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from embedsweep.hfserver.embedder import Encoded

__all__ = ["DEFAULT_MAX_WAIT_S", "Batcher", "ContextOverflow", "EmbedResult"]

# The longest wait for more rows before a batch smaller than the last (and never more than a
# tenth of the last batch's time): 10 ms let 16 clients beside a busy core form 41 batches of 608
# inputs where 2 ms cut 60.
DEFAULT_MAX_WAIT_S = 0.010


class _Governor(Protocol):
    def tick(self) -> int: ...


class _Model(Protocol):
    def tokenize(self, texts: list[str]) -> Encoded: ...
    def embed(self, encoded: Encoded) -> npt.NDArray[np.float32]: ...


class ContextOverflow(ValueError):
    """An input longer than the served limit; the message matches vLLM's."""

    def __init__(self, limit: int, tokens: int) -> None:
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"contains {tokens} input tokens. Please reduce the length of the input."
        )


@dataclass
class EmbedResult:
    vectors: npt.NDArray[np.float32]
    prompt_tokens: int


@dataclass
class _Job:
    # One request's inputs, tokenized: token ids (a client's are used as given: no special
    # tokens added, no truncation) and the tokenizer's other features, one list per input.
    encoded: Encoded
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EmbedResult]
    lengths: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.lengths)


def _settle(job: _Job, result: EmbedResult | None, error: BaseException | None) -> None:
    def apply() -> None:
        if job.future.done():  # the client went away
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    job.loop.call_soon_threadsafe(apply)


# A request with more characters than this is tokenized in a helper thread, so that one large
# request does not hold the event loop (and every other request) while it is tokenized.
_TOKENIZE_INLINE_CHARS = 65_536


class Batcher:
    """Owns the model worker thread; ``await embed(texts)`` from any coroutine."""

    def __init__(
        self,
        model: _Model,
        *,
        max_input_tokens: int,
        max_batch_inputs: int = 256,
        max_batch_tokens: int = 16384,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        governor: _Governor | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self._model = model
        self.max_input_tokens = max_input_tokens
        self._max_inputs = max_batch_inputs
        self._max_tokens = max_batch_tokens
        self._max_wait_s = max_wait_s
        self._governor = governor
        self._on_start = on_start  # run first in the model's thread (its placement)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="embed-worker", daemon=True)
        self._features: list[str] | None = None
        self._last_rows = 0
        self._last_s = 0.0
        self.batches = 0
        self.inputs = 0
        self.busy_s = 0.0  # the model thread's time in batches, waits excluded

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def embed(self, inputs: list[str] | list[list[int]], *, ids: bool = False) -> EmbedResult:
        """Embed INPUTS, texts or (with IDS) lists of token ids, in the next batch; an input
        longer than the served limit raises :class:`ContextOverflow` before anything is queued."""
        loop = asyncio.get_running_loop()
        if ids:
            encoded = self._from_ids(cast(list[list[int]], inputs))
        else:
            texts = cast(list[str], inputs)
            if sum(len(t) for t in texts) > _TOKENIZE_INLINE_CHARS:
                encoded = await loop.run_in_executor(None, self._model.tokenize, texts)
            else:
                encoded = self._model.tokenize(texts)
        lengths = [len(row) for row in encoded["input_ids"]]
        longest = max(lengths, default=0)
        if longest > self.max_input_tokens:
            raise ContextOverflow(self.max_input_tokens, longest)
        job = _Job(encoded=encoded, loop=loop, future=loop.create_future(), lengths=lengths)
        self._queue.put(job)
        return await job.future

    def _from_ids(self, rows: list[list[int]]) -> Encoded:
        # Token ids get an attention mask of ones and zeros for any other feature the tokenizer
        # gives texts (token_type_ids: one segment).
        if self._features is None:
            self._features = [
                key
                for key in self._model.tokenize([""])
                if key not in ("input_ids", "attention_mask")
            ]
        out: Encoded = {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
        for key in self._features:
            out[key] = [[0] * len(r) for r in rows]
        return out

    def _drain(self, first: _Job) -> list[_Job]:
        jobs, count = [first], first.count
        deadline: float | None = None
        while count < self._max_inputs:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                # Fewer rows than last time: the rest of the clients are likely on their way.
                if count >= self._last_rows:
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + min(self._max_wait_s, self._last_s / 10)
                if now >= deadline:
                    break
                try:
                    job = self._queue.get(timeout=deadline - now)
                except queue.Empty:
                    break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the outer loop
                break
            jobs.append(job)
            count += job.count
        return jobs

    def _work(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._drain(first)
            if self._governor is not None:
                self._governor.tick()
            started = time.monotonic()
            try:
                self._run(jobs, started)
            except Exception as exc:  # a model failure fails this batch, not the server
                self.busy_s += time.monotonic() - started
                for job in jobs:
                    _settle(job, None, exc)
            self._last_rows = sum(job.count for job in jobs)
            self._last_s = time.monotonic() - started

    def _run(self, jobs: list[_Job], started: float) -> None:
        # Every row of every job, shortest first; the vectors go back in each job's order.
        order = sorted(
            ((length, j, i) for j, job in enumerate(jobs) for i, length in enumerate(job.lengths)),
        )
        keys = list(jobs[0].encoded)
        out: list[npt.NDArray[np.float32]] = [
            np.empty((job.count, 0), dtype=np.float32) for job in jobs
        ]
        chunk: list[tuple[int, int, int]] = []

        def flush() -> None:
            encoded: Encoded = {
                key: [_feature(jobs[j].encoded, key, i) for _, j, i in chunk] for key in keys
            }
            vectors = self._model.embed(encoded)
            for row, (_, j, i) in enumerate(chunk):
                if out[j].shape[1] != vectors.shape[1]:
                    out[j] = np.empty((jobs[j].count, vectors.shape[1]), dtype=np.float32)
                out[j][i] = vectors[row]

        for entry in order:
            # Sorted: this row is the longest so far, so the padded size is rows x its length.
            if chunk and entry[0] * (len(chunk) + 1) > self._max_tokens:
                flush()
                chunk = []
            chunk.append(entry)
        flush()
        self.batches += 1
        self.inputs += len(order)
        self.busy_s += time.monotonic() - started  # counted before anyone hears of the batch
        for j, job in enumerate(jobs):
            _settle(job, EmbedResult(out[j], sum(job.lengths)), None)


def _feature(encoded: Encoded, key: str, row: int) -> list[int]:
    # A feature one request lacks (token ids sent before any text told the features): zeros.
    values = encoded.get(key)
    return values[row] if values is not None else [0] * len(encoded["input_ids"][row])
