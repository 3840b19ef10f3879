"""The public facade: validate everything, build the job, launch the workers, return a result.

Subclass :class:`DistributedTraining` and override :meth:`~DistributedTraining.train_distributed`
(calling ``super().train_distributed(...)``) to change defaults or post-process results;
:class:`GPUAcceleratedTraining` is such a subclass.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .affinity import allowed_cpus
from .checkpoint import is_checkpoint, list_checkpoints, written_with
from .config import TrainingSettings, check_warmup, settings_as_plain_data, validate
from .data import DataInfo, DataSource, SyntheticSource, resolve_data
from .errors import ConfigError, WorkerFailedError
from .hardware import HardwareProfile, host_memory_bytes, resolve_profile
from .job import Job
from .launch import Hosts, launch_local, torchrun_rank
from .models import ModelSource, check_fits_data, resolve_model
from .plan import DEFAULT_NODES, Plan, choose_strategy, make_plan
from .rank import RankEnv, join_process_group, run_rank
from .report import write_report
from .result import TrainingResult
from .rundir import SUMMARY_FILE, announce, checkpoint_dir, create_run_dir, write_config
from .slurm import slurm_job
from .tracking import caller_log_level

STATUS = "distributed_trained"
STATUS_ACCELERATED = "distributed_trained_with_acceleration"


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and containers' cpusets)."""
    return len(allowed_cpus())


@dataclass(frozen=True)
class PreparedJob:
    """A validated job, ready to launch: nothing has started yet."""

    settings: TrainingSettings
    model: ModelSource
    data: DataSource
    threads_per_worker: int
    log_level: str
    validation: DataSource | None = None
    hosts: Hosts | None = None  # this host's part of a multi-host job


def prepare(
    model: Any, data: Any, settings: TrainingSettings, env: RankEnv | None = None
) -> PreparedJob:
    """Check the model, the data and their fit with the settings; start nothing.

    Raises:
        ConfigError / ConfigTypeError: naming the bad value and what is accepted.
    """
    model_source = resolve_model(model)
    data_source = resolve_data(data, settings.task)
    nodes, info = settings.nodes, data_source.info
    check_fits_data(model_source, info)
    validation = _resolve_validation(settings, info)
    held_out = 0.0 if validation else settings.validation_split
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
    if settings.use_gpus:
        _check_gpus(env.local_world_size if env else nodes // settings.nnodes)
    elif settings.precision == "fp16":
        raise ConfigError(
            "precision='fp16' needs GPUs (use_gpus=True); on CPUs use 'bf16' or 'fp32'"
        )
    check_warmup(settings)
    if settings.resume not in (None, "auto") and not is_checkpoint(Path(settings.resume)):
        raise ConfigError(
            f"resume={settings.resume!r}: no such checkpoint; pass 'auto' or the path of a "
            "step-*.pt checkpoint file or a committed step-*.dcp directory"
        )
    settings = _strategy_of_resumed_checkpoint(settings)
    if settings.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard=True needs the tensorboard package: "
            "pip install 'ai-distributed-training[tensorboard]'"
        )
    hosts = _check_hosts(settings) if env is None else None
    cores = available_cores()
    # the workers sharing this host
    local_workers = env.local_world_size if env else nodes // (hosts.nnodes if hosts else 1)
    if settings.strategy == "auto":
        budget = _worker_memory_budget(settings.use_gpus, local_workers)
        chosen = choose_strategy(model_source, info, settings, budget)
        settings = settings.model_copy(update={"strategy": chosen})
    threads = settings.threads_per_worker or max(1, cores // local_workers)
    if local_workers > cores and not settings.use_gpus:
        warnings.warn(
            f"nodes={nodes} exceeds the {cores} CPU cores available: the workers share "
            f"the cores with {threads} thread each (fine for simulating a cluster, "
            f"slower than nodes={cores})",
            stacklevel=3,
        )
    return PreparedJob(
        settings,
        model_source,
        data_source,
        threads,
        settings.log_level or caller_log_level(),
        validation,
        hosts,
    )


def _strategy_of_resumed_checkpoint(settings: TrainingSettings) -> TrainingSettings:
    """A checkpoint resumes only with the strategy that wrote it: say so before any worker
    starts; ``strategy="auto"`` follows the checkpoint."""
    if settings.resume is None:
        return settings
    path = Path(settings.resume)
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


def _check_hosts(settings: TrainingSettings) -> Hosts | None:
    """This host's part of a multi-host job, checked; None for a one-host job."""
    nnodes, nodes = settings.nnodes, settings.nodes
    if nnodes == 1:
        multi_host = {
            "rdzv_endpoint": settings.rdzv_endpoint,
            "local_addr": settings.local_addr,
            "node_rank": settings.node_rank or None,
        }
        given = {k: v for k, v in multi_host.items() if v is not None}
        if given:
            raise ConfigError(
                f"{', '.join(f'{k}={v!r}' for k, v in given.items())} only apply to a job over "
                "several hosts; set nnodes to the number of hosts (a one-host job needs none: "
                "its rendezvous is on a free local port)"
            )
        return None
    if nodes % nnodes:
        raise ConfigError(
            f"nodes={nodes} (all workers) does not split evenly over nnodes={nnodes} hosts; "
            f"use a multiple of {nnodes}, e.g. nodes={nnodes * max(1, nodes // nnodes)}"
        )
    if not settings.node_rank < nnodes:
        raise ConfigError(f"node_rank={settings.node_rank} must be in 0..{nnodes - 1}")
    endpoint = settings.rdzv_endpoint or ""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"rdzv_endpoint={settings.rdzv_endpoint!r}: nnodes={nnodes} needs HOST:PORT of "
            "the rendezvous on host 0, e.g. '10.0.0.1:29500'"
        )
    return Hosts(nnodes, settings.node_rank, endpoint, settings.local_addr, settings.rdzv_timeout_s)


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


