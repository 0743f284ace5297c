"""Report rendering: the same rows as JSON, GitHub markdown and a plain-text rich table (the
HTML page has its own tests in test_report_html.py)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from embedsweep.errors import ConfigError
from embedsweep.report import NO_PRICES_NOTE, render, render_query


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


def _section(text: str, title: str) -> list[str]:
    """The lines of one ``## title`` section, without its heading and surrounding blank lines."""
    after = text.split(f"## {title}\n\n", 1)[1]
    return after.split("\n\n## ", 1)[0].strip("\n").splitlines()


def test_markdown_opens_with_sweeps_and_cell_counts() -> None:
    lines = render(ROWS, "markdown").splitlines()

    assert lines[:3] == [
        "# embedsweep report",
        "",
        "Sweeps: nightly · cells: 1 ok, 1 blocked, 0 failed · 2 rows",
    ]


def test_markdown_comparison_carries_every_figure() -> None:
    lines = _section(render(ROWS, "markdown"), "Comparison")

    assert lines[0] == (
        "| model | engine | dtype | pool | gpu | chunk | batch | mode | conc | offered rps "
        "| status | reason | rps | inputs/s | tok/s | p50 ms | p90 ms | p95 ms | p99 ms | max ms "
        "| mean ms | $/M tok | lag p99 ms | tok mismatch | usage counts | other cores | fidelity "
        "| min cosine |"
    )
    assert lines[1] == (
        "|---|---|---|---|---|---:|---:|---|---:|---:|---|---|"
        + "---:|" * 12
        + "---|---:|---|---:|"
    )
    assert lines[2] == (
        "| e5-base-v2 | vllm | - | a100 | NVIDIA A100 | 512 | 1 | - | 16 |  | ok | - | 812.3 "
        "| 812.3 | 415,921 | 4.57 | 9.10 | - | 123 | - | 5.00 | 0.0012 |  | 0 | - | - | - | - |"
    )
    assert lines[3].startswith(
        "| NV-Embed-v2 | hf (built-in; planned vllm) | - | a100 | NVIDIA A100 | 512 | 1 | - | - "
        "| - | "
        "blocked "
        "| unsupported_architecture | - |"
    )


def test_markdown_lists_blocked_cells_with_escaped_messages() -> None:
    lines = _section(render(ROWS, "markdown"), "Blocked and failed")

    # The pipe in the message is escaped so the table keeps its columns.
    assert lines[2] == (
        "| NV-Embed-v2 | hf (built-in; planned vllm) | a100 | 512 | blocked | "
        "unsupported_architecture "
        "| NVEmbedModel \\| not in vLLM's registry |"
    )


def test_markdown_peaks_take_the_fastest_level_per_series_and_chunk() -> None:
    rows = [
        row(concurrency=c, input_tokens_per_s=t, run_id="a")
        for c, t in ((1, 100.0), (4, 300.0), (16, 250.0))
    ]
    rows.append(row(chunk_size=128, concurrency=8, input_tokens_per_s=50.0, run_id="b"))
    lines = _section(render(rows, "markdown"), "Peak throughput")

    assert len(lines) == 4
    assert lines[2].startswith("| e5-base-v2 | vllm | - | a100 | 512 | 1 | - | 4 | 300 |")
    assert lines[3].startswith("| e5-base-v2 | vllm | - | a100 | 128 | 1 | - | 8 | 50 |")


def test_markdown_cost_lists_the_cheapest_level_or_says_no_prices() -> None:
    priced = [
        row(concurrency=1, cost_per_million_tokens=0.004, run_id="a"),
        row(concurrency=8, cost_per_million_tokens=0.002, run_id="a"),
    ]
    lines = _section(render(priced, "markdown"), "Cost")
    unpriced = _section(render([row(cost_per_million_tokens=None)], "markdown"), "Cost")

    assert len(lines) == 3
    assert lines[2].startswith(
        "| e5-base-v2 | vllm | - | a100 | 512 | 1 | 8 | 0.002 | 500,000,000 |"
    )
    assert unpriced == [NO_PRICES_NOTE]


def test_markdown_escapes_markup_in_names() -> None:
    text = render([row(model="<script>x</script> & co")], "markdown")

    assert "<script>" not in text
    assert "| &lt;script&gt;x&lt;/script&gt; &amp; co | vllm |" in text


def test_markdown_with_nothing_blocked_says_so() -> None:
    assert _section(render([row()], "markdown"), "Blocked and failed") == ["None."]


