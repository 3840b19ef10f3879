"""Where the workers go, checked against this host (or the Ray cluster): GPUs, a sane number of
workers per core, threads per worker, callbacks and faults that fit the job, a compile backend
torch knows, the optional packages the settings need."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..config.sections import Sections, TrackingSection
from ..errors import ConfigError, ConfigTypeError, warn_user
from ..host import available_cores, host_memory_bytes
from ..topology import Topology
from ..training.callbacks import Callback
from ..training.trackers import missing_library

#: Workers per CPU core at most: beyond it a job only simulates a cluster, ever more slowly.
MAX_WORKERS_PER_CORE = 32


def check_placement(sections: Sections, topology: Topology) -> int:
    """Where the workers go, checked: GPUs and a sane number of workers on this host, or room
    for them on the Ray cluster (joined at this point: an unreachable one is said before any
    worker starts). Returns the threads per worker."""
    launch = sections.launch
    on_ray = launch.launcher == "ray" and topology.joined is None
    if launch.use_gpus and not on_ray:
        check_gpus(topology.local_world_size)
    if on_ray:
        from ..launch.ray_launcher import connect, workers_fit  # Ray is an optional extra

        return workers_fit(launch, connect(launch.ray_address))  # its GPUs too
    cores = available_cores()
    limit = MAX_WORKERS_PER_CORE * cores
    if topology.joined is None and not launch.use_gpus and topology.local_world_size > limit:
        raise ConfigError(
            f"nodes={launch.nodes} puts {topology.local_world_size} worker processes on this "
            f"host, more than {limit} ({MAX_WORKERS_PER_CORE} per CPU core, {cores} cores); use "
            f"at most {limit} per host, or more hosts (nnodes)"
        )
    return _threads_per_worker(sections, topology)


def check_gpus(local_workers: int) -> None:
    """A CUDA GPU for each of this host's workers."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"use_gpus=True but CUDA is not available (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); pass use_gpus=False to "
            "train on CPUs"
        )
    count = torch.cuda.device_count()
    if count < local_workers:
        raise ConfigError(
            f"use_gpus=True with nodes={local_workers} needs {local_workers} GPUs (one per "
            f"worker) but this host has {count}; use nodes <= {count}"
        )


def _threads_per_worker(sections: Sections, topology: Topology) -> int:
    """The setting, or this host's cores shared by its workers (a warning when they are
    fewer than the workers)."""
    launch = sections.launch
    cores, local_workers = available_cores(), topology.local_world_size
    threads = launch.threads_per_worker or max(1, cores // local_workers)
    if local_workers > cores and not launch.use_gpus:
        warn_user(
            f"nodes={launch.nodes} exceeds the {cores} CPU cores available: the workers "
            f"share the cores with {threads} thread each (fine for simulating a cluster, "
            f"slower than nodes={cores})"
        )
    return threads


def check_workers(sections: Sections, topology: Topology) -> None:
    """Callbacks that are Callbacks; faults aimed at a rank that exists."""
    for cb in sections.loop.callbacks:
        if not isinstance(cb, Callback):
            raise ConfigTypeError(
                f"callbacks=[..., {cb!r}, ...]: {type(cb).__name__} is not a Callback; pass "
                "instances of a subclass of ai_distributed_training.Callback"
            )
    for fault in sections.launch.fault_injection:
        if fault.rank >= topology.world_size:
            raise ConfigError(
                f"fault_injection rank={fault.rank} does not exist in a job of "
                f"{topology.world_size} workers; use a rank in 0..{topology.world_size - 1}"
            )


def check_tools(sections: Sections) -> None:
    """A ``compile`` backend torch knows (imports torch's compiler stack only when named), and
    the optional packages the settings need."""
    backend = sections.parallel.compile
    if isinstance(backend, str):
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ConfigError(
                f"compile={backend!r} is not a torch.compile backend; use True (inductor), "
                f"False (eager), or one of {', '.join(known)}"
            )
    for name in sections.tracking.tracker_names:
        command = missing_library(name)
        if command is not None:
            what = "tensorboard=True" if name == "tensorboard" else f"trackers: {name!r}"
            raise ConfigError(f"{what} needs its library: {command}")


def resolve_trackers(tracking: TrackingSection) -> dict[str, Any]:
    """Where MLflow logs and how W&B runs, decided once in the caller (the workers and
    config.yaml get the answer): the setting, else the environment variable, else a SQLite
    database beside the runs and W&B offline."""
    resolved: dict[str, Any] = {}
    names = tracking.tracker_names
    if "mlflow" in names and tracking.mlflow_tracking_uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None and tracking.runs_dir is None:
            raise ConfigError(
                "trackers: 'mlflow' logs into a SQLite database beside the runs by default, "
                "and runs_dir=None has none: set mlflow_tracking_uri (or MLFLOW_TRACKING_URI)"
            )
        if uri is None:
            uri = f"sqlite:///{Path(str(tracking.runs_dir)).resolve() / 'mlflow.db'}"
        resolved["mlflow_tracking_uri"] = uri
    if "wandb" in names and tracking.wandb_mode is None:
        mode = os.environ.get("WANDB_MODE", "offline")
        resolved["wandb_mode"] = mode if mode in ("offline", "online", "disabled") else "offline"
    return resolved


def worker_memory_budget(use_gpus: bool, local_workers: int) -> int:
    """A worker's memory: its GPU's, or its share of this host's."""
    if use_gpus:
        return int(torch.cuda.get_device_properties(0).total_memory)
    return host_memory_bytes() // local_workers
