"""Logging with roles decided once: job-level lines from global rank 0 only, worker lines tagged.

Job-level events (start, one line per epoch, completion) go through :class:`JobLog`, which is a
no-op on every rank but global rank 0, so the loop never needs ``if rank == 0``. Worker-level lines
use ordinary module loggers and carry their rank in the prefix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .trackers import TRACKERS_FILE, MetricLogger, TrackerRun, read_state, write_state

PACKAGE_LOGGER = "ai_distributed_training"
JOB_LOGGER = f"{PACKAGE_LOGGER}.job"


class JobLog:
    """Job-level log lines, written once per job by global rank 0, dropped on other ranks."""

    def __init__(self, enabled: bool) -> None:
        self._logger = logging.getLogger(JOB_LOGGER) if enabled else None

    def info(self, msg: str, *args: Any) -> None:
        if self._logger is not None:
            self._logger.info(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        if self._logger is not None:
            self._logger.warning(msg, *args)


class _Prefix(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        on_job = record.name == JOB_LOGGER
        record.adt_prefix = "[adt]" if on_job else f"[adt rank {self.rank}]"
        return True


def configure_worker_logging(rank: int, level: str) -> None:
    """Inside a worker: send this library's log records to stderr, tagged with the rank."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Prefix(rank))
    handler.setFormatter(logging.Formatter("%(adt_prefix)s %(levelname)s %(message)s"))
    handler.setLevel(level)  # what reaches the terminal
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.handlers[:] = [handler]
    # INFO always passes the logger: rank 0's events.log records job events whatever the level.
    logger.setLevel(min(logging.INFO, logging.getLevelName(level)))
    logger.propagate = False


def caller_log_level() -> str:
    """The level workers should log at when the user did not set one.

    If the calling program configured logging (handlers on the root or this library's logger),
    follow the effective level of this library's logger; otherwise stay quiet (WARNING).
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    configured = any(
        not isinstance(h, logging.NullHandler)
        for lg in (logging.getLogger(), logger)
        for h in lg.handlers
    )
    level = logger.getEffectiveLevel() if configured else logging.WARNING
    for name in ("DEBUG", "INFO", "WARNING"):
        if level <= logging.getLevelName(name):
            return name
    return "ERROR"


# --- run directory and progress: real on global rank 0, no-ops elsewhere ------------------------

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.log"
#: An events.log line as rank 0's and the launcher's handlers write it.
EVENTS_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class Tracker:
    """Where the loop reports: metric records, progress. This base class does nothing; it is what
    every rank but global rank 0 gets, so the loop calls it unconditionally."""

    def start(self, plan: dict[str, int]) -> None:
        """Training begins (or resumes): ``plan`` says where it stands and where it goes
        (``epoch``, ``step``, ``samples``, ``total_steps``, ``steps_per_epoch``, ``epochs``,
        ``world_size``; a total of 0: unknown, a stream without a length)."""

    def step(self, epoch: int, step_in_epoch: int) -> None:
        """One optimizer step finished (cheap: no reductions)."""

    def record(self, record: dict[str, Any]) -> None:
        """A rank-aggregated step or epoch record."""

    def close(self) -> None:
        """Training ended (or failed): flush and release files."""


class RankZeroTracker(Tracker):
    """Global rank 0: appends records to ``metrics.jsonl`` and hands each to the trackers
    (:mod:`.trackers`), logs events to ``events.log``, and shows progress."""

    def __init__(
        self,
        run_dir: Path | None,
        progress: str,
        loggers: list[MetricLogger],
        run: TrackerRun,
        state_dirs: list[Path],
    ) -> None:
        self.run_dir = run_dir
        self.progress = _progress_mode(progress)
        self._metrics = (run_dir / METRICS_FILE).open("a") if run_dir else None
        self._events: logging.Handler | None = None
        if run_dir:
            self._events = logging.FileHandler(run_dir / EVENTS_FILE)
            self._events.setLevel(logging.INFO)
            self._events.setFormatter(logging.Formatter(EVENTS_FORMAT))
            logging.getLogger(PACKAGE_LOGGER).addHandler(self._events)
        self._loggers, self._run, self._opened = loggers, run, False
        #: Where trackers.json is kept: the run directory, and a shared checkpoint_dir (a
        #: later call resuming from its checkpoints continues the same tracker runs).
        self._state_paths = [d / TRACKERS_FILE for d in state_dirs]
        self._bar: Any = None
        self._started = time.perf_counter()
        self._total = self._done = self._epochs = 0

    def start(self, plan: dict[str, int]) -> None:
        if not self._opened:
            self._open_loggers()
        # Each attempt's start is a record too: the live page and the report learn from it
        # where an attempt resumed and how many steps the job has.
        self.record({"type": "start", **plan})
        self._total, self._epochs = plan["total_steps"], plan["epochs"]
        self._started = time.perf_counter()
        if self.progress == "bar":
            from tqdm import tqdm

            total = plan["total_steps"] or None  # 0: unknown (a stream without len): a counter
            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=True)

    def _open_loggers(self) -> None:
        """Open each tracker, continuing the tracker runs of an earlier attempt (or of the
        run resumed) from trackers.json, and keep what they return there for the next."""
        self._opened = True
        state = read_state(self._state_paths[0]) if self._state_paths else {}
        for logger in self._loggers:
            run = dataclasses.replace(self._run, resumed=state.get(logger.name))
            kept = logger.open(run)
            if kept is not None:
                state[logger.name] = kept
        for path in self._state_paths if state else ():
            write_state(path, state)

    def step(self, epoch: int, step_in_epoch: int) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.set_description(f"epoch {epoch}/{self._epochs}", refresh=False)
            self._bar.update(1)

    def record(self, record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time(), 3)}  # wall-clock, Unix seconds
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        for logger in self._loggers:
            logger.log(record)
        loss = record.get("train_loss")
        if self._bar is not None and loss is not None:
            self._bar.set_postfix(
                loss=f"{loss:.4g}", samples_s=f"{record.get('samples_per_second', 0):.0f}"
            )
        if self.progress == "lines" and record["type"] == "step":
            elapsed = time.perf_counter() - self._started
            eta = elapsed / max(self._done, 1) * (self._total - self._done)
            print(
                f"[adt] epoch {record['epoch']}/{self._epochs} step {self._done}/{self._total} "
                f"loss={loss:.4g} samples/s={record['samples_per_second']:.0f} "
                f"eta={eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._events is not None:
            logging.getLogger(PACKAGE_LOGGER).removeHandler(self._events)
            self._events.close()
        for logger in self._loggers if self._opened else ():
            logger.close()


def _progress_mode(progress: str) -> str:
    if progress == "auto":
        return "bar" if sys.stderr.isatty() else "off"
    return progress