def test_markdown_of_no_rows_says_so() -> None:
    text = render([], "markdown")

    assert "Sweeps: - · cells: 0 ok, 0 blocked, 0 failed · 0 rows" in text
    assert _section(text, "Comparison") == ["No results."]
    assert _section(text, "Peak throughput") == ["No measured levels."]


def test_markdown_lists_a_failed_run_once_and_flags_invalid_levels() -> None:
    failed = [
        row(status="failed", reason="out_of_memory", message="CUDA OOM", concurrency=c, run_id="f")
        for c in (1, 2)
    ]
    text = render([row(valid=False), *failed], "markdown")

    assert "| ok* |" in text
    assert "ok* = the level ran but failed its validity checks" in text
    assert "cells: 1 ok, 0 blocked, 1 failed · 3 rows" in text
    blocked = "\n".join(_section(text, "Blocked and failed"))
    assert blocked.count("out_of_memory") == 1


def test_table_shows_formatted_numbers_and_blocked_cells() -> None:
    text = render(ROWS, "table", width=200)

    assert "\x1b[" not in text
    comparison, blocked = text.split("Blocked and failed")
    ok_line = next(line for line in comparison.splitlines() if "e5-base-v2" in line)
    assert ok_line.split() == [
        "e5-base-v2",
        "vllm",
        "-",
        "a100",
        "512",
        "16",
        "ok",
        "-",
        "812.3",
        "415,921",
        "4.57",
        "123",
        "-",
    ]
    assert "unsupported_architecture" in blocked
    assert "hf (built-in; planned vllm)" in blocked
    assert "NVEmbedModel | not in vLLM's registry" in blocked


def test_a_sweep_column_appears_only_when_rows_come_from_several_sweeps() -> None:
    both = [row(), row(sweep="local-cpu", sweep_run_id="s2", concurrency=4)]
    table = render(both, "table", width=200)
    header = next(line for line in table.splitlines() if "model" in line)
    assert header.split()[:2] == ["sweep", "model"]
    assert any(line.split()[:2] == ["local-cpu", "e5-base-v2"] for line in table.splitlines())
    comparison = _section(render(both, "markdown"), "Comparison")
    assert comparison[0].startswith("| sweep | model |")
    assert "<th>sweep</th>" in render(both, "html")

    one = render([row(), row(concurrency=4)], "table", width=200)
    assert next(line for line in one.splitlines() if "model" in line).split()[0] == "model"
    assert not _section(render([row()], "markdown"), "Comparison")[0].startswith("| sweep")


def test_table_of_no_rows_says_so() -> None:
    assert render([], "table").strip() == "No results."


@pytest.mark.parametrize(
    ("value", "shown"),
    [(float("nan"), "-"), (True, "-"), (1234.6, "1,235"), (7, "7.00"), (None, "-")],
)
def test_odd_values_render_as_missing_or_formatted(value: object, shown: str) -> None:
    text = render([row(p99_ms=value)], "table", width=200)

    ok_line = next(line for line in text.splitlines() if "e5-base-v2" in line)
    assert ok_line.split()[-3:] == ["4.57", shown, "-"]


def test_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown report format 'pdf'"):
        render(ROWS, "pdf")  # type: ignore[arg-type]


def test_servers_are_listed_once_with_the_chunk_sizes_they_served() -> None:
    from embedsweep.report import servers

    rows = [
        row(
            server_id="a",
            chunk_size=32,
            concurrency=1,
            engine_version="0.32.0",
            server_startup_s=38.2,
        ),
        row(
            server_id="a",
            chunk_size=32,
            concurrency=4,
            engine_version="0.32.0",
            server_startup_s=38.2,
        ),
        row(
            server_id="a",
            chunk_size=128,
            concurrency=1,
            engine_version="0.32.0",
            server_startup_s=38.2,
        ),
        row(server_id="b", engine="hf", chunk_size=32, server_startup_s=3.9),
        BLOCKED,
    ]
    listed = servers(rows)
    assert [(s["engine"], s["chunk_sizes"], s["server_startup_s"]) for s in listed] == [
        ("vllm 0.32.0", [32, 128], 38.2),
        ("hf", [32], 3.9),
    ]
    table = render(rows, "table", width=160)
    assert "Servers (one per model, engine and pool)" in table
    assert "vllm 0.32.0" in table
    assert "38.2" in table
    markdown = render(rows, "markdown")
    assert "## Servers" in markdown
    assert "| e5-base-v2 | vllm 0.32.0 | a100 | - | 32, 128 | - | 38.2 |" in markdown
    # Rows without a server (written before servers were shared) show no servers section.
    assert "Servers" not in render([row()], "table", width=160)


