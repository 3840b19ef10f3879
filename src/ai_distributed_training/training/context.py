"""What the loop needs from its rank, built once in :mod:`.rank`: one keyword-only object each."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.sections import LoopSection, OptimSection, Sections, StepSection
from ..data import BatchReader, Task
from ..data.streams import StreamReader
from .faults import FaultInjector
from .resume import Checkpointer
from .strategies import Strategy
from .strategies.base import DataCoords
from .tracking import JobLog, Tracker


@dataclass(frozen=True, kw_only=True)
class RankContext:
    """This rank's collaborators: the strategy (every collective goes through it), the job log
    and tracker (real on global rank 0, no-ops elsewhere), the checkpointer, the fault injector
    and the compute dtype of autocast (None: fp32). Left out, each collaborator is a no-op one
    (no log, no files, no checkpoints, no faults): what a one-rank unit test needs. The
    sections are the job's: the loop's arithmetic, the optimizer's, the step's."""

    loop: LoopSection
    optim: OptimSection
    step: StepSection
    strategy: Strategy
    job_log: JobLog = field(default_factory=lambda: JobLog(enabled=False))
    tracker: Tracker = field(default_factory=Tracker)
    checkpointer: Checkpointer = field(
        default_factory=lambda: Checkpointer(None, writes=False, keep=1, config={})
    )
    faults: FaultInjector = field(default_factory=lambda: FaultInjector([], rank=0, attempt=0))
    compute_dtype: torch.dtype | None = None
    #: Weights to start from (``init_from``, resolved), unless the run resumes.
    init_from: str | None = None

    @classmethod
    def of(cls, sections: Sections, **collaborators: Any) -> RankContext:
        """The context of a job's ``sections`` (see :func:`~..config.sections.sections_of`),
        with the collaborators given by keyword (``strategy`` at least)."""
        return cls(loop=sections.loop, optim=sections.optim, step=sections.step, **collaborators)

    @property
    def rank(self) -> int:
        return self.strategy.rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def data(self) -> DataCoords:
        """This rank's place among the ranks reading distinct data (see
        :class:`~.strategies.base.DataCoords`): its share of each batch, its seeds."""
        return self.strategy.data

    @property
    def device(self) -> torch.device:
        return self.strategy.device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the compute dtype, or nothing (fp32)."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)


@dataclass(frozen=True, kw_only=True)
class RankData:
    """The data as one rank reads it: training positions and validation positions (into
    ``val_reader``, which is ``reader`` itself when validation is a held-out split)."""

    reader: BatchReader
    task: Task
    train_idx: torch.Tensor
    val_reader: BatchReader
    val_idx: torch.Tensor
    #: A stream read in order instead of by ``train_idx`` (see :mod:`..data.streams`).
    stream: StreamReader | None = None
