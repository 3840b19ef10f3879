"""The training loop of one rank: plain PyTorch, readable top to bottom.

It behaves the same under our launcher, under torchrun and in a single process: everything
distributed goes through the :class:`~.strategies.Strategy` object, and every rank runs every
collective (reductions and checkpoints are unconditional; writing goes through a
:class:`~.tracking.Tracker` and a :class:`Checkpointer` that only write on global rank 0).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .callbacks import Callback, CallbackContext, wants_step_metrics
from .checkpoint import capture_rng, restore_rng
from .config import TrainingSettings
from .data import BatchReader, Task
from .faults import FaultInjector
from .metrics import BUSY, CLIPPED, COUNT, STEPS, Meter, per_worker
from .optim import LossSum, build_optimizer, build_scheduler, loss_sum_fn
from .sharding import epoch_order, global_batch, loss_scale, num_steps, rank_share
from .strategies import Strategy, model_state_bytes
from .tracking import JobLog, Tracker

log = logging.getLogger(__name__)
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass
class LoopResult:
    """What one rank's loop produced; identical on every rank (all values are reduced)."""

    history: list[dict[str, float]]
    steps: int
    samples_seen: int
    train_time_s: float
    stopped_early: bool
    skipped_steps: int
    model_state_bytes: int  # this rank's parameters + gradients + optimizer state, at the end


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
        stateful: Mapping[str, Any],
        position: LoopPosition,
        epoch_stats: torch.Tensor,
    ) -> None:
        """Checkpoint ``stateful`` objects (model, optimizer, ...: anything with state_dict)."""
        if self.directory is None:
            return
        mine = {"rng": capture_rng(), "epoch_stats": epoch_stats.cpu()}
        ranks = strategy.all_gather_object(mine)  # collective: every rank, every time
        meta = {
            "loop": asdict(position),
            "ranks": ranks,
            "world_size": strategy.world_size,
            "config": self.config,
        }
        saved = strategy.save_checkpoint(
            self.directory, position.step, stateful, meta, self.writes, self.keep
        )
        self.last = saved or self.last


