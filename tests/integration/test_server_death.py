"""A server that dies during a level ends that level within seconds, whatever the moment: in
flight at concurrency 1, between the requests of a slow open loop, during warm-up, with two
client processes. What was measured is kept and marked partial. Real built-in server, real
SIGKILL; then a whole sweep through ``embedsweep run`` whose first server is killed mid-level:
that cell fails ``server_crashed`` with its partial level, nothing of it keeps running, and the
next server's cell runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port
from embedsweep.loadgen import build_payloads, run_level_sync

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
API_KEY = "test-key-not-secret"
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")
ENDS_WITHIN_S = 10.0


@pytest.fixture
def server(minilm_dir: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    launch = Launch(
        model_path=minilm_dir,
        served_name="minilm",
        port=free_port(),
        api_key=API_KEY,
        max_input_tokens=256,
    )
    proc = server_for("hf", launch, tmp_path / "server.log")
    with proc:
        proc.wait_healthy(120)
        yield proc


def _payloads(minilm_dir: Path, tokens: int, batch: int) -> list[bytes]:
    texts = Calibrator(load_tokenizer(minilm_dir)).texts(tokens, 64 * batch, 0)
    return build_payloads("minilm", texts, batch)


def _kill_later(server: ServerProcess, after_s: float) -> list[float]:
    """SIGKILL the server's whole process group AFTER_S from now; returns [when it was sent]."""
    sent: list[float] = []
    assert server.proc is not None
    group = server.proc.pid

    def kill() -> None:
        time.sleep(after_s)
        sent.append(time.monotonic())
        os.killpg(group, signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
    return sent


MOMENTS = {
    # Back-to-back requests of 8 x 256 tokens (a quarter second or so on two cores): the kill
    # lands mid-request, after several answers even on a busy host (at 32 x 256 one request
    # took over the 2 s before the kill there, and nothing had been answered).
    "in flight, concurrency 1": {"tokens": 256, "batch": 8, "concurrency": 1, "kill_s": 4.0},
    # Two requests a second, each a few ms: the kill lands between requests.
    "between requests": {"tokens": 16, "batch": 1, "concurrency": 1, "rate": 2.0, "kill_s": 2.2},
    # 100,000 warm-up requests never end by themselves.
    "during warm-up": {"tokens": 16, "batch": 1, "concurrency": 2, "warmup": 100_000,
                       "kill_s": 1.5},
    "two client processes": {"tokens": 64, "batch": 4, "concurrency": 4, "processes": 2,
                             "kill_s": 4.0},
}  # fmt: skip


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_dead_server_ends_the_level_within_seconds(
    moment: str, server: ServerProcess, minilm_dir: Path
) -> None:
    case: dict[str, Any] = dict(MOMENTS[moment])
    payloads = _payloads(minilm_dir, case["tokens"], case["batch"])
    sent = _kill_later(server, case["kill_s"])
    assert server.proc is not None
    records = run_level_sync(
        server.url,
        payloads,
        case["tokens"] * case["batch"],
        concurrency=case["concurrency"],
        requests=100_000,
        warmup=case.get("warmup", 0),
        rate=case.get("rate"),
        processes=case.get("processes", 1),
        api_key=API_KEY,
        timeout_s=120,
        watch_pid=server.proc.pid,
    )
    ended = time.monotonic()
    assert sent, "the level ended before the kill"
    assert ended - sent[0] < ENDS_WITHIN_S, f"{ended - sent[0]:.1f} s after the kill"
    assert records.halted is not None
    assert f"pid {server.proc.pid}" in records.halted
    if moment == "during warm-up":
        assert len(records) == 0  # nothing was measured, and nothing pretends it was
    else:
        # The measured part is kept: answered requests before the kill.
        assert int((records.status == 200).sum()) > 0
    assert records.unsent > 0


def test_unreachable_endpoint_without_a_process_to_watch_ends_quickly(minilm_dir: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            EMBEDSWEEP, "load", "--url", "http://127.0.0.1:9", "--model", "m", "--tokenizer",
            str(minilm_dir), "--chunk-size", "32", "--requests", "30", "--concurrency", "1",
            "--warmup", "0", "--json",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert time.monotonic() - started < ENDS_WITHIN_S
    out = json.loads(done.stdout)
    assert out["partial"] is True
    assert "no answer for 3 s" in out["stopped_reason"]
    assert out["requests"] + out["unsent"] == 30
    assert out["valid"] is False


def _hf_servers(name: str) -> list[tuple[int, int]]:
    """(pid, port) of running built-in servers serving NAME."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if state != "Z" and "embedsweep.hfserver" in args and name in args:
            found.append((int(entry.name), int(args[args.index("--port") + 1])))
    return found


def _inputs_served(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/batches", timeout=2) as r:
            return int(json.loads(r.read())["inputs"])
    except OSError:
        return 0


@pytest.mark.usefixtures("shared_prefect")
def test_a_sweep_whose_server_dies_keeps_the_measured_part_and_goes_on(
    tmp_path: Path, minilm_dir: Path, own_state: Any
) -> None:
    spec = {
        "name": "server-death",
        "models": [
            {"source": str(minilm_dir), "name": "victim"},
            {"source": str(minilm_dir), "name": "survivor"},
        ],
        "engines": ["hf"],
        "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
        "load": {
            "chunk_sizes": [32, 64],
            "concurrency": [1],
            "requests_per_level": 1500,
            "warmup_requests": 4,
            "fidelity": False,
            "harness_check": False,
        },
        "warehouse": str(tmp_path / "w.duckdb"),
        "artifacts": str(tmp_path / "runs"),
    }
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "EMBEDSWEEP_STATE_DIR": own_state(tmp_path / "state")}
    run = subprocess.Popen(
        [EMBEDSWEEP, "run", str(sweep), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        killed_at = None
        deadline = time.monotonic() + 240
        while killed_at is None and time.monotonic() < deadline:
            for pid, port in _hf_servers("victim"):
                # Past warm-up, well into the first level of 1,500 requests.
                if _inputs_served(port) >= 200:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.time()
            time.sleep(0.2)
        assert killed_at is not None, "the victim's server never got going"
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert not _hf_servers("victim")
    manifests = {
        (m["model"], m["chunk_size"]): m
        for m in (json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("run.json"))
    }
    victim = manifests[("victim", 32)]
    assert (victim["status"], victim["reason"]) == ("failed", "server_crashed"), output[-2000:]
    [level] = victim["levels"]
    assert level["partial"] is True
    assert level["valid"] is False
    assert 0 < level["ok"] < 1500
    assert "exited" in level["stopped_reason"]
    # Ended within seconds of the kill, not after the level's remaining requests.
    finished = time.mktime(time.strptime(victim["finished_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    finished -= time.timezone
    assert finished - killed_at < ENDS_WITHIN_S
    assert manifests[("victim", 64)]["status"] == "failed"
    assert all(manifests[("survivor", c)]["status"] == "ok" for c in (32, 64))
    # The measured part reached the warehouse, marked.
    done = subprocess.run(
        [EMBEDSWEEP, "sql", "--json", "--warehouse", str(tmp_path / "w.duckdb"),
         "SELECT r.status, res.partial, res.ok, (SELECT count(*) FROM requests q "
         "WHERE q.run_id = r.run_id) AS rows FROM runs r JOIN results res USING (run_id) "
         "WHERE r.model = 'victim'"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["partial"] is True
    assert row["rows"] >= row["ok"] > 0
    # load.harness_check: false: the survivor's runs keep the server's side and say why.
    notes = subprocess.run(
        [EMBEDSWEEP, "sql", "--json", "--warehouse", str(tmp_path / "w.duckdb"),
         "SELECT DISTINCT h.note, h.ratio FROM harness_checks h JOIN runs r USING (run_id) "
         "WHERE r.model = 'survivor'"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(notes.stdout) == [
        {"note": "direct encode not compared: load.harness_check is off", "ratio": None}
    ], notes.stderr
    assert re.search(r"victim.*failed", output)
