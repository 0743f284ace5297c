"""The HTTP surface of the built-in server: an OpenAI-compatible ``/v1/embeddings`` (the shape
vLLM serves), ``/v1/models`` and ``/health``, as a Starlette app over a :class:`Batcher`.

``/v1/embeddings`` takes what the ``openai`` client and vLLM take: ``input`` as a string, a list
of strings, a list of token ids or a list of such lists (ids are embedded as given, counted
against the limit like texts); ``encoding_format`` ``float`` or ``base64`` (the client's
default); ``dimensions`` for a Matryoshka model (its config says ``matryoshka_dimensions`` or
``is_matryoshka``: the first N components, normalised again when the model normalises), refused
with a 400 otherwise, never ignored. Every error is vLLM's shape: ``{"error": {"message",
"type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embedsweep.hfserver.batcher import Batcher, ContextOverflow

__all__ = ["Served", "build_app"]


def _error(
    status: int, message: str, kind: str = "BadRequestError", param: str | None = None
) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


@dataclass(frozen=True)
class Served:
    """What the server knows about its model beyond the batcher."""

    dimension: int | None = None
    vocab_size: int | None = None
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] | None = None
    normalized: bool = True


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_input(value: Any) -> tuple[list[str] | list[list[int]], bool] | str:
    """(inputs, whether they are token ids), or why the input is not acceptable."""
    if isinstance(value, str):
        return [value], False
    if not isinstance(value, list) or not value:
        return "input must be a non-empty string, list of strings, or list(s) of token ids"
    if all(isinstance(v, str) for v in value):
        return value, False
    if all(_is_id(v) for v in value):
        return [value], True
    if all(isinstance(v, list) for v in value):
        if not all(v and all(_is_id(i) for i in v) for v in value):
            return "each token-id input must be a non-empty list of integers"
        return value, True
    return "input mixes strings, token ids and lists; send one kind"


def _dimensions_error(asked: object, served: Served, name: str) -> str | None:
    if not _is_id(asked):
        return f"dimensions must be an integer, got {asked!r}"
    if not served.matryoshka:
        return (
            f"Model {name!r} does not support Matryoshka embeddings; dimensions must be unset "
            f"(received dimensions={asked})."
        )
    size = served.dimension
    if size is not None and not 1 <= int(asked) <= size:  # type: ignore[call-overload]
        return f"Model {name!r} only supports dimensions in range [1, {size}], got {asked}."
    mds = served.matryoshka_dimensions
    if mds is not None and asked not in mds:
        return f"Model {name!r} only supports Matryoshka dimensions {list(mds)}, got {asked}."
    return None


def build_app(
    batcher: Batcher, *, served_name: str, api_key: str | None, served: Served | None = None
) -> Starlette:
    served = served or Served()

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": served_name,
                        "object": "model",
                        "owned_by": "embedsweep",
                        "max_model_len": batcher.max_input_tokens,
                    }
                ],
            }
        )

    async def batch_stats(_: Request) -> Response:
        # How much dynamic batching happened: inputs served and model batches run so far.
        return JSONResponse({"batches": batcher.batches, "inputs": batcher.inputs})

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    async def embeddings(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "Unauthorized", "AuthenticationError")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = body.get("model")
        if model not in (None, served_name):
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        parsed = _parse_input(body.get("input"))
        if isinstance(parsed, str):
            return _error(400, parsed, param="input")
        texts, ids = parsed
        if ids and served.vocab_size is not None:
            bad = [i for row in texts for i in row if not 0 <= int(i) < served.vocab_size]
            if bad:
                return _error(
                    400,
                    f"token id {bad[0]} is outside the vocabulary [0, {served.vocab_size})",
                    param="input",
                )
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            return _error(
                400,
                f"encoding_format {fmt!r} is not supported (float, base64)",
                param="encoding_format",
            )
        dimensions = body.get("dimensions")
        if dimensions is not None:
            why = _dimensions_error(dimensions, served, served_name)
            if why is not None:
                return _error(400, why, param="dimensions")
        try:
            result = await batcher.embed(texts, ids=ids)
        except ContextOverflow as exc:
            return _error(400, str(exc))
        vectors = result.vectors
        if dimensions is not None:
            vectors = np.ascontiguousarray(vectors[:, : int(dimensions)])
            if served.normalized:
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                vectors = vectors / np.maximum(norms, 1e-12)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
                    if fmt == "base64"
                    else vec.tolist()
                ),
            }
            for i, vec in enumerate(vectors)
        ]
        return JSONResponse(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": served_name,
                "data": data,
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "total_tokens": result.prompt_tokens,
                },
            }
        )

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/metrics/batches", batch_stats, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
