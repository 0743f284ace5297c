"""Calls on a running built-in server shared by its integration tests (this folder is on
sys.path): what ``/embedsweep/info`` says, and the vectors ``/v1/embeddings`` serves."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np

from embedsweep.engines.process import ServerProcess
from embedsweep.harness import server_info

API_KEY = "test-key-not-secret"


def served_info(server: ServerProcess) -> dict[str, Any]:
    """``/embedsweep/info`` (the harness's own reader); a server that does not answer fails."""
    about = server_info(server.url, timeout_s=10)
    assert about is not None, f"{server.url}/embedsweep/info did not answer"
    return about


def embed(server: ServerProcess, inputs: list[str] | list[list[int]]) -> np.ndarray:
    """The served vectors of INPUTS (texts, or token ids as given), as float64 rows."""
    request = urllib.request.Request(
        f"{server.url}/v1/embeddings",
        data=json.dumps({"input": inputs}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = json.load(answer)
    return np.asarray([d["embedding"] for d in body["data"]], dtype=np.float64)
