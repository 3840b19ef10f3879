"""The library's own step function: the :class:`~.objective.Objective`'s loss over this rank's
micro-batches, weighted for the global batch, then the update, through the same
:class:`~.step.StepContext` machinery as your ``train_step``.

Each rank's loss SUM is weighted so that the strategy's average of gradients is the gradient of
the mean over the whole global batch: over its samples, or over its counted items (valid tokens)
when the loss is a mean over those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ..data.loading import Micro
from ..data.structure import to_device
from .metrics import Meter
from .objective import Objective
from .sharding import loss_scale
from .step import StepContext

#: The one model of the built-in step, by its name in ``ctx.models``.
MODEL = "model"


class BuiltinStep:
    """``step_fn(ctx, micros)`` of the built-in objective; gradients are synchronized on the
    last micro-batch only."""

    def __init__(self, *, objective: Objective, meter: Meter) -> None:
        self.objective, self.meter = objective, meter
        self.settled = False  # see Strategy.settle: once per attempt, before the first step

    def __call__(self, ctx: StepContext, micros: Sequence[Micro]) -> torch.Tensor:
        """Counted items are summed over every micro-batch of every rank first (one scalar
        all-reduce), so each rank weighs its sum by the global count. A ``loss_fn`` that
        returns ``(sum, count)`` tells its count only after the forward pass: its gradients are
        divided by the global count after the backward passes instead."""
        model = ctx.models[MODEL]
        batches = [to_device(micro.batch, ctx.device) for micro in micros]
        counts = self._counts(micros, batches)
        total = self._global(ctx, torch.stack(counts).sum()) if counts is not None else None
        weight = loss_scale(
            float(total) if total is not None else ctx.global_samples, ctx.data.world_size
        )
        num_items = self.objective.num_items(total, ctx.data.world_size)
        stats, returned = self.meter.zeros(), []
        for i, (micro, batch) in enumerate(zip(micros, batches, strict=True)):
            count = counts[i] if counts is not None else None
            if not self.settled:  # a throw-away pass on this very batch: no extra data read
                settle = partial(self._throwaway, ctx, batch, count, num_items)
                ctx.rank_ctx.strategy.settle(model, settle)
                self.settled = True
            last = i == len(micros) - 1
            with contextlib.nullcontext() if last else ctx.no_sync(MODEL):
                micro_stats, got = self._micro_batch(
                    ctx, batch, micro.samples, count, num_items, weight
                )
            stats += micro_stats
            returned += [got] if got is not None and counts is None else []
        if returned:
            _divide_gradients(model, self._global(ctx, torch.stack(returned).sum()))
        ctx.step(MODEL)
        return stats

    def _micro_batch(
        self,
        ctx: StepContext,
        batch: Any,
        samples: int,
        count: torch.Tensor | None,
        num_items: float | None,
        weight: float,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward of one micro-batch (``samples`` 0: a stand-in, weighted 0);
        returns its stats and the count its ``loss_fn`` returned, if it returned one."""
        objective = self.objective
        with ctx.autocast():
            out = objective.call(ctx.models[MODEL], batch, num_items)
        local_sum, got = objective.loss(out, batch, count, num_items)
        local_sum = ctx.rank_ctx.faults.loss(ctx.global_step, local_sum)
        if samples == 0:
            local_sum, got = local_sum * 0.0, None if got is None else got * 0.0
        if got is not None and count is None:  # divided by the global count afterwards
            weight = float(ctx.data.world_size)
        ctx.backward_sum(local_sum, weight)
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

    @staticmethod
    def _global(ctx: StepContext, local: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``local`` count (collective); a global count of 0 (nothing
        to average the loss over) is an error, the same on every rank."""
        total = ctx.all_reduce_sum(local)
        if float(total) <= 0:
            raise ValueError(
                f"the global batch of step {ctx.global_step} has {float(total):g} items to "
                "average the loss over (every target is -100, or count_fn / loss_fn counted "
                "none); check the labels, or drop such samples"
            )
        return total

    def _throwaway(
        self, ctx: StepContext, batch: Any, count: torch.Tensor | None, num_items: float | None
    ) -> None:
        with ctx.autocast():
            out = self.objective.call(ctx.models[MODEL], batch, num_items)
        self.objective.loss(out, batch, count, num_items)[0].backward()


def _divide_gradients(model: nn.Module, total: torch.Tensor) -> None:
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(total.to(p.grad.dtype))
