"""Fault injection: rehearse distributed failures on one machine (setting ``fault_injection``).

Each :class:`~.config.FaultSpec` fires once: on its rank, at its global step, in its attempt of
the job (attempt n runs after n restarts), so a restarted job does not meet the same fault again
unless asked to.
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
        self.faults = {f.step: f for f in faults if f.rank == rank and f.attempt == attempt}

    def before_step(self, step: int) -> None:
        """Called before global step ``step`` (1-based): kill, raise or hang here."""
        fault = self.faults.get(step)
        if fault is None or fault.kind == "nan":
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
        fault = self.faults.get(step)
        if fault is not None and fault.kind == "nan":
            log.warning("injecting a NaN loss at step %d", step)
            return local_sum * float("nan")
        return local_sum
