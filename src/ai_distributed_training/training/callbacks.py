"""Callbacks: the documented way to extend training without forking the loop.

Subclass :class:`Callback` and override any hook. Hooks run on EVERY rank, with the same reduced
metrics on every rank, so a decision taken from them is the same everywhere. Callbacks travel to
the workers by pickling (cloudpickle), so keep their state picklable; a callback object in a
worker is a copy, and changes to it do not come back to the caller.

To stop training, call ``ctx.request_stop()``; the loop then reduces the request across ranks, so
every rank stops at the same epoch even if only one asked (none stops alone and hangs the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class CallbackContext:
    """What a hook sees: where training is, and the latest metrics reduced across ranks."""

    rank: int
    world_size: int
    #: 1-based epoch being trained (or just finished, in ``on_epoch_end``).
    epoch: int
    #: Optimizer steps taken so far, all epochs together.
    step: int
    #: ``on_step_end``: this step's ``train_loss`` (global-batch mean); ``on_epoch_end``: the
    #: epoch's metrics (``train_loss``, ``val_loss``, accuracies, ...); ``on_train_end``: the last
    #: epoch's metrics.
    metrics: dict[str, float] = field(default_factory=dict)
    stop_requested: bool = False

    def request_stop(self) -> None:
        """Ask every rank to stop after the current epoch."""
        self.stop_requested = True


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_start(self, ctx: CallbackContext) -> None:
        """Once, before the first step."""

    def on_step_end(self, ctx: CallbackContext) -> None:
        """After every optimizer step. Overriding it costs one small all-reduce per step (to give
        every rank the global-batch loss)."""

    def on_epoch_end(self, ctx: CallbackContext) -> None:
        """After each epoch's training and validation."""

    def on_train_end(self, ctx: CallbackContext) -> None:
        """Once, after the last epoch."""


def wants_step_metrics(callbacks: list[Callback]) -> bool:
    """Whether any callback overrides ``on_step_end`` (only then is the step loss reduced)."""
    return any(type(cb).on_step_end is not Callback.on_step_end for cb in callbacks)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``mode="min"`` for losses, ``"max"`` for accuracies. The metric must exist in the epoch
    metrics (e.g. ``val_loss`` needs a validation split).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        mode: Literal["min", "max"] = "min",
        min_delta: float = 0.0,
    ) -> None:
        if patience < 1:
            raise ValueError(f"EarlyStopping patience={patience} must be >= 1")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode={mode!r} must be 'min' or 'max'")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, ctx: CallbackContext) -> None:
        if self.monitor not in ctx.metrics:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, which is not among the "
                f"epoch metrics {sorted(ctx.metrics)}"
            )
        value = ctx.metrics[self.monitor]
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = ctx.epoch
            ctx.request_stop()


class CallbackRunner:
    """Calls one hook on every callback, with the same context; says whether one asked to stop."""

    def __init__(self, callbacks: list[Callback], rank: int, world_size: int) -> None:
        self.callbacks, self.rank, self.world_size = callbacks, rank, world_size
        #: Whether any callback wants the step loss (which costs an all-reduce per step).
        self.wants_step_metrics = wants_step_metrics(callbacks)

    def __call__(self, hook: str, epoch: int, step: int, metrics: dict[str, float]) -> bool:
        ctx = CallbackContext(self.rank, self.world_size, epoch, step, metrics)
        for cb in self.callbacks:
            getattr(cb, hook)(ctx)
        return ctx.stop_requested
