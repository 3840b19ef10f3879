"""Fault injection: rehearse distributed failures on one machine (setting ``fault_injection``).

Each :class:`~.config.FaultSpec` fires once: on its rank, at its global step, in its attempt of
the job (attempt n runs after n restarts), so a restarted job does not meet the same fault again
unless asked to. An attempt that resumes past a fault's step (its checkpoint was written after
the step, e.g. when the previous attempt's delayed kill landed late) meets the fault at its first
step instead: a fault meant for an attempt always fires in it, so a chain of n kills restarts
the job n times.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import torch

from ..config import FaultSpec

log = logging.getLogger("ai_distributed_training.faults")


class InjectedFault(RuntimeError):
    """Raised by a ``raise`` fault."""


class FaultInjector:
    """The faults meant for this rank and attempt; with none it does nothing."""

    def __init__(self, faults: list[FaultSpec], rank: int, attempt: int) -> None:
        self.pending = sorted(
            (f for f in faults if f.rank == rank and f.attempt == attempt), key=lambda f: f.step
        )
        self.nan_step: int | None = None

    def before_step(self, step: int) -> None:
        """Called before global step ``step`` (1-based): kill, raise or hang here (or make this
        step's loss NaN), for the first pending fault whose step is ``step`` or already past."""
        if not self.pending or self.pending[0].step > step:
            return
        fault = self.pending.pop(0)
        if fault.kind == "nan":
            self.nan_step = step
            return
        log.warning("injecting fault %r at step %d", fault.kind, step)
        if fault.kind == "kill" and fault.delay_s:  # any moment: a timer, not this thread
            timer = threading.Timer(fault.delay_s, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()
            return
        if fault.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.kind == "raise":
            raise InjectedFault(f"injected fault: rank {fault.rank} raised at step {step}")
        while True:  # "hang": alive but stuck, until the job's collective timeout stops it
            time.sleep(3600)

    def loss(self, step: int, local_sum: torch.Tensor) -> torch.Tensor:
        """The loss to use at ``step``: NaN where a ``nan`` fault says so."""
        if self.nan_step == step:
            log.warning("injecting a NaN loss at step %d", step)
            return local_sum * float("nan")
        return local_sum
