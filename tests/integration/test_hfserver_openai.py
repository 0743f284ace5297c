"""The built-in server as clients use it: the official ``openai`` client with its defaults
(base64), floats, ``dimensions`` (refused on a model that is not Matryoshka, honoured on one that
is), token-id inputs, and vLLM 0.32's error bodies. Real server subprocesses: the packaged
all-MiniLM-L6-v2, and a tiny random-weight BERT whose config declares Matryoshka dimensions."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port

pytestmark = pytest.mark.integration
API_KEY = "test-key-not-secret"
LIMIT = 256
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog."]
TINY_DIMENSIONS = [8, 16, 32]
ERROR_KEYS = {"message", "type", "param", "code"}
REFUSED = "BadRequestError"  # vLLM's type for a well-formed request it refuses
MALFORMED = "Bad Request"  # vLLM's type for a request its validation rejects
NOT_IDS = "must be a list of integer token ids, got"
MIXES = "input mixes strings, token ids and lists of token ids"
FORMATS = "encoding_format must be one of"
# vLLM's answer to a body that is not JSON (its validation handler printing FastAPI's error).
BAD_JSON = (
    "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode error', "
    "'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting property name enclosed in double "
    "quotes'}}"
)


def _serve(model_dir: Path, name: str, log: Path) -> Iterator[ServerProcess]:
    # float32: these tests compare with the model's own float32 vectors (the CPU default is
    # bfloat16 only where it is faster there; tests/integration/test_hfserver_placement.py).
    launch = Launch(
        model_path=model_dir, served_name=name, port=free_port(), api_key=API_KEY,
        max_input_tokens=LIMIT, dtype="float32",
    )  # fmt: skip
    with server_for("hf", launch, log) as proc:
        proc.wait_healthy(120)
        yield proc


def _client(server: ServerProcess, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def _vectors(response: Any) -> np.ndarray:
    return np.asarray([d.embedding for d in response.data], dtype=np.float64)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _raw(
    server: ServerProcess,
    body: bytes,
    *,
    key: str = API_KEY,
    path: str = "/v1/embeddings",
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=body if method == "POST" else None,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- all-MiniLM-L6-v2: not Matryoshka ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(minilm_dir, "minilm", tmp_path_factory.mktemp("hf") / "server.log")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return _client(server)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> np.ndarray:
    """A direct sentence-transformers encode, one text at a time."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return np.asarray(model.encode(TEXTS, batch_size=1), dtype=np.float64)


def test_the_clients_default_is_base64_and_decodes_to_the_models_vectors(
    client: openai.OpenAI, reference: np.ndarray
) -> None:
    raw = client.embeddings.with_raw_response.create(model="minilm", input=TEXTS)
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    assert all(isinstance(d["embedding"], str) for d in raw.http_response.json()["data"])
    response = raw.parse()
    vectors = _vectors(response)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    floats = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    assert isinstance(floats.data[0].embedding[0], float)
    # base64 carries the same float32 values the float form prints.
    np.testing.assert_allclose(_vectors(floats), vectors, rtol=0, atol=1e-7)
    assert response.usage.prompt_tokens == floats.usage.prompt_tokens == 4 + 12


def test_dimensions_on_a_model_that_is_not_matryoshka_is_vllms_400(client: openai.OpenAI) -> None:
    for dimensions in (128, 384):  # even the full size: the field is refused, not checked
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="minilm", input="hello", dimensions=dimensions)
        assert caught.value.status_code == 400
        assert caught.value.body == {
            "message": "Model 'minilm' does not support Matryoshka embeddings; dimensions must "
            f"be unset (received dimensions={dimensions}).",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }


def test_token_ids_are_embedded_like_their_text(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerBase, reference: np.ndarray
) -> None:
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert ids[0][0] == tokenizer.cls_token_id  # the client's ids carry the specials: none added
    batch = client.embeddings.create(model="minilm", input=ids)
    np.testing.assert_allclose(_vectors(batch), reference, atol=1e-5)
    assert batch.usage.prompt_tokens == sum(len(i) for i in ids)
    one = client.embeddings.create(model="minilm", input=ids[1], encoding_format="float")
    np.testing.assert_allclose(_vectors(one)[0], reference[1], atol=1e-5)
    assert one.usage.prompt_tokens == len(ids[1])
    # Without the specials it is another input: the server embeds exactly what it was sent.
    bare = client.embeddings.create(model="minilm", input=ids[1][1:-1])
    assert not np.allclose(_vectors(bare)[0], reference[1], atol=1e-3)


