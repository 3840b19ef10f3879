"""The training loop of one rank: plain PyTorch, readable top to bottom.

It behaves the same under our launcher, under torchrun and in a single process: everything
distributed goes through the :class:`~.strategies.Strategy` object, and every rank runs every
collective (reductions are unconditional; writing goes through a :class:`~.tracking.Tracker` that
does nothing off global rank 0).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .callbacks import Callback, CallbackContext, wants_step_metrics
from .checkpoint import capture_rng, restore_rng, save_checkpoint
from .config import TrainingSettings
from .data import BatchReader, Task
from .faults import FaultInjector
from .sharding import epoch_order, global_batch, loss_scale, num_steps, rank_share
from .strategies import Strategy
from .tracking import JobLog, Tracker

log = logging.getLogger(__name__)
LossSum = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Per-rank window statistics, in this order, gathered at log steps and epoch ends.
_LOSS, _CORRECT, _COUNT, _BUSY, _STEPS = range(5)


@dataclass
class LoopResult:
    """What one rank's loop produced; identical on every rank (all values are reduced)."""

    history: list[dict[str, float]]
    steps: int
    samples_seen: int
    train_time_s: float
    stopped_early: bool
    skipped_steps: int


@dataclass
class LoopPosition:
    """Where training stands; what a checkpoint stores about the loop (besides per-rank state)."""

    epoch: int = 1  # the epoch in progress, 1-based
    step_in_epoch: int = 0  # global batches of that epoch already trained
    step: int = 0  # optimizer steps taken, all epochs together
    train_time: float = 0.0  # seconds of finished epochs
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss, detected at the same step on every rank."""


class Checkpointer:
    """Saves checkpoints; only global rank 0's instance writes (see :mod:`.checkpoint`).

    :meth:`save` is collective: every rank contributes its RNG state and partial sums.
    """

    def __init__(
        self, directory: Path | None, writes: bool, keep: int, config: dict[str, Any]
    ) -> None:
        self.directory, self.writes, self.keep, self.config = directory, writes, keep, config
        self.last: Path | None = None

    def save(
        self,
        strategy: Strategy,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        position: LoopPosition,
        epoch_stats: torch.Tensor,
    ) -> None:
        if self.directory is None:
            return
        mine = {"rng": capture_rng(), "epoch_stats": epoch_stats.cpu()}
        ranks = strategy.all_gather_object(mine)  # collective: every rank, every time
        if self.writes:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "loop": asdict(position),
                "ranks": ranks,
                "world_size": strategy.world_size,
                "config": self.config,
            }
            self.last = save_checkpoint(self.directory, position.step, state, self.keep)


def build_optimizer(settings: TrainingSettings, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``settings.optimizer``."""
    params, lr, wd = model.parameters(), settings.learning_rate, settings.weight_decay
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, weight_decay=wd)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def loss_sum_fn(task: Task, user_loss: Callable[..., Any] | None) -> LossSum:
    """A function giving the SUM of per-sample losses of a (possibly empty) local batch.

    Sums, not means: the loop scales them so that unequal shares weigh correctly (see
    :func:`~.sharding.loss_scale`). A user ``loss_fn`` returns a batch mean, so it is multiplied
    by the batch length.
    """

    def summed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(y) == 0:  # keep the graph connected so DDP still reduces every gradient
            return out.sum() * 0.0
        out = out.float()
        if user_loss is not None:
            return torch.as_tensor(user_loss(out, y)) * len(y)
        if task == "classification":
            return F.cross_entropy(out, y, reduction="sum")
        flat_out, flat_y = out.reshape(len(y), -1), y.reshape(len(y), -1)
        return F.mse_loss(flat_out, flat_y, reduction="sum") / flat_y.shape[1]

    return summed


def _correct(out: torch.Tensor, y: torch.Tensor, task: Task) -> torch.Tensor:
    if task != "classification" or len(y) == 0:
        return torch.zeros((), device=out.device)
    return (out.argmax(dim=1) == y).sum()


