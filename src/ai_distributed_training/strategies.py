"""Parallelism strategies: objects with one interface, so the loop has no strategy branches.

Every collective method here must be called on every rank.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import save_checkpoint
from .data import DataInfo
from .models import ModelSource

#: DDP's gradient bucket size (torch's default), given explicitly on gloo (see wrap).
DDP_BUCKET_MB = 25


class Strategy(Protocol):
    """How the model is replicated or sharded and how ranks talk to each other."""

    rank: int
    world_size: int
    device: torch.device

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

    def close(self) -> None:
        """Release what :meth:`wrap` built; call before destroying the process group."""
        ...


def local_gradients_finite(grads: list[torch.Tensor]) -> bool:
    """One fused max-abs norm per gradient (inf if any element is inf, NaN if any is NaN;
    unlike the 2-norm it cannot overflow): ~0.06 ms per step on the reference MLP against
    ~0.7 ms for an isfinite() per tensor."""
    grads = [g for g in grads if g.numel()]  # the inf-norm of an empty tensor is undefined
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads, float("inf")))).all())


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a sharded parameter, gradient or optimizer state); a
    plain tensor as it is. (Duck-typed: DTensor's module is not imported for DDP.)"""
    return t.to_local() if hasattr(t, "to_local") else t


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of this rank's parameters, gradients and optimizer state (its shards, if sharded)."""

    def size(t: Any) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        t = local_part(t)
        return int(t.numel() * t.element_size())

    params = list(model.parameters())
    state = [v for per_param in optimizer.state.values() for v in per_param.values()]
    return sum(size(p) + size(p.grad) for p in params) + sum(size(v) for v in state)


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of every tensor's bytes, in key order."""
    digest = hashlib.sha256()
    for tensor in state.values():
        # The array's buffer itself: no bytes copy of every tensor (the hash reads it in place).
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().data)
    return digest.hexdigest()


def written_by(resume: Mapping[str, Any], strategy: str) -> None:
    """Refuse a checkpoint another strategy wrote (their model/optimizer states differ)."""
    found = resume.get("strategy", "ddp")
    if found != strategy:
        raise RuntimeError(
            f"the checkpoint to resume from was written with strategy={found!r}; resume it "
            f"with strategy={found!r} (this job uses {strategy!r})"
        )


class DDPStrategy:
    """Data parallelism with ``DistributedDataParallel``: full replicas, gradients all-reduced.

    With one rank the model is not wrapped (nothing to synchronize), so a single worker costs
    the same as plain PyTorch.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self._ddp: DistributedDataParallel | None = None

    def build_model(self, source: ModelSource, info: DataInfo) -> nn.Module:
        return source.build(info)

    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)  # DDP broadcasts rank 0's weights as it wraps
        if self.world_size == 1:
            return model
        if self.device.type == "cuda":
            options: dict[str, Any] = {"device_ids": [self.device]}
        else:
            # gloo on CPU is latency-bound (~0.8 ms per all-reduce, even of 4 bytes, on the
            # 2-core reference machine): an explicit cap also applies to the first bucket
            # (torch otherwise caps it at 1 MB), so a model under 25 MB syncs in ONE all-reduce.
            options = {"bucket_cap_mb": DDP_BUCKET_MB}
        # Gradients live inside DDP's buckets: one copy less per step and one gradient-sized
        # buffer less in memory. Together: ~+5% samples/s on the reference workload, 2 workers.
        self._ddp = DistributedDataParallel(model, gradient_as_bucket_view=True, **options)
        return self._ddp

    def close(self) -> None:
        # A DDP reducer that outlives its process group can abort the process at exit
        # ("terminate called without an active exception"; seen here in ~1 of 4 runs of 8 gloo
        # ranks on 2 cores). Free it, and the reference cycles around it, while the group lives.
        self._ddp = None
        gc.collect()

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped.module if isinstance(wrapped, DistributedDataParallel) else wrapped

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op)
        return tensor

    def no_sync(self, wrapped: nn.Module) -> contextlib.AbstractContextManager[Any]:
        if isinstance(wrapped, DistributedDataParallel):
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def replicas_identical(self, state: Mapping[str, torch.Tensor]) -> bool:
        return len(set(self.all_gather_object(state_digest(state)))) == 1

    def gradients_finite(self, wrapped: nn.Module) -> bool:
        # After DDP's all-reduce every rank holds the same gradients, so every rank reaches the
        # same answer without any extra communication (a NaN loss anywhere poisons them all).
        return local_gradients_finite([p.grad for p in wrapped.parameters() if p.grad is not None])

    def clip_grad_norm(self, wrapped: nn.Module, max_norm: float) -> float:
        return float(nn.utils.clip_grad_norm_(wrapped.parameters(), max_norm))

    def full_state_dict(self, wrapped: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.unwrap(wrapped).state_dict().items()}

    def save_checkpoint(
        self,
        directory: Path,
        step: int,
        stateful: Mapping[str, Any],
        meta: dict[str, Any],
        writes: bool,
        keep: int,
    ) -> Path | None:
        if not writes:  # replicas: rank 0's copy is everyone's
            return None
        state = {name: obj.state_dict() for name, obj in stateful.items()}
        return save_checkpoint(directory, step, {**state, **meta, "strategy": "ddp"}, keep)

    def load_checkpoint(self, resume: Mapping[str, Any], stateful: Mapping[str, Any]) -> None:
        written_by(resume, "ddp")
        for name, obj in stateful.items():
            obj.load_state_dict(resume[name])
