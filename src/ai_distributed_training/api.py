"""The public facade: validate everything, build the job, launch the workers, return a result.

Subclass :class:`DistributedTraining` and override :meth:`~DistributedTraining.train_distributed`
(calling ``super().train_distributed(...)``) to change defaults or post-process results;
:class:`GPUAcceleratedTraining` is such a subclass.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .config import TrainingSettings, validate
from .data import DataSource, resolve_data
from .errors import ConfigError
from .job import Job
from .launch import launch_local
from .models import ModelSource, resolve_model
from .result import TrainingResult
from .tracking import JOB_LOGGER, caller_log_level

log = logging.getLogger(JOB_LOGGER)

STATUS = "distributed_trained"
STATUS_ACCELERATED = "distributed_trained_with_acceleration"


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and containers' cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class PreparedJob:
    """A validated job, ready to launch: nothing has started yet."""

    settings: TrainingSettings
    model: ModelSource
    data: DataSource
    threads_per_worker: int
    log_level: str


def prepare(model: Any, data: Any, settings: TrainingSettings) -> PreparedJob:
    """Check the model, the data and their fit with the settings; start nothing.

    Raises:
        ConfigError / ConfigTypeError: naming the bad value and what is accepted.
    """
    model_source = resolve_model(model)
    data_source = resolve_data(data)
    nodes, info = settings.nodes, data_source.info
    n_train = info.samples - int(info.samples * settings.validation_split)
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
    if settings.use_gpus:
        _check_gpus(nodes)
    cores = available_cores()
    threads = settings.threads_per_worker or max(1, cores // nodes)
    if nodes > cores and not settings.use_gpus:
        warnings.warn(
            f"nodes={nodes} exceeds the {cores} CPU cores available: the workers share "
            f"the cores with {threads} thread each (fine for simulating a cluster, "
            f"slower than nodes={cores})",
            stacklevel=3,
        )
    return PreparedJob(
        settings, model_source, data_source, threads, settings.log_level or caller_log_level()
    )


def _check_gpus(nodes: int) -> None:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"use_gpus=True but CUDA is not available (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); pass use_gpus=False to "
            "train on CPUs"
        )
    count = torch.cuda.device_count()
    if count < nodes:
        raise ConfigError(
            f"use_gpus=True with nodes={nodes} needs {nodes} GPUs (one per "
            f"worker) but this host has {count}; use nodes <= {count}"
        )


def run(prepared: PreparedJob, started: float) -> TrainingResult:
    """Launch the workers for ``prepared`` and turn rank 0's output into a result."""
    settings, info = prepared.settings, prepared.data.info
    job_dir = tempfile.mkdtemp(prefix="adt-job-")
    try:
        job = Job(
            settings,
            prepared.model,
            prepared.data,
            prepared.threads_per_worker,
            prepared.log_level,
            job_dir,
        )
        job_path = job.save()
        log.info("Starting distributed training across %d nodes...", settings.nodes)
        launch_local(job_path, settings.nodes)
        out = torch.load(job.result_path, weights_only=True)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)

    model = prepared.model.build(info)
    model.load_state_dict(out["state_dict"])
    history: list[dict[str, float]] = out["history"]
    last = history[-1]
    metric_names = ["train_loss", "val_loss"]
    if info.task == "classification":
        metric_names += ["train_accuracy", "val_accuracy"]
    gpus = settings.use_gpus
    result = TrainingResult(
        model,
        model_name=prepared.model.name,
        nodes_used=out["world_size"],
        status=STATUS_ACCELERATED if gpus else STATUS,
        device="GPUs" if gpus else "CPUs",
        backend="nccl" if gpus else "gloo",
        task=info.task,
        data=info.description,
        epochs=settings.epochs,
        global_batch_size=settings.batch_size,
        steps=out["steps"],
        samples_seen=out["samples_seen"],
        final_loss=last["train_loss"],
        metrics={k: last.get(k) for k in metric_names},
        history=history,
        samples_per_second=out["samples_seen"] / out["train_time_s"],
        train_time_s=out["train_time_s"],
        threads_per_worker=prepared.threads_per_worker,
        weights_in_sync=out["weights_in_sync"],
        wall_time_s=time.perf_counter() - started,
    )
    log.info("Distributed training complete. %r", result)
    return result


class DistributedTraining:
    """Train a PyTorch model data-parallel across ``nodes`` worker processes.

    Keyword arguments given here are defaults for every call; ``train_distributed`` overrides
    them. Every setting is listed in :class:`~.config.TrainingSettings`; an unknown one raises
    :class:`~.errors.ConfigError` naming it.
    """

    def __init__(self, **settings: Any) -> None:
        validate(TrainingSettings, settings, "setting")  # fail here, not at the first call
        self.defaults: dict[str, Any] = dict(settings)

    def resolve_settings(self, **overrides: Any) -> TrainingSettings:
        """This object's defaults with ``overrides`` applied, validated."""
        return validate(TrainingSettings, {**self.defaults, **overrides}, "setting")

    def train_distributed(
        self, model: Any, data: Any, nodes: int | None = None, **settings: Any
    ) -> TrainingResult:
        """Train ``model`` on ``data`` across ``nodes`` workers and return a result dict.

        ``model``: a spec dict ``{"model_name": ..., "architecture": "mlp" | "linear", ...}``,
        an ``nn.Module`` (trained in place) or a zero-argument factory. ``data``: a synthetic spec
        dict ``{"samples": N, "features": F, ...}``, a pair ``(X, y)`` of tensors or arrays, a
        map-style ``Dataset`` or a ``.npy``/``.npz``/``.pt``/``.csv`` path.

        Raises:
            ConfigError / ConfigTypeError: bad input, before any worker starts.
            WorkerFailedError: a worker failed; it names the rank, the error and its traceback.
        """
        started = time.perf_counter()
        if nodes is not None:
            settings["nodes"] = nodes
        prepared = prepare(model, data, self.resolve_settings(**settings))
        return run(prepared, started)


class GPUAcceleratedTraining(DistributedTraining):
    """:class:`DistributedTraining` on GPUs by default: NCCL, one worker per GPU, bf16 autocast
    where the GPU supports it. Results say ``device="GPUs"`` and
    ``status="distributed_trained_with_acceleration"``."""

    def train_distributed(
        self,
        model: Any,
        data: Any,
        nodes: int | None = None,
        use_gpus: bool = True,
        **settings: Any,
    ) -> TrainingResult:
        return super().train_distributed(model, data, nodes=nodes, use_gpus=use_gpus, **settings)
