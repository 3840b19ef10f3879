"""Validation: loss, accuracy and user metrics over the whole validation set."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..data.loading import read, sample_seed
from ..data.structure import to_device
from .context import RankContext, RankData
from .metrics import Meter
from .objective import Objective
from .sharding import rank_share


@torch.no_grad()
def evaluate(
    model: nn.Module, data: RankData, ctx: RankContext, *, objective: Objective, meter: Meter
) -> dict[str, float]:
    """Every validation sample seen exactly once across ranks (contiguous shares, no padding);
    sums and counts are reduced, not means. Collective: call on every rank.

    Every rank runs the same number of forward passes (a shorter share ends with a stand-in
    batch, not counted): a sharded model all-gathers its weights inside each forward, with
    every rank."""
    model.eval()
    strategy, batch_size = ctx.strategy, ctx.loop.batch_size
    totals = meter.zeros()
    share = rank_share(data.val_idx, strategy.data.rank, strategy.data.world_size)
    longest = -(-len(data.val_idx) // strategy.data.world_size)  # the first is the longest
    plan = [share[start : start + batch_size] for start in range(0, longest, batch_size)]
    for micro in read(data.val_reader, plan, sample_seed(ctx.loop.seed, 0)):
        batch = to_device(micro.batch, ctx.device)
        count = objective.count(batch)
        num_items = 1.0 if count is not None else None  # a model's own loss then is its sum
        with ctx.autocast():
            out = objective.call(model, batch, num_items)
        if micro.samples:  # user metrics need not handle stand-ins
            local_sum, got = objective.loss(out, batch, count, num_items)
            items = got if got is not None else micro.samples
            scored, args = objective.scored(out, batch), objective.metric_args(out, batch)
            totals += meter.batch(local_sum, items, micro.samples, scored, args)
    if not strategy.data.counts:  # a tensor-parallel peer: its group's first rank counts
        totals.zero_()
    strategy.all_reduce(totals, dist.ReduceOp.SUM)
    model.train()
    return meter.summarize("val", totals)
