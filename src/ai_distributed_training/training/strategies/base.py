"""The Strategy interface, and the helpers every strategy shares.

Strategies are objects with one interface, so the loop has no strategy branches. Every
collective method must be called on every rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ...data import DataInfo
from ...models import ModelSource
from ..checkpoint import content_digest


@dataclass(frozen=True)
class DataCoords:
    """Where a rank stands among the ranks that read distinct data. Under data parallelism
    (DDP, FSDP) every rank reads its own share: its ``rank`` and ``world_size`` are the job's.
    Under tensor parallelism the ``tp_size`` ranks of a group compute one replica together
    and read the same samples: the group is one data rank, and only its first rank's sums
    ``count`` in a sum over all ranks (the others add zeros), so totals are not multiplied."""

    rank: int
    world_size: int
    counts: bool = True


class Strategy(Protocol):
    """How the model is replicated or sharded and how ranks talk to each other."""

    rank: int
    world_size: int
    device: torch.device
    #: This rank's place in the data-parallel dimension (the data it reads, its seeds).
    data: DataCoords

    def build_model(self, source: ModelSource, info: DataInfo) -> nn.Module:
        """The model this rank starts from; call after seeding, so that every rank that builds
        real weights builds the same ones (:meth:`wrap` makes them rank 0's anyway)."""
        ...

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to ``device`` and prepare it for training (every rank starting from
        rank 0's weights); returns the module to call."""
        ...

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        """The user's plain module inside what :meth:`wrap` returned."""
        ...

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
        """Reduce ``tensor`` in place across ranks (every rank must call) and return it."""
        ...

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` stacked in rank order (every rank must call)."""
        ...

    def no_sync(self, wrapped: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Within it, backward passes accumulate gradients locally without synchronizing."""
        ...

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj`` in rank order (every rank must call)."""
        ...

    def replicas_identical(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether every rank holds a bitwise-identical ``state`` (every rank must call)."""
        ...

    def gradients_finite(self, wrapped: nn.Module) -> bool:
        """Whether no gradient holds NaN or inf, the same answer on every rank (collective)."""
        ...

    def clip_grad_norm(self, wrapped: nn.Module, max_norm: float) -> float:
        """Clip gradients to a GLOBAL 2-norm of ``max_norm``; returns the norm before."""
        ...

    def full_state_dict(self, wrapped: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's weights as plain CPU tensors, on every rank (collective)."""
        ...

    def save_checkpoint(
        self,
        directory: Path,
        step: int,
        stateful: Mapping[str, Any],
        meta: dict[str, Any],
        writes: bool,
        keep: int,
    ) -> Path | None:
        """Checkpoint ``stateful`` (model, optimizer, ...) with ``meta`` as step ``step``;
        ``writes``: whether this rank writes what is not sharded. Collective."""
        ...

    def load_checkpoint(self, resume: Mapping[str, Any], stateful: Mapping[str, Any]) -> None:
        """Load a checkpoint found by :func:`~.checkpoint.load_newest_valid` into ``stateful``
        (after :meth:`wrap` and the optimizer exist). Collective."""
        ...

    def settle(self, wrapped: nn.Module, backward: Callable[[], None]) -> None:
        """Before an attempt's first step: run ``backward`` (one throw-away forward and backward
        pass on the first batch) if the strategy needs one to reach its steady state, leaving
        weights, gradients, buffers and RNG as they were. Collective; a step calls it once."""
        ...

    def close(self) -> None:
        """Release what :meth:`wrap` built; call before destroying the process group."""
        ...


#: Gradient dtypes torch's fused non-finite check (GradScaler's kernel) takes.
_FUSED_CHECK_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def local_gradients_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient element is finite. torch's fused check (the kernel GradScaler
    unscales with, here with a scale of exactly 1, which leaves every value as it was) sets
    one flag per device and dtype: 2 us for the small MLP of ``bench.step_overhead`` on one
    CPU thread, against 13 us for a 2-norm per gradient and an isfinite of their stack; and
    a finite element too large for a 2-norm (beyond ~1e19) is not mistaken for inf. Sparse
    gradients, or dtypes the kernel does not take, get an isfinite per tensor."""
    grads = [g for g in grads if g.numel()]
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        if g.is_sparse or g.dtype not in _FUSED_CHECK_DTYPES:
            if not bool(torch.isfinite(g.coalesce().values() if g.is_sparse else g).all()):
                return False
        else:
            groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), group in groups.items():
        found = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, torch.ones(1, device=device))
        if bool(found):
            return False
    return True


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a sharded parameter, gradient or optimizer state); a
    plain tensor as it is. (Duck-typed: DTensor's module is not imported for DDP.)"""
    return t.to_local() if hasattr(t, "to_local") else t


def model_state_bytes(model: nn.Module, optimizer: Any) -> int:
    """Bytes of this rank's parameters, gradients and optimizer state (its shards, if sharded);
    ``optimizer``: anything with an optimizer's ``state`` (per-parameter dicts). A trainable
    parameter's gradient counts as its size whether or not it is held right now (a step
    frees them after each update): the memory each step needs."""

    def size(t: Any) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        t = local_part(t)
        return int(t.numel() * t.element_size())

    params = list(model.parameters())
    state = [v for per_param in optimizer.state.values() for v in per_param.values()]
    grads = sum(size(p.grad if p.grad is not None else p) for p in params if p.requires_grad)
    return sum(size(p) for p in params) + grads + sum(size(v) for v in state)


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of every tensor's bytes, in key order (0-dim tensors, e.g. BatchNorm's
    ``num_batches_tracked``, included)."""
    return content_digest(dict(state))


def written_by(resume: Mapping[str, Any], strategy: str) -> None:
    """Refuse a checkpoint another strategy wrote (their model/optimizer states differ)."""
    found = resume["strategy"]
    if found != strategy:
        raise RuntimeError(
            f"the checkpoint to resume from was written with strategy={found!r}; resume it "
            f"with strategy={found!r} (this job uses {strategy!r})"
        )
