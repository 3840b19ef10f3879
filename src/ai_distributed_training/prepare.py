"""Check the model, the data and the settings against each other, before anything starts.

:func:`prepare` turns the caller's inputs into a :class:`PreparedJob`: resolved sources, the
topology, the strategy ``auto`` resolved, threads per worker. Every problem is a
:class:`~.errors.ConfigError` naming the bad value and what is accepted.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from .config import TrainingSettings, check_warmup
from .data import DataInfo, DataSource, resolve_data
from .data.streams import StreamSource
from .data.tensors import DatasetSource, TensorSource
from .errors import ConfigError, ConfigTypeError, DataChangedError
from .host import available_cores, host_memory_bytes
from .models import ModelSource, check_fits_data, resolve_model, weight_bytes
from .planner import choose_strategy
from .rundir import runs_of
from .topology import RankEnv, Topology
from .training.callbacks import Callback
from .training.checkpoint import (
    checkpoint_meta,
    is_checkpoint,
    list_checkpoints,
)
from .training.dryrun import (
    DryRunFacts,
    class_dimension,
    classes_from_outputs,
    dry_run,
    dry_run_module,
    dry_run_step,
)
from .training.identity import changed_data_files, compatible, differences
from .training.identity import fingerprint as run_fingerprint
from .training.sharding import smallest_share
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
    #: What a run must match to continue from this one's checkpoints.
    fingerprint: dict[str, str]
    #: Where the run starts from (the ``resume`` setting, resolved; see :func:`_resume_point`).
    resume_path: Path | None = None
    resume_dir: Path | None = None
    #: What the checks decided that the run's events.log must say (e.g. a changed data file
    #: continued on, with ``allow_data_change``).
    notes: tuple[str, ...] = ()


def prepare(
    model: Any, data: Any, settings: TrainingSettings, joined: RankEnv | None = None
) -> PreparedJob:
    """Check ``model``, ``data`` and their fit with ``settings``; start nothing. ``joined``:
    this process is a rank of a job someone else launched (torchrun, srun).

    Raises:
        ConfigError / ConfigTypeError: naming the bad value and what is accepted.
    """
    model_source = resolve_model(model)
    data_source = resolve_data(
        data, settings.task, settings.target, settings.num_classes, settings.collate_fn
    )
    settings = _adopt_loader_batch(settings, data_source)
    settings = _check_custom_step(settings, model_source)
    settings, data_source = _check_stream(settings, data_source)
    check_fits_data(model_source, data_source.info)
    validation = _resolve_validation(settings, data_source.info)
    held_out = 0.0 if validation else settings.validation_split
    _check_sizes(settings, data_source.info, held_out)
    _check_launcher_settings(settings)
    topology = Topology.of(settings, joined)
    threads = _check_placement(settings, topology)
    _check_workers(settings, topology)
    skeleton = model_source.skeleton(data_source.info)  # built once for the checks below
    _check_trainable(skeleton, model_source.name)
    _check_fsdp_blocks(settings.fsdp_blocks, skeleton)
    _check_fits_host(skeleton, model_source.name, data_source)
    notes: list[str] = []
    data_source, facts = _check_on_two_samples(model_source, skeleton, data_source, settings, notes)
    _check_batchnorm(skeleton, data_source.info, settings, topology.world_size, held_out, facts)
    check_warmup(settings)
    _check_compile(settings)
    fingerprint = run_fingerprint(skeleton, data_source, settings)
    settings, resume_path, resume_dir = _resume_point(
        settings, fingerprint, model_source.name, notes
    )
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
        threads_per_worker=threads,
        log_level=settings.log_level or caller_log_level(),
        fingerprint=fingerprint,
        resume_path=resume_path,
        resume_dir=resume_dir,
        notes=tuple(notes),
    )


def _check_on_two_samples(
    model: ModelSource,
    skeleton: nn.Module,
    data: DataSource,
    settings: TrainingSettings,
    notes: list[str],
) -> tuple[DataSource, DryRunFacts | None]:
    """The user's model (or train_step) run on two samples of the data (``dry_run``), and
    what its outputs say of the data: whole-number float targets scored as classes, labels
    the model has no output for. The built-in architectures fit the data by construction."""
    if not settings.dry_run or model.spec is not None:
        return data, None
    checked = dry_run_module(model, skeleton, data.info, trains_on_cpu=not settings.use_gpus)
    if checked is None:
        return data, None
    if settings.train_step is not None:
        dry_run_step(checked, data, settings)
        return data, None
    facts = dry_run(checked, data, settings)
    data = classes_from_outputs(data, facts, notes)
    _check_classes(data.info, facts, model.name)
    return data, facts


def _check_fsdp_blocks(blocks: list[str] | None, skeleton: nn.Module) -> None:
    """``fsdp_blocks`` that name module classes of the model: a name that matches none would
    leave the whole model one FSDP unit, its memory saving lost without a word."""
    present = {type(m).__name__ for m in skeleton.modules()}
    missing = [b for b in blocks or [] if b not in present]
    if missing:
        raise ConfigError(
            f"fsdp_blocks names {missing}, no module class of the model; its module classes "
            f"are {sorted(present)}"
        )


def _check_trainable(skeleton: nn.Module, name: str) -> None:
    """A model with something to train (the built-in step's optimizer needs parameters)."""
    if not any(p.requires_grad for p in skeleton.parameters()):
        what = "no parameters" if next(skeleton.parameters(), None) is None else "every one frozen"
        raise ConfigError(
            f"the model {name} has {what} (requires_grad=False): nothing to train; pass a "
            "model with trainable parameters"
        )


def _check_fits_host(skeleton: nn.Module, name: str, data: DataSource) -> None:
    """Weights, and synthetic data each worker generates whole, that fit this host's memory
    (else every worker fails building them, after the launch)."""
    memory = host_memory_bytes()
    weights = weight_bytes(skeleton)
    if weights > memory:
        raise ConfigError(
            f"the model {name}'s weights take {weights / 2**30:,.1f} GiB, more than this "
            f"host's {memory / 2**30:,.1f} GiB of memory: no worker could build it"
        )
    spec = getattr(data, "spec", None)
    if spec is not None:
        values = math.prod(data.info.input_shape) + 1
        size = spec.samples * values * 4
        if size > memory:
            raise ConfigError(
                f"samples={spec.samples} of synthetic data take {size / 2**30:,.1f} GiB, more "
                f"than this host's {memory / 2**30:,.1f} GiB of memory (each worker generates "
                f"them whole); use at most {memory // (values * 4) // 2:,} samples"
            )


def _check_classes(info: DataInfo, facts: DryRunFacts | None, name: str) -> None:
    """Class labels the model has outputs for: a label >= its classes fails in every worker
    (cross-entropy's "Target 10 is out of bounds"), after the launch."""
    if facts is None or info.task != "classification" or info.tokens:
        return
    classes = class_dimension(facts.prediction_shape, facts.target_shape)
    if classes is not None and info.num_outputs > classes:
        raise ConfigError(
            f"the labels go up to {info.num_outputs - 1} ({info.num_outputs} classes) but the "
            f"model {name} outputs {classes} classes; give it {info.num_outputs} outputs, or "
            f"labels in 0..{classes - 1}"
        )


def _adopt_loader_batch(settings: TrainingSettings, data: DataSource) -> TrainingSettings:
    """A user DataLoader's ``batch_size`` (and ``drop_last``) become the settings' where those
    are not set; a different ``batch_size`` setting is a ConfigError: both would claim to be
    the batch."""
    if not isinstance(data, (DatasetSource, StreamSource, TensorSource)):
        return settings
    if data.loader_batch_size is None:
        return settings
    given, theirs = settings.model_fields_set, data.loader_batch_size
    if "batch_size" in given and settings.batch_size != theirs:
        raise ConfigError(
            f"the DataLoader's batch_size={theirs} differs from batch_size="
            f"{settings.batch_size}: batch_size is the GLOBAL batch, split over the nodes (each "
            "rank reads its share); a DataLoader's batch_size is taken as the global batch when "
            "the batch_size setting is not given. Make them equal, or set only one"
        )
    update: dict[str, Any] = {"batch_size": theirs}
    if data.loader_drop_last and "drop_last" not in given:
        update["drop_last"] = True
    return settings.model_copy(update=update)


def _check_custom_step(settings: TrainingSettings, model: ModelSource) -> TrainingSettings:
    """Several models train through a ``train_step``; a dict of optimizers matches the models'
    names; a custom step does its own micro-batching. A train_step has no built-in
    validation: nothing is held out for it."""
    names = sorted(model.parts) if model.parts is not None else ["model"]
    ignored = [k for k in ("loss_fn", "forward", "count_fn") if getattr(settings, k) is not None]
    if settings.train_step is not None and ignored:
        raise ConfigError(
            f"{', '.join(ignored)} apply to the built-in step; your train_step computes its own "
            "loss (call them from it), so they would be ignored: pass one or the other"
        )
    if settings.train_step is None:
        if model.parts is not None:
            raise ConfigError(
                f"a dict of models ({', '.join(names)}) trains through your train_step(ctx, "
                "batch) setting, which says what each model learns; pass train_step=..."
            )
        for what in ("optimizer", "scheduler"):
            if isinstance(getattr(settings, what), dict):
                raise ConfigError(f"a dict of {what}s goes with a dict of models and a train_step")
        return settings
    for what in ("optimizer", "scheduler"):
        given = getattr(settings, what)
        if isinstance(given, dict) and sorted(given) != names:
            raise ConfigError(
                f"the {what} dict's keys {sorted(given)} must be the models' names {names}"
            )
    if settings.gradient_accumulation_steps != 1:
        raise ConfigError(
            f"gradient_accumulation_steps={settings.gradient_accumulation_steps} does not apply "
            "to a train_step: it gets this worker's whole share of the global batch; split it "
            "yourself, backward each part inside ctx.no_sync(name) but the last"
        )
    if settings.validation_data is not None:  # the loop validates with the built-in step only
        what = "a dict of models is" if model.parts is not None else "a train_step is"
        raise ConfigError(
            f"validation_data needs the built-in step to evaluate; {what} not validated "
            "(report your own metrics from train_step)"
        )
    return settings.model_copy(update={"validation_split": 0.0})  # nothing held out unused


def _check_stream(
    settings: TrainingSettings, data: DataSource
) -> tuple[TrainingSettings, DataSource]:
    """A stream split as ``stream_sharding`` says. One of unknown length trains each epoch
    until it ends (on every rank together), as torch's DataLoader does; what needs the steps in
    all (a schedule by fraction) needs ``max_steps``. It has no held-out split
    (``validation_data`` can validate it). One without a state is re-read on resume (said
    once, here)."""
    if not isinstance(data, StreamSource):
        return settings, data
    data = data.split_by(settings.stream_sharding)
    name = type(data.dataset).__name__
    needs_total = [
        f"{k}={getattr(settings, k)!r}"
        for k, default in (("lr_schedule", "constant"), ("warmup_ratio", None))
        if getattr(settings, k) != default
    ]
    if data.info.samples == 0 and settings.max_steps is None and needs_total:
        raise ConfigError(
            f"the stream {name} has no len(), so the steps in all are not known, and "
            f"{', '.join(needs_total)} needs them; pass max_steps (optimizer steps in all), "
            "give the stream a __len__, or use warmup_steps and lr_schedule='constant' (each "
            "epoch then ends where the stream does)"
        )
    if not data.stateful:
        warnings.warn(
            f"the stream {name} has no state_dict()/load_state_dict(): after a restart it is "
            "read again from its beginning and the global batches already trained are read "
            "and skipped (exact only if it yields the same samples again)",
            stacklevel=5,
        )
    return settings.model_copy(update={"validation_split": 0.0}), data


def _check_sizes(settings: TrainingSettings, info: DataInfo, held_out: float) -> None:
    """Every worker needs samples: at least one per node overall, and one per node per step;
    ``held_out``: the fraction of the data held out for validation."""
    nodes = settings.nodes
    n_train = info.samples - int(info.samples * held_out)
    if nodes > n_train and not info.stream:  # a stream's length may be unknown (0)
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


#: Workers per CPU core at most: beyond it a job only simulates a cluster, ever more slowly.
MAX_WORKERS_PER_CORE = 32


def _check_placement(settings: TrainingSettings, topology: Topology) -> int:
    """Where the workers go, checked: GPUs and a sane number of workers on this host, or room
    for them on the Ray cluster (joined at this point: an unreachable one is said before any
    worker starts). Returns the threads per worker."""
    on_ray = settings.launcher == "ray" and topology.joined is None
    _check_device(settings, topology, gpus_here=not on_ray)
    if on_ray:
        from .launch.ray_launcher import connect, workers_fit  # Ray is an optional extra

        return workers_fit(settings, connect(settings.ray_address))  # its GPUs too
    cores = available_cores()
    limit = MAX_WORKERS_PER_CORE * cores
    if topology.joined is None and not settings.use_gpus and topology.local_world_size > limit:
        raise ConfigError(
            f"nodes={settings.nodes} puts {topology.local_world_size} worker processes on this "
            f"host, more than {limit} ({MAX_WORKERS_PER_CORE} per CPU core, {cores} cores); use "
            f"at most {limit} per host, or more hosts (nnodes)"
        )
    return _threads_per_worker(settings, topology)


def _check_compile(settings: TrainingSettings) -> None:
    """A ``compile`` backend torch knows (imports torch's compiler stack only when named)."""
    if not isinstance(settings.compile, str):
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if settings.compile not in known:
        raise ConfigError(
            f"compile={settings.compile!r} is not a torch.compile backend; use True (inductor), "
            f"False (eager), or one of {', '.join(known)}"
        )


def _check_launcher_settings(settings: TrainingSettings) -> None:
    """Ray settings only with the Ray launcher; host settings only with torch elastic's."""
    if settings.launcher == "elastic":
        given = {
            k: getattr(settings, k)
            for k in ("ray_address", "ray_storage_path")
            if getattr(settings, k) is not None
        }
        if given:
            raise ConfigError(
                f"{', '.join(f'{k}={v!r}' for k, v in given.items())} only apply with "
                "launcher='ray'; pass launcher='ray' to train on a Ray cluster"
            )
    elif settings.nnodes > 1:
        raise ConfigError(
            f"nnodes={settings.nnodes} is for launcher='elastic' (one command per host); with "
            "launcher='ray', Ray places the nodes workers on its cluster's hosts: leave nnodes, "
            "node_rank and rdzv_endpoint unset"
        )


def _check_workers(settings: TrainingSettings, topology: Topology) -> None:
    """Callbacks that are Callbacks; faults aimed at a rank that exists."""
    for cb in settings.callbacks:
        if not isinstance(cb, Callback):
            raise ConfigTypeError(
                f"callbacks=[..., {cb!r}, ...]: {type(cb).__name__} is not a Callback; pass "
                "instances of a subclass of ai_distributed_training.Callback"
            )
    for fault in settings.fault_injection:
        if fault.rank >= topology.world_size:
            raise ConfigError(
                f"fault_injection rank={fault.rank} does not exist in a job of "
                f"{topology.world_size} workers; use a rank in 0..{topology.world_size - 1}"
            )


def _check_device(settings: TrainingSettings, topology: Topology, *, gpus_here: bool) -> None:
    """GPUs for every local worker when asked for (``gpus_here``: the workers run on this
    host); fp16 and SyncBatchNorm only on GPUs."""
    if settings.use_gpus:
        if gpus_here:
            _check_gpus(topology.local_world_size)
    elif settings.precision == "fp16":
        raise ConfigError(
            "precision='fp16' needs GPUs (use_gpus=True); on CPUs use 'bf16' or 'fp32'"
        )
    elif settings.sync_batchnorm:
        raise ConfigError(
            "sync_batchnorm=True needs GPUs (torch's SyncBatchNorm runs on GPUs only); on CPUs "
            "each worker normalizes with its own share's statistics"
        )


def _check_batchnorm(
    model: nn.Module,
    info: DataInfo,
    settings: TrainingSettings,
    world_size: int,
    held_out: float,
    facts: DryRunFacts | None,
) -> None:
    """BatchNorm in training needs samples in every worker's micro-batch, and 2 or more where
    a layer sees one value per channel per sample (BatchNorm1d on feature vectors, BatchNorm2d
    on 1x1 maps, as the dry run saw; without it, BatchNorm1d is taken as such): with 1 it fails
    in a worker, after the launch. Said before any worker starts, with the way out."""
    layers = {type(m).__name__ for m in model.modules() if isinstance(m, _BatchNorm)}
    if not layers or info.stream:  # a stream's last global batch is not known in advance
        return
    n_train = info.samples - int(info.samples * held_out)
    share = smallest_share(n_train, settings.batch_size, world_size, settings.drop_last)
    smallest = share // settings.gradient_accumulation_steps
    if facts is not None and facts.batchnorm_values_per_sample is not None:
        need = 2 if facts.batchnorm_values_per_sample == 1 else 1
    else:
        need = 2 if "BatchNorm1d" in layers else 1
    if smallest < need:
        raise ConfigError(
            f"the model's {', '.join(sorted(layers))} layers need at least {need} sample(s) per "
            f"worker in each micro-batch, but with batch_size={settings.batch_size} over nodes="
            f"{world_size} (gradient_accumulation_steps={settings.gradient_accumulation_steps}, "
            f"{n_train} training samples) a worker gets {smallest}; pass drop_last=True (drops "
            "each epoch's last, smaller global batch) or a larger batch_size"
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
            stacklevel=5,  # the caller: here, prepare, _train, train_distributed
        )
    return threads


def _resume_point(
    settings: TrainingSettings, fingerprint: dict[str, str], model_name: str, notes: list[str]
) -> tuple[TrainingSettings, Path | None, Path | None]:
    """Where the run starts from, checked before any worker starts: ``(settings, path, dir)``.

    A path as given (the model must be the one that wrote it). ``"auto"``: the newest checkpoint
    in ``checkpoint_dir`` (refused, naming what differs, if its run is not compatible), or
    without ``checkpoint_dir`` the newest compatible earlier run of this model under
    ``runs_dir``; the workers then take the newest valid checkpoint there (skipping, with a
    warning, any that fails its checksums). A checkpoint resumes only with the strategy that
    wrote it; ``strategy="auto"`` follows it. Only checkpoints' small facts are read here. A
    data file changed since is refused, or with ``allow_data_change`` said in ``notes``."""
    if settings.resume is None:
        return settings, None, None
    path: Path | None = None
    directory: Path | None = None
    newest: tuple[Path, dict[str, Any]] | None
    if settings.resume != "auto":
        path = Path(settings.resume)
        if not is_checkpoint(path):
            raise ConfigError(
                f"resume={settings.resume!r}: no such checkpoint; pass 'auto' or the path of a "
                "step-*.pt checkpoint file or a committed step-*.dcp directory"
            )
        newest = path, checkpoint_meta(path)
    elif settings.checkpoint_dir is not None:
        directory = Path(settings.checkpoint_dir)
        newest = _newest_readable(directory)
    else:
        directory = _newest_compatible_run(settings.runs_dir, model_name, fingerprint)
        newest = _newest_readable(directory) if directory else None
    if newest is None:
        return settings, None, None
    settings = _strategy_of(*newest, settings)
    if path is None:  # a path given is a choice of weights: other data may follow
        notes += _check_data_files(*newest, fingerprint, settings.allow_data_change)
    _check_compatible(*newest, fingerprint, only_model=path is not None)
    return settings, path, directory


def _check_data_files(
    path: Path, meta: dict[str, Any], fingerprint: dict[str, str], allowed: bool
) -> list[str]:
    """Refuse to continue the checkpoint ``path`` if a data file changed since it was written
    (its run trained on the old contents: the two would mix silently), unless ``allowed``;
    returns what the run's events.log says of it then."""
    changed = changed_data_files(fingerprint, meta.get("fingerprint") or {})
    if changed and not allowed:
        raise DataChangedError(changed, f"the checkpoint {path}")
    return [f"continuing {path} on changed data (allow_data_change=True): {c}" for c in changed]


def _newest_readable(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` whose facts can be read, with those facts (the
    workers verify the whole of it)."""
    for path in list_checkpoints(directory):
        try:
            return path, checkpoint_meta(path)
        except Exception:  # truncated or corrupt: the workers skip it, with a warning
            continue
    return None


def _strategy_of(path: Path, meta: dict[str, Any], settings: TrainingSettings) -> TrainingSettings:
    written = str(meta.get("strategy", "ddp"))
    if settings.strategy == "auto":
        return settings.model_copy(update={"strategy": written})
    if settings.strategy != written:
        raise ConfigError(
            f"the checkpoint {path.name} was written with strategy={written!r}; resume it with "
            f"strategy={written!r} (or 'auto'), not {settings.strategy!r}"
        )
    return settings


def _check_compatible(
    path: Path, meta: dict[str, Any], fingerprint: dict[str, str], only_model: bool
) -> None:
    """Refuse a checkpoint whose run differs from this one in what changes the math (a
    checkpoint given by its path: in the model only); checkpoints from before fingerprints are
    taken as they are."""
    theirs = meta.get("fingerprint")
    if not theirs:
        return
    mine = {"model": fingerprint["model"]} if only_model else fingerprint
    theirs = {"model": theirs.get("model", "")} if only_model else theirs
    differ = differences(mine, theirs, data_files=False)  # those: _check_data_files
    if differ:
        raise ConfigError(
            f"resume={str(path) if only_model else 'auto'!r}: the checkpoint {path} belongs to "
            f"a run that differs in {', '.join(differ)}; resume it with the same model, data "
            "and settings, or start afresh (resume=None, or another checkpoint_dir)"
        )


def _newest_compatible_run(
    runs_dir: str | None, model_name: str, fingerprint: dict[str, str]
) -> Path | None:
    """``resume="auto"`` without ``checkpoint_dir``: the checkpoint directory of the newest
    earlier run of this model (``<runs_dir>/<timestamp>-<model_name>``) that it can continue
    but for its data files' contents (a change there is refused, not silently passed over)."""
    for run in runs_of(Path(runs_dir), model_name) if runs_dir else []:
        for path in list_checkpoints(run / "checkpoints"):
            try:
                if compatible(fingerprint, checkpoint_meta(path), data_files=False):
                    return run / "checkpoints"
            except Exception:  # unreadable: not a candidate
                continue
    return None


def _worker_memory_budget(use_gpus: bool, local_workers: int) -> int:
    """A worker's memory: its GPU's, or its share of this host's."""
    if use_gpus:
        return int(torch.cuda.get_device_properties(0).total_memory)
    return host_memory_bytes() // local_workers


def _resolve_validation(settings: TrainingSettings, info: DataInfo) -> DataSource | None:
    """The separate validation set, checked to fit the training data (same inputs and task)."""
    if settings.validation_data is None:
        return None
    given = settings.validation_data
    target = settings.target if isinstance(given, (str, os.PathLike)) else None
    collate = settings.collate_fn if isinstance(given, (Dataset, DataLoader)) else None
    source = resolve_data(given, settings.task or info.task, target, None, collate)
    if source.info.input_shape != info.input_shape:
        raise ConfigError(
            f"validation_data inputs have shape {source.info.input_shape}, the "
            f"training data {info.input_shape}; they must match"
        )
    return source
