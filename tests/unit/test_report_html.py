"""The HTML report: one self-contained page whose charts, legends and tables follow the rows, with
nothing that would fetch from the network and every data string escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from embedsweep.report import NO_PRICES_NOTE, render
from embedsweep.report_html import LegendEntry, Line, bar_chart, line_chart

EVIL = '<script>alert("x")</script>'


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sweep": "nightly",
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
        "throughput_rps": 800.0,
        "inputs_per_s": 800.0,
        "input_tokens_per_s": 409600.0,
        "p50_ms": 4.5,
        "p90_ms": 9.0,
        "p95_ms": 12.0,
        "p99_ms": 20.0,
        "max_ms": 40.0,
        "mean_ms": 5.0,
        "valid": True,
        "prompt_tokens_mismatch": 0,
        "cost_per_million_tokens": 0.0012,
        "mode": "closed",
        "offered_rps": None,
        "lag_mean_ms": 0.0,
        "lag_p99_ms": 0.0,
        "run_id": "r1",
    }
    base.update(overrides)
    return base


def sweep(
    models: tuple[str, ...], chunks: tuple[int, ...], **overrides: Any
) -> list[dict[str, Any]]:
    return [
        row(
            model=model,
            chunk_size=chunk,
            concurrency=conc,
            input_tokens_per_s=1000.0 * conc,
            p50_ms=1.0 + conc,
            p90_ms=2.0 + conc,
            p99_ms=3.0 + conc,
            run_id=f"{model}-{chunk}",
            **overrides,
        )
        for model in models
        for chunk in chunks
        for conc in (1, 2, 4, 8)
    ]


BLOCKED = row(
    model="NV-Embed-v2",
    engine="hf",
    planned_engine="vllm",
    concurrency=None,
    status="blocked",
    reason="unsupported_architecture",
    message="NVEmbedModel is not in vLLM's registry",
    throughput_rps=None,
    inputs_per_s=None,
    input_tokens_per_s=None,
    p50_ms=None,
    p90_ms=None,
    p95_ms=None,
    p99_ms=None,
    max_ms=None,
    mean_ms=None,
    valid=None,
    cost_per_million_tokens=None,
    run_id="r-blocked",
)


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([a-z]+)">(.*?)</section>', page, flags=re.S))


def _count(page: str, css_class: str) -> int:
    return page.count(f'class="{css_class}"')


class _Checker(HTMLParser):
    """Collects the start tags an HTML parser sees: escaped data must not add any."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


FETCHING = ("http://", "https://", "<script", "<link", "@import", "url(", "<img", "<iframe")


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param([], id="empty"),
        pytest.param([BLOCKED], id="blocked-only"),
        pytest.param([row()], id="single-point"),
        pytest.param([*sweep(("a", "b"), (128, 512)), BLOCKED], id="sweep"),
        pytest.param([row(model=EVIL, message=EVIL, status="failed", reason=EVIL)], id="evil"),
    ],
)
def test_page_is_self_contained_and_parses(rows: list[dict[str, Any]]) -> None:
    page = render(rows, "html")

    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    for needle in FETCHING:
        assert needle not in lowered
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert "script" not in checker.tags
    assert checker.tags.count("svg") == page.count("<svg")


def test_one_throughput_and_one_latency_chart_per_chunk_size_and_a_cost_chart() -> None:
    page = render([*sweep(("a", "b", "c"), (128, 512, 2048)), BLOCKED], "html")
    parts = _sections(page)

    assert list(parts) == ["throughput", "latency", "cost", "problems", "comparison"]
    assert parts["throughput"].count("<svg") == 3
    assert parts["latency"].count("<svg") == 3
    assert parts["cost"].count("<svg") == 1
    # Throughput: one entry per series; latency: per series plus the three percentile dashes.
    assert _count(parts["throughput"], "legend-entry") == 3 * 3
    assert _count(parts["latency"], "legend-entry") == 3 * (3 + 3)
    # Three series times four levels on each throughput chart, three percentiles on latency.
    assert parts["throughput"].count("<circle") == 3 * 3 * 4
    assert parts["latency"].count("<circle") == 3 * 3 * 4 * 3
    # One cheapest bar per series and chunk size.
    assert _count(parts["cost"], "bar") == 9
    assert "Throughput · chunk 2048 tokens" in page


def test_header_counts_cells_not_levels() -> None:
    failed = [
        row(status="failed", reason="out_of_memory", concurrency=c, run_id="f") for c in (1, 2)
    ]
    page = render([*sweep(("a",), (512,)), BLOCKED, *failed], "html")
    header = page.split("</header>")[0]

    assert "Sweeps: nightly · 7 rows" in header
    assert '<li class="ok">1 ok</li>' in header
    assert '<li class="blocked">1 blocked</li>' in header
    assert '<li class="failed">1 failed</li>' in header


