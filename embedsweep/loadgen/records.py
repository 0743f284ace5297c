"""The per-request records of a load level: :class:`LevelRecords` (columnar, one row per request
in start order, and its Arrow table with the columns of ``REQUEST_COLUMNS``), one process's rows,
and the merge of several processes' rows on their shared clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from embedsweep.records import REQUEST_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa


def _no_schedule() -> npt.NDArray[np.int64]:
    return np.empty(0, dtype=np.int64)


@dataclass
class LevelRecords:
    """One load level's requests, one row per request in start order (columnar).

    Times are ns after the level's clock start. ``scheduled_ns`` is when each request was due: its
    drawn arrival in an open loop, its actual start in a closed loop (left empty, it is filled
    from ``start_ns``), so ``start_ns - scheduled_ns`` is the client's lag. ``offered_rps`` is the
    open loop's offered rate (None in a closed loop) and ``unsent`` the arrivals that never
    started because the level's duration ran out first.
    """

    concurrency: int
    start_ns: npt.NDArray[np.int64]
    latency_ns: npt.NDArray[np.int64]
    status: npt.NDArray[np.int16]
    prompt_tokens: npt.NDArray[np.int32]
    expected_tokens: npt.NDArray[np.int32]
    error: list[str | None]
    wall_ns: int
    scheduled_ns: npt.NDArray[np.int64] = field(default_factory=_no_schedule)
    offered_rps: float | None = None
    unsent: int = 0
    processes: int = 1
    # Why the level stopped before its end (the server died, or nothing answered), or None.
    halted: str | None = None

    def __post_init__(self) -> None:
        if len(self.scheduled_ns) == 0 and len(self.start_ns) > 0:
            self.scheduled_ns = self.start_ns.copy()
        if len(self.scheduled_ns) != len(self.start_ns):
            raise ValueError(
                f"{len(self.scheduled_ns)} scheduled times for {len(self.start_ns)} requests"
            )

    def __len__(self) -> int:
        return len(self.latency_ns)

    @property
    def mode(self) -> Literal["closed", "open"]:
        return "closed" if self.offered_rps is None else "open"

    def to_arrow(self, run_id: str) -> pa.Table:
        """The rows as a table with exactly the columns of ``REQUEST_COLUMNS``."""
        # Imported here: worker processes of a multi-process level never build tables, and
        # pyarrow is most of their start-up time.
        import pyarrow as pa

        n = len(self)
        columns = {
            "run_id": pa.array([run_id] * n, type=pa.string()),
            "concurrency": pa.array(np.full(n, self.concurrency, dtype=np.int32), type=pa.int32()),
            "seq": pa.array(np.arange(n, dtype=np.int64), type=pa.int64()),
            "start_ns": pa.array(self.start_ns, type=pa.int64()),
            "scheduled_ns": pa.array(self.scheduled_ns, type=pa.int64()),
            "latency_ns": pa.array(self.latency_ns, type=pa.int64()),
            "status": pa.array(self.status, type=pa.int16()),
            "prompt_tokens": pa.array(self.prompt_tokens, type=pa.int32()),
            "expected_tokens": pa.array(self.expected_tokens, type=pa.int32()),
            "error": pa.array(self.error, type=pa.string()),
        }
        return pa.table([columns[name] for name in REQUEST_COLUMNS], names=list(REQUEST_COLUMNS))


@dataclass
class Rows:
    """One process's rows, times relative to the level's clock start, in completion order."""

    starts: npt.NDArray[np.int64]
    scheduled: npt.NDArray[np.int64]
    latencies: npt.NDArray[np.int64]
    statuses: npt.NDArray[np.int16]
    prompt_tokens: npt.NDArray[np.int32]
    errors: dict[int, str]
    wall_ns: int
    unsent: int
    halted: str | None = None


def merge_records(
    parts: Sequence[Rows],
    *,
    concurrency: int,
    expected_tokens: int,
    offered_rps: float | None,
) -> LevelRecords:
    """Merge the rows of one or more processes (same clock start) into start order."""
    starts = np.concatenate([p.starts for p in parts])
    scheduled = np.concatenate([p.scheduled for p in parts])
    n = len(starts)
    errors: list[str | None] = [None] * n
    offset = 0
    for part in parts:
        for row, message in part.errors.items():
            errors[offset + row] = message
        offset += len(part.starts)
    # Rows were appended as responses completed; store them in the order requests started (and
    # in due order among requests that started in the same nanosecond).
    order = np.lexsort((scheduled, starts))
    return LevelRecords(
        concurrency=concurrency,
        start_ns=starts[order],
        scheduled_ns=scheduled[order],
        latency_ns=np.concatenate([p.latencies for p in parts])[order],
        status=np.concatenate([p.statuses for p in parts])[order],
        prompt_tokens=np.concatenate([p.prompt_tokens for p in parts])[order],
        expected_tokens=np.full(n, expected_tokens, dtype=np.int32),
        error=[errors[i] for i in order.tolist()],
        wall_ns=max(p.wall_ns for p in parts),
        offered_rps=offered_rps,
        unsent=sum(p.unsent for p in parts),
        processes=len(parts),
        halted=next((p.halted for p in parts if p.halted), None),
    )
