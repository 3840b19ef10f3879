"""The resolved job's typed sections: what each component is built from.

:class:`~.settings.TrainingSettings` is the public surface: flat keyword arguments, YAML keys and
CLI ``--set`` names, validated one by one. Behind it each component reads only its own section
(the optimizer its :class:`OptimSection`, the loop its :class:`LoopSection`, the launcher its
:class:`LaunchSection`, ...). A section is frozen and keyword-only, and checks in
``__post_init__`` the rules between its own fields, so a rule that reads only settings has one
home: the section that owns those settings (as torchtitan's job config sections do). Rules that
need the model, the data or the host live in :mod:`..prepare`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .settings import FaultSpec, TrainingSettings

OptimizerChoice = str | Callable[..., Any]


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    """The optimizer and its learning-rate schedule."""

    optimizer: OptimizerChoice | dict[str, OptimizerChoice]
    learning_rate: float
    momentum: float
    weight_decay: float
    scheduler: Callable[..., Any] | dict[str, Callable[..., Any]] | None
    lr_schedule: Literal["constant", "linear", "cosine"]
    warmup_steps: int | None
    warmup_ratio: float | None
    max_grad_norm: float | None

    def __post_init__(self) -> None:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ConfigError(
                f"warmup_steps={self.warmup_steps} and warmup_ratio={self.warmup_ratio} were "
                "both given; pass one of them"
            )

    @property
    def needs_total_steps(self) -> list[str]:
        """The settings (``name=value``) that need the steps in all to be known."""
        given = [f"lr_schedule={self.lr_schedule!r}"] if self.lr_schedule != "constant" else []
        return given + ([f"warmup_ratio={self.warmup_ratio!r}"] if self.warmup_ratio else [])


@dataclass(frozen=True, kw_only=True)
class LoopSection:
    """The loop's arithmetic (global batch, epochs, steps) and rhythm (logs, validations)."""

    epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    drop_last: bool
    max_steps: int | None
    seed: int
    deterministic: bool
    validation_split: float
    eval_every: int | None
    log_every_steps: int
    skip_nonfinite_steps: bool
    callbacks: tuple[Any, ...]


@dataclass(frozen=True, kw_only=True)
class StepSection:
    """What one optimizer step computes: the user's ``train_step``, or the built-in step's
    ``forward``, ``loss_fn`` and ``count_fn``; the metrics; the check on two samples."""

    train_step: Callable[..., Any] | None
    loss_fn: Callable[..., Any] | None
    forward: Callable[..., Any] | None
    count_fn: Callable[..., Any] | None
    metrics: dict[str, Callable[..., Any]]
    dry_run: bool

    def __post_init__(self) -> None:
        ignored = [k for k in ("loss_fn", "forward", "count_fn") if getattr(self, k) is not None]
        if self.train_step is not None and ignored:
            raise ConfigError(
                f"{', '.join(ignored)} apply to the built-in step; your train_step computes its "
                "own loss (call them from it), so they would be ignored: pass one or the other"
            )


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """How the data is read: the target, the task, batching of a Dataset, streams, validation."""

    task: Literal["classification", "regression"] | None
    target: str | int | None
    num_classes: int | None
    collate_fn: Callable[..., Any] | None
    validation_data: Any
    stream_sharding: Literal["auto", "shard", "worker_info", "global"]


@dataclass(frozen=True, kw_only=True)
class ResumePlan:
    """Where the first attempt starts from, decided before any worker starts: a checkpoint
    ``path``, or the newest valid compatible one in ``directory`` (the workers verify it and
    skip a corrupt one); neither: a fresh start. ``reason`` says why, for events.log."""

    path: Path | None = None
    directory: Path | None = None
    reason: str = "a fresh start"
    #: The checkpoint whose facts decided the plan (the newest there, before the workers
    #: verify it), and the strategy that wrote it: a resumed job keeps it.
    found: Path | None = None
    strategy: str | None = None


@dataclass(frozen=True, kw_only=True)
class CheckpointSection:
    """Where checkpoints go, how often, how many are kept, and where the run resumes from."""

    directory: str | None
    every: int | None
    keep: int
    #: The ``resume`` setting as given ('auto', a path, or None); :attr:`plan` resolves it.
    resume: str | None
    allow_data_change: bool
    #: Weights to start from (a resolved path; see :mod:`..training.initial`), or None.
    init_from: str | None
    #: 'module', 'safetensors' or (until prepare resolves it) 'auto'.
    result_weights: Literal["auto", "module", "safetensors"]
    plan: ResumePlan = field(default_factory=ResumePlan)