def _gradients_finite(model: nn.Module) -> bool:
    """After DDP's all-reduce every rank holds the same gradients, so every rank reaches the same
    answer here without any extra communication (a NaN loss anywhere poisons them all)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


def train(
    model: nn.Module,
    reader: BatchReader,
    task: Task,
    split: tuple[torch.Tensor, torch.Tensor],
    settings: TrainingSettings,
    strategy: Strategy,
    job_log: JobLog,
    tracker: Tracker,
    autocast_dtype: torch.dtype | None,
    checkpointer: Checkpointer,
    faults: FaultInjector,
    resume: dict[str, Any] | None = None,
) -> LoopResult:
    """Train ``model`` for ``settings.epochs`` epochs, from ``resume`` (a checkpoint) if given;
    collective: call on every rank."""
    rank, world_size, device = strategy.rank, strategy.world_size, strategy.device
    train_idx, val_idx = split
    batch_size = settings.batch_size
    steps_per_epoch = num_steps(len(train_idx), batch_size)
    if resume is not None:
        model.load_state_dict(resume["model"])
    wrapped = strategy.wrap(model.to(device))
    optimizer = build_optimizer(settings, wrapped)
    loss_sum = loss_sum_fn(task, settings.loss_fn)
    callbacks: list[Callback] = list(settings.callbacks)
    reduce_each_step = wants_step_metrics(callbacks)
    pos = LoopPosition()
    epoch_stats = torch.zeros(5, dtype=torch.float64, device=device)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        pos = LoopPosition(**resume["loop"])
        epoch_stats = _restore_rank_state(resume, rank, world_size, settings.seed, pos.step)
        epoch_stats = epoch_stats.to(device)
        job_log.info("resuming at epoch %d, step %d", pos.epoch, pos.step)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    def hooks(name: str, epoch: int, step: int, metrics: dict[str, float]) -> bool:
        ctx = CallbackContext(rank, world_size, epoch, step, metrics)
        for cb in callbacks:
            getattr(cb, name)(ctx)
        return ctx.stop_requested

    stopped_early = False
    tracker.start(steps_per_epoch * settings.epochs, steps_per_epoch, settings.epochs)
    hooks("on_train_start", pos.epoch, pos.step, {})
    for epoch in range(pos.epoch, settings.epochs + 1):
        wrapped.train()
        order = epoch_order(len(train_idx), settings.seed, epoch - 1)
        window = torch.zeros(5, dtype=torch.float64, device=device)
        epoch_started = window_started = time.perf_counter()
        for step_in_epoch in range(pos.step_in_epoch, steps_per_epoch):
            faults.before_step(pos.step + 1)
            step_started = time.perf_counter()
            batch = global_batch(order, step_in_epoch, batch_size)
            x, y = reader.batch(train_idx[rank_share(batch, rank, world_size)])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                out = wrapped(x)
            local_sum = faults.loss(pos.step + 1, loss_sum(out, y))
            # Scale so DDP's gradient average equals the mean over the whole global batch.
            loss = local_sum * loss_scale(len(batch), world_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            pos.step += 1
            pos.step_in_epoch = step_in_epoch + 1
            if not _gradients_finite(wrapped):
                bad = strategy.all_gather(
                    torch.tensor([float(not torch.isfinite(local_sum))], device=device)
                )
                ranks = [r for r in range(world_size) if bad[r, 0] > 0] or "unknown"
                where = f"step {pos.step} (epoch {epoch}) on rank(s) {ranks}"
                if not settings.skip_nonfinite_steps:
                    last = checkpointer.last or "none written yet"
                    raise NonFiniteLossError(
                        f"non-finite loss at {where}; the last good checkpoint is intact: "
                        f"{last}; pass skip_nonfinite_steps=True to skip such steps"
                    )
                job_log.warning("skipping %s: non-finite loss", where)
                pos.skipped_steps += 1
                optimizer.zero_grad(set_to_none=True)
                tracker.step(epoch, step_in_epoch + 1)
                continue
            optimizer.step()

            stats = torch.stack(
                [
                    local_sum.detach().double(),
                    _correct(out.detach(), y, task).double(),
                    torch.tensor(float(len(y)), device=device),
                    torch.tensor(time.perf_counter() - step_started, device=device),
                    torch.ones((), device=device),
                ]
            )
            window += stats
            epoch_stats += stats
            tracker.step(epoch, step_in_epoch + 1)
            if reduce_each_step:
                step_loss = strategy.all_reduce(stats[:1].clone(), dist.ReduceOp.SUM)
                hooks("on_step_end", epoch, pos.step, {"train_loss": float(step_loss) / len(batch)})
            if pos.step % settings.log_every_steps == 0 and step_in_epoch + 1 < steps_per_epoch:
                per_worker = strategy.all_gather(window)
                now = time.perf_counter()
                tracker.record(
                    _step_record(per_worker, task, epoch, pos.step, now - window_started)
                )
                window.zero_()
                window_started = now
            every = settings.checkpoint_every
            if every and pos.step % every == 0 and step_in_epoch + 1 < steps_per_epoch:
                checkpointer.save(strategy, strategy.unwrap(wrapped), optimizer, pos, epoch_stats)

        wall = torch.tensor(
            [time.perf_counter() - epoch_started], dtype=torch.float64, device=device
        )
        gathered = strategy.all_gather(torch.cat([epoch_stats, wall]))
        per_worker = gathered[:, :5]
        elapsed = float(gathered[:, 5].max())  # an epoch lasts as long as its slowest rank
        pos.train_time += elapsed
        metrics: dict[str, float] = {"epoch": epoch}
        metrics.update(_summarize("train", per_worker.sum(0), task))
        if len(val_idx):
            metrics.update(
                evaluate(
                    strategy.unwrap(wrapped),
                    reader,
                    val_idx,
                    settings,
                    strategy,
                    task,
                    loss_sum,
                    autocast,
                )
            )
        metrics["samples_per_second"] = float(per_worker[:, _COUNT].sum()) / elapsed
        pos.history.append(metrics)
        tracker.record(
            {
                "type": "epoch",
                "step": pos.step,
                **metrics,
                "epoch_time_s": elapsed,
                **_per_worker(per_worker),
            }
        )
        job_log.info(
            "epoch %d/%d: %s",
            epoch,
            settings.epochs,
            ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"),
        )
        pos.epoch, pos.step_in_epoch = epoch + 1, 0
        epoch_stats = torch.zeros(5, dtype=torch.float64, device=device)
        checkpointer.save(strategy, strategy.unwrap(wrapped), optimizer, pos, epoch_stats)
        stop = torch.tensor(
            [float(hooks("on_epoch_end", epoch, pos.step, dict(metrics)))], device=device
        )
        if strategy.all_reduce(stop, dist.ReduceOp.MAX).item() and epoch < settings.epochs:
            job_log.info("stopping early after epoch %d (a callback asked)", epoch)
            stopped_early = True
            break
    hooks("on_train_end", len(pos.history), pos.step, dict(pos.history[-1]))
    return LoopResult(
        pos.history,
        pos.step,
        len(train_idx) * len(pos.history),
        pos.train_time,
        stopped_early,
        pos.skipped_steps,
    )


def _restore_rank_state(
    resume: dict[str, Any], rank: int, world_size: int, seed: int, step: int
) -> torch.Tensor:
    """Restore this rank's RNG and partial epoch sums from a checkpoint; returns the sums.

    With the same number of ranks, each rank gets back exactly its own state (bitwise resume).
    With another number, RNG streams are reseeded from (seed, step, rank) and the partial sums
    are carried by rank 0, so epoch metrics stay correct.
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
    torch.manual_seed(seed + 7919 * (step + 1) + rank)
    if rank == 0:
        return torch.stack([r["epoch_stats"] for r in ranks]).sum(0)
    return torch.zeros_like(ranks[0]["epoch_stats"])


