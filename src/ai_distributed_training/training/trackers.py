"""Trackers: the run's metrics logged to the tools people use, from global rank 0 only.

Every tracker receives the records ``metrics.jsonl`` receives, as they are written (a
``start`` record per attempt, ``step``, ``eval`` and ``epoch`` records with the values reduced
over the ranks), so a tracker and the file agree to the last digit. Built in: ``"tensorboard"``,
``"csv"``, ``"mlflow"`` and ``"wandb"`` (each an optional extra but csv); yours: a subclass of
:class:`MetricLogger` in the ``trackers`` list.

A restarted attempt continues the same tracker run: what :meth:`MetricLogger.open` returns
(an MLflow run id, a W&B run id) is kept in the run directory's ``trackers.json`` and handed
back to the next attempt, and to a later call that resumes from this run's checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The trackers' own state (run ids) in a run directory, by tracker name.
TRACKERS_FILE = "trackers.json"
#: What installs each optional tracker.
EXTRAS = {
    "tensorboard": "pip install 'ai-distributed-training[tensorboard]'",
    "mlflow": "pip install 'ai-distributed-training[mlflow]'",
    "wandb": "pip install 'ai-distributed-training[wandb]'",
}
#: The files of a finished run logged as artifacts where a tracker has them.
ARTIFACTS = ("config.yaml", "summary.json", "report.html", "model.pt")


@dataclass(frozen=True, kw_only=True)
class TrackerRun:
    """What a tracker is told when training starts."""

    #: The run directory (rank 0's), or None with ``runs_dir=None``.
    run_dir: Path | None
    #: The run's name: its directory's name, else the model's.
    name: str
    #: The project (W&B) or experiment (MLflow) to log into: ``tracker_project``.
    project: str
    #: The resolved config, as config.yaml holds it.
    config: dict[str, Any]
    #: What this tracker's :meth:`MetricLogger.open` returned in an earlier attempt of this
    #: run (or of the run whose checkpoint this one resumed); None: a new tracker run.
    resumed: dict[str, Any] | None


class MetricLogger:
    """A tracker: override :meth:`log` (and :meth:`open`, :meth:`close` as needed). Called in
    global rank 0's process only; it must be picklable (it travels to the workers)."""

    #: Its key in ``trackers.json`` (the state :meth:`open` returns is kept under it).
    name = "custom"

    def open(self, run: TrackerRun) -> dict[str, Any] | None:
        """Training starts (each attempt). Return what a later attempt needs to continue the
        same tracker run (JSON-serialisable), or None."""
        return None

    def log(self, record: dict[str, Any]) -> None:
        """One record, as written to metrics.jsonl: ``type`` ('start', 'step', 'eval',
        'epoch'), ``step``, ``time`` and the values."""

    def close(self) -> None:
        """The attempt ends (finished or failed): flush and release."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's plottable values by tracker key, ``<type>/<name>`` (a step's and an epoch's
    ``train_loss`` differ), per-worker lists as ``<type>/<name>/<rank>``; its ``step`` is the
    trackers' x axis, not a value."""
    kind, out = record["type"], {}
    for key, value in record.items():
        if key in ("type", "time", "step") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[f"{kind}/{key}"] = float(value)
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            out.update({f"{kind}/{key}/{rank}": float(v) for rank, v in enumerate(value)})
    return out


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as flat ``a.b`` keys with string values (hyper-parameters, params)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


class CsvLogger(MetricLogger):
    """``metrics.csv`` in the run directory, one row per value: time, type, epoch, step,
    name, value (long format: the records' keys differ by type, a wide table would not fit)."""

    name = "csv"

    def __init__(self) -> None:
        self._file: Any = None
        self._writer: Any = None

    def open(self, run: TrackerRun) -> dict[str, Any] | None:
        if run.run_dir is not None:
            path = run.run_dir / "metrics.csv"
            new = not path.exists()
            self._file = path.open("a", newline="")
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(["time", "type", "epoch", "step", "name", "value"])
        return None

    def log(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            return
        head = [record.get("time"), record["type"], record.get("epoch"), record.get("step")]
        for key, value in scalars(record).items():
            self._writer.writerow([*head, key.split("/", 1)[1], repr(value)])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class TensorBoardLogger(MetricLogger):
    """TensorBoard event files in ``<run_dir>/tensorboard``: scalars by ``<type>/<name>``, the
    resolved config as text."""

    name = "tensorboard"

    def __init__(self) -> None:
        self._writer: Any = None

    def open(self, run: TrackerRun) -> dict[str, Any] | None:
        if run.run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run.run_dir / "tensorboard"))
            settings = json.dumps(run.config, indent=2, default=str)
            self._writer.add_text("config", f"```\n{settings}\n```")  # its TEXT tab
        return None

    def log(self, record: dict[str, Any]) -> None:
        if self._writer is None or record["type"] == "start":
            return
        for key, value in scalars(record).items():
            if key.count("/") == 1:  # per-worker values stay in metrics.jsonl
                self._writer.add_scalar(key, value, record["step"], walltime=record.get("time"))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def missing_library(name: str) -> str | None:
    """The pip command a built-in tracker's missing library needs, or None (installed)."""
    import importlib.util

    if name not in EXTRAS or importlib.util.find_spec(name) is not None:  # module = name
        return None
    return EXTRAS[name]


def read_state(path: Path) -> dict[str, Any]:
    """The trackers' kept state in ``path`` (trackers.json), {} when there is none."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Keep ``state`` in ``path``, atomically (a kill mid-write leaves the old one)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, path)


def inherit_state(run_dir: Path | None, checkpoint: Path | None) -> None:
    """A call that resumes from ``checkpoint`` continues its run's tracker runs: that run's
    trackers.json (beside its checkpoints folder, or in a shared checkpoint_dir) is copied
    into the new run directory before any worker starts."""
    if run_dir is None or checkpoint is None:
        return
    for place in (checkpoint.parent, checkpoint.parent.parent):
        state = read_state(place / TRACKERS_FILE)
        if state:
            write_state(run_dir / TRACKERS_FILE, state)
            return


def now_ms(record: dict[str, Any]) -> int:
    """A record's time in milliseconds (now, for one without)."""
    return int(1000 * float(record.get("time", time.time())))
