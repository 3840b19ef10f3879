"""Multi-host settings are checked before anything starts."""

from __future__ import annotations

from typing import Any

import pytest

from ai_distributed_training import DistributedTraining
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.host import interface_with_address


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"nodes": 3, "nnodes": 2, "rdzv_endpoint": "h:1"}, "nodes=3"),
        ({"nodes": 4, "nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"}, "node_rank=2"),
        ({"nodes": 4, "nnodes": 2}, "rdzv_endpoint=None"),
        ({"nodes": 4, "nnodes": 2, "rdzv_endpoint": "h"}, "rdzv_endpoint='h'"),
        ({"nodes": 4, "nnodes": 2, "rdzv_endpoint": "h:99999"}, "rdzv_endpoint='h:99999'"),
        ({"nodes": 2, "rdzv_endpoint": "h:1"}, "rdzv_endpoint='h:1' only apply to a job over"),
        ({"nodes": 2, "local_addr": "10.0.0.1"}, "local_addr='10.0.0.1' only apply"),
    ],
)
def test_bad_multi_host_settings_are_named(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        DistributedTraining(runs_dir=None).train_distributed(
            {"model_name": "m"}, {"samples": 50, "features": 3}, **settings
        )


def test_interface_lookup_finds_loopback() -> None:
    assert interface_with_address("127.0.0.1") == "lo"
    assert interface_with_address("192.0.2.77") is None  # TEST-NET-1: on no interface here
