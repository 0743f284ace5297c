"""Names shared by the sweep flow, the cell flow and the operations scripts for distributed
sweeps: the Prefect work pool, work queue and global concurrency limit that guard one device.

Nothing here talks to Prefect; it only fixes the names so every side agrees on them.
"""

from __future__ import annotations

import re

__all__ = ["cell_deployment_name", "concurrency_limit_name", "slug"]

_UNSAFE = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """Lowercase letters, digits and dashes (what Prefect artifact keys accept)."""
    return _UNSAFE.sub("-", text.lower()).strip("-") or "x"


def concurrency_limit_name(pool: str, host: str, device: str) -> str:
    """The strict global concurrency limit (limit 1) that guards one device of one host."""
    return f"embedsweep-gpu-{slug(pool)}-{slug(host)}-{slug(device)}"


def cell_deployment_name(pool: str) -> str:
    """``flow/deployment`` of the pool's benchmark-cell deployment (its work pool is ``pool``)."""
    return f"benchmark-cell/benchmark-cell-{pool}"
