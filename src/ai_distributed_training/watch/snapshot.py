"""What a run directory says about its run, now: the live page's one source.

A :class:`RunReader` follows one run directory as it grows: it reads ``metrics.jsonl`` from
where it stopped (a job of many hours writes many records) and ``events.log`` and
``summary.json`` whole (small), and builds the :func:`snapshot` the page shows. Only files
rank 0 (and the launcher) write are read, so a job whose workers are on other hosts is watched
from host 0's run directory.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..report import REPORT_FILE
from ..rundir import CONFIG_FILE, LAUNCHER_FILE, SUMMARY_FILE
from ..training.tracking import EVENTS_FILE, METRICS_FILE

#: A rank whose time alone per step exceeds the median's by this factor is flagged.
STRAGGLER_FACTOR = 1.2
#: The lines of events.log the page shows.
EVENT_LINES = 30
#: Step records the ETA's pace is taken over (the newest, of the current attempt).
PACE_RECORDS = 5

_EVENT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,(\d+))? (\w+) (.*)$")
_RESTART = re.compile(r"^restart (\d+) of (\d+): (.*)$")


@dataclass
class Event:
    """One events.log entry: its time (Unix seconds), level and message."""

    time: float
    level: str
    message: str


def read_events(path: Path) -> list[Event]:
    """The entries of an events.log (a message's continuation lines joined to it)."""
    events: list[Event] = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        match = _EVENT.match(line)
        if match:
            stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
            stamp += int(match.group(2) or 0) / 1000  # logging's lines have milliseconds
            events.append(Event(stamp, match.group(3), match.group(4)))
        elif events:
            events[-1].message += "\n" + line
    return events


@dataclass
class RunReader:
    """Follows one run directory; :meth:`snapshot` reads what is new and says where it is."""

    run_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""
    _config: dict[str, Any] | None = None

    def _read_metrics(self) -> None:
        """Append the records written since the last call (a half-written line waits)."""
        path = self.run_dir / METRICS_FILE
        if not path.exists() or path.stat().st_size <= self._offset:
            return
        with path.open() as f:
            f.seek(self._offset)
            text = self._partial + f.read()
            self._offset = f.tell()
        lines = text.split("\n")
        self._partial = lines.pop()  # "" after a complete line
        self.records += [json.loads(line) for line in lines if line.strip()]

    def _read(self) -> tuple[dict[str, Any], list[Event], dict[str, Any] | None]:
        """What is new in the files; the brief, the events and the summary."""
        self._read_metrics()
        events = read_events(self.run_dir / EVENTS_FILE)
        summary = _json(self.run_dir / SUMMARY_FILE)
        starts = [r for r in self.records if r["type"] == "start"]
        state, detail = run_state(self.run_dir, events, summary, starts)
        brief = {
            "name": self.run_dir.name,
            "state": state,
            "detail": detail,
            "attempt": 1 + sum(1 for e in events if _RESTART.match(e.message)),
            "position": position(self.records, starts),
        }
        return brief, events, summary

    def mark(self) -> tuple[tuple[int, int], ...]:
        """The files' sizes and times, and whether the launcher is known gone (a killed one
        writes nothing more): a different mark means there is something new to show."""
        names = (METRICS_FILE, EVENTS_FILE, SUMMARY_FILE, REPORT_FILE, LAUNCHER_FILE)
        gone = (int(bool(_launcher_gone(self.run_dir))), 0)
        return (*(_stat(self.run_dir / name) for name in names), gone)

    def brief(self) -> dict[str, Any]:
        """The run's name, state, attempt and position: what the list of runs shows."""
        return self._read()[0]

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows of this run, as JSON-ready values."""
        brief, events, summary = self._read()
        if self._config is None:  # written before any worker starts, never changed
            self._config = _config(self.run_dir)
        return {
            **brief,
            "restarts": [_restart(e) for e in events if _RESTART.match(e.message)],
            "config": self._config,
            "curves": curves(self.records),
            "ranks": ranks(self.records),
            "straggler_factor": STRAGGLER_FACTOR,
            "events": [
                f"{time.strftime('%H:%M:%S', time.localtime(e.time))} {e.level} {e.message}"
                for e in events[-EVENT_LINES:]
            ],
            "plots": sorted(p.name for p in self.run_dir.glob("*.png")) if summary else [],
            "report": (self.run_dir / REPORT_FILE).exists(),
            "summary": _brief(summary),
        }


def run_state(
    run_dir: Path, events: list[Event], summary: dict[str, Any] | None, starts: list[dict[str, Any]]
) -> tuple[str, str]:
    """The run's state and a line about it: ``finished``, ``failed`` (why), ``restarting``
    (why), ``training``, ``starting``, or ``interrupted`` (its launching process is gone
    without saying it ended: killed, or the machine went down)."""
    if summary is not None or any(
        e.message.startswith("Distributed training complete") for e in events
    ):
        return "finished", ""
    failed = [e for e in events if e.message.startswith("Distributed training failed")]
    if failed:
        return "failed", failed[-1].message.removeprefix("Distributed training failed: ")
    gone = _launcher_gone(run_dir)
    if gone:
        return "interrupted", gone
    restarts = [e for e in events if _RESTART.match(e.message)]
    last_start = max((float(r.get("time", 0)) for r in starts), default=None)
    if restarts and (last_start is None or last_start < restarts[-1].time):
        return "restarting", restarts[-1].message
    if last_start is None:
        return "starting", "the workers are starting"
    return "training", ""


def _launcher_gone(run_dir: Path) -> str:
    """Why the process that launched the run is known to be gone, or "" (alive, or on
    another host: unknown)."""
    launcher = _json(run_dir / LAUNCHER_FILE)
    if not launcher or launcher.get("host") != socket.gethostname():
        return ""
    try:
        os.kill(int(launcher["pid"]), 0)
    except ProcessLookupError:
        return f"its launching process (pid {launcher['pid']}) ended without finishing the run"
    except PermissionError:  # alive, another user's
        return ""
    return ""


def position(records: list[dict[str, Any]], starts: list[dict[str, Any]]) -> dict[str, Any]:
    """Where training stands: epoch, step, samples, the totals, the pace and the ETA."""
    plan = starts[-1] if starts else {}
    steps = [r for r in records if r["type"] in ("step", "epoch")]
    last = steps[-1] if steps else plan
    since = [r for r in steps if r["type"] == "step" and r.get("time", 0) >= plan.get("time", 0)]
    pace = _pace(since[-PACE_RECORDS - 1 :])
    total, step = plan.get("total_steps", 0), last.get("step", 0)
    return {
        "epoch": last.get("epoch", plan.get("epoch")),
        "epochs": plan.get("epochs"),
        "step": step,
        "total_steps": total or None,
        "samples": last.get("samples"),
        "world_size": plan.get("world_size"),
        "steps_per_s": pace,
        "eta_s": (total - step) / pace if pace and total else None,
    }


def _pace(window: list[dict[str, Any]]) -> float | None:
    """Steps per second over ``window`` (step records in order), if it spans any time."""
    if len(window) < 2 or window[-1].get("time", 0) <= window[0].get("time", 0):
        return None
    steps = float(window[-1]["step"] - window[0]["step"])
    return steps / float(window[-1]["time"] - window[0]["time"])


def curves(records: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Series over steps ``[[step, value], ...]``: train loss, validation loss (evaluations
    and epoch ends), throughput. A step trained again after a restart keeps its last value."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        latest[(r["type"], int(r["step"]))] = r
    ordered = sorted(latest.values(), key=lambda r: (int(r["step"]), r["type"]))

    def series(types: tuple[str, ...], key: str) -> list[list[float]]:
        return [[r["step"], r[key]] for r in ordered if r["type"] in types and _finite(r.get(key))]

    return {
        "train_loss": series(("step",), "train_loss"),
        "val_loss": series(("eval", "epoch"), "val_loss"),
        "samples_per_second": series(("step",), "samples_per_second"),
    }


def ranks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each rank's figures from the newest step record: step time, time alone per step
    (flagged a straggler above :data:`STRAGGLER_FACTOR` times the median), peak memory."""
    last = next((r for r in reversed(records) if r["type"] == "step"), None)
    if last is None:
        return []
    times = last.get("worker_step_time_s") or []
    alone = last.get("worker_alone_s") or [0.0] * len(times)  # older runs have no alone time
    median = statistics.median(alone) if alone else 0.0
    peaks = last.get("worker_peak_memory_bytes") or [None] * len(alone)
    return [
        {
            "rank": rank,
            "step_time_s": times[rank] if rank < len(times) else None,
            "alone_s": alone[rank],
            "straggler": median > 0 and alone[rank] > STRAGGLER_FACTOR * median,
            "peak_memory_bytes": peaks[rank],
        }
        for rank in range(len(alone))
    ]


def _restart(event: Event) -> dict[str, Any]:
    match = _RESTART.match(event.message)
    assert match is not None
    return {
        "time": event.time,
        "restart": int(match.group(1)),
        "of": int(match.group(2)),
        "reason": match.group(3),
    }


def _brief(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    keys = ("final_loss", "metrics", "samples_per_second", "wall_time_s", "restarts", "steps")
    return {k: summary.get(k) for k in keys} if summary else None


def _config(run_dir: Path) -> dict[str, Any]:
    """The few settings the page names (the model, nodes, strategy, max_restarts)."""
    path = run_dir / CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError:
        config = {}
    keys = ("nodes", "strategy", "epochs", "batch_size", "max_restarts")
    return {k: config.get(k) for k in keys if k in (config or {})}


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being written
        return None
    return value if isinstance(value, dict) else None


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (-1, -1)
    return (info.st_mtime_ns, info.st_size)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
