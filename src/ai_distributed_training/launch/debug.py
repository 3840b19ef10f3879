"""Run a function on real gloo ranks of this machine, for tests (Accelerate's
``debug_launcher``): the loop, the resume code and the strategies get fast tests of their own,
without the whole API -> job file -> elastic agent path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import FileStore  # type: ignore[attr-defined]
from torch.multiprocessing.spawn import start_processes

from ..host import exit_finished_worker


def debug_launcher(
    fn: Callable[..., Any], *args: Any, num_processes: int = 2, timeout_s: float = 60.0
) -> list[Any]:
    """``fn(*args)`` on ``num_processes`` ranks, each a fresh process (spawned) that has joined a
    gloo process group and has torchrun's variables set; returns every rank's return value in
    rank order. ``fn`` and ``args`` must be picklable (a module-level function).

    Raises:
        torch.multiprocessing.spawn.ProcessRaisedException: a rank raised (its traceback included);
        a collective waiting longer than ``timeout_s`` raises in its rank.
    """
    with tempfile.TemporaryDirectory(prefix="adt-debug-") as tmp:
        start_processes(
            _rank_main,
            args=(fn, args, num_processes, tmp, timeout_s),
            nprocs=num_processes,
            start_method="spawn",
        )
        return [
            torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(num_processes)
        ]


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    world_size: int,
    tmp: str,
    timeout_s: float,
) -> None:
    """One rank: torchrun's variables, a gloo group on a file store (no port to pick), ``fn``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    store = FileStore(str(Path(tmp) / "store"), world_size)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    try:
        torch.save(fn(*args), Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # As our launcher's workers do: torch aborts a finished gloo process now and then in its
    # exit-time destructors ("terminate called without an active exception"; seen once in a
    # CI run of this launcher's FSDP GAN test, under load), though its result is on disk.
    exit_finished_worker()
