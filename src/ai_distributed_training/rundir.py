"""A run's directory: created before any worker starts, with its config, events and summary.

Only the caller (or, in a joined job, global rank 0) calls these; workers write through their
tracker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .host import check_writable_dir
from .training.tracking import EVENTS_FILE, JOB_LOGGER

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
#: Which process launched the run (host and pid): a watcher on that host can tell a run whose
#: launcher was killed without a word from one still running.
LAUNCHER_FILE = "launcher.json"

log = logging.getLogger(JOB_LOGGER)


def run_dir_name(model_name: str) -> str:
    """The model's part of its runs' directory names (file-name safe)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name) or "model"


def runs_of(runs_dir: Path, model_name: str) -> list[Path]:
    """The run directories of ``model_name`` under ``runs_dir`` (``<stamp>-<name>``, or
    ``<stamp>-<name>-<n>`` for runs started in the same second), newest first."""
    name = re.compile(rf"^(\d{{8}}-\d{{6}})-{re.escape(run_dir_name(model_name))}(?:-(\d+))?$")
    found = []
    for path in runs_dir.iterdir() if runs_dir.is_dir() else []:
        match = name.match(path.name)
        if match and path.is_dir():
            found.append(((match.group(1), int(match.group(2) or 0)), path))
    return [path for _, path in sorted(found, reverse=True)]


def create_run_dir(runs_dir: str | None, model_name: str) -> Path | None:
    """``<runs_dir>/<timestamp>-<model_name>/``, new and writable; None when runs_dir is None.

    Raises:
        ConfigError: the directory cannot be created or written (before any worker starts).
    """
    if runs_dir is None:
        return None
    stem = Path(runs_dir).resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_dir_name(model_name)}"
    for attempt in range(1000):
        path = stem if attempt == 0 else stem.with_name(f"{stem.name}-{attempt}")
        try:
            path.mkdir(parents=True)  # not exist_ok: each run gets a new directory
            check_writable_dir(path)
            launcher = {"host": socket.gethostname(), "pid": os.getpid()}
            (path / LAUNCHER_FILE).write_text(json.dumps(launcher) + "\n")
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise ConfigError(
                f"runs_dir={runs_dir!r} cannot be written: {err}; pass a writable "
                "directory, or runs_dir=None for no run directory"
            ) from None
    raise ConfigError(f"runs_dir={runs_dir!r}: too many runs named {stem.name}")


def checkpoint_dir(directory: str | None, run_dir: Path | None) -> Path | None:
    """Where checkpoints go: ``directory`` (the checkpoint_dir setting), else
    ``<run_dir>/checkpoints``, else none.

    Raises:
        ConfigError: the directory cannot be created or written (before any worker starts).
    """
    if directory is None:
        return run_dir / "checkpoints" if run_dir else None
    path = Path(directory).resolve()
    try:
        check_writable_dir(path)
    except OSError as err:
        raise ConfigError(f"checkpoint_dir={directory!r} cannot be written: {err}") from None
    return path


def announce(run_dir: Path | None, level: int, message: str) -> None:
    """A job-level event: to this library's logger, and to the run's events.log (which rank 0
    appends its own lines to) whatever the app's logging level."""
    log.log(level, message)
    if run_dir is not None:
        with (run_dir / EVENTS_FILE).open("a") as f:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            f.write(f"{stamp} {logging.getLevelName(level)} {message}\n")


def write_config(run_dir: Path | None, config: dict[str, Any]) -> None:
    """Save the resolved config (inputs and every setting) as the run's ``config.yaml``."""
    if run_dir is not None:
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
