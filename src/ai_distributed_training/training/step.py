"""One optimizer step, the loop's replaceable part, and the one machinery every step goes through.

A step is a function ``step_fn(ctx, micros) -> stats`` over this rank's share of a global batch
(its micro-batches, read): the library's own (:class:`~.builtin_step.BuiltinStep`) and yours
(``train_step(ctx, batch)``, adapted by :class:`~.custom.UserStep`) alike. Both weight their
losses for the global batch and back-propagate them with :meth:`StepContext.backward_sum`, and
update a model with :meth:`StepContext.step`: the non-finite check, clipping, loss scaling, the
optimizer and its scheduler live there and nowhere else. :class:`StepRunner` is what the loop
calls: :meth:`~StepRunner.forward_backward`, then :meth:`~StepRunner.apply_gradients`; anything
with those two methods can stand in for it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ..data.loading import Micro, sample_seed
from ..errors import NonFiniteError
from .context import RankContext
from .metrics import CLIPPED
from .objective import count_tensor
from .resume import LoopPosition
from .sharding import loss_scale


class Step(Protocol):
    """What the loop needs of a step."""

    def forward_backward(
        self, micros: Sequence[Micro], global_count: int, step: int
    ) -> torch.Tensor:
        """Gradients of this rank's share of a global batch of ``global_count`` samples, read
        as ``micros`` (its micro-batches), at global step ``step`` (1-based), and the update;
        returns the share's stat vector."""
        ...

    def apply_gradients(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> bool:
        """Finish the step; False when it was skipped (on every rank together)."""
        ...


class StepFn(Protocol):
    """The body of one optimizer step over this rank's micro-batches; returns their stats."""

    def __call__(self, ctx: StepContext, micros: Sequence[Micro]) -> torch.Tensor: ...


class StepContext:
    """What a step works with, for one optimizer step of one rank: the wrapped models, their
    optimizers and schedulers by name, the loss scaler, and a generator seeded from
    ``(seed, step, rank)`` (so a resumed step draws the same numbers)."""

    def __init__(
        self,
        *,
        rank_ctx: RankContext,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
        scaler: torch.amp.GradScaler,
    ) -> None:
        self._ctx, self.optimizers = rank_ctx, dict(optimizers)
        self.models: dict[str, nn.Module] = ByName(models)
        self.schedulers, self.scaler = dict(schedulers), scaler
        self.rank, self.world_size = rank_ctx.rank, rank_ctx.world_size
        #: The ranks reading distinct data (the world, but for tensor-parallel groups), over
        #: which the strategy averages gradients: what a loss is weighted by.
        self.data = rank_ctx.data
        self.device = rank_ctx.device
        self.samples, self.global_samples, self.global_step = 0, 1, 0
        self.generator = torch.Generator(device=self.device)
        self.calls: dict[str, int] = {}
        self.skipped: list[str] = []
        self.clipped = False
        self._losses: list[torch.Tensor] = []  # this step's, for naming a non-finite one
        #: When this rank first waited on the others this step (its first all-reduce or
        #: backward): what it did before, alone, is its own pace, which shows a straggler.
        self.synced_at: float | None = None
        #: Optimizers whose gradients step(name) zeroed with no backward since.
        self._zeroed: set[str] = set()

    @property
    def rank_ctx(self) -> RankContext:
        """The rank's collaborators (strategy, faults, logs) and sections."""
        return self._ctx

    def begin(self, samples: int, global_samples: int, global_step: int) -> None:
        """Ready for global step ``global_step`` (1-based) on ``samples`` of this rank's."""
        self.samples, self.global_samples, self.global_step = samples, global_samples, global_step
        seed = self._ctx.loop.seed
        self.generator.manual_seed(sample_seed(sample_seed(seed, global_step), self.data.rank))
        self.calls = {"backward": 0, **{f"step:{name}": 0 for name in self.optimizers}}
        self.skipped, self.clipped, self._losses, self.synced_at = [], False, [], None
        for name, optimizer in self.optimizers.items():
            if name not in self._zeroed:  # step(name) zeroed it already: ~40 us a call saved
                optimizer.zero_grad(set_to_none=True)
        self._zeroed = set()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the job's compute dtype (``precision``), or nothing (fp32)."""
        return self._ctx.autocast()

    def backward(self, loss: torch.Tensor | tuple[torch.Tensor, Any]) -> None:
        """Back-propagate ``loss`` weighted for the global batch: a mean over this rank's
        samples, or a ``(sum, count)`` pair (its count summed over the ranks first: a
        collective). Every rank must call it the same number of times."""
        if not isinstance(loss, (tuple, list)):  # a mean over this rank's samples: their sum
            _check_loss(loss, "the loss")
            scale = loss_scale(self.global_samples, self.data.world_size)
            self.backward_sum(loss * self.samples, scale)
            return
        total, count = loss
        _check_loss(total, "the sum of a (sum, count) pair")
        present = float(self.samples > 0)  # a stand-in for an empty share counts nothing
        local = count_tensor(count, "ctx.backward's count").to(self.device) * present
        global_count = self.all_reduce_sum(local)
        if float(global_count) <= 0:  # the same sum on every rank: all raise together
            raise ValueError(
                f"ctx.backward's counts sum to {float(global_count):g} over the global "
                "batch: a (sum, count) pair's count is the number of items the sum is "
                "over, at least 1 in all"
            )
        self.backward_sum(total * present, loss_scale(float(global_count), self.data.world_size))

    def backward_sum(self, local_sum: torch.Tensor, weight: float) -> None:
        """Back-propagate this rank's ``local_sum`` times ``weight`` (what makes the strategy's
        average of gradients the gradient of the global batch's mean), through the scaler."""
        self.calls["backward"] += 1
        self.synced_at = self.synced_at or time.perf_counter()
        self._losses.append(local_sum.detach())
        self._zeroed.clear()  # a backward may reach any model's gradients, stepped ones too
        self.scaler.scale(local_sum * weight).backward()

    def step(self, name: str) -> bool:
        """Update model ``name``: skip on non-finite gradients (or fail, per
        ``skip_nonfinite_steps``), clip (``max_grad_norm``), step its optimizer and scheduler,
        zero its gradients. Returns whether it stepped."""
        if name not in self.optimizers:
            raise KeyError(f"no optimizer named {name!r}; the models are {sorted(self.models)}")
        self.calls[f"step:{name}"] += 1
        ctx, optimizer, model = self._ctx, self.optimizers[name], self.models[name]
        # With fp16 loss scaling the scaler finds non-finite gradients (and skips) itself.
        if not self.scaler.is_enabled() and not ctx.strategy.gradients_finite(model):
            self._non_finite(name)
            optimizer.zero_grad(set_to_none=True)
            return False
        max_norm = ctx.optim.max_grad_norm
        if max_norm is not None:
            self.scaler.unscale_(optimizer)
            self.clipped |= bool(ctx.strategy.clip_grad_norm(model, max_norm) > max_norm)
        self.scaler.step(optimizer)
        self.schedulers[name].step()
        optimizer.zero_grad(set_to_none=True)
        self._zeroed.add(name)
        return True

    def _non_finite(self, name: str) -> None:
        """Every rank saw non-finite gradients of ``name`` (they are synchronized): name the
        ranks whose losses caused it (a collective every rank reaches), then fail, or skip the
        update with ``skip_nonfinite_steps``."""
        strategy = self._ctx.strategy
        local_bad = float(any(not bool(torch.isfinite(t).all()) for t in self._losses))
        bad = strategy.all_gather(torch.tensor([local_bad], device=strategy.device))
        ranks = [r for r in range(strategy.world_size) if bad[r, 0] > 0]
        where = f"non-finite gradients of model {name!r} at step {self.global_step}"
        where += f" (a non-finite loss on rank(s) {ranks})" if ranks else ""
        if not self._ctx.loop.skip_nonfinite_steps:
            raise NonFiniteError(
                f"{where}; the last good checkpoint is intact: "
                f"{self._ctx.checkpointer.last or 'none written yet'}; pass "
                "skip_nonfinite_steps=True to skip such steps"
            )
        self._ctx.job_log.warning("skipping the update of %r: %s", name, where)
        self.skipped.append(name)

    def no_sync(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """Accumulate model ``name``'s gradients without synchronizing them (all but the last
        backward of a split batch)."""
        return self._ctx.strategy.no_sync(self.models[name])

    def all_reduce_sum(self, local: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks of a scalar ``local`` (collective: every rank calls), each
        data rank counted once (a tensor-parallel group's peers hold the same value)."""
        self.synced_at = self.synced_at or time.perf_counter()
        total = local.to(self.device).reshape(1) * float(self.data.counts)
        return self._ctx.strategy.all_reduce(total, dist.ReduceOp.SUM)[0]


class StepRunner:
    """The loop's :class:`Step` around a step function (the library's or yours): begins the
    step (gradients zeroed, the generator seeded), runs it, records whether it clipped, and
    counts a step whose every update was skipped (non-finite) as skipped."""

    def __init__(self, *, ctx: StepContext, step_fn: StepFn) -> None:
        self.ctx, self.step_fn = ctx, step_fn

    def forward_backward(
        self, micros: Sequence[Micro], global_count: int, step: int
    ) -> torch.Tensor:
        self.ctx.begin(sum(m.samples for m in micros), global_count, step)
        stats = self.step_fn(self.ctx, micros)
        stats[CLIPPED] = float(self.ctx.clipped)
        return stats

    def apply_gradients(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> bool:
        ctx = self.ctx
        ctx.scaler.update()
        if ctx.skipped and set(ctx.skipped) == set(ctx.optimizers):
            pos.skipped_steps += 1
            return False
        return True


class ByName(dict):  # type: ignore[type-arg]
    """``ctx.models``: an unknown name says which names there are."""

    def __missing__(self, name: object) -> nn.Module:
        raise KeyError(f"no model named {name!r}; the models are {sorted(self)}")


def _check_loss(loss: Any, what: str) -> None:
    """A loss ``ctx.backward`` can weight and back-propagate: a scalar tensor in the graph."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else repr(loss)
        raise ValueError(
            f"ctx.backward takes a scalar loss (a mean over this rank's samples) or a (sum, "
            f"count) pair; {what} is {got:.60} (reduce it, e.g. .mean())"
        )
    if not loss.requires_grad:
        raise ValueError(
            f"ctx.backward got {what} detached from the models' graph (no grad_fn: computed "
            "under torch.no_grad(), .detach()ed or .item()ed), so no gradient can flow"
        )


#: A factory of the loop's step, from keyword arguments ``ctx`` (the :class:`StepContext`) and
#: ``step_fn``: :class:`StepRunner`, or a stand-in with the same two methods.
MakeStep = Callable[..., Step]