def test_token_ids_and_texts_batched_together_keep_their_vectors(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerBase, reference: np.ndarray
) -> None:
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    payloads: list[Any] = [TEXTS, ids, [TEXTS[1]], [ids[0]]] * 8
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda p: client.embeddings.create(model="minilm", input=p), payloads)
        )
    expected = [reference, reference, reference[1:], reference[:1]] * 8
    for answer, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(_vectors(answer), want, atol=1e-5)


def test_token_ids_are_held_to_the_served_limit_like_text(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerBase
) -> None:
    word = tokenizer.convert_tokens_to_ids("word")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    exactly = client.embeddings.create(model="minilm", input=[cls] + [word] * (LIMIT - 2) + [sep])
    assert exactly.usage.prompt_tokens == LIMIT
    over = [[cls, sep], [cls] + [word] * 300 + [sep]]
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="minilm", input=over)
    text = "word " * 300  # 300 one-token words + CLS/SEP: the same 302 tokens as text
    with pytest.raises(openai.BadRequestError) as as_text:
        client.embeddings.create(model="minilm", input=text)
    message = (
        f"This model's maximum context length is {LIMIT} tokens. However, your prompt contains "
        "302 input tokens. Please reduce the length of the input."
    )
    for error in (caught.value, as_text.value):
        assert error.body == {
            "message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400,
        }  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "message", "kind", "param"),
    [
        ([], "You must pass at least one prompt", REFUSED, None),
        ([[]], "The decoder prompt cannot be empty", REFUSED, None),
        ([[101, 102], []], "The decoder prompt cannot be empty", REFUSED, None),
        ([[101, 10**9]], "Token id 1000000000 is out of vocabulary", REFUSED, None),
        ([101, 30522, 102], "Token id 30522 is out of vocabulary", REFUSED, None),
        ([[-1, 5]], "Token id -1 is out of vocabulary", REFUSED, None),
        ([[101, "x"]], f"input[0] {NOT_IDS} 'x'", MALFORMED, "input"),
        ([[101], [102, 1.5]], f"input[1] {NOT_IDS} 1.5", MALFORMED, "input"),
        (["text", [101]], MIXES, MALFORMED, "input"),
        ([101, [102]], MIXES, MALFORMED, "input"),
    ],
)
def test_bad_token_ids_are_a_clear_400(
    client: openai.OpenAI, bad: object, message: str, kind: str, param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="minilm", input=bad, encoding_format="float")  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    assert str(body["message"]).startswith(message)
    assert (body["type"], body["param"], body["code"]) == (kind, param, 400)


