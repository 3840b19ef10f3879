"""The training loop of one rank: plain PyTorch, readable top to bottom.

It behaves the same under our launcher, under torchrun and in a single process: everything
distributed goes through the :class:`~.strategies.Strategy` in the :class:`~.context.RankContext`,
and every rank runs every collective (reductions and checkpoints are unconditional; writing goes
through a tracker and a checkpointer that only write on global rank 0). The step itself is a
replaceable part (:mod:`.step`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..config.sections import LoopSection
from ..data.loading import Micro, read, sample_seed
from .callbacks import CallbackRunner
from .context import RankContext, RankData
from .initial import load_initial_weights
from .metrics import BUSY, CLIPPED, COUNT, ITEMS, LOSS, STEPS, peak_memory_bytes, per_worker
from .parts import LoopParts, build_parts
from .resume import Checkpointer, LoopPosition, Stateful, restore
from .sharding import epoch_order, global_batch, num_steps, rank_share
from .step import MakeStep, StepRunner
from .strategies import model_state_bytes
from .streamfeed import StreamFeed, stream_state


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


def train(
    model: nn.Module,
    data: RankData,
    ctx: RankContext,
    resume: dict[str, Any] | None = None,
    *,
    make_step: MakeStep = StepRunner,
) -> LoopResult:
    """Train ``model`` for ``ctx.loop.epochs`` epochs, from the checkpoint ``resume`` if given,
    validating on ``data``'s validation positions. Collective: call on every rank.

    ``make_step``: builds the loop's step from keyword arguments ``ctx`` (the
    :class:`~.step.StepContext`) and ``step_fn`` (the library's step or your ``train_step``);
    default :class:`~.step.StepRunner`."""
    parts = build_parts(
        model, data, ctx, planned_steps(ctx.loop, training_samples(data)), make_step
    )
    loop = Loop(ctx=ctx, data=data, parts=parts)
    if resume is not None:
        loop.restore(resume)
    elif ctx.init_from is not None:
        load_initial_weights(parts.model, Path(ctx.init_from))
    return loop.run()


def planned_steps(loop: LoopSection, n_train: int) -> int:
    """Optimizer steps the job will take: every epoch's, or ``max_steps`` if fewer (or if the
    data's length is unknown, ``n_train`` 0: a stream); 0 when unknown (a stream of unknown
    length without ``max_steps``: each epoch ends where the stream does)."""
    total = num_steps(n_train, loop.batch_size, loop.drop_last) * loop.epochs
    if loop.max_steps is not None:
        return min(total, loop.max_steps) if total else loop.max_steps
    return total


def training_samples(data: RankData) -> int:
    """Training samples per epoch: the training positions, or a stream's length (0: unknown)."""
    return data.stream.length if data.stream is not None else len(data.train_idx)


