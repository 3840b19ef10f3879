"""Which CPUs each CPU worker runs on: a share of the host's cores of its own.

Left to the scheduler, two one-thread workers on a two-core host migrate between cores and
wake each other across cores at every gradient all-reduce; pinned to one core each they
trained ~10% faster here (``python -m bench``). torchrun binds workers only by their GPU's
NUMA node (``--numa-binding``), so the CPU workers our launcher starts are pinned here, each
to a disjoint share of the CPUs the caller may use. A rank of someone else's torchrun job
keeps whatever binding its launcher gave it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (affinity masks and containers' cpusets), ascending."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_share(cpus: Sequence[int], local_rank: int, local_world_size: int) -> list[int]:
    """Local worker ``local_rank``'s CPUs out of ``cpus``: contiguous, disjoint shares whose
    sizes differ by at most one and that cover every CPU; with more workers than CPUs, one
    CPU each, dealt round robin (workers 0 and 2 share the first of two CPUs)."""
    if not 0 <= local_rank < local_world_size:
        raise ValueError(f"local_rank={local_rank} is not in 0..{local_world_size - 1}")
    if local_world_size >= len(cpus):
        return [cpus[local_rank % len(cpus)]]
    base, extra = divmod(len(cpus), local_world_size)
    start = local_rank * base + min(local_rank, extra)
    return list(cpus[start : start + base + (local_rank < extra)])


def pin_process(cpus: Sequence[int]) -> None:
    """Restrict every thread of this process to ``cpus``: those already running (torch's or
    gloo's) and, by inheritance, every thread started later. No-op where the OS has no
    affinity call."""
    if not hasattr(os, "sched_setaffinity"):
        return
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(tid), cpus)
