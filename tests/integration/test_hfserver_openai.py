"""The built-in server as clients use it: the official ``openai`` client with its defaults
(base64), floats, ``dimensions`` (refused on a model that is not Matryoshka, honoured on one that
is), token-id inputs, and vLLM's error shape. Real server subprocesses, real packaged model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port

pytestmark = pytest.mark.integration
API_KEY = "test-key-not-secret"
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog."]


def _serve(model_dir: Path, log: Path) -> Iterator[ServerProcess]:
    launch = Launch(
        model_path=model_dir,
        served_name="minilm",
        port=free_port(),
        api_key=API_KEY,
        max_input_tokens=256,
    )
    proc = server_for("hf", launch, log)
    with proc:
        proc.wait_healthy(120)
        yield proc


@pytest.fixture(scope="module")
def server(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(minilm_dir, tmp_path_factory.mktemp("hf") / "server.log")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return np.asarray(model.encode(TEXTS, batch_size=1))


def test_the_clients_default_base64_decodes_to_the_models_vectors(
    client: openai.OpenAI, reference: np.ndarray
) -> None:
    response = client.embeddings.create(model="minilm", input=TEXTS)
    vectors = np.asarray([d.embedding for d in response.data])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert response.usage.prompt_tokens > 0
    floats = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    np.testing.assert_allclose(np.asarray([d.embedding for d in floats.data]), vectors, atol=1e-7)


def test_dimensions_on_a_model_that_is_not_matryoshka_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="minilm", input="hello", dimensions=128)
    error = caught.value
    assert error.status_code == 400
    assert "does not support Matryoshka embeddings" in str(error)
    body = error.body
    assert isinstance(body, dict)
    assert body["type"] == "BadRequestError"
    assert body["param"] == "dimensions"
    assert body["code"] == 400


def test_token_ids_are_embedded_like_their_text(
    client: openai.OpenAI, minilm_dir: Path, reference: np.ndarray
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    batch = client.embeddings.create(model="minilm", input=ids)
    np.testing.assert_allclose(np.asarray([d.embedding for d in batch.data]), reference, atol=1e-5)
    assert batch.usage.prompt_tokens == sum(len(i) for i in ids)
    one = client.embeddings.create(model="minilm", input=ids[0])
    np.testing.assert_allclose(one.data[0].embedding, reference[0], atol=1e-5)
    # Counted against the limit like a text, with vLLM's message.
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256 tokens"):
        client.embeddings.create(model="minilm", input=[[101] + [2088] * 300 + [102]])


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ([[]], "non-empty list of integers"),
        ([[101, "x"]], "non-empty list of integers"),
        ([[101, 10**9]], "outside the vocabulary"),
        ([[-1, 5]], "outside the vocabulary"),
        (["text", [101]], "mixes"),
    ],
)
def test_bad_token_ids_are_a_clear_400(client: openai.OpenAI, bad: object, says: str) -> None:
    with pytest.raises(openai.BadRequestError, match=says) as caught:
        client.embeddings.create(model="minilm", input=bad, encoding_format="float")  # type: ignore[arg-type]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "input"


def test_every_error_has_vllms_shape(client: openai.OpenAI, server: ServerProcess) -> None:
    import urllib.error
    import urllib.request

    def raw(body: bytes, key: str = API_KEY) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(
            f"{server.url}/v1/embeddings",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    cases = [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (json.dumps({"model": "other", "input": "x"}).encode(), 404),
        (json.dumps({"model": "minilm", "input": "x", "encoding_format": "hex"}).encode(), 400),
    ]
    for body, status in cases:
        got, payload = raw(body)
        assert got == status
        error = payload["error"]
        assert isinstance(error, dict)
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == status
    got, payload = raw(json.dumps({"input": "x"}).encode(), key="wrong")
    assert got == 401
    assert set(payload["error"]) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="other", input="x")


@pytest.fixture(scope="module")
def matryoshka(
    minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # The same weights, with a config that declares Matryoshka dimensions (as such models'
    # configs do): the server must then honour dimensions.
    folder = tmp_path_factory.mktemp("matryoshka") / "model"
    shutil.copytree(minilm_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["matryoshka_dimensions"] = [64, 128, 384]
    (folder / "config.json").write_text(json.dumps(config))
    yield from _serve(folder, folder.parent / "server.log")


def test_dimensions_on_a_matryoshka_model_truncate_and_renormalise(
    matryoshka: ServerProcess, reference: np.ndarray
) -> None:
    client = openai.OpenAI(base_url=f"{matryoshka.url}/v1", api_key=API_KEY, max_retries=0)
    response = client.embeddings.create(model="minilm", input=TEXTS, dimensions=128)
    vectors = np.asarray([d.embedding for d in response.data])
    assert vectors.shape == (2, 128)
    expected = reference[:, :128] / np.linalg.norm(reference[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    with pytest.raises(openai.BadRequestError, match=r"only supports Matryoshka dimensions"):
        client.embeddings.create(model="minilm", input="x", dimensions=100)
    with pytest.raises(openai.BadRequestError, match=r"range \[1, 384\]"):
        client.embeddings.create(model="minilm", input="x", dimensions=1000)