def test_blocked_only_has_no_charts_and_lists_the_reason() -> None:
    page = render([BLOCKED], "html")
    parts = _sections(page)

    assert "<svg" not in page
    assert "No measured load levels to plot." in parts["throughput"]
    assert "unsupported_architecture" in parts["problems"]
    assert "hf (built-in; planned vllm)" in parts["problems"]
    assert "NVEmbedModel is not in vLLM&#x27;s registry" in parts["problems"]
    assert '<li class="blocked">1 blocked</li>' in page


def test_single_point_still_gets_axes_and_a_legend() -> None:
    page = render([row()], "html")
    parts = _sections(page)

    assert parts["throughput"].count("<svg") == 1
    assert _count(parts["throughput"], "legend-entry") == 1
    # A lone concurrency of 16 sits on a linear axis from 0 to 20 in steps of 5.
    ticks = re.findall(r'text-anchor="middle">(\d+)</text>', parts["throughput"])
    assert ticks == ["0", "5", "10", "15", "20"]
    assert "concurrency</text>" in parts["throughput"]


def test_zero_prices_give_a_note_instead_of_a_cost_chart() -> None:
    page = render(sweep(("a",), (512,), cost_per_million_tokens=None), "html")
    cost = _sections(page)["cost"]

    assert "<svg" not in cost
    assert NO_PRICES_NOTE in cost


@pytest.mark.parametrize("odd", [None, float("nan"), float("inf"), True, "12"])
def test_non_numbers_are_left_out_of_charts_and_shown_as_dashes(odd: object) -> None:
    rows = sweep(("a",), (512,))
    rows[1] = {**rows[1], "input_tokens_per_s": odd, "p50_ms": odd, "cost_per_million_tokens": odd}
    page = render(rows, "html")
    parts = _sections(page)

    assert parts["throughput"].count("<circle") == 3
    assert parts["latency"].count("<circle") == 4 * 3 - 1
    assert "nan" not in page.lower()
    assert "inf<" not in page
    assert '<td class="num">-</td>' in parts["comparison"]


def test_data_strings_are_escaped_everywhere() -> None:
    rows = [*sweep((EVIL,), (512,)), row(model=EVIL, status="failed", reason=EVIL, message=EVIL)]
    page = render(rows, "html")

    assert EVIL not in page
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    # Legend, tooltips, blocked table (model, reason, message), comparison table and the bar label.
    assert page.count(escaped) >= 8


def test_open_loop_levels_plot_against_offered_rate() -> None:
    rows = [
        row(
            mode="open", concurrency=64, offered_rps=rate, input_tokens_per_s=rate * 500, run_id="o"
        )
        for rate in (100.0, 200.0, 400.0)
    ]
    page = render([*rows, *sweep(("a",), (512,))], "html")
    throughput = _sections(page)["throughput"]

    assert throughput.count("<svg") == 2
    assert "Throughput · chunk 512 tokens · open loop" in throughput
    assert "offered requests/s" in throughput


def test_line_chart_uses_a_log_axis_for_doubling_concurrency() -> None:
    line = Line("s", "#000", ((1.0, 1.0), (256.0, 2.0)))
    svg = line_chart("t", "concurrency", "y", [line], [LegendEntry("s", "#000")])

    assert "concurrency (log scale)" in svg
    ticks = re.findall(r'text-anchor="middle">(\d+)</text>', svg)
    assert ticks == ["1", "2", "4", "8", "16", "32", "64", "128", "256"]


def test_line_chart_of_all_zero_values_still_has_an_axis() -> None:
    line = Line("s", "#000", ((1.0, 0.0), (2.0, 0.0)))
    svg = line_chart("t", "x", "y", [line], [])

    assert 'cy="280.0"' in svg
    assert ">1</text>" in svg


def test_bar_chart_cuts_long_labels_but_keeps_them_in_the_title() -> None:
    label = "m" * 60
    svg = bar_chart("t", "$", [(label, 2.0, "#000", "note")])

    assert f"<title>{label}: note</title>" in svg
    assert ">" + "m" * 39 + "…</text>" in svg


@pytest.mark.parametrize(
    ("second", "tells_apart"),
    [
        pytest.param({"engine_version": "0.33.0"}, ("vllm 0.32.0", "vllm 0.33.0"), id="versions"),
        pytest.param({}, ("run r1", "run r2"), id="two-runs-of-a-cell"),
    ],
)
def test_two_runs_of_one_series_are_two_lines_told_apart(
    second: dict[str, Any], tells_apart: tuple[str, str]
) -> None:
    first = [
        row(concurrency=c, input_tokens_per_s=100.0 * c, run_id="r1", engine_version="0.32.0")
        for c in (1, 4)
    ]
    other = {"engine_version": "0.32.0", **second}
    later = [row(concurrency=16, input_tokens_per_s=50.0, run_id="r2", **other)]
    throughput = _sections(render([*first, *later], "html"))["throughput"]

    lines = re.findall(r'<g class="series"[^>]*><polyline points="([^"]*)"', throughput)
    assert sorted(len(points.split()) for points in lines) == [1, 2]
    for label in tells_apart:
        assert f"sweep nightly · {label}</text>" in throughput
