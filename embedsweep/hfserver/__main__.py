"""``python -m embedsweep.hfserver``: load a model and serve it (see the package docstring).

The API key is read from ``EMBEDSWEEP_API_KEY`` so that it never appears on a command line or in
server.log.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from embedsweep.hfserver.batcher import DEFAULT_MAX_WAIT_S

if TYPE_CHECKING:
    from embedsweep.hfserver.batcher import Batcher
    from embedsweep.hfserver.embedder import Embedder, NullModel
    from embedsweep.hfserver.placement import Placement
    from embedsweep.hfserver.request import Served
    from embedsweep.hub import ModelMeta

__all__ = ["main"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m embedsweep.hfserver",
        description="The built-in OpenAI-compatible embedding server.",
    )
    parser.add_argument("--model", required=True, help="model folder, or a hub id to download")
    parser.add_argument("--revision", default=None, help="hub revision (hub ids only)")
    parser.add_argument("--served-model-name", default=None, help="name in /v1/models")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=None, help="longest input (tokens)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:0 (default: cuda if any)")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"]
    )
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--max-batch-inputs", type=int, default=256)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_S * 1000,
        help=(
            "longest wait for more requests before a batch smaller than the last one (never "
            "more than a tenth of the last batch's time)"
        ),
    )
    parser.add_argument(
        "--model-threads",
        type=int,
        default=None,
        help="the model's threads on a CPU (default: all given cores but one)",
    )
    parser.add_argument(
        "--compile",
        default=os.environ.get("EMBEDSWEEP_HF_COMPILE", "auto"),
        choices=["auto", "on", "off"],
        help=(
            "run the model through torch.compile, compiled at start-up (on; it falls back to "
            "eager if compiling fails; Inductor's cache under embedsweep's state folder makes "
            "a repeat start reuse the graphs). auto is eager: on this project's 2-core CPU "
            "compiling costs 35-55 s a start, more than its +5-15%% gains back in a sweep. "
            "Default from EMBEDSWEEP_HF_COMPILE, else auto"
        ),
    )
    parser.add_argument(
        "--null-model",
        action="store_true",
        help="no model work: zero vectors after tokenizing (the server's own ceiling)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.compile not in ("auto", "on", "off"):  # argparse does not check a default
        raise SystemExit(f"EMBEDSWEEP_HF_COMPILE must be auto, on or off, not {args.compile!r}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("embedsweep.hfserver")
    started = time.monotonic()

    import torch

    from embedsweep.hfserver.app import build_app
    from embedsweep.hfserver.http import serve
    from embedsweep.hfserver.placement import choose
    from embedsweep.hub import read_model_dir
    from embedsweep.preflight import max_input_tokens

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = _model_dir(args, log)
    meta = read_model_dir(model_dir.resolve())
    limit = args.max_model_len or max_input_tokens(meta, "hf") or 512
    placement = choose(
        device, args.dtype, stored_dtype=meta.stored_dtype, model_threads=args.model_threads
    )
    if device == "cpu":
        torch.set_num_threads(placement.model_threads)
    log.info("loading %s (max input %d tokens); %s", args.model, limit, placement.describe())
    embedder = _embedder(args, model_dir, meta, device, placement, log)
    name = args.served_model_name or model_dir.name
    served = _served(embedder, meta)
    threads = _ModelThreads(args, device, placement)
    # Started after the model was asked about itself: from now on only the worker uses it.
    batcher = _batcher(args, embedder, limit, threads)
    batcher.start()
    app = build_app(
        batcher,
        served_name=name,
        api_key=os.environ.get("EMBEDSWEEP_API_KEY"),
        served=served,
        info=lambda: _info(args, device, placement, embedder, threads),
    )
    log.info(
        "model loaded in %.1f s; serving %s on http://%s:%d",
        time.monotonic() - started,
        name,
        args.host,
        args.port,
    )
    try:
        serve(app, args.host, args.port)
    finally:
        batcher.stop()
        log.info("served %d inputs in %d batches", batcher.inputs, batcher.batches)
    return 0


def _model_dir(args: argparse.Namespace, log: logging.Logger) -> Path:
    """The model's folder: ``--model`` itself, or the hub snapshot it names, downloaded."""
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        from huggingface_hub import snapshot_download

        log.info("downloading %s (revision %s)", args.model, args.revision or "default")
        model_dir = Path(snapshot_download(args.model, revision=args.revision))
    return model_dir


