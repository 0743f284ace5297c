"""Dynamic batching: requests arriving while the model is busy are embedded together.

The asyncio side only enqueues and awaits; one worker thread drains everything queued (up to a
limit), tokenizes its texts in one call (token-id inputs are taken as given), rejects the requests
with an over-long input, and runs the model over the rest in padded sub-batches bounded by
``max_batch_tokens``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from embedsweep.hfserver.embedder import Encoded

__all__ = ["Batcher", "ContextOverflow", "EmbedResult"]


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
    # Texts, or token ids already tokenized by the client (used as given: no special tokens
    # added, no truncation), one list per input; the other of the two is empty.
    texts: list[str]
    rows: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EmbedResult]
    lengths: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.texts) or len(self.rows)


def _settle(job: _Job, result: EmbedResult | None, error: BaseException | None) -> None:
    def apply() -> None:
        if job.future.done():  # the client went away
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    job.loop.call_soon_threadsafe(apply)


class Batcher:
    """Owns the model worker thread; ``await embed(texts)`` from any coroutine."""

    def __init__(
        self,
        model: _Model,
        *,
        max_input_tokens: int,
        max_batch_inputs: int = 256,
        max_batch_tokens: int = 16384,
    ) -> None:
        self._model = model
        self.max_input_tokens = max_input_tokens
        self._max_inputs = max_batch_inputs
        self._max_tokens = max_batch_tokens
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="embed-worker", daemon=True)
        self.batches = 0
        self.inputs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def embed(self, inputs: list[str] | list[list[int]], *, ids: bool = False) -> EmbedResult:
        """Embed INPUTS, texts or (with IDS) lists of token ids, in the next batch."""
        loop = asyncio.get_running_loop()
        texts = [] if ids else cast(list[str], inputs)
        rows = cast(list[list[int]], inputs) if ids else []
        job = _Job(texts=texts, rows=rows, loop=loop, future=loop.create_future())
        self._queue.put(job)
        return await job.future

    def _drain(self, first: _Job) -> list[_Job]:
        jobs, count = [first], first.count
        while count < self._max_inputs:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the outer loop
                break
            jobs.append(job)
            count += job.count
        return jobs

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._drain(first)
            try:
                self._run(jobs)
            except Exception as exc:  # a model failure fails this batch, not the server
                for job in jobs:
                    _settle(job, None, exc)

    def _run(self, jobs: list[_Job]) -> None:
        encoded = self._encode(jobs)
        ids = encoded["input_ids"]
        accepted: list[_Job] = []
        rows: list[int] = []
        pos = 0
        for job in jobs:
            span = range(pos, pos + job.count)
            pos += job.count
            job.lengths = [len(ids[i]) for i in span]
            longest = max(job.lengths, default=0)
            if longest > self.max_input_tokens:
                _settle(job, None, ContextOverflow(self.max_input_tokens, longest))
                continue
            accepted.append(job)
            rows.extend(span)
        if not accepted:
            return
        vectors = self._embed_rows(encoded, rows)
        self.batches += 1
        self.inputs += len(rows)
        start = 0
        for job in accepted:
            n = job.count
            _settle(job, EmbedResult(vectors[start : start + n], sum(job.lengths)), None)
            start += n

    def _encode(self, jobs: list[_Job]) -> Encoded:
        """Every input of JOBS in order: texts tokenized in one call, token ids as given."""
        texts = [t for job in jobs for t in job.texts]
        tokenized = self._model.tokenize(texts) if texts else {}
        if not any(job.rows for job in jobs):
            return tokenized
        # Token ids get an attention mask of ones and zeros for any other feature the tokenizer
        # gives texts (token_type_ids: one segment).
        others = [key for key in tokenized if key not in ("input_ids", "attention_mask")]
        out: Encoded = {key: [] for key in ("input_ids", "attention_mask", *others)}
        at = 0
        for job in jobs:
            if job.rows:
                for row in job.rows:
                    out["input_ids"].append(row)
                    out["attention_mask"].append([1] * len(row))
                    for key in others:
                        out[key].append([0] * len(row))
            else:
                end = at + len(job.texts)
                for key, values in out.items():
                    values.extend(tokenized[key][at:end])
                at = end
        return out

    def _embed_rows(self, encoded: Encoded, rows: list[int]) -> npt.NDArray[np.float32]:
        # Padded sub-batches keep memory bounded whatever lengths arrive together.
        parts: list[npt.NDArray[np.float32]] = []
        chunk: list[int] = []
        longest = 0
        for row in rows:
            length = len(encoded["input_ids"][row])
            if chunk and max(longest, length) * (len(chunk) + 1) > self._max_tokens:
                parts.append(self._model.embed(_select(encoded, chunk)))
                chunk, longest = [], 0
            chunk.append(row)
            longest = max(longest, length)
        parts.append(self._model.embed(_select(encoded, chunk)))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _select(encoded: Encoded, rows: list[int]) -> Encoded:
    return {key: [values[i] for i in rows] for key, values in encoded.items()}
