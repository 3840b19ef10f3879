"""The loop's steps over a stream (see :mod:`..data.streams`): each step, every rank's share of
one global batch, and the global batch's size every rank agrees on."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from ..data.loading import Micro
from ..data.streams import StreamReader
from .context import RankContext
from .sharding import shard_bounds

log = logging.getLogger(__name__)


class StreamFeed:
    """Steps of a stream for one rank; its position goes into checkpoints (per rank)."""

    def __init__(self, reader: StreamReader, ctx: RankContext) -> None:
        self.reader, self.ctx = reader, ctx
        reader.open_for(ctx.data.rank, ctx.data.world_size)
        self.resume_state: Any = None  # from a checkpoint: where this rank's stream stood

    def steps(self, skip: int) -> Iterator[tuple[list[Micro], int]]:
        """This epoch's steps: this rank's micro-batches and the global batch's size, until the
        stream ends on every rank. ``skip``: global batches already trained this epoch, read
        and dropped (a stream without a state to resume from)."""
        state, self.resume_state = self.resume_state, None
        self.reader.start(state)
        for _ in range(0 if state is not None else skip):
            if self._next()[1] == 0:
                return
        while True:
            micros, global_count = self._next()
            if global_count == 0:
                return
            yield micros, global_count

    def _next(self) -> tuple[list[Micro], int]:
        """One global batch: this rank's samples of it, and how many all ranks got together."""
        ctx, batch_size = self.ctx, self.ctx.loop.batch_size
        if self.reader.sharded:  # each rank reads its share from its own shard
            start, stop = shard_bounds(batch_size, ctx.data.rank, ctx.data.world_size)
            items = self.reader.take(stop - start)
            got = torch.tensor([float(len(items)) * ctx.data.counts], device=ctx.device)
            global_count = int(ctx.strategy.all_reduce(got, dist.ReduceOp.SUM).item())
        else:  # every rank reads the global batch and keeps its slice
            whole = self.reader.take(batch_size)
            global_count = len(whole)
            start, stop = shard_bounds(global_count, ctx.data.rank, ctx.data.world_size)
            items = whole[start:stop]
        parts = _split(items, ctx.loop.gradient_accumulation_steps)
        micros = [
            Micro(self.reader.collated(part), len(part))
            if part
            else Micro(self.reader.collated([self.reader.stand_in_sample()]), 0)
            for part in parts
        ]
        return micros, global_count

    def state_dict(self) -> Any:
        return self.reader.state_dict()


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous pieces whose sizes differ by at most one."""
    bounds = [shard_bounds(len(items), i, parts) for i in range(parts)]
    return [items[a:b] for a, b in bounds]


def stream_state(resume: Mapping[str, Any], rank: int, world_size: int) -> Any:
    """This rank's stream position in checkpoint ``resume`` (None: none was saved, and the
    stream is re-read and the epoch's trained global batches skipped). A sharded stream's
    positions belong to its number of ranks: another number re-reads (with a warning)."""
    ranks = resume["ranks"]
    if len(ranks) == world_size:
        return ranks[rank].get("stream")
    if ranks[0].get("stream") is not None and rank == 0:
        log.warning(
            "the checkpoint's stream positions are for %d ranks, this job has %d: the stream "
            "is read again from its beginning and the epoch's trained global batches skipped",
            len(ranks),
            world_size,
        )
    return None
