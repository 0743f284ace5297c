"""One precision per comparison: the dtype rule, the mismatch finding, the report's note and
legend, and the warehouse columns (a real DuckDB file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from embedsweep import precision
from embedsweep.hfserver.placement import choose
from embedsweep.report import render
from embedsweep.report_model import notes, precision_note
from embedsweep.store import ingest_run, open_warehouse, query, report_rows

sys.path.insert(0, str(Path(__file__).parent))
from test_report import row
from test_store import manifest, write_run


@pytest.mark.parametrize(
    ("asked", "on_gpu", "stored", "bf16", "want"),
    [
        ("auto", False, "float32", True, "bfloat16"),  # native bfloat16 CPU
        ("auto", False, "bfloat16", False, "float32"),  # emulated half precision: float32
        ("auto", True, "float32", False, "float16"),  # a float32 checkpoint on a GPU
        ("auto", True, "bfloat16", False, "bfloat16"),  # the checkpoint's own half precision
        ("auto", True, "float16", True, "float16"),
        ("float32", True, "bfloat16", True, "float32"),  # a pin is passed as given
        ("float16", False, "float32", True, "float16"),
    ],
)
def test_auto_resolves_once_to_a_concrete_dtype(
    asked: str, on_gpu: bool, stored: str, bf16: bool, want: str
) -> None:
    assert precision.resolve(asked, on_gpu=on_gpu, stored_dtype=stored, bf16=bf16) == want


def test_the_built_in_server_follows_the_same_rule() -> None:
    for bf16 in (True, False):
        expected = precision.resolve("auto", on_gpu=False, bf16=bf16)
        assert choose("cpu", "auto", cores=2, bf16=bf16).dtype == expected
    assert choose("cuda", "auto", stored_dtype="bfloat16", cores=4).dtype == "bfloat16"


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"model name\t: Test CPU\nflags\t\t: fpu sse2 avx512f {flags}\n")
    return path


def test_bfloat16_is_chosen_on_a_cpu_only_where_a_measured_matmul_says_it_is_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(precision.CPU_DTYPE_ENV, raising=False)
    state = tmp_path / "state"
    # No native bfloat16: float32, and nothing measured.
    assert not precision.cpu_bf16_pays(state, _cpuinfo(tmp_path, "avx512bw"))
    assert not (state / precision.PROBE_FILE).exists()
    # Native: both precisions timed once, the answer kept with the timings.
    native = _cpuinfo(tmp_path, "avx512_bf16")
    answer = precision.cpu_bf16_pays(state, native)
    kept = json.loads((state / precision.PROBE_FILE).read_text())
    [(key, entry)] = kept.items()
    assert key.startswith("Test CPU | ")
    assert " cores | torch " in key
    assert entry["float32_ms"] > 0
    assert entry["bfloat16_ms"] > 0
    assert answer is entry["bfloat16_pays"]
    assert answer == (entry["float32_ms"] >= 1.1 * entry["bfloat16_ms"])
    # The kept answer is read, not measured again: flipped in the file, flipped in the answer.
    entry["bfloat16_pays"] = not answer
    (state / precision.PROBE_FILE).write_text(json.dumps(kept))
    assert precision.cpu_bf16_pays(state, native) is (not answer)
    # A damaged file is measured again and rewritten.
    (state / precision.PROBE_FILE).write_text("{not json")
    assert precision.cpu_bf16_pays(state, native) is answer
    assert json.loads((state / precision.PROBE_FILE).read_text())[key]["bfloat16_pays"] is answer


def test_the_environment_decides_the_cpu_precision_without_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    for forced, want in (("bfloat16", True), ("float32", False)):
        monkeypatch.setenv(precision.CPU_DTYPE_ENV, forced)
        assert precision.cpu_bf16_pays(state, _cpuinfo(tmp_path, "avx512_bf16")) is want
        assert precision.resolve("auto", on_gpu=False) == forced
        assert precision.resolve("auto", on_gpu=True, stored_dtype="float32") == "float16"
    assert not state.exists()


def test_a_served_dtype_other_than_the_started_one_is_a_finding() -> None:
    assert precision.served_mismatch("bfloat16", "bfloat16") is None
    assert precision.served_mismatch("bfloat16", None) is None  # the engine did not say
    assert precision.served_mismatch("auto", "float16") is None  # nothing was asked
    assert precision.served_mismatch("bfloat16", "float32") == (
        "started with --dtype bfloat16 but served float32"
    )


def _pair(hf: str, vllm: str) -> list[dict[str, object]]:
    return [
        row(engine="hf", dtype=hf, run_id="r-hf"),
        row(engine="vllm", dtype=vllm, run_id="r-vllm"),
    ]


def test_rows_at_one_dtype_get_no_note_and_rows_at_two_get_one() -> None:
    assert precision_note(_pair("bfloat16", "bfloat16")) is None
    note = precision_note(_pair("bfloat16", "float16"))
    assert note is not None
    assert "e5-base-v2 was served as hf bfloat16, vllm float16" in note
    assert note in notes(_pair("bfloat16", "float16"))
    # Blocked rows and other chunk sizes are not a comparison at two precisions.
    blocked = row(engine="vllm", dtype="float16", status="blocked", concurrency=None)
    assert precision_note([row(engine="hf", dtype="bfloat16"), blocked]) is None
    other = row(engine="vllm", dtype="float16", chunk_size=32)
    assert precision_note([row(engine="hf", dtype="bfloat16"), other]) is None


def test_an_engine_that_ignored_the_request_is_named() -> None:
    rows = [
        row(
            engine="hf",
            dtype="float32",
            dtype_note="started with --dtype bfloat16 but served float32",
        )
    ]
    note = precision_note(rows)
    assert note is not None
    assert "hf started with --dtype bfloat16 but served float32" in note


def test_every_format_carries_the_dtype() -> None:
    rows = _pair("bfloat16", "float16")
    assert "| dtype |" in render(rows, "markdown")
    assert all(r["dtype"] for r in __import__("json").loads(render(rows, "json")))
    table = render(rows, "table", width=200)
    assert "dtype" in table
    assert "float16" in table
    assert "Mixed precision" in table
    html = render(rows, "html")
    assert "Mixed precision" in html
    # The chart legend names each line's dtype where two lines differ.
    assert "vllm · a100 · sweep nightly · float16" in html
    same = render(_pair("bfloat16", "bfloat16"), "html")
    assert "sweep nightly · bfloat16" not in same


def test_the_warehouse_keeps_asked_started_and_served_dtypes(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    fields = {"dtype_requested": "auto", "dtype": "bfloat16", "startup": "eager"}
    ingest_run(con, write_run(tmp_path / "runs", manifest("a", **fields, served_dtype="bfloat16")))
    ingest_run(
        con,
        write_run(
            tmp_path / "runs",
            manifest(
                "b",
                cell_id="cell-b",
                engine="hf",
                planned_engine="hf",
                **fields,
                served_dtype="float32",
                dtype_note="started with --dtype bfloat16 but served float32",
            ),
        ),
    )
    _, compare = query(con, "SELECT DISTINCT engine, dtype FROM v_compare ORDER BY engine")
    assert compare == [("hf", "float32"), ("vllm", "bfloat16")]
    _, servers = query(con, "SELECT dtype, startup FROM v_servers ORDER BY dtype")
    assert servers == []  # these runs name no server
    rows = report_rows(con)
    by_engine = {r["engine"]: r for r in rows}
    assert by_engine["vllm"]["dtype"] == "bfloat16"
    assert by_engine["hf"]["dtype_requested"] == "auto"
    assert by_engine["hf"]["dtype_started"] == "bfloat16"
    assert by_engine["hf"]["startup"] == "eager"
    note = precision_note(rows)
    assert note is not None
    assert "served float32" in note
    assert "vllm bfloat16" in note
    con.close()