def test_the_last_id_of_the_vocabulary_is_served(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(model="minilm", input=[101, 30521, 102])
    assert len(answer.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("body", "status", "kind", "param", "message"),
    [
        (b"{not json", 400, MALFORMED, "body.1", BAD_JSON),
        (b"\xff\xfe{", 400, MALFORMED, None, "There was an error parsing the body"),
        (b"[1, 2]", 400, MALFORMED, "body", "the request body must be a JSON object"),
        (b'{"model": "minilm"}', 400, MALFORMED, "input", "input is required"),
        (b'{"input": {"a": 1}}', 400, MALFORMED, "input", "input must be a string"),
        (b'{"model": 7, "input": "x"}', 400, MALFORMED, "model", "model must be a string"),
        (b'{"model": "other", "input": "x"}', 404, "NotFoundError", None, "The model `other`"),
        (b'{"input": "x", "encoding_format": "hex"}', 400, MALFORMED, "encoding_format", FORMATS),
        (b'{"input": "x", "encoding_format": null}', 400, MALFORMED, "encoding_format", FORMATS),
        (
            b'{"input": "x", "encoding_format": "bytes"}',
            400, REFUSED, "encoding_format", "encoding_format 'bytes' is not served",
        ),
        (b'{"input": "x", "dimensions": "64"}', 400, MALFORMED, "dimensions", "dimensions must"),
        # vLLM's order: the request's fields first, then the model name, then the prompts.
        (b'{"model": "other", "input": []}', 404, "NotFoundError", None, "The model `other`"),
        (b'{"model": "other", "input": 5}', 400, MALFORMED, "input", "input must be a string"),
    ],
)  # fmt: skip
def test_every_error_has_vllms_body(
    server: ServerProcess, body: bytes, status: int, kind: str, param: str | None, message: str
) -> None:
    got, payload = _raw(server, body)
    assert got == status
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == ERROR_KEYS
    assert (error["type"], error["param"], error["code"]) == (kind, param, status)
    assert error["message"].startswith(message)


def test_http_level_errors_have_the_same_body(server: ServerProcess) -> None:
    cases = [
        (_raw(server, b'{"input": "x"}', key="wrong"), 401, "AuthenticationError", "Unauthorized"),
        (_raw(server, b"{}", path="/v1/nothing"), 404, "Not Found", "Not Found"),
        (_raw(server, b"", method="GET"), 405, "Method Not Allowed", "Method Not Allowed"),
    ]
    for (got, payload), status, kind, message in cases:
        assert got == status
        assert payload == {
            "error": {"message": message, "type": kind, "param": None, "code": status}
        }


def test_the_client_raises_its_own_error_classes(server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _client(server).embeddings.create(model="other", input="x")
    with pytest.raises(openai.AuthenticationError, match="Unauthorized"):
        _client(server, key="wrong").embeddings.create(model="minilm", input="x")
    # An empty model name is the served model, as in vLLM.
    assert len(_client(server).embeddings.create(model="", input="x").data) == 1


# --- a tiny BERT whose config declares Matryoshka dimensions -------------------------------------


def _tiny_matryoshka_bert(folder: Path, minilm_dir: Path) -> Path:
    """A real BERT (random weights, 32 wide) with the packaged model's tokenizer and the
    sentence-transformers modules of a normalising model; its config lists Matryoshka sizes."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )  # fmt: skip
    config.architectures = ["BertModel"]
    config.matryoshka_dimensions = TINY_DIMENSIONS  # saved into config.json, as such models do
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, folder / name)
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        )
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": LIMIT, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert json.loads((folder / "config.json").read_text())["matryoshka_dimensions"] == [8, 16, 32]
    return folder


@pytest.fixture(scope="module")
def tiny_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_matryoshka_bert(tmp_path_factory.mktemp("tiny") / "model", minilm_dir)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Iterator[ServerProcess]:
    yield from _serve(tiny_dir, "tiny", tiny_dir.parent / "server.log")


@pytest.fixture(scope="module")
def tiny_reference(tiny_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_dir), device="cpu")
    return np.asarray(model.encode(TEXTS, batch_size=1), dtype=np.float64)


def test_dimensions_on_a_matryoshka_model_truncate_then_renormalise(
    tiny: ServerProcess, tiny_reference: np.ndarray, tokenizer: PreTrainedTokenizerBase
) -> None:
    client = _client(tiny)
    full = _vectors(client.embeddings.create(model="tiny", input=TEXTS))
    np.testing.assert_allclose(full, tiny_reference, atol=1e-5)
    for dimensions in TINY_DIMENSIONS:
        expected = _unit(tiny_reference[:, :dimensions])
        base64_default = client.embeddings.create(model="tiny", input=TEXTS, dimensions=dimensions)
        floats = client.embeddings.create(
            model="tiny", input=TEXTS, dimensions=dimensions, encoding_format="float"
        )
        for answer in (base64_default, floats):
            vectors = _vectors(answer)
            assert vectors.shape == (2, dimensions)
            np.testing.assert_allclose(vectors, expected, atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # A prefix of the model's own (unit) vector is not unit: the server re-normalised it.
    assert np.linalg.norm(tiny_reference[0, :8]) < 0.99
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    by_ids = client.embeddings.create(model="tiny", input=ids, dimensions=16)
    np.testing.assert_allclose(_vectors(by_ids), _unit(tiny_reference[:, :16]), atol=1e-5)


@pytest.mark.parametrize(
    ("dimensions", "message"),
    [
        (12, "Model 'tiny' only supports Matryoshka dimensions [8, 16, 32], got 12."),
        (64, "Model 'tiny' only supports dimensions in range [1, 32], got 64."),
        (0, "Model 'tiny' only supports dimensions in range [1, 32], got 0."),
        (-8, "Model 'tiny' only supports dimensions in range [1, 32], got -8."),
    ],
)
def test_dimensions_a_matryoshka_model_lacks_are_vllms_400(
    tiny: ServerProcess, dimensions: int, message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _client(tiny).embeddings.create(model="tiny", input="x", dimensions=dimensions)
    assert caught.value.body == {
        "message": message, "type": "BadRequestError", "param": None, "code": 400,
    }  # fmt: skip