@dataclass(frozen=True, kw_only=True)
class ParallelSection:
    """How the model is placed on the workers' devices: the strategy and its options."""

    strategy: Literal["ddp", "fsdp", "tp", "fsdp+tp", "auto"]
    tp_size: int | None
    tp_plan: dict[str, str] | None
    find_unused_parameters: bool
    sync_batchnorm: bool
    fsdp_blocks: tuple[str, ...] | None
    cpu_offload: bool
    activation_checkpointing: tuple[str, ...] | None
    compile: bool | str
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    use_gpus: bool

    @property
    def tensor_parallel(self) -> bool:
        """Whether the strategy splits matrices over groups of workers ('tp', 'fsdp+tp')."""
        return self.strategy in ("tp", "fsdp+tp")

    @property
    def shards_model(self) -> bool:
        """Whether no worker holds the whole model: FSDP's shards, tensor parallelism's
        slices (or both)."""
        return self.strategy == "fsdp" or self.tensor_parallel

    def __post_init__(self) -> None:
        if not self.tensor_parallel and (self.tp_size is not None or self.tp_plan is not None):
            raise ConfigError(
                f"tp_size and tp_plan are settings of strategy 'tp' or 'fsdp+tp' (this job's "
                f"is {self.strategy!r})"
            )
        if self.tensor_parallel and self.compile:
            raise ConfigError(
                f"compile is not supported with strategy={self.strategy!r} yet; use compile=False"
            )
        if self.cpu_offload and self.strategy not in ("fsdp", "auto"):
            raise ConfigError(
                "cpu_offload=True offloads FSDP's shards: it needs strategy='fsdp' (this "
                f"job's is {self.strategy!r})"
            )
        if self.use_gpus:
            return
        if self.cpu_offload:
            raise ConfigError(
                "cpu_offload=True moves FSDP's shards from the GPUs to host memory; it needs "
                "use_gpus=True (on CPUs they are in host memory already)"
            )
        if self.precision == "fp16":
            raise ConfigError(
                "precision='fp16' needs GPUs (use_gpus=True); on CPUs use 'bf16' or 'fp32'"
            )
        if self.sync_batchnorm:
            raise ConfigError(
                "sync_batchnorm=True needs GPUs (torch's SyncBatchNorm runs on GPUs only); on "
                "CPUs each worker normalizes with its own share's statistics"
            )


@dataclass(frozen=True, kw_only=True)
class Hosts:
    """This host's part in a job across ``nnodes`` hosts (torchrun's vocabulary)."""

    nnodes: int
    node_rank: int
    rdzv_endpoint: str  # HOST:PORT, served by node_rank 0's agent
    local_addr: str | None = None  # what other hosts reach this one at
    rdzv_timeout_s: float = 120.0


@dataclass(frozen=True, kw_only=True)
class LaunchSection:
    """Who creates the workers, how many, on which hosts, and how failures are handled."""

    nodes: int
    nnodes: int
    node_rank: int
    rdzv_endpoint: str | None
    local_addr: str | None
    rdzv_timeout_s: float
    launcher: Literal["elastic", "ray"]
    ray_address: str | None
    ray_storage_path: str | None
    max_restarts: int
    collective_timeout_s: float
    threads_per_worker: int | None
    cpu_affinity: bool
    use_gpus: bool
    fault_injection: tuple[FaultSpec, ...]

    def __post_init__(self) -> None:
        self._check_launcher()
        if self.nnodes == 1:
            self._check_one_host()
        else:
            self._check_hosts()

    @property
    def hosts(self) -> Hosts | None:
        """This host's part of a multi-host job; None for a one-host job."""
        if self.nnodes == 1:
            return None
        return Hosts(
            nnodes=self.nnodes,
            node_rank=self.node_rank,
            rdzv_endpoint=self.rdzv_endpoint or "",
            local_addr=self.local_addr,
            rdzv_timeout_s=self.rdzv_timeout_s,
        )

    def _check_launcher(self) -> None:
        """Ray settings only with the Ray launcher; host settings only with torch elastic's."""
        if self.launcher == "elastic":
            given = {
                k: getattr(self, k)
                for k in ("ray_address", "ray_storage_path")
                if getattr(self, k) is not None
            }
            if given:
                raise ConfigError(
                    f"{', '.join(f'{k}={v!r}' for k, v in given.items())} only apply with "
                    "launcher='ray'; pass launcher='ray' to train on a Ray cluster"
                )
        elif self.nnodes > 1:
            raise ConfigError(
                f"nnodes={self.nnodes} is for launcher='elastic' (one command per host); with "
                "launcher='ray', Ray places the nodes workers on its cluster's hosts: leave "
                "nnodes, node_rank and rdzv_endpoint unset"
            )

    def _check_one_host(self) -> None:
        multi_host = {
            "rdzv_endpoint": self.rdzv_endpoint,
            "local_addr": self.local_addr,
            "node_rank": self.node_rank or None,
        }
        given = {k: v for k, v in multi_host.items() if v is not None}
        if given:
            raise ConfigError(
                f"{', '.join(f'{k}={v!r}' for k, v in given.items())} only apply to a job over "
                "several hosts; set nnodes to the number of hosts (a one-host job needs none: "
                "its rendezvous is on a free local port)"
            )

    def _check_hosts(self) -> None:
        nnodes, nodes = self.nnodes, self.nodes
        if nodes % nnodes:
            raise ConfigError(
                f"nodes={nodes} (all workers) does not split evenly over nnodes={nnodes} hosts; "
                f"use a multiple of {nnodes}, e.g. nodes={nnodes * max(1, nodes // nnodes)}"
            )
        if not self.node_rank < nnodes:
            raise ConfigError(f"node_rank={self.node_rank} must be in 0..{nnodes - 1}")
        host, _, port = (self.rdzv_endpoint or "").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"rdzv_endpoint={self.rdzv_endpoint!r}: nnodes={nnodes} needs HOST:PORT of "
                "the rendezvous on host 0, e.g. '10.0.0.1:29500'"
            )