def run(prepared: PreparedJob, started: float, inputs: dict[str, Any]) -> TrainingResult:
    """Launch the workers for ``prepared`` and turn rank 0's output into a result.

    ``inputs`` describes the model and data inputs for the run directory's ``config.yaml``.
    """
    settings = prepared.settings
    run_dir = create_run_dir(settings, prepared.model.name)
    ckpt_dir = checkpoint_dir(settings, run_dir)
    if prepared.hosts and settings.checkpoint_dir is None:
        ckpt_dir = None  # each host's run directory is its own: only a shared dir will do
    config = {**inputs, **settings_as_plain_data(settings)}
    job_dir = tempfile.mkdtemp(prefix="adt-job-")
    try:
        write_config(run_dir, config)
        job = Job(
            settings,
            prepared.model,
            prepared.data,
            prepared.threads_per_worker,
            prepared.log_level,
            job_dir,
            str(run_dir) if run_dir else None,
            str(ckpt_dir) if ckpt_dir else None,
            config,
            prepared.validation,
            pin_cpus=settings.cpu_affinity and not settings.use_gpus,
        )
        job_path = job.save()
        nodes = settings.nodes
        announce(run_dir, logging.INFO, f"Starting distributed training across {nodes} nodes...")
        launch_local(
            ["ai_distributed_training.worker", str(job_path)],
            settings.nodes // settings.nnodes,  # workers on this host
            log_dir=Path(job_dir) / "elastic",
            max_restarts=settings.max_restarts,
            hosts=prepared.hosts,
        )
        out = torch.load(job.result_path, weights_only=True)
        out["state_dict"] = torch.load(job.weights_path, weights_only=True)
    except WorkerFailedError as err:
        newest = list_checkpoints(ckpt_dir) if ckpt_dir else []
        err.note_checkpoint(str(newest[0]) if newest else None)
        first_line = str(err).splitlines()[0]
        announce(run_dir, logging.ERROR, f"Distributed training failed: {first_line}")
        raise
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    return _finish(prepared, out, run_dir, ckpt_dir, started)


def run_joined(
    prepared: PreparedJob, started: float, inputs: dict[str, Any], env: RankEnv
) -> TrainingResult:
    """Train as one rank of a job someone else launched (torchrun: ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` set), in this very process: every rank runs
    the caller's script and every rank returns the full result; global rank 0 alone writes the
    run directory, whose path the others learn through the process group."""
    settings = prepared.settings
    config = {**inputs, **settings_as_plain_data(settings)}
    owns_group = not dist.is_initialized()
    join_process_group(settings, env)
    try:
        dirs: list[Path | None] = [None, None]
        if env.rank == 0:
            dirs[0] = create_run_dir(settings, prepared.model.name)
            dirs[1] = checkpoint_dir(settings, dirs[0])
            write_config(dirs[0], config)
            message = f"Starting distributed training across {env.world_size} nodes (torchrun)..."
            announce(dirs[0], logging.INFO, message)
        dist.broadcast_object_list(dirs, src=0)  # collective: every rank, every time
        ckpt_dir = dirs[1]  # every rank reads and writes checkpoints in the same place
        run_dir = dirs[0] if env.rank == 0 else None  # rank 0's alone
        job = Job(
            settings,
            prepared.model,
            prepared.data,  # not staged: this process holds the data already
            prepared.threads_per_worker,
            prepared.log_level,
            tempfile.gettempdir(),  # nothing is handed over through files
            str(run_dir) if run_dir else None,
            str(ckpt_dir) if ckpt_dir else None,
            config,
            prepared.validation,
        )
        out = run_rank(job, env)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
    return _finish(prepared, out, run_dir, ckpt_dir, started)


