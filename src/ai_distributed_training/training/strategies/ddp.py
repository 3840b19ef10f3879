"""Data parallelism with ``DistributedDataParallel`` as a strategy object."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ...data import DataInfo
from ...models import ModelSource
from ..checkpoint import capture_rng, restore_rng, save_checkpoint
from .base import DataCoords, local_gradients_finite, state_digest, written_by

#: DDP's gradient bucket size (torch's default), given explicitly on gloo (see wrap).
DDP_BUCKET_MB = 25


class UnusedParametersError(RuntimeError):
    """A parameter gets no gradient from ``forward`` while ``find_unused_parameters`` is off."""


class DDPStrategy:
    """Data parallelism with ``DistributedDataParallel``: full replicas, gradients all-reduced.

    With one rank the model is not wrapped (nothing to synchronize), so a single worker costs
    the same as plain PyTorch.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: torch.device,
        *,
        find_unused_parameters: bool = False,
        sync_batchnorm: bool = False,
        compile_backend: str | None = None,
    ) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.data = DataCoords(rank, world_size)  # every rank reads its own share
        self.find_unused_parameters, self.sync_batchnorm = find_unused_parameters, sync_batchnorm
        #: torch.compile's backend for the models this strategy wraps (None: eager).
        self.compile_backend = compile_backend
        self._ddp: list[DistributedDataParallel] = []  # one per wrapped model

    def build_model(self, source: ModelSource, info: DataInfo) -> nn.Module:
        return source.build(info)

    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)  # DDP broadcasts rank 0's weights as it wraps
        if self.world_size == 1:
            return self.compiled(model)
        if not any(p.requires_grad for p in model.parameters()):
            # A frozen model (a distillation's teacher): nothing to synchronize, and DDP
            # refuses it. Its weights are rank 0's, as DDP's broadcast would make them.
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
            return model
        if self.sync_batchnorm:  # statistics over the global batch (GPUs only: torch's rule)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.device.type == "cuda":
            options: dict[str, Any] = {"device_ids": [self.device]}
        else:
            # gloo on CPU is latency-bound (~0.8 ms per all-reduce, even of 4 bytes, on the
            # 2-core reference machine): an explicit cap also applies to the first bucket
            # (torch otherwise caps it at 1 MB), so a model under 25 MB syncs in ONE all-reduce.
            options = {"bucket_cap_mb": DDP_BUCKET_MB}
        # Gradients live inside DDP's buckets: one copy less per step and one gradient-sized
        # buffer less in memory. Together: ~+5% samples/s on the reference workload, 2 workers.
        ddp = DistributedDataParallel(
            self.compiled(model),
            gradient_as_bucket_view=True,
            find_unused_parameters=self.find_unused_parameters,
            **options,
        )
        self._ddp.append(ddp)
        return ddp

    def compiled(self, module: nn.Module) -> nn.Module:
        """``module`` with its ``forward`` compiled in place, when a backend is set.

        In place, so the module stays what the loop and the checkpoints know (its class, its
        state_dict keys, DDP's or FSDP's hooks around the call). Its forward method, not
        ``nn.Module.compile``: torch 2.13 silently compiles nothing that way for torch's own
        classes (``nn.Sequential``, ``nn.Linear``). Inside DDP, not around it: DDP stays the
        object the loop checks for (``no_sync``, the resume layout); the compiled backward is
        one graph, so DDP's all-reduce follows it rather than overlapping it.
        """
        if self.compile_backend is not None:
            module.forward = torch.compile(module.forward, backend=self.compile_backend)
        return module

    def settle(self, wrapped: nn.Module, backward: Callable[[], None]) -> None:
        # DDP flattens gradients into buckets in parameter order for its first backward pass
        # and in the order gradients became ready ever after. With 3 or more ranks an element's
        # place in the bucket decides in which order the ring all-reduce adds the ranks' values,
        # so a step that resumed from a checkpoint (DDP's first) summed differently from the same
        # step uninterrupted (~6e-8 apart). One throw-away pass at every start makes every step
        # of every attempt use the steady layout: resume is bitwise at any number of ranks.
        if not isinstance(wrapped, DistributedDataParallel):
            return
        rng = capture_rng()  # torch's, NumPy's and Python's: a forward may draw from any
        wrapped.eval()  # no dropout, no BatchNorm statistics: nothing changes but the layout
        try:
            backward()
        finally:
            wrapped.train()
            restore_rng(rng)
        unused = [
            n for n, p in wrapped.module.named_parameters() if p.requires_grad and p.grad is None
        ]
        for p in wrapped.parameters():
            p.grad = None
        if unused and not self.find_unused_parameters:
            raise UnusedParametersError(
                f"these parameters get no gradient from forward: {unused}; every rank waits for "
                "their gradients and DDP cannot finish the step. Pass "
                "find_unused_parameters=True (DDP then looks for them in every step, at some "
                "cost), or remove them or freeze them (requires_grad=False)"
            )

    def close(self) -> None:
        # A DDP reducer that outlives its process group can abort the process at exit
        # ("terminate called without an active exception"; seen here in ~1 of 4 runs of 8 gloo
        # ranks on 2 cores). Free it, and the reference cycles around it, while the group lives.
        self._ddp.clear()
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
