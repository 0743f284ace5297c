"""The built-in server's app when its model fails: a 500 in vLLM's body, and the next request is
served. The model is a stand-in (a real one cannot be made to fail on request); the app, the
batcher and the HTTP server (on a real port, in a thread) are the real ones."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from hfserver_http import HttpClient, serving

from embedsweep.hfserver.app import build_app
from embedsweep.hfserver.batcher import Batcher
from embedsweep.hfserver.embedder import Encoded
from embedsweep.hfserver.request import Served


class FailingOnBoomStandIn:
    """Tokenizes one id per character; embedding a batch holding the text "boom" fails."""

    def tokenize(self, texts: list[str]) -> Encoded:
        ids = [[ord(c) for c in t] for t in texts]
        return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}

    def embed(self, encoded: Encoded) -> npt.NDArray[np.float32]:
        if [ord(c) for c in "boom"] in encoded["input_ids"]:
            raise RuntimeError("the model failed")
        return np.ones((len(encoded["input_ids"]), 4), dtype=np.float32) / 2


# float32 values whose float64 reprs are long (0.1f is 0.10000000149011612) or need an exponent.
_ODD = np.array([[0.1, 1 / 3, -0.7, 1e-7, 12345.678, -2.5e-30]], dtype=np.float32)


class OddValuesStandIn(FailingOnBoomStandIn):
    def embed(self, encoded: Encoded) -> npt.NDArray[np.float32]:
        return np.repeat(_ODD, len(encoded["input_ids"]), axis=0)


@pytest.fixture
def http() -> Iterator[HttpClient]:
    batcher = Batcher(FailingOnBoomStandIn(), max_input_tokens=16)
    batcher.start()
    app = build_app(batcher, served_name="m", api_key=None, served=Served(dimension=4))
    try:
        with serving(app) as url:
            yield HttpClient(url)
    finally:
        batcher.stop()


def test_a_model_failure_is_vllms_500_and_the_server_goes_on(http: HttpClient) -> None:
    failed = http.post("/v1/embeddings", json={"input": "boom"})
    assert failed.status_code == 500
    assert failed.json() == {
        "error": {
            "message": "the model failed",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    served = http.post("/v1/embeddings", json={"input": ["ok", "fine"]})
    assert served.status_code == 200
    assert [d["embedding"] for d in served.json()["data"]] == [[0.5] * 4] * 2
    assert served.json()["usage"]["prompt_tokens"] == 6


def test_float_vectors_are_each_float32_values_exact_float64_repr() -> None:
    # What json.dumps(row.tolist()) wrote (and vLLM writes): the float64 value of each float32,
    # not float32's shorter repr, so a client reading float64 gets the server's numbers exactly.
    batcher = Batcher(OddValuesStandIn(), max_input_tokens=16)
    batcher.start()
    app = build_app(batcher, served_name="m", api_key=None, served=Served(dimension=6))
    try:
        with serving(app) as url:
            served = HttpClient(url).post("/v1/embeddings", json={"input": ["a", "bb"]})
    finally:
        batcher.stop()
    assert served.status_code == 200
    expected = _ODD[0].astype(np.float64).tolist()
    assert [d["embedding"] for d in served.json()["data"]] == [expected, expected]
    assert b"0.10000000149011612" in served.content
