"""Resuming: where a rank starts from, and what a checkpoint holds of the loop.

The file format (atomic files, newest-valid lookup, RNG capture) is :mod:`.checkpoint`'s; the
strategies write the model and optimizer (DDP: one file by rank 0; FSDP: sharded, every rank).
This module decides which checkpoint a run resumes from (before launch: :func:`plan_resume`;
in every rank: :func:`agreed_resume_point`), saves the loop's position and
each rank's RNG and partial sums beside the model, and puts them all back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config.sections import CheckpointSection, ResumePlan
from ..errors import ConfigError, DataChangedError
from .checkpoint import (
    capture_rng,
    checkpoint_meta,
    is_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_newest_valid,
    of_run,
    restore_rng,
)
from .identity import changed_data_files, compatible, differences
from .job import Job
from .strategies.base import Strategy

log = logging.getLogger(__name__)

# --- the loop's position: a Stateful checkpointed like the model and the optimizer -------------


@dataclass
class LoopPosition:
    """Where training stands, the same on every rank; a checkpoint's ``loop`` entry.

    Stateful (``state_dict``/``load_state_dict``), so the checkpointer saves it like the model
    and the optimizer (torchtitan's pattern).
    """

    epoch: int = 1  # the epoch in progress, 1-based
    step_in_epoch: int = 0  # global batches of that epoch already trained
    step: int = 0  # optimizer steps taken, all epochs together
    train_time: float = 0.0  # seconds of finished epochs
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    samples: int = 0  # training samples of the steps taken (checkpoints before it: see restore)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class Stateful(Protocol):
    """Anything a checkpoint holds: the model, the optimizer, the scheduler, the position."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


#: Told, on every rank, of each checkpoint saved: its path (on the rank that wrote it; None on
#: the others) and its global step. A launcher's hook (Ray registers the checkpoint with Ray).
CheckpointHook = Callable[[Path | None, int], None]


class Checkpointer:
    """Saves checkpoints; only global rank 0's instance writes what is not sharded.

    :meth:`save` is collective: every rank contributes its RNG state and partial sums.
    """

    def __init__(
        self,
        directory: Path | None,
        *,
        writes: bool,
        keep: int,
        config: dict[str, Any],
        every: int | None = None,
        run_id: str | None = None,
        fingerprint: dict[str, str] | None = None,
        resumed_from: str | None = None,
        on_saved: CheckpointHook | None = None,
    ) -> None:
        self.directory, self.writes, self.keep, self.config = directory, writes, keep, config
        self.every, self.on_saved = every, on_saved
        #: Who wrote each checkpoint, what a run must match to continue from it, and where
        #: this run started from (so a restart still knows).
        self.identity = {
            "run_id": run_id,
            "fingerprint": fingerprint or {},
            "resumed_from": resumed_from,
        }
        self.last: Path | None = None

    def due(self, step: int) -> bool:
        """Whether global step ``step`` is one of the periodic checkpoints (``every``); epoch
        ends always save."""
        return self.every is not None and step % self.every == 0

    def save(
        self,
        strategy: Strategy,
        stateful: Mapping[str, Stateful],
        *,
        step: int,
        epoch_stats: torch.Tensor,
        rank_state: Mapping[str, Any] | None = None,
    ) -> None:
        """Checkpoint ``stateful`` objects (model, optimizer, loop position, ...) as global step
        ``step``, with this rank's RNG state, partial epoch sums and ``rank_state`` (e.g. its
        stream's position)."""
        if self.directory is None:
            return
        mine = {"rng": capture_rng(), "epoch_stats": epoch_stats.cpu(), **(rank_state or {})}
        ranks = strategy.all_gather_object(mine)  # collective: every rank, every time
        meta = {
            "ranks": ranks,
            "world_size": strategy.world_size,
            "config": self.config,
            **self.identity,
        }
        saved = strategy.save_checkpoint(
            self.directory, step, stateful, meta, self.writes, self.keep
        )
        self.last = saved or self.last
        if self.on_saved is not None:
            self.on_saved(saved, step)


def restore(
    resume: dict[str, Any],
    strategy: Strategy,
    stateful: Mapping[str, Stateful],
    seed: int,
) -> torch.Tensor:
    """Load checkpoint ``resume`` into ``stateful`` (model, optimizer, ..., loop position) and
    restore this rank's RNG; returns this rank's partial epoch sums. Collective."""
    strategy.load_checkpoint(resume, stateful)
    step = int(resume["loop"]["step"])
    return restore_rank_state(
        resume, strategy.rank, strategy.world_size, seed, step, stream=strategy.data.rank
    )


def restore_rank_state(
    resume: dict[str, Any], rank: int, world_size: int, seed: int, step: int, *, stream: int
) -> torch.Tensor:
    """Restore this rank's RNG and partial epoch sums from a checkpoint; returns the sums.

    With the same number of ranks, each rank gets back exactly its own state (bitwise resume).
    With another number, RNG streams are reseeded from (seed, step, ``stream``: the rank's data
    rank, which tensor-parallel peers share, so their dropout stays the same) and the partial
    sums are carried by rank 0, so epoch metrics stay correct.
    """
    ranks = resume["ranks"]
    if len(ranks) == world_size:
        restore_rng(ranks[rank]["rng"])
        return torch.as_tensor(ranks[rank]["epoch_stats"])
    if rank == 0:
        log.warning(
            "resuming a %d-rank checkpoint on %d ranks: weights, optimizer and data "
            "position continue exactly; random streams (e.g. dropout) are reseeded",
            len(ranks),
            world_size,
        )
    torch.manual_seed(seed + 7919 * (step + 1) + stream)
    if rank == 0:
        return torch.stack([torch.as_tensor(r["epoch_stats"]) for r in ranks]).sum(0)
    return torch.zeros_like(torch.as_tensor(ranks[0]["epoch_stats"]))


# --- where to start from --------------------------------------------------------------------------


def find_resume_point(
    job: Job, ckpt_dir: Path | None, attempt: int, run_id: str
) -> tuple[Path | None, dict[str, Any] | None, str | None]:
    """The checkpoint to start from, its path, and the checkpoint the run originally resumed
    from (what the result reports as ``resumed_from``; None: a fresh start).

    After a restart (attempt > 0): the newest valid checkpoint this run wrote in ``ckpt_dir``,
    never another run's. Before this run wrote any, and in the first attempt: the job's
    resume plan (a checkpoint path, else the newest valid compatible checkpoint in its
    directory), else none."""
    plan = job.checkpoint.plan
    if attempt > 0 and ckpt_dir is not None:
        found = load_newest_valid(ckpt_dir, of_run(run_id))
        if found is not None:
            log.info("resuming from %s", found[0])
            return found[0], found[1], found[1].get("resumed_from")
    if plan.path is not None:
        log.info("resuming from %s (%s)", plan.path, plan.reason)
        return plan.path, load_checkpoint(plan.path), str(plan.path)
    if plan.directory is not None:
        found = load_newest_valid(
            plan.directory, partial(compatible, job.fingerprint, data_files=False)
        )
        if found is not None:
            log.info("resuming from %s", found[0])
            return found[0], found[1], str(found[0])
    if attempt > 0 or plan.directory is not None:
        log.info("no checkpoint to resume from: starting from scratch")
    return None, None, None


def agreed_resume_point(
    strategy: Strategy, job: Job, ckpt_dir: Path | None, restart_count: int
) -> tuple[int, str, dict[str, Any] | None, str | None]:
    """The attempt number, run id, checkpoint and original resume point (see
    :func:`find_resume_point`) every rank starts from (collective: all ranks call).
    ``restart_count``: this rank's launcher's count of restarts so far.

    Each host's elastic agent counts its own restarts, and an agent that re-rendezvoused
    because ANOTHER host restarted does not count one at all: its ranks would start afresh while
    the others resume, and the job would deadlock or abort on mismatched collectives. So the
    ranks take the largest count, rank 0's run id (each host's caller made its own), and check
    that they all found the same checkpoint.
    """
    gathered = strategy.all_gather_object((restart_count, job.run_id))
    attempt, run_id = max(count for count, _ in gathered), gathered[0][1]
    path, state, origin = find_resume_point(job, ckpt_dir, attempt, run_id)
    found = strategy.all_gather_object(str(path) if path else None)
    if len(set(found)) > 1:
        raise RuntimeError(
            f"the ranks found different checkpoints to resume from ({dict(enumerate(found))}); "
            "every host must see the same checkpoint_dir (a shared filesystem)"
        )
    return attempt, run_id, state, origin


# --- the resume setting, resolved before any worker starts ---------------------------------------


def plan_resume(
    checkpoint: CheckpointSection,
    fingerprint: dict[str, str],
    earlier_runs: Callable[[], list[Path]],
    notes: list[str],
) -> ResumePlan:
    """Where the first attempt starts from; only checkpoints' small facts are read. The
    workers then take the plan's path, or the newest valid compatible checkpoint in its
    directory (:func:`find_resume_point`).

    A path as given (its model must be this one's: other data, other settings may follow).
    ``"auto"``: the newest checkpoint in ``checkpoint.directory`` (refused, naming what
    differs, if its run is not compatible), or without one the newest compatible earlier run
    of this model (``earlier_runs()``: their checkpoint folders, newest first). A data file
    changed since is refused (:class:`~..errors.DataChangedError`), or with
    ``allow_data_change`` said in ``notes``.

    Raises:
        ConfigError: no such checkpoint, or one of an incompatible run.
    """
    if checkpoint.resume is None:
        return ResumePlan()
    path: Path | None = None
    directory: Path | None = None
    newest: tuple[Path, dict[str, Any]] | None
    if checkpoint.resume != "auto":
        path = Path(checkpoint.resume)
        if not is_checkpoint(path):
            raise ConfigError(
                f"resume={checkpoint.resume!r}: no such checkpoint; pass 'auto' or the path of a "
                "step-*.pt checkpoint file or a committed step-*.dcp directory"
            )
        newest, reason = (path, checkpoint_meta(path)), f"resume={checkpoint.resume!r}"
    elif checkpoint.directory is not None:
        directory = Path(checkpoint.directory)
        newest, reason = _newest_readable(directory), "resume='auto': the checkpoint_dir's newest"
    else:
        directory = _newest_compatible(earlier_runs(), fingerprint)
        newest = _newest_readable(directory) if directory else None
        reason = "resume='auto': the newest compatible earlier run of this model"
    if newest is None:
        return ResumePlan()
    if path is None:  # a path given is a choice of weights: other data may follow
        notes += _check_data_files(*newest, fingerprint, checkpoint.allow_data_change)
    _check_compatible(*newest, fingerprint, only_model=path is not None)
    strategy = str(newest[1]["strategy"])
    return ResumePlan(
        path=path, directory=directory, reason=reason, found=newest[0], strategy=strategy
    )


def _check_data_files(
    path: Path, meta: dict[str, Any], fingerprint: dict[str, str], allowed: bool
) -> list[str]:
    """Refuse to continue the checkpoint ``path`` if a data file changed since it was written
    (its run trained on the old contents: the two would mix silently), unless ``allowed``;
    returns what the run's events.log says of it then."""
    changed = changed_data_files(fingerprint, meta["fingerprint"])
    if changed and not allowed:
        raise DataChangedError(changed, f"the checkpoint {path}")
    return [f"continuing {path} on changed data (allow_data_change=True): {c}" for c in changed]


def _newest_readable(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` whose facts can be read, with those facts (the
    workers verify the whole of it)."""
    for path in list_checkpoints(directory):
        try:
            return path, checkpoint_meta(path)
        except Exception:  # truncated or corrupt: the workers skip it, with a warning
            continue
    return None


def _check_compatible(
    path: Path, meta: dict[str, Any], fingerprint: dict[str, str], only_model: bool
) -> None:
    """Refuse a checkpoint whose run differs from this one in what changes the math (a
    checkpoint given by its path: in the model only); checkpoints from before fingerprints are
    taken as they are."""
    theirs = meta["fingerprint"]
    if not theirs:
        return
    mine = {"model": fingerprint["model"]} if only_model else fingerprint
    theirs = {"model": theirs.get("model", "")} if only_model else theirs
    differ = differences(mine, theirs, data_files=False)  # those: _check_data_files
    if differ:
        raise ConfigError(
            f"resume={str(path) if only_model else 'auto'!r}: the checkpoint {path} belongs to "
            f"a run that differs in {', '.join(differ)}; resume it with the same model, data "
            "and settings, or start afresh (resume=None, or another checkpoint_dir)"
        )


def _newest_compatible(folders: list[Path], fingerprint: dict[str, str]) -> Path | None:
    """The first of ``folders`` (earlier runs' checkpoint folders, newest first) holding a
    checkpoint this run can continue but for its data files' contents (a change there is
    refused, not silently passed over)."""
    for folder in folders:
        for path in list_checkpoints(folder):
            try:
                if compatible(fingerprint, checkpoint_meta(path), data_files=False):
                    return folder
            except Exception:  # unreadable: not a candidate
                continue
    return None
