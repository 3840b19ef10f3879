"""Check the model, the data and the settings against each other, before anything starts.

:func:`prepare` turns the caller's inputs into a :class:`PreparedJob`: resolved sources, the
topology, the strategy ``auto`` resolved, threads per worker. Every problem is a
:class:`~.errors.ConfigError` naming the bad value and what is accepted.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainingSettings, check_warmup
from .data import DataInfo, DataSource, resolve_data
from .errors import ConfigError
from .host import available_cores, host_memory_bytes
from .models import ModelSource, check_fits_data, resolve_model
from .planner import choose_strategy
from .topology import RankEnv, Topology
from .training.checkpoint import is_checkpoint, list_checkpoints, written_with
from .training.tracking import caller_log_level


@dataclass(frozen=True, kw_only=True)
class PreparedJob:
    """A validated job, ready to launch or join: nothing has started yet."""

    settings: TrainingSettings
    model: ModelSource
    data: DataSource
    validation: DataSource | None = None
    topology: Topology
    threads_per_worker: int
    log_level: str


def prepare(
    model: Any, data: Any, settings: TrainingSettings, joined: RankEnv | None = None
) -> PreparedJob:
    """Check ``model``, ``data`` and their fit with ``settings``; start nothing. ``joined``:
    this process is a rank of a job someone else launched (torchrun, srun).

    Raises:
        ConfigError / ConfigTypeError: naming the bad value and what is accepted.
    """
    model_source = resolve_model(model)
    data_source = resolve_data(data, settings.task)
    check_fits_data(model_source, data_source.info)
    validation = _resolve_validation(settings, data_source.info)
    held_out = 0.0 if validation else settings.validation_split
    _check_sizes(settings, data_source.info, held_out)
    topology = Topology.of(settings, joined)
    _check_device(settings, topology)
    check_warmup(settings)
    settings = _strategy_of_resumed_checkpoint(settings)
    if settings.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard=True needs the tensorboard package: "
            "pip install 'ai-distributed-training[tensorboard]'"
        )
    if settings.strategy == "auto":
        budget = _worker_memory_budget(settings.use_gpus, topology.local_world_size)
        chosen = choose_strategy(model_source, data_source.info, settings, budget)
        settings = settings.model_copy(update={"strategy": chosen})
    return PreparedJob(
        settings=settings,
        model=model_source,
        data=data_source,
        validation=validation,
        topology=topology,
        threads_per_worker=_threads_per_worker(settings, topology),
        log_level=settings.log_level or caller_log_level(),
    )


def _check_sizes(settings: TrainingSettings, info: DataInfo, held_out: float) -> None:
    """Every worker needs samples: at least one per node overall, and one per node per step;
    ``held_out``: the fraction of the data held out for validation."""
    nodes = settings.nodes
    n_train = info.samples - int(info.samples * held_out)
    if nodes > n_train:
        raise ConfigError(
            f"nodes={nodes} is more than the {n_train} training samples "
            f"({info.samples} samples, validation_split="
            f"{settings.validation_split}); use at most {n_train} nodes"
        )
    if settings.batch_size < nodes:
        raise ConfigError(
            f"batch_size={settings.batch_size} (the GLOBAL batch) is smaller than "
            f"nodes={nodes}; every worker needs a sample per step: use "
            f"batch_size >= {nodes}"
        )


def _check_device(settings: TrainingSettings, topology: Topology) -> None:
    """GPUs for every local worker when asked for; fp16 only on GPUs."""
    if settings.use_gpus:
        _check_gpus(topology.local_world_size)
    elif settings.precision == "fp16":
        raise ConfigError(
            "precision='fp16' needs GPUs (use_gpus=True); on CPUs use 'bf16' or 'fp32'"
        )


def _check_gpus(local_workers: int) -> None:
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


def _threads_per_worker(settings: TrainingSettings, topology: Topology) -> int:
    """The setting, or this host's cores shared by its workers (a warning when they are
    fewer than the workers)."""
    cores, local_workers = available_cores(), topology.local_world_size
    threads = settings.threads_per_worker or max(1, cores // local_workers)
    if local_workers > cores and not settings.use_gpus:
        warnings.warn(
            f"nodes={settings.nodes} exceeds the {cores} CPU cores available: the workers "
            f"share the cores with {threads} thread each (fine for simulating a cluster, "
            f"slower than nodes={cores})",
            stacklevel=4,
        )
    return threads


def _strategy_of_resumed_checkpoint(settings: TrainingSettings) -> TrainingSettings:
    """A checkpoint resumes only with the strategy that wrote it: say so before any worker
    starts; ``strategy="auto"`` follows the checkpoint."""
    if settings.resume is None:
        return settings
    path = Path(settings.resume)
    if settings.resume != "auto" and not is_checkpoint(path):
        raise ConfigError(
            f"resume={settings.resume!r}: no such checkpoint; pass 'auto' or the path of a "
            "step-*.pt checkpoint file or a committed step-*.dcp directory"
        )
    if settings.resume == "auto":
        found = list_checkpoints(Path(settings.checkpoint_dir)) if settings.checkpoint_dir else []
        if not found:
            return settings
        path = found[0]
    try:
        written = written_with(path)
    except Exception:  # unreadable: the workers skip it (auto) or fail naming it
        return settings
    if settings.strategy == "auto":
        return settings.model_copy(update={"strategy": written})
    if settings.strategy != written:
        raise ConfigError(
            f"the checkpoint {path.name} was written with strategy={written!r}; resume it with "
            f"strategy={written!r} (or 'auto'), not {settings.strategy!r}"
        )
    return settings


def _worker_memory_budget(use_gpus: bool, local_workers: int) -> int:
    """A worker's memory: its GPU's, or its share of this host's."""
    if use_gpus:
        return int(torch.cuda.get_device_properties(0).total_memory)
    return host_memory_bytes() // local_workers


def _resolve_validation(settings: TrainingSettings, info: DataInfo) -> DataSource | None:
    """The separate validation set, checked to fit the training data (same inputs and task)."""
    if settings.validation_data is None:
        return None
    source = resolve_data(settings.validation_data, settings.task or info.task)
    if source.info.input_shape != info.input_shape:
        raise ConfigError(
            f"validation_data inputs have shape {source.info.input_shape}, the "
            f"training data {info.input_shape}; they must match"
        )
    return source
