"""One optimizer step, the loop's replaceable part: forward and backward over micro-batches,
then the update (non-finite check, clipping, loss scaling, optimizer, scheduler).

The loop calls :meth:`TrainStep.forward_backward` with this rank's share of a global batch and
then :meth:`TrainStep.apply_gradients`; anything with those two methods can stand in for it.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Protocol

import torch
from torch import nn

from .context import RankContext, RankData
from .metrics import CLIPPED, Meter
from .optim import LossSum, as_targets
from .resume import LoopPosition
from .sharding import loss_scale


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss, detected at the same step on every rank."""


class Step(Protocol):
    """What the loop needs of a step."""

    def forward_backward(self, indices: torch.Tensor, global_count: int, step: int) -> torch.Tensor:
        """Gradients of this rank's share ``indices`` of a global batch of ``global_count``
        samples, at global step ``step`` (1-based); returns the share's stat vector."""
        ...

    def apply_gradients(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> bool:
        """Update the weights from the gradients; False when the step was skipped (on every
        rank together)."""
        ...


class TrainStep:
    """The built-in step: ``loss_sum(model(x), y)`` scaled to the global-batch mean."""

    def __init__(
        self,
        *,
        ctx: RankContext,
        data: RankData,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        loss_sum: LossSum,
        meter: Meter,
    ) -> None:
        self.ctx, self.data, self.model = ctx, data, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.loss_sum, self.meter = loss_sum, meter
        self.settled = False  # see Strategy.settle: once per attempt, before the first step

    def forward_backward(self, indices: torch.Tensor, global_count: int, step: int) -> torch.Tensor:
        """This rank's share in ``gradient_accumulation_steps`` micro-batches; gradients are
        synchronized on the last micro-batch only."""
        ctx, device, task = self.ctx, self.ctx.device, self.data.task
        # Scaled so the strategy's gradient average is the mean over the whole global batch.
        scale = loss_scale(global_count, ctx.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.meter.zeros()
        micro_batches = indices.tensor_split(ctx.settings.gradient_accumulation_steps)
        for i, micro in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            x, y = self.data.reader.batch(micro)
            x = x.to(device, non_blocking=True)
            y = as_targets(y.to(device, non_blocking=True), task)
            if not self.settled:  # a throw-away pass on this very batch: no extra data read
                ctx.strategy.settle(self.model, partial(self._forward_backward, x, y))
                self.settled = True
            with contextlib.nullcontext() if last else ctx.strategy.no_sync(self.model):
                with ctx.autocast():
                    out = self.model(x)
                local_sum = ctx.faults.loss(step, self.loss_sum(out, y))
                self.scaler.scale(local_sum * scale).backward()
            stats += self.meter.batch(local_sum, out, y)
        return stats

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.ctx.autocast():
            out = self.model(x)
        self.loss_sum(out, y).backward()

    def apply_gradients(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> bool:
        ctx, settings = self.ctx, self.ctx.settings
        # With fp16 loss scaling the scaler finds non-finite gradients (and skips) itself.
        if not self.scaler.is_enabled() and not ctx.strategy.gradients_finite(self.model):
            self._non_finite(stats, pos, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            return False
        if settings.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = ctx.strategy.clip_grad_norm(self.model, settings.max_grad_norm)
            stats[CLIPPED] = float(norm > settings.max_grad_norm)
        self.scaler.step(self.optimizer)  # a disabled scaler just steps the optimizer
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
        if not self.ctx.settings.skip_nonfinite_steps:
            raise NonFiniteLossError(
                f"non-finite loss at {where}; the last good checkpoint is intact: "
                f"{self.ctx.checkpointer.last or 'none written yet'}; pass "
                "skip_nonfinite_steps=True to skip such steps"
            )
        self.ctx.job_log.warning("skipping %s: non-finite loss", where)
        pos.skipped_steps += 1
