"""Validation: loss, accuracy and user metrics over the whole validation set."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .context import RankContext, RankData
from .metrics import Meter
from .optim import LossSum, as_targets
from .sharding import rank_share


@torch.no_grad()
def evaluate(
    model: nn.Module, data: RankData, ctx: RankContext, *, loss_sum: LossSum, meter: Meter
) -> dict[str, float]:
    """Every validation sample seen exactly once across ranks (contiguous shares, no padding);
    sums and counts are reduced, not means. Collective: call on every rank.

    Every rank runs the same number of forward passes (a shorter share ends with an empty
    batch): a sharded model all-gathers its weights inside each forward, with every rank."""
    model.eval()
    strategy, batch_size = ctx.strategy, ctx.settings.batch_size
    totals = meter.zeros()
    share = rank_share(data.val_idx, strategy.rank, strategy.world_size)
    longest = -(-len(data.val_idx) // strategy.world_size)  # the first share is the longest
    for start in range(0, longest, batch_size):
        chunk = share[start : start + batch_size]
        x, y = data.val_reader.batch(chunk)
        x = x.to(ctx.device, non_blocking=True)
        y = as_targets(y.to(ctx.device, non_blocking=True), data.task)
        with ctx.autocast():
            out = model(x)
        if len(chunk):  # user metrics need not handle empty batches
            totals += meter.batch(loss_sum(out, y), out, y)
    strategy.all_reduce(totals, dist.ReduceOp.SUM)
    model.train()
    return meter.summarize("val", totals)