UNFAITHFUL = row(
    fidelity="failed",
    fidelity_failed=True,
    fidelity_min_cosine=0.3122535,
    fidelity_threshold=0.9999,
    fidelity_max_abs_diff=0.77,
    fidelity_invariance_min_cosine=1.0,
    fidelity_findings=[{"code": "vectors_differ", "message": "cosine 0.312254 ..."}],
    run_id="r-bad",
)
FAITHFUL = row(
    engine="hf",
    fidelity="passed",
    fidelity_failed=False,
    fidelity_min_cosine=0.99999994,
    fidelity_threshold=0.9999,
    fidelity_findings=[],
    run_id="r-good",
)


def test_a_fidelity_failure_never_reads_as_ok() -> None:
    table = render([UNFAITHFUL, FAITHFUL], "table", width=220)
    bad = next(line for line in table.splitlines() if "vllm" in line and "16" in line)
    good = next(line for line in table.splitlines() if " hf " in line and "16" in line)
    assert "fidelity_failed" in bad.split()
    assert "ok" not in bad.split()
    assert "FAIL 0.312254" in bad
    assert "ok" in good.split()  # the engine cell reads "hf (built-in)": two words
    assert good.split()[-1] == "pass"
    assert "fidelity_failed = the level ran, but the served vectors are not the model's" in table
    assert "Fidelity (served vectors vs a float32 CPU reference)" in table

    markdown = render([UNFAITHFUL, FAITHFUL], "markdown")
    fidelity = _section(markdown, "Fidelity")
    assert fidelity[4].startswith("| e5-base-v2 | vllm | a100 | 512 | failed | 0.312254 | 0.999900")
    assert fidelity[4].endswith("| vectors_differ |")
    assert "| fidelity_failed |" in "\n".join(_section(markdown, "Comparison"))
    # Peaks show it too: the fastest level is not a clean figure.
    assert "fidelity_failed" in "\n".join(_section(markdown, "Peak throughput"))


def test_a_clean_report_has_no_fidelity_note() -> None:
    text = render([FAITHFUL], "table", width=220)
    assert "fidelity_failed" not in text


def test_html_marks_the_row_the_series_and_lists_the_probe() -> None:
    page = render([UNFAITHFUL, FAITHFUL], "html")
    assert '<tr class="s-fidelity_failed">' in page
    assert 'id="fidelity"' in page
    assert "e5-base-v2 · vllm · a100 · sweep nightly (fidelity_failed)" in page
    assert "e5-base-v2 · hf · a100 (fidelity_failed)" not in page


def test_a_level_of_a_busy_host_is_flagged_and_a_quiet_one_is_not() -> None:
    busy = row(host_quiet=False, host_other_cpu_cores=0.97, run_id="busy")
    quiet = row(engine="hf", host_quiet=True, host_other_cpu_cores=0.01, run_id="quiet")
    table = render([busy, quiet], "table", width=220)
    lines = table.splitlines()
    assert "ok (busy host)" in next(line for line in lines if " vllm " in line)
    assert "busy host" not in next(line for line in lines if " hf " in line)
    assert "other processes kept more than a quarter of a core busy" in table
    markdown = render([busy, quiet], "markdown")
    assert "| ok (busy host) |" in markdown
    assert "| 0.97 |" in markdown
    assert "busy host" not in render([quiet], "markdown")


CLOSED = row(mode="closed", offered_rps=None, lag_p99_ms=0.0, run_id="closed")
OPEN = row(mode="open", concurrency=64, offered_rps=200.0, lag_p99_ms=1.234, run_id="open")


