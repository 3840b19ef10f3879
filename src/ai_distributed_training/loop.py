"""The training loop of one rank: plain PyTorch, readable top to bottom.

It behaves the same under our launcher, under torchrun and in a single process: everything
distributed goes through the :class:`~.strategies.Strategy` object, and every rank runs every
collective (metric reductions are unconditional, logging goes through a :class:`~.tracking.JobLog`
that is silent off global rank 0).
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

from .config import TrainingSettings
from .data import BatchReader, Task
from .sharding import epoch_order, global_batch, loss_scale, num_steps, rank_share
from .strategies import Strategy
from .tracking import JobLog

LossSum = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LoopResult:
    """What one rank's loop produced; identical on every rank (all values are reduced)."""

    history: list[dict[str, float]]
    steps: int
    samples_seen: int
    train_time_s: float


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

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    history: list[dict[str, float]] = []
    train_time = 0.0
    for epoch in range(settings.epochs):
        wrapped.train()
        order = epoch_order(len(train_idx), settings.seed, epoch)
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        started = time.perf_counter()
        for step in range(steps_per_epoch):
            batch = global_batch(order, step, batch_size)
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
            totals += torch.stack(
                [
                    local_sum.detach().double(),
                    _correct(out.detach(), y, task).double(),
                    torch.tensor(float(len(y)), device=device),
                ]
            )
        elapsed = torch.tensor([time.perf_counter() - started], device=device)
        strategy.all_reduce(totals, dist.ReduceOp.SUM)
        strategy.all_reduce(
            elapsed, dist.ReduceOp.MAX
        )  # an epoch lasts as long as its slowest rank
        train_time += float(elapsed)

        metrics: dict[str, float] = {"epoch": epoch + 1}
        metrics.update(_summarize("train", totals, task))
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
        metrics["samples_per_second"] = len(train_idx) / float(elapsed)
        history.append(metrics)
        job_log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            settings.epochs,
            ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"),
        )
    return LoopResult(
        history, steps_per_epoch * settings.epochs, len(train_idx) * settings.epochs, train_time
    )


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
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    local = rank_share(val_idx, strategy.rank, strategy.world_size)
    for chunk in local.split(settings.batch_size):
        x, y = reader.batch(chunk)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        totals += torch.stack(
            [
                loss_sum(out, y).double(),
                _correct(out, y, task).double(),
                torch.tensor(float(len(y)), device=device),
            ]
        )
    strategy.all_reduce(totals, dist.ReduceOp.SUM)
    model.train()
    return _summarize("val", totals, task)


def _summarize(prefix: str, totals: torch.Tensor, task: Task) -> dict[str, float]:
    loss, correct, count = totals.tolist()
    out = {f"{prefix}_loss": loss / count}
    if task == "classification":
        out[f"{prefix}_accuracy"] = correct / count
    return out
