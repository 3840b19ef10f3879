"""One training job as each rank sees it: what to train, on what, how, and where to write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import TrainingSettings
from ..data import DataSource
from ..models import ModelSource


@dataclass(frozen=True, kw_only=True)
class Job:
    """Everything a rank needs to train its part; built by the caller, picklable (cloudpickle)."""

    settings: TrainingSettings
    model: ModelSource
    data: DataSource
    #: A separate validation set (setting validation_data), or None.
    validation: DataSource | None = None
    threads_per_worker: int
    log_level: str
    #: The run directory rank 0 writes metrics, events and weights into (None: no files).
    run_dir: str | None = None
    #: Where checkpoints are written and looked for (None: no checkpoints).
    checkpoint_dir: str | None = None
    #: The resolved config as plain data, stored in every checkpoint.
    config: dict[str, Any]
    #: Pin each worker to its share of this host's CPUs (workers our launcher starts only).
    pin_cpus: bool = False
    #: This call's id, written into every checkpoint (restarts resume only their own run's).
    run_id: str
    #: What a run must match to continue from this one's checkpoints (see :mod:`.identity`).
    fingerprint: dict[str, str]
    #: Where the first attempt starts from (the ``resume`` setting, resolved by the caller):
    #: this checkpoint, or else the newest valid compatible one in ``resume_dir``; neither: a
    #: fresh start.
    resume_path: str | None = None
    resume_dir: str | None = None
