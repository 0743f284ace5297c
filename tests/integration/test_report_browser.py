"""The HTML report in a real browser: headless Chromium renders it with every network route
blocked, takes a screenshot that must show more than a blank page, and its DOM must hold the
charts. Needs Debian's chromium (``apt-get install -y chromium``)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from two_sweeps import build_warehouse

from embedsweep.report import render
from embedsweep.store import open_warehouse, report_rows

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
# (model, engine, pool, gpu, $/GPU-hour, peak tokens/s at chunk 512)
SERIES = (
    ("e5-base-v2", "vllm", "h100", "NVIDIA H100", 2.5, 900_000.0),
    ("e5-base-v2", "tei", "h100", "NVIDIA H100", 2.5, 700_000.0),
    ("bge-m3", "vllm", "a10g", "NVIDIA A10G", 1.0, 150_000.0),
    ("<script>alert(1)</script>", "hf", "cpu", "cpu", 0.0, 8_000.0),
)


def _level(
    model: str, engine: str, pool: str, gpu: str, price: float, peak: float, chunk: int, conc: int
) -> dict[str, Any]:
    # Saturating throughput and latency that grows with queueing: the shape a real sweep has.
    tokens = peak * (chunk / 512) ** 0.3 * conc / (conc + 6)
    inputs = tokens / chunk
    p50 = 1000 * conc / inputs if inputs else None
    return {
        "sweep": "nightly",
        "sweep_run_id": "s1",
        "model": model,
        "engine": engine,
        "planned_engine": engine,
        "pool": pool,
        "gpu_model": gpu,
        "chunk_size": chunk,
        "batch_size": 1,
        "concurrency": conc,
        "status": "ok",
        "reason": None,
        "message": None,
        "throughput_rps": inputs,
        "inputs_per_s": inputs,
        "input_tokens_per_s": tokens,
        "p50_ms": p50,
        "p90_ms": p50 * 1.4 if p50 else None,
        "p95_ms": p50 * 1.7 if p50 else None,
        "p99_ms": p50 * 2.5 if p50 else None,
        "max_ms": p50 * 4 if p50 else None,
        "mean_ms": p50 * 1.1 if p50 else None,
        "prompt_tokens_mismatch": 0,
        "valid": True,
        "cost_per_million_tokens": price / 3600 / tokens * 1e6 if price else None,
        "mode": "closed",
        "offered_rps": None,
        "lag_mean_ms": 0.0,
        "lag_p99_ms": 0.0,
        "run_id": f"r-{model}-{engine}-{pool}-{chunk}",
    }


def _rows() -> list[dict[str, Any]]:
    rows = [
        _level(*series, chunk, conc)
        for series in SERIES
        for chunk in (128, 512)
        for conc in CONCURRENCY
    ]
    blocked = {
        **rows[0],
        "model": "NV-Embed-v2",
        "engine": "hf",
        "planned_engine": "vllm",
        "concurrency": None,
        "status": "blocked",
        "reason": "unsupported_architecture",
        "message": "NVEmbedModel is not in vLLM's registry",
        "run_id": "r-blocked",
    }
    failed = {
        **rows[0],
        "pool": "a10g",
        "status": "failed",
        "reason": "out_of_memory",
        "message": "CUDA out of memory at concurrency 64",
        "run_id": "r-failed",
    }
    return [*rows, blocked, failed]


def _png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and the number of distinct pixel rows in a PNG, decoded with zlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = depth = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    channels = {2: 3, 6: 4, 0: 1, 4: 2}[colour]
    stride = width * channels * depth // 8 + 1
    # Filtered scanlines are not pixels, but a page of one colour filters to identical lines:
    # distinct lines count how much is drawn without unfiltering every row.
    lines = {raw[i * stride + 1 : (i + 1) * stride] for i in range(height)}
    return width, height, len(lines)


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            # Every host resolves to nothing and any connection goes to a closed port: the page
            # must render from its own bytes.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render(_rows(), "html"), encoding="utf-8")
    return path


def test_report_renders_to_a_screenshot_without_network(report_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"

    done = _chromium(
        f"--screenshot={png}",
        "--window-size=1400,2400",
        report_file.as_uri(),
        profile=tmp_path / "profile",
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert png.stat().st_size > 50_000
    width, height, distinct = _png_size_and_colours(png)
    assert (width, height) == (1400, 2400)
    assert distinct > 500
    # Kept next to the test's tmp files so a person can look at it after a run.
    shutil.copy(png, report_file.with_suffix(".png"))


def test_dumped_dom_holds_the_charts_and_escaped_names(report_file: Path, tmp_path: Path) -> None:
    done = _chromium("--dump-dom", report_file.as_uri(), profile=tmp_path / "profile")

    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # Two chunk sizes: throughput and latency each, plus the cost chart.
    assert dom.count("<svg") == 5
    assert dom.count('class="legend-entry"') == 2 * 4 + 2 * (4 + 3)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script>alert(1)" not in dom
    assert "unsupported_architecture" in dom
    assert "out_of_memory" in dom


# Added to a copy of a page, never to the report (which has no scripts): after layout, the
# widths that say whether the comparison table fits the window.
_MEASURE = """<script>addEventListener("load", () => {
  const table = document.querySelector("table.comparison"), box = table.parentElement;
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({
    window: document.documentElement.clientWidth, page: document.documentElement.scrollWidth,
    right: table.getBoundingClientRect().right, box: box.clientWidth, inside: box.scrollWidth});
  document.body.appendChild(out);
});</script>"""


def _open_loop_and_fidelity_rows() -> list[dict[str, Any]]:
    """The GPU rows with every column the comparison has filled in: open-loop levels (offered
    rate, lag), fidelity verdicts, Infinity's usage rule and the host's other cores."""
    rows = _rows()
    for i, row in enumerate(rows):
        row["fidelity"] = "passed"
        row["fidelity_min_cosine"] = 0.99999 + i * 1e-8
        row["usage_counting"] = "tokens_without_special" if row["engine"] == "tei" else "tokens"
        row["host_other_cpu_cores"] = 0.01 * (i % 7)
        if row["engine"] == "tei" and row["chunk_size"] == 512:
            row.update(mode="open", offered_rps=250.0 * (1 + i % 7), lag_p99_ms=0.5 + i % 3)
    return rows


def _warehouse_rows(root: Path) -> list[dict[str, Any]]:
    con = open_warehouse(build_warehouse(root), read_only=True)
    try:
        return report_rows(con)
    finally:
        con.close()


@pytest.mark.parametrize("case", ["gpu sweep", "open loop and fidelity", "two sweeps"])
def test_the_comparison_table_fits_a_1400_px_window(
    report_file: Path, tmp_path: Path, case: str
) -> None:
    rows = {
        "gpu sweep": _rows,
        "open loop and fidelity": _open_loop_and_fidelity_rows,
        "two sweeps": lambda: _warehouse_rows(tmp_path),
    }[case]()
    page = tmp_path / "measured.html"
    page.write_text(render(rows, "html").replace("</body>", _MEASURE + "</body>"), "utf-8")

    done = _chromium(
        "--window-size=1400,2000",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
        profile=tmp_path / "profile",
    )

    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    measured = json.loads(found.group(1))
    # No horizontal scrolling: not the page's, not the table's own box.
    assert measured["page"] <= measured["window"], measured
    assert measured["inside"] <= measured["box"], measured
    assert measured["right"] <= measured["window"], measured
