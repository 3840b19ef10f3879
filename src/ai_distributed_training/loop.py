"""The training loop of one rank: plain PyTorch, readable top to bottom.

It behaves the same under our launcher, under torchrun and in a single process: everything
distributed goes through the :class:`~.strategies.Strategy` object, and every rank runs every
collective (reductions are unconditional; writing goes through a :class:`~.tracking.Tracker` that
does nothing off global rank 0).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .callbacks import Callback, CallbackContext, wants_step_metrics
from .config import TrainingSettings
from .data import BatchReader, Task
from .sharding import epoch_order, global_batch, loss_scale, num_steps, rank_share
from .strategies import Strategy
from .tracking import JobLog, Tracker

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
) -> LoopResult:
    """Train ``model`` for ``settings.epochs`` epochs; collective: call on every rank."""
    rank, world_size, device = strategy.rank, strategy.world_size, strategy.device
    train_idx, val_idx = split
    batch_size = settings.batch_size
    steps_per_epoch = num_steps(len(train_idx), batch_size)
    wrapped = strategy.wrap(model.to(device))
    optimizer = build_optimizer(settings, wrapped)
    loss_sum = loss_sum_fn(task, settings.loss_fn)
    callbacks: list[Callback] = list(settings.callbacks)
    reduce_each_step = wants_step_metrics(callbacks)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    def hooks(name: str, epoch: int, step: int, metrics: dict[str, float]) -> bool:
        ctx = CallbackContext(rank, world_size, epoch, step, metrics)
        for cb in callbacks:
            getattr(cb, name)(ctx)
        return ctx.stop_requested

    history: list[dict[str, float]] = []
    train_time, step, stopped_early = 0.0, 0, False
    tracker.start(steps_per_epoch * settings.epochs, steps_per_epoch, settings.epochs)
    hooks("on_train_start", 1, 0, {})
    for epoch in range(1, settings.epochs + 1):
        wrapped.train()
        order = epoch_order(len(train_idx), settings.seed, epoch - 1)
        epoch_stats = torch.zeros(5, dtype=torch.float64, device=device)
        window = torch.zeros(5, dtype=torch.float64, device=device)
        epoch_started = window_started = time.perf_counter()
        for step_in_epoch in range(steps_per_epoch):
            step_started = time.perf_counter()
            batch = global_batch(order, step_in_epoch, batch_size)
            x, y = reader.batch(train_idx[rank_share(batch, rank, world_size)])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                out = wrapped(x)
            local_sum = loss_sum(out, y)
            # Scale so DDP's gradient average equals the mean over the whole global batch.
            loss = local_sum * loss_scale(len(batch), world_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

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
                hooks("on_step_end", epoch, step, {"train_loss": float(step_loss) / len(batch)})
            if step % settings.log_every_steps == 0 and step_in_epoch + 1 < steps_per_epoch:
                per_worker = strategy.all_gather(window)
                now = time.perf_counter()
                tracker.record(_step_record(per_worker, task, epoch, step, now - window_started))
                window.zero_()
                window_started = now

        wall = torch.tensor(
            [time.perf_counter() - epoch_started], dtype=torch.float64, device=device
        )
        gathered = strategy.all_gather(torch.cat([epoch_stats, wall]))
        per_worker = gathered[:, :5]
        elapsed = float(gathered[:, 5].max())  # an epoch lasts as long as its slowest rank
        train_time += elapsed
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
        metrics["samples_per_second"] = len(train_idx) / elapsed
        history.append(metrics)
        tracker.record(
            {
                "type": "epoch",
                "step": step,
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
        stop = torch.tensor(
            [float(hooks("on_epoch_end", epoch, step, dict(metrics)))], device=device
        )
        if strategy.all_reduce(stop, dist.ReduceOp.MAX).item() and epoch < settings.epochs:
            job_log.info("stopping early after epoch %d (a callback asked)", epoch)
            stopped_early = True
            break
    hooks("on_train_end", len(history), step, dict(history[-1]))
    return LoopResult(history, step, len(train_idx) * len(history), train_time, stopped_early)


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