def _md_cells(markdown: str, model_rows: int) -> list[dict[str, str]]:
    lines = _section(markdown, "Comparison")
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    return [
        dict(zip(headers, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[2 : 2 + model_rows]
    ]


def _html_cells(page: str) -> list[dict[str, str]]:
    table = page.split('<table class="comparison">')[1].split("</table>")[0]
    headers = [re.sub("<[^>]+>|&shy;", "", h) for h in re.findall(r"<th>(.*?)</th>", table)]
    return [
        dict(zip(headers, re.findall(r"<td[^>]*>(.*?)</td>", tr), strict=True))
        for tr in re.findall(r"<tr class=[^>]*>(.*?)</tr>", table)
    ]


def test_a_closed_loop_level_leaves_the_open_loop_figures_empty_in_every_format() -> None:
    rows = [CLOSED, OPEN, BLOCKED]

    closed, opened, blocked = _md_cells(render(rows, "markdown"), 3)
    assert (closed["offered rps"], closed["lag p99 ms"]) == ("", "")
    assert (opened["offered rps"], opened["lag p99 ms"]) == ("200.0", "1.23")
    assert (blocked["offered rps"], blocked["lag p99 ms"]) == ("-", "-")

    closed, opened, blocked = _html_cells(render(rows, "html"))
    assert (closed["offered rps"], closed["lag p99 ms"]) == ("", "")
    assert (opened["offered rps"], opened["lag p99 ms"]) == ("200.0", "1.23")

    # The terminal table shows the open loop's columns when a row has an open loop.
    table = render(rows, "table", width=200).splitlines()
    header = next(line for line in table if "model" in line)
    assert "offered rps" in header
    assert "lag p99 ms" in header
    end = header.index("lag p99 ms") + len("lag p99 ms")
    closed_line, open_line = (line for line in table if " e5-base-v2 " in line)
    assert closed_line[end - len("lag p99 ms") : end].strip() == ""
    assert open_line[end - 4 : end] == "1.23"
    assert "0.00" not in closed_line
    assert "offered rps" not in render([CLOSED], "table", width=200)


def test_the_html_comparison_says_once_what_every_row_shares_and_drops_empty_columns() -> None:
    page = render([CLOSED, row(concurrency=4, p99_ms=200.0, run_id="closed")], "html")
    comparison = page.split('<section id="comparison">')[1]

    headers = re.findall(r"<th>(.*?)</th>", comparison.split("</thead>")[0])
    assert "conc" in headers
    for shared in ("model", "engine", "pool", "batch", "offered rps", "lag p99 ms"):
        assert shared not in headers
    assert "The same in every row: model e5-base-v2 · engine vllm · pool a100" in comparison
    left_out = comparison.split("Left out, no row has a figure for them: ")[1].split(".</p>")[0]
    assert {"offered rps", "reason", "p95 ms", "lag p99 ms"} <= set(left_out.split(", "))
    assert "p99 ms" in headers


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.99999994, "1.000"),
        (4.567891, "4.568"),
        (123.456, "123.5"),
        (415920.6, "415921"),
        (0.0012345, "0.001234"),
        (2.1e-07, "2.100e-07"),
        (0.0, "0"),
        (Decimal("1.50"), "1.500"),
        (float("nan"), "nan"),
        (512, "512"),
        (True, "true"),
        (None, ""),
        (datetime(2025, 3, 1, 9, 0, 0, 123456, tzinfo=UTC), "2025-03-01 09:00:00+00:00"),
        ({"context_overflow": 1}, '{"context_overflow": 1}'),
    ],
)
def test_sql_values_read_as_people_read_them(value: object, shown: str) -> None:
    lines = render_query(["v"], [[value]], width=80).splitlines()
    assert lines[2].strip() == shown
    assert lines[-1] == "(1 row)"


def test_sql_columns_that_do_not_fit_come_in_groups_with_row_numbers() -> None:
    columns = [f"a_rather_long_column_name_{i}" for i in range(6)]
    rows = [[i * 1.5, *range(5)] for i in range(3)]
    text = render_query(columns, rows, width=70)

    assert max(len(line) for line in text.splitlines()) <= 70
    assert text.count("columns ") + text.count("column ") >= 3
    for name in columns:
        assert name in text.split()
    assert text.rstrip().endswith("(3 rows)")
    first_group = text.split("\n\n")[0].splitlines()
    assert first_group[1].split()[0] == "#"
    assert [line.split()[0] for line in first_group[3:]] == ["1", "2", "3"]


def test_sql_folds_a_value_longer_than_the_line_and_keeps_it_whole() -> None:
    message = "x" * 150
    text = render_query(["run_id", "message"], [["r1", message]], width=60)

    assert max(len(line) for line in text.splitlines()) <= 60
    assert "".join(line.strip() for line in text.splitlines() if set(line.strip()) == {"x"}) in (
        message
    )
    assert sum(line.count("x") for line in text.splitlines()) == 150


def test_sql_with_no_rows_prints_its_headers() -> None:
    assert render_query(["model", "p99_ms"], [], width=80).splitlines() == [
        "model  p99_ms",
        "─────  ──────",
        "(0 rows)",
    ]


@pytest.mark.parametrize("width", [100, 72])
def test_the_terminal_table_fits_its_width_and_says_what_it_left_out(width: int) -> None:
    rows = [row(concurrency=c, run_id="r-ok") for c in (1, 4, 16)] + [BLOCKED]
    text = render(rows, "table", width=width)

    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    prose = " ".join(text.split())
    if width == 72:
        assert f"Left out to fit {width} columns: " in prose
        assert "No row has a figure for: dtype, fidelity." in prose
    assert "NVEmbedModel | not in vLLM's registry" in prose
