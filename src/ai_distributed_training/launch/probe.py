"""``adt doctor``'s probe: join a gloo process group and check one all-reduce adds up.

Run as ``python -m ai_distributed_training.probe`` by the elastic launcher.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from ..host import exit_finished_worker


@record
def main() -> None:
    """All-reduce each rank's ``rank + 1``; the sum must be ``W (W + 1) / 2`` on every rank."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    try:
        world = dist.get_world_size()
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        expected = world * (world + 1) / 2
        if value.item() != expected:
            raise RuntimeError(f"all-reduce gave {value.item()}, expected {expected}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_finished_worker()
