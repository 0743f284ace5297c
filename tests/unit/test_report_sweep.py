"""The sweep's problems artifact (markdown a Prefect UI renders, raw HTML included): every value
is escaped, the tables keep their shape, and the regressions query runs on a real warehouse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedsweep import report_sweep
from embedsweep.store import open_warehouse


def _row(**fields: Any) -> dict[str, Any]:
    base = {
        "sweep_name": "nightly",
        "cell_id": "c1",
        "run_id": "r1",
        "model": "minilm",
        "engine": "hf",
        "pool": "cpu",
        "chunk_size": 16,
        "concurrency": None,
        "status": "failed",
        "reason": "server_crashed",
        "message": "the server died\nsecond line",
    }
    return {**base, **fields}


def test_model_names_and_messages_are_escaped_not_rendered() -> None:
    rows = [_row(model="<script>alert(1)</script>", message="a|b <img src=x>\nmore")]

    text = report_sweep.problems_markdown(rows, [], 0.1)

    assert "<script>" not in text
    assert "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a\\|b &lt;img src=x&gt;" in text  # one line, the pipe kept out of the table's cells
    assert "more" not in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count(" | ") for line in table[:1] + table[2:]}) == 1  # same column count


def test_a_sweep_where_every_cell_ran_says_so_and_lists_regressions() -> None:
    found = [
        {
            "model": "minilm",
            "engine": "vllm",
            "engine_version": "0.32.0",
            "pool": "cpu",
            "chunk_size": 32,
            "concurrency": 4,
            "prev_input_tokens_per_s": 1000.0,
            "input_tokens_per_s": 800.0,
            "tokens_per_s_change": -0.2,
        }
    ]

    text = report_sweep.problems_markdown([_row(status="ok", concurrency=4)], found, 0.1)

    assert "Every cell ran." in text
    assert "## Regressions (input tokens/s down more than 10%)" in text
    assert "| minilm | vllm 0.32.0 | cpu | 32 | 4 | 1000 | 800 | -20.0% |" in text


def test_regressions_of_a_sweep_without_history_are_none(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    try:
        assert report_sweep.regressions(con, "no-such-sweep", 0.1) == []
    finally:
        con.close()
