"""How long ``embedsweep validate`` takes for a sweep of many models (issue: the duplicate-name
check was quadratic, 80,000 models took minutes). Prints wall time per size, and the host's load
average, since the cores are shared.

    .venv/bin/python benchmarks/bench_validate.py [--models 10000 80000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, nargs="+", default=[10_000, 80_000])
    args = parser.parse_args()
    cli = str(Path(sys.executable).parent / "embedsweep")
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.models:
            spec = {
                "name": "wide",
                "models": [{"source": f"org/model-{i}", "name": f"m{i}"} for i in range(n)],
                "engines": ["hf"],
                "pools": [
                    {"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}
                ],
                "load": {"chunk_sizes": [32], "concurrency": [1]},
            }
            path = Path(tmp) / f"wide-{n}.yaml"
            path.write_text(yaml.safe_dump(spec))
            started = time.monotonic()
            done = subprocess.run([cli, "validate", str(path)], capture_output=True, text=True)
            took = time.monotonic() - started
            size = path.stat().st_size / 2**20
            print(f"{n:>8,} models ({size:.1f} MiB): {took:.2f} s, exit {done.returncode}")
            if done.returncode:
                print(f"  {done.stderr.strip()}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
