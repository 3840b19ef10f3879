"""One training job, resolved: what to train, on what, how (typed sections), and where to write.

:func:`~ai_distributed_training.prepare.prepare` turns the caller's model, data and settings
into a :class:`ResolvedJob`; the caller adds the run's directories and id to make the
:class:`Job` every rank receives. Each component is built from its own section.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config.sections import (
    CheckpointSection,
    LaunchSection,
    LoopSection,
    OptimSection,
    ParallelSection,
    StepSection,
    TrackingSection,
)
from ..data import DataSource
from ..models import ModelSource
from ..topology import Topology


@dataclass(frozen=True, kw_only=True)
class ResolvedJob:
    """A validated job, ready to launch or join: nothing has started yet."""

    model: ModelSource
    data: DataSource
    #: A separate validation set (setting validation_data), or None.
    validation: DataSource | None = None
    optim: OptimSection
    loop: LoopSection
    step: StepSection
    checkpoint: CheckpointSection
    parallel: ParallelSection
    launch: LaunchSection
    tracking: TrackingSection
    topology: Topology
    threads_per_worker: int
    log_level: str
    #: What a run must match to continue from this one's checkpoints (see :mod:`.identity`).
    fingerprint: dict[str, str]
    #: The resolved settings as plain data (saved in the run directory and every checkpoint).
    config: dict[str, Any]
    #: What the checks decided that the run's events.log must say (e.g. a changed data file
    #: continued on, with ``allow_data_change``).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Job(ResolvedJob):
    """A :class:`ResolvedJob` plus this run's directories and id: what every rank receives
    (picklable with cloudpickle)."""

    #: The run directory rank 0 writes metrics, events and weights into (None: no files).
    run_dir: str | None = None
    #: Where checkpoints are written and looked for (None: no checkpoints).
    checkpoint_dir: str | None = None
    #: Where the trained weights are exported (result_weights='safetensors'; None: they come
    #: back whole in the rank's output).
    weights_dir: str | None = None
    #: Pin each worker to its share of this host's CPUs (workers our launcher starts only).
    pin_cpus: bool = False
    #: This call's id, written into every checkpoint (restarts resume only their own run's).
    run_id: str

    @classmethod
    def of(cls, resolved: ResolvedJob, **run: Any) -> Job:
        """``resolved`` with the run's directories and id (keyword arguments of Job)."""
        own = {f.name: getattr(resolved, f.name) for f in fields(ResolvedJob)}
        return cls(**{**own, **run})


@dataclass(frozen=True, kw_only=True)
class RankOutput:
    """What a rank sends back when the job ends (the same on every rank: every value is
    reduced or gathered), from which the caller builds the :class:`~..result.TrainingResult`."""

    #: The full, unsharded weights (a sharded model gathered), by parameter/buffer name; empty
    #: when they were exported to :attr:`weights_dir` instead.
    state_dict: dict[str, Any]
    #: One record per epoch: ``train_loss``, ``val_loss``, metrics, ``epoch``, ...
    history: list[dict[str, float]]
    steps: int
    samples_seen: int
    train_time_s: float
    #: Every rank ended with the same parameters.
    weights_in_sync: bool
    stopped_early: bool
    skipped_steps: int
    #: Restarts before the attempt that finished.
    restarts: int
    #: The checkpoint the run started from (None: a fresh start).
    resumed_from: str | None
    world_size: int
    #: Per rank, in rank order: peak memory of its device (GPU: allocated; CPU: host RSS)...
    peak_memory_per_worker_bytes: list[int]
    #: ... its process's peak host RSS (the same on CPUs; with GPUs, what the host gave it) ...
    peak_host_memory_per_worker_bytes: list[int]
    cpus_per_worker: list[list[int]]
    model_state_bytes_per_worker: list[int]
    #: The folder the trained weights were exported to (safetensors), or None.
    weights_dir: str | None = None

    def facts(self) -> dict[str, Any]:
        """Everything but the weights, as plain data (``torch.load(weights_only=True)`` reads
        it back): what a launcher hands over besides the weights."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "state_dict"}

    @classmethod
    def of(cls, facts: dict[str, Any], state_dict: dict[str, Any]) -> RankOutput:
        """The output from what :meth:`facts` gave, and the weights."""
        return cls(state_dict=state_dict, **facts)
