"""How the built-in server reads a /v1/embeddings request: vLLM 0.32's rules, texts and order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedsweep.hfserver.request import (
    ApiError,
    EmbeddingsRequest,
    Served,
    matryoshka_of,
    parse_request,
    shorten,
)

PLAIN = Served(dimension=384, vocab_size=30522)
MATRYOSHKA = Served(dimension=64, vocab_size=100, matryoshka=True, matryoshka_dimensions=(16, 32))
ANY_PREFIX = Served(dimension=64, vocab_size=100, matryoshka=True)


def _parse(body: object, served: Served = PLAIN, limit: int = 8) -> EmbeddingsRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, served_name="m", served=served, max_input_tokens=limit)


def _refusal(body: object, served: Served = PLAIN, limit: int = 8) -> ApiError:
    with pytest.raises(ApiError) as caught:
        _parse(body, served, limit)
    return caught.value


@pytest.mark.parametrize(
    ("body", "inputs", "token_ids", "fmt"),
    [
        ({"input": "a"}, ["a"], False, "float"),
        ({"input": ["a", ""], "model": "m"}, ["a", ""], False, "float"),
        ({"input": [1, 2, 3], "encoding_format": "base64"}, [[1, 2, 3]], True, "base64"),
        ({"input": [[1, 2], [3]], "model": ""}, [[1, 2], [3]], True, "float"),
        ({"input": "a", "user": "u", "dimensions": None}, ["a"], False, "float"),  # extras ignored
    ],
)
def test_accepted_inputs(body: object, inputs: object, token_ids: bool, fmt: str) -> None:
    assert _parse(body) == EmbeddingsRequest(inputs, token_ids, fmt, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "served", "status", "kind", "param", "message"),
    [
        # The request's fields are checked first, whatever else is wrong.
        ({"model": "x", "input": 5}, PLAIN, 400, "Bad Request", "input", "input must be"),
        ({"model": "x", "input": [[1]], "dimensions": 1.5}, PLAIN, 400, "Bad Request",
         "dimensions", "dimensions must be an integer, got 1.5"),
        ({"input": [True, 2]}, PLAIN, 400, "Bad Request", "input", "input mixes"),
        # Then the model name, then the prompts, then the ids' length, then dimensions.
        ({"model": "x", "input": []}, PLAIN, 404, "NotFoundError", None,
         "The model `x` does not exist."),
        ({"input": [], "dimensions": 8}, PLAIN, 400, "BadRequestError", None,
         "You must pass at least one prompt"),
        ({"input": [[-1] * 9], "dimensions": 8}, PLAIN, 400, "BadRequestError", "input_tokens",
         "This model's maximum context length is 8 tokens. However, your prompt contains 9 input "
         "tokens. Please reduce the length of the input."),
        ({"input": [[-1]], "dimensions": 8}, PLAIN, 400, "BadRequestError", None,
         "Model 'm' does not support Matryoshka embeddings; dimensions must be unset (received "
         "dimensions=8)."),
        # Each prompt: empty, then the lowest id, then the highest.
        ({"input": [[1], [], [-5, 999]]}, PLAIN, 400, "BadRequestError", None,
         "The decoder prompt cannot be empty"),
        ({"input": [[1], [-5, 999999]]}, PLAIN, 400, "BadRequestError", None,
         "Token id -5 is out of vocabulary"),
        ({"input": [[99, 100]]}, MATRYOSHKA, 400, "BadRequestError", None,
         "Token id 100 is out of vocabulary"),
        # dimensions: Matryoshka or not, then the range, then the listed sizes.
        ({"input": "a", "dimensions": 0}, PLAIN, 400, "BadRequestError", None,
         "Model 'm' does not support Matryoshka embeddings"),
        ({"input": "a", "dimensions": 65}, MATRYOSHKA, 400, "BadRequestError", None,
         "Model 'm' only supports dimensions in range [1, 64], got 65."),
        ({"input": "a", "dimensions": 24}, MATRYOSHKA, 400, "BadRequestError", None,
         "Model 'm' only supports Matryoshka dimensions [16, 32], got 24."),
        ({"input": "a", "dimensions": 0}, ANY_PREFIX, 400, "BadRequestError", None,
         "Model 'm' only supports dimensions in range [1, 64], got 0."),
        ({"input": "a", "dimensions": True}, ANY_PREFIX, 400, "Bad Request", "dimensions",
         "dimensions must be an integer, got True"),
    ],
)  # fmt: skip
def test_refusals_and_their_order(
    body: object, served: Served, status: int, kind: str, param: str | None, message: str
) -> None:
    error = _refusal(body, served)
    assert (error.status, error.kind, error.param) == (status, kind, param)
    assert error.message.startswith(message)
    assert error.body() == {
        "error": {"message": error.message, "type": kind, "param": param, "code": status}
    }


def test_ids_at_the_limit_and_in_the_vocabulary_are_accepted() -> None:
    asked = _parse({"input": [[0] * 8, [99]], "dimensions": 16}, MATRYOSHKA)
    assert (asked.token_ids, asked.dimensions) == (True, 16)
    assert _parse({"input": [[5, 7]], "dimensions": 63}, ANY_PREFIX).dimensions == 63
    # Texts are held to the limit once tokenized, by the batcher: not here.
    assert _parse({"input": "word " * 100}).inputs == ["word " * 100]


def test_bodies_that_do_not_parse() -> None:
    empty = _refusal(b"")
    assert (empty.kind, empty.param) == ("Bad Request", "body")
    assert empty.message == (
        "1 validation error:\n  {'type': 'missing', 'loc': 'body', 'msg': 'Field required', "
        "'input': 'None'}"
    )
    truncated = _refusal(b'{"input": "a"')
    assert truncated.param == "body.13"
    assert "'ctx': {'error': \"Expecting ',' delimiter\"}" in truncated.message


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, (False, None)),
        ({"matryoshka_dimensions": [64, 128, 768]}, (True, (64, 128, 768))),
        ({"is_matryoshka": True}, (True, None)),
        ({"is_matryoshka": False}, (False, None)),
        # An empty list does not make a model Matryoshka; with the flag it allows no size at all.
        ({"matryoshka_dimensions": []}, (False, ())),
        ({"matryoshka_dimensions": [], "is_matryoshka": True}, (True, ())),
        ({"matryoshka_dimensions": [64, "128"]}, (True, (64,))),
    ],
)
def test_which_models_are_matryoshka(config: dict[str, object], expected: object) -> None:
    assert matryoshka_of(config) == expected


def test_shorten_renormalises_only_for_a_normalising_model() -> None:
    vectors = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(shorten(vectors, 2, normalized=True), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_array_equal(shorten(vectors, 2, normalized=False), vectors[:, :2])
    assert shorten(vectors, 2, normalized=True).dtype == np.float32
    assert shorten(vectors, 2, normalized=True).flags["C_CONTIGUOUS"]
