"""The built-in server's batcher: rows grouped by length, sub-batches bounded by padded tokens,
a short wait for the rest of a closed loop's clients, token ids next to texts. The model is a
stand-in that records what it was given (the batching is the subject, not the vectors)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import numpy.typing as npt
import pytest

from embedsweep.hfserver.batcher import Batcher, ContextOverflow
from embedsweep.hfserver.embedder import Encoded


class RecordingStandIn:
    """One id per character (ord), a token_type_ids feature; each vector is [length, first id]."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[list[int]]] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def tokenize(self, texts: list[str]) -> Encoded:
        ids = [[ord(c) for c in t] for t in texts]
        return {
            "input_ids": ids,
            "attention_mask": [[1] * len(i) for i in ids],
            "token_type_ids": [[0] * len(i) for i in ids],
        }

    def embed(self, encoded: Encoded) -> npt.NDArray[np.float32]:
        self.gate.wait()
        time.sleep(self.delay_s)
        assert set(encoded) == {"input_ids", "attention_mask", "token_type_ids"}
        self.batches.append(encoded["input_ids"])
        return np.asarray(
            [[len(row), row[0] if row else 0] for row in encoded["input_ids"]], dtype=np.float32
        )


async def _embed_all(batcher: Batcher, requests: list[list[str]]) -> list[npt.NDArray[np.float32]]:
    results = await asyncio.gather(*(batcher.embed(texts) for texts in requests))
    return [r.vectors for r in results]


def _run(batcher: Batcher, requests: list[list[str]]) -> list[npt.NDArray[np.float32]]:
    batcher.start()
    try:
        return asyncio.run(_embed_all(batcher, requests))
    finally:
        batcher.stop()


def test_rows_are_grouped_by_length_and_answered_in_each_requests_order() -> None:
    model = RecordingStandIn()
    model.gate.clear()  # hold the first batch so that the rest queue up together
    batcher = Batcher(model, max_input_tokens=64, max_batch_tokens=40)
    texts = [["a" * 8, "b" * 2], ["c" * 8], ["d" * 2, "e" * 9, "f" * 3], ["g"]]

    async def go() -> list[npt.NDArray[np.float32]]:
        first = asyncio.ensure_future(batcher.embed(["z"]))
        await asyncio.sleep(0.05)
        rest = asyncio.ensure_future(_embed_all(batcher, texts))
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        return await rest

    batcher.start()
    try:
        vectors = asyncio.run(go())
    finally:
        batcher.stop()
    # Each request's vectors in its own order.
    for asked, got in zip(texts, vectors, strict=True):
        assert got.tolist() == [[len(t), ord(t[0])] for t in asked]
    # The queued rows ran shortest first, cut where rows x longest would pass 40 tokens.
    queued = model.batches[1:]
    lengths = [[len(r) for r in batch] for batch in queued]
    assert [n for batch in lengths for n in batch] == [1, 2, 2, 3, 8, 8, 9]
    assert all(len(batch) * max(batch) <= 40 for batch in lengths)
    assert len(queued) == 2  # [1, 2, 2, 3, 8] (5 x 8 = 40), then [8, 9]
    assert batcher.batches == 2  # one model batch per drain, however many sub-batches


def test_token_ids_get_the_tokenizers_features_and_mix_with_texts() -> None:
    model = RecordingStandIn()
    batcher = Batcher(model, max_input_tokens=64)
    batcher.start()

    async def go() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        ids, texts = await asyncio.gather(
            batcher.embed([[7, 8, 9]], ids=True), batcher.embed(["hey"])
        )
        return ids.vectors, texts.vectors

    try:
        ids, texts = asyncio.run(go())
    finally:
        batcher.stop()
    assert ids.tolist() == [[3, 7]]
    assert texts.tolist() == [[3, ord("h")]]


def test_an_overlong_input_is_refused_before_it_is_queued() -> None:
    model = RecordingStandIn()
    batcher = Batcher(model, max_input_tokens=4)
    with pytest.raises(ContextOverflow, match="maximum context length is 4 tokens"):
        _run(batcher, [["12345"]])
    assert model.batches == []


def test_a_smaller_batch_than_the_last_waits_briefly_for_the_rest() -> None:
    # A closed loop of 8: the last batch held 8 rows and took 1 s; the next client comes back
    # alone and three more 40 ms after it. With a wait (at most max_wait_s and a tenth of the
    # last batch's time: 100 ms) the model takes the four together; with none it takes the first
    # alone. The margins (40 ms, 60 ms) hold on a busy host; the model is instant after batch 1.
    def batches_for(max_wait_s: float) -> list[int]:
        model = RecordingStandIn(delay_s=1.0)
        batcher = Batcher(model, max_input_tokens=64, max_wait_s=max_wait_s)
        batcher.start()

        async def go() -> None:
            await _embed_all(batcher, [["x" * 4]] * 8)  # the last batch: 8 rows
            model.delay_s = 0.0

            async def late(after_s: float) -> None:
                await asyncio.sleep(after_s)
                await batcher.embed(["y" * 4])

            await asyncio.gather(late(0.0), *(late(0.04) for _ in range(3)))

        try:
            asyncio.run(go())
        finally:
            batcher.stop()
        return [len(b) for b in model.batches]

    assert batches_for(1.0) == [8, 4]
    assert batches_for(0.0)[:2] == [8, 1]
