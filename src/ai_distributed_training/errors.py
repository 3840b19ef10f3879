"""The library's exceptions.

Bad input is reported before any worker starts, as :class:`ConfigError` (a ``ValueError``) or
:class:`ConfigTypeError` (also a ``TypeError``), with a message that names the bad value and what
is accepted. A failure inside a worker reaches the caller as :class:`WorkerFailedError`.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting, model spec or data input has a bad value; raised before any worker starts."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting, model spec or data input has the wrong type; raised before any worker starts."""


class DataChangedError(ConfigError):
    """A data file changed since a checkpoint of the run was written: continuing from it would
    train one model on two data sets without a word (setting ``allow_data_change``)."""

    def __init__(self, changed: list[str], what: str) -> None:
        super().__init__(
            f"{'; '.join(changed)}: changed since {what} was written. The run trained on the "
            "old contents and would continue on the new ones; put the old file back, start "
            "afresh (resume=None, or another checkpoint_dir), or pass allow_data_change=True "
            "to continue on the new data (recorded in events.log)"
        )


class NonFiniteError(RuntimeError):
    """A NaN or inf in a step (a loss, a gradient, a value a train_step returned), found at the
    same step on every rank: the job stops, naming the step, the model and the ranks whose loss
    was not finite (setting ``skip_nonfinite_steps`` skips such updates instead)."""


@dataclass(frozen=True)
class RankFailure:
    """What one failed worker reported: its global rank and why it stopped."""

    rank: int
    exitcode: int
    #: Signal name (e.g. ``"SIGKILL"``) when the process was killed by a signal, else ``None``.
    signal: str | None
    #: ``"ExcType: message"`` of the exception the worker raised, or a description of its exit.
    message: str
    #: The worker's Python traceback, when it raised (empty when it was killed).
    traceback: str


class WorkerFailedError(RuntimeError):
    """One or more workers failed; the whole job was stopped and no worker is left running.

    ``failures`` lists every failed rank; ``first`` is the root cause (the earliest failure).
    """

    def __init__(self, failures: list[RankFailure], not_restarted: str | None = None) -> None:
        if not failures:
            raise ValueError("WorkerFailedError needs at least one failure")
        self.failures = failures
        #: Why the job was not restarted although restarts were left (None: it ran out).
        self.not_restarted = not_restarted
        self.first = failures[0]
        first = self.first
        how = f"killed by {first.signal}" if first.signal else f"exit code {first.exitcode}"
        lines = [f"worker rank {first.rank} failed ({how}): {first.message}"]
        others = [f.rank for f in failures[1:]]
        if others:
            lines.append(f"(ranks {others} stopped after it)")
        if "Timed out" in first.message:
            lines.append(_timeout_line(first.rank, failures))
        if not_restarted:
            lines.append(not_restarted)
        if first.traceback:
            lines.append(f"traceback of rank {first.rank}:\n{first.traceback.rstrip()}")
        super().__init__("\n".join(lines))

    #: The newest checkpoint on disk when the job failed (None: none was written).
    last_checkpoint: str | None = None

    def note_checkpoint(self, path: str | None) -> None:
        """Record (and mention in the message) the checkpoint a rerun can resume from."""
        self.last_checkpoint = path
        self.args = (f"{self.args[0]}\nlast checkpoint: {path or 'none'}",)

    @property
    def rank(self) -> int:
        """Global rank of the first worker that failed."""
        return self.first.rank


#: What makes torch name mismatched collectives at once (its desync check).
DESYNC_CHECK = "TORCH_DISTRIBUTED_DEBUG=DETAIL"


def _timeout_line(rank: int, failures: list[RankFailure]) -> str:
    """Who a timed-out collective waited for: the ranks that never reached it, or, when every
    failed rank timed out in a collective itself, the likely causes."""
    stuck = _not_arrived(failures)
    line = f"rank {rank} waited longer than collective_timeout_s for a peer; "
    if stuck:
        return line + f"ranks that never reached the collective (likely stuck): {stuck}"
    return line + (
        "every failed rank timed out in a collective itself (none was busy elsewhere), so the "
        "ranks likely ran different collectives (a train_step calling ctx.backward or ctx.step "
        "on some ranks only, a forward that differs by rank), or a rank on another host is "
        f"stuck; run with the environment variable {DESYNC_CHECK} to have torch name "
        "mismatched collectives at once"
    )


def _not_arrived(failures: list[RankFailure]) -> list[int]:
    """Ranks the agent stopped that had not timed out themselves: every rank waiting in the
    collective times out at about the same moment and says so; the one that never arrived is
    busy elsewhere (or stuck) and only sees the agent's SIGTERM."""
    return sorted(
        f.rank for f in failures if f.signal == "SIGTERM" and "Timed out" not in f.message
    )


class RendezvousFailedError(RuntimeError):
    """The hosts of a multi-host job did not all meet at the rendezvous in time; nothing ran."""


class SimulationError(RuntimeError):
    """A simulation's own process failed (not the job's step: that is reported per rank)."""


class TrainingInterrupted(SystemExit):
    """The caller got SIGTERM, SIGHUP or SIGQUIT during ``train_distributed``: every worker was
    stopped and the call's temporary files removed; checkpoints already written stay.

    A ``SystemExit`` (with the shell's code, 128 + the signal's number), so an uncaught one ends
    the program as the signal would have, after cleaning up; catch it to do otherwise. Ctrl-C
    (SIGINT) stays ``KeyboardInterrupt``.
    """

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return f"training interrupted by {self.signal}; every worker was stopped"


#: This package's folder: frames from files under it are the library's own.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn about the user's call, pointing at the user's line: the first frame outside this
    package (``warnings.warn``'s ``stacklevel`` counted for us, however deep the library's
    own calls go; Python 3.12's ``skip_file_prefixes`` does the same)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level + 1)
