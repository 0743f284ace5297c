"""The HTTP surface of the built-in server: an OpenAI-compatible ``/v1/embeddings`` (the shape
vLLM serves), ``/v1/models``, ``/health``, ``/metrics/batches`` and ``/embedsweep/info`` (how the
server placed its work), as one handler over a :class:`Batcher`, served by
:mod:`embedsweep.hfserver.http`.

What a request may hold and how it is refused is in :mod:`embedsweep.hfserver.request`. Every
error the handler answers, an unknown path or a model failure included, has vLLM's body:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from embedsweep.hfserver.batcher import Batcher, ContextOverflow
from embedsweep.hfserver.http import Handler, Reply, Request, error_reply
from embedsweep.hfserver.request import (
    ApiError,
    Served,
    context_overflow,
    parse_request,
    shorten,
)

__all__ = ["build_app"]

# Path -> the one method it answers.
_ROUTES = {
    "/health": "GET",
    "/v1/models": "GET",
    "/metrics/batches": "GET",
    "/embedsweep/info": "GET",
    "/v1/embeddings": "POST",
}


def _answer(error: ApiError) -> Reply:
    return Reply(error.status, json.dumps(error.body()).encode())


def _json(payload: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode())


def _http_error(status: int) -> Reply:
    # Errors of the HTTP layer (unknown path, wrong method) as vLLM words them: type is the phrase.
    phrase = HTTPStatus(status).phrase
    return error_reply(status, phrase, phrase)


def _counts(batcher: Batcher) -> dict[str, object]:
    return {
        "batches": batcher.batches,
        "inputs": batcher.inputs,
        "model_busy_s": round(batcher.busy_s, 6),
    }


def _models(served_name: str, max_input_tokens: int) -> Reply:
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "id": served_name,
                    "object": "model",
                    "owned_by": "embedsweep",
                    "max_model_len": max_input_tokens,
                }
            ],
        }
    )


def _embedding_data(vectors: npt.NDArray[Any], encoding_format: str) -> list[dict[str, object]]:
    """The response's ``data``: one entry per vector, as base64 or as floats."""
    if encoding_format == "base64":
        little = np.ascontiguousarray(vectors, dtype="<f4")
        return [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(row.tobytes()).decode(),
            }
            for i, row in enumerate(little)
        ]
    # float64 rows: orjson writes each float32 value's exact float64 repr, the numbers
    # json.dumps(row.tolist()) writes (and vLLM's tolist() of its float32 output; NaN
    # and infinities excepted: null, valid JSON), at a tenth of the cost (~14 us a
    # 384-wide vector against ~180: the front end's largest cost per request, and the
    # model waits for it after every batch).
    wide = np.asarray(vectors, dtype=np.float64)
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(wide)]


def _embeddings_reply(served_name: str, data: list[dict[str, object]], prompt_tokens: int) -> Reply:
    body = {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": served_name,
        "data": data,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
        },
    }
    return Reply(200, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def build_app(
    batcher: Batcher,
    *,
    served_name: str,
    api_key: str | None,
    served: Served,
    info: Callable[[], dict[str, object]] | None = None,
) -> Handler:
    expected = f"Bearer {api_key}".encode() if api_key else b""

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "").encode("latin-1")
        return hmac.compare_digest(given, expected)

    async def embeddings(request: Request) -> Reply:
        if not authorized(request):
            # vLLM itself answers {"error": "Unauthorized"}; here every error has one shape.
            return _answer(ApiError(401, "Unauthorized", "AuthenticationError"))
        try:
            asked = parse_request(
                request.body,
                served_name=served_name,
                served=served,
                max_input_tokens=batcher.max_input_tokens,
            )
            result = await batcher.embed(asked.inputs, ids=asked.token_ids)
        except ApiError as exc:
            return _answer(exc)
        except ContextOverflow as exc:
            return _answer(context_overflow(exc))
        vectors = result.vectors
        if asked.dimensions is not None:
            vectors = shorten(vectors, asked.dimensions, served.normalized)
        data = _embedding_data(vectors, asked.encoding_format)
        return _embeddings_reply(served_name, data, result.prompt_tokens)

    async def handle(request: Request) -> Reply:
        method = _ROUTES.get(request.path)
        if method is None:
            return _http_error(404)
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            return _http_error(405)
        if request.path == "/v1/embeddings":
            return await embeddings(request)
        if request.path == "/health":
            return Reply(200, b"")
        if request.path == "/v1/models":
            return _models(served_name, batcher.max_input_tokens)
        if request.path == "/metrics/batches":
            # How much dynamic batching happened: inputs served and model batches run so far, and
            # the model thread's seconds in them (its idle time is the rest).
            return _json(_counts(batcher))
        # /embedsweep/info: how the server placed its work (threads, dtype, runtime).
        about = info() if info is not None else {}
        return _json({**about, **_counts(batcher)})

    return handle
