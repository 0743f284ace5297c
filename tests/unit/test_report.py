"""Report rendering: the same rows as JSON, GitHub markdown and a plain-text rich table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from embedsweep.errors import ConfigError
from embedsweep.report import render


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sweep": "nightly",
        "sweep_run_id": "s1",
        "model": "e5-base-v2",
        "engine": "vllm",
        "planned_engine": "vllm",
        "pool": "a100",
        "gpu_model": "NVIDIA A100",
        "chunk_size": 512,
        "batch_size": 1,
        "concurrency": 16,
        "status": "ok",
        "reason": None,
        "message": None,
        "requests": 2000,
        "ok": 2000,
        "errors": 0,
        "throughput_rps": 812.345,
        "inputs_per_s": 812.345,
        "input_tokens_per_s": 415920.6,
        "p50_ms": 4.567,
        "p90_ms": 9.1,
        "p99_ms": 123.456,
        "mean_ms": 5.0,
        "prompt_tokens_mismatch": 0,
        "valid": True,
        "cost_per_million_tokens": 0.0012,
        "run_id": "r-ok",
    }
    base.update(overrides)
    return base


BLOCKED = row(
    model="NV-Embed-v2",
    engine="hf",
    planned_engine="vllm",
    concurrency=None,
    status="blocked",
    reason="unsupported_architecture",
    message="NVEmbedModel | not in vLLM's registry",
    requests=None,
    ok=None,
    errors=None,
    throughput_rps=None,
    inputs_per_s=None,
    input_tokens_per_s=None,
    p50_ms=None,
    p90_ms=None,
    p99_ms=None,
    mean_ms=None,
    prompt_tokens_mismatch=None,
    valid=None,
    cost_per_million_tokens=None,
    run_id="r-blocked",
)
ROWS = [row(), BLOCKED]


def test_json_round_trips_the_rows() -> None:
    text = render(ROWS, "json")

    assert json.loads(text) == ROWS
    assert text.startswith('[\n  {\n    "sweep": "nightly"')


def test_markdown_has_a_comparison_table_and_a_blocked_section() -> None:
    lines = render(ROWS, "markdown").splitlines()

    header = (
        "| model | engine | pool | chunk | conc | status | reason | rps | tok/s | p50 ms | p99 ms |"
    )
    assert lines[:4] == [
        "## Comparison",
        "",
        header,
        "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    assert lines[4] == (
        "| e5-base-v2 | vllm | a100 | 512 | 16 | ok | - | 812.3 | 415,921 | 4.57 | 123.5 |"
    )
    assert lines[5] == (
        "| NV-Embed-v2 | hf | a100 | 512 | - | blocked | unsupported_architecture | - | - | - | - |"
    )
    blocked_at = lines.index("## Blocked and failed")
    assert blocked_at > 5
    # The pipe in the message is escaped so the table keeps its columns.
    assert lines[blocked_at + 4] == (
        "| NV-Embed-v2 | hf (planned vllm) | a100 | 512 | blocked | unsupported_architecture "
        "| NVEmbedModel \\| not in vLLM's registry |"
    )


def test_markdown_with_nothing_blocked_says_so() -> None:
    text = render([row()], "markdown")

    assert text.endswith("## Blocked and failed\n\nNone.\n")


def test_markdown_lists_a_failed_run_once_and_flags_invalid_levels() -> None:
    failed = [
        row(status="failed", reason="out_of_memory", message="CUDA OOM", concurrency=c, run_id="f")
        for c in (1, 2)
    ]
    text = render([row(valid=False), *failed], "markdown")

    assert "| ok* |" in text
    assert "ok* = the level ran but failed its validity checks" in text
    blocked = text.split("## Blocked and failed")[1]
    assert blocked.count("out_of_memory") == 1


def test_table_shows_formatted_numbers_and_blocked_cells() -> None:
    text = render(ROWS, "table", width=200)

    assert "\x1b[" not in text
    comparison, blocked = text.split("Blocked and failed")
    ok_line = next(line for line in comparison.splitlines() if "e5-base-v2" in line)
    assert ok_line.split() == [
        "e5-base-v2",
        "vllm",
        "a100",
        "512",
        "16",
        "ok",
        "-",
        "812.3",
        "415,921",
        "4.57",
        "123.5",
    ]
    assert "unsupported_architecture" in blocked
    assert "hf (planned vllm)" in blocked
    assert "NVEmbedModel | not in vLLM's registry" in blocked


def test_table_of_no_rows_says_so() -> None:
    assert render([], "table").strip() == "No results."


@pytest.mark.parametrize(
    ("value", "shown"),
    [(float("nan"), "-"), (True, "-"), (1234.5, "1,234.5"), (7, "7.00"), (None, "-")],
)
def test_odd_values_render_as_missing_or_formatted(value: object, shown: str) -> None:
    text = render([row(p99_ms=value)], "markdown")

    assert text.splitlines()[4].endswith(f"| 4.57 | {shown} |")


def test_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown report format 'html'"):
        render(ROWS, "html")  # type: ignore[arg-type]