#: The built-in trackers (see :mod:`..training.trackers`).
TRACKER_NAMES = ("csv", "tensorboard", "mlflow", "wandb")


@dataclass(frozen=True, kw_only=True)
class TrackingSection:
    """What the run leaves behind and shows: its directory, progress, TensorBoard, log level,
    the live page."""

    runs_dir: str | None
    progress: Literal["auto", "bar", "lines", "off"]
    tensorboard: bool
    log_level: str | None
    watch: bool
    watch_host: str
    watch_port: int
    #: Tracker names ('csv', 'tensorboard', 'mlflow', 'wandb') and MetricLogger objects.
    trackers: tuple[Any, ...]
    tracker_project: str | None
    mlflow_tracking_uri: str | None
    wandb_mode: Literal["offline", "online", "disabled"] | None

    def __post_init__(self) -> None:
        if self.watch and self.runs_dir is None:
            raise ConfigError(
                "watch=True serves the page of the run's directory, and runs_dir=None writes "
                "none: give a runs_dir (the default is 'runs'), or watch=False"
            )
        for tracker in self.trackers:
            if isinstance(tracker, str) and tracker not in TRACKER_NAMES:
                raise ConfigError(
                    f"trackers: {tracker!r} is not a tracker; use {', '.join(TRACKER_NAMES)}, "
                    "or a MetricLogger object of your own"
                )
            if not isinstance(tracker, str) and not callable(getattr(tracker, "log", None)):
                raise ConfigError(
                    f"trackers: {tracker!r} has no log(record) method; subclass "
                    "ai_distributed_training.MetricLogger"
                )
        names = [t for t in self.trackers if isinstance(t, str)]
        if len(set(names)) < len(names):
            raise ConfigError(f"trackers={list(names)} names a tracker twice")

    @property
    def tracker_names(self) -> list[str]:
        """The built-in trackers asked for, ``tensorboard=True`` included."""
        names = [t for t in self.trackers if isinstance(t, str)]
        wanted = self.tensorboard and "tensorboard" not in names
        return [*names, "tensorboard"] if wanted else names


@dataclass(frozen=True, kw_only=True)
class Sections:
    """Every section of one job, built from its settings by :func:`sections_of`."""

    optim: OptimSection
    loop: LoopSection
    step: StepSection
    data: DataSection
    checkpoint: CheckpointSection
    parallel: ParallelSection
    launch: LaunchSection
    tracking: TrackingSection


#: The sections whose fields are named as their settings are.
_SAME_NAMES: dict[str, type] = {
    "optim": OptimSection,
    "loop": LoopSection,
    "step": StepSection,
    "data": DataSection,
    "parallel": ParallelSection,
    "launch": LaunchSection,
    "tracking": TrackingSection,
}
#: The checkpoint section's fields, by setting.
_CHECKPOINT_NAMES = {
    "checkpoint_dir": "directory",
    "checkpoint_every": "every",
    "keep_checkpoints": "keep",
    "resume": "resume",
    "allow_data_change": "allow_data_change",
    "init_from": "init_from",
    "result_weights": "result_weights",
}


def sections_of(settings: TrainingSettings) -> Sections:
    """Split ``settings`` into their sections (each checks its own rules on construction).

    Raises:
        ConfigError: settings that do not fit together, naming them.
    """
    built = {
        name: section(**{f.name: _frozen(getattr(settings, f.name)) for f in fields(section)})
        for name, section in _SAME_NAMES.items()
    }
    checkpoint = CheckpointSection(
        **{field_: getattr(settings, name) for name, field_ in _CHECKPOINT_NAMES.items()}
    )
    return Sections(checkpoint=checkpoint, **built)


def _frozen(value: Any) -> Any:
    """Lists (callbacks, faults, block names) as tuples: a section never changes."""
    return tuple(value) if isinstance(value, list) else value


def unowned_settings() -> set[str]:
    """Settings no section takes (a test keeps this empty: every setting reaches its owner)."""
    owned = {f.name for s in _SAME_NAMES.values() for f in fields(s)} | set(_CHECKPOINT_NAMES)
    return set(TrainingSettings.model_fields) - owned