def _targets(y: torch.Tensor, task: Task) -> torch.Tensor:
    if task == "regression" and not y.is_floating_point():
        return y.float()
    if task == "classification" and y.is_floating_point():
        return y.long()
    return y


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
    val_reader: BatchReader | None = None,
) -> LoopResult:
    """Train ``model`` for ``settings.epochs`` epochs, from ``resume`` (a checkpoint) if given;
    validate on ``val_reader`` (all of it) or else on the ``split``'s held-out indices.
    Collective: call on every rank."""
    rank, world_size, device = strategy.rank, strategy.world_size, strategy.device
    train_idx, val_idx = split
    if val_reader is not None:
        val_idx = torch.arange(len(val_reader))
    batch_size, accumulation = settings.batch_size, settings.gradient_accumulation_steps
    steps_per_epoch = num_steps(len(train_idx), batch_size)
    wrapped = strategy.wrap(model)
    optimizer = build_optimizer(settings, wrapped)
    scheduler = build_scheduler(settings, optimizer, steps_per_epoch * settings.epochs)
    # fp16 needs loss scaling; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    stateful: dict[str, Any] = {
        "model": strategy.unwrap(wrapped),
        "optimizer": optimizer,
        "scheduler": scheduler,
    }
    if scaler is not None:
        stateful["scaler"] = scaler
    loss_sum = loss_sum_fn(task, settings.loss_fn)
    meter = Meter(task, settings.metrics, device)
    callbacks: list[Callback] = list(settings.callbacks)
    reduce_each_step = wants_step_metrics(callbacks)
    pos = LoopPosition()
    epoch_stats = meter.zeros()
    if resume is not None:
        strategy.load_checkpoint(resume, stateful)
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

    def validate() -> dict[str, float]:
        return evaluate(
            strategy.unwrap(wrapped),
            val_reader or reader,
            val_idx,
            task,
            batch_size,
            strategy,
            loss_sum,
            meter,
            autocast,
        )

    def forward_backward(share: torch.Tensor, scale: float, step: int) -> torch.Tensor:
        """This rank's share of one global batch, in ``accumulation`` micro-batches; gradients
        are synchronized on the last micro-batch only. Returns the share's stat vector."""
        stats = meter.zeros()
        micro_batches = share.tensor_split(accumulation)
        for i, indices in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else strategy.no_sync(wrapped):
                x, y = reader.batch(indices)
                x = x.to(device, non_blocking=True)
                y = _targets(y.to(device, non_blocking=True), task)
                with autocast():
                    out = wrapped(x)
                local_sum = faults.loss(step, loss_sum(out, y))
                # Scaled so DDP's gradient average is the mean over the whole global batch.
                loss = local_sum * scale
                (scaler.scale(loss) if scaler is not None else loss).backward()
            stats += meter.batch(local_sum, out, y)
        return stats

    stopped_early = False
    tracker.start(steps_per_epoch * settings.epochs, steps_per_epoch, settings.epochs)
    hooks("on_train_start", pos.epoch, pos.step, {})
    for epoch in range(pos.epoch, settings.epochs + 1):
        wrapped.train()
        order = epoch_order(len(train_idx), settings.seed, epoch - 1)
        window = meter.zeros()
        epoch_started = window_started = time.perf_counter()
        for step_in_epoch in range(pos.step_in_epoch, steps_per_epoch):
            faults.before_step(pos.step + 1)
            step_started = time.perf_counter()
            batch = global_batch(order, step_in_epoch, batch_size)
            share = train_idx[rank_share(batch, rank, world_size)]
            optimizer.zero_grad(set_to_none=True)
            stats = forward_backward(share, loss_scale(len(batch), world_size), pos.step + 1)
            pos.step += 1
            pos.step_in_epoch = step_in_epoch + 1
            tracker.step(epoch, step_in_epoch + 1)

            if scaler is None and not strategy.gradients_finite(wrapped):
                _non_finite(strategy, stats, pos, epoch, settings, checkpointer, job_log)
                optimizer.zero_grad(set_to_none=True)
                continue  # skipped on every rank together
            if settings.max_grad_norm is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                norm = strategy.clip_grad_norm(wrapped, settings.max_grad_norm)
                stats[CLIPPED] = float(norm > settings.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()

            stats[BUSY], stats[STEPS] = time.perf_counter() - step_started, 1
            window += stats
            epoch_stats += stats
            if reduce_each_step:
                step_loss = strategy.all_reduce(stats[:1].clone(), dist.ReduceOp.SUM)
                hooks("on_step_end", epoch, pos.step, {"train_loss": float(step_loss) / len(batch)})
            mid_epoch = step_in_epoch + 1 < steps_per_epoch
            if pos.step % settings.log_every_steps == 0 and mid_epoch:
                gathered = strategy.all_gather(window)
                now = time.perf_counter()
                tracker.record(
                    {
                        "type": "step",
                        "epoch": epoch,
                        "step": pos.step,
                        **meter.summarize("train", gathered.sum(0)),
                        "lr": float(scheduler.get_last_lr()[0]),
                        "samples_per_second": float(gathered[:, COUNT].sum())
                        / (now - window_started),
                        **per_worker(gathered),
                    }
                )
                window.zero_()
                window_started = now
            eval_now = bool(settings.eval_every) and pos.step % (settings.eval_every or 1) == 0
            if eval_now and mid_epoch and len(val_idx):
                evaluation = validate()
                tracker.record({"type": "eval", "epoch": epoch, "step": pos.step, **evaluation})
                job_log.info("step %d: %s", pos.step, _fmt(evaluation))
            every = settings.checkpoint_every
            if every and pos.step % every == 0 and mid_epoch:
                checkpointer.save(strategy, stateful, pos, epoch_stats)

        wall = torch.tensor(
            [time.perf_counter() - epoch_started], dtype=torch.float64, device=device
        )
        gathered = strategy.all_gather(torch.cat([epoch_stats, wall]))
        elapsed = float(gathered[:, -1].max())  # an epoch lasts as long as its slowest rank
        gathered = gathered[:, :-1]
        totals = gathered.sum(0)
        pos.train_time += elapsed
        metrics: dict[str, float] = {"epoch": epoch}
        metrics.update(meter.summarize("train", totals))
        if len(val_idx):
            metrics.update(validate())
        metrics["lr"] = float(scheduler.get_last_lr()[0])
        if settings.max_grad_norm is not None:
            metrics["clipped_fraction"] = float(totals[CLIPPED]) / max(float(totals[STEPS]), 1)
        metrics["samples_per_second"] = float(totals[COUNT]) / elapsed
        pos.history.append(metrics)
        tracker.record(
            {
                "type": "epoch",
                "step": pos.step,
                **metrics,
                "epoch_time_s": elapsed,
                **per_worker(gathered),
            }
        )
        job_log.info(
            "epoch %d/%d: %s",
            epoch,
            settings.epochs,
            _fmt({k: v for k, v in metrics.items() if k != "epoch"}),
        )
        pos.epoch, pos.step_in_epoch = epoch + 1, 0
        epoch_stats = meter.zeros()
        checkpointer.save(strategy, stateful, pos, epoch_stats)
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
        model_state_bytes(wrapped, optimizer),  # gradients of the last step still held
    )


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _non_finite(
    strategy: Strategy,
    stats: torch.Tensor,
    pos: LoopPosition,
    epoch: int,
    settings: TrainingSettings,
    checkpointer: Checkpointer,
    job_log: JobLog,
) -> None:
    """Every rank saw non-finite gradients at this step: find which ranks' losses caused it
    (a collective every rank reaches), then fail or count the step as skipped."""
    local_bad = float(not torch.isfinite(stats[0]))
    bad = strategy.all_gather(torch.tensor([local_bad], device=strategy.device))
    ranks = [r for r in range(strategy.world_size) if bad[r, 0] > 0] or "unknown"
    where = f"step {pos.step} (epoch {epoch}) on rank(s) {ranks}"
    if not settings.skip_nonfinite_steps:
        raise NonFiniteLossError(
            f"non-finite loss at {where}; the last good checkpoint is intact: "
            f"{checkpointer.last or 'none written yet'}; pass skip_nonfinite_steps=True to skip "
            "such steps"
        )
    job_log.warning("skipping %s: non-finite loss", where)
    pos.skipped_steps += 1


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
        return torch.stack([torch.as_tensor(r["epoch_stats"]) for r in ranks]).sum(0)
    return torch.zeros_like(torch.as_tensor(ranks[0]["epoch_stats"]))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    reader: BatchReader,
    val_idx: torch.Tensor,
    task: Task,
    batch_size: int,
    strategy: Strategy,
    loss_sum: LossSum,
    meter: Meter,
    autocast: AutocastFactory,
) -> dict[str, float]:
    """Loss, accuracy and user metrics over the whole validation set, each sample seen exactly
    once across ranks (contiguous shares, no padding); sums and counts are reduced, not means.

    Every rank runs the same number of forward passes (a shorter share ends with an empty
    batch): a sharded model all-gathers its weights inside each forward, with every rank."""
    model.eval()
    device = strategy.device
    totals = meter.zeros()
    share = rank_share(val_idx, strategy.rank, strategy.world_size)
    longest = -(-len(val_idx) // strategy.world_size)  # the first share is the longest
    for start in range(0, longest, batch_size):
        chunk = share[start : start + batch_size]
        x, y = reader.batch(chunk)
        x, y = x.to(device, non_blocking=True), _targets(y.to(device, non_blocking=True), task)
        with autocast():
            out = model(x)
        if len(chunk):  # user metrics need not handle empty batches
            totals += meter.batch(loss_sum(out, y), out, y)
    strategy.all_reduce(totals, dist.ReduceOp.SUM)
    model.train()
    return meter.summarize("val", totals)
