"""What ``/v1/embeddings`` accepts, read the way vLLM 0.32 reads it, and the errors it answers.

Fields: ``model``, ``input`` (a string, a list of strings, a list of token ids, or a list of
lists of token ids), ``encoding_format`` (``float`` or ``base64``) and ``dimensions``; other
fields are ignored, as vLLM's request models ignore them.

Errors follow vLLM's two kinds. A request that does not parse (bad JSON, a field of the wrong
type) is what vLLM's request validation answers: ``type`` ``"Bad Request"``, ``param`` the field.
A well-formed request that vLLM refuses (``dimensions`` on a model that is not Matryoshka, no
prompt, an empty prompt, a token id out of vocabulary, an input over the limit) gets vLLM's own
message, ``type`` ``"BadRequestError"`` and vLLM's ``param`` (``input_tokens`` for an input over
the limit, none otherwise). Checks run in vLLM's order (so a request with two faults gets vLLM's
answer), except that a text is held to the limit last, by the batcher, once it is tokenized.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from embedsweep.hfserver.batcher import ContextOverflow

__all__ = [
    "ApiError",
    "EmbeddingsRequest",
    "Served",
    "context_overflow",
    "matryoshka_of",
    "parse_request",
    "shorten",
]

_INPUT_KINDS = "a string, a list of strings, a list of token ids or a list of lists of token ids"
# vLLM accepts these; the built-in server serves the first two (bytes are a vLLM extension).
_VLLM_FORMATS = ("float", "base64", "bytes", "bytes_only")


class ApiError(Exception):
    """An error answer: its HTTP status and the fields of vLLM's error body."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, dict[str, object]]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


def _malformed(message: str, param: str | None) -> ApiError:
    return ApiError(400, message, "Bad Request", param)


def _refused(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def context_overflow(exc: ContextOverflow) -> ApiError:
    """The answer to an input over the limit (vLLM names ``input_tokens`` as the param)."""
    return _refused(str(exc), "input_tokens")


@dataclass(frozen=True)
class Served:
    """What request validation needs to know about the served model."""

    dimension: int  # the length of a served vector
    vocab_size: int | None = None  # token ids must be in [0, vocab_size)
    # vLLM's rule: the config has a non-empty `matryoshka_dimensions` or a true `is_matryoshka`.
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] | None = None
    normalized: bool = True  # the model ends with a Normalize module


def matryoshka_of(config: Mapping[str, object]) -> tuple[bool, tuple[int, ...] | None]:
    """vLLM's rule (``ModelConfig.is_matryoshka``): a model is Matryoshka when its config.json has
    a non-empty ``matryoshka_dimensions`` or a true ``is_matryoshka``; the list, when there is
    one, is every dimension it may be shortened to."""
    listed = config.get("matryoshka_dimensions")
    # Entries that are not integers can never equal a requested dimension, as in vLLM.
    dims = tuple(d for d in listed if _is_int(d)) if isinstance(listed, list) else None
    return bool(listed) or bool(config.get("is_matryoshka")), dims


@dataclass(frozen=True)
class EmbeddingsRequest:
    inputs: list[str] | list[list[int]]
    token_ids: bool  # inputs are lists of token ids, embedded as given
    encoding_format: str  # "float" or "base64"
    dimensions: int | None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _validation_error(error: Mapping[str, object], param: str) -> ApiError:
    # The text vLLM's validation handler writes for one error (FastAPI's error dict, printed).
    return _malformed(f"1 validation error:\n  {error}", param)


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        missing = {"type": "missing", "loc": "body", "msg": "Field required", "input": "None"}
        raise _validation_error(missing, "body")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        invalid = {
            "type": "json_invalid",
            "loc": f"body.{exc.pos}",
            "msg": "JSON decode error",
            "input": "<dict of 0 items>",
            "ctx": {"error": exc.msg},
        }
        raise _validation_error(invalid, f"body.{exc.pos}") from exc
    except ValueError as exc:  # not UTF-8: FastAPI answers this for any unreadable body
        raise ApiError(400, "There was an error parsing the body", "Bad Request") from exc
    if not isinstance(body, dict):
        raise _malformed(f"the request body must be a JSON object, got {_kind(body)}", "body")
    return body


