"""Logging with roles decided once: job-level lines from global rank 0 only, worker lines tagged.

Job-level events (start, one line per epoch, completion) go through :class:`JobLog`, which is a
no-op on every rank but global rank 0, so the loop never needs ``if rank == 0``. Worker-level lines
use ordinary module loggers and carry their rank in the prefix.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

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
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
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
