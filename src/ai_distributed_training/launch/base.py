"""The one interface of the launchers: create a job's workers, wait for them, hand back rank 0's
output. torch elastic (:class:`.elastic.ElasticLauncher`) and Ray
(:class:`.ray_launcher.RayLauncher`) implement it; what a rank does is :mod:`..training`'s
either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..training.job import Job, RankOutput


class Launcher(Protocol):
    """Creates the workers of a job and waits for them."""

    def launch(self, job: Job, *, progress: Callable[[], int]) -> RankOutput:
        """Train ``job`` on this launcher's workers (as many, where and restarted as its
        ``launch`` section and topology say); returns global rank 0's output (see
        :func:`..training.rank.run_rank`). ``progress()`` gives the newest checkpoint step
        this run has written (-1: none), for deciding whether a restart can help.

        Raises:
            WorkerFailedError: a worker failed and the job was not (or no longer) restarted;
                no worker is left running.
        """
        ...
