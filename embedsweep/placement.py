"""Names shared by the sweep flow, the cell flow and the operations scripts for distributed
sweeps: the Prefect work pool, work queue and global concurrency limit that guard one device;
and the slots a distributed sweep spreads its servers over (:func:`slots`).

Nothing here talks to Prefect; it only fixes the names so every side agrees on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedsweep.errors import ConfigError

if TYPE_CHECKING:
    from embedsweep.config import SweepSpec

__all__ = ["Slot", "cell_deployment_name", "concurrency_limit_name", "slots", "slug"]

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


@dataclass(frozen=True)
class Slot:
    """Devices of one host that one cell uses at a time (tensor parallelism: several)."""

    pool: str
    host: str
    devices: tuple[str, ...]


def slots(spec: SweepSpec, pools: set[str]) -> list[Slot]:
    """Every slot of the POOLS named, host by host: each host's devices cut into groups of the
    pool's tensor-parallel size. A pool without hosts, or a host whose devices are ``auto``, is
    a :class:`ConfigError` (distributed mode guards each device by its id)."""
    out: list[Slot] = []
    for pool in spec.pools:
        if pool.name not in pools:
            continue
        if not pool.hosts:
            raise ConfigError(
                f"pool {pool.name!r} lists no hosts: distributed mode needs pools[].hosts "
                "(one per work queue of the work pool)"
            )
        size = pool.tensor_parallel_size
        for host in pool.hosts:
            if "auto" in host.devices:
                raise ConfigError(
                    f"pool {pool.name!r} host {host.name!r}: list its device ids; 'auto' is "
                    "for local mode (each device gets a concurrency limit by its id)"
                )
            for start in range(0, len(host.devices) - size + 1, size):
                out.append(Slot(pool.name, host.name, tuple(host.devices[start : start + size])))
    return out
