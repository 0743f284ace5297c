"""Create what a sweep's deployments need on a Prefect server, idempotently: the ``embedsweep``
control work pool, one process work pool per sweep pool with one work queue per host, and the
strict per-device global concurrency limits (limit 1) the cell flows hold.

Strict limits fail a cell that asks for a missing one, so they must exist before a distributed
sweep starts. Run it again after editing the hosts of a sweep file: it only adds what is missing
(and corrects queue and limit sizes).

    python deployments/setup.py SWEEP.yaml [--hosts-limit N] [--workers]

``--workers`` prints one ``POOL QUEUE LIMIT`` line per worker to start (what scripts/prefect-local
reads), so the list of workers comes from the same place as the pools.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.process import ProcessWorker

from embedsweep.config import SweepSpec, load_sweep
from embedsweep.placement import concurrency_limit_name

__all__ = ["CONTROL_POOL", "Worker", "apply", "plan_workers", "setup"]

CONTROL_POOL = "embedsweep"
"""Work pool of the sweep and nightly deployments (they only orchestrate; cells do the work)."""

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Worker:
    """One worker to start: polls ``queue`` of work pool ``pool``, ``limit`` runs at a time."""

    pool: str
    queue: str | None
    limit: int | None

    def line(self) -> str:
        return f"{self.pool} {self.queue or '-'} {self.limit or '-'}"


def plan_workers(spec: SweepSpec, hosts_limit: int | None = None) -> list[Worker]:
    """The control worker, then one worker per host of every pool (one per pool without hosts).

    A host worker runs at most one cell per device (``--limit``); the per-device concurrency
    limits keep two cells off one device even so.
    """
    workers = [Worker(CONTROL_POOL, None, None)]
    for pool in spec.pools:
        if not pool.hosts:
            workers.append(Worker(pool.name, DEFAULT_QUEUE, hosts_limit or len(pool.devices)))
        for host in pool.hosts:
            workers.append(Worker(pool.name, host.name, hosts_limit or len(host.devices)))
    return workers


async def _ensure_pool(client: PrefectClient, name: str, template: dict[str, object]) -> bool:
    try:
        await client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=template)
        )
    except ObjectAlreadyExists:
        return False
    return True


async def _ensure_queue(client: PrefectClient, pool: str, name: str, limit: int | None) -> bool:
    try:
        queue = await client.read_work_queue_by_name(name, work_pool_name=pool)
    except ObjectNotFound:
        await client.create_work_queue(name=name, work_pool_name=pool, concurrency_limit=limit)
        return True
    if queue.concurrency_limit != limit:
        await client.update_work_queue(queue.id, concurrency_limit=limit)
    return False


async def _ensure_limit(client: PrefectClient, name: str) -> bool:
    try:
        current = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
        )
        return True
    if current.limit != 1 or not current.active:
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=1, active=True)
        )
    return False


async def apply(
    client: PrefectClient, spec: SweepSpec, hosts_limit: int | None = None
) -> list[str]:
    """Create what is missing; return one line per object created (empty on a second run)."""
    template = ProcessWorker.get_default_base_job_template()
    created: list[str] = []
    if await _ensure_pool(client, CONTROL_POOL, template):
        created.append(f"work pool {CONTROL_POOL}")
    for pool in spec.pools:
        if await _ensure_pool(client, pool.name, template):
            created.append(f"work pool {pool.name}")
        hosts = pool.hosts or []
        if not hosts and await _ensure_queue(
            client, pool.name, DEFAULT_QUEUE, hosts_limit or len(pool.devices)
        ):
            created.append(f"work queue {pool.name}/{DEFAULT_QUEUE}")
        for host in hosts:
            limit = hosts_limit or len(host.devices)
            if await _ensure_queue(client, pool.name, host.name, limit):
                created.append(f"work queue {pool.name}/{host.name}")
            for device in host.devices:
                name = concurrency_limit_name(pool.name, host.name, device)
                if await _ensure_limit(client, name):
                    created.append(f"concurrency limit {name}")
    return created


async def setup(spec: SweepSpec, hosts_limit: int | None = None) -> list[str]:
    """:func:`apply` against the server of the current settings (``PREFECT_API_URL``)."""
    async with get_client() as client:
        return await apply(client, spec, hosts_limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="sweep file whose pools and hosts to set up")
    parser.add_argument(
        "--hosts-limit",
        type=int,
        default=None,
        help="runs one host's worker takes at once (default: the host's number of devices)",
    )
    parser.add_argument(
        "--workers",
        action="store_true",
        help="only print 'POOL QUEUE LIMIT' per worker to start ('-' = none); create nothing",
    )
    args = parser.parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
    except Exception as exc:  # ConfigError and unreadable files: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.workers:
        for worker in plan_workers(spec, args.hosts_limit):
            print(worker.line())
        return 0
    created = asyncio.run(setup(spec, args.hosts_limit))
    for line in created:
        print(f"created {line}")
    if not created:
        print("nothing to create: pools, queues and limits already exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