def _finish(
    prepared: PreparedJob,
    out: dict[str, Any],
    run_dir: Path | None,
    ckpt_dir: Path | None,
    started: float,
) -> TrainingResult:
    """The result of a finished job from a rank's output (weights included), written to the
    run directory when there is one."""
    settings, info = prepared.settings, prepared.data.info
    state_dict = out["state_dict"]
    model = prepared.model.build(info)
    model.load_state_dict(state_dict)
    history: list[dict[str, float]] = out["history"]
    last = history[-1]
    names = ["loss", *(["accuracy"] if info.task == "classification" else []), *settings.metrics]
    metric_names = [f"{split}_{name}" for name in names for split in ("train", "val")]
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
        epochs=len(history),  # fewer than settings.epochs when stopped early
        global_batch_size=settings.batch_size,
        steps=out["steps"],
        samples_seen=out["samples_seen"],
        final_loss=last["train_loss"],
        metrics={k: last.get(k) for k in metric_names},
        history=history,
        samples_per_second=out["samples_seen"] / out["train_time_s"],
        train_time_s=out["train_time_s"],
        threads_per_worker=prepared.threads_per_worker,
        cpus_per_worker=out["cpus_per_worker"],
        peak_memory_per_worker_bytes=out["peak_memory_per_worker_bytes"],
        model_state_bytes_per_worker=out["model_state_bytes_per_worker"],
        strategy=settings.strategy,
        weights_in_sync=out["weights_in_sync"],
        stopped_early=out["stopped_early"],
        restarts=out["restarts"],
        skipped_steps=out["skipped_steps"],
        checkpoint_dir=str(ckpt_dir) if ckpt_dir else None,
        run_dir=str(run_dir) if run_dir else None,
        wall_time_s=time.perf_counter() - started,
    )
    if not result["weights_in_sync"]:
        warnings.warn(
            "the workers ended with different weights: something outside the "
            "optimizer changed parameters on some ranks (see weights_in_sync)",
            stacklevel=3,
        )
    if run_dir:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(dict(result), indent=2) + "\n")
        write_report(run_dir)
    announce(run_dir, logging.INFO, f"Distributed training complete. {result!r}")
    return result


def _synthetic_spec(source: DataSource) -> Any:
    return source.spec if isinstance(source, SyntheticSource) else None


def _describe(value: Any, spec: Any) -> Any:
    """How a model or data input appears in config.yaml: a spec, a path, or a description."""
    if spec is not None:
        return spec.model_dump()
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return f"<{type(value).__name__}>"


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
        env = torchrun_rank()
        slurm = slurm_job(os.environ) if env is None else None
        if slurm is not None and slurm.task_per_worker:  # srun made this task a worker
            for name, value in slurm.worker_environ().items():
                os.environ.setdefault(name, value)
            env = torchrun_rank()
        elif slurm is not None and "nnodes" not in {**self.defaults, **settings}:
            settings = {**slurm.launcher_settings(), **settings}  # one launcher per host
        if env is not None:  # already a rank of a launched job: join it, start nothing
            if settings.get("nodes", env.world_size) != env.world_size:
                warnings.warn(
                    f"nodes={settings['nodes']} ignored: this process is rank {env.rank} of "
                    f"a torchrun job of {env.world_size} workers",
                    stacklevel=2,
                )
            settings["nodes"] = env.world_size
        prepared = prepare(model, data, self.resolve_settings(**settings), env)
        inputs = {
            "model": _describe(model, prepared.model.spec),
            "data": _describe(data, _synthetic_spec(prepared.data)),
        }
        if env is not None:
            return run_joined(prepared, started, inputs, env)
        return run(prepared, started, inputs)

    def plan(
        self,
        model: Any,
        data: Any,
        nodes: int | Sequence[int] | None = None,
        hardware: str | Path | HardwareProfile | None = None,
        calibrate: bool = False,
        threshold: float = 0.8,
        **settings: Any,
    ) -> Plan:
        """Predict memory per worker, step time, samples/s and scaling efficiency for node
        counts 1, 2, 4, ..., 1024 (plus ``nodes`` if an int; exactly ``nodes`` if a list, with
        1 added as the baseline), and recommend a strategy and node count. Trains nothing.

        ``hardware``: ``None``/``"this-machine"`` (this machine's saved calibration, measured
        on first use or when ``calibrate=True``), a preset name (see
        :data:`~.hardware.PRESETS`), a profile YAML path, or a :class:`HardwareProfile`.
        ``threshold``: the scaling efficiency under which more nodes are not recommended.

        Raises:
            ConfigError: bad settings, node counts, threshold or hardware; before any probe.
        """
        counts: tuple[Any, ...]
        if nodes is None:
            counts = DEFAULT_NODES
        elif isinstance(nodes, int):
            counts = (*DEFAULT_NODES, nodes)
        elif isinstance(nodes, Sequence) and not isinstance(nodes, str):
            counts = (1, *nodes)
        else:
            counts = (nodes,)
        bad = [n for n in counts if isinstance(n, bool) or not isinstance(n, int) or n < 1]
        if bad:
            raise ConfigError(f"nodes={nodes!r}: node counts must be positive integers")
        if not 0 < threshold <= 1:
            raise ConfigError(f"threshold={threshold!r} must be in (0, 1]")
        resolved = self.resolve_settings(**settings)
        model_source = resolve_model(model)
        data_source = resolve_data(data, resolved.task)
        profile = resolve_profile(hardware, calibrate)
        return make_plan(model_source, data_source, resolved, profile, counts, threshold)


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
