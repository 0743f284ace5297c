"""The HTTP surface of the built-in server: an OpenAI-compatible ``/v1/embeddings`` (the shape
vLLM serves), ``/v1/models`` and ``/health``, as a Starlette app over a :class:`Batcher`.

What a request may hold and how it is refused is in :mod:`embedsweep.hfserver.request`. Every
error the app answers, an unknown path or a model failure included, has vLLM's body:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import hmac
import time
import uuid
from http import HTTPStatus

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embedsweep.hfserver.batcher import Batcher, ContextOverflow
from embedsweep.hfserver.request import (
    ApiError,
    Served,
    context_overflow,
    parse_request,
    shorten,
)

__all__ = ["build_app"]


def _answer(error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(_: Request, exc: Exception) -> Response:
    # Starlette's own errors (unknown path, wrong method) as vLLM words them: type is the phrase.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    phrase = HTTPStatus(status).phrase
    detail = exc.detail if isinstance(exc, HTTPException) else phrase
    return _answer(ApiError(status, str(detail), phrase))


async def _internal_error(_: Request, exc: Exception) -> Response:
    # A model failure: vLLM's 500 body. Starlette still logs the traceback to server.log.
    return _answer(ApiError(500, str(exc) or type(exc).__name__, "InternalServerError"))


def build_app(
    batcher: Batcher, *, served_name: str, api_key: str | None, served: Served
) -> Starlette:
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
            # vLLM itself answers {"error": "Unauthorized"}; here every error has one shape.
            return _answer(ApiError(401, "Unauthorized", "AuthenticationError"))
        try:
            asked = parse_request(
                await request.body(),
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
        if asked.encoding_format == "base64":
            encoded = [
                base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
                for vec in vectors
            ]
            data = [
                {"object": "embedding", "index": i, "embedding": text}
                for i, text in enumerate(encoded)
            ]
        else:
            data = [
                {"object": "embedding", "index": i, "embedding": vec.tolist()}
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
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
