"""Parallelism strategies: objects with one interface, so the loop has no strategy branches.

Every collective method here must be called on every rank.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

#: DDP's gradient bucket size (torch's default), given explicitly on gloo (see wrap).
DDP_BUCKET_MB = 25


class Strategy(Protocol):
    """How the model is replicated or sharded and how ranks talk to each other."""

    rank: int
    world_size: int
    device: torch.device

    def wrap(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` (already on ``device``) for training; returns the module to call."""
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

    def replicas_identical(self, model: nn.Module) -> bool:
        """Whether every rank holds bitwise-identical parameters (every rank must call)."""
        ...

    def close(self) -> None:
        """Release what :meth:`wrap` built; call before destroying the process group."""
        ...


class DDPStrategy:
    """Data parallelism with ``DistributedDataParallel``: full replicas, gradients all-reduced.

    With one rank the model is not wrapped (nothing to synchronize), so a single worker costs
    the same as plain PyTorch.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self._ddp: DistributedDataParallel | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
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

    def replicas_identical(self, model: nn.Module) -> bool:
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return len(set(self.all_gather_object(digest.hexdigest()))) == 1
