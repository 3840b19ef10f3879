"""The job: everything the caller hands to its workers, and what rank 0 hands back.

The caller writes a job directory; each worker reads it. User objects (modules, factories,
datasets, loss functions), including ones defined in a script's ``__main__``, travel with
cloudpickle, so workers never re-run the user's script. The caller's ``sys.path`` travels too, so
classes from the user's own modules import in the workers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import cloudpickle
import torch

from .config import TrainingSettings
from .data import DataSource
from .models import ModelSource

JOB_FILE = "job.pkl"
SYS_PATH_FILE = "sys_path.json"
RESULT_FILE = "result.pt"
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class Job:
    """One training job as the workers see it."""

    settings: TrainingSettings
    model: ModelSource
    data: DataSource
    threads_per_worker: int
    log_level: str
    job_dir: str
    #: The run directory rank 0 writes metrics, events and weights into (None: no files).
    run_dir: str | None
    #: Where checkpoints are written and looked for (None: no checkpoints).
    checkpoint_dir: str | None
    #: The resolved config as plain data, stored in every checkpoint.
    config: dict[str, Any]
    #: A separate validation set (setting validation_data), or None.
    validation: DataSource | None = None
    #: Pin each worker to its share of this host's CPUs (workers our launcher starts only).
    pin_cpus: bool = False

    @property
    def result_path(self) -> Path:
        """Rank 0's result (history, counts), without the weights."""
        return Path(self.job_dir) / RESULT_FILE

    @property
    def weights_path(self) -> Path:
        """The final state dict, written once by rank 0: the run's model.pt, or a job file."""
        return Path(self.run_dir or self.job_dir) / MODEL_FILE

    def save(self) -> Path:
        """Write the job into ``job_dir`` (staging data files there) and return its path."""
        job_dir = Path(self.job_dir)
        validation = self.validation.stage(job_dir / "validation") if self.validation else None
        staged = dataclasses.replace(self, data=self.data.stage(job_dir), validation=validation)
        (job_dir / SYS_PATH_FILE).write_text(json.dumps([p for p in sys.path if p]))
        path = job_dir / JOB_FILE
        with path.open("wb") as f:
            cloudpickle.dump(staged, f)
        return path

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Job:
        """Read a job written by :meth:`save` (in a worker)."""
        job_dir = Path(path).parent
        for entry in reversed(json.loads((job_dir / SYS_PATH_FILE).read_text())):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        with Path(path).open("rb") as f:
            job = cloudpickle.load(f)
        assert isinstance(job, Job)
        return job


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written in it.

    Raises:
        OSError: it cannot be created or written.
    """
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
        pass


def write_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def exit_finished_worker() -> NoReturn:
    """End a worker process whose work is done and written, skipping interpreter teardown.

    torch 2.13 aborts a gloo process now and then AFTER ``destroy_process_group`` returned, in
    the C++ static destructors at exit ("terminate called without an active exception"; 1 of 8
    4-rank jobs of a plain torchrun script here), which the agent would report as a failed
    job although every result is on disk. Flushing and ``os._exit`` skips those destructors.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


#: glibc ``mallopt`` parameters (malloc.h) and the values workers use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS each step.

    By default glibc serves large blocks (activations, gradients) with fresh ``mmap`` calls
    and trims the heap when its top is freed, so every training step page-faults and zeroes
    megabytes again. Measured on the reference workload (2 cores): 62-65k -> 78-80k samples/s
    with 1 worker, 52-56k -> 59-61k with 2. Blocks under 64 MB come from the heap, and up to
    1 GB of freed heap is kept. Returns whether it applied (glibc only; elsewhere a no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    ok = int(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) == 1
    return ok and int(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) == 1
