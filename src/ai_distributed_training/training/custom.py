"""Your own training step: ``train_step(ctx, batch)`` writes the body of one optimizer step
(a GAN's alternating updates, a distillation with a frozen teacher); the library keeps the
processes, the sharding of the global batch, device moves, checkpoints, restarts, fault
injection and the reduction of metrics.

``ctx`` (a :class:`StepContext`) holds what a step needs and nothing that breaks those
guarantees: the wrapped models and their optimizers by name, ``backward`` that weights a loss
for the global batch, ``step(name)`` (non-finite check, clipping, optimizer, scheduler),
``no_sync(name)``, autocast, and a generator seeded from ``(seed, step, rank)``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.loading import Micro, sample_seed
from ..data.structure import to_device
from ..models import Models
from .checkpoint import capture_rng, restore_rng
from .context import RankContext
from .metrics import CLIPPED, COUNT, ITEMS, LOSS, MAX_STEP_METRICS, Meter
from .objective import count_tensor
from .resume import LoopPosition
from .sharding import loss_scale
from .step import clip_and_step


class StepMismatchError(RuntimeError):
    """The ranks' train_step calls disagreed (backward or step(name) on some ranks only)."""


class StepContext:
    """What ``train_step(ctx, batch)`` works with, for one optimizer step of one rank."""

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
        self.models: dict[str, nn.Module] = _ByName(models)
        self.schedulers, self.scaler = dict(schedulers), scaler
        self.rank, self.world_size, self.device = (
            rank_ctx.rank,
            rank_ctx.world_size,
            rank_ctx.device,
        )
        self.samples, self.global_samples, self.global_step = 0, 1, 0
        self.generator = torch.Generator(device=self.device)
        self.calls: dict[str, int] = {}
        self.skipped: list[str] = []
        self.clipped = False

    def begin(self, samples: int, global_samples: int, global_step: int, seed: int) -> None:
        """Ready for global step ``global_step`` (1-based) on ``samples`` of this rank's."""
        self.samples, self.global_samples, self.global_step = samples, global_samples, global_step
        self.generator.manual_seed(sample_seed(sample_seed(seed, global_step), self.rank))
        self.calls = {"backward": 0, **{f"step:{name}": 0 for name in self.optimizers}}
        self.skipped, self.clipped = [], False
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the job's compute dtype (``precision``), or nothing (fp32)."""
        return self._ctx.autocast()

    def backward(self, loss: torch.Tensor | tuple[torch.Tensor, Any]) -> None:
        """Back-propagate ``loss`` weighted for the global batch: a mean over this rank's
        samples, or a ``(sum, count)`` pair (its count summed over the ranks first: a
        collective). Every rank must call it the same number of times."""
        self.calls["backward"] += 1
        if isinstance(loss, (tuple, list)):
            total, count = loss
            _check_loss(total, "the sum of a (sum, count) pair")
            global_count = count_tensor(count, "ctx.backward's count").to(self.device)
            global_count = global_count * float(self.samples > 0)  # a stand-in counts 0
            self._ctx.strategy.all_reduce(global_count.reshape(1), dist.ReduceOp.SUM)
            if float(global_count) <= 0:  # the same sum on every rank: all raise together
                raise ValueError(
                    f"ctx.backward's counts sum to {float(global_count):g} over the global "
                    "batch: a (sum, count) pair's count is the number of items the sum is "
                    "over, at least 1 in all"
                )
            weight = loss_scale(float(global_count), self.world_size)
            weighted = total * weight * float(self.samples > 0)
        else:  # a mean over this rank's samples: back to their sum, then weighted
            _check_loss(loss, "the loss")
            weighted = loss * self.samples * loss_scale(self.global_samples, self.world_size)
        self.scaler.scale(weighted).backward()

    def step(self, name: str) -> bool:
        """Update model ``name``: skip on non-finite gradients (or fail, per
        ``skip_nonfinite_steps``), clip (``max_grad_norm``), step its optimizer and scheduler,
        zero its gradients. Returns whether it stepped."""
        if name not in self.optimizers:
            raise KeyError(f"no optimizer named {name!r}; the models are {sorted(self.models)}")
        self.calls[f"step:{name}"] += 1
        ctx, optimizer = self._ctx, self.optimizers[name]
        model = self.models[name]
        if not self.scaler.is_enabled() and not ctx.strategy.gradients_finite(model):
            if not ctx.loop.skip_nonfinite_steps:
                raise NonFiniteStepError(
                    f"non-finite gradients of model {name!r} at step {self.global_step} (rank "
                    f"{self.rank}); pass skip_nonfinite_steps=True to skip such updates"
                )
            self.skipped.append(name)
            optimizer.zero_grad(set_to_none=True)
            return False
        self.clipped |= clip_and_step(ctx, model, optimizer, self.scaler)
        self.schedulers[name].step()
        optimizer.zero_grad(set_to_none=True)
        return True

    def no_sync(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """Accumulate model ``name``'s gradients without synchronizing them (all but the last
        backward of a split batch)."""
        return self._ctx.strategy.no_sync(self.models[name])


class NonFiniteStepError(RuntimeError):
    """Non-finite gradients in a custom step, on every rank alike (DDP averaged them)."""


class CustomStep:
    """The loop's :class:`~.step.Step` around the user's ``train_step``."""

    def __init__(
        self,
        *,
        ctx: RankContext,
        step_ctx: StepContext,
        train_step: Callable[[StepContext, Any], Any],
        meter: Meter,
    ) -> None:
        self.ctx, self.step_ctx, self.train_step, self.meter = ctx, step_ctx, train_step, meter
        #: The names train_step returns, fixed by its first call (the meter reports them).
        self.names: list[str] = meter.step_metrics if meter.step_metrics is not None else []
        self.settled, self.finite = False, True

    def forward_backward(
        self, micros: Sequence[Micro], global_count: int, step: int
    ) -> torch.Tensor:
        """Run ``train_step`` on this rank's share (it steps the optimizers itself), check the
        ranks called the same things, and return the step's stat vector."""
        (micro,) = micros  # gradient_accumulation_steps is 1 with a train_step
        ctx, batch = self.step_ctx, to_device(micro.batch, self.ctx.device)
        if not self.settled:
            self._settle(micro.samples, global_count, step, batch)
            self.settled = True
        ctx.begin(micro.samples, global_count, step, self.ctx.loop.seed)
        returned = self.train_step(ctx, batch)
        sums, counts = self._values(returned, micro.samples)
        self._check_agreement(step, bool(torch.isfinite(sums).all()))
        return self._stats(sums, counts, micro.samples)

    def _settle(self, samples: int, global_count: int, step: int, batch: Any) -> None:
        """One throw-away train_step on this batch, everything it changes put back: DDP's
        first backward uses another bucket layout than the steady one, which at 3 or more
        ranks changes the order gradients are summed in (see DDPStrategy.settle); a resumed
        step would then differ from the uninterrupted one in the last bits."""
        ctx = self.step_ctx
        ddp = any(isinstance(m, DistributedDataParallel) for m in ctx.models.values())
        if not ddp or ctx.world_size < 3:
            return
        saved = copy.deepcopy(
            {
                "models": {n: m.state_dict() for n, m in ctx.models.items()},
                "optimizers": {n: o.state_dict() for n, o in ctx.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in ctx.schedulers.items()},
            }
        )
        rng = capture_rng()
        ctx.begin(samples, global_count, step, self.ctx.loop.seed)
        self.train_step(ctx, batch)
        for name, model in ctx.models.items():
            model.load_state_dict(saved["models"][name])
            ctx.optimizers[name].load_state_dict(saved["optimizers"][name])
            ctx.schedulers[name].load_state_dict(saved["schedulers"][name])
        restore_rng(rng)

    def _values(self, returned: Any, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums and counts of what train_step returned, in :attr:`names` order (a mean counts
        the samples); kept on the device (no wait for the GPU per value)."""
        if not isinstance(returned, Mapping) or not returned:
            raise TypeError(
                "train_step must return a dict of named losses or metrics, each a mean tensor "
                f"or a (sum, count) pair, e.g. {{'loss': loss}}; it returned {returned!r:.80}"
            )
        if not self.names:
            self.names.extend(str(name) for name in returned)
        if [str(name) for name in returned] != self.names or len(self.names) > MAX_STEP_METRICS:
            raise ValueError(
                f"train_step must return the same names every step, at most {MAX_STEP_METRICS}; "
                f"first {self.names}, now {list(returned)}"
            )
        for name, value in returned.items():
            _check_returned(name, value)
        pairs = [
            value if isinstance(value, (tuple, list)) else (_as_tensor(value) * samples, samples)
            for value in returned.values()
        ]
        device = self.ctx.device
        sums = torch.stack([_as_tensor(t, device) for t, _ in pairs])
        counts = torch.stack([_as_tensor(c, device) for _, c in pairs])
        weight = float(samples > 0)  # a stand-in for an empty share counts nothing
        return sums * weight, counts * weight

    def _check_agreement(self, step: int, finite: bool) -> None:
        """Every rank called backward and step(name) equally often (else the models drift
        apart, or a later collective hangs), and returned finite values: one small all-gather
        per step."""
        calls = self.step_ctx.calls
        mine = torch.tensor([*map(float, calls.values()), float(finite)], device=self.ctx.device)
        every = self.ctx.strategy.all_gather(mine)
        if bool((every[:, :-1] != every[0, :-1]).any()):
            per_rank = {
                r: dict(zip(calls, row.tolist(), strict=False)) for r, row in enumerate(every)
            }
            raise StepMismatchError(
                f"the ranks' train_step calls differ at step {step}: {per_rank}; every rank must "
                "call ctx.backward and ctx.step(name) equally often"
            )
        bad = [r for r, row in enumerate(every) if row[-1] == 0]
        if bad and not self.ctx.loop.skip_nonfinite_steps:
            raise NonFiniteStepError(
                f"train_step returned a non-finite value at step {step} on rank(s) {bad}; pass "
                "skip_nonfinite_steps=True to skip such updates"
            )
        self.finite = not bad

    def _stats(self, sums: torch.Tensor, counts: torch.Tensor, samples: int) -> torch.Tensor:
        stats = self.meter.zeros()
        if not self.finite:
            return stats  # skipped (skip_nonfinite_steps): nothing to count
        first = self.names.index("loss") if "loss" in self.names else 0
        stats[LOSS], stats[ITEMS] = sums[first], counts[first]
        stats[COUNT] = samples
        stats[CLIPPED] = float(self.step_ctx.clipped)
        base = self.meter.size - 2 * MAX_STEP_METRICS
        stats[base : base + 2 * len(self.names)] = torch.stack([sums, counts], dim=1).flatten()
        return stats

    def apply_gradients(self, stats: torch.Tensor, pos: LoopPosition, epoch: int) -> bool:
        """The train_step stepped already; a step whose every optimizer skipped its update
        (non-finite gradients, with skip_nonfinite_steps) counts as skipped."""
        ctx = self.step_ctx
        ctx.scaler.update()
        if set(ctx.skipped) == set(ctx.optimizers):
            self.ctx.job_log.warning("skipping step %d: non-finite gradients", pos.step)
            pos.skipped_steps += 1
            return False
        return True


class _ByName(dict):  # type: ignore[type-arg]
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


def _check_returned(name: Any, value: Any) -> None:
    """One value train_step returned: a number, a one-element tensor, or a (sum, count) pair
    of those."""
    parts = value if isinstance(value, (tuple, list)) and len(value) == 2 else (value,)
    for part in parts:
        number = isinstance(part, (int, float)) and not isinstance(part, bool)
        if not number and not (isinstance(part, torch.Tensor) and part.numel() == 1):
            raise TypeError(
                f"train_step returned {name!r}: {value!r:.60}; each value must be a number, a "
                "one-element tensor (a mean) or a (sum, count) pair of those"
            )


def _as_tensor(value: Any, device: torch.device | None = None) -> torch.Tensor:
    """A returned value (a tensor, maybe with its graph, or a number) as a float64 scalar."""
    t = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return t.reshape(()).to(device=device or t.device, dtype=torch.float64)


class OptimizerGroup:
    """The optimizers of several models, checkpointed as one (Stateful)."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        self.optimizers = dict(optimizers)

    @property
    def state(self) -> dict[Any, Any]:
        """Every optimizer's per-parameter state (for counting its bytes)."""
        return {k: v for opt in self.optimizers.values() for k, v in opt.state.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class SchedulerGroup:
    """The LR schedulers of several optimizers, checkpointed as one (Stateful)."""

    def __init__(self, schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler]) -> None:
        self.schedulers = dict(schedulers)

    def get_last_lr(self) -> list[float]:
        return [float(lr) for s in self.schedulers.values() for lr in s.get_last_lr()]

    def state_dict(self) -> dict[str, Any]:
        return {name: s.state_dict() for name, s in self.schedulers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, s in self.schedulers.items():
            s.load_state_dict(state[name])


def parts_of(model: nn.Module) -> dict[str, nn.Module]:
    """A dict of models' members by name, or the one model as ``"model"``."""
    return dict(model.items()) if isinstance(model, Models) else {"model": model}
