"""The files through which the caller hands a job to its workers and gets rank 0's output back.

The caller writes a job directory; each worker reads it. User objects (modules, factories,
datasets, loss functions), including ones defined in a script's ``__main__``, travel with
cloudpickle, so workers never re-run the user's script. The caller's ``sys.path`` travels too, so
classes from the user's own modules import in the workers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import torch

from ..host import remove_stale, write_atomically
from ..training.job import Job, RankOutput

JOB_FILE = "job.pkl"
SYS_PATH_FILE = "sys_path.json"
RESULT_FILE = "result.pt"
MODEL_FILE = "model.pt"


def new_job_dir() -> Path:
    """A fresh temporary job directory, named after this process (``adt-job-PID-...``) so a
    later call can tell the ones a killed caller left behind (:func:`remove_stale_job_dirs`)."""
    return Path(tempfile.mkdtemp(prefix=f"adt-job-{os.getpid()}-"))


def remove_stale_job_dirs() -> list[Path]:
    """Delete the job directories (staged data included) of callers that no longer run."""
    temp = Path(tempfile.gettempdir())
    return remove_stale(temp, "adt-job-*-*", lambda path: path.name.split("-")[2])


@dataclass(frozen=True, kw_only=True)
class JobFiles:
    """Where one job's hand-over files live: ``job_dir`` (temporary, the caller's) and the run
    directory, which keeps the final weights as ``model.pt`` when there is one."""

    job_dir: Path
    run_dir: Path | None = None

    @property
    def job_path(self) -> Path:
        return self.job_dir / JOB_FILE

    @property
    def result_path(self) -> Path:
        """Rank 0's result (history, counts), without the weights."""
        return self.job_dir / RESULT_FILE

    @property
    def weights_path(self) -> Path:
        """The final state dict, written once by rank 0: the run's model.pt, or a job file."""
        return (self.run_dir or self.job_dir) / MODEL_FILE

    def write_job(self, job: Job) -> Path:
        """Write ``job`` (staging its data files in ``job_dir``); returns the path to give the
        workers."""
        stage = self.job_dir
        validation = job.validation.stage(stage / "validation") if job.validation else None
        staged = dataclasses.replace(job, data=job.data.stage(stage), validation=validation)
        (stage / SYS_PATH_FILE).write_text(json.dumps([p for p in sys.path if p]))
        with self.job_path.open("wb") as f:
            cloudpickle.dump((self, staged), f)
        return self.job_path

    @staticmethod
    def read_job(path: str | os.PathLike[str]) -> tuple[JobFiles, Job]:
        """Read what :meth:`write_job` wrote (in a worker)."""
        job_dir = Path(path).parent
        for entry in reversed(json.loads((job_dir / SYS_PATH_FILE).read_text())):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        with Path(path).open("rb") as f:
            files, job = cloudpickle.load(f)
        assert isinstance(files, JobFiles) and isinstance(job, Job)
        return files, job

    def write_result(self, result: RankOutput) -> None:
        """Rank 0's result, its weights apart (they may be large, and stay as model.pt)."""
        write_atomically(result.state_dict, self.weights_path)
        write_atomically(result.facts(), self.result_path)

    def read_result(self) -> RankOutput:
        """What :meth:`write_result` wrote."""
        facts = torch.load(self.result_path, weights_only=True)
        return RankOutput.of(facts, torch.load(self.weights_path, weights_only=True))
