"""Where am I: this process's place in a job, decided once from the settings and the
environment.

Environments are small objects with a ``detect`` method, as Lightning's cluster environments:

* **torchrun** (or anything exporting its variables: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) started this process as a rank of a job:
  ``train_distributed`` joins that job in-process and starts nothing;
* **Slurm**, two ways under ``srun``, told apart by tasks per host:

  - one task per host (``srun --ntasks-per-node=1 adt train --nproc-per-node 4``): each task is
    this library's launcher for its host; Slurm gives ``nnodes`` (``SLURM_NNODES``),
    ``node_rank`` (``SLURM_NODEID``) and the rendezvous endpoint (the allocation's first host, a
    port derived from the job id so every host picks the same one);
  - one task per worker (``srun --ntasks-per-node=4 python train.py``): each task is a worker of
    the job; Slurm gives ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` and the address of rank 0's host,
    exported as torchrun's variables so the task joins the job as under torchrun.

:class:`Topology` is the answer the rest of the library uses: how many workers in all, how many
hosts, which host this is, how many workers on it, and whether this process is itself a rank.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .config.sections import Hosts, LaunchSection


@dataclass(frozen=True)
class RankEnv:
    """This process's place in a running job, in torchrun's vocabulary."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int = 1
    #: Restarts of the job before this attempt, as this host's launcher counted them (torch
    #: elastic's ``TORCHELASTIC_RESTART_COUNT``; Ray's worker counts its own).
    restart_count: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> RankEnv:
        return cls(
            int(environ["RANK"]),
            int(environ["LOCAL_RANK"]),
            int(environ["WORLD_SIZE"]),
            int(environ.get("LOCAL_WORLD_SIZE", "1")),
            int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        )


class TorchrunEnvironment:
    """A launcher (torchrun, or srun with torchrun's variables) started this process as a rank."""

    @staticmethod
    def detect(environ: Mapping[str, str]) -> RankEnv | None:
        """This process's rank, or None in an ordinary process."""
        if all(name in environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
            return RankEnv.from_environ(environ)
        return None


def torchrun_rank() -> RankEnv | None:
    """This process's rank when a launcher started it as a worker of a job; None otherwise."""
    return TorchrunEnvironment.detect(os.environ)


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


@dataclass(frozen=True, kw_only=True)
class Environment:
    """What the environment says before any setting is read."""

    #: This process is a rank of a job someone else launched (torchrun, srun): join it.
    joined: RankEnv | None = None
    #: Settings the environment supplies (Slurm, one task per host); the caller's win.
    settings: dict[str, Any] = field(default_factory=dict)


def detect_environment(environ: MutableMapping[str, str] = os.environ) -> Environment:
    """torchrun first, then Slurm. A Slurm task that is a worker gets torchrun's variables
    exported into ``environ`` (where ``init_process_group`` reads them), existing ones kept."""
    joined = TorchrunEnvironment.detect(environ)
    if joined is not None:
        return Environment(joined=joined)
    slurm = slurm_job(environ)
    if slurm is None:
        return Environment()
    if slurm.task_per_worker:  # srun made this task a worker
        for name, value in slurm.worker_environ().items():
            environ.setdefault(name, value)
        return Environment(joined=TorchrunEnvironment.detect(environ))
    return Environment(settings=slurm.launcher_settings())  # one launcher per host


@dataclass(frozen=True, kw_only=True)
class Topology:
    """The job's shape as this process sees it; built once by :meth:`of`."""

    world_size: int  # all workers, every host together (the ``nodes`` setting)
    nnodes: int = 1
    node_rank: int = 0
    local_world_size: int  # workers on this host
    #: This process is a rank of a job someone else launched; None: we launch the workers.
    joined: RankEnv | None = None
    #: The rendezvous of a multi-host job we launch; None on one host or when joined.
    hosts: Hosts | None = None

    @classmethod
    def of(cls, launch: LaunchSection, joined: RankEnv | None = None) -> Topology:
        """The topology of the ``launch`` section (checked there), or of the job this process
        joined, if any."""
        if joined is not None:
            return cls(
                world_size=joined.world_size,
                local_world_size=joined.local_world_size,
                joined=joined,
            )
        return cls(
            world_size=launch.nodes,
            nnodes=launch.nnodes,
            node_rank=launch.node_rank,
            local_world_size=launch.nodes // launch.nnodes,
            hosts=launch.hosts,
        )
