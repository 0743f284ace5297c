"""Stand-in engine wheels for tests: a tiny distribution named ``vllm`` (or ``sglang``) whose
server command takes the real engine's arguments and serves with embedsweep's built-in server.

Installing the real engines takes gigabytes and a GPU; the stand-in is installed the same way
(``pip install vllm==X --no-index --find-links DIR`` into its own venv) and started by the same
command line, so everything around the engine is tested for real. The wheel is written by hand
(no build backend, no network): a zip with METADATA, WHEEL, entry_points.txt and a RECORD.

Import it from tests under ``tests/integration`` as ``from standin_engine import
build_standin_wheel`` (pytest puts a test file's folder on sys.path; ``tests`` is no package).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

__all__ = ["STANDIN_BANNER", "build_standin_wheel"]

# The first line a stand-in prints: "INFO stand-in vllm 0.33.0 (embedsweep test engine)".
STANDIN_BANNER = "INFO stand-in {engine} {version} (embedsweep test engine)"

_COMMON = """
import os
import sys

PROJECT_PYTHON = {project_python!r}
VERSION = {version!r}
BANNER = {banner!r}
# vLLM and SGLang accept these dtype spellings; the built-in server knows the long names.
DTYPES = {{"half": "float16", "float": "float32"}}


def _exec_hfserver(model, name, host, port, max_len, dtype, revision, trust, api_key):
    print(BANNER, flush=True)
    env = dict(os.environ)
    env.pop("EMBEDSWEEP_API_KEY", None)
    if api_key:
        env["EMBEDSWEEP_API_KEY"] = api_key
    argv = [
        PROJECT_PYTHON, "-m", "embedsweep.hfserver", "--model", model,
        "--served-model-name", name or os.path.basename(model.rstrip("/")),
        "--host", host, "--port", str(port), "--dtype", DTYPES.get(dtype, dtype),
        "--device", "cpu",
    ]
    if max_len:
        argv += ["--max-model-len", str(max_len)]
    if revision:
        argv += ["--revision", revision]
    if trust:
        argv.append("--trust-remote-code")
    sys.stdout.flush()
    os.execve(PROJECT_PYTHON, argv, env)
"""

_VLLM_MAIN = """
import argparse
import os

from vllm._standin_common import VERSION, _exec_hfserver


def main(argv=None):
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("--version", action="version", version=VERSION)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("model")
    mode = serve.add_mutually_exclusive_group(required=True)
    mode.add_argument("--runner", choices=["pooling"])
    mode.add_argument("--task", choices=["embed"])
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--dtype", default="auto")
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    serve.add_argument("--tensor-parallel-size", type=int, default=1)
    serve.add_argument("--revision", default=None)
    serve.add_argument("--trust-remote-code", action="store_true")
    serve.add_argument(
        "--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None
    )
    args = parser.parse_args(argv)
    _exec_hfserver(
        args.model, args.served_model_name, args.host, args.port, args.max_model_len,
        args.dtype, args.revision, args.trust_remote_code, os.environ.get("VLLM_API_KEY"),
    )
"""

_SGLANG_MAIN = """
import argparse

from sglang._standin_common import _exec_hfserver


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sglang.launch_server")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--is-embedding", action="store_true", required=True)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--context-length", type=int, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--mem-fraction-static", type=float, default=None)
    parser.add_argument("--tp-size", type=int, default=1)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--disable-radix-cache", action="store_true")
    args = parser.parse_args(argv)
    # SGLang's context length counts one more position than the longest accepted input.
    max_len = args.context_length - 1 if args.context_length else None
    _exec_hfserver(
        args.model_path, args.served_model_name, args.host, args.port, max_len, args.dtype,
        args.revision, args.trust_remote_code, args.api_key,
    )


if __name__ == "__main__":
    main()
"""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_standin_wheel(
    dest_dir: Path, version: str, project_python: str, *, engine: str = "vllm"
) -> Path:
    """Write ``<engine>-<version>-py3-none-any.whl`` into DEST_DIR and return its path.

    The stand-in's server execs PROJECT_PYTHON (an absolute path, baked in) as
    ``-m embedsweep.hfserver ... --device cpu``, after printing STANDIN_BANNER. For ``vllm`` the
    command is the ``vllm serve MODEL --runner pooling|--task embed ...`` console script, with the
    key from ``VLLM_API_KEY``; for ``sglang`` it is ``python -m sglang.launch_server
    --model-path MODEL --is-embedding ... --api-key KEY``.
    """
    if engine not in ("vllm", "sglang"):
        raise ValueError(f"no stand-in for {engine!r}")
    if not Path(project_python).is_absolute():
        raise ValueError(f"project_python must be an absolute path, not {project_python!r}")
    banner = STANDIN_BANNER.format(engine=engine, version=version)
    common = _COMMON.format(project_python=project_python, version=version, banner=banner)
    dist_info = f"{engine}-{version}.dist-info"
    files: dict[str, str] = {
        f"{engine}/__init__.py": f'"""Stand-in {engine} (embedsweep tests)."""\n'
        f"__version__ = {version!r}\n",
        f"{engine}/_standin_common.py": common,
    }
    if engine == "vllm":
        files["vllm/_standin_cli.py"] = _VLLM_MAIN
        entry_points = "[console_scripts]\nvllm = vllm._standin_cli:main\n"
    else:
        files["sglang/launch_server.py"] = _SGLANG_MAIN
        entry_points = ""
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {engine}\nVersion: {version}\n"
        f"Summary: Stand-in {engine} for embedsweep's tests\n"
    )
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: embedsweep-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    if entry_points:
        files[f"{dist_info}/entry_points.txt"] = entry_points
    record = [_record_line(name, text.encode()) for name, text in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"

    dest_dir.mkdir(parents=True, exist_ok=True)
    wheel = dest_dir / f"{engine}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, text)
    return wheel
