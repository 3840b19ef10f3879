"""One optimizer step, the loop's replaceable part: forward and backward over micro-batches,
then the update (non-finite check, clipping, loss scaling, optimizer, scheduler).

The loop calls :meth:`TrainStep.forward_backward` with this rank's share of a global batch (its
micro-batches, read) and then :meth:`TrainStep.apply_gradients`; anything with those two methods
can stand in for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ..data.loading import Micro
from ..data.structure import to_device
from .context import RankContext, RankData
from .metrics import CLIPPED, Meter
from .objective import Objective
from .resume import LoopPosition
from .sharding import loss_scale


def clip_and_step(
    ctx: RankContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> bool:
    """Clip ``model``'s synchronized gradient norm to ``max_grad_norm`` (if set), then step
    ``optimizer`` through ``scaler`` (a disabled scaler just steps it); returns whether the
    norm was clipped. The non-finite check comes first, at the caller."""
    clipped = False
    if ctx.optim.max_grad_norm is not None:
        scaler.unscale_(optimizer)
        norm = ctx.strategy.clip_grad_norm(model, ctx.optim.max_grad_norm)
        clipped = norm > ctx.optim.max_grad_norm
    scaler.step(optimizer)
    return clipped


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss, detected at the same step on every rank."""


class Step(Protocol):
    """What the loop needs of a step."""

    def forward_backward(
        self, micros: Sequence[Micro], global_count: int, step: int
    ) -> torch.Tensor:
        """Gradients of this rank's share of a global batch of ``global_count`` samples, read
        as ``micros`` (its micro-batches), at global step ``step`` (1-based); returns the
        share's stat vector."""
        ...

    def apply_gradients(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> bool:
        """Update the weights from the gradients; False when the step was skipped (on every
        rank together)."""
        ...


class TrainStep:
    """The built-in step: the :class:`~.objective.Objective`'s loss, each rank's SUM weighted
    so that the strategy's average of gradients is the gradient of the mean over the whole
    global batch: over its samples, or over its counted items (valid tokens) when the loss is
    a mean over those."""

    def __init__(
        self,
        *,
        ctx: RankContext,
        data: RankData,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        objective: Objective,
        meter: Meter,
    ) -> None:
        self.ctx, self.data, self.model = ctx, data, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.objective, self.meter = objective, meter
        self.settled = False  # see Strategy.settle: once per attempt, before the first step

    def forward_backward(
        self, micros: Sequence[Micro], global_count: int, step: int
    ) -> torch.Tensor:
        """This rank's micro-batches; gradients are synchronized on the last one only.

        Counted items are summed over every micro-batch of every rank first (one scalar
        all-reduce), so each rank weighs its sum by the global count. A ``loss_fn`` that
        returns ``(sum, count)`` tells its count only after the forward pass: its gradients are
        divided by the global count after the backward passes instead."""
        ctx = self.ctx
        self.optimizer.zero_grad(set_to_none=True)
        batches = [to_device(micro.batch, ctx.device) for micro in micros]
        counts = self._counts(micros, batches)
        total = self._global(torch.stack(counts).sum(), step) if counts is not None else None
        weight = loss_scale(float(total) if total is not None else global_count, ctx.world_size)
        num_items = self.objective.num_items(total, ctx.world_size)
        stats, returned = self.meter.zeros(), []
        for i, (micro, batch) in enumerate(zip(micros, batches, strict=True)):
            count = counts[i] if counts is not None else None
            if not self.settled:  # a throw-away pass on this very batch: no extra data read
                settle = partial(self._throwaway, batch, count, num_items)
                ctx.strategy.settle(self.model, settle)
                self.settled = True
            last = i == len(micros) - 1
            with contextlib.nullcontext() if last else ctx.strategy.no_sync(self.model):
                micro_stats, got = self._micro_batch(
                    batch, micro.samples, count, num_items, weight, step
                )
            stats += micro_stats
            returned += [got] if got is not None and counts is None else []
        if returned:
            self._divide_gradients(self._global(torch.stack(returned).sum(), step))
        return stats

    def _micro_batch(
        self,
        batch: Any,
        samples: int,
        count: torch.Tensor | None,
        num_items: float | None,
        weight: float,
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward of one micro-batch (``samples`` 0: a stand-in, weighted 0);
        returns its stats and the count its ``loss_fn`` returned, if it returned one."""
        ctx, objective = self.ctx, self.objective
        with ctx.autocast():
            out = objective.call(self.model, batch, num_items)
        local_sum, got = objective.loss(out, batch, count, num_items)
        local_sum = ctx.faults.loss(step, local_sum)
        if samples == 0:
            local_sum, got = local_sum * 0.0, None if got is None else got * 0.0
        if got is not None and count is None:  # divided by the global count afterwards
            weight = float(ctx.world_size)
        self.scaler.scale(local_sum * weight).backward()
        items = got if got is not None else samples if count is None else count
        scored, metric_args = objective.scored(out, batch), objective.metric_args(out, batch)
        return self.meter.batch(local_sum, items, samples, scored, metric_args), got

    def _counts(self, micros: Sequence[Micro], batches: list[Any]) -> list[torch.Tensor] | None:
        """Each micro-batch's count known before the forward pass (0 for a stand-in), or
        None when the loss is a mean over samples."""
        counts = [self.objective.count(batch) for batch in batches]
        known = [c for c in counts if c is not None]
        if len(known) < len(counts):
            return None
        return [c * 0.0 if m.samples == 0 else c for c, m in zip(known, micros, strict=True)]

    def _global(self, local: torch.Tensor, step: int) -> torch.Tensor:
        """The sum of every rank's ``local`` count (collective); a global count of 0 (nothing
        to average the loss over) is an error, the same on every rank."""
        total = self.ctx.strategy.all_reduce(
            local.to(self.ctx.device).reshape(1), dist.ReduceOp.SUM
        )
        if float(total) <= 0:
            raise ValueError(
                f"the global batch of step {step} has {float(total):g} items to average the loss "
                "over (every target is -100, or count_fn / loss_fn counted none); check the "
                "labels, or drop such samples"
            )
        return total[0]

    def _divide_gradients(self, total: torch.Tensor) -> None:
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.div_(total.to(p.grad.dtype))

    def _throwaway(self, batch: Any, count: torch.Tensor | None, num_items: float | None) -> None:
        with self.ctx.autocast():
            out = self.objective.call(self.model, batch, num_items)
        self.objective.loss(out, batch, count, num_items)[0].backward()

    def apply_gradients(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> bool:
        ctx = self.ctx
        # With fp16 loss scaling the scaler finds non-finite gradients (and skips) itself.
        if not self.scaler.is_enabled() and not ctx.strategy.gradients_finite(self.model):
            self._non_finite(stats, pos, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            return False
        clipped = clip_and_step(ctx, self.model, self.optimizer, self.scaler)
        stats[CLIPPED] = float(clipped)
        self.scaler.update()
        self.scheduler.step()
        return True

    def _non_finite(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> None:
        """Every rank saw non-finite gradients at this step: find which ranks' losses caused
        it (a collective every rank reaches), then fail or count the step as skipped."""
        strategy = self.ctx.strategy
        local_bad = float(not torch.isfinite(stats[0]))
        bad = strategy.all_gather(torch.tensor([local_bad], device=strategy.device))
        ranks = [r for r in range(strategy.world_size) if bad[r, 0] > 0] or "unknown"
        where = f"step {pos.step} (epoch {epoch}) on rank(s) {ranks}"
        if not self.ctx.loop.skip_nonfinite_steps:
            raise NonFiniteLossError(
                f"non-finite loss at {where}; the last good checkpoint is intact: "
                f"{self.ctx.checkpointer.last or 'none written yet'}; pass "
                "skip_nonfinite_steps=True to skip such steps"
            )
        self.ctx.job_log.warning("skipping %s: non-finite loss", where)
        pos.skipped_steps += 1