class Loop:
    """The epoch loop over a :class:`~.step.Step`, with its periodic work: step records,
    mid-epoch evaluation and checkpoints, epoch metrics, callbacks and early stopping."""

    def __init__(self, *, ctx: RankContext, data: RankData, parts: LoopParts) -> None:
        self.ctx, self.data, self.step, self.validate = ctx, data, parts.step, parts.validate
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        self.meter = parts.meter
        self.pos = LoopPosition()
        self.epoch_stats = self.meter.zeros()  # this rank's sums of the epoch so far
        #: What a checkpoint holds (the loop's position too), by name.
        self.stateful: dict[str, Stateful] = {
            "model": ctx.strategy.unwrap(parts.model),
            "optimizer": parts.optimizer,
            "scheduler": parts.scheduler,
            **({"scaler": parts.scaler} if parts.scaler.is_enabled() else {}),
            "loop": self.pos,
        }
        loop = ctx.loop
        n_train = training_samples(data)
        #: Steps per epoch (a stream of unknown length: 0, its end is found by reading it).
        self.steps_per_epoch = num_steps(n_train, loop.batch_size, loop.drop_last)
        self.feed = StreamFeed(data.stream, ctx) if data.stream is not None else None
        #: Training samples per epoch: all of them, or the full global batches' (drop_last).
        self.epoch_samples = min(n_train, self.steps_per_epoch * loop.batch_size)
        self.hooks = CallbackRunner(list(ctx.loop.callbacks), ctx.rank, ctx.world_size)
        self.window = self.meter.zeros()  # stats since the last step record
        self.window_alone = 0.0  # seconds of those steps before each first synced (see below)
        self.window_started = self.epoch_started = time.perf_counter()

    def restore(self, resume: dict[str, Any]) -> None:
        """Continue from checkpoint ``resume``: weights, optimizer, position, RNG, sums."""
        ctx = self.ctx
        self.epoch_stats = restore(resume, ctx.strategy, self.stateful, ctx.loop.seed)
        self.epoch_stats = self.meter.upgrade(self.epoch_stats).to(ctx.device)
        if self.feed is not None and self.pos.step_in_epoch:  # mid-epoch: where it stood
            self.feed.resume_state = stream_state(resume, ctx.rank, ctx.world_size)
        if resume["loop"]["samples"] is None:  # a checkpoint from before the count was kept
            batch = ctx.loop.batch_size
            self.pos.samples = self.epoch_samples * (self.pos.epoch - 1)
            self.pos.samples += min(self.pos.step_in_epoch * batch, self.epoch_samples)
        ctx.job_log.info("resuming at epoch %d, step %d", self.pos.epoch, self.pos.step)

    def run(self) -> LoopResult:
        """Train the remaining epochs (collective: every rank)."""
        ctx, pos, epochs = self.ctx, self.pos, self.ctx.loop.epochs
        plan = {"epoch": pos.epoch, "step": pos.step, "samples": pos.samples, "epochs": epochs}
        plan["total_steps"] = planned_steps(ctx.loop, training_samples(self.data))
        plan.update(steps_per_epoch=self.steps_per_epoch, world_size=ctx.world_size)
        ctx.tracker.start(plan)
        self.hooks("on_train_start", pos.epoch, pos.step, {})
        stopped_early = False
        for epoch in range(pos.epoch, epochs + 1):
            self.train_epoch(epoch)
            if self.end_epoch(epoch) and epoch < epochs:
                ctx.job_log.info("stopping early after epoch %d (a callback asked)", epoch)
                stopped_early = True
                break
            if self.out_of_steps():
                ctx.job_log.info("stopping after step %d (max_steps)", pos.step)
                break
        self.hooks("on_train_end", len(pos.history), pos.step, dict(pos.history[-1]))
        return LoopResult(
            history=pos.history,
            steps=pos.step,
            samples_seen=pos.samples,
            train_time_s=pos.train_time,
            stopped_early=stopped_early,
            skipped_steps=pos.skipped_steps,
            # This rank's state at the end, the last step's gradients still held.
            model_state_bytes=model_state_bytes(self.model, self.optimizer),
        )

    def train_epoch(self, epoch: int) -> None:
        """The epoch's remaining global batches, each rank taking its share of each, read as
        ``gradient_accumulation_steps`` micro-batches (prefetched where the reader can)."""
        ctx, pos = self.ctx, self.pos
        self.model.train()
        self.window, self.window_alone = self.meter.zeros(), 0.0
        self.epoch_started = self.window_started = time.perf_counter()
        batches = self.streamed() if self.feed is not None else self.indexed(epoch)
        while not self.out_of_steps():  # max_steps: the epoch ends early, its metrics cover it
            started = time.perf_counter()
            share, global_count = next(batches, ([], 0))
            if not share:
                break  # the end of the epoch (a stream's: on every rank together)
            ctx.faults.before_step(pos.step + 1)
            stats = self.step.forward_backward(share, global_count, pos.step + 1)
            pos.step, pos.step_in_epoch = pos.step + 1, pos.step_in_epoch + 1
            pos.samples += global_count
            ctx.tracker.step(epoch, pos.step_in_epoch)
            if not self.step.apply_gradients(stats, pos, epoch):
                continue  # a non-finite step, skipped on every rank together
            if not ctx.data.counts:  # a tensor-parallel peer's: its group's first rank counts
                stats.zero_()
            stats[BUSY], stats[STEPS] = time.perf_counter() - started, 1
            self.window += stats
            self.window_alone += self._alone(started)
            self.epoch_stats += stats
            self.after_step(epoch, stats)

    def indexed(self, epoch: int) -> Iterator[tuple[list[Micro], int]]:
        """The epoch's remaining global batches of indexed data: this rank's micro-batches of
        each (read ahead in order) and the global batch's size."""
        ctx, loop = self.ctx, self.ctx.loop
        order = epoch_order(len(self.data.train_idx), loop.seed, epoch - 1)
        steps = range(self.pos.step_in_epoch, self.steps_per_epoch)
        batches = [global_batch(order, s, loop.batch_size) for s in steps]
        accumulation = loop.gradient_accumulation_steps
        plan = [
            micro
            for batch in batches
            for micro in self.data.train_idx[
                rank_share(batch, ctx.data.rank, ctx.data.world_size)
            ].tensor_split(accumulation)
        ]
        micros = read(self.data.reader, plan, sample_seed(loop.seed, epoch))
        for batch in batches:
            yield list(itertools.islice(micros, accumulation)), len(batch)

    def streamed(self) -> Iterator[tuple[list[Micro], int]]:
        """A stream's next global batches, from where this epoch stands."""
        assert self.feed is not None
        yield from self.feed.steps(skip=self.pos.step_in_epoch)

    def after_step(self, epoch: int, stats: torch.Tensor) -> None:
        """Per-step callbacks, then (mid-epoch only) step records, evaluation, checkpoints."""
        ctx, pos, loop = self.ctx, self.pos, self.ctx.loop
        if self.hooks.wants_step_metrics:
            summed = ctx.strategy.all_reduce(stats[[LOSS, ITEMS]].clone(), dist.ReduceOp.SUM)
            loss = {"train_loss": float(summed[0]) / max(float(summed[1]), 1.0)}
            self.hooks("on_step_end", epoch, pos.step, loss)
        if pos.step_in_epoch == self.steps_per_epoch or self.out_of_steps():
            return  # the end of the epoch does all of it
        if pos.step % loop.log_every_steps == 0:
            self.record_window(epoch)
        if loop.eval_every and pos.step % loop.eval_every == 0 and self.validates:
            assert self.validate is not None
            evaluation = self.validate()
            ctx.tracker.record({"type": "eval", "epoch": epoch, "step": pos.step, **evaluation})
            ctx.job_log.info("step %d: %s", pos.step, _fmt(evaluation))
        if ctx.checkpointer.due(pos.step):
            self.save()

    def _alone(self, started: float) -> float:
        """Seconds this step ran before the rank first waited on the others (its step's first
        all-reduce or backward): reading its share, and its forward pass unless the step
        synchronizes before it. The step time includes waiting for the slowest rank, the same
        on every rank; this does not, so a straggler stands out."""
        synced = getattr(getattr(self.step, "ctx", None), "synced_at", None)
        return (synced if synced is not None else time.perf_counter()) - started

    def record_window(self, epoch: int) -> None:
        """A step record of the steps since the last one, aggregated over ranks."""
        steps = max(float(self.window[STEPS]), 1.0)
        gathered, extra = self._gather(self.window, self.window_alone / steps)
        now = time.perf_counter()
        self.ctx.tracker.record(
            {
                "type": "step",
                "epoch": epoch,
                "step": self.pos.step,
                "samples": self.pos.samples,  # training samples so far, all ranks together
                **self.meter.summarize("train", gathered.sum(0)),
                "lr": self._lr(),
                "samples_per_second": float(gathered[:, COUNT].sum()) / (now - self.window_started),
                **per_worker(gathered, extra[:, -1]),
                "worker_alone_s": extra[:, 0].tolist(),
            }
        )
        self.window.zero_()
        self.window_alone = 0.0
        self.window_started = now

    def _gather(self, stats: torch.Tensor, *extra: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's ``stats`` and ``extra`` values, then its peak memory so far, in one
        all-gather (one row per rank each): the page and the report show per-rank figures
        from the records."""
        peak = peak_memory_bytes(self.ctx.device)
        values = torch.tensor([*extra, peak], dtype=stats.dtype).to(stats.device)
        gathered = self.ctx.strategy.all_gather(torch.cat([stats, values]))
        return gathered[:, : len(stats)], gathered[:, len(stats) :]

    def end_epoch(self, epoch: int) -> bool:
        """Epoch metrics (reduced over ranks), validation, a checkpoint and the epoch's hooks;
        returns whether any rank's callback asked to stop (the same answer on every rank)."""
        ctx, pos = self.ctx, self.pos
        elapsed = torch.tensor(
            [time.perf_counter() - self.epoch_started], dtype=torch.float64, device=ctx.device
        )
        gathered, extra = self._gather(torch.cat([self.epoch_stats, elapsed]))
        peaks = extra[:, -1]
        seconds = float(gathered[:, -1].max())  # an epoch lasts as long as its slowest rank
        gathered = gathered[:, :-1]
        pos.train_time += seconds
        metrics = self.epoch_metrics(epoch, gathered.sum(0), seconds)
        pos.history.append(metrics)
        record = {"type": "epoch", "step": pos.step, "samples": pos.samples, **metrics}
        record["epoch_time_s"] = seconds
        ctx.tracker.record({**record, **per_worker(gathered, peaks)})
        shown = _fmt({k: v for k, v in metrics.items() if k != "epoch"})
        ctx.job_log.info("epoch %d/%d: %s", epoch, ctx.loop.epochs, shown)
        pos.epoch, pos.step_in_epoch = epoch + 1, 0
        self.epoch_stats = self.meter.zeros()
        self.save()
        asked = self.hooks("on_epoch_end", epoch, pos.step, dict(metrics))
        stop = torch.tensor([float(asked)], device=ctx.device)
        return bool(ctx.strategy.all_reduce(stop, dist.ReduceOp.MAX).item())

    def epoch_metrics(self, epoch: int, totals: torch.Tensor, seconds: float) -> dict[str, float]:
        """The epoch's training metrics from the summed stat vectors, plus validation."""
        metrics: dict[str, float] = {"epoch": epoch}
        metrics.update(self.meter.summarize("train", totals))
        if self.validates:
            assert self.validate is not None
            metrics.update(self.validate())
        metrics["lr"] = self._lr()
        if self.ctx.optim.max_grad_norm is not None:
            metrics["clipped_fraction"] = float(totals[CLIPPED]) / max(float(totals[STEPS]), 1)
        metrics["samples_per_second"] = float(totals[COUNT]) / seconds
        return metrics

    @property
    def validates(self) -> bool:
        return self.validate is not None and len(self.data.val_idx) > 0

    def out_of_steps(self) -> bool:
        """Whether ``max_steps`` optimizer steps are done."""
        limit = self.ctx.loop.max_steps
        return limit is not None and self.pos.step >= limit

    def _lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self) -> None:
        """A checkpoint of everything stateful at the current position (collective)."""
        checkpointer: Checkpointer = self.ctx.checkpointer
        stream = {"stream": self.feed.state_dict()} if self.feed is not None else {}
        checkpointer.save(
            self.ctx.strategy,
            self.stateful,
            step=self.pos.step,
            epoch_stats=self.epoch_stats,
            rank_state=stream,
        )


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
