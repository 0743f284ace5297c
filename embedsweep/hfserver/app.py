"""The HTTP surface of the built-in server: an OpenAI-compatible ``/v1/embeddings`` (the shape
vLLM serves), ``/v1/models`` and ``/health``, as a Starlette app over a :class:`Batcher`."""

from __future__ import annotations

import base64
import hmac
import json
import time
import uuid
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embedsweep.hfserver.batcher import Batcher, ContextOverflow

__all__ = ["build_app"]


def _error(status: int, message: str, kind: str = "BadRequestError") -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


def _parse_input(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def build_app(batcher: Batcher, *, served_name: str, api_key: str | None) -> Starlette:
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
        texts = _parse_input(body.get("input"))
        if texts is None:
            return _error(400, "input must be a non-empty string or list of strings")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return _error(400, f"encoding_format {fmt!r} is not supported (float, base64)")
        try:
            result = await batcher.embed(texts)
        except ContextOverflow as exc:
            return _error(400, str(exc))
        vectors = result.vectors
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
