"""Which cells share one engine server: every chunk size of a (model, engine, pool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedsweep.config import SweepSpec
from embedsweep.records import PreflightResult, Reason
from embedsweep.runner import CellPlan, group_cells


def _items(spec: dict[str, Any], tmp_path: Path) -> list[tuple[CellPlan, list[PreflightResult]]]:
    sweep = SweepSpec.model_validate(spec)
    out = []
    for cell in sweep.cells():
        plan = CellPlan(
            cell=cell, sweep_name="t", sweep_run_id="s", load=sweep.load, artifacts=tmp_path
        )
        blocked = cell.chunk_size > 256
        # A vllm cell at 64 tokens falls back to hf (as an unsupported architecture would).
        engine = (
            "hf" if (cell.engine_name == "vllm" and cell.chunk_size == 64) else cell.engine_name
        )
        check = PreflightResult(
            model=cell.model.display_name,
            engine=engine,
            engine_version=None,
            architecture="BertModel",
            chunk_size=cell.chunk_size,
            max_input_tokens=256,
            verdict="blocked" if blocked else "ok",
            reasons=[Reason(code="exceeds_context", severity="block", message="x")]
            if blocked
            else [],
        )
        out.append((plan, [check]))
    return out


def test_chunk_sizes_of_a_model_engine_and_pool_share_a_server(
    minimal_sweep: dict[str, Any], tmp_path: Path
) -> None:
    minimal_sweep["engines"] = ["hf", "vllm@0.32.0"]
    minimal_sweep["load"] = {"chunk_sizes": [32, 64, 128, 512], "concurrency": [1]}
    items = _items(minimal_sweep, tmp_path)
    labels = [
        [(items[i][0].cell.engine, items[i][0].cell.chunk_size) for i in g]
        for g in group_cells(items)
    ]
    assert labels == [
        # hf's three runnable sizes, and the vllm cell rerouted to hf joins hf's server.
        [("hf", 32), ("hf", 64), ("hf", 128), ("vllm@0.32.0", 64)],
        [("hf", 512)],  # blocked: no server
        [("vllm@0.32.0", 32), ("vllm@0.32.0", 128)],
        [("vllm@0.32.0", 512)],
    ]


def test_a_copied_server_log_is_redacted(tmp_path: Path) -> None:
    from embedsweep.engines.process import ServerProcess

    log = tmp_path / "first" / "server.log"
    log.parent.mkdir()
    log.write_text("server_args=... api_key='s3cret-key' ...\nready\n")
    server = ServerProcess(
        ["true"], env={}, log_path=log, host="127.0.0.1", port=1, secrets=("s3cret-key",)
    )
    other = tmp_path / "second"
    other.mkdir()
    server.copy_log(other / "server.log")
    copied = (other / "server.log").read_text()
    assert "s3cret-key" not in copied
    assert "api_key='***'" in copied
