"""Two sweeps of one model, engine and pool in one DuckDB warehouse (the CPU sweep at concurrency
1, 4 and 16 and a later small sweep at 1 and 4, both at 32 tokens): the HTML report, made by the
real ``embedsweep report``, draws one line per sweep, each named after its sweep and holding only
that sweep's levels. It once drew one unlabelled line through the small sweep's c=1 and c=4 and
the CPU sweep's c=16."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from two_sweeps import (
    CPU_LEVELS,
    CPU_SWEEP,
    SHARED_CHUNK,
    SMALL_LEVELS,
    SMALL_SWEEP,
    build_warehouse,
)

pytestmark = pytest.mark.integration
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")

_CHART = re.compile(r'<svg class="chart".*?</svg>', re.S)
_TITLE = re.compile(r'<text class="chart-title"[^>]*>([^<]*)</text>')
_SERIES = re.compile(r'<g class="series" data-sweep="([^"]*)">(.*?)</g>', re.S)
_POINT = re.compile(r"<title>(.*?): concurrency ([\d.]+), [^<]*? ([\d,.]+)</title>")
_LEGEND = re.compile(r'<g class="legend-entry">.*?<text[^>]*>([^<]*)</text>', re.S)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_warehouse(tmp_path_factory.mktemp("two-sweeps"))


def _cli(*args: str) -> str:
    result = subprocess.run(
        [EMBEDSWEEP, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert match, section_id
    return match.group(1)


def _charts(section: str) -> dict[int, list[tuple[str, str, dict[float, float]]]]:
    """Per chunk size, the chart's series as (data-sweep, label, {concurrency: y})."""
    charts: dict[int, list[tuple[str, str, dict[float, float]]]] = {}
    for svg in _CHART.findall(section):
        title = _TITLE.search(svg)
        assert title, svg[:200]
        size = re.search(r"chunk (\d+) tokens", title.group(1))
        assert size, title.group(1)
        chunk = int(size.group(1))
        series = []
        for sweep, body in _SERIES.findall(svg):
            points = _POINT.findall(body)
            assert points, body[:200]
            labels = {label for label, _, _ in points}
            assert len(labels) == 1, labels
            series.append(
                (
                    sweep,
                    labels.pop(),
                    {float(x): float(y.replace(",", "")) for _, x, y in points},
                )
            )
        # Every line carries the sweep it was drawn from.
        assert svg.count('<g class="series"') == len(series), title.group(1)
        charts[chunk] = series
    return charts


@pytest.fixture(scope="module")
def page(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("html") / "report.html"
    _cli("report", "--warehouse", str(warehouse), "--format", "html", "--output", str(out))
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def measured(warehouse: Path) -> dict[tuple[str, int], dict[float, dict[str, float]]]:
    """What the warehouse holds: per (sweep, chunk), each concurrency's figures."""
    rows = json.loads(_cli("report", "--warehouse", str(warehouse), "--format", "json"))
    out: dict[tuple[str, int], dict[float, dict[str, float]]] = {}
    for row in rows:
        if row["status"] == "ok":
            out.setdefault((row["sweep"], row["chunk_size"]), {})[float(row["concurrency"])] = row
    return out


def test_each_throughput_line_is_one_sweep_and_names_it(
    page: str, measured: dict[tuple[str, int], dict[float, dict[str, float]]]
) -> None:
    charts = _charts(_section(page, "throughput"))
    assert set(charts) == {32, 128, 256}
    for chunk, series in charts.items():
        for sweep, label, points in series:
            # The label names the sweep the points come from, and no other.
            assert label.endswith(f"· sweep {sweep}"), label
            assert sweep in (CPU_SWEEP, SMALL_SWEEP)
            levels = measured[(sweep, chunk)]
            # Every level of that sweep, and nothing else: no point of the other sweep.
            assert set(points) == set(levels), (label, points)
            for x, y in points.items():
                assert y == pytest.approx(levels[x]["input_tokens_per_s"], abs=0.006), (label, x)
    shared = {sweep: points for sweep, _, points in charts[SHARED_CHUNK]}
    assert set(shared) == {CPU_SWEEP, SMALL_SWEEP}
    assert set(shared[CPU_SWEEP]) == {float(c) for c in CPU_LEVELS}
    assert set(shared[SMALL_SWEEP]) == {float(c) for c in SMALL_LEVELS}
    # The two sweeps measured different speeds at the same levels: the lines are apart.
    assert shared[SMALL_SWEEP][1.0] < shared[CPU_SWEEP][1.0]


def test_each_latency_line_is_one_sweep_and_the_legends_name_the_sweeps(
    page: str, measured: dict[tuple[str, int], dict[float, dict[str, float]]]
) -> None:
    charts = _charts(_section(page, "latency"))
    for chunk, series in charts.items():
        for sweep, label, points in series:
            percentile = label.rsplit(" ", 1)[1]
            assert label.endswith(f"· sweep {sweep} {percentile}"), label
            levels = measured[(sweep, chunk)]
            assert set(points) == set(levels), (label, points)
            for x, y in points.items():
                assert y == pytest.approx(levels[x][f"{percentile}_ms"], abs=0.006), (label, x)
    throughput = _section(page, "throughput")
    svg = next(s for s in _CHART.findall(throughput) if f"chunk {SHARED_CHUNK} tokens" in s)
    assert sorted(_LEGEND.findall(svg)) == [
        f"all-MiniLM-L6-v2 · hf · cpu · sweep {CPU_SWEEP}",
        f"all-MiniLM-L6-v2 · hf · cpu · sweep {SMALL_SWEEP}",
    ]
    assert "each line is one run of one sweep" in throughput


def test_peaks_and_the_comparison_keep_the_sweeps_apart(warehouse: Path) -> None:
    markdown = _cli("report", "--warehouse", str(warehouse), "--format", "markdown")
    peaks = markdown.split("## Peak throughput")[1].split("##")[0]
    rows = [line for line in peaks.splitlines() if line.startswith("| ") and "sweep" not in line]
    # One best level per sweep and chunk size: the CPU sweep's three, the small sweep's one.
    assert sorted((r.split("|")[1].strip(), r.split("|")[6].strip()) for r in rows) == [
        (CPU_SWEEP, "128"),
        (CPU_SWEEP, "256"),
        (CPU_SWEEP, "32"),
        (SMALL_SWEEP, "32"),
    ]
