"""Your own training step: ``train_step(ctx, batch)`` writes the body of one optimizer step
(a GAN's alternating updates, a distillation with a frozen teacher); the library keeps the
processes, the sharding of the global batch, device moves, checkpoints, restarts, fault
injection and the reduction of metrics.

``ctx`` (a :class:`~.step.StepContext`, the same one the library's own step goes through)
holds what a step needs and nothing that breaks those guarantees: the wrapped models and their
optimizers by name, ``backward`` that weights a loss for the global batch, ``step(name)``
(non-finite check, clipping, optimizer, scheduler), ``no_sync(name)``, autocast, and a
generator seeded from ``(seed, step, rank)``. :class:`UserStep` adapts ``train_step`` to the
step function the loop runs: it checks what it returns and that the ranks agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.loading import Micro
from ..data.structure import to_device
from ..errors import NonFiniteError
from ..models import Models
from .checkpoint import capture_rng, restore_rng
from .metrics import CLIPPED, COUNT, ITEMS, LOSS, MAX_STEP_METRICS, Meter
from .step import StepContext


class StepMismatchError(RuntimeError):
    """The ranks' train_step calls disagreed (backward or step(name) on some ranks only)."""


class UserStep:
    """``step_fn(ctx, micros)`` around your ``train_step(ctx, batch)``: one micro-batch (a
    train_step gets this rank's whole share), its return values checked and reduced, the
    ranks' calls compared."""

    def __init__(self, *, train_step: Callable[[StepContext, Any], Any], meter: Meter) -> None:
        self.train_step, self.meter = train_step, meter
        #: The names train_step returns, fixed by its first call (the meter reports them).
        self.names: list[str] = meter.step_metrics if meter.step_metrics is not None else []
        self.settled, self.finite = False, True

    def __call__(self, ctx: StepContext, micros: Sequence[Micro]) -> torch.Tensor:
        """Run ``train_step`` on this rank's share (it steps the optimizers itself), check the
        ranks called the same things, and return the step's stat vector."""
        (micro,) = micros  # gradient_accumulation_steps is 1 with a train_step
        batch = to_device(micro.batch, ctx.device)
        if not self.settled:
            self._settle(ctx, batch)
            self.settled = True
        returned = self.train_step(ctx, batch)
        sums, counts = self._values(returned, micro.samples, ctx.device)
        self._check_agreement(ctx, bool(torch.isfinite(sums).all()))
        return self._stats(sums, counts, micro.samples, ctx.clipped)

    def _settle(self, ctx: StepContext, batch: Any) -> None:
        """One throw-away train_step on this batch, everything it changes put back, the step
        begun again: DDP's first backward uses another bucket layout than the steady one,
        which at 3 or more ranks changes the order gradients are summed in (see
        DDPStrategy.settle); a resumed step would then differ from the uninterrupted one in
        the last bits."""
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
        self.train_step(ctx, batch)
        for name, model in ctx.models.items():
            model.load_state_dict(saved["models"][name])
            ctx.optimizers[name].load_state_dict(saved["optimizers"][name])
            ctx.schedulers[name].load_state_dict(saved["schedulers"][name])
        restore_rng(rng)
        ctx.begin(ctx.samples, ctx.global_samples, ctx.global_step)

    def _values(
        self, returned: Any, samples: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        sums = torch.stack([_as_tensor(t, device) for t, _ in pairs])
        counts = torch.stack([_as_tensor(c, device) for _, c in pairs])
        weight = float(samples > 0)  # a stand-in for an empty share counts nothing
        return sums * weight, counts * weight

    def _check_agreement(self, ctx: StepContext, finite: bool) -> None:
        """Every rank called backward and step(name) equally often (else the models drift
        apart, or a later collective hangs), and returned finite values: one small all-gather
        per step."""
        calls, step = ctx.calls, ctx.global_step
        mine = torch.tensor([*map(float, calls.values()), float(finite)], device=ctx.device)
        every = ctx.rank_ctx.strategy.all_gather(mine)
        if bool((every[:, :-1] != every[0, :-1]).any()):
            per_rank = {
                r: dict(zip(calls, row.tolist(), strict=False)) for r, row in enumerate(every)
            }
            raise StepMismatchError(
                f"the ranks' train_step calls differ at step {step}: {per_rank}; every rank must "
                "call ctx.backward and ctx.step(name) equally often"
            )
        bad = [r for r, row in enumerate(every) if row[-1] == 0]
        if bad and not ctx.rank_ctx.loop.skip_nonfinite_steps:
            raise NonFiniteError(
                f"train_step returned a non-finite value at step {step} on rank(s) {bad}; pass "
                "skip_nonfinite_steps=True to skip such updates"
            )
        self.finite = not bad

    def _stats(
        self, sums: torch.Tensor, counts: torch.Tensor, samples: int, clipped: bool
    ) -> torch.Tensor:
        stats = self.meter.zeros()
        if not self.finite:
            return stats  # skipped (skip_nonfinite_steps): nothing to count
        first = self.names.index("loss") if "loss" in self.names else 0
        stats[LOSS], stats[ITEMS] = sums[first], counts[first]
        stats[COUNT] = samples
        stats[CLIPPED] = float(clipped)
        base = self.meter.size - 2 * MAX_STEP_METRICS
        stats[base : base + 2 * len(self.names)] = torch.stack([sums, counts], dim=1).flatten()
        return stats


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