def _inputs(body: dict[str, Any]) -> tuple[list[str] | list[list[int]], bool]:
    if "input" not in body:
        raise _malformed(f"input is required: {_INPUT_KINDS}", "input")
    value = body["input"]
    if isinstance(value, str):
        return [value], False
    if not isinstance(value, list):
        raise _malformed(f"input must be {_INPUT_KINDS}, got {_kind(value)}", "input")
    if all(isinstance(v, str) for v in value):
        return value, False  # [] included: refused later, as vLLM refuses it
    if all(_is_int(v) for v in value):
        return [value], True
    if all(isinstance(v, list) for v in value):
        for n, row in enumerate(value):
            bad = next((i for i in row if not _is_int(i)), None)
            if bad is not None:
                raise _malformed(
                    f"input[{n}] must be a list of integer token ids, got {bad!r}", "input"
                )
        return value, True
    raise _malformed(
        "input mixes strings, token ids and lists of token ids; send one kind: " + _INPUT_KINDS,
        "input",
    )


def _encoding_format(body: dict[str, Any]) -> str:
    fmt = body.get("encoding_format", "float")
    if fmt in ("float", "base64"):
        return str(fmt)
    if fmt in _VLLM_FORMATS:
        raise _refused(
            f"encoding_format {fmt!r} is not served by the built-in server (float, base64)",
            "encoding_format",
        )
    raise _malformed(
        f"encoding_format must be one of {', '.join(_VLLM_FORMATS)}, got {fmt!r}",
        "encoding_format",
    )


def _check_dimensions(asked: int, served: Served, name: str) -> None:
    # vLLM's checks and texts, in its order (vllm/pooling_params.py).
    if not served.matryoshka:
        raise _refused(
            f"Model {name!r} does not support Matryoshka embeddings; dimensions must be unset "
            f"(received dimensions={asked})."
        )
    if not 1 <= asked <= served.dimension:
        raise _refused(
            f"Model {name!r} only supports dimensions in range [1, {served.dimension}], "
            f"got {asked}."
        )
    mds = served.matryoshka_dimensions
    if mds is not None and asked not in mds:
        raise _refused(
            f"Model {name!r} only supports Matryoshka dimensions {list(mds)}, got {asked}."
        )


def _check_token_ids(rows: list[list[int]], served: Served) -> None:
    # vLLM checks each prompt when the engine takes it: empty first, then the vocabulary.
    for row in rows:
        if not row:
            raise _refused("The decoder prompt cannot be empty")
        low, high = min(row), max(row)
        if low < 0:
            raise _refused(f"Token id {low} is out of vocabulary")
        if served.vocab_size is not None and high >= served.vocab_size:
            raise _refused(f"Token id {high} is out of vocabulary")


def parse_request(
    raw: bytes, *, served_name: str, served: Served, max_input_tokens: int
) -> EmbeddingsRequest:
    """The request in RAW, or the :class:`ApiError` vLLM would answer it with.

    Texts are checked against MAX_INPUT_TOKENS later, once tokenized (by the batcher); token
    ids are checked here, where vLLM checks them: before ``dimensions``.
    """
    body = _json_object(raw)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _malformed(f"model must be a string, got {_kind(model)}", "model")
    inputs, token_ids = _inputs(body)
    encoding_format = _encoding_format(body)
    dimensions = body.get("dimensions")
    if dimensions is not None and not _is_int(dimensions):
        raise _malformed(f"dimensions must be an integer, got {dimensions!r}", "dimensions")
    # An absent or empty model name means the served one, as in vLLM.
    if model and model != served_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
    if not inputs:
        raise _refused("You must pass at least one prompt")
    if token_ids:
        longest = max(len(row) for row in inputs)
        if longest > max_input_tokens:
            raise context_overflow(ContextOverflow(max_input_tokens, longest))
    if dimensions is not None:
        _check_dimensions(dimensions, served, served_name)
    if token_ids:
        _check_token_ids(cast(list[list[int]], inputs), served)
    return EmbeddingsRequest(inputs, token_ids, encoding_format, dimensions)


def shorten(
    vectors: npt.NDArray[np.float32], dimensions: int, normalized: bool
) -> npt.NDArray[np.float32]:
    """vLLM's Matryoshka step: the first DIMENSIONS components, then the model's normalisation
    (when it has one) applied to them, so a shortened vector of a normalising model is unit."""
    out = vectors[:, :dimensions]
    if normalized:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)  # torch's F.normalize eps, which vLLM uses
    return np.ascontiguousarray(out, dtype=np.float32)