def _per_worker(per_worker: torch.Tensor) -> dict[str, list[float]]:
    steps = per_worker[:, _STEPS].clamp(min=1)
    return {
        "worker_step_time_s": (per_worker[:, _BUSY] / steps).tolist(),
        "worker_samples": per_worker[:, _COUNT].tolist(),
    }


def _step_record(
    per_worker: torch.Tensor, task: Task, epoch: int, step: int, wall: float
) -> dict[str, Any]:
    totals = per_worker.sum(0)
    return {
        "type": "step",
        "epoch": epoch,
        "step": step,
        **_summarize("train", totals, task),
        "samples_per_second": float(totals[_COUNT]) / wall,
        **_per_worker(per_worker),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    reader: BatchReader,
    val_idx: torch.Tensor,
    settings: TrainingSettings,
    strategy: Strategy,
    task: Task,
    loss_sum: LossSum,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> dict[str, float]:
    """Loss (and accuracy) over the whole validation split, each sample seen exactly once
    across ranks (contiguous shares, no padding); sums and counts are reduced, not averages."""
    model.eval()
    device = strategy.device
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    local = rank_share(val_idx, strategy.rank, strategy.world_size)
    for chunk in local.split(settings.batch_size):
        x, y = reader.batch(chunk)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        totals[_LOSS] += loss_sum(out, y).double()
        totals[_CORRECT] += _correct(out, y, task).double()
        totals[_COUNT] += len(y)
    strategy.all_reduce(totals, dist.ReduceOp.SUM)
    model.train()
    return _summarize("val", totals, task)


def _summarize(prefix: str, totals: torch.Tensor, task: Task) -> dict[str, float]:
    loss, correct, count = totals[:3].tolist()
    out = {f"{prefix}_loss": loss / count}
    if task == "classification":
        out[f"{prefix}_accuracy"] = correct / count
    return out
