"""Inside a Slurm allocation: the job's layout from Slurm's variables, no flags needed.

Two ways to run under ``srun``, told apart by tasks per host:

* **one task per host** (``srun --ntasks-per-node=1 adt train --nproc-per-node 4``): each task is
  this library's launcher for its host; Slurm gives ``nnodes`` (``SLURM_NNODES``), ``node_rank``
  (``SLURM_NODEID``) and the rendezvous endpoint (the allocation's first host, a port derived
  from the job id so every host picks the same one);
* **one task per worker** (``srun --ntasks-per-node=4 python train.py``): each task is a worker
  of the job; Slurm gives ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` and the address of rank 0's
  host, exported as torchrun's variables so ``train_distributed`` joins the job in-process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

#: Base of the rendezvous/master port; the job id picks one of the next 1000.
BASE_PORT = 29500


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list, expanded: ``"gpu[01-03,07],cpu5"`` -> gpu01, gpu02, gpu03,
    gpu07, cpu5 (zero padding kept)."""
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            start, _, stop = part.partition("-")
            width = len(start)
            for number in range(int(start), int(stop or start) + 1):
                hosts.append(f"{prefix}{number:0{width}d}")
    return hosts


@dataclass(frozen=True)
class SlurmJob:
    """What Slurm says about this task's place in the job."""

    nnodes: int
    node_rank: int
    ntasks: int
    rank: int  # SLURM_PROCID
    local_rank: int  # SLURM_LOCALID
    tasks_per_node: int
    first_host: str
    port: int

    @property
    def task_per_worker(self) -> bool:
        """Whether each task is a worker (else each task launches its host's workers)."""
        return self.ntasks > self.nnodes

    def launcher_settings(self) -> dict[str, object]:
        """Settings for a task that launches its host's workers (one task per host)."""
        return {
            "nnodes": self.nnodes,
            "node_rank": self.node_rank,
            "rdzv_endpoint": f"{self.first_host}:{self.port}",
        }

    def worker_environ(self) -> dict[str, str]:
        """torchrun's variables for a task that is itself a worker (one task per worker)."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.ntasks),
            "LOCAL_WORLD_SIZE": str(self.tasks_per_node),
            "MASTER_ADDR": self.first_host,
            "MASTER_PORT": str(self.port),
        }


def slurm_job(environ: Mapping[str, str]) -> SlurmJob | None:
    """This task's Slurm layout, or None outside ``srun`` (or for a one-task job, which the
    library runs like any local job)."""
    needed = ("SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID", "SLURM_NTASKS", "SLURM_PROCID")
    if not all(name in environ for name in needed):
        return None
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""
    hosts = expand_hostlist(nodelist)
    ntasks = int(environ["SLURM_NTASKS"])
    if ntasks <= 1 or not hosts:
        return None
    nnodes = int(environ["SLURM_NNODES"])
    per_node = environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    return SlurmJob(
        nnodes=nnodes,
        node_rank=int(environ["SLURM_NODEID"]),
        ntasks=ntasks,
        rank=int(environ["SLURM_PROCID"]),
        local_rank=int(environ.get("SLURM_LOCALID", "0")),
        tasks_per_node=int(per_node) if per_node.isdigit() else max(1, ntasks // nnodes),
        first_host=hosts[0],
        port=BASE_PORT + int(re.sub(r"\D", "", environ["SLURM_JOB_ID"]) or 0) % 1000,
    )
