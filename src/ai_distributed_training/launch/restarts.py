"""When restarting the workers can help, and the elastic agent that asks before each restart
(the Ray launcher asks the same :class:`RestartPolicy` before each new fit).

Restarts are for lost workers: one killed by a signal (SIGKILL, the OOM killer), one that lost a
peer (a closed connection), one stuck past ``collective_timeout_s``. A worker that *raised* (a
forward that raises, a shape mismatch, a NaN loss, a full disk) would most likely raise again at
the same point, so restarting it only repeats the failure, three times by default, with three
identical tracebacks. The rule: an attempt that raised is restarted only if it made progress
(wrote a checkpoint newer than the one it started from), so a restart resumes beyond where the
previous one began; otherwise the job stops at once and the error says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from ..errors import RankFailure
from ..training.tracking import EVENTS_FORMAT

#: Messages of errors a rank raises only because a PEER failed first (not a root cause).
PEER_FAILURE_HINTS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "DistNetworkError",
    "DistBackendError",
)
#: A collective that waited past ``collective_timeout_s``: a hang somewhere, worth a restart.
TIMEOUT_HINTS = ("Timed out", "timed out", "DistStoreError")
#: How a launcher that cannot see the signal (Ray: a dead actor) says a worker process died.
WORKER_DIED = "the worker process died"


def root_cause_first(failures: list[RankFailure]) -> list[RankFailure]:
    """Failures ordered root cause first: ranks that failed because a peer did (a closed
    connection), then ranks their launcher itself stopped (SIGTERM), come last."""

    def key(f: RankFailure) -> tuple[bool, bool, int]:
        secondary = any(h in f.message or h in f.traceback for h in PEER_FAILURE_HINTS)
        return f.signal == "SIGTERM", secondary, f.rank

    return sorted(failures, key=key)


def is_lost_worker(failure: RankFailure) -> bool:
    """Whether ``failure`` is a worker lost to the outside (a signal, a lost peer, a hang),
    rather than one that raised an error of the job itself."""
    text = failure.message + failure.traceback
    hints = (*PEER_FAILURE_HINTS, *TIMEOUT_HINTS, WORKER_DIED)
    return failure.signal is not None or any(hint in text for hint in hints)


class RestartPolicy:
    """Says, when an attempt failed, why restarting cannot help (None: restart).

    ``progress()`` gives the newest checkpoint step this run has written (-1: none).
    """

    def __init__(self, progress: Callable[[], int]) -> None:
        self.progress = progress
        self.started_from = progress()  # where the current attempt began
        self.attempt = 0

    def why_not_restart(self, root: RankFailure) -> str | None:
        now, self.attempt = self.progress(), self.attempt + 1
        if is_lost_worker(root) or now > self.started_from:
            self.started_from = now
            return None
        where = f"after checkpoint step {now}" if now >= 0 else "before any checkpoint"
        return (
            f"not restarted: attempt {self.attempt} raised {where} without progress, and a "
            "restart would resume at the same point and most likely fail the same way; "
            "restarts are for lost workers (signals, lost peers, hangs)"
        )


class PolicyAgent(LocalElasticAgent):
    """torch elastic's local agent, which asks a :class:`RestartPolicy` before each restart."""

    def __init__(
        self,
        *,
        policy: RestartPolicy | None,
        root_cause: Callable[[dict[int, ProcessFailure]], RankFailure],
        events: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.policy, self.root_cause, self.events = policy, root_cause, events
        #: Why the agent stopped restarting early (None: it did not).
        self.stopped_because: str | None = None

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        try:
            result: RunResult = super()._monitor_workers(worker_group)
        except ValueError:  # JSONDecodeError: a worker died while writing its error file
            # torch's reader raises on it, which would end the whole call with a JSON error;
            # without the cut file the failure is reported by its exit code or signal.
            if not self._remove_unreadable_error_files():
                raise
            result = super()._monitor_workers(worker_group)
        if not result.is_failed() or self._remaining_restarts <= 0:
            return result
        root = self.root_cause(result.failures)
        reason = self.policy.why_not_restart(root) if self.policy is not None else None
        if reason is not None:
            self.stopped_because = reason
            self._remaining_restarts = 0  # the agent then stops every worker and returns
        elif self.events is not None:
            restart = self._worker_group.spec.max_restarts - self._remaining_restarts + 1
            log_restart(self.events, restart, self._worker_group.spec.max_restarts, root)
        return result

    def _remove_unreadable_error_files(self) -> bool:
        """Delete the workers' error files that do not hold JSON (a worker killed while
        ``@record`` wrote one); returns whether there were any."""
        removed = False
        for path in getattr(self._pcontext, "error_files", {}).values():
            try:
                with open(path) as f:
                    json.load(f)
            except FileNotFoundError:
                continue
            except ValueError:
                Path(path).unlink(missing_ok=True)
                removed = True
        return removed


def log_restart(events: Path, restart: int, max_restarts: int, root: RankFailure) -> None:
    """Append why the workers are being restarted to the run's ``events.log`` (rank 0 writes
    the rest of it; this line comes from the process that restarts them), in its format:
    ``<time> WARNING restart 1 of 3: rank 1 was killed by SIGKILL``."""
    how = f"was killed by {root.signal}" if root.signal else f"failed: {root.message}"
    line = f"restart {restart} of {max_restarts}: rank {root.rank} {how}"
    handler = logging.FileHandler(events)
    handler.setFormatter(logging.Formatter(EVENTS_FORMAT))
    record = logging.LogRecord(__name__, logging.WARNING, __file__, 0, line, None, None)
    try:
        handler.emit(record)
    finally:
        handler.close()
