"""What the loop trains with, built once per attempt from the rank's sections: the models
wrapped by the strategy, an optimizer and a scheduler per model, the loss scaler, the meter, the
step (the library's own or your ``train_step``, through one :class:`~.step.StepContext`) and
validation. One builder for both kinds of step: they differ only in their step function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..models import Models
from .builtin_step import MODEL, BuiltinStep
from .context import RankContext, RankData
from .custom import OptimizerGroup, SchedulerGroup, UserStep, parts_of
from .evaluate import evaluate
from .metrics import Meter
from .objective import Objective
from .optim import build_optimizer, build_scheduler
from .step import MakeStep, Step, StepContext, StepFn, StepRunner


@dataclass(frozen=True, kw_only=True)
class LoopParts:
    """The loop's collaborators for one attempt (checkpointed: ``model``, ``optimizer``,
    ``scheduler``, ``scaler``)."""

    #: What the loop puts in train mode and checkpoints (the strategy unwraps it): the wrapped
    #: model of the built-in step, the unwrapped container of several models.
    model: nn.Module
    optimizer: torch.optim.Optimizer | OptimizerGroup
    scheduler: torch.optim.lr_scheduler.LRScheduler | SchedulerGroup
    scaler: torch.amp.GradScaler
    meter: Meter
    step: Step
    #: Validation metrics of the current weights; None: the step reports its own (train_step).
    validate: Callable[[], dict[str, float]] | None


def build_parts(
    model: nn.Module,
    data: RankData | None,
    ctx: RankContext,
    total_steps: int,
    make_step: MakeStep = StepRunner,
) -> LoopParts:
    """The parts of ``model`` (one, or a dict of models) for ``ctx``'s sections; ``make_step``
    builds the loop's step from ``ctx=`` (the step context) and ``step_fn=``. ``data``: what
    the built-in step validates on (None with a train_step: the dry run's)."""
    # fp16 needs loss scaling; bf16 and fp32 do not (a disabled scaler passes through).
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.compute_dtype == torch.float16)
    optim, strategy = ctx.optim, ctx.strategy
    models = {name: strategy.wrap(part) for name, part in parts_of(model).items()}
    choices = optim.optimizer if isinstance(optim.optimizer, dict) else {}
    optimizers = {
        name: build_optimizer(optim, m, choices.get(name, optim.optimizer))  # type: ignore[arg-type]
        for name, m in models.items()
    }
    factories = optim.scheduler if isinstance(optim.scheduler, dict) else {}
    schedulers = {
        n: build_scheduler(optim, o, total_steps, factories.get(n)) for n, o in optimizers.items()
    }
    step_fn, meter, validate = _step_fn(model, models, data, ctx)
    step_ctx = StepContext(
        rank_ctx=ctx, models=models, optimizers=optimizers, schedulers=schedulers, scaler=scaler
    )
    several = isinstance(model, Models)  # a dict of models, even of one
    return LoopParts(
        model=model if several or ctx.step.train_step else models[MODEL],
        optimizer=OptimizerGroup(optimizers) if several else optimizers[MODEL],
        scheduler=SchedulerGroup(schedulers) if several else schedulers[MODEL],
        scaler=scaler,
        meter=meter,
        step=make_step(ctx=step_ctx, step_fn=step_fn),
        validate=validate,
    )


def _step_fn(
    model: nn.Module, wrapped: dict[str, nn.Module], data: RankData | None, ctx: RankContext
) -> tuple[StepFn, Meter, Callable[[], dict[str, float]] | None]:
    """Your ``train_step`` (which reports its own metrics), or the built-in step over the
    data's task with validation."""
    if ctx.step.train_step is not None:
        meter = Meter("custom", ctx.step.metrics, ctx.device, step_metrics=[])
        return UserStep(train_step=ctx.step.train_step, meter=meter), meter, None
    assert data is not None, "the built-in step validates on the data"
    meter = Meter(data.task, ctx.step.metrics, ctx.device)
    objective = Objective.of(model, data.task, ctx.step)
    unwrapped = ctx.strategy.unwrap(wrapped[MODEL])
    validate = partial(evaluate, unwrapped, data, ctx, objective=objective, meter=meter)
    return BuiltinStep(objective=objective, meter=meter), meter, validate
