"""How fast the load client can go: requests/s against a null server (nginx answering
``/v1/embeddings`` with a fixed body), next to wrk's on the same server in the same run.

The client runs as the sweep runs it: full per-request recording and ``usage.prompt_tokens``
verified on every response (the body reports N tokens, and the client expects N), at the same
connection count as wrk. Acceptance (issue 4): with one process, at least half of wrk's rate.
Then the same level split over several client processes.

nginx is configured for measuring, not serving: one worker, ``keepalive_requests`` far above the
run's request count (the default of 1,000 recycles every connection and halves any client's
figure), a long ``keepalive_timeout``, no access log. Its config, pid file and logs live in a
temporary directory, and it is stopped on the way out, whatever happens.

Needs ``nginx`` and ``wrk`` on PATH (Debian: ``apt-get install -y nginx wrk``).

Usage: python benchmarks/bench_client_ceiling.py [--duration S] [--connections C] [--tokens N]
       [--processes 1,2] [--rounds R]
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedsweep.loadgen import build_payloads, run_level_sync
from embedsweep.metrics import summarize

_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _response_body(tokens: int, dims: int) -> str:
    # A real-sized answer: one base64 float32 vector of the model's width, then usage.
    vector = base64.b64encode(np.zeros(dims, dtype=np.float32).tobytes()).decode()
    return (
        '{"object":"list","data":[{"object":"embedding","index":0,'
        f'"embedding":"{vector}"}}],"model":"m",'
        f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}'
    )


def _texts(tokens: int, count: int) -> list[str]:
    # About 4 characters per token, as English text runs: the request is the size a calibrated
    # N-token input would be. Nobody tokenizes it here; nginx reports N regardless.
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    texts = []
    for _ in range(count):
        words: list[str] = []
        length = 0
        while length < 4 * tokens:
            word = "".join(rng.choice(letters, size=int(rng.integers(3, 9))))
            words.append(word)
            length += len(word) + 1
        texts.append(" ".join(words))
    return texts


def _nginx_config(root: Path, port: int, body: str) -> Path:
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 3600s;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/embeddings {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
""",
        encoding="utf-8",
    )
    return conf


def _start_nginx(root: Path, conf: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["nginx", "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            log = (root / "error.log").read_text(errors="replace")
            raise SystemExit(f"nginx exited with code {proc.returncode}:\n{log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("nginx did not start listening within 10 s") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # SIGQUIT: graceful stop of the master and its worker.
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wrk(url: str, script: Path, connections: int, duration_s: float) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s:g}s",
            "-s",
            str(script),
            url + "/v1/embeddings",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = _WRK_RATE.search(out)
    if rate is None:
        raise SystemExit(f"could not read wrk's rate from:\n{out}")
    bad = _WRK_NON_2XX.search(out)
    if bad is not None:
        raise SystemExit(f"wrk saw {bad.group(1)} non-2xx responses: nginx is misconfigured")
    return float(rate.group(1))


def _ours(
    url: str,
    payloads: list[bytes],
    tokens: int,
    connections: int,
    duration_s: float,
    processes: int,
) -> tuple[float, str]:
    records = run_level_sync(
        url,
        payloads,
        tokens,
        concurrency=connections,
        duration_s=duration_s,
        warmup=connections * 50,
        processes=processes,
    )
    summary = summarize(records, batch_size=1)
    if not summary.valid or summary.errors:
        raise SystemExit(
            f"our client's level was not clean: {summary.errors} errors "
            f"{summary.errors_by_cause}, {summary.prompt_tokens_mismatch} token mismatches"
        )
    detail = (
        f"{summary.requests:,} requests, all {tokens} tokens verified, "
        f"mean {summary.latency_ms.mean:.2f} ms, p99 {summary.latency_ms.p99:.2f} ms"
    )
    return summary.throughput_rps, detail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512, help="prompt_tokens N of each input")
    parser.add_argument("--dims", type=int, default=384, help="width of the returned vector")
    parser.add_argument(
        "--processes", default="1,2", help="client process counts to measure, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat wrk + ours this many times")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (Debian: apt-get install -y nginx wrk)")
    process_counts = [int(p) for p in args.processes.split(",")]

    payloads = build_payloads("m", _texts(args.tokens, 64), 1)
    with tempfile.TemporaryDirectory(prefix="embedsweep-nginx-") as tmp:
        root = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        conf = _nginx_config(root, port, _response_body(args.tokens, args.dims))
        script = root / "post.lua"
        # wrk sends exactly our first request body, with the same method and content type.
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{payloads[0].decode()}]]\n",
            encoding="utf-8",
        )
        nginx = _start_nginx(root, conf, port)
        ratios: list[float] = []
        try:
            print(
                f"null server: nginx, 1 worker, {url}; {args.connections} connections, "
                f"{args.duration:g} s each, request body {len(payloads[0]):,} B"
            )
            for round_no in range(1, args.rounds + 1):
                wrk_rate = _wrk(url, script, args.connections, args.duration)
                print(f"[round {round_no}] wrk -t1 -c{args.connections}: {wrk_rate:>10,.0f} req/s")
                for processes in process_counts:
                    rate, detail = _ours(
                        url, payloads, args.tokens, args.connections, args.duration, processes
                    )
                    ratio = rate / wrk_rate
                    if processes == 1:
                        ratios.append(ratio)
                    print(
                        f"[round {round_no}] embedsweep, {processes} process(es): "
                        f"{rate:>10,.0f} req/s = {ratio:.2f} x wrk  ({detail})"
                    )
        finally:
            _stop(nginx)
    if not ratios:
        return 0
    worst = min(ratios)
    verdict = "PASS" if worst >= 0.5 else "FAIL"
    print(f"acceptance (1 process >= 0.5 x wrk in the same round): {verdict}, worst {worst:.2f}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