def _embedder(
    args: argparse.Namespace,
    model_dir: Path,
    meta: ModelMeta,
    device: str,
    placement: Placement,
    log: logging.Logger,
) -> Embedder | NullModel:
    from embedsweep.hfserver.embedder import Embedder, NullModel

    if args.null_model:
        return NullModel(model_dir, meta.config)
    compile_model = args.compile == "on"
    embedder = Embedder(
        model_dir,
        device=device,
        dtype=placement.dtype,
        trust_remote_code=args.trust_remote_code,
        # A graph for the placement's threads and for the one the governor goes down to
        # beside a busy process (counts in between, on hosts of 3 or more cores, run eager).
        compile_threads=(placement.model_threads, 1) if compile_model else (),
    )
    log.info("model runtime: %s", embedder.runtime)
    return embedder


def _served(embedder: Embedder | NullModel, meta: ModelMeta) -> Served:
    """What the server answers about its vectors (dimension, Matryoshka, unit length)."""
    from embedsweep.hfserver.request import Served, matryoshka_of

    matryoshka, matryoshka_dimensions = matryoshka_of(meta.config)
    return Served(
        dimension=embedder.dimension(),
        vocab_size=embedder.vocab_size,
        matryoshka=matryoshka,
        matryoshka_dimensions=matryoshka_dimensions,
        normalized=any(type(m).__name__ == "Normalize" for m in embedder.model),
    )


class _ModelThreads:
    """The model thread's cores and torch threads on a CPU, and the governor that changes them
    beside a busy process (None on a GPU, with one thread, or without a model)."""

    def __init__(self, args: argparse.Namespace, device: str, placement: Placement) -> None:
        from embedsweep.hfserver.placement import ThreadGovernor, given_cores

        self.cores = given_cores()
        self.model_cores: tuple[int, ...] = self.cores
        self.placed = device == "cpu" and not args.null_model
        self.governor: ThreadGovernor | None = None
        if device == "cpu" and placement.model_threads > 1 and not args.null_model:
            self.governor = ThreadGovernor(placement, self.set_threads)
        self._placement = placement

    def set_threads(self, threads: int) -> None:
        # From the model's thread (the batcher's worker): bind it, then size torch's pool.
        import torch

        from embedsweep.hfserver.placement import place_model_thread

        self.model_cores = place_model_thread(threads, self.cores)
        torch.set_num_threads(threads)

    def on_start(self) -> None:
        self.set_threads(self._placement.model_threads)


def _batcher(
    args: argparse.Namespace, embedder: Embedder | NullModel, limit: int, threads: _ModelThreads
) -> Batcher:
    from embedsweep.hfserver.batcher import Batcher

    return Batcher(
        embedder,
        max_input_tokens=limit,
        max_batch_inputs=args.max_batch_inputs,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_s=args.max_wait_ms / 1000,
        governor=threads.governor,
        on_start=threads.on_start if threads.placed else None,
    )


def _info(
    args: argparse.Namespace,
    device: str,
    placement: Placement,
    embedder: Embedder | NullModel,
    threads: _ModelThreads,
) -> dict[str, object]:
    """``/embedsweep/info``: how the server placed its work, read at each request."""
    governor = threads.governor
    return {
        **placement.fields(),
        "runtime": embedder.runtime,
        "model_threads_now": governor.threads if governor else placement.model_threads,
        "thread_changes": governor.changes if governor else 0,
        "model_cores": ",".join(str(c) for c in threads.model_cores) if device == "cpu" else None,
        "compiled_batches": embedder.compiled_batches,
        "startup": embedder.startup,
        "max_wait_ms": args.max_wait_ms,
        "max_batch_tokens": args.max_batch_tokens,
    }


if __name__ == "__main__":
    raise SystemExit(main())
