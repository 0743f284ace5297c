"""A server that dies before it is healthy is classified from its own log (real subprocesses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsweep.engines.process import ServerProcess, free_port
from embedsweep.errors import ServerError


@pytest.mark.parametrize(
    ("output", "code", "transient"),
    [
        ("ERROR:    [Errno 98] error while attempting to bind on address: address already in use",
         "port_in_use", True),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
         "out_of_memory", False),
        ("ValueError: Model architectures ['NVEmbedModel'] are not supported for now.",
         "unsupported_architecture", False),
        ("something unexpected", "server_crashed", False),
    ],
)  # fmt: skip
def test_early_exit_is_diagnosed(tmp_path: Path, output: str, code: str, transient: bool) -> None:
    secret = "sk-do-not-print"
    script = f"echo {secret} >/dev/null; printf '%s\\n' \"$0\"; exit 1"
    server = ServerProcess(
        ["sh", "-c", script, output],
        env={},
        log_path=tmp_path / "server.log",
        host="127.0.0.1",
        port=free_port(),
        secrets=(secret,),
    )
    with server, pytest.raises(ServerError) as err:
        server.wait_healthy(30)
    assert err.value.code == code
    assert err.value.transient is transient
    assert secret not in str(err.value)
    if code != "server_crashed":
        assert output in str(err.value)  # the deciding line is the evidence
